"""From three entropies to an :class:`Interplay`: MI, MIR, HDR, their error bars, and the
degenerate-value rule that every route shares.

**The rule.** An entropy at or below its noise floor
(:func:`infoprobe.entropy.entropy_noise_floor`: the most that float32 round-off can give
features whose true entropy is 0) cannot be told from 0. So ``MIR = I / min(H_a, H_b)`` is
NaN when either entropy is at or below its floor (the smaller one is then 0 within
round-off, and ``I <= min`` is too), and ``HDR = |H_a - H_b| / max(H_a, H_b)`` is NaN when
both are (0/0); ``note`` gives the value and the floor. One side below its floor leaves HDR
defined: it is 1 up to ``floor / max``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from infoprobe.routes import Joint


@dataclass(frozen=True)
class Interplay:
    """Entropies (nats), mutual information and ratios for one set of samples.

    ``estimate`` is the route that gave the joint entropy: ``"exact"`` (the full-set value),
    ``"slq"`` (the stochastic Lanczos estimate of the full-set value, see :mod:`infoprobe.slq`) or
    ``"batch"`` (the mean, taken to be the paper's (assumed), over ``n_batches`` seeded mini-batches
    of ``batch_size`` samples, a different quantity). ``label`` names it with its parameters, as the
    ``estimate`` column does. ``h_z``, ``h_w`` and ``hdr`` are exact on the exact and slq routes.
    ``h_zw_err``, ``mi_err`` and ``mir_err`` are one standard error of the estimate (None when
    exact); ``mir_lower`` is a certified lower bound of MIR (None when the route gives none, NaN
    when it is below 0 and so says nothing). ``n_used`` counts the samples that entered the values
    (the batch estimate drops a short last batch). ``note`` says why a value is NaN (empty when none
    is). ``n_classes`` is None for :func:`infoprobe.info.interplay_between`.
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
class Side:
    """One kernel of a ratio: the name its entropy has in notes, and its noise floor."""

    name: str
    floor: float = 0.0

    def degenerate(self, h: float) -> bool:
        """Whether entropy ``h`` cannot be told from 0 (at or below the floor)."""
        return h <= self.floor

    def describe(self, h: float) -> str:
        return f"{self.name} = {h:.3g} (noise floor {self.floor:.3g})"


_COLLAPSED = (
    "cannot be told from 0, where MIR is 0/0: all vectors on that side point one way (one "
    "sample, one class present, or features collapsed to one direction) up to float32 round-off"
)


def ratios(h_a: float, h_b: float, mi: float, sides: tuple[Side, Side]) -> tuple[float, float, str]:
    """MIR and HDR from two entropies and their MI, NaN with a reason under the rule above.

    No clamping: a value outside [0, 1] beyond round-off would be a bug to see, not hide.
    """
    below = [(side, h) for side, h in zip(sides, (h_a, h_b), strict=True) if side.degenerate(h)]
    shown = "; ".join(side.describe(h) for side, h in below)
    notes = []
    if not below:
        mir = mi / min(h_a, h_b)
    else:
        mir = math.nan
        notes.append(f"MIR is undefined: {shown} {_COLLAPSED}")
    if len(below) < 2:
        hdr = abs(h_a - h_b) / max(h_a, h_b)
    else:
        hdr = math.nan
        notes.append(f"HDR is undefined (0/0): both entropies are at their noise floor ({shown})")
    return mir, hdr, "; ".join(notes)


def build(
    h_z: float,
    h_w: float,
    joint: Joint,
    sides: tuple[Side, Side],
    n: int,
    num_classes: int | None,
    n_used: int,
    **extra,
) -> Interplay:
    """MI, the ratios and their error bars from ``h_z``, ``h_w`` and a joint value.

    ``mir_err = h_zw_err / min(h_z, h_w)`` and ``mir_lower = (h_z + h_w - upper) / min``
    for the certified upper bound ``upper`` of the joint entropy; both NaN when MIR is.
    """
    mi = h_z + h_w - joint.h_zw
    mir, hdr, note = ratios(h_z, h_w, mi, sides)
    scale = math.nan if math.isnan(mir) else 1.0 / min(h_z, h_w)
    err, upper = joint.err, joint.upper
    lower = None if upper is None else (h_z + h_w - upper) * scale
    notes = [joint.note, note]
    if lower is not None and lower < 0:
        notes.append(f"mir_lower left empty: the certified bound ({lower:.3g}) is below 0")
        lower = math.nan
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
        note="; ".join(filter(None, notes)),
        label=joint.label,
        n_used=n_used,
        h_zw_err=err,
        mi_err=err,
        mir_err=None if err is None else err * scale,
        mir_lower=lower,
        **extra,
    )
