"""Built on meta, then filled: the model equals building on cpu and loading by copy."""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import randomize_buffers
from safetensors.torch import save_file
from torch import nn

from infoprobe import checkpoints as ck
from infoprobe.checkpoints import materialise

# timm families with buffers a checkpoint does not hold (relative position indices, rotary
# frequencies, attention bias indices), in small configurations
FAMILIES = {
    "test_resnet": {},
    "test_vit_relpos": {},
    "swin_tiny_patch4_window7_224": dict(
        embed_dim=16, depths=[1, 1], num_heads=[1, 2], img_size=56, window_size=7
    ),
    "beit_base_patch16_224": dict(embed_dim=32, depth=1, num_heads=2, img_size=32),
    "eva02_tiny_patch14_224": dict(embed_dim=32, depth=1, num_heads=2, img_size=28),
}
SLOW_FAMILIES = {
    "test_coatnet": {},
    "test_maxvit": {},
    "test_convnext": {},
    "test_efficientnet": {},
    "swinv2_tiny_window8_256": dict(
        embed_dim=16, depths=[1, 1], num_heads=[1, 2], img_size=64, window_size=8
    ),
    "levit_128s": dict(img_size=64),
    "convit_tiny": dict(embed_dim=48, depth=1, num_heads=4, img_size=32, patch_size=16),
    "efficientformerv2_s0": dict(img_size=64),
}


def _reference(name, kwargs):
    """timm's own model, loaded by copy from a state dict saved as safetensors."""
    torch.manual_seed(0)
    source = randomize_buffers(timm.create_model(name, num_classes=5, **kwargs))
    sd = {k: v.contiguous() for k, v in source.state_dict().items()}
    torch.manual_seed(1)  # another random init: the load must overwrite all of it
    ref = timm.create_model(name, num_classes=5, **kwargs)
    ref.load_state_dict(sd)
    return ref.eval(), sd


def _assert_same_model(got: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """Every parameter and buffer (non-persistent ones included) equal in value, dtype,
    shape and strides, with the same kind and grad flag; the same outputs."""
    mine = {**dict(got.named_parameters()), **dict(got.named_buffers())}
    theirs = {**dict(ref.named_parameters()), **dict(ref.named_buffers())}
    assert mine.keys() == theirs.keys()
    for key, want in theirs.items():
        have = mine[key]
        assert have.dtype == want.dtype and have.stride() == want.stride(), key
        assert torch.equal(have, want), key
        assert isinstance(have, nn.Parameter) == isinstance(want, nn.Parameter), key
        assert have.requires_grad == want.requires_grad, key
    assert not got.training
    with torch.no_grad():
        assert torch.equal(got(x), ref(x))


def _check_family(tmp_path, name, kwargs):
    ref, sd = _reference(name, kwargs)
    p = tmp_path / "m.safetensors"
    save_file(sd, str(p))
    loaded = ck.load_model(p, arch=name, model_kwargs=kwargs).model
    size = kwargs.get("img_size")
    shape = (3, size, size) if size else ref.pretrained_cfg["input_size"]
    _assert_same_model(
        loaded, ref, torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    )
    with torch.device("meta"):  # the checkpoint's tensors became the parameters
        assert materialise._restorable(timm.create_model(name, num_classes=5, **kwargs))


@pytest.mark.parametrize("name", FAMILIES)
def test_timm_families_load_as_by_copy(tmp_path, name):
    _check_family(tmp_path, name, FAMILIES[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_FAMILIES)
def test_more_timm_families_load_as_by_copy(tmp_path, name):
    _check_family(tmp_path, name, SLOW_FAMILIES[name])


def test_half_precision_and_strided_checkpoints_load_as_by_copy(tmp_path):
    ref, sd = _reference("test_resnet", {})
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    half["fc.weight"] = half["fc.weight"].t().contiguous().t()  # saved with other strides
    p = tmp_path / "half.pt"
    torch.save(half, p)
    ref.load_state_dict(half)  # copies cast to float32 into the model's own layout
    loaded = ck.load_model(p, arch="test_resnet").model
    _assert_same_model(loaded, ref.float(), torch.randn(2, 3, 16, 16))


# A factory whose models hold state a checkpoint cannot give back (a non-persistent buffer
# without timm's init hook; tied heads; a tensor attribute); it logs each call.
HEADS_SRC = """
import pathlib
import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self, num_classes=3, in_chans=1, tied=False, attribute=False):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.a = nn.Linear(4, num_classes)
        self.b = self.a if tied else nn.Linear(4, num_classes)
        self.register_buffer("scale", torch.arange(4.0) + 1, persistent=False)
        self.offset = torch.full((4,), 0.5) if attribute else None

    def forward(self, x):
        h = self.body(x) * self.scale
        if self.offset is not None:
            h = h + self.offset
        return self.a(h) + self.b(h)


def factory(**kwargs):
    with open(pathlib.Path(__file__).with_suffix(".log"), "a") as log:
        log.write("call\\n")
    return TwoHeads(**kwargs)
"""


@pytest.mark.parametrize("variant", [{}, {"tied": True}, {"attribute": True}])
def test_state_a_checkpoint_cannot_give_back_is_built_on_cpu(tmp_path, variant):
    namespace: dict = {"__file__": str(tmp_path / "unused.py")}
    exec(HEADS_SRC, namespace)
    torch.manual_seed(0)
    source = namespace["TwoHeads"](**variant)
    p = tmp_path / "heads.pt"
    torch.save(source.state_dict(), p)
    (tmp_path / "heads.py").write_text(HEADS_SRC)
    arch = f"{tmp_path / 'heads.py'}:factory"
    loaded = ck.load_model(p, arch=arch, model_kwargs=variant, trust_code=True).model
    ref = namespace["TwoHeads"](**variant)
    ref.load_state_dict(source.state_dict())
    _assert_same_model(loaded, ref.eval(), torch.randn(3, 4))
    calls = (tmp_path / "heads.log").read_text().splitlines()
    assert len(calls) == 2  # on meta, then on cpu
    if variant.get("tied"):
        assert loaded.a.weight is loaded.b.weight


def test_checkpoint_tensors_sharing_memory_do_not_tie_parameters(tmp_path):
    ref, sd = _reference("test_resnet", {})
    shared = torch.zeros_like(sd["bn1.weight"]) + 0.5
    sd["bn1.weight"] = sd["bn1.bias"] = shared  # one tensor under two names
    p = tmp_path / "shared.pt"
    torch.save(sd, p)
    loaded = ck.load_model(p, arch="test_resnet").model
    with torch.no_grad():
        loaded.bn1.weight.zero_()  # a prune sweep zeroes weights in place
    assert torch.equal(loaded.bn1.bias, torch.full_like(shared, 0.5))
