"""One evaluation pass: features, logits, head; devices, OOM retry, features files."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_inputs, make_timm
from safetensors.torch import save_file
from torch import nn

from infoprobe import probe
from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError, RunFailure
from infoprobe.evaluation import Evaluation
from infoprobe.features_file import load_features, save_features
from infoprobe.heads import find_head
from infoprobe.probe import evaluate


def _data(n=24, **kw) -> LabelledTensors:
    x, y = make_inputs(n, **kw)
    return LabelledTensors(inputs=x, labels=y, source="test-data")


class Recorder:
    def __init__(self):
        self.events = []

    def start(self, total, description):
        self.events.append(("start", total))

    def advance(self, n):
        self.events.append(("advance", n))

    def stop(self):
        self.events.append(("stop",))


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_features_equal_timm_pre_logits(name):
    model = make_timm(name)
    d = _data(12, size=32 if name == "test_convnext" else 16)
    ev = evaluate(model, d, device="cpu", batch_size=12)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(d.inputs), pre_logits=True)
        logits = model(d.inputs)
    assert torch.equal(ev.features, pre.flatten(1))
    assert torch.equal(ev.logits, logits)
    assert torch.equal(ev.head, model.get_classifier().weight)
    assert ev.features.dtype == torch.float32 and ev.labels.dtype == torch.int64
    assert math.isclose(ev.loss, float(F.cross_entropy(logits, d.labels)), rel_tol=1e-6)
    assert math.isclose(ev.accuracy, float((logits.argmax(1) == d.labels).double().mean()))
    assert ev.n_samples == 12 and ev.num_classes == 10


def test_batches_and_progress(timm_model):
    d = _data(23)
    rec = Recorder()
    ev = evaluate(timm_model, d, device="cpu", batch_size=5, progress=rec)
    whole = evaluate(timm_model, d, device="cpu", batch_size=64)
    assert torch.allclose(ev.features, whole.features, atol=1e-5)
    assert torch.allclose(ev.logits, whole.logits, atol=1e-5)
    assert rec.events[0] == ("start", 23) and rec.events[-1] == ("stop",)
    assert [e[1] for e in rec.events if e[0] == "advance"] == [5, 5, 5, 5, 3]


def test_training_mode_is_restored_and_dropout_off(timm_model):
    model = make_timm("test_resnet", drop_rate=0.5)
    model.train()
    d = _data(8)
    ev1 = evaluate(model, d, device="cpu")
    ev2 = evaluate(model, d, device="cpu")
    assert model.training and torch.equal(ev1.logits, ev2.logits)


def _custom():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 9),
        nn.ReLU(),
        nn.Linear(9, 10),
    ).eval()


def test_custom_model_last_linear_is_the_head():
    model = _custom()
    assert find_head(model) is model[6]
    assert find_head(model, num_classes=9) is model[4]
    d = _data(10)
    ev = evaluate(model, d, device="cpu")
    with torch.no_grad():
        assert torch.equal(ev.features, model[:6](d.inputs))
    assert ev.head.shape == (10, 9)


def test_conv_1x1_head_is_reshaped():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(5, 10, 1),
        nn.Flatten(),
    ).eval()
    d = _data(6)
    ev = evaluate(model, d, device="cpu")
    assert ev.head.shape == (10, 5) and torch.equal(ev.head, model[3].weight.flatten(1))
    with torch.no_grad():
        assert torch.equal(ev.features, model[:3](d.inputs).flatten(1))
        assert torch.allclose(ev.logits, ev.features @ ev.head.T + model[3].bias, atol=1e-6)


def test_head_path_and_missing_head():
    model = _custom()
    assert find_head(model, head_path="4") is model[4]
    with pytest.raises(InputError, match="--head 9: no such module.*6"):
        find_head(model, head_path="9")
    with pytest.raises(InputError, match="--head 1 is a ReLU"):
        find_head(model, head_path="1")
    with pytest.raises(InputError, match="no classifier head found.*--head"):
        find_head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    with pytest.raises(InputError, match="num_classes=0"):
        find_head(make_timm("test_resnet", num_classes=0))
    # evaluate with an explicit head path: features are that layer's input
    with pytest.raises(RunFailure, match="do not fit"):
        evaluate(model, _data(4), head="4", device="cpu")


def test_labels_out_of_range(timm_model):
    d = _data(6)
    d.labels[2] = 10
    with pytest.raises(InputError, match=r"\[0, 10\] but .* 10 classes \[0, 10\).*--num-classes"):
        evaluate(timm_model, d, device="cpu")


def test_wrong_input_shape_says_what_is_expected(timm_model):
    d = LabelledTensors(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long), "rgb")
    with pytest.raises(InputError, match=r"shape \(3, 16, 16\).*expects \(1, H, W\)"):
        evaluate(timm_model, d, device="cpu")
    mlp = nn.Sequential(nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3))
    d = LabelledTensors(torch.randn(4, 5), torch.zeros(4, dtype=torch.long), "vec")
    with pytest.raises(InputError, match=r"expects \[7\] feature vectors"):
        evaluate(mlp, d, device="cpu")


def test_nan_features_and_empty_data(timm_model):
    with torch.no_grad():
        timm_model.conv1[0].weight[0] = float("nan")
    with pytest.raises(InputError, match="NaN/Inf"):
        evaluate(timm_model, _data(4), device="cpu")
    empty = LabelledTensors(torch.zeros(0, 1, 16, 16), torch.zeros(0, dtype=torch.long), "e")
    with pytest.raises(InputError, match="empty"):
        evaluate(timm_model, empty, device="cpu")


class OOMAbove(nn.Module):
    """Raises out-of-memory for batches larger than ``limit``, like a GPU would."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_oom_retries_at_half_batch(timm_model):
    wrapped = OOMAbove(timm_model, limit=4)
    d = _data(20)
    ev = evaluate(wrapped, d, device="cpu", batch_size=16, head=timm_model.fc)
    assert wrapped.sizes == [16, 8, 4, 4, 4, 4, 4]  # halved until it fits, then kept
    ref = evaluate(timm_model, d, device="cpu", batch_size=16)
    assert torch.allclose(ev.logits, ref.logits, atol=1e-5) and ev.features.shape == (20, 96)
    with pytest.raises(RunFailure, match="out of memory at batch size 1"):
        evaluate(OOMAbove(timm_model, limit=0), d, device="cpu", batch_size=4, head=timm_model.fc)


