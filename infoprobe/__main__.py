"""``python -m infoprobe`` and the ``infoprobe`` command's entry point.

It imports the command line (and with it torch) inside :func:`main`, so that Ctrl-C during
the first seconds gives one line and exit status 130, not a traceback.
"""

import sys


def main() -> None:
    """Console-script entry point: :func:`infoprobe.cli.main` behind a start-up guard."""
    try:
        from infoprobe.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("infoprobe: error: interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
