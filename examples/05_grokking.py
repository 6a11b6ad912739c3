"""Grokking on (a + b) mod 113 with the paper's transformer, tracked with ``infoprobe track``
(paper §5.5, Fig. 7).

Setup (Nanda et al. 2023, which the paper's §5.5 is taken to follow: assumed; the paper's text
was not available to check): every pair (a, b) with a, b in 0..p-1 (p = 113) as the tokens ``a b
=``, label (a + b) mod p; a random 30% of the 113 x 113 pairs for training (3831), the rest for
testing (8938). A one-layer ReLU transformer (``examples/grokking_model.py``: d_model 128, 4
heads of 32, d_mlp 512, learned positional embeddings, no LayerNorm), full-batch AdamW (lr 1e-3,
weight decay 1, betas (0.9, 0.98), Nanda et al.'s 10-step linear warm-up). Features are the
residual stream at "=" (the input of the unembedding); the head is the unembedding.

Each seed (``--seeds``) draws its own split and initialisation. The grokking step g is the
first evaluated step (every 100) with test accuracy >= 99%; training runs to step 2 g and
is resumable (``OUT/seedK/state.pt``). The checkpoints (log-spaced early, then every 500
steps, plus g and 2 g) are measured on both splits with the exact entropies and with the
mini-batch estimate at B = 64, 256, 1024 and B = n (one batch holding the whole split, which
is the exact value: checked at three checkpoints). The exact test-split curve is taken on a
class-stratified subsample of 3831 pairs (an n x n solve per checkpoint otherwise); the B = n
rows give the whole test split's exact value at three checkpoints:

    infoprobe track OUT/seed0/checkpoints --arch examples/grokking_model.py:factory --trust-code \
        --model-kwargs d_model=128 --model-kwargs n_heads=4 --model-kwargs d_head=32 \
        --model-kwargs d_mlp=512 --data OUT/seed0/data/test.safetensors \
        {--estimate exact --max-samples 3831 | --estimate batch --estimate-batch-size 256} \
        --csv ...

Paper's claim: "After the model achieves the grokking, MIR reaches its lowest, and HDR rapidly
declines from its highest point."

    python examples/05_grokking.py [--quick] [--out DIR] [--seeds 0,1,2]
        [--stage all|train|measure|report]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _grokking_train as T  # noqa: E402

NAME = "05_grokking"
PAPER_MODEL = {"d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512}
QUICK_MODEL = {"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64}
QUICK = T.GrokConfig(p=23, lr=3e-3, max_steps=200, every=100, log_points=4, eval_every=50)
STAGES = ("all", "train", "measure", "report")


def add_options(parser) -> None:
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--stage", choices=STAGES, default="all")
    parser.add_argument("--max-steps", type=int, default=T.GrokConfig.max_steps)
    parser.add_argument(
        "--grok-factor",
        type=float,
        default=T.GrokConfig.grok_factor,
        help="train until step grok_factor x the grokking step",
    )


def main(argv=None) -> None:
    args = C.parse_args(NAME, __doc__.splitlines()[0], argv, add_options)
    C.setup()
    timer = C.Timer()
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    if args.quick:
        cfg, model_kwargs = QUICK, QUICK_MODEL
    else:
        cfg = T.GrokConfig(max_steps=args.max_steps, grok_factor=args.grok_factor)
        model_kwargs = PAPER_MODEL
    for seed in seeds:
        out = args.out / f"seed{seed}"
        train_set, test_set, train_path, test_path = T.make_data(cfg.p, cfg.train_frac, seed, out)
        if args.stage in ("all", "train"):
            T.train(cfg, seed, model_kwargs, out, train_set, test_set)
        if args.stage in ("all", "measure"):
            import _grokking_measure as M

            M.measure(out, {"train": train_path, "test": test_path}, model_kwargs)
    if args.stage in ("all", "report"):
        import _grokking_measure as M

        M.report(args.out, seeds, cfg, model_kwargs, timer)


if __name__ == "__main__":
    main()