def test_progress_stopped_on_error(timm_model):
    rec = Recorder()
    with pytest.raises(RunFailure):
        evaluate(
            OOMAbove(timm_model, limit=0),
            _data(4),
            device="cpu",
            batch_size=1,
            head=timm_model.fc,
            progress=rec,
        )
    assert rec.events[-1] == ("stop",)
    assert not timm_model.fc._forward_pre_hooks  # the hook was removed


def test_amp_bf16_on_cpu_and_bad_amp(timm_model):
    d = _data(8)
    ref = evaluate(timm_model, d, device="cpu")
    ev = evaluate(timm_model, d, device="cpu", amp="bf16")
    assert ev.features.dtype == torch.float32
    assert torch.allclose(ev.features, ref.features, rtol=0.05, atol=0.05)
    with pytest.raises(InputError, match="--amp fp8"):
        evaluate(timm_model, d, device="cpu", amp="fp8")


def test_resolve_device():
    assert probe.resolve_device("cpu") == torch.device("cpu")
    auto = probe.resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    bad_cuda = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(InputError, match=f"--device {bad_cuda}"):
        probe.resolve_device(bad_cuda)
    if not torch.backends.mps.is_available():
        with pytest.raises(InputError, match="MPS is not available"):
            probe.resolve_device("mps")
    with pytest.raises(InputError, match="--device tpu9"):
        probe.resolve_device("tpu9")


def test_torchscript_model_cannot_be_hooked(tmp_path):
    model = _custom()
    scripted = torch.jit.trace(model, torch.randn(2, 1, 8, 8))
    with pytest.raises(RunFailure, match="--arch"):
        evaluate(scripted, _data(4, size=8), device="cpu")


# --------------------------------------------------------------------------- features files


def test_features_roundtrip(tmp_path, timm_model):
    ev = evaluate(timm_model, _data(12), device="cpu")
    p = save_features(tmp_path / "f.safetensors", ev)
    back = load_features(p)
    for name in ("features", "logits", "labels", "head"):
        assert torch.equal(getattr(back, name), getattr(ev, name)), name
    assert math.isclose(back.loss, ev.loss, rel_tol=1e-6) and back.accuracy == ev.accuracy
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no leftovers
    bare = Evaluation(ev.features, None, ev.labels, ev.head, float("nan"), float("nan"))
    back = load_features(save_features(tmp_path / "g.safetensors", bare))
    assert back.logits is None and math.isnan(back.loss) and math.isnan(back.accuracy)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"features": torch.zeros(4, 3), "labels": torch.zeros(4)}, "lacks head"),
        (
            {"features": torch.zeros(4, 3), "labels": torch.zeros(4), "head": torch.zeros(2, 5)},
            r"same d",
        ),
        (
            {
                "features": torch.zeros(4, 3),
                "labels": torch.tensor([0, 1, 2, 3]),
                "head": torch.zeros(3, 3),
            },
            r"labels reach 3 .*\[0, 3\)",
        ),
        (
            {"features": torch.zeros(4, 3), "labels": torch.zeros(3), "head": torch.zeros(3, 3)},
            "4 inputs but 3 labels",
        ),
        (
            {
                "features": torch.full((4, 3), float("inf")),
                "labels": torch.zeros(4),
                "head": torch.zeros(3, 3),
            },
            "NaN/Inf",
        ),
        (
            {
                "features": torch.zeros(4, 3),
                "labels": torch.zeros(4),
                "head": torch.zeros(3, 3),
                "logits": torch.zeros(4, 2),
            },
            r"logits \(4, 2\) should be \[4, 3\]",
        ),
    ],
)
def test_bad_features_files(tensors, match, tmp_path):
    p = tmp_path / "f.safetensors"
    save_file(tensors, str(p))
    with pytest.raises(InputError, match=match) as err:
        load_features(p)
    assert str(p) in str(err.value)


