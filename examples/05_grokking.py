"""Grokking on (a + b) mod 113 with the paper's transformer, tracked with ``infoprobe track``
(paper §5.5, Fig. 7).

Setup (Song et al. 2024, §5.5, following Nanda et al. 2023): every pair (a, b) with a, b in
0..p-1 (p = 113) as the tokens ``a b =``, label (a + b) mod p; a random 30% of the 113 x 113
pairs for training, the rest for testing. A one-layer ReLU transformer
(``examples/grokking_model.py``: d_model 128, 4 heads of 32, d_mlp 512, learned positional
embeddings, no LayerNorm), full-batch AdamW (lr 1e-3, weight decay 1, betas (0.9, 0.98), Nanda
et al.'s 10-step linear warm-up). Features are the residual stream at "=" (the input of the
unembedding); the head is the unembedding. Training stops ``--after-grok`` steps after the test
accuracy first reaches 99%, or at ``--max-steps``. Checkpoints (log-spaced early, then every
``--every`` steps) are measured on both splits, with the exact entropies and with the paper's
mini-batch estimate:

    infoprobe track OUT/checkpoints --arch examples/grokking_model.py:factory --trust-code \
        --model-kwargs d_model=128 --model-kwargs n_heads=4 --model-kwargs d_head=32 \
        --model-kwargs d_mlp=512 --data OUT/data/test.safetensors --max-samples 3830 \
        [--estimate batch] --csv ...

(the test split is subsampled, class-stratified, to the training split's size: the exact
computation is an n x n eigen-solve here, since d * C = 128 * 113 > n).

Paper's claim: "After the model achieves the grokking, MIR reaches its lowest, and HDR rapidly
declines from its highest point."

    python examples/05_grokking.py [--quick] [--out DIR] [--skip-training]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from grokking_model import factory, modular_addition  # noqa: E402

NAME = "05_grokking"
MODEL_FILE = C.EXAMPLES / "grokking_model.py"
ARCH = "examples/grokking_model.py:factory"  # recorded in the checkpoints (repo-relative)
PAPER_MODEL = {"d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512}
QUICK_MODEL = {"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64}
ESTIMATES = ("exact", "batch")


def add_options(parser) -> None:
    parser.add_argument("--p", type=int, default=113, help="modulus (prime)")
    parser.add_argument("--train-frac", type=float, default=0.3)
    parser.add_argument("--max-steps", type=int, default=30000, help="full-batch step cap")
    parser.add_argument(
        "--after-grok",
        type=int,
        default=5000,
        help="steps to keep training after test accuracy first reaches 99%%",
    )
    parser.add_argument("--every", type=int, default=500, help="checkpoint every N steps")
    parser.add_argument(
        "--log-points",
        type=int,
        default=20,
        help="extra log-spaced checkpoints in the first --every*4 steps",
    )
    parser.add_argument("--eval-every", type=int, default=100, help="accuracy log interval")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-training",
        action="store_true",
        help="measure the checkpoints and log already in OUT",
    )


def make_data(p: int, frac: float, seed: int, out: Path) -> tuple[dict, dict, Path, Path]:
    """All pairs split at random; written as tensor files with int64 tokens ``a b =``."""
    x, y = modular_addition(p)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(round(frac * len(y)))
    splits = {"train": perm[:n_train].sort().values, "test": perm[n_train:].sort().values}
    data, paths = {}, {}
    for name, idx in splits.items():
        meta = {
            "task": f"(a + b) mod {p}, tokens 'a b ='",
            "split": name,
            "train_frac": str(frac),
            "seed": str(seed),
            "num_classes": str(p),
        }
        data[name] = {"x": x[idx], "y": y[idx]}
        paths[name] = C.save_tensors(data[name], out / "data" / f"{name}.safetensors", meta)
    return data["train"], data["test"], paths["train"], paths["test"]


def checkpoint_steps(max_steps: int, every: int, log_points: int) -> set[int]:
    """Log-spaced steps early (memorisation is fast), then every ``every`` steps."""
    early = C.log_spaced_steps(min(4 * every, max_steps), log_points)
    return set(early) | set(range(0, max_steps + 1, every))


@torch.no_grad()
def _evaluate(model, data: dict) -> tuple[float, float]:
    logits = model(data["x"])
    return (
        float(F.cross_entropy(logits, data["y"])),
        float((logits.argmax(1) == data["y"]).float().mean()),
    )


def train(args, train_set: dict, test_set: dict, model_kwargs: dict, ckpt_dir: Path):
    """Full-batch AdamW until ``after_grok`` steps past 99% test accuracy; returns the log."""
    torch.manual_seed(args.seed)
    model = factory(num_classes=args.p, **model_kwargs)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98)
    )
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(args.warmup, 1), 1.0)
    )
    saves = checkpoint_steps(args.max_steps, args.every, args.log_points)
    history, timer, stop_at = [], C.Timer(), args.max_steps
    for step in range(args.max_steps + 1):
        if step % args.eval_every == 0 or step in saves or step == stop_at:
            model.eval()
            tr_loss, tr_acc = _evaluate(model, train_set)
            te_loss, te_acc = _evaluate(model, test_set)
            norm = torch.cat([q.detach().flatten() for q in model.parameters()]).norm().item()
            history.append(
                {
                    "step": step,
                    "train_loss": tr_loss,
                    "train_accuracy": tr_acc,
                    "test_loss": te_loss,
                    "test_accuracy": te_acc,
                    "weight_norm": norm,
                }
            )
            if te_acc >= 0.99 and stop_at == args.max_steps:
                stop_at = min(args.max_steps, step + args.after_grok)
                saves |= set(range(step, stop_at + 1, args.every)) | {stop_at}
            if step % (args.eval_every * 10) == 0:
                C.write_csv(_frame(history), args.out / "train_log.csv")
                C.log(
                    f"step {step}: train acc {tr_acc:.3f}, test acc {te_acc:.3f}, "
                    f"|theta| {norm:.1f} ({timer})"
                )
        if step in saves or step == stop_at:
            C.save_checkpoint(
                model,
                ckpt_dir / f"step{step:06d}.safetensors",
                arch=ARCH,
                num_classes=args.p,
                in_chans=None,
                model_kwargs=model_kwargs,
                step=step,
                epoch=step,
                task=f"(a + b) mod {args.p}",
                optimizer=f"AdamW(lr={args.lr}, weight_decay="
                f"{args.weight_decay}, betas=(0.9, 0.98)), full batch",
            )
        if step == stop_at:
            break
        model.train()
        loss = F.cross_entropy(model(train_set["x"]), train_set["y"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
    C.log(f"trained {step} steps in {timer}")
    log = _frame(history)
    C.write_csv(log, args.out / "train_log.csv")
    return log


def _frame(history: list[dict]):
    import pandas as pd

    return pd.DataFrame(history)


def measure(args, ckpt_dir: Path, paths: dict[str, Path], n_train: int, model_kwargs: dict):
    """``infoprobe track`` on both splits, exact and batch estimate; one frame."""
    import pandas as pd

    # The custom architecture and its arguments are passed explicitly (absolute path: works
    # from any directory), with --trust-code: it is code outside timm. A checkpoint's recorded
    # file.py:factory is imported only with --trust-checkpoint as well, and its recorded
    # arguments reach a factory only when given or trusted.
    arch = f"{MODEL_FILE}:factory"
    given = [a for k, v in model_kwargs.items() for a in ("--model-kwargs", f"{k}={v}")]
    frames = []
    for split, path in paths.items():
        for estimate in ESTIMATES:
            csv = args.out / f"track_{split}_{estimate}.csv"
            subsample = ["--max-samples", n_train] if split == "test" else []
            # "estimator" is the short name; "estimate" holds the full label
            frame = C.track_frame(
                csv,
                ckpt_dir,
                "--arch",
                arch,
                "--trust-code",
                *given,
                "--data",
                path,
                *subsample,
                "--estimate",
                estimate,
                "--device",
                "cpu",
                split=split,
                estimator=estimate,
            )
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    model_kwargs = PAPER_MODEL
    if args.quick:
        args.p, args.max_steps, args.every, args.log_points = 23, 200, 100, 4
        args.eval_every, args.lr = 50, 3e-3
        model_kwargs = QUICK_MODEL
    train_set, test_set, train_path, test_path = make_data(
        args.p, args.train_frac, args.seed, args.out
    )
    C.log(f"(a + b) mod {args.p}: {len(train_set['y'])} train / {len(test_set['y'])} test")
    ckpt_dir = args.out / "checkpoints"
    if args.skip_training:
        log = C.read_csv(args.out / "train_log.csv")
    else:
        ckpt_dir = C.fresh_checkpoint_dir(args.out)
        log = train(args, train_set, test_set, model_kwargs, ckpt_dir)
    rows = measure(
        args, ckpt_dir, {"train": train_path, "test": test_path}, len(train_set["y"]), model_kwargs
    )
    rows = rows.merge(log[["step", "weight_norm"]], on="step", how="left")
    C.write_csv(rows, args.out / "grokking.csv")

    summary = summarise(rows, log)
    summary.update(
        p=args.p,
        train_frac=args.train_frac,
        model=model_kwargs,
        lr=args.lr,
        weight_decay=args.weight_decay,
    )
    plot(rows, log, summary, args.out / "grokking.png", args.p)
    C.finish(args.out, "grokking", summary, timer)


def _first_step(frame, column: str, threshold: float):
    hit = frame[frame[column] >= threshold]
    return int(hit["step"].iloc[0]) if len(hit) else None


def summarise(rows, log) -> dict:
    """Steps of memorisation and grokking, and where MIR is lowest and HDR highest."""
    out = {
        "memorised_step": _first_step(log, "train_accuracy", 0.99),
        "test_10pct_step": _first_step(log, "test_accuracy", 0.10),
        "grokked_step": _first_step(log, "test_accuracy", 0.99),
        "last_step": int(log["step"].iloc[-1]),
        "mir_nc": float(rows["mir_nc"].iloc[0]),
    }
    for (split, estimate), frame in rows.groupby(["split", "estimator"]):
        frame = frame.sort_values("step")
        key = f"{split}_{estimate}"
        lo, hi = frame.loc[frame.mir.idxmin()], frame.loc[frame.hdr.idxmax()]
        out[f"{key}_mir_min"], out[f"{key}_mir_min_step"] = round(float(lo.mir), 4), int(lo.step)
        out[f"{key}_hdr_max"], out[f"{key}_hdr_max_step"] = round(float(hi.hdr), 4), int(hi.step)
        for label, row in (("init", frame.iloc[0]), ("end", frame.iloc[-1])):
            out[f"{key}_mir_{label}"] = round(float(row.mir), 4)
            out[f"{key}_hdr_{label}"] = round(float(row.hdr), 4)
    return out


def plot(rows, log, summary: dict, path: Path, p: int) -> None:
    fig, ax = C.figure(4, width=3.1, height=2.8)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    styles = {"exact": "-", "batch": "--"}
    for split in ("train", "test"):
        ax[0].plot(log.step, log[f"{split}_accuracy"], c=colours[split], label=split)
    for (split, estimate), frame in rows.groupby(["split", "estimator"]):
        frame = frame.sort_values("step")
        kw = {"c": colours[split], "ls": styles[estimate], "label": f"{split}, {estimate}"}
        ax[1].plot(frame.step, frame.mir, **kw)
        ax[2].plot(frame.step, frame.hdr, **kw)
        if estimate == "exact":
            ax[3].plot(frame.step, frame.h_z, c=colours[split], label=f"H(Z) {split}")
    first = rows[(rows.split == "train") & (rows.estimator == "exact")].sort_values("step")
    ax[3].plot(first.step, first.h_w, c="k", ls=":", label="H(W)")
    titles = ("accuracy", "MIR", "HDR", "entropy, exact (nats)")
    for a, title in zip(ax, titles, strict=True):
        a.set_title(title)
        a.set_xlabel("step")
        for key, style in (("memorised_step", ":"), ("grokked_step", "--")):
            if summary.get(key) is not None:
                a.axvline(summary[key], c="gray", ls=style, lw=0.8)
    for a in ax:
        a.legend(fontsize=7)
    fig.suptitle(
        f"grokking, (a+b) mod {p}, 30% train; grey: dotted = train ≥ 99%, dashed = test ≥ 99%",
        fontsize=9,
    )
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
