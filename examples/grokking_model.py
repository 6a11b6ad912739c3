"""A small model for modular addition, loadable by infoprobe as a custom architecture.

Give it to infoprobe as ``--arch examples/grokking_model.py:factory`` (a relative path is looked
for in the working directory, then beside a checkpoint that records it). infoprobe calls
``factory(num_classes=..., **model_kwargs)`` with what the checkpoint records.

The input is a pair of tokens ``(a, b)`` with ``a, b`` in ``0..p-1``, shaped ``[n, 2]``; the
target is ``(a + b) mod p``. infoprobe feeds int64 token ids from tensor files as they are;
float token ids (from other loaders) are rounded back to integers.

Shape of the network (an MLP in the style of Liu et al., "Omnigrok", and Gromov, "Grokking
modular arithmetic")::

    tokens [n, 2] -> embedding E [p, d_embed] for each token, concatenated [n, 2*d_embed]
                  -> Linear(2*d_embed, d_hidden) -> activation          = features z [n, d_hidden]
                  -> head Linear(d_hidden, p)                             = logits [n, p]

It follows timm's conventions (``num_features``, ``forward_features``, ``forward_head(x,
pre_logits=True)``, ``get_classifier()``), so the penultimate features are the hidden layer
and the classification head is the last linear layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class ModAddMLP(nn.Module):
    """Embed two tokens, one hidden layer, a linear head over ``num_classes`` residues."""

    def __init__(
        self,
        num_classes: int = 97,
        vocab_size: int | None = None,
        d_embed: int = 128,
        d_hidden: int = 512,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        self.num_classes = int(num_classes)
        self.vocab_size = int(vocab_size or num_classes)
        self.num_features = int(d_hidden)
        self.embed = nn.Embedding(self.vocab_size, d_embed)
        self.hidden = nn.Linear(2 * d_embed, d_hidden)
        self.act = _ACTIVATIONS[act]()
        self.head = nn.Linear(d_hidden, self.num_classes)

    def _tokens(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"expected token pairs of shape [n, 2], got {tuple(x.shape)}")
        if x.is_floating_point():  # float token ids are exact up to 2**24
            x = x.round()
        return x.long()

    def forward_features(self, x: Tensor) -> Tensor:
        """Token pairs ``[n, 2]`` (integer or float) -> hidden features ``[n, d_hidden]``."""
        e = self.embed(self._tokens(x)).flatten(1)
        return self.act(self.hidden(e))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def factory(
    num_classes: int = 97,
    in_chans: int | None = None,
    vocab_size: int | None = None,
    d_embed: int = 128,
    d_hidden: int = 512,
    act: str = "relu",
) -> ModAddMLP:
    """Build :class:`ModAddMLP`; ``in_chans`` is accepted for infoprobe's loader and unused."""
    del in_chans
    return ModAddMLP(num_classes, vocab_size, d_embed, d_hidden, act)


def modular_addition(p: int = 97) -> tuple[Tensor, Tensor]:
    """Every pair ``(a, b)`` in ``0..p-1`` as int64 tokens ``[p*p, 2]`` and labels ``(a+b) % p``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], dim=1)
    return x, (x[:, 0] + x[:, 1]) % p
