"""``python -m infoprobe``: the same as the ``infoprobe`` command."""

from infoprobe.cli import main

if __name__ == "__main__":
    main()
