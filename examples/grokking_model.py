"""The grokking transformer of Nanda et al. (2023) for modular addition, the one the paper's
§5.5 is taken to use (assumed; the paper's text was not available to check), loadable by
infoprobe as a custom architecture.

Give it to infoprobe as ``--arch examples/grokking_model.py:factory --trust-code`` (a relative
path is looked for in the working directory; a recorded one, with ``--trust-checkpoint`` as well,
beside the checkpoint that records it). infoprobe calls
``factory(num_classes=..., **model_kwargs)`` with what the checkpoint records.

Task (Nanda et al. 2023; the paper's §5.5 is taken to follow it): the input is the token sequence
``a b =`` with ``a, b`` in ``0..p-1`` and ``=`` the token ``p``, shaped ``[n, 3]`` (int64
token ids; float ids from other loaders are rounded back); the target is ``(a + b) mod p``.

Network (Nanda et al.'s one-layer ReLU transformer, no LayerNorm)::

    x_i   = W_E[t_i] + W_pos[i]                                 residual stream [n, 3, d_model]
    attn  = sum_h W_O^h softmax_j(q_h . k_hj / sqrt(d_head)) v_hj   (causal, read at "=")
    r     = x_2 + attn                                          [n, d_model]
    z     = r + W_out relu(W_in r + b_in) + b_out               features at "=" [n, d_model]
    logits = W_U z                                              head: unembedding [p, d_model]

so the penultimate features are the residual stream at the "=" position (the input of the
unembedding) and the classification head is the unembedding, one row per residue. The logits
are read at "=" only, so only that position needs a query, the MLP and the unembedding: the
forward pass computes those for the last position alone, and the keys and values of all three
positions from per-token tables, ``k_i = (W_E W_K^T)[t_i] + (W_pos W_K^T)[i]`` (linearity of
the projection); this is the same function as the full causal transformer read at "=", in
about a third of the arithmetic. ``reference_logits`` computes it the textbook way.

It follows timm's conventions (``num_features``, ``forward_features``, ``forward_head(x,
pre_logits=True)``, ``get_classifier()``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ModAddTransformer(nn.Module):
    """One attention layer (``n_heads`` x ``d_head``) and one ReLU MLP on a residual stream of
    width ``d_model``, learned positional embeddings, no LayerNorm, an unembedding without
    bias over ``num_classes`` residues. Initialisation as Nanda et al.: N(0, 1/d_model) for
    every matrix but the unembedding (N(0, 1/vocab)), zero MLP biases."""

    def __init__(
        self,
        num_classes: int = 113,
        vocab_size: int | None = None,
        d_model: int = 128,
        n_heads: int = 4,
        d_head: int = 32,
        d_mlp: int = 512,
        n_ctx: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.vocab_size = int(vocab_size or num_classes + 1)  # the residues and "="
        self.n_heads, self.d_head, self.n_ctx = int(n_heads), int(d_head), int(n_ctx)
        self.num_features = int(d_model)
        width = self.n_heads * self.d_head
        self.embed = nn.Embedding(self.vocab_size, d_model)
        self.pos = nn.Parameter(torch.empty(self.n_ctx, d_model))
        self.q = nn.Linear(d_model, width, bias=False)
        self.k = nn.Linear(d_model, width, bias=False)
        self.v = nn.Linear(d_model, width, bias=False)
        self.o = nn.Linear(width, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, self.num_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1 / math.sqrt(self.num_features)
        for w in (
            self.embed.weight,
            self.pos,
            self.q.weight,
            self.k.weight,
            self.v.weight,
            self.o.weight,
            self.mlp_in.weight,
            self.mlp_out.weight,
        ):
            nn.init.normal_(w, std=std)
        nn.init.normal_(self.unembed.weight, std=1 / math.sqrt(self.vocab_size))
        nn.init.zeros_(self.mlp_in.bias)
        nn.init.zeros_(self.mlp_out.bias)

    def _tokens(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.n_ctx:
            raise ValueError(
                f"expected token sequences of shape [n, {self.n_ctx}] "
                f"('a b ='), got {tuple(x.shape)}"
            )
        if x.is_floating_point():  # float token ids are exact up to 2**24
            x = x.round()
        return x.long()

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.n_heads, self.d_head))

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens ``[n, n_ctx]`` -> residual stream at the last position ``[n, d_model]``."""
        t = self._tokens(x)
        pos = torch.arange(self.n_ctx, device=t.device)
        # keys/values of every position from per-token tables (k = x W_K^T is linear in x)
        keys = self.k(self.embed.weight)[t] + self.k(self.pos)[pos]  # [n, ctx, hd]
        values = self.v(self.embed.weight)[t] + self.v(self.pos)[pos]
        resid = self.embed(t[:, -1]) + self.pos[-1]  # [n, d]
        q = self._heads(self.q(resid))  # [n, h, dh]
        scores = torch.einsum("nhd,nchd->nhc", q, self._heads(keys)) / math.sqrt(self.d_head)
        mixed = torch.einsum("nhc,nchd->nhd", scores.softmax(-1), self._heads(values))
        resid = resid + self.o(mixed.flatten(1))  # the last position attends to all (causal)
        return resid + self.mlp_out(torch.relu(self.mlp_in(resid)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.unembed(x)

    def get_classifier(self) -> nn.Module:
        return self.unembed

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reference_logits(self, x: Tensor) -> Tensor:
        """The textbook forward pass: every position, causal mask, logits read at the last."""
        t = self._tokens(x)
        h = self.embed(t) + self.pos  # [n, ctx, d]
        q, k, v = (self._heads(f(h)) for f in (self.q, self.k, self.v))  # [n, ctx, h, dh]
        scores = torch.einsum("nihd,njhd->nhij", q, k) / math.sqrt(self.d_head)
        causal = torch.ones(self.n_ctx, self.n_ctx, dtype=torch.bool, device=t.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        mixed = torch.einsum("nhij,njhd->nihd", scores.softmax(-1), v)
        h = h + self.o(mixed.flatten(2))
        h = h + self.mlp_out(torch.relu(self.mlp_in(h)))
        return self.unembed(h[:, -1])


def factory(
    num_classes: int = 113,
    in_chans: int | None = None,
    vocab_size: int | None = None,
    d_model: int = 128,
    n_heads: int = 4,
    d_head: int = 32,
    d_mlp: int = 512,
) -> ModAddTransformer:
    """Build :class:`ModAddTransformer`; ``in_chans`` is accepted for infoprobe's loader and
    unused."""
    del in_chans
    return ModAddTransformer(num_classes, vocab_size, d_model, n_heads, d_head, d_mlp)


def modular_addition(p: int = 113) -> tuple[Tensor, Tensor]:
    """Every pair ``(a, b)`` in ``0..p-1`` as int64 sequences ``a b =`` ``[p*p, 3]`` (``=`` is
    token ``p``) and labels ``(a + b) % p``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)
    return x, (x[:, 0] + x[:, 1]) % p
