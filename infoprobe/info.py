"""Matrix information quantities of Song et al. (ICML 2024), computed exactly and fast.

Notation (the README's "What it measures"): ``n`` samples, features ``z_i`` in R^d, labels
``y_i`` in {0..C-1}, head rows ``w_c`` in R^d (bias excluded). Rows are normalised to unit
length, ``zh_i = z_i/|z_i|`` and ``wh_c = w_c/|w_c|``, and

* ``K_Z = [zh_i . zh_j]`` and ``K_W = [wh_{y_i} . wh_{y_j}]`` are n x n, PSD, unit diagonal;
* ``H(K) = -sum_k lam_k log lam_k`` over the eigenvalues of ``K / n`` (nats, ``0 log 0 = 0``);
* ``I(K_Z; K_W) = H(K_Z) + H(K_W) - H(K_Z o K_W)`` with ``o`` the Hadamard product;
* ``MIR = I / min(H_Z, H_W)`` and ``HDR = |H_Z - H_W| / max(H_Z, H_W)``.

No n x n matrix is formed when a smaller exact one exists. Every entropy is the entropy of
a small symmetric PSD matrix ``A`` whose nonzero eigenvalues are those of ``K / n``:

* ``K_Z``: ``Zh^T Zh / n`` (d x d) when d < n;
* ``K_W = P M P^T`` with ``M = Wh Wh^T`` and ``P`` the one-hot labels: ``D^1/2 M D^1/2 / n``
  (C x C, ``D`` the class counts), since ``P D^-1/2`` has orthonormal columns;
* ``K_Z o K_W = Phi Phi^T`` with ``Phi_i = zh_i (x) l_{y_i}`` and ``M = L L^T``:
  ``Phi^T Phi / n = sum_c (Zh_c^T Zh_c) (x) (l_c l_c^T) / n`` of size k*r, after ``Zh`` is
  rotated onto its k-dimensional row space and ``L`` is the rank-r factor of ``M``.

The route with the smallest matrix is chosen automatically. Eigen-solves run in float64 on
symmetrised matrices, and round-off negatives are clamped to zero. The entropy's backward
uses ``dH/dA = U diag(f'(lam)) U^T`` with ``f(lam) = -lam log lam``, which has no
``1/(lam_i - lam_j)`` terms and so stays finite when eigenvalues repeat (neural collapse).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from infoprobe import slq
from infoprobe.errors import InputError

Estimate = Literal["auto", "exact", "batch", "slq"]

#: Largest matrix side an exact eigen-solve is attempted on by default on CPU (float64: 2 GiB).
DEFAULT_MAX_EXACT_DIM = 16384
#: Batch size of the evaluation pass and of the paper's batch estimate, unless given.
DEFAULT_BATCH_SIZE = 256

#: Bytes an exact eigen-solve of side m needs on CUDA, per m^2: the float64 matrix, the copy
#: ``eigvalsh`` factorises and its workspace.
_SOLVE_BYTES_PER_ENTRY = 3 * 8


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interplay:
    """Entropies (nats), mutual information and ratios for one set of samples.

    ``estimate`` is the route that gave the joint entropy: ``"exact"`` (the full-set value),
    ``"slq"`` (the stochastic Lanczos estimate of the full-set value, see
    :mod:`infoprobe.slq`) or ``"batch"`` (the paper's mean over ``n_batches`` seeded
    mini-batches of ``batch_size`` samples, a different quantity). ``label`` names it with
    its parameters, as the ``estimate`` column does. ``h_z``, ``h_w`` and ``hdr`` are exact
    on the exact and slq routes. ``h_zw_err``, ``mi_err`` and ``mir_err`` are one standard
    error of the estimate (None when exact); ``mir_lower`` is a certified lower bound of MIR
    (None when the route gives none). ``n_used`` counts the samples that entered the values
    (the batch estimate drops a short last batch). ``note`` says why a value is NaN (empty
    when none is). ``n_classes`` is None for :func:`interplay_between`.
    """

    h_z: float
    h_w: float
    h_zw: float
    mi: float
    mir: float
    hdr: float
    n_samples: int
    n_classes: int | None
    estimate: str = "exact"
    batch_size: int | None = None
    n_batches: int = 1
    note: str = ""
    label: str = "exact"
    n_used: int | None = None
    h_zw_err: float | None = None
    mi_err: float | None = None
    mir_err: float | None = None
    mir_lower: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NCOptimum:
    """MIR and HDR at neural collapse for ``num_classes`` balanced classes (Thm 4.2)."""

    num_classes: int
    mir: float
    hdr: float
    note: str = ""


def nc_optimum(num_classes: int) -> NCOptimum:
    """Closed-form MIR and HDR at neural collapse (Song et al., Thm 4.2 / Cor 4.3).

    For C >= 3 balanced classes whose features collapse onto a simplex-ETF head,
    ``HDR = 0`` and ``MIR = 1/(C-1) + (C-2)/(C-1) * log(C-2)/log(C-1)``
    (C = 3: 0.5; C = 10: 0.95235...; C = 100: 0.99781...). For C = 2 both entropies are
    zero at collapse, so both ratios are 0/0: NaN with a note.
    """
    c = int(num_classes)
    if c != num_classes or c < 2:
        raise InputError(f"nc_optimum needs an integer number of classes >= 2, got {num_classes!r}")
    if c == 2:
        note = "C = 2: both entropies are 0 at neural collapse, so MIR and HDR are undefined"
        return NCOptimum(2, math.nan, math.nan, note)
    mir = 1.0 / (c - 1) + (c - 2) / (c - 1) * math.log(c - 2) / math.log(c - 1)
    return NCOptimum(c, mir, 0.0)


# --------------------------------------------------------------------------------------
# The entropy of a PSD matrix, differentiable with a finite backward
# --------------------------------------------------------------------------------------


def _zero_threshold(eigenvalues: Tensor, size: int) -> float:
    """Eigenvalues below this are round-off of a true zero: ``lam_max * size * eps``."""
    top = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return top * max(size, 1) * torch.finfo(eigenvalues.dtype).eps


def _entropy_of_eigenvalues(lam: Tensor) -> Tensor:
    """``-sum lam log lam`` over eigenvalues that sum to 1 in exact arithmetic.

    Round-off is removed before the sum: eigenvalues under :func:`_zero_threshold` are true
    zeros (``0 log 0 = 0``), and the rest are divided by their sum, which is 1 up to
    round-off, so that a rank-one matrix has exactly ``H = 0`` rather than ``~1e-16``.
    """
    lam = torch.where(lam > _zero_threshold(lam, lam.shape[0]), lam, torch.zeros_like(lam))
    lam = lam / lam.sum()
    return -torch.special.xlogy(lam, lam).sum()


class _SpectralEntropy(torch.autograd.Function):
    """``H(A) = -sum p_k log p_k`` with ``p = lam / s`` and ``s`` the sum of the positive
    eigenvalues of symmetric PSD ``A`` (the value :func:`_entropy_of_eigenvalues` returns).

    Backward: ``dH/dlam_k = -(log p_k + H) / s``, so ``dH/dA = U diag(-(log p + H) / s) U^T``;
    the ``+H`` and ``1/s`` come from the renormalisation and vanish from nothing: for unit
    trace they are the difference ``(1 - H) I`` to ``-(log lam + 1)``. Eigenvalues at
    round-off zero get derivative 0 rather than ``+inf``: every ``A`` here is ``X^T X`` or
    ``X X^T``, and such directions lie in the null space of ``X`` so they contribute nothing
    to the gradient with respect to ``X`` (``d(e log e)/de -> 0``).
    """

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:  # noqa: D401 - autograd signature
        lam, vec = torch.linalg.eigh(a)
        h = _entropy_of_eigenvalues(lam)
        ctx.save_for_backward(lam, vec, h)
        return h

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        lam, vec, h = ctx.saved_tensors
        positive = lam > _zero_threshold(lam, lam.shape[0])
        total = lam[positive].sum()
        p = torch.where(positive, lam, torch.ones_like(lam)) / total
        slope = torch.where(positive, -(torch.log(p) + h) / total, torch.zeros_like(lam))
        return grad_out * (vec * slope) @ vec.mT


def spectral_entropy(a: Tensor) -> Tensor:
    """Entropy ``-sum p log p`` of the eigenvalues ``lam`` of a symmetric PSD matrix, with
    ``p = lam / sum(lam)`` (round-off negatives and zeros dropped).

    ``a``: [m, m], any float dtype, solved in float64 on its device. Returns a 0-dim
    float64 tensor. For unit trace (the matrices of this module) ``p = lam``; otherwise the
    value is the entropy of the renormalised spectrum, and the backward is the true
    gradient of that value (class doc). Without grad only the lower triangle is read (as
    ``eigvalsh`` does), so no symmetrised copy of a large matrix is made.
    """
    a = a.to(torch.float64)
    if a.shape[0] == 0:
        return a.new_zeros(())
    if a.requires_grad:
        return _SpectralEntropy.apply((a + a.mT) / 2)
    return _entropy_of_eigenvalues(torch.linalg.eigvalsh(a))


def matrix_entropy(gram: Tensor) -> Tensor:
    """Matrix entropy ``H(K) = -sum lam log lam`` over the eigenvalues of ``K / n``.

    ``gram``: [n, n] symmetric PSD with unit diagonal (a normalised Gram matrix), any float
    dtype. Returns a 0-dim float64 tensor in ``[0, log n]`` (natural log, nats).
    Raises :class:`InputError` for a non-square, non-finite, asymmetric or non-unit-diagonal
    matrix, for which the eigenvalues of ``K / n`` would not be a distribution.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise InputError(f"gram must be a square [n, n] matrix, got shape {tuple(gram.shape)}")
    _check_finite(gram, "gram")
    k = gram.to(torch.float64)
    n = k.shape[0]
    if n == 0:
        raise InputError("gram is empty (n = 0): the entropy needs at least one sample")
    tol = 1e-6 * max(1.0, float(k.abs().max()))
    if float((k - k.mT).abs().max()) > tol:
        raise InputError("gram is not symmetric: pass a Gram matrix K = X X^T")
    if float((torch.diagonal(k) - 1).abs().max()) > 1e-6:
        raise InputError(
            "gram must have a unit diagonal (rows normalised to length 1): "
            "normalise the rows of X before forming K = X X^T"
        )
    return spectral_entropy(k / n)


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_finite(x: Tensor, name: str) -> None:
    bad = (~torch.isfinite(x)).sum().item() if x.is_floating_point() else 0
    if bad:
        raise InputError(
            f"{name} contains {bad} NaN/Inf value(s): check the model and data that produced it"
        )


