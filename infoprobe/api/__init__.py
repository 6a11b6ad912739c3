"""The Python API: each command as a function that returns a pandas DataFrame.

``analyze``, ``track``, ``lmc`` and ``prune`` take the command's arguments and options as
keyword arguments, with the command line's names in snake_case (``--max-samples`` is
``max_samples``, ``--json`` is ``json_out``): the fields of
:class:`~infoprobe.options.RunOptions` that the command takes, checked by
:meth:`~infoprobe.options.RunOptions.of` (a wrong type or value is an
:class:`~infoprobe.errors.InputError`; a name the command does not take, a TypeError).
They return one row per checkpoint, step, alpha or ratio in the column schema of
:mod:`infoprobe.rows` (``analyze`` and ``track`` with ``layers``: one row per checkpoint and
layer, :data:`~infoprobe.schema.LAYER_COLUMNS`), and write the files the options ask for
(``csv``, ``json_out``, ``plot``, ``save_features``; ``resume`` continues a CSV), exactly as
the command line, which calls these functions and only renders what they return.

Every function also takes

* ``progress``: a :class:`~infoprobe.probe.ProgressSink` (``start``/``advance``/``stop``);
* ``log``: a callable taking one line of text (what the command line prints on stderr);
* ``on_row``: a callable given each new row (a dict) as soon as it is finished.

What the rows do not hold goes into ``DataFrame.attrs``: ``command``, ``data`` and the
command's settings, plus ``per_class`` (analyze), ``barriers`` (lmc), ``finetune``
(prune) and ``failed`` (analyze, track).
"""

from infoprobe.api.common import columns, records
from infoprobe.api.measure import analyze, track
from infoprobe.api.sweeps import lmc, prune

__all__ = ["analyze", "columns", "lmc", "prune", "records", "track"]
