"""Pruning with fine-tuning: recovery, fixed masks, restored state, resume, cleanup, layout."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from infoprobe import probe
from infoprobe.checkpoints import load_model
from infoprobe.data import LabelledTensors, load_data
from infoprobe.errors import InputError
from infoprobe.info import interplay_between
from infoprobe.rows import analysis_row
from infoprobe.schema import COLUMNS, FT_COLUMNS, SWEEP_COLUMNS
from infoprobe.sweeps import FinetuneOptions, finetune, prunable_parameters, prune_sweep
from infoprobe.sweeps.finetune import Diverged

ROOT = Path(__file__).resolve().parent.parent
A = ROOT / "fixtures/lmc/same_init_a.safetensors"
TEST = ROOT / "fixtures/digits/test.safetensors"
TRAIN = ROOT / "fixtures/digits/train.safetensors"
EVAL = {"device": "cpu", "batch_size": 512}


@pytest.fixture(scope="module")
def digits() -> tuple[LabelledTensors, LabelledTensors]:
    return load_data(TEST), load_data(TRAIN)


def trained() -> nn.Module:
    return load_model(A).model


def small(data: LabelledTensors, n: int) -> LabelledTensors:
    return LabelledTensors(data.inputs[:n], data.labels[:n], data.source)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


# --------------------------------------------------------------------------- options


def test_options_defaults_follow_the_optimizer():
    sgd, adamw = FinetuneOptions(), FinetuneOptions(optimizer="adamw")
    assert (sgd.epochs, sgd.lr, sgd.batch_size, sgd.momentum, sgd.weight_decay) == (
        1,
        0.01,
        64,
        0.9,
        0.0,
    )
    assert (adamw.lr, adamw.weight_decay) == (1e-3, 0.01)
    assert FinetuneOptions(optimizer="adamw", lr=0.5, weight_decay=0).record()["lr"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"epochs": 0}, "--finetune-epochs"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": math.inf}, "--lr"),
        ({"batch_size": 0}, "--finetune-batch-size"),
        ({"optimizer": "adam"}, "--optimizer"),
        ({"momentum": 1.0}, "--momentum"),
        ({"weight_decay": -1e-4}, "--weight-decay"),
    ],
)
def test_bad_options_name_the_flag(kwargs, flag):
    with pytest.raises(InputError, match=flag):
        FinetuneOptions(**kwargs)


def test_options_without_data_are_refused(digits):
    with pytest.raises(InputError, match="need fine-tuning data"):
        next(prune_sweep(trained(), digits[0], [0.5], finetune_options=FinetuneOptions()))


# --------------------------------------------------------------------------- the paper's protocol


def test_finetuning_recovers_accuracy_at_ratio_09(digits):
    test, train = digits
    model = trained()
    plain = list(prune_sweep(model, test, [0.9], method="layer-magnitude", eval_kwargs=EVAL))
    tuned = list(
        prune_sweep(
            model,
            test,
            [0.9],
            method="layer-magnitude",
            eval_kwargs=EVAL,
            finetune_data=train,
            finetune_options=FinetuneOptions(epochs=2),
        )
    )
    before, after = plain[0], tuned[0]
    assert before["accuracy"] < 0.2  # pruned to chance level ...
    assert after["ft_accuracy"] > 0.8  # ... and recovered by 2 epochs of fine-tuning
    assert after["ft_loss"] < before["loss"] / 2
    # the columns before fine-tuning are those of the sweep without it
    for column in (*COLUMNS, "ratio", "sparsity", "mir_dense", "hdr_dense"):
        assert after[column] == before[column] or (
            math.isnan(after[column]) and math.isnan(before[column])
        ), column
    assert list(after) == [*SWEEP_COLUMNS["prune"], *COLUMNS]
    assert all(math.isnan(before[c]) for c in FT_COLUMNS)


def test_ft_columns_are_the_analysis_of_the_fine_tuned_model(digits):
    test, train = digits
    model = trained()
    dense = probe.evaluate(trained(), test, **EVAL)
    sweep = prune_sweep(model, test, [0.5], eval_kwargs=EVAL, finetune_data=small(train, 256))
    row = next(sweep)  # the model holds the fine-tuned weights while the row is consumed
    tuned = probe.evaluate(model, test, **EVAL)
    sweep.close()
    alone = analysis_row("x", tuned)
    assert row["ft_accuracy"] == alone["accuracy"] and row["ft_loss"] == alone["loss"]
    assert row["ft_mir"] == alone["mir"] and row["ft_hdr"] == alone["hdr"]
    between = interplay_between(dense.features, tuned.features)  # vs the DENSE features
    assert row["ft_mir_dense"] == pytest.approx(between.mir, rel=1e-12)
    assert row["ft_hdr_dense"] == pytest.approx(between.hdr, rel=1e-12)
    assert row["ft_accuracy"] != row["accuracy"] and row["ft_mir_dense"] != row["mir_dense"]


# --------------------------------------------------------------------------- masks and state


@pytest.mark.parametrize("iterative", [False, True])
@pytest.mark.parametrize("method", ["global-magnitude", "layer-magnitude"])
def test_sparsity_stays_exact_after_finetuning(digits, method, iterative):
    test, train = digits
    model = trained()
    targets = prunable_parameters(model, include_head=True)
    sizes = [m.weight.numel() for m, _ in targets]
    head = model.get_classifier()
    head_before = head.weight.detach().clone()
    ratios = [0.3, 0.6]
    sweep = prune_sweep(
        model,
        test,
        ratios,
        method=method,
        iterative=iterative,
        include_head=True,
        eval_kwargs=EVAL,
        finetune_data=small(train, 128),
        finetune_options=FinetuneOptions(batch_size=32),
    )
    for ratio, row in zip(ratios, sweep, strict=True):
        zeros = [int((m.weight == 0).sum()) for m, _ in targets]  # fine-tuned weights
        if method == "layer-magnitude":
            assert zeros == [round(ratio * s) for s in sizes]
        else:
            assert sum(zeros) == round(ratio * sum(sizes))
        for m, _ in targets:  # the zeros are exactly the masked entries
            assert torch.equal(m.weight == 0, m.weight_mask == 0)
        assert row["sparsity"] == sum(zeros) / sum(sizes)
        kept = head.weight_mask.bool()
        assert not torch.equal(head.weight[kept], head_before[kept])  # the head is trained
    assert torch.equal(head.weight, head_before)


def test_all_state_is_restored_between_ratios_and_after(digits):
    test, train = digits
    model = trained()
    before = snapshot(model)
    params = [id(p) for p in model.parameters()]
    bn = model.bn1
    plain = list(prune_sweep(trained(), test, [0.3, 0.6], eval_kwargs=EVAL))
    sweep = prune_sweep(model, test, [0.3, 0.6], eval_kwargs=EVAL, finetune_data=small(train, 128))
    rows = []
    for row in sweep:
        rows.append(row)
        # fine-tuning changed what pruning does not touch: BN statistics, affines, biases
        assert not torch.equal(bn.running_mean, before["bn1.running_mean"])
        assert not torch.equal(bn.bias, before["bn1.bias"])
        assert int(bn.num_batches_tracked) > int(before["bn1.num_batches_tracked"])
    # ratio 0.6 started from the dense model again: its values before fine-tuning are those
    # of the sweep without fine-tuning
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in plain]
    assert [r["mir"] for r in rows] == [r["mir"] for r in plain]
    assert same_state(model, before) and not prune.is_pruned(model)
    assert [id(p) for p in model.parameters()] == params
    assert not any(p.grad is not None for p in model.parameters())
    assert not model.training and not any(m.training for m in model.modules())


def test_state_is_restored_after_an_early_stop_and_a_divergence(digits):
    test, train = digits
    model = trained()
    before = snapshot(model)
    sweep = prune_sweep(model, test, [0.3, 0.6], eval_kwargs=EVAL, finetune_data=small(train, 64))
    next(sweep)
    sweep.close()
    assert same_state(model, before)
    # a learning rate that makes the loss NaN: the row says so, the next ratio is clean
    wild = FinetuneOptions(lr=1e12)
    rows = list(
        prune_sweep(
            model,
            test,
            [0.3, 0.6],
            eval_kwargs=EVAL,
            dense_metrics=False,
            finetune_data=small(train, 64),
            finetune_options=wild,
        )
    )
    assert all("fine-tuning diverged" in r["note"] for r in rows)
    assert all(math.isnan(r[c]) for r in rows for c in FT_COLUMNS)
    total = sum(m.weight.numel() for m, _ in prunable_parameters(model))
    assert [r["sparsity"] for r in rows] == [round(0.3 * total) / total, round(0.6 * total) / total]
    assert same_state(model, before)
    with pytest.raises(Diverged, match="fine-tuning diverged"):
        list(
            prune_sweep(
                model,
                test,
                [0.3, 0.6],
                iterative=True,
                eval_kwargs=EVAL,
                finetune_data=small(train, 64),
                finetune_options=wild,
            )
        )
    assert same_state(model, before)


def test_iterative_carries_the_fine_tuned_weights(digits):
    test, train = digits
    model = trained()
    tune = small(train, 128)
    one_shot = list(prune_sweep(model, test, [0.3, 0.6], eval_kwargs=EVAL, finetune_data=tune))
    sweep = prune_sweep(
        model, test, [0.3, 0.6], iterative=True, eval_kwargs=EVAL, finetune_data=tune
    )
    first = next(sweep)
    masks = [m.weight_mask.clone() for m, _ in prunable_parameters(model)]
    second = next(sweep)
    assert first == one_shot[0]  # the first ratio starts from the dense model either way
    # ratio 0.6 pruned the fine-tuned weights: not the one-shot values before fine-tuning
    assert second["accuracy"] != one_shot[1]["accuracy"]
    assert second["sparsity"] == one_shot[1]["sparsity"]
    nested = [m.weight_mask for m, _ in prunable_parameters(model)]
    assert all(bool((new <= old).all()) for old, new in zip(masks, nested, strict=True))
    sweep.close()


@pytest.mark.slow
def test_resume_reaches_the_same_rows(digits):
    test, train = digits
    model = trained()
    tune = small(train, 128)
    ratios = [0.0, 0.3, 0.6]
    for iterative in (False, True):
        full = list(
            prune_sweep(
                model, test, ratios, iterative=iterative, eval_kwargs=EVAL, finetune_data=tune
            )
        )
        rest = list(
            prune_sweep(
                model,
                test,
                ratios,
                iterative=iterative,
                eval_kwargs=EVAL,
                finetune_data=tune,
                skip=[0.0, 0.3],
            )
        )
        assert rest == [full[2]]  # iterative: the skipped ratios were pruned and tuned again
    # fine-tuning at ratio 0 trains the dense model (the baseline of the same training)
    assert full[0]["sparsity"] == 0 and full[0]["ft_accuracy"] != full[0]["accuracy"]


def test_finetuning_is_seeded_and_leaves_the_callers_rng(digits):
    test, train = digits
    model = trained()
    state = torch.random.get_rng_state()

    def run(seed):
        return next(
            iter(
                prune_sweep(
                    model,
                    test,
                    [0.5],
                    eval_kwargs=EVAL,
                    seed=seed,
                    finetune_data=small(train, 128),
                    finetune_options=FinetuneOptions(seed=seed),
                )
            )
        )

    assert run(1) == run(1)
    assert run(1)["ft_accuracy"] != run(2)["ft_accuracy"] or run(1)["ft_loss"] != run(2)["ft_loss"]
    assert torch.equal(torch.random.get_rng_state(), state)


def test_dropout_during_finetuning_is_seeded():
    g = torch.Generator().manual_seed(0)
    data = LabelledTensors(torch.randn(48, 6, generator=g), torch.arange(48) % 3, "tiny")
    caller_seeds = iter(range(100, 200))

    def tuned(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        torch.manual_seed(next(caller_seeds))  # another caller state at every call
        finetune(model, data, FinetuneOptions(batch_size=16, seed=seed), device="cpu")
        return model[0].weight.detach().clone()

    assert torch.equal(tuned(1), tuned(1))  # the dropout masks follow the seed only
    assert not torch.equal(tuned(1), tuned(2))


def test_finetune_trains_in_train_mode_and_restores_the_flags(digits):
    _, train = digits
    model = trained()
    model.blocks.train()  # a mixed state, restored module by module
    flags = [m.training for m in model.modules()]
    modes = []
    hook = model.bn1.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    losses = finetune(
        model, small(train, 128), FinetuneOptions(epochs=2, batch_size=50), device="cpu"
    )
    hook.remove()
    assert modes == [True] * 4  # 2 epochs x 2 batches (the partial batch of 28 is dropped)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert [m.training for m in model.modules()] == flags


@pytest.mark.parametrize(
    ("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16), (False, torch.float32)]
)
def test_finetune_runs_under_autocast(digits, amp, dtype):
    _, train = digits
    model = trained()
    seen = []
    hook = model.get_classifier().register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    losses = finetune(model, small(train, 64), device="cpu", amp=amp)
    hook.remove()
    assert seen == [dtype] and math.isfinite(losses[0])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


def test_finetune_refuses_labels_beyond_the_head(digits):
    _, train = digits
    bad = LabelledTensors(train.inputs[:8], torch.full((8,), 12), "bad.safetensors")
    with pytest.raises(InputError, match=r"lie in \[12, 12\].*10 classes"):
        finetune(trained(), bad, device="cpu")


# --------------------------------------------------------------------------- issue 12: 8 and 9


@pytest.mark.slow
def test_a_half_consumed_sweep_at_interpreter_exit_exits_cleanly():
    script = textwrap.dedent(f"""
        from infoprobe.checkpoints import load_model
        from infoprobe.data import load_data
        from infoprobe.sweeps import prune_sweep
        model = load_model({str(A)!r}).model
        data = load_data({str(TEST)!r})
        sweep = prune_sweep(model, data, [0.3, 0.6], eval_kwargs={{"device": "cpu"}})
        print(next(sweep)["sparsity"])
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) == pytest.approx(0.3, abs=1e-4)


