"""Models with several classifier heads: measured with the head their logits use, or refused.

The check for every model is the same: the features are timm's pre-logits
``forward_head(forward_features(x), pre_logits=True)``, the logits are ``model(x)``, and the
head W (with its bias b) reproduces those logits, ``logits = features @ W.T + b`` (softmax
is unchanged by a constant per row, so that is allowed). A model for which no such head
exists is refused with an error that names its heads.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.heads import find_heads
from infoprobe.probe import evaluate

C = 5


def _build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=C, **kwargs).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # heads away from their (zero / tiny) initialisation
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.out_features == C:
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


def _data(model: nn.Module, size: int, n: int = 6) -> LabelledTensors:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, 3, size, size, generator=gen)
    return LabelledTensors(inputs=x, labels=torch.arange(n) % C, source="random")


def _reference(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        return pre.flatten(1), model(x)


def assert_consistent(model: nn.Module, d: LabelledTensors, ev) -> None:
    pre, logits = _reference(model, d.inputs)
    assert torch.allclose(ev.features, pre, atol=1e-5)
    assert torch.allclose(ev.logits, logits, atol=1e-5)
    gap = ev.logits.double() - ev.features.double() @ ev.head.double().T
    # what is left is one bias vector, the same for every sample
    assert torch.allclose(gap, gap[:1].expand_as(gap), atol=1e-4)


# small builds: CrossViT's branches see 48 and 32 pixels; EfficientFormer's last stage
# needs 224 inputs (a 7 x 7 attention bias), so its widths shrink instead
CROSSVIT = {
    "img_size": 48,
    "img_scale": (1.0, 32 / 48),
    "patch_size": (12, 16),
    "embed_dim": (16, 32),
    "depth": ((1, 1, 0),),
    "num_heads": (2, 2),
    "mlp_ratio": (1.0, 1.0, 1.0),
}
EFFICIENTFORMER = {"depths": (1, 1, 1, 1), "embed_dims": (8, 8, 16, 16), "num_vit": 1}
# name, build options, input size, heads named when refused (None: supported)
FAMILIES = [
    ("test_resnet", {}, 32, None),
    ("test_efficientnet", {}, 32, None),
    ("test_convnext", {}, 32, None),
    ("test_vit", {"img_size": 32}, 32, None),
    ("test_byobnet", {}, 32, None),
    ("test_nfnet", {}, 32, None),
    ("test_maxvit", {"img_size": 32}, 32, None),
    ("mixer_s32_224", {"img_size": 32}, 32, None),
    ("crossvit_tiny_240", CROSSVIT, 48, None),
    ("efficientformer_l1", EFFICIENTFORMER, 224, None),
    ("levit_128s", {"img_size": 64}, 64, None),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 32, "head, head_dist"),
    ("volo_d1_224", {"img_size": 32}, 32, "aux_head, head"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "refused"), FAMILIES, ids=[f[0] for f in FAMILIES]
)
def test_timm_families_are_measured_consistently_or_refused(name, kwargs, size, refused):
    model = _build(name, **kwargs)
    d = _data(model, size)
    if refused:
        with pytest.raises(InputError, match=f"heads found: {refused}.*--head"):
            evaluate(model, d, device="cpu")
        return
    ev = evaluate(model, d, device="cpu")
    assert_consistent(model, d, ev)


def test_crossvit_uses_both_branches():
    model = _build("crossvit_tiny_240", **CROSSVIT)
    ev = evaluate(model, _data(model, 48), device="cpu")
    heads = list(model.get_classifier())
    assert ev.features.shape[1] == sum(h.in_features for h in heads) == 16 + 32
    assert torch.equal(ev.head, torch.cat([h.weight for h in heads], 1) / 2)


def test_efficientformer_head_is_the_mean_of_its_two_heads():
    model = _build("efficientformer_l1", **EFFICIENTFORMER)
    ev = evaluate(model, _data(model, 224), device="cpu")
    head, dist = model.get_classifier()
    assert torch.equal(ev.head, (head.weight + dist.weight) / 2)


def test_levit_batchnorm_heads_are_folded():
    model = _build("levit_128s", img_size=64)
    ev = evaluate(model, _data(model, 64), device="cpu")
    fused = [h.fuse() for h in model.get_classifier()]
    assert torch.allclose(ev.head, (fused[0].weight + fused[1].weight) / 2, atol=1e-6)


def test_an_explicit_head_gives_its_own_logits():
    model = _build("deit_tiny_distilled_patch16_224", img_size=32)
    d = _data(model, 32)
    ev = evaluate(model, d, head="head_dist", device="cpu")
    with torch.no_grad():
        tokens = model.forward_features(d.inputs)
        want = model.head_dist(tokens[:, 1])
    assert torch.equal(ev.features, tokens[:, 1]) and torch.equal(ev.logits, want)
    assert torch.equal(ev.head, model.head_dist.weight)
    assert [n for n, _ in find_heads(model)] == ["head", "head_dist"]


def test_prune_leaves_every_head_of_a_distilled_model_alone():
    from infoprobe.sweeps.prune import prunable_parameters

    model = _build("levit_128s", img_size=64)
    pruned = {id(m) for m, _ in prunable_parameters(model)}
    for _, head in find_heads(model):
        assert not any(id(m) in pruned for m in head.modules())
    assert any(m is model.head.linear for m, _ in prunable_parameters(model, include_head=True))
