"""Defaults shared by the math and the option declarations (no torch import here, so the
command line can answer ``--help`` and ``--version`` without loading torch)."""

#: The evaluation and mini-batch-estimate batch size when none is given.
DEFAULT_BATCH_SIZE = 256
#: Largest exact eigen-solve on the CPU (matrix side), when ``--max-exact-dim`` is unset.
DEFAULT_MAX_EXACT_DIM = 16384
#: Default number of probe vectors of the slq estimate.
PROBES = 24
#: How the joint entropy of a row is computed: the one vocabulary of ``--estimate``.
ESTIMATES = ("auto", "exact", "slq", "batch")