@pytest.mark.parametrize("tune", [False, True])
def test_channels_last_is_kept(digits, tune):
    test, train = digits
    model = trained().to(memory_format=torch.channels_last)
    before = snapshot(model)
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    extra = {"finetune_data": small(train, 64)} if tune else {}
    rows = list(prune_sweep(model, test, [0.5], eval_kwargs=EVAL, **extra))
    assert rows[0]["sparsity"] > 0
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)
    assert same_state(model, before)


# --------------------------------------------------------------------------- the command


def cli_run(*args: object, code: int = 0):
    from typer.testing import CliRunner

    from infoprobe import cli

    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == code, (
        result.exit_code,
        result.stdout,
        result.stderr,
        result.exception,
    )
    return result


FAST = ["--data", TEST, "--max-samples", 100, "--device", "cpu"]


def small_train_file(tmp_path: Path) -> Path:
    from safetensors.torch import save_file

    train = load_data(TRAIN)
    path = tmp_path / "train.safetensors"
    save_file({"x": train.inputs[:96].contiguous(), "y": train.labels[:96].contiguous()}, str(path))
    return path


def test_prune_finetune_command_matches_the_library(tmp_path):
    import json

    import pandas as pd

    train = small_train_file(tmp_path)
    csv, js = tmp_path / "p.csv", tmp_path / "p.json"
    result = cli_run(
        "prune",
        A,
        *FAST,
        "--ratios",
        "0,0.5",
        "--finetune-data",
        train,
        "--finetune-epochs",
        2,
        "--lr",
        0.02,
        "--finetune-batch-size",
        32,
        "--csv",
        csv,
        "--json",
        js,
    )
    frame = pd.read_csv(csv)
    assert list(frame.columns) == [*SWEEP_COLUMNS["prune"], *COLUMNS]
    model = trained()
    test = load_data(TEST, model=model, max_samples=100)
    want = list(
        prune_sweep(
            model,
            test,
            [0, 0.5],
            name=str(A),
            eval_kwargs={"device": "cpu"},
            finetune_data=load_data(train),
            finetune_options=FinetuneOptions(epochs=2, lr=0.02, batch_size=32),
        )
    )
    for column in FT_COLUMNS:
        assert frame[column].tolist() == pytest.approx([w[column] for w in want], rel=1e-9)
    assert "fine-tuned 2 epoch(s)" in result.stdout and "ft_accuracy" in result.stdout
    record = json.loads(js.read_text())["finetune"]
    assert record == {
        "data": str(train),
        "epochs": 2,
        "lr": 0.02,
        "batch_size": 32,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 0.0,
        "seed": 0,
    }
    plain = cli_run("prune", A, *FAST, "--ratios", "0,0.5")
    assert "ft_accuracy" not in plain.stdout and "no fine-tuning" in plain.stdout


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--lr", "0.1"], "--lr applies only with --finetune-data"),
        (["--optimizer", "adamw", "--momentum", "0.5"], "--optimizer applies only with"),
        (
            ["--finetune-data", TRAIN, "--optimizer", "adamw", "--momentum", "0.5"],
            "--momentum applies to --optimizer sgd only",
        ),
        (
            ["--finetune-data", "missing.safetensors"],
            "--finetune-data missing.safetensors does not",
        ),
        (["--finetune-data", TRAIN, "--lr", "-1"], "--lr -1.0 (lr): must be > 0"),
        (
            ["--finetune-data", TRAIN, "--finetune-epochs", "0"],
            "--finetune-epochs 0 (finetune_epochs): must be >= 1",
        ),
    ],
)
def test_bad_finetune_flags_are_bad_input(args, words):
    result = cli_run("prune", A, *FAST, "--ratios", "0.5", *args, code=2)
    assert f"infoprobe: error: {words}" in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stderr


