"""One prepared check on a CUDA machine: the same numbers as on CPU, and the timings.

    python benchmarks/gpu_check.py              # exits non-zero if any check fails
    python benchmarks/gpu_check.py --cpu-smoke  # the same logic on CPU at small sizes

Checks: (1) interplay on CUDA equals the CPU float64 value to 1e-9 and its time, up to
n = 10k, d = 2048, C = 1000 (both run); (2) the ImageNet-scale exact solve on the GPU
(n = 50k, d = 2048, C = 1000): ``--estimate auto`` must take the exact route under the
default limit from free memory, with its time and peak memory, and the slq estimate on the
GPU must agree with it within 2 error bars; (3) InterplayLoss gradients on CUDA equal CPU's;
(4) probe.evaluate on CUDA (fp32, then bf16 autocast with channels_last) against CPU on the
bundled fixtures; (5) the CLI with ``--device cuda``, ``--amp`` and ``--channels-last`` on
analyze, lmc (with ``--reset-bn``) and prune (also fine-tuned, with bf16 and fp16 autocast,
the latter through a gradient scaler). ``--cpu-smoke`` runs every check with
``cpu`` in place of ``cuda`` and sizes divided by 10 (C by 10 as well), to test this script
where no GPU is lent; its timings mean nothing.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from infoprobe import info
from infoprobe.losses import InterplayLoss

FAILED: list[str] = []
DEV = "cuda"  # --cpu-smoke: "cpu"
SCALE = 1  # --cpu-smoke: 10


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def clustered(n, d, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.relu(means[y] + 0.8 * torch.randn(n, d, generator=g))
    return z, y, means + 0.3 * torch.randn(c, d, generator=g)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else float("nan")


def shape(n, d, c):
    return n // SCALE, max(d // SCALE, 8), max(c // SCALE, 3)


def interplay_on_cuda() -> None:
    for n, d, c in [(10_000, 512, 10), (10_000, 512, 100), (50_000, 512, 10), (10_000, 2048, 1000)]:
        n, d, c = shape(n, d, c)
        z, y, w = clustered(n, d, c)
        t = time.perf_counter()
        cpu = info.interplay(z, y, w, estimate="exact", max_exact_dim=0)
        t_cpu = time.perf_counter() - t
        info.interplay(z[:100], y[:100], w, device=DEV)  # warm-up
        sync()
        t = time.perf_counter()
        gpu = info.interplay(z, y, w, device=DEV, estimate="exact", max_exact_dim=0)
        sync()
        t_gpu = time.perf_counter() - t
        diff = max(
            abs(a - b)
            for a, b in zip((cpu.h_z, cpu.h_w, cpu.h_zw), (gpu.h_z, gpu.h_w, gpu.h_zw), strict=True)
        )
        check(
            f"interplay n={n} d={d} C={c} float64 {DEV} vs cpu",
            diff < 1e-9,
            f"max |cpu-{DEV}| {diff:.2e}; cpu {t_cpu:.2f}s, {DEV} {t_gpu:.2f}s; MIR {gpu.mir:.6f}",
        )


def imagenet_scale_on_cuda() -> None:
    """n = 50k exact on the GPU under the default limit, and slq against it."""
    n, d, c = shape(50_000, 2048, 1000)
    z, y, w = clustered(n, d, c)
    limit = info.default_max_exact_dim(DEV)
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t = time.perf_counter()
    exact = info.interplay(z, y, w, device=DEV)  # auto: exact when the limit allows
    sync()
    t_exact = time.perf_counter() - t
    check(
        f"auto takes exact at n={n} d={d} C={c} on {DEV}",
        exact.estimate == "exact",
        f"default max_exact_dim {limit}; route {exact.label}; {t_exact:.1f}s; peak "
        f"{peak_gib():.1f} GiB; MIR {exact.mir:.6f}",
    )
    t = time.perf_counter()
    est = info.interplay(z, y, w, device=DEV, estimate="slq")
    sync()
    t_slq = time.perf_counter() - t
    diff = est.mir - exact.mir
    check(
        f"slq vs exact at n={n} on {DEV}",
        abs(diff) <= 2 * est.mir_err and est.mir_lower <= exact.mir,
        f"slq MIR {est.mir:.6f} ± {est.mir_err:.6f} (lower {est.mir_lower:.4f}) in "
        f"{t_slq:.1f}s, {est.label}; diff {diff:+.2e}",
    )


def loss_on_cuda() -> None:
    z, y, w = clustered(256, 64, 10)
    grads = []
    for dev in ("cpu", DEV):
        zz = z.double().to(dev).requires_grad_()
        ww = w.double().to(dev).requires_grad_()
        InterplayLoss(1.0, 1.0)(zz, y.to(dev), ww).backward()
        grads.append((zz.grad.cpu(), ww.grad.cpu()))
    diff = max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))
    check(f"InterplayLoss gradients cpu vs {DEV}", diff < 1e-9, f"max diff {diff:.2e}")


def probe_on_cuda() -> None:
    from infoprobe.checkpoints import load_model
    from infoprobe.data import load_data
    from infoprobe.probe import evaluate

    for ckpt in (
        "fixtures/series/test_efficientnet-step210.safetensors",
        "fixtures/label_smoothing/ls0.0.safetensors",
    ):
        data = load_data("fixtures/digits/test.safetensors")
        cpu = evaluate(load_model(ckpt).model, data, device="cpu")
        gpu = evaluate(load_model(ckpt).model, data, device=DEV)
        diff = float((cpu.features - gpu.features).abs().max())
        scale = float(cpu.features.abs().max())
        check(
            f"evaluate fp32 {ckpt}",
            diff <= 1e-3 * scale and cpu.accuracy == gpu.accuracy,
            f"max feature diff {diff:.2e} (scale {scale:.2f}); acc {cpu.accuracy:.4f} / "
            f"{gpu.accuracy:.4f}",
        )
        amp = evaluate(load_model(ckpt).model, data, device=DEV, amp="bf16", channels_last=True)
        check(
            f"evaluate bf16+channels_last {ckpt}",
            abs(amp.accuracy - cpu.accuracy) < 0.02,
            f"acc {amp.accuracy:.4f} vs {cpu.accuracy:.4f}; features {amp.features.dtype}",
        )
        a, b = (
            info.interplay(cpu.features, cpu.labels, cpu.head),
            info.interplay(gpu.features, gpu.labels, gpu.head),
        )
        check(
            f"MIR from cuda features {ckpt}",
            abs(a.mir - b.mir) < 1e-4,
            f"{a.mir:.6f} vs {b.mir:.6f}",
        )


def cli_on_cuda() -> None:
    data = "fixtures/digits/test.safetensors"
    a, b = "fixtures/lmc/same_init_a.safetensors", "fixtures/lmc/same_init_b.safetensors"
    gpu = ["--device", DEV, "--amp", "--channels-last"]
    for args in (
        ["analyze", a, "--data", data, *gpu],
        [
            "lmc",
            a,
            b,
            "--data",
            data,
            "--steps",
            "3",
            "--reset-bn",
            "--bn-data",
            "fixtures/digits/train.safetensors",
            *gpu,
        ],
        ["prune", a, "--data", data, "--ratios", "0,0.5", *gpu],
        [
            "prune",
            a,
            "--data",
            data,
            "--ratios",
            "0,0.5,0.9",
            "--method",
            "layer-magnitude",
            "--finetune-data",
            "fixtures/digits/train.safetensors",
            *gpu,
        ],
        [
            "prune",
            a,
            "--data",
            data,
            "--ratios",
            "0.5",
            "--finetune-data",
            "fixtures/digits/train.safetensors",
            "--device",
            DEV,
            "--amp",
            "--amp-dtype",
            "fp16",
        ],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "infoprobe", *args, "--csv", "-"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        rows = out.stdout.strip().splitlines()
        check(
            f"cli {args[0]} on {DEV}",
            out.returncode == 0 and len(rows) > 1,
            f"rc {out.returncode}, {len(rows) - 1} rows; {out.stderr.strip()[-200:]}",
        )


if __name__ == "__main__":
    if "--cpu-smoke" in sys.argv[1:]:
        DEV, SCALE = "cpu", 10
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device (use --cpu-smoke to test this script on CPU)")
    print(torch.__version__, torch.cuda.get_device_name() if DEV == "cuda" else "cpu smoke")
    for step in (
        interplay_on_cuda,
        imagenet_scale_on_cuda,
        loss_on_cuda,
        probe_on_cuda,
        cli_on_cuda,
    ):
        try:
            step()
        except Exception as e:  # keep going: one report with every check
            check(step.__name__, False, f"{type(e).__name__}: {e}")
    print(f"{len(FAILED)} failed: {FAILED}" if FAILED else "all GPU checks passed")
    sys.exit(1 if FAILED else 0)