def test_features_file_missing_or_corrupt(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_features(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{junk")
    with pytest.raises(InputError, match="corrupt"):
        load_features(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        save_features(
            tmp_path / "no" / "dir.safetensors",
            Evaluation(torch.zeros(1, 1), None, torch.zeros(1).long(), torch.zeros(1, 1), 0.0, 0.0),
        )


# --------------------------------------------------------------------------- rich progress


def test_rich_progress_counts_and_stops(timm_model):
    from rich.console import Console

    from infoprobe.report import RichProgress

    buf = io.StringIO()
    bar = RichProgress(enabled=True, console=Console(file=buf, force_terminal=True, width=80))
    with bar:
        evaluate(timm_model, _data(10), device="cpu", batch_size=4, progress=bar)
        assert bar.completed == 10 and bar.total == 10 and bar._progress is None
    assert "evaluating" in buf.getvalue()
    quiet = RichProgress(enabled=False, console=Console(file=io.StringIO()))
    quiet.start(3, "x")
    quiet.advance(3)
    quiet.stop()
    assert quiet.completed == 3


# --------------------------------------------------------------------------- bundled fixtures

FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures"


def test_bundled_checkpoint_on_bundled_digits():
    from infoprobe.checkpoints import load_model, series_order
    from infoprobe.data import load_data

    loaded = load_model(FIXTURES / "label_smoothing" / "ls0.0.safetensors")  # arch recorded
    assert (loaded.arch, loaded.num_classes, loaded.meta["step"]) == ("test_resnet", 10, 210)
    assert loaded.meta["epoch"] == 10
    d = load_data(FIXTURES / "digits" / "test.safetensors", cache=None)
    assert d.classes == [str(i) for i in range(10)]
    ev = evaluate(loaded.model, d, device="cpu", batch_size=128)
    assert abs(ev.accuracy - 0.9889) < 0.005  # fixtures/README.md
    with torch.no_grad():
        m = loaded.model
        assert torch.equal(
            ev.features, m.forward_head(m.forward_features(d.inputs), pre_logits=True)
        )
    series = sorted((FIXTURES / "series").glob("*.safetensors"), reverse=True)
    steps = [int(p.stem[-3:]) for p in series_order(series)]
    assert steps == [0, 25, 32, 40, 60, 210]


def test_is_features_file(tmp_path):
    from infoprobe.evaluation import Evaluation
    from infoprobe.features_file import is_features_file, save_features

    ev = Evaluation(
        features=torch.randn(4, 3),
        logits=None,
        labels=torch.tensor([0, 1, 0, 1]),
        head=torch.randn(2, 3),
        loss=float("nan"),
        accuracy=float("nan"),
    )
    assert is_features_file(save_features(tmp_path / "f.safetensors", ev))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    assert not is_features_file(tmp_path / "w.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert not is_features_file(tmp_path / "bad.safetensors")
    assert not is_features_file(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------- typed errors


class _Fails(nn.Module):
    """A 1-channel model that raises ``error`` when it runs."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.conv, self.fc, self.error = nn.Conv2d(1, 4, 3), nn.Linear(4, 10), error

    def forward(self, x):
        if x.shape[1] != self.conv.in_channels:
            raise AssertionError  # no words: the shapes decide
        raise self.error


def test_a_model_failure_is_a_runtime_failure_whatever_its_words():
    model = _Fails(RuntimeError("kernel size larger than the input size"))
    with pytest.raises(RunFailure, match="failed on samples 0..3"):
        evaluate(model, _data(4), device="cpu")


def test_inputs_the_model_does_not_take_are_bad_input_whatever_its_words():
    model = _Fails(RuntimeError("unused"))
    with pytest.raises(InputError, match=r"inputs of shape \(3, 16, 16\).*1-channel"):
        evaluate(model, _data(4, chans=3), device="cpu")