def test_resume_refuses_rows_of_another_finetuning(tmp_path):
    from infoprobe import api

    train = small_train_file(tmp_path)
    csv = tmp_path / "p.csv"
    cli_run("prune", A, *FAST, "--ratios", "0", "--csv", csv, "--finetune-data", train)
    for other in (["--lr", "0.02"], ["--finetune-epochs", "2"], ["--optimizer", "adamw"]):
        result = cli_run(
            "prune",
            A,
            *FAST,
            "--ratios",
            "0,0.5",
            "--csv",
            csv,
            "--resume",
            "--finetune-data",
            train,
            *other,
            code=2,
        )
        assert f"{other[0]} " in result.stderr and "another run" in result.stderr
    result = cli_run("prune", A, *FAST, "--ratios", "0,0.5", "--csv", csv, "--resume", code=2)
    assert "--finetune-data" in result.stderr and "another run" in result.stderr
    # the defaults given explicitly are the same run
    cli_run(
        "prune",
        A,
        *FAST,
        "--ratios",
        "0,0.5",
        "--csv",
        csv,
        "--resume",
        "--finetune-data",
        train,
        "--lr",
        "0.01",
        "--momentum",
        "0.9",
        "--finetune-batch-size",
        "64",
    )
    import pandas as pd

    assert pd.read_csv(csv)["ratio"].tolist() == [0.0, 0.5]
    # the library resumes through the same record: without fine-tuning it is another run
    with pytest.raises(InputError, match="another run \\(--finetune-data unset now"):
        api.prune(str(A), str(TEST), ratios=[0, 0.5, 0.7], max_samples=100, device="cpu",
                  csv=str(csv), resume=True)  # fmt: skip