def _as_float64(x: Tensor, name: str, ndim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-dimensional, got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{name} must be a float tensor, got dtype {x.dtype}")
    _check_finite(x, name)
    # float16/bfloat16 are upcast: their round-off would swamp the small eigenvalues.
    return x.to(torch.float64)


def _normalise_rows(x: Tensor, name: str) -> Tensor:
    """Rows scaled to unit length; a zero row has no direction, so it is an error."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = (norms.squeeze(1) == 0).nonzero().flatten()
    if zero.numel():
        shown = ", ".join(str(i) for i in zero[:5].tolist())
        more = "..." if zero.numel() > 5 else ""
        raise InputError(
            f"{name} has {zero.numel()} zero-norm row(s) (rows {shown}{more}) whose direction is "
            "undefined: drop those samples/classes or use drop_zero_rows=True (--drop-zero-rows)"
        )
    return x / norms


def _check_labels(labels: Tensor, n: int, num_classes: int) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise InputError(f"labels must be a 1-D tensor of {n} class indices, got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise InputError(
            f"labels must lie in [0, {num_classes}) for a head with {num_classes} rows, found "
            f"values in [{int(labels.min())}, {int(labels.max())}]: check --num-classes or labels"
        )
    return labels


def _drop_zero_rows(features: Tensor, labels: Tensor, head: Tensor) -> tuple[Tensor, Tensor]:
    """Samples kept when zero-norm features, or labels whose head row is zero, are dropped."""
    keep = torch.linalg.vector_norm(features, dim=1) > 0
    keep &= torch.linalg.vector_norm(head, dim=1)[labels] > 0
    return features[keep], labels[keep]


# --------------------------------------------------------------------------------------
# Exact routes: each returns a PSD matrix whose nonzero eigenvalues are those of K / n
# --------------------------------------------------------------------------------------


def _row_space_coordinates(x: Tensor) -> Tensor:
    """``x`` [n, p] rotated onto its numerical row space: [n, k] with ``x x^T`` unchanged.

    ``x = (x V_k) V_k^T`` up to directions with ``sigma^2 <= sigma_max^2 * p * eps``, whose
    contribution to ``x x^T`` is round-off.
    """
    lam, vec = torch.linalg.eigh(x.mT @ x)
    keep = lam > _zero_threshold(lam, max(x.shape))
    return x @ vec[:, keep]


def _rank_factor(m: Tensor) -> Tensor:
    """``L`` [C, r] with ``L L^T = m`` for symmetric PSD ``m``, r its numerical rank."""
    lam, vec = torch.linalg.eigh((m + m.mT) / 2)
    keep = lam > _zero_threshold(lam, m.shape[0])
    return vec[:, keep] * lam[keep].sqrt()


def _feature_matrix(zh: Tensor) -> Tensor:
    """K_Z / n through the smaller of ``Zh^T Zh`` (d x d) and ``Zh Zh^T`` (n x n)."""
    n, d = zh.shape
    return (zh.mT @ zh if d < n else zh @ zh.mT) / n


def _head_matrix(wh: Tensor, labels: Tensor) -> Tensor:
    """K_W / n as ``D^1/2 M D^1/2 / n`` over the classes present (C' x C')."""
    return _head_matrix_of_counts(wh, torch.bincount(labels, minlength=wh.shape[0]))


def _head_matrix_of_counts(wh: Tensor, counts: Tensor) -> Tensor:
    """K_W / n from the class counts ``D`` [C] alone."""
    counts = counts.to(wh.dtype)
    present = counts > 0
    scaled = wh[present] * counts[present].sqrt().unsqueeze(1)
    return scaled @ scaled.mT / counts.sum()


def _khatri_rao_matrix(z: Tensor, labels: Tensor, factor: Tensor) -> Tensor:
    """``sum_c (Z_c^T Z_c) (x) (l_c l_c^T) / n`` for ``K_Z o K_W = Phi Phi^T``.

    ``z`` [n, k] row factor of K_Z, ``factor`` [C, r] with ``L L^T = M``. Returns [k*r, k*r],
    indexed like ``Phi_i = z_i (x) l_{y_i}`` (row ``a*r + p``). Costs ``O(n k^2 + C k^2 r^2)``.
    """
    return _kronecker_sum(class_grams(z, labels, factor.shape[0]), factor, z.shape[0])


def class_grams(z: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``[C, k, k]``: the Gram ``Z_c^T Z_c`` of each class's rows of ``z`` [n, k] (zero when
    the class has none), in ``z``'s dtype."""
    # One k x k Gram per class; a loop keeps memory at O(C k^2) rather than O(n C k).
    return torch.stack([z[labels == c].mT @ z[labels == c] for c in range(num_classes)])


def _kronecker_sum(grams: Tensor, factor: Tensor, n: int) -> Tensor:
    """``sum_c G_c (x) (l_c l_c^T) / n`` for per-class Grams ``grams`` [C, k, k] and the
    rank factor ``factor`` [C, r]: [k*r, k*r], row ``a*r + p``."""
    k, r = grams.shape[1], factor.shape[1]
    outer = factor.unsqueeze(2) * factor.unsqueeze(1)
    joint = torch.einsum("cab,cpq->apbq", grams, outer)
    return joint.reshape(k * r, k * r) / n


def _hadamard_matrix(za: Tensor, zb: Tensor) -> Tensor:
    """``(K_A o K_B) / n`` for row factors ``za`` [n, p] and ``zb`` [n, q].

    ``Phi_i = za_i (x) zb_i`` gives ``Phi^T Phi`` of size p*q; the n x n product is used
    when that is not smaller.
    """
    n, p = za.shape
    q = zb.shape[1]
    if p * q < n:
        phi = (za.unsqueeze(2) * zb.unsqueeze(1)).reshape(n, p * q)
        return phi.mT @ phi / n
    return (za @ za.mT) * (zb @ zb.mT) / n


def _dense_joint(zh: Tensor, labels: Tensor, gram: Tensor) -> Tensor:
    """``(K_Z o K_W) / n`` as one n x n matrix, multiplied in place by row blocks.

    The peak is the n x n matrix plus one block of rows, not three n x n matrices: at
    n = 50,000 each is 20 GB in float64.
    """
    n = zh.shape[0]
    k = zh @ zh.mT
    step = max(1, (1 << 24) // n)
    for start in range(0, n, step):
        k[start : start + step].mul_(gram[labels[start : start + step]][:, labels])
    return k.div_(n)


def _joint_matrix(
    zh: Tensor,
    labels: Tensor,
    wh: Tensor,
    gram: Tensor | None = None,
    factor: Tensor | None = None,
) -> Tensor:
    """(K_Z o K_W) / n through the smaller of the n x n and Khatri-Rao routes.

    ``gram`` (``M = Wh Wh^T``, [C, C]) and ``factor`` (its rank factor ``L``) may be passed
    in when many sample sets share one head (the batch estimate).
    """
    n, d = zh.shape
    differentiable = zh.requires_grad or wh.requires_grad
    if gram is None:
        gram = wh @ wh.mT
    if factor is None:
        # Rank compression is not differentiable; Wh itself is a factor of M (r = d).
        factor = wh if differentiable else _rank_factor(gram)
    if d * factor.shape[1] >= n:
        if differentiable:
            return (zh @ zh.mT) * gram[labels][:, labels] / n
        return _dense_joint(zh, labels, gram)
    z = zh if zh.requires_grad else _row_space_coordinates(zh)
    return _khatri_rao_matrix(z, labels, factor)


def _joint_size(n: int, d: int, num_classes: int) -> int:
    """Upper bound of the joint route's matrix side (before rank compression)."""
    return min(n, d * min(num_classes, d))


def _check_size(size: int, max_exact_dim: int | None, what: str) -> None:
    if max_exact_dim is not None and size > max_exact_dim:
        raise InputError(
            f"the exact {what} needs a {size} x {size} eigen-solve (over max_exact_dim="
            f"{max_exact_dim}): use a smaller --estimate-batch-size or raise --max-exact-dim"
        )


def default_max_exact_dim(device: str | torch.device = "cpu") -> int:
    """The largest exact eigen-solve attempted by default on ``device``.

    CPU (and MPS): :data:`DEFAULT_MAX_EXACT_DIM`. CUDA: the largest side m whose solve
    fits the device's free memory now, after the caching allocator has released its unused
    blocks: ``m = floor(sqrt(free / 24))`` (the float64 matrix, the copy ``eigvalsh``
    factorises and its workspace, 8 bytes each per entry). On an 80 GB card with 75 GB free
    that is m = 55,900; n = 50,000 needs 60 GB.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_MAX_EXACT_DIM
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    return math.isqrt(int(free) // _SOLVE_BYTES_PER_ENTRY)


def _limit(max_exact_dim: int | str | None, device: torch.device) -> int | None:
    """``max_exact_dim`` with ``"auto"`` resolved for ``device`` (None: no limit)."""
    if max_exact_dim == "auto":
        return default_max_exact_dim(device)
    if max_exact_dim is not None and (isinstance(max_exact_dim, str) or max_exact_dim < 1):
        raise InputError(
            f"max_exact_dim must be a positive int, 'auto' or None, got {max_exact_dim!r}"
        )
    return max_exact_dim


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def _ratios(h_a: float, h_b: float, mi: float) -> tuple[float, float, str]:
    """MIR and HDR from two entropies and their MI; NaN with a reason for 0/0.

    No clamping: a value outside [0, 1] beyond round-off would be a bug to see, not hide.
    """
    low, high = min(h_a, h_b), max(h_a, h_b)
    notes = []
    if low > 0:
        mir = mi / low
    else:
        mir = math.nan
        notes.append(
            "MIR is undefined (0/0): an entropy is 0, so all vectors on that side point one "
            "way (one sample, one class present, or features collapsed to one direction)"
        )
    if high > 0:
        hdr = abs(h_a - h_b) / high
    else:
        hdr = math.nan
        notes.append("HDR is undefined (0/0): both entropies are 0")
    return mir, hdr, "; ".join(notes)


def prepare(
    features: Tensor,
    labels: Tensor,
    head: Tensor,
    *,
    drop_zero_rows: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated float64 unit rows ``(zh [n, d], labels [n] int64, wh [C, d])``.

    Checks shapes, finiteness and the label range; upcasts (float16/bfloat16 round-off would
    swamp small eigenvalues). Head rows of classes absent from ``labels`` may be zero and
    stay zero; they never enter K_W. Differentiable in ``features`` and ``head``. The
    results live on ``device`` (default: the device of ``features``).
    """
    if device is not None and isinstance(features, Tensor):
        features = features.to(device)
    z = _as_float64(features, "features", 2)
    w = _as_float64(head, "head", 2)
    if z.shape[1] != w.shape[1]:
        raise InputError(
            f"features have d = {z.shape[1]} but head rows have d = {w.shape[1]}: the head "
            "must be the layer that consumes these features"
        )
    if z.shape[0] == 0:
        raise InputError("features are empty (n = 0): at least one sample is needed")
    y = _check_labels(labels, z.shape[0], w.shape[0]).to(z.device)
    w = w.to(z.device)
    if drop_zero_rows:
        z, y = _drop_zero_rows(z, y, w)
        if z.shape[0] == 0:
            raise InputError("every sample has a zero feature or head row: nothing to measure")
    zh = _normalise_rows(z, "features")
    used = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
    used[y] = True
    _normalise_rows(w[used], "head")  # raises for a zero row that some label uses
    norms = torch.linalg.vector_norm(w, dim=1, keepdim=True)
    wh = w / torch.where(norms > 0, norms, torch.ones_like(norms))
    return zh, y, wh


def entropies(
    zh: Tensor,
    labels: Tensor,
    wh: Tensor,
    *,
    gram: Tensor | None = None,
    factor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ``(H(K_Z), H(K_W), H(K_Z o K_W))`` as 0-dim float64 tensors.

    Inputs as returned by :func:`prepare`. Differentiable in ``zh`` and ``wh``; the route
    for each entropy is the smallest exact one (module doc). ``gram``/``factor``: see
    :func:`_joint_matrix`.
    """
    h_z = spectral_entropy(_feature_matrix(zh))
    h_w = spectral_entropy(_head_matrix(wh, labels))
    h_zw = spectral_entropy(_joint_matrix(zh, labels, wh, gram, factor))
    return h_z, h_w, h_zw


def batch_indices(n: int, batch_size: int, seed: int) -> list[Tensor]:
    """The documented batching of the paper's estimate.

    A ``torch.randperm(n)`` drawn from ``torch.Generator().manual_seed(seed)`` is split into
    consecutive batches of ``batch_size``; a final batch smaller than ``batch_size`` is
    dropped whenever at least one full batch exists (entropies depend on the batch size,
    bounded by ``log B``). With ``n < batch_size`` the single batch is the whole set.
    """
    if batch_size < 1:
        raise InputError(f"batch size for the batch estimate must be >= 1, got {batch_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    full = n // batch_size
    if full == 0:
        return [order]
    return list(order[: full * batch_size].split(batch_size))


@dataclass(frozen=True)
class _Joint:
    """The joint entropy from one route: value, 1-sigma error, certified upper bound."""

    h_zw: float
    estimate: str = "exact"
    label: str = "exact"
    err: float | None = None
    upper: float | None = None
    note: str = ""


_ESTIMATES = ("auto", "exact", "batch", "slq")


def _check_estimate(estimate: str) -> None:
    if estimate not in _ESTIMATES:
        raise InputError(f"estimate must be one of {', '.join(_ESTIMATES)}, got {estimate!r}")


def _refused(size: int, limit: int) -> _Joint:
    return _Joint(
        math.nan,
        note=(
            f"h_zw, mi and mir not computed: the exact joint entropy needs a {size} x {size} "
            f"eigen-solve (over max_exact_dim={limit}); use --estimate auto or slq for an "
            "estimate with error bars, or raise --max-exact-dim"
        ),
    )


def _joint_entropy(
    zh: Tensor, y: Tensor, wh: Tensor, estimate: str, limit: int | None, slq_options: dict
) -> _Joint:
    """H(K_Z o K_W): exact when the solve fits ``limit`` (or ``estimate="exact"``, which
    gives NaN with a note past it); the stochastic Lanczos estimate otherwise."""
    size = _joint_size(zh.shape[0], zh.shape[1], wh.shape[0])
    fits = limit is None or size <= limit
    if estimate == "exact" or (estimate == "auto" and fits):
        if not fits:
            return _refused(size, limit)
        return _Joint(float(spectral_entropy(_joint_matrix(zh, y, wh))))
    found = slq.joint_entropy(zh, y, wh, **slq_options)
    return _Joint(found.value, "slq", found.label, found.err, found.upper)


def _result(
    h_z: float, h_w: float, joint: _Joint, n: int, num_classes: int | None, n_used: int, **extra
) -> Interplay:
    """MI, the ratios and their error bars from exact ``h_z``, ``h_w`` and a joint value."""
    mi = h_z + h_w - joint.h_zw
    mir, hdr, note = _ratios(h_z, h_w, mi)
    low = min(h_z, h_w)
    scale = 1.0 / low if low > 0 else math.nan
    err, upper = joint.err, joint.upper
    return Interplay(
        h_z,
        h_w,
        joint.h_zw,
        mi,
        mir,
        hdr,
        n,
        num_classes,
        joint.estimate,
        note="; ".join(filter(None, [joint.note, note])),
        label=joint.label,
        n_used=n_used,
        h_zw_err=err,
        mi_err=err,
        mir_err=None if err is None else err * scale,
        mir_lower=None if upper is None else (h_z + h_w - upper) * scale,
        **extra,
    )


def _batch_mean(
    entropies_of, n: int, batch_size: int, seed: int, check_size
) -> tuple[tuple[float, float, float], int, int]:
    """Mean entropies over the :func:`batch_indices` batches.

    ``entropies_of(idx)`` gives the three entropies on samples ``idx``; ``check_size(m)``
    refuses an exact solve on ``m`` samples that is too large. Returns
    ``(entropies, n_batches, n_used)``.
    """
    parts = batch_indices(n, batch_size, seed)
    check_size(len(parts[0]))
    sums = torch.zeros(3, dtype=torch.float64)
    for idx in parts:
        sums += torch.stack(entropies_of(idx)).cpu()
    means = tuple(float(s) / len(parts) for s in sums)
    return means, len(parts), sum(len(idx) for idx in parts)


def _batch_joint(means, batch_size: int, seed: int) -> _Joint:
    return _Joint(means[2], "batch", f"batch(B={batch_size},seed={seed})")


def _batch_interplay(
    zh: Tensor, y: Tensor, wh: Tensor, batch_size: int, seed: int, limit: int | None
) -> Interplay:
    """The paper's estimate: mean entropies over :func:`batch_indices` of prepared rows."""
    n, d = zh.shape
    num_classes = wh.shape[0]
    gram = wh @ wh.mT  # one head Gram and rank factor for every batch
    factor = _rank_factor(gram)

    def entropies_of(idx):
        idx = idx.to(zh.device)
        return entropies(zh[idx], y[idx], wh, gram=gram, factor=factor)

    def check_size(m):
        _check_size(_joint_size(m, d, num_classes), limit, "batch estimate")

    means, batches, used = _batch_mean(entropies_of, n, batch_size, seed, check_size)
    return _result(
        means[0],
        means[1],
        _batch_joint(means, batch_size, seed),
        n,
        num_classes,
        used,
        batch_size=batch_size,
        n_batches=batches,
    )


def interplay(
    features: Tensor,
    labels: Tensor,
    head: Tensor,
    *,
    estimate: Estimate = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    drop_zero_rows: bool = False,
    max_exact_dim: int | str | None = "auto",
    device: str | torch.device | None = None,
    probes: int | None = None,
) -> Interplay:
    """Entropies, MI, MIR and HDR between penultimate features and classification head.

    Args:
        features: [n, d] penultimate features (any float dtype; solved in float64).
        labels: [n] integer class indices in ``[0, C)``.
        head: [C, d] classifier weights, bias excluded.
        estimate: how the joint entropy ``H(K_Z o K_W)`` (and so MI and MIR) is found.
            ``"auto"`` (default): exact when its eigen-solve fits ``max_exact_dim``, else
            ``"slq"``, the stochastic Lanczos estimate of the same full-set value with error
            bars and a certified bound (:mod:`infoprobe.slq`). ``"exact"``: past the limit
            h_zw, mi and mir are NaN with a note. ``"batch"``: the paper's mean of mini-batch
            entropies over :func:`batch_indices` ``(n, batch_size, seed)``, a different
            quantity (MI, MIR and HDR are derived from the mean entropies). H(K_Z), H(K_W)
            and HDR are exact on every route but ``"batch"``.
        drop_zero_rows: exclude samples whose feature row, or whose class's head row, is
            zero (their direction is undefined); by default they raise :class:`InputError`.
            ``n_samples`` counts the samples kept.
        max_exact_dim: largest exact eigen-solve; ``"auto"``: :func:`default_max_exact_dim`
            of the device (from its free memory on CUDA); None: no limit.
        device: where the solves run (default: the device of ``features``), in float64.
        probes: probe vectors of the slq estimate (default :data:`infoprobe.slq.PROBES`).

    Returns an :class:`Interplay`. With one sample or one class present an entropy is 0
    and MIR (and possibly HDR) is NaN with ``note`` saying why; it never raises for that.
    """
    _check_estimate(estimate)
    zero_head = _zero_head_classes(labels, head, features.shape[0])
    if zero_head and (not drop_zero_rows or set(zero_head) >= set(labels.tolist())):
        return _headless(
            features,
            labels,
            head,
            zero_head,
            estimate=estimate,
            batch_size=batch_size,
            seed=seed,
            drop_zero_rows=drop_zero_rows,
        )
    with torch.no_grad():
        zh, y, wh = prepare(features, labels, head, drop_zero_rows=drop_zero_rows, device=device)
        n, d = zh.shape
        num_classes = wh.shape[0]
        limit = _limit(max_exact_dim, zh.device)
        if estimate == "batch":
            return _batch_interplay(zh, y, wh, batch_size, seed, limit)
        h_z = float(spectral_entropy(_feature_matrix(zh)))
        h_w = float(spectral_entropy(_head_matrix(wh, y)))
        options = {"seed": seed} if probes is None else {"seed": seed, "probes": probes}
        joint = _joint_entropy(zh, y, wh, estimate, limit, options)
    return _result(h_z, h_w, joint, n, num_classes, n)


def _zero_head_classes(labels: Tensor, head: Tensor, n: int) -> list[int]:
    """Classes that some label uses and whose head row is zero (validated inputs only)."""
    w = _as_float64(head, "head", 2)
    y = _check_labels(labels, n, w.shape[0])
    used = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
    used[y.to(w.device)] = True
    return (used & (torch.linalg.vector_norm(w, dim=1) == 0)).nonzero().flatten().tolist()


def _headless(
    features: Tensor,
    labels: Tensor,
    head: Tensor,
    zero: list[int],
    *,
    estimate: str,
    batch_size: int,
    seed: int,
    drop_zero_rows: bool,
) -> Interplay:
    """The interplay when head rows that labels use are zero (an untrained zero-initialised
    head): K_W has no definition, so only H(K_Z) is a number; the rest is NaN with a note."""
    z = _as_float64(features, "features", 2)
    if drop_zero_rows:
        z = z[torch.linalg.vector_norm(z, dim=1) > 0]
    if estimate == "batch":
        parts = batch_indices(z.shape[0], batch_size, seed)
        h_z = sum(feature_entropy(z[idx]) for idx in parts) / len(parts)
        extra = {
            "batch_size": batch_size,
            "n_batches": len(parts),
            "label": f"batch(B={batch_size},seed={seed})",
            "n_used": sum(len(idx) for idx in parts),
        }
    else:
        h_z, extra = feature_entropy(z), {"n_used": int(z.shape[0])}
    classes = ", ".join(str(c) for c in zero[:5]) + (", ..." if len(zero) > 5 else "")
    note = (
        f"head rows of classes {classes} are zero (an untrained head?): K_W is undefined, "
        "so h_w, h_zw, mi, mir and hdr are NaN"
    )
    if len(zero) < labels.unique().numel():
        note += "; --drop-zero-rows measures the other classes"
    nan = math.nan
    return Interplay(
        h_z,
        nan,
        nan,
        nan,
        nan,
        nan,
        int(z.shape[0]),
        int(head.shape[0]),
        estimate,
        note=note,
        **extra,
    )


def interplay_from_grams(
    grams: Tensor,
    counts: Tensor,
    head: Tensor,
    *,
    max_exact_dim: int | str | None = "auto",
) -> Interplay:
    """The exact :func:`interplay` of samples known only through per-class Grams.

    Args:
        grams: [C, d, d] ``sum_{i: y_i = c} zh_i zh_i^T`` of the unit feature rows of each
            class (float64; :func:`class_grams` of the normalised features).
        counts: [C] samples per class.
        head: [C, d] classifier weights, bias excluded.
        max_exact_dim: as for :func:`interplay`; past it h_zw, mi and mir are NaN with a note.

    ``K_Z`` has the nonzero eigenvalues of ``sum_c G_c / n`` (d x d), ``K_W`` those of
    ``D^1/2 M D^1/2 / n`` and ``K_Z o K_W`` those of ``sum_c G_c' (x) l_c l_c^T / n`` with
    ``G_c'`` the Grams rotated onto the numerical row space of the features (k dims) and
    ``L L^T = M`` the rank-r factor of the head Gram, as in :func:`interplay`'s Khatri-Rao
    route. The values equal :func:`interplay` (``estimate="exact"``) on the same samples up
    to round-off; this is what lets :class:`infoprobe.metrics.InterplayMetrics` stream.
    """
    with torch.no_grad():
        g = _as_float64(grams, "grams", 3)
        w = _as_float64(head, "head", 2).to(g.device)
        counts = counts.to(device=g.device, dtype=torch.float64)
        num_classes, d = w.shape
        if g.shape != (num_classes, d, d) or counts.shape != (num_classes,):
            raise InputError(
                f"grams {tuple(g.shape)} and counts {tuple(counts.shape)} do not "
                f"fit a head of shape {tuple(w.shape)}: expected [C, d, d] and [C]"
            )
        n = int(counts.sum())
        if n == 0:
            raise InputError("no samples: at least one is needed")
        present = counts > 0
        _normalise_rows(w[present], "head")  # raises for a zero row that some label uses
        norms = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        wh = w / torch.where(norms > 0, norms, torch.ones_like(norms))
        total = g.sum(0)
        h_z = float(spectral_entropy(total / n))
        h_w = float(spectral_entropy(_head_matrix_of_counts(wh, counts)))
        lam, vec = torch.linalg.eigh(total)
        rows = vec[:, lam > _zero_threshold(lam, max(n, d))]
        factor = _rank_factor(wh @ wh.mT)
        size = rows.shape[1] * factor.shape[1]
        limit = _limit(max_exact_dim, g.device)
        if limit is not None and size > limit:
            joint = _refused(size, limit)
        else:
            rotated = rows.mT @ g @ rows
            joint = _Joint(float(spectral_entropy(_kronecker_sum(rotated, factor, n))))
    return _result(h_z, h_w, joint, n, num_classes, n)


def feature_entropy(features: Tensor, *, drop_zero_rows: bool = False) -> float:
    """``H(K_Z)`` of features alone: [n, d] -> nats in ``[0, log min(n, d)]``.

    Solved on the smaller of the d x d and n x n sides. ``drop_zero_rows`` leaves out rows
    without a direction (else they raise :class:`InputError`); no rows left gives NaN.
    """
    with torch.no_grad():
        z = _as_float64(features, "features", 2)
        if drop_zero_rows:
            z = z[torch.linalg.vector_norm(z, dim=1) > 0]
        if z.shape[0] == 0:
            return math.nan
        return float(spectral_entropy(_feature_matrix(_normalise_rows(z, "features"))))


def _between_entropies(ah: Tensor, bh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ``(H(K_A), H(K_B), H(K_A o K_B))`` for unit rows ``ah`` [n, p], ``bh`` [n, q]."""
    h_a, h_b = spectral_entropy(_feature_matrix(ah)), spectral_entropy(_feature_matrix(bh))
    return h_a, h_b, _between_joint(ah, bh)


def _between_joint(ah: Tensor, bh: Tensor) -> Tensor:
    n = ah.shape[0]
    ca = _row_space_coordinates(ah) if ah.shape[1] < n else ah
    cb = _row_space_coordinates(bh) if bh.shape[1] < n else bh
    return spectral_entropy(_hadamard_matrix(ca, cb))


def interplay_between(
    features_a: Tensor,
    features_b: Tensor,
    *,
    estimate: Estimate = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    drop_zero_rows: bool = False,
    max_exact_dim: int | str | None = "auto",
    device: str | torch.device | None = None,
) -> Interplay:
    """Interplay between two views of the same n samples (e.g. dense vs pruned features).

    ``features_a`` [n, d1] and ``features_b`` [n, d2] give ``K_A`` and ``K_B`` (rows
    normalised); ``h_z = H(K_A)``, ``h_w = H(K_B)``, ``h_zw = H(K_A o K_B)``. The joint
    entropy uses the d1'*d2' Khatri-Rao route (``Phi_i = a_i (x) b_i``) after rank
    compression when it is smaller than n. ``batch_size``, ``seed``, ``max_exact_dim`` and
    ``device`` are as for :func:`interplay`; ``estimate="batch"`` is the batch mean, and
    every other value computes the joint entropy exactly when it fits ``max_exact_dim`` and
    otherwise leaves it NaN with a note (there is no estimator for two feature sets; the
    entropies and HDR stay exact). ``drop_zero_rows`` drops samples with a zero row in either
    view. ``n_classes`` is None.
    """
    _check_estimate(estimate)
    with torch.no_grad():
        a = _as_float64(features_a, "features_a", 2)
        if device is not None:
            a = a.to(device)
        b = _as_float64(features_b, "features_b", 2).to(a.device)
        if a.shape[0] != b.shape[0]:
            raise InputError(
                f"features_a has {a.shape[0]} rows but features_b has {b.shape[0]}: both must "
                "hold the same samples in the same order"
            )
        if drop_zero_rows:
            keep = (torch.linalg.vector_norm(a, dim=1) > 0) & (
                torch.linalg.vector_norm(b, dim=1) > 0
            )
            a, b = a[keep], b[keep]
        if a.shape[0] == 0:
            raise InputError("features are empty (n = 0): at least one sample is needed")
        ah = _normalise_rows(a, "features_a")
        bh = _normalise_rows(b, "features_b")
        n = a.shape[0]
        limit = _limit(max_exact_dim, a.device)
        widest = max(a.shape[1], b.shape[1])
        if estimate == "batch":

            def entropies_of(idx):
                idx = idx.to(ah.device)
                return _between_entropies(ah[idx], bh[idx])

            def check_size(m):
                _check_size(min(m, widest * widest), limit, "batch estimate")

            means, batches, used = _batch_mean(entropies_of, n, batch_size, seed, check_size)
            return _result(
                means[0],
                means[1],
                _batch_joint(means, batch_size, seed),
                n,
                None,
                used,
                batch_size=batch_size,
                n_batches=batches,
            )
        h_a = float(spectral_entropy(_feature_matrix(ah)))
        h_b = float(spectral_entropy(_feature_matrix(bh)))
        size = min(n, widest * widest)
        if limit is not None and size > limit:
            joint = _refused(size, limit)
        else:
            joint = _Joint(float(_between_joint(ah, bh)))
    return _result(h_a, h_b, joint, n, None, n)
