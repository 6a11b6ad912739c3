"""Layer features from one evaluation pass: taps, hooks, pooling, streaming, errors.

The reference of every check is built here without infoprobe's layer code: forward hooks on
the modules timm's ``feature_info`` names, the plain forward, and the pooling written out
(mean over H x W, the class token, the mean of the patch tokens).
"""

from __future__ import annotations

import pytest
import timm
import torch
from conftest import make_image_folder, make_timm
from test_multihead import EFFICIENTFORMER, _build, _data
from torch import nn

from infoprobe.data import ImageStream, LabelledTensors, load_data
from infoprobe.errors import InputError, NonFiniteFeatures, RunFailure
from infoprobe.evaluation import restrict_classes
from infoprobe.layers import select_layers
from infoprobe.probe import evaluate


def _hooked_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict:
    """The outputs of the named modules in the plain forward, and the logits."""
    got: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda _m, _a, out, n=n: got.__setitem__(n, out)
        )
        for n in names
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return {**got, "logits": logits}


def _pool_by_hand(out: torch.Tensor, pool: str, prefix: int) -> torch.Tensor:
    if out.ndim == 4:  # [B, C, H, W]
        return out.mean((2, 3))
    if pool == "token":  # [B, N, D] tokens, class token first
        return out[:, 0]
    return out[:, prefix:].mean(1)


# name, build options, input size, how the head pools (the pooling recorded in the rows)
FAMILIES = [
    ("test_resnet", {}, 32, "avg"),
    ("test_efficientnet", {}, 32, "avg"),
    ("test_convnext", {}, 32, "avg"),
    ("test_vit", {"img_size": 32}, 32, "token"),
    ("test_vit", {"img_size": 32, "global_pool": "avg"}, 32, "avg"),
    ("deit_tiny_patch16_224", {"img_size": 32, "depth": 3}, 32, "token"),
    ("efficientformer_l1", EFFICIENTFORMER, 224, "avg"),
    ("levit_128s", {"img_size": 64}, 64, "avg"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "pool"),
    FAMILIES,
    ids=[f"{f[0]}-{f[3]}" for f in FAMILIES],
)
def test_every_stage_is_pooled_as_the_head_pools(name, kwargs, size, pool):
    model = _build(name, **kwargs)
    d = _data(model, size, n=6)
    ev = evaluate(model, d, device="cpu", layers="stages")
    names = [f["module"] for f in model.feature_info]
    assert [layer.name for layer in ev.layers] == [*names, "pre_logits"]
    assert [layer.pooling for layer in ev.layers] == [pool] * len(names) + ["head"]
    ref = _hooked_outputs(model, d.inputs, names)
    prefix = getattr(model, "num_prefix_tokens", 0)
    for layer in ev.layers[:-1]:
        want = _pool_by_hand(ref[layer.name], pool, prefix)
        assert torch.allclose(layer.features, want, atol=1e-5), layer.name
    assert torch.equal(ev.layers[-1].features, ev.features)
    assert torch.allclose(ev.logits, ref["logits"], atol=1e-5)
    plain = evaluate(model, d, device="cpu")
    assert torch.allclose(plain.features, ev.features, atol=1e-6)
    assert torch.equal(plain.head, ev.head) and plain.layers == ()


def test_one_forward_pass_serves_every_layer():
    model = make_timm("test_resnet", in_chans=3)
    d = _data(model, 16, n=20)
    seen = []
    handle = model.conv1.register_forward_hook(lambda _m, args, _o: seen.append(len(args[0])))
    try:
        evaluate(model, d, device="cpu", batch_size=8, layers="stages")
    finally:
        handle.remove()
    # each sample once, in batches, and two samples that check the first batch's logits
    assert seen == [8, 2, 8, 4]


def test_names_and_indices_select_taps():
    model = make_timm("test_resnet", in_chans=3)
    d = _data(model, 16)
    ev = evaluate(model, d, device="cpu", layers="layer2, -1 0")
    assert [layer.name for layer in ev.layers] == ["layer2", "layer4", "act1", "pre_logits"]
    every = evaluate(model, d, device="cpu", layers="stages")
    by_name = {layer.name: layer.features for layer in every.layers}
    for layer in ev.layers:
        assert torch.equal(layer.features, by_name[layer.name])


def test_hooks_on_named_modules_of_a_model_without_taps():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 7),
        nn.ReLU(),
        nn.Linear(7, 5),
    ).eval()
    d = _data(model, 8)
    ev = evaluate(model, d, device="cpu", layers="1,5")
    assert [(lay.name, lay.pooling) for lay in ev.layers] == [
        ("1", "max"),
        ("5", "none"),
        ("pre_logits", "head"),
    ]
    with torch.no_grad():
        maps = model[1](model[0](d.inputs))
        hidden = model[5](model[4](model[3](model[2](maps))))
    assert torch.allclose(ev.layers[0].features, maps.amax((2, 3)), atol=1e-6)
    assert torch.equal(ev.layers[1].features, hidden) and torch.equal(ev.features, hidden)
    with pytest.raises(InputError, match="no forward_intermediates.*NAME,NAME"):
        evaluate(model, d, device="cpu", layers="stages")