def test_finetuning_on_the_evaluation_data_warns():
    result = cli_run(
        "prune", A, *FAST, "--ratios", "0.5", "--finetune-data", TEST, "--finetune-epochs", 1
    )
    assert "--finetune-data is the evaluation data" in result.stderr


def test_plot_shows_before_and_after():
    from infoprobe import report

    rows = list(
        prune_sweep(
            trained(),
            load_data(TEST),
            [0.0, 0.5],
            eval_kwargs=EVAL,
            finetune_data=small(load_data(TRAIN), 64),
        )
    )
    axes = report.prune_figure(rows).axes
    labels = [[line.get_label() for line in ax.get_lines()] for ax in axes]
    assert labels == [
        ["accuracy", "ft_accuracy (fine-tuned)"],
        [
            "mir",
            "ft_mir (fine-tuned)",
            "hdr",
            "ft_hdr (fine-tuned)",
            "MIR at neural collapse (0.952)",
            "HDR at neural collapse",
        ],
        ["mir_dense", "ft_mir_dense (fine-tuned)", "hdr_dense", "ft_hdr_dense (fine-tuned)"],
    ]
    after = next(
        line for line in axes[0].get_lines() if line.get_label() == "ft_accuracy (fine-tuned)"
    )
    assert list(after.get_ydata()) == [r["ft_accuracy"] for r in rows]
    assert after.get_linestyle() == "--"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetuning_on_cuda_with_channels_last_and_amp(digits):
    test, train = digits
    model = trained()
    before = snapshot(model)
    kwargs = {"device": "cuda", "batch_size": 512, "channels_last": True, "amp": "bf16"}
    rows = list(
        prune_sweep(model, test, [0.0, 0.5], eval_kwargs=kwargs, finetune_data=small(train, 128))
    )
    total = sum(m.weight.numel() for m, _ in prunable_parameters(model))
    assert rows[1]["sparsity"] == round(0.5 * total) / total
    assert all(math.isfinite(r["ft_accuracy"]) for r in rows)
    assert next(model.parameters()).is_cuda and not prune.is_pruned(model)
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k].cpu(), v) for k, v in before.items())
