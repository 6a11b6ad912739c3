"""Grokking on modular addition, tracked with ``infoprobe track`` (paper §6).

Setup (the paper follows Nanda et al. 2023 and Tan & Huang 2023): every pair (a, b) with
a, b in 0..p-1 (p = 97), label (a + b) mod p, a random 30% of the pairs for training and the
rest for testing; an MLP on learned token embeddings (``examples/grokking_model.py``), AdamW
with weight decay 1, full-batch. The model fits the training set within a few hundred steps
and generalises thousands of steps later. A checkpoint series is saved and measured by

    infoprobe track OUT/checkpoints --arch examples/grokking_model.py:factory \
        --model-kwargs d_embed=64 --model-kwargs d_hidden=256 \
        --data OUT/data/test.safetensors --max-samples 2823 --csv OUT/track_test.csv

(and the same on the training split; the test split is subsampled to the training split's
size to keep the exact O(n^3) computation short). The custom architecture is given as
file.py:factory and the data as tensor files holding integer tokens x [n, 2] and labels y [n].

Question: does MIR dip and HDR peak around the generalisation jump, as the paper reports?

    python examples/05_grokking.py [--quick] [--out DIR]
"""

from __future__ import annotations

import json
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


def add_options(parser) -> None:
    parser.add_argument("--p", type=int, default=97, help="modulus (prime)")
    parser.add_argument("--train-frac", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=9000, help="full-batch steps")
    parser.add_argument("--every", type=int, default=250, help="checkpoint every N steps")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def make_data(p: int, frac: float, seed: int, out: Path) -> tuple[dict, dict, Path, Path]:
    """All pairs split at random; written as tensor files with int64 tokens."""
    x, y = modular_addition(p)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(round(frac * len(y)))
    splits = {"train": perm[:n_train].sort().values, "test": perm[n_train:].sort().values}
    paths = {}
    for name, idx in splits.items():
        meta = {"task": f"(a + b) mod {p}", "split": name, "train_frac": str(frac),
                "seed": str(seed), "num_classes": str(p)}
        paths[name] = C.save_tensors({"x": x[idx], "y": y[idx]},
                                     out / "data" / f"{name}.safetensors", meta)
    train = {"x": x[splits["train"]], "y": y[splits["train"]]}
    test = {"x": x[splits["test"]], "y": y[splits["test"]]}
    return train, test, paths["train"], paths["test"]


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    if args.quick:
        args.p, args.steps, args.every = 23, 300, 100
    model_kwargs = {"d_embed": 64, "d_hidden": 256} if not args.quick else {
        "d_embed": 16, "d_hidden": 64}
    train, test, train_path, test_path = make_data(args.p, args.train_frac, args.seed, args.out)
    C.log(f"modular addition mod {args.p}: {len(train['y'])} train / {len(test['y'])} test pairs")

    torch.manual_seed(args.seed)
    model = factory(num_classes=args.p, **model_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay, betas=(0.9, 0.98))
    ckpt_dir = C.fresh_checkpoint_dir(args.out)
    history = []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                acc_tr = (model(train["x"]).argmax(1) == train["y"]).float().mean().item()
                acc_te = (model(test["x"]).argmax(1) == test["y"]).float().mean().item()
            norm = torch.cat([q.detach().flatten() for q in model.parameters()]).norm().item()
            history.append({"step": step, "train_accuracy": acc_tr, "test_accuracy": acc_te,
                            "weight_norm": norm})
            C.save_checkpoint(model, ckpt_dir / f"step{step:05d}.safetensors", arch=ARCH,
                              num_classes=args.p, in_chans=None, model_kwargs=model_kwargs,
                              step=step, epoch=step, task=f"(a + b) mod {args.p}",
                              optimizer=f"AdamW(lr={args.lr}, weight_decay="
                              f"{args.weight_decay}, betas=(0.9, 0.98)), full batch")
            if step % (args.every * 5) == 0:
                C.log(f"step {step}: train acc {acc_tr:.3f}, test acc {acc_te:.3f}, "
                      f"|theta| {norm:.1f} ({timer})")
        if step == args.steps:
            break
        loss = F.cross_entropy(model(train["x"]), train["y"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    C.log(f"trained {args.steps} steps in {timer}")

    # The custom architecture and its arguments are passed explicitly (absolute path: works
    # from any directory); a checkpoint's recorded file.py:factory is only imported with
    # --trust-checkpoint, and its recorded arguments reach a factory only when given or trusted.
    arch = f"{MODEL_FILE}:factory"
    given = [a for k, v in model_kwargs.items() for a in ("--model-kwargs", f"{k}={v}")]
    frames = []
    # The exact n x n route costs O(n^3) here (d * C > n), so the test split is measured on
    # a class-stratified subsample as large as the training split (--max-samples).
    for split, path in (("train", train_path), ("test", test_path)):
        csv = args.out / f"track_{split}.csv"
        subsample = ["--max-samples", len(train["y"])] if split == "test" else []
        C.infoprobe("track", ckpt_dir, "--arch", arch, *given, "--data", path, *subsample,
                    "--csv", csv, "--device", "cpu")
        frame = C.read_csv(csv)
        frame.insert(0, "split", split)
        frames.append(frame)
    import pandas as pd

    rows = pd.concat(frames, ignore_index=True)
    hist = pd.DataFrame(history)
    rows = rows.merge(hist[["step", "weight_norm"]], on="step", how="left")
    C.write_csv(rows, args.out / "grokking.csv")

    summary = summarise(rows, args.p)
    summary.update(p=args.p, train_frac=args.train_frac, steps=args.steps,
                   seconds=round(timer.seconds, 1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(rows, summary, args.out / "grokking.png", args.p)
    C.log(json.dumps(summary, indent=2))
    C.log(f"wrote {args.out / 'grokking.csv'} and {args.out / 'grokking.png'} ({timer})")


def _first_step(frame, column: str, threshold: float):
    hit = frame[frame[column] >= threshold]
    return int(hit["step"].iloc[0]) if len(hit) else None


def summarise(rows, p: int) -> dict:
    """Steps of memorisation and generalisation and MIR/HDR around them."""
    tr = rows[rows.split == "train"].sort_values("step").reset_index(drop=True)
    te = rows[rows.split == "test"].sort_values("step").reset_index(drop=True)
    fit = _first_step(tr, "accuracy", 0.99)
    jump_start = _first_step(te, "accuracy", 0.1)
    grok = _first_step(te, "accuracy", 0.95)
    out = {"memorised_step": fit, "generalisation_starts_step": jump_start,
           "generalised_step": grok, "mir_nc": float(rows["mir_nc"].iloc[0])}
    for name, frame in (("train", tr), ("test", te)):
        after_fit = frame[frame.step >= (fit or 0)]
        at = {"init": frame.iloc[0], "memorised": frame[frame.step == fit].iloc[0]
              if fit is not None else None, "end": frame.iloc[-1]}
        for label, row in at.items():
            if row is not None:
                out[f"{name}_mir_{label}"] = round(float(row.mir), 4)
                out[f"{name}_hdr_{label}"] = round(float(row.hdr), 4)
        if len(after_fit):
            lo = after_fit.loc[after_fit.mir.idxmin()]
            hi = after_fit.loc[after_fit.hdr.idxmax()]
            out[f"{name}_mir_min_after_fit"] = round(float(lo.mir), 4)
            out[f"{name}_mir_min_step"] = int(lo.step)
            out[f"{name}_hdr_max_after_fit"] = round(float(hi.hdr), 4)
            out[f"{name}_hdr_max_step"] = int(hi.step)
    return out


def plot(rows, summary: dict, path: Path, p: int) -> None:
    fig, ax = C.figure(4, width=3.1, height=2.7)
    colours = {"train": "tab:blue", "test": "tab:orange"}
    for split, frame in rows.groupby("split"):
        frame = frame.sort_values("step")
        ax[0].plot(frame.step, frame.accuracy, c=colours[split], label=split)
        ax[1].plot(frame.step, frame.mir, c=colours[split], label=split)
        ax[2].plot(frame.step, frame.hdr, c=colours[split], label=split)
        ax[3].plot(frame.step, frame.h_z, c=colours[split], label=f"H(Z) {split}")
    first = rows[rows.split == "train"].sort_values("step")
    ax[3].plot(first.step, first.h_w, c="k", ls=":", label="H(W) train")
    mir_nc = float(rows["mir_nc"].iloc[0])
    titles = ("accuracy", f"MIR (NC optimum {mir_nc:.3f})", "HDR", "entropy (nats)")
    for a, title in zip(ax, titles, strict=True):
        a.set_title(title)
        a.set_xlabel("step")
        for key, style in (("memorised_step", ":"), ("generalised_step", "--")):
            if summary.get(key) is not None:
                a.axvline(summary[key], c="gray", ls=style, lw=0.8)
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    ax[3].legend(fontsize=7)
    fig.suptitle(f"grokking, (a+b) mod {p}, 30% train: dotted = train fit, dashed = test ≥ 95%",
                 fontsize=9)
    C.save_figure(fig, path)


if __name__ == "__main__":
    main()
