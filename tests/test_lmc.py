"""Linear mode connectivity sweeps: interpolation, BN resets, barriers, resume, errors."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from infoprobe import probe
from infoprobe.checkpoints import load_model, read_state_dict
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.rows import analysis_row
from infoprobe.schema import COLUMNS
from infoprobe.sweeps import lmc
from infoprobe.sweeps.lmc import (
    barriers,
    check_compatible,
    interpolate_state,
    lmc_sweep,
    parse_alphas,
    reset_bn_statistics,
)

ARCH = "test_efficientnet"
EVAL = {"device": "cpu", "batch_size": 64}  # one forward pass per evaluation
NUMERIC = [c for c in COLUMNS if c not in ("checkpoint", "estimate", "note", "model")]


def make_model(seed: int, arch: str = ARCH, num_classes: int = 10) -> nn.Module:
    """A timm model with seeded weights and non-trivial BN statistics and step counters."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=num_classes, in_chans=1)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.num_batches_tracked.fill_(100 + seed)
    return model.eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_data(n: int = 40, seed: int = 0) -> LabelledTensors:
    """[n, 1, 16, 16] inputs with a class-dependent pattern, 10 balanced classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    patterns = torch.randn(10, 1, 16, 16, generator=g)
    inputs = patterns[labels] + 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    return LabelledTensors(inputs, labels, "synthetic")


@pytest.fixture(scope="module")
def states() -> tuple[dict, dict]:
    return snapshot(make_model(0)), snapshot(make_model(1))


@pytest.fixture(scope="module")
def data() -> LabelledTensors:
    return make_data()


def assert_rows_close(got: dict, want: dict, rel: float = 0.0, abs_: float = 0.0) -> None:
    for key in NUMERIC:
        g, w = float(got[key]), float(want[key])
        if math.isnan(w):
            assert math.isnan(g), key
        else:
            assert g == pytest.approx(w, rel=rel, abs=abs_), key
    assert got["estimate"] == want["estimate"]


def fresh_model(state: dict) -> nn.Module:
    model = make_model(7)
    model.load_state_dict(state)
    return model


# --------------------------------------------------------------------------- interpolation


def test_interpolate_state_is_the_convex_combination(states):
    a, b = states
    mixed = interpolate_state(a, b, 0.3)
    assert list(mixed) == list(a)
    for key, value in mixed.items():
        if a[key].is_floating_point():
            torch.testing.assert_close(value, 0.7 * a[key] + 0.3 * b[key])
            assert value.dtype == a[key].dtype
        else:  # num_batches_tracked: A's own tensor
            assert value is a[key]
            assert int(value) == 100 and int(b[key]) == 101
    bn_mean = "bn1.running_mean"
    assert not torch.equal(mixed[bn_mean], a[bn_mean])  # BN statistics are interpolated too


def test_interpolate_state_endpoints_are_exact(states):
    a, b = states
    for alpha, want in ((0.0, a), (1.0, b)):
        mixed = interpolate_state(a, b, alpha)
        for key in a:
            if a[key].is_floating_point():
                assert torch.equal(mixed[key], want[key]), key


def test_interpolate_state_mixed_precision_keeps_a_dtype(states):
    a, b = states
    half_b = {k: v.half() if v.is_floating_point() else v for k, v in b.items()}
    mixed = interpolate_state(a, half_b, 0.5)
    key = "conv_stem.weight"
    assert mixed[key].dtype == torch.float32
    torch.testing.assert_close(mixed[key], 0.5 * a[key] + 0.5 * half_b[key].float())


def test_check_compatible_names_keys_and_shapes(states):
    a, _ = states
    other = snapshot(make_model(0, "test_resnet"))
    with pytest.raises(InputError, match="a.pt and b.pt must have the same architecture") as e:
        check_compatible(a, other, "a.pt", "b.pt")
    assert "keys only in a.pt" in str(e.value) and "conv_stem.weight" in str(e.value)
    five = snapshot(make_model(0, num_classes=5))
    with pytest.raises(InputError, match=r"classifier.weight \(10, 256\) vs \(5, 256\)"):
        check_compatible(a, five)
    # old checkpoints without BatchNorm step counters are still compatible
    check_compatible(a, {k: v for k, v in a.items() if not k.endswith("num_batches_tracked")})


def test_mismatched_architectures_fail_before_any_evaluation(states, data, monkeypatch):
    a, _ = states
    five = snapshot(make_model(0, num_classes=5))
    monkeypatch.setattr(probe, "evaluate", _never)
    with pytest.raises(InputError, match="same architecture"):
        next(lmc_sweep(fresh_model(a), a, five, data, [0.0, 1.0]))


def _never(*args, **kwargs):
    raise AssertionError("evaluate must not run")


# --------------------------------------------------------------------------- the sweep


def test_endpoints_equal_analyze_of_each_checkpoint(tmp_path, states, data):
    meta = {"arch": ARCH, "num_classes": "10", "in_chans": "1", "model_kwargs": "{}"}
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path, state in zip(paths, states, strict=True):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), meta)
    loaded = load_model(paths[0])
    state_a, _ = read_state_dict(paths[0])
    state_b, _ = read_state_dict(paths[1])
    rows = list(
        lmc_sweep(
            loaded.model, state_a, state_b, data, [0.0, 0.5, 1.0], name="a→b", eval_kwargs=EVAL
        )
    )
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert list(rows[0]) == ["alpha", *COLUMNS] and rows[0]["checkpoint"] == "a→b"
    for row, path in ((rows[0], paths[0]), (rows[2], paths[1])):
        alone = analysis_row(str(path), probe.evaluate(load_model(path).model, data, **EVAL))
        assert_rows_close(row, alone)  # exact: the same weights give the same numbers
    assert rows[1]["loss"] != rows[0]["loss"] and rows[1]["loss"] != rows[2]["loss"]


def test_symmetry_a_to_b_at_alpha_equals_b_to_a_at_one_minus_alpha(states, data):
    a, b = states
    model = fresh_model(a)
    forward = list(lmc_sweep(model, a, b, data, [0.0, 0.3, 0.5], eval_kwargs=EVAL))
    backward = list(lmc_sweep(model, b, a, data, [0.5, 0.7, 1.0], eval_kwargs=EVAL))
    by_alpha = {round(r["alpha"], 9): r for r in backward}
    for row in forward:
        assert_rows_close(row, by_alpha[round(1 - row["alpha"], 9)], rel=1e-5, abs_=1e-6)


def test_one_model_object_and_no_deep_copy(states, data, monkeypatch, evaluate_calls):
    a, b = states
    model = fresh_model(a)

    def no_deepcopy(*args, **kwargs):
        raise AssertionError("deepcopy called")

    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    seen = evaluate_calls(monkeypatch)
    rows = list(lmc_sweep(model, a, b, data, [0.0, 0.5, 1.0], eval_kwargs=EVAL))
    assert len(rows) == 3 and len(seen) == 3 and all(m is model for m in seen)
    # afterwards the model holds the last point's weights (B)
    assert torch.equal(model.state_dict()["conv_stem.weight"], b["conv_stem.weight"])


def test_state_taken_from_the_model_itself_is_not_corrupted(states, data):
    a, b = states
    model = fresh_model(a)
    aliased = model.state_dict()  # shares memory with the weights the sweep overwrites
    rows = list(lmc_sweep(model, b, aliased, data, [0.5, 1.0], eval_kwargs=EVAL))
    alone = analysis_row("a", probe.evaluate(fresh_model(a), data, **EVAL))
    assert_rows_close(rows[1], alone)


def test_resume_skips_finished_alphas_and_gives_the_same_rows(
    states, data, monkeypatch, evaluate_calls
):
    a, b = states
    model = fresh_model(a)
    alphas = parse_alphas(steps=5)
    full = list(lmc_sweep(model, a, b, data, alphas, eval_kwargs=EVAL))
    calls = evaluate_calls(monkeypatch)
    sweep = lmc_sweep(model, a, b, data, alphas, eval_kwargs=EVAL)
    finished = [next(sweep), next(sweep)]  # interrupted after two rows
    sweep.close()
    # as read back from a CSV written with 6 significant digits
    done = [float(f"{r['alpha']:.6g}") for r in finished]
    rest = list(lmc_sweep(model, a, b, data, alphas, eval_kwargs=EVAL, skip=done))
    assert len(calls) == 5
    assert [r["alpha"] for r in finished + rest] == alphas
    for got, want in zip(finished + rest, full, strict=True):
        assert_rows_close(got, want)
    assert list(lmc_sweep(model, a, b, data, alphas, eval_kwargs=EVAL, skip=alphas)) == []
    assert len(calls) == 5


class Sink:
    def __init__(self) -> None:
        self.events: list = []

    def start(self, total: int, description: str) -> None:
        self.events.append(("start", total))

    def advance(self, n: int) -> None:
        self.events.append(("advance", n))

    def stop(self) -> None:
        self.events.append(("stop",))


def test_progress_counts_points_and_stops_when_closed_early(states, data):
    a, b = states
    sink = Sink()
    sweep = lmc_sweep(
        fresh_model(a), a, b, data, [0.0, 0.5, 1.0], eval_kwargs=EVAL, skip=[0.0], progress=sink
    )
    next(sweep)
    sweep.close()
    assert sink.events == [("start", 2), ("advance", 1), ("stop",)]


# --------------------------------------------------------------------------- BatchNorm reset


def test_reset_bn_changes_running_statistics_and_nothing_else(states, data):
    a, _ = states
    model = fresh_model(a)
    model.train()
    model.conv_head.eval()  # a mixed pattern of modes must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in model.named_modules() if hasattr(m, "momentum")}
    before = snapshot(model)
    used = reset_bn_statistics(model, data, batches=2, batch_size=16, device="cpu")
    after = model.state_dict()
    assert used == 32
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in stats)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {n: m.momentum for n, m in model.named_modules() if hasattr(m, "momentum")} == momenta


def test_reset_bn_is_the_cumulative_average_with_dropout_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x = torch.randn(16, 3) * torch.tensor([1.0, 3.0, 0.2]) + 1.0
    data = LabelledTensors(x, torch.arange(16) % 2, "x")
    with torch.no_grad():
        hidden = model[0](x)  # what BN sees with dropout in eval mode
    reset_bn_statistics(model, data, batch_size=16)  # one batch: the whole set
    bn = model[2]
    torch.testing.assert_close(bn.running_mean, hidden.mean(0))
    torch.testing.assert_close(bn.running_var, hidden.var(0, unbiased=True))
    # two batches of 8 (a seeded permutation): the mean is still the mean of all 16
    reset_bn_statistics(model, data, batch_size=8)
    torch.testing.assert_close(bn.running_mean, hidden.mean(0))
    assert int(bn.num_batches_tracked) == 0 and bn.momentum == 0.1


def test_reset_bn_needs_batchnorm(data):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 10))
    with pytest.raises(InputError, match="--reset-bn needs BatchNorm"):
        reset_bn_statistics(model, data)
    state = snapshot(model)
    with pytest.raises(InputError, match="--reset-bn needs BatchNorm"):
        next(lmc_sweep(model, state, state, data, [0.0], bn_data=data))


def test_reset_bn_rejects_more_batches_than_the_data_holds(states, data):
    with pytest.raises(InputError, match="--bn-batches 5"):
        reset_bn_statistics(fresh_model(states[0]), data, batches=5, batch_size=16)


def test_sweep_with_bn_data_resets_at_every_alpha(states, data):
    a, b = states
    model = fresh_model(a)
    bn_data = make_data(48, seed=1)
    row = next(
        lmc_sweep(
            model,
            a,
            b,
            data,
            [0.5],
            eval_kwargs=EVAL,
            bn_data=bn_data,
            bn_batches=2,
            bn_batch_size=24,
        )
    )
    reference = fresh_model(interpolate_state(a, b, 0.5))
    reset_bn_statistics(reference, bn_data, batches=2, batch_size=24)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    plain = next(lmc_sweep(fresh_model(a), a, b, data, [0.5], eval_kwargs=EVAL))
    assert row["loss"] != plain["loss"]
    assert_rows_close(row, analysis_row("x", probe.evaluate(reference, data, **EVAL)))


# --------------------------------------------------------------------------- alphas, barriers


def test_parse_alphas():
    assert parse_alphas(steps=5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas() == [i / 10 for i in range(11)]
    assert parse_alphas(alphas="1, 0,0.25") == [0.0, 0.25, 1.0]
    assert parse_alphas(alphas=[0.5, 0.0]) == [0.0, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 3, "alphas": "0,1"}, "conflicting options"),
        ({"steps": 1}, "--steps 1"),
        ({"steps": 2.5}, "--steps 2.5"),
        ({"alphas": "0,1.5"}, "alpha 1.5 is outside"),
        ({"alphas": "-0.1"}, "alpha -0.1 is outside"),
        ({"alphas": "0,0.5,0.5"}, "alpha 0.5 is given twice"),
        ({"alphas": "0,half"}, "'half' is not a number"),
        ({"alphas": "nan"}, "not finite"),
        ({"alphas": ""}, "--alphas is empty"),
    ],
)
def test_parse_alphas_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        parse_alphas(**kwargs)


def curve(losses, accuracies, alphas=(0.0, 0.25, 0.5, 0.75, 1.0)):
    return [
        {"alpha": a, "loss": loss, "accuracy": acc}
        for a, loss, acc in zip(alphas, losses, accuracies, strict=True)
    ]


def test_barriers_on_a_hand_made_curve():
    rows = curve([1.0, 1.5, 2.5, 1.6, 1.2], [0.9, 0.8, 0.5, 0.7, 0.8])
    # straight lines: loss 1.05, 1.1, 1.15; accuracy 0.875, 0.85, 0.825 at 0.25, 0.5, 0.75
    got = barriers(reversed(rows))  # order does not matter
    assert got["loss_barrier"] == pytest.approx(1.4)
    assert got["loss_barrier_alpha"] == 0.5
    assert got["accuracy_barrier"] == pytest.approx(0.35)
    assert got["accuracy_barrier_alpha"] == 0.5
    assert got["note"] == ""
    skewed = barriers(curve([1.0, 3.0, 1.2, 1.1, 1.0], [0.9, 0.9, 0.9, 0.6, 0.9]))
    assert skewed["loss_barrier"] == pytest.approx(2.0) and skewed["loss_barrier_alpha"] == 0.25
    assert skewed["accuracy_barrier"] == pytest.approx(0.3)
    assert skewed["accuracy_barrier_alpha"] == 0.75


def test_barriers_of_a_convex_path_are_zero_at_an_endpoint():
    got = barriers(curve([1.0, 0.8, 0.7, 0.8, 1.0], [0.5, 0.6, 0.7, 0.6, 0.5]))
    assert got["loss_barrier"] == 0.0 and got["loss_barrier_alpha"] == 0.0
    assert got["accuracy_barrier"] == 0.0 and got["accuracy_barrier_alpha"] == 0.0


def test_barriers_need_both_endpoints():
    got = barriers(curve([1.0, 2.0], [0.9, 0.5], alphas=(0.0, 0.5)))
    assert math.isnan(got["loss_barrier"]) and math.isnan(got["accuracy_barrier_alpha"])
    assert "alpha = 0 and alpha = 1" in got["note"]
    assert math.isnan(barriers([])["loss_barrier"])


def test_barriers_nan_loss_and_bad_rows():
    got = barriers(curve([1.0, float("nan"), 1.0], [0.9, 0.8, 0.9], alphas=(0.0, 0.5, 1.0)))
    assert math.isnan(got["loss_barrier"]) and "loss barrier is NaN" in got["note"]
    assert got["accuracy_barrier"] == pytest.approx(0.1)
    with pytest.raises(InputError, match="alpha 0.5 twice"):
        barriers(curve([1.0, 1.0, 1.0], [0.9, 0.9, 0.9], alphas=(0.0, 0.5, 0.5)))
    with pytest.raises(InputError, match="'accuracy'"):
        barriers([{"alpha": 0.0, "loss": 1.0}])


def test_sweep_rows_give_barriers(states, data):
    a, b = states
    rows = list(lmc_sweep(fresh_model(a), a, b, data, parse_alphas(steps=3), eval_kwargs=EVAL))
    got = barriers(rows)
    mid = rows[1]
    want = mid["loss"] - (rows[0]["loss"] + rows[2]["loss"]) / 2
    assert got["loss_barrier"] == pytest.approx(max(want, 0.0))
    assert lmc.DEFAULT_STEPS == 11


# --------------------------------------------------------------------------- CUDA (skipped in CI)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_lmc_on_cuda_with_channels_last_amp_and_bn_reset(states, data):
    a, b = states
    kwargs = {"device": "cuda", "batch_size": 64, "channels_last": True, "amp": "bf16"}
    model = fresh_model(a)
    rows = list(lmc_sweep(model, a, b, data, [0.0, 0.5, 1.0], eval_kwargs=kwargs))
    assert next(model.parameters()).is_cuda
    for row, state in ((rows[0], a), (rows[2], b)):
        alone = analysis_row("x", probe.evaluate(fresh_model(state), data, **kwargs))
        assert_rows_close(row, alone, rel=1e-4, abs_=1e-6)
    row = next(
        lmc_sweep(model, a, b, data, [0.5], eval_kwargs=kwargs, bn_data=data, bn_batch_size=20)
    )
    reference = fresh_model(interpolate_state(a, b, 0.5))
    reset_bn_statistics(reference, data, batch_size=20)  # on the CPU
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key].cpu(), value, rtol=1e-4, atol=1e-5)
    assert row["loss"] != rows[1]["loss"]
