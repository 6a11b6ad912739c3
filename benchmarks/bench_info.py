"""Exact fast routes vs the naive route of public implementations, in one run.

Naive route: build the three n x n Gram matrices (K_Z, K_W, K_Z o K_W) and run a float64
``eigvalsh`` on each. Fast route: :func:`infoprobe.interplay` (d x d, C x C and Khatri-Rao
k*r matrices). Prints time ratios and the largest absolute difference of h_z, h_w, h_zw.

    python benchmarks/bench_info.py            # n in {2000, 5000, 10000}, C in {10, 100}
    python benchmarks/bench_info.py --quick    # n in {2000}, for a smoke run
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from infoprobe import info


def naive(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[float, float, float]:
    """The definitions, literally: three n x n float64 eigen-solves."""
    zh = torch.nn.functional.normalize(z.double(), dim=1)
    wh = torch.nn.functional.normalize(w.double(), dim=1)
    k_z = zh @ zh.T
    k_w = wh[y] @ wh[y].T
    out = []
    for k in (k_z, k_w, k_z * k_w):
        lam = torch.linalg.eigvalsh(k / k.shape[0]).clamp_min(0)
        out.append(float(-torch.special.xlogy(lam, lam).sum()))
    return tuple(out)


def features(n: int, d: int, c: int, seed: int = 0):
    """Clustered features, like a trained network's penultimate layer."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.relu(means[y] + 0.8 * torch.randn(n, d, generator=g))
    w = means + 0.3 * torch.randn(c, d, generator=g)
    return z, y, w


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--d", type=int, default=512)
    args = parser.parse_args()
    sizes = [2000] if args.quick else [2000, 5000, 10000]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d = {args.d}")
    # The large case runs first, so the process's peak RSS is its own (plus torch's import).
    n = 2000 if args.quick else 50_000
    z, y, w = features(n, args.d, 10)
    fast, t_fast = timed(info.interplay, z, y, w)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"fast route alone: n = {n}, d = {args.d}, C = 10: {t_fast:.2f} s, process peak RSS "
        f"{peak / 2**20:.2f} GiB, MIR {fast.mir:.6f} HDR {fast.hdr:.6f}",
        flush=True,
    )
    del z, y, w
    print(f"{'n':>6} {'C':>4} {'naive s':>9} {'fast s':>8} {'speed-up':>9} {'max |diff|':>11}")
    for c in (10, 100):
        for n in sizes:
            z, y, w = features(n, args.d, c)
            fast, t_fast = timed(info.interplay, z, y, w, max_exact_dim=0)
            ref, t_naive = timed(naive, z, y, w)
            got = (fast.h_z, fast.h_w, fast.h_zw)
            diff = max(abs(a - b) for a, b in zip(got, ref, strict=True))
            print(
                f"{n:>6} {c:>4} {t_naive:>9.2f} {t_fast:>8.2f} {t_naive / t_fast:>8.1f}x "
                f"{diff:>11.2e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
