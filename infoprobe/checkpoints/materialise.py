"""A model built on the ``meta`` device, sized and filled with a checkpoint's weights.

:func:`check_memory` bounds what materialising will allocate. :func:`materialise` gives the
model that building on cpu and ``load_state_dict`` would give, tensor for tensor: same
values, dtypes, shapes and strides. Where it can, it takes the checkpoint's tensors as the
parameters (``load_state_dict(assign=True)``: no random initialisation, no second copy of
the weights) and recomputes the buffers a checkpoint does not hold with timm's
``init_non_persistent_buffers``, which timm provides for models built on ``meta``. A model
holding state this cannot restore (a non-persistent buffer without that method, a tensor
that is no parameter or buffer, tied parameters, a tensor not built on ``meta``) is built on
cpu and loaded by copy instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from infoprobe.memory import check_fits

__all__ = ["check_memory", "materialise", "model_bytes"]


def model_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers once in float32 (the evaluation dtype)."""
    total = 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        size = 4 if t.is_floating_point() else t.element_size()
        total += t.numel() * size
    return total


def check_memory(model: nn.Module, what: str) -> None:
    """InputError when ``model`` (built on ``meta``) would not fit the memory available."""
    check_fits(
        model_bytes(model),
        f"{what}: its weights and buffers",
        "check the model options, or use a machine with more memory",
    )


def _restorable(model: nn.Module) -> bool:
    """Whether every tensor of ``model`` (built on ``meta``) is a parameter or buffer that a
    checkpoint or timm's ``init_non_persistent_buffers`` gives back, none of them shared."""
    named = list(model.named_parameters(remove_duplicate=False))
    named += list(model.named_buffers(remove_duplicate=False))
    if len({id(t) for _, t in named}) != len(named) or any(not t.is_meta for _, t in named):
        return False
    for module in model.modules():
        if any(isinstance(v, Tensor) for v in vars(module).values()):
            return False  # a tensor attribute: computed at construction, not restorable
        if module._non_persistent_buffers_set and not hasattr(
            module, "init_non_persistent_buffers"
        ):
            return False
    return True


def _own_tensors(shell: nn.Module, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """``sd``'s tensors in the dtypes and strides of ``shell``'s, as a copying load leaves
    them; a tensor whose memory another one already uses is copied, so that two parameters
    never share memory unless the model ties them. A BatchNorm step counter the checkpoint
    lacks starts at 0, as in a new model."""
    out: dict[str, Tensor] = {}
    used: set[int] = set()
    for key, want in shell.state_dict().items():
        if key not in sd:
            out[key] = torch.zeros(want.shape, dtype=want.dtype)
            continue
        t = sd[key].to(want.dtype)
        if t.stride() != want.stride() or t.untyped_storage().data_ptr() in used:
            t = torch.empty_strided(want.shape, want.stride(), dtype=want.dtype).copy_(t)
        used.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def materialise(
    shell: nn.Module, sd: dict[str, Tensor], build: Callable[[], nn.Module]
) -> nn.Module:
    """``shell`` (built on ``meta``, its state dict checked against ``sd``) on cpu holding
    ``sd``'s weights. ``build`` builds the same model on cpu, for models whose state
    :func:`_restorable` says a checkpoint cannot give back."""
    if _restorable(shell):
        shell.load_state_dict(_own_tensors(shell, sd), strict=True, assign=True)
        for module in shell.modules():
            for name in module._non_persistent_buffers_set:
                meta = getattr(module, name)
                if meta is not None:  # computed below, by the module itself
                    module.register_buffer(name, torch.empty_like(meta, device="cpu"), False)
            if hasattr(module, "init_non_persistent_buffers"):
                module.init_non_persistent_buffers()
        return shell
    model = build()
    model.load_state_dict(sd, strict=False)  # keys and shapes were compared on meta
    return model