def test_all_splits_stages_into_their_blocks():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    d = _data(model, 32, n=6)
    ev = evaluate(model, d, device="cpu", layers="all")
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert [layer.name for layer in ev.layers] == ["act1", *blocks, "pre_logits"]
    ref = _hooked_outputs(model, d.inputs, blocks)
    for layer in ev.layers[1:-1]:
        assert torch.allclose(layer.features, ref[layer.name].mean((2, 3)), atol=1e-6)
    stages = evaluate(model, d, device="cpu", layers="stages")
    assert torch.allclose(ev.layers[-2].features, stages.layers[-2].features, atol=1e-6)


def test_image_folder_streaming_keeps_the_layers(tmp_path):
    model = make_timm("test_resnet", in_chans=3, num_classes=3)
    root = make_image_folder(tmp_path / "imgs", {"a": 5, "b": 4, "c": 3})
    whole = load_data(root, model=model, input_size=12, cache=None)
    stream = load_data(root, model=model, input_size=12, cache=None, stream_above=0)
    assert isinstance(whole, LabelledTensors) and isinstance(stream, ImageStream)
    ref = evaluate(model, whole, device="cpu", batch_size=5, layers="stages")
    got = evaluate(model, stream, device="cpu", batch_size=5, layers="stages")
    assert [lay.name for lay in got.layers] == [lay.name for lay in ref.layers]
    for a, b in zip(got.layers, ref.layers, strict=True):
        assert torch.equal(a.features, b.features), a.name


def test_valid_labels_keep_the_layers():
    model = make_timm("test_resnet", in_chans=3)
    d = _data(model, 16, n=8)
    d = LabelledTensors(inputs=d.inputs, labels=d.labels % 3, source="random")
    ev = evaluate(model, d, device="cpu", layers="layer3", valid_labels=[4, 1, 7])
    assert [layer.name for layer in ev.layers] == ["layer3", "pre_logits"]
    assert ev.head.shape[0] == 3 and ev.layers == restrict_classes(ev, [0, 1, 2]).layers


def test_non_finite_layer_features_name_the_layer():
    model = make_timm("test_resnet", in_chans=3)
    with torch.no_grad():
        model.layer2[0].bn2.running_var[0] = float("nan")
    d = _data(model, 16, n=4)
    with pytest.raises(NonFiniteFeatures, match="at layer layer2"):
        evaluate(model, d, device="cpu", layers="layer2")


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("layer9", r"no such module.*taps: act1, layer1"),
        ("7", r"5 taps, indices 0\.\.4"),
        ("layer2,layer2", "twice"),
        ("layer2,-3", "names layer2 twice"),
        ("pre_logits", "always measured"),
        ("a;b", "is not a layer"),
        ("", "is empty"),
    ],
)
def test_bad_layer_names_are_refused_naming_what_exists(spec, match):
    model = make_timm("test_resnet", in_chans=3)
    with pytest.raises(InputError, match=match):
        select_layers(model, spec)


def test_attention_pooling_and_no_pooling_are_refused():
    model = _build("test_vit", img_size=32, global_pool="map")
    with pytest.raises(InputError, match="pools by attention"):
        evaluate(model, _data(model, 32), device="cpu", layers="stages")
    flat = make_timm("test_resnet", in_chans=3, global_pool="")
    with pytest.raises(InputError, match="does not pool"):
        evaluate(flat, _data(flat, 16), device="cpu", layers="stages")


def test_a_module_that_runs_twice_or_returns_a_tuple_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Linear(4, 4)
            self.pair = nn.LSTM(4, 4, batch_first=True)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.block(self.block(x)))

    model = Twice().eval()
    d = LabelledTensors(inputs=torch.randn(5, 4), labels=torch.arange(5) % 3, source="t")
    with pytest.raises(InputError, match="ran 2 times"):
        evaluate(model, d, device="cpu", layers="block")

    class Pair(Twice):
        def forward(self, x):
            return self.head(self.pair(x[:, None])[0][:, 0])

    with pytest.raises(InputError, match="returns a tuple"):
        evaluate(Pair().eval(), d, device="cpu", layers="pair")


def test_taps_that_do_not_give_the_models_output_are_refused():
    model = make_timm("test_resnet", in_chans=3)
    real = model.forward_intermediates

    def shifted(x, **kwargs):
        final, found = real(x, **kwargs)
        return final + 1.0, found

    model.forward_intermediates = shifted
    with pytest.raises(RunFailure, match="does not give its forward's output"):
        evaluate(model, _data(model, 16), device="cpu", layers="stages")
