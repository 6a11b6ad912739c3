"""Pruning sweeps: masks, thresholds, sparsity, reproducibility, restoration, errors."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from torch import nn
from torch.nn.utils import prune

from infoprobe import probe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.info import batch_indices, interplay_between
from infoprobe.rows import MeasureOptions, analysis_row
from infoprobe.schema import COLUMNS, SWEEP_COLUMNS
from infoprobe.sweeps.prune import (
    measured_sparsity,
    parse_ratios,
    prunable_parameters,
    prune_sweep,
)

EVAL = {"device": "cpu", "batch_size": 64}  # one forward pass per evaluation
PRUNE_COLUMNS = list(SWEEP_COLUMNS["prune"])
NUMERIC = [c for c in COLUMNS if c not in ("checkpoint", "estimate", "note", "model")]


def tiny_model() -> nn.Sequential:
    """4 -> 6 -> 5 -> 3 with tanh; weights of distinct, known magnitudes and mixed signs.

    Layer 1 holds magnitudes 1..24, layer 2 holds 0.5, 1.5, ..., 29.5, so the global order
    interleaves the layers; the head (5 -> 3) holds 0.1..1.5, the smallest of all.
    """
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    g = torch.Generator().manual_seed(0)
    magnitudes = [torch.arange(1, 25) / 1.0, torch.arange(30) + 0.5, torch.arange(1, 16) / 10]
    with torch.no_grad():
        for layer, mags in zip((model[0], model[2], model[4]), magnitudes, strict=True):
            signs = torch.where(torch.rand(mags.numel(), generator=g) < 0.5, -1.0, 1.0)
            shuffled = mags[torch.randperm(mags.numel(), generator=g)] * signs
            layer.weight.copy_(shuffled.view_as(layer.weight) / 30)
            layer.bias.copy_(torch.linspace(-0.2, 0.3, layer.bias.numel()))
    return model.eval()


def tiny_data(n: int = 30) -> LabelledTensors:
    g = torch.Generator().manual_seed(1)
    return LabelledTensors(torch.randn(n, 4, generator=g), torch.arange(n) % 3, "tiny")


def efficientnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():  # non-zero BN shifts: no layer can silence the features
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def data() -> LabelledTensors:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 10
    inputs = torch.randn(10, 1, 16, 16, generator=g)[labels] + 0.5 * torch.randn(
        40, 1, 16, 16, generator=g
    )
    return LabelledTensors(inputs, labels, "synthetic")


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_rows_close(got: dict, want: dict, rel: float = 0.0) -> None:
    for key in NUMERIC:
        g, w = float(got[key]), float(want[key])
        assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=rel), key


def zero_patterns(model: nn.Module) -> list[torch.Tensor]:
    return [
        (m.weight == 0).clone() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    ]


def collect(model: nn.Module, sweep) -> list[tuple[dict, list[torch.Tensor]]]:
    return [(row, zero_patterns(model)) for row in sweep]


# --------------------------------------------------------------------------- inputs


def test_parse_ratios_sorts_and_accepts_sequences():
    assert parse_ratios("0.9, 0,0.5") == [0.0, 0.5, 0.9]
    assert parse_ratios([0.3, 0.1]) == [0.1, 0.3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,1", "ratio 1 is outside"),
        ("-0.1,0.5", "ratio -0.1 is outside"),
        ("0.5,0.2,0.5", "ratio 0.5 is given twice"),
        ("0,abc", "'abc' is not a number"),
        ("0,inf", "'inf' is not finite"),
        ("", "--ratios is empty"),
    ],
)
def test_parse_ratios_errors(text, message):
    with pytest.raises(InputError, match=message):
        parse_ratios(text)


def test_prunable_parameters_exclude_the_head_unless_asked():
    model = efficientnet()
    names = {m: n for n, m in model.named_modules()}
    targets = prunable_parameters(model)
    got = [names[m] for m, _ in targets]
    assert all(n == "weight" for _, n in targets)
    assert "classifier" not in got and "conv_stem" in got and "conv_head" in got
    assert "blocks.3.0.se.conv_reduce" in got  # convs with a bias are prunable too
    assert all(isinstance(m, (nn.Conv2d, nn.Linear)) for m, _ in targets)
    with_head = [names[m] for m, _ in prunable_parameters(model, include_head=True)]
    assert with_head == [*got, "classifier"]
    tiny = tiny_model()
    assert [m for m, _ in prunable_parameters(tiny, head="0")] == [tiny[2], tiny[4]]


def test_no_prunable_layers():
    with pytest.raises(InputError, match="model has no prunable layers"):
        prunable_parameters(nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4)), include_head=True)
    only_head = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(InputError, match="no prunable layers besides the classifier head"):
        next(prune_sweep(only_head, tiny_data(), [0.5], eval_kwargs=EVAL))
    assert len(prunable_parameters(only_head, include_head=True)) == 1


def test_tied_weights_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Linear(4, 3))
    model[2].weight = model[0].weight
    with pytest.raises(InputError, match="layers 0 and 2 share one weight"):
        prunable_parameters(model)


def test_bad_method_and_already_pruned_model():
    with pytest.raises(InputError, match="--method 'magnitude'"):
        next(prune_sweep(tiny_model(), tiny_data(), [0.5], method="magnitude"))
    model = tiny_model()
    prune.l1_unstructured(model[0], "weight", amount=2)
    with pytest.raises(InputError, match="already carries"):
        next(prune_sweep(model, tiny_data(), [0.5]))


# --------------------------------------------------------------------------- masks


def test_global_magnitude_threshold_on_a_hand_made_model():
    model = tiny_model()
    dense = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    head = model[4].weight.detach().clone()
    magnitudes = torch.cat([w.abs().flatten() for w in dense])
    for ratio in (0.25, 0.5, 0.9):
        sweep = prune_sweep(model, tiny_data(), [ratio], eval_kwargs=EVAL)
        row = next(sweep)  # the masks stay while the generator is alive
        k = round(ratio * 54)
        threshold = magnitudes.sort().values[k - 1]  # the k-th smallest |w| (all distinct)
        for layer, w in zip((model[0], model[2]), dense, strict=True):
            assert torch.equal(layer.weight == 0, w.abs() <= threshold)
        assert torch.equal(model[4].weight, head)  # the head (smaller still) is untouched
        assert row["sparsity"] == k / 54
        sweep.close()


def test_layer_magnitude_threshold_on_a_hand_made_model():
    model = tiny_model()
    dense = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    sweep = prune_sweep(model, tiny_data(), [0.5], method="layer-magnitude", eval_kwargs=EVAL)
    row = next(sweep)
    for layer, w in zip((model[0], model[2]), dense, strict=True):
        k = round(0.5 * w.numel())
        threshold = w.abs().flatten().sort().values[k - 1]
        assert torch.equal(layer.weight == 0, w.abs() <= threshold)
    assert row["sparsity"] == (12 + 15) / 54
    # the global threshold would have pruned layer 1 and layer 2 unevenly
    assert int((model[0].weight == 0).sum()) == 12 and int((model[2].weight == 0).sum()) == 15


def test_pruned_rows_are_the_analysis_of_the_pruned_model():
    model = tiny_model()
    data = tiny_data()
    rows = list(prune_sweep(model, data, [0.0, 0.5], name="tiny", eval_kwargs=EVAL))
    assert list(rows[1]) == [*PRUNE_COLUMNS, *COLUMNS] and rows[1]["checkpoint"] == "tiny"
    manual = tiny_model()
    weights = torch.cat([manual[0].weight.abs().flatten(), manual[2].weight.abs().flatten()])
    threshold = weights.sort().values[26]
    with torch.no_grad():
        for layer in (manual[0], manual[2]):
            layer.weight[layer.weight.abs() <= threshold] = 0
    pruned = probe.evaluate(manual, data, **EVAL)
    dense = probe.evaluate(tiny_model(), data, **EVAL)
    assert_rows_close(rows[1], analysis_row("manual", pruned), rel=1e-6)
    between = interplay_between(dense.features, pruned.features)
    assert rows[1]["mir_dense"] == pytest.approx(between.mir, rel=1e-6)
    assert rows[1]["hdr_dense"] == pytest.approx(between.hdr, rel=1e-6)
    assert rows[1]["hdr_dense"] > 0 and rows[0]["hdr_dense"] == 0


def test_ratio_zero_equals_analyze(data, monkeypatch, evaluate_calls):
    model = efficientnet()
    alone = analysis_row("m", probe.evaluate(efficientnet(), data, **EVAL))
    calls = evaluate_calls(monkeypatch)
    rows = list(prune_sweep(model, data, [0.0, 0.3], name="m", eval_kwargs=EVAL))
    assert len(calls) == 2  # the dense evaluation serves ratio 0
    assert {k: rows[0][k] for k in COLUMNS} == alone
    assert rows[0]["ratio"] == 0.0 and rows[0]["sparsity"] == 0.0
    assert rows[0]["hdr_dense"] == 0.0 and 0 < rows[0]["mir_dense"] <= 1
    assert rows[1]["loss"] != rows[0]["loss"]
    calls.clear()
    list(prune_sweep(model, data, [0.3, 0.6], eval_kwargs=EVAL))
    assert len(calls) == 3  # without ratio 0: one dense evaluation more


@pytest.mark.parametrize("method", ["global-magnitude", "random", "layer-magnitude"])
@pytest.mark.parametrize("iterative", [False, True])
def test_sparsity_is_exact(data, method, iterative):
    model = efficientnet()
    targets = prunable_parameters(model)
    sizes = [m.weight.numel() for m, _ in targets]
    total = sum(sizes)
    ratios = [0.1, 0.37, 0.8]
    for ratio, (row, _) in zip(
        ratios,
        collect(
            model,
            prune_sweep(model, data, ratios, method=method, iterative=iterative, eval_kwargs=EVAL),
        ),
        strict=True,
    ):
        if method == "layer-magnitude":
            want = sum(round(ratio * s) for s in sizes) / total
        else:
            want = round(ratio * total) / total
        assert row["sparsity"] == want
        assert row["ratio"] == ratio


def test_head_is_pruned_only_when_asked(data):
    model = efficientnet()
    for include_head, pruned in ((False, 0), (True, 1)):
        sweep = prune_sweep(model, data, [0.6], include_head=include_head, eval_kwargs=EVAL)
        next(sweep)
        zeros = int((model.classifier.weight == 0).sum())
        assert (zeros > 0) == bool(pruned)
        sweep.close()
    assert int((model.classifier.weight == 0).sum()) == 0


def test_random_pruning_is_reproducible_with_a_seed(data):
    model = efficientnet()
    state = torch.random.get_rng_state()

    def run(seed):
        return collect(
            model, prune_sweep(model, data, [0.5], method="random", seed=seed, eval_kwargs=EVAL)
        )

    ((row_a, masks_a),) = run(3)
    ((row_b, masks_b),) = run(3)
    ((row_c, masks_c),) = run(4)
    assert all(torch.equal(x, y) for x, y in zip(masks_a, masks_b, strict=True))
    assert row_a == row_b
    assert not all(torch.equal(x, y) for x, y in zip(masks_a, masks_c, strict=True))
    assert row_a["sparsity"] == row_c["sparsity"]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched


def test_iterative_masks_nest(data):
    model = efficientnet()
    for method in ("random", "global-magnitude"):
        steps = collect(
            model,
            prune_sweep(
                model, data, [0.2, 0.5, 0.8], method=method, iterative=True, eval_kwargs=EVAL
            ),
        )
        for (_, low), (_, high) in zip(steps, steps[1:], strict=False):
            assert all(bool((lo & ~hi).sum() == 0) for lo, hi in zip(low, high, strict=True))
    one_shot = collect(model, prune_sweep(model, data, [0.2, 0.5, 0.8], eval_kwargs=EVAL))
    for (row_i, masks_i), (row_o, masks_o) in zip(steps, one_shot, strict=True):
        # magnitude pruning without fine-tuning: iterating changes nothing
        assert all(torch.equal(x, y) for x, y in zip(masks_i, masks_o, strict=True))
        assert_rows_close(row_i, row_o)


# --------------------------------------------------------------------------- the model


def test_model_is_dense_again_after_the_sweep(data):
    model = efficientnet()
    before = snapshot(model)
    params = [id(p) for p in model.parameters()]
    for method in ("global-magnitude", "layer-magnitude", "random"):
        for iterative in (False, True):
            rows = list(
                prune_sweep(
                    model,
                    data,
                    [0.3, 0.7],
                    method=method,
                    iterative=iterative,
                    include_head=True,
                    eval_kwargs=EVAL,
                )
            )
            assert len(rows) == 2
            after = model.state_dict()
            assert list(after) == list(before)  # same keys, same order
            assert all(torch.equal(after[k], v) for k, v in before.items())
            assert not prune.is_pruned(model)
            assert [id(p) for p in model.parameters()] == params


def test_model_is_dense_after_an_early_stop_or_a_failure(data, monkeypatch):
    model = efficientnet()
    before = snapshot(model)
    sweep = prune_sweep(model, data, [0.3, 0.7], iterative=True, eval_kwargs=EVAL)
    next(sweep)
    assert measured_sparsity(prunable_parameters(model)) > 0
    sweep.close()
    assert not prune.is_pruned(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    real = probe.evaluate
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "evaluate", failing)
    with pytest.raises(RuntimeError, match="boom"):
        list(prune_sweep(model, data, [0.5], eval_kwargs=EVAL))
    assert not prune.is_pruned(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_no_deep_copy_and_one_model_object(data, monkeypatch, evaluate_calls):
    model = efficientnet()

    def no_deepcopy(*args, **kwargs):
        raise AssertionError("deepcopy called")

    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    seen = evaluate_calls(monkeypatch)
    rows = list(prune_sweep(model, data, [0.2, 0.5], method="random", eval_kwargs=EVAL))
    assert len(rows) == 2 and len(seen) == 3 and all(m is model for m in seen)


def test_channels_last_weights_can_be_pruned(data):
    model = efficientnet().to(memory_format=torch.channels_last)
    row = next(prune_sweep(model, data, [0.5], eval_kwargs=EVAL))
    total = sum(m.weight.numel() for m, _ in prunable_parameters(model))
    assert row["sparsity"] == round(0.5 * total) / total


def test_resume_skips_finished_ratios(data, monkeypatch, evaluate_calls):
    model = efficientnet()
    ratios = [0.0, 0.3, 0.6]
    for iterative in (False, True):
        full = list(
            prune_sweep(model, data, ratios, method="random", iterative=iterative, eval_kwargs=EVAL)
        )
        calls = evaluate_calls(monkeypatch)
        rest = list(
            prune_sweep(
                model,
                data,
                ratios,
                method="random",
                iterative=iterative,
                skip=[0.0, 0.3],
                eval_kwargs=EVAL,
            )
        )
        assert len(calls) == 2 and [r["ratio"] for r in rest] == [0.6]  # dense + 0.6
        assert_rows_close(rest[0], full[2])
        assert rest[0]["mir_dense"] == full[2]["mir_dense"] or (
            math.isnan(rest[0]["mir_dense"]) and math.isnan(full[2]["mir_dense"])
        )
        assert list(prune_sweep(model, data, ratios, skip=ratios, eval_kwargs=EVAL)) == []
        assert len(calls) == 2
        monkeypatch.undo()


def test_batch_estimate_applies_to_mir_dense(data):
    model = efficientnet()
    options = MeasureOptions(estimate="batch", batch_size=16, seed=2)
    dense = probe.evaluate(efficientnet(), data, **EVAL)
    sweep = prune_sweep(model, data, [0.2], measure=options, eval_kwargs=EVAL)
    row = next(sweep)
    pruned = probe.evaluate(model, data, **EVAL)
    sweep.close()
    parts = [
        interplay_between(dense.features[i], pruned.features[i]) for i in batch_indices(40, 16, 2)
    ]
    h_a, h_b, h_ab = (sum(getattr(p, f) for p in parts) / 2 for f in ("h_z", "h_w", "h_zw"))
    assert row["mir_dense"] == pytest.approx((h_a + h_b - h_ab) / min(h_a, h_b), rel=1e-9)
    assert row["hdr_dense"] == pytest.approx(abs(h_a - h_b) / max(h_a, h_b), rel=1e-9)
    assert row["estimate"] == "batch(B=16,seed=2)"


def test_dense_metrics_can_be_skipped(data):
    row = next(prune_sweep(efficientnet(), data, [0.5], dense_metrics=False, eval_kwargs=EVAL))
    assert math.isnan(row["mir_dense"]) and math.isnan(row["hdr_dense"])
    assert "dense_metrics=False" in row["note"] and row["sparsity"] > 0


# --------------------------------------------------------------------------- CUDA (skipped in CI)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prune_on_cuda_with_channels_last_and_amp(data):
    model = efficientnet()
    before = snapshot(model)
    kwargs = {"device": "cuda", "batch_size": 64, "channels_last": True, "amp": "bf16"}
    cpu_rng, cuda_rng = torch.random.get_rng_state(), torch.cuda.get_rng_state()

    def run():
        return collect(
            model,
            prune_sweep(
                model,
                data,
                [0.0, 0.5],
                method="random",
                seed=1,
                include_head=True,
                eval_kwargs=kwargs,
            ),
        )

    first, second = run(), run()
    total = sum(m.weight.numel() for m, _ in prunable_parameters(model, include_head=True))
    assert first[1][0]["sparsity"] == round(0.5 * total) / total
    assert all(torch.equal(x, y) for x, y in zip(first[1][1], second[1][1], strict=True))
    assert torch.equal(torch.random.get_rng_state(), cpu_rng)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert next(model.parameters()).is_cuda and not prune.is_pruned(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k].cpu(), v) for k, v in before.items())
    alone = analysis_row("model", probe.evaluate(efficientnet(), data, **kwargs))
    assert_rows_close(first[0][0], alone, rel=1e-4)
