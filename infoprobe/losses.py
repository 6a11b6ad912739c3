"""Information-interplay loss terms for training loops.

Song et al. (ICML 2024) are taken to train with ``L = CE - lambda_1 * I(K_Z; K_W) +
lambda_2 * |H(K_Z) - H(K_W)|`` on each batch (the form of the terms is assumed; the paper's
text was not available to check). :class:`InterplayLoss` is the information part; add it to
your cross-entropy. Gradients reach both the features and the head weights, and stay finite
when eigenvalues repeat (see :mod:`infoprobe.info`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from infoprobe.info import entropies, prepare


@dataclass(frozen=True)
class InterplayTerms:
    """The loss and its parts on one batch, all 0-dim float64 tensors (nats)."""

    loss: Tensor
    mi: Tensor
    h_z: Tensor
    h_w: Tensor


class InterplayLoss(nn.Module):
    """``-lambda_mi * I(K_Z; K_W) + lambda_hdr * |H(K_Z) - H(K_W)|`` on a batch.

    ``forward(features [B, d], labels [B] int, head [C, d]) -> loss`` (0-dim, float64; cast
    it when adding to a lower-precision loss). ``head`` is the classifier weight, bias
    excluded, e.g. ``model.get_classifier().weight``. Use :meth:`terms` for the parts.

    Example::

        criterion = InterplayLoss(lambda_mi=0.1, lambda_hdr=0.1)
        loss = F.cross_entropy(logits, y) + criterion(features, y, fc.weight).float()
    """

    def __init__(self, lambda_mi: float = 1.0, lambda_hdr: float = 1.0) -> None:
        super().__init__()
        self.lambda_mi = float(lambda_mi)
        self.lambda_hdr = float(lambda_hdr)

    def terms(self, features: Tensor, labels: Tensor, head: Tensor) -> InterplayTerms:
        zh, y, wh = prepare(features, labels, head)
        h_z, h_w, h_zw = entropies(zh, y, wh)
        mi = h_z + h_w - h_zw
        loss = -self.lambda_mi * mi + self.lambda_hdr * (h_z - h_w).abs()
        return InterplayTerms(loss, mi, h_z, h_w)

    def forward(self, features: Tensor, labels: Tensor, head: Tensor) -> Tensor:
        return self.terms(features, labels, head).loss

    def extra_repr(self) -> str:
        return f"lambda_mi={self.lambda_mi}, lambda_hdr={self.lambda_hdr}"
