"""Several processes sharing one evaluation (``torchrun --nproc-per-node N -m infoprobe``).

Under torchrun every process runs the same command. :func:`setup` joins the process group
from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``): backend ``nccl`` when the model runs on CUDA (each process then takes
``cuda:LOCAL_RANK``), ``gloo`` otherwise.

:func:`shard` splits the samples into contiguous runs of whole batches, one per process,
without padding: every sample is evaluated exactly once, in the same batch as in a
single-process run with the same ``--batch-size``, so the features are bitwise those of
one process. :func:`gather_rows` reassembles the per-process rows in the original sample
order on every process, which then computes the same numbers; only rank 0 prints and
writes (:func:`is_main`). :func:`agreed` makes a failure on any process the failure of
all of them, so none waits forever in a collective and rank 0 can report it.

Without torchrun (``WORLD_SIZE`` unset or 1) every function is a no-op for one process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from infoprobe import errors
from infoprobe.errors import InfoprobeError, InputError, RunFailure

__all__ = [
    "active",
    "agreed",
    "gather_rows",
    "is_main",
    "rank",
    "setup",
    "shard",
    "teardown",
    "world_size",
]

_OWNED = False  # whether setup() created the process group (teardown then destroys it)

#: How long a process waits for the others in one collective before giving up.
TIMEOUT = timedelta(minutes=30)


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the process group's, else torchrun's ``RANK`` when torchrun
    started several processes (so that a failure before the group exists, or after it is
    torn down, is still reported by rank 0 alone)."""
    if active():
        return dist.get_rank()
    return _env_int("RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the process that prints and writes files (rank 0, or the only one)."""
    return rank() == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise InputError(
            f"environment variable {name}={os.environ[name]!r} is not an "
            "integer; launch with torchrun"
        ) from None


def setup(device: str = "auto") -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; True when it did.

    ``device`` is the ``--device`` spec: ``auto`` with a GPU, ``cuda`` or ``cuda:K`` select
    ``nccl`` and ``cuda:LOCAL_RANK`` (an explicit ``cuda:K`` would put every process on
    one GPU, so it is refused); anything else ``gloo``.
    """
    if _env_int("WORLD_SIZE", 1) <= 1 or active():
        return active()
    spec = (device or "auto").strip().lower()
    on_cuda = spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())
    backend = "gloo"
    if on_cuda:
        if spec not in ("auto", "cuda"):
            raise InputError(
                f"--device {spec}: under torchrun each process takes "
                "cuda:LOCAL_RANK; use --device auto or cuda"
            )
        local, per_node = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1)
        count = torch.cuda.device_count()
        if per_node > count:
            raise InputError(
                f"torchrun starts {per_node} processes per node but there are "
                f"{count} GPUs; use --nproc-per-node {count} or --device cpu"
            )
        torch.cuda.set_device(local)
        backend = "nccl"
    global _OWNED
    dist.init_process_group(backend, timeout=TIMEOUT)
    _OWNED = True
    return True


def teardown() -> None:
    """Leave the process group that :func:`setup` joined (a caller's own group stays)."""
    global _OWNED
    if _OWNED and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False


def shard(n: int, batch_size: int) -> tuple[int, int]:
    """This process's samples ``[lo, hi)``: contiguous whole batches of ``batch_size``.

    The ``ceil(n / batch_size)`` batches are dealt in contiguous runs whose lengths differ
    by at most one; the last batch may be short, as in one process. InputError when there
    are fewer batches than processes (a process would have nothing to evaluate).
    """
    batches, w = -(-n // batch_size), world_size()
    if batches < w:
        raise InputError(
            f"{n} samples make {batches} batches of --batch-size {batch_size} for "
            f"{w} processes; lower --batch-size to {max(1, n // w)} or start fewer "
            "processes"
        )
    return _shard_of(rank(), w, n, batch_size)


def _comm_device() -> torch.device:
    # nccl moves CUDA tensors only; gloo CPU ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: Tensor, n: int, batch_size: int) -> Tensor:
    """Every process's rows (its :func:`shard` of ``n``), concatenated in sample order.

    ``local`` [hi - lo, ...] on cpu; returns [n, ...] on cpu, on every process.
    """
    if not active():
        return local
    w = world_size()
    counts = [hi - lo for lo, hi in (_shard_of(r, w, n, batch_size) for r in range(w))]
    dev = _comm_device()
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)  # all_gather needs equal sizes: pad, then trim
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu()


def _shard_of(r: int, w: int, n: int, batch_size: int) -> tuple[int, int]:
    batches = -(-n // batch_size)
    first, last = r * batches // w, (r + 1) * batches // w
    return min(first * batch_size, n), min(last * batch_size, n)


@contextlib.contextmanager
def agreed() -> Iterator[None]:
    """Run the block on every process, then agree on its outcome.

    When the block fails on any process, every process raises the first failing rank's
    error (same class of :mod:`infoprobe.errors`, same exit code, message prefixed with
    its rank; other exceptions become :class:`RunFailure`) marked
    ``shared``, so only rank 0 reports it. With one process this is a plain block.
    """
    if not active():
        yield
        return
    failure: BaseException | None = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - every failure must reach the other processes
        failure = e
    mine = None if failure is None else _describe(failure)
    reports: list = [None] * world_size()
    dist.all_gather_object(reports, mine)
    failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    if not failed:
        return
    r, (kind, code, message) = failed[0]
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, InfoprobeError)):
        cls = InputError if code == 2 else RunFailure
    error = cls(f"rank {r}: {message}")
    error.shared = True
    if failure is not None and r == rank():
        raise error from failure
    raise error


def _describe(e: BaseException) -> tuple[str, int, str]:
    """(class name in infoprobe.errors, exit code, message) of a failure."""
    if isinstance(e, InfoprobeError):
        return type(e).__name__, e.exit_code, str(e)
    return "RunFailure", 1, f"unexpected {type(e).__name__}: {e}"
