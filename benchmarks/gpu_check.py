"""One prepared check on a CUDA machine: the same numbers as on CPU, and the timings.

    python benchmarks/gpu_check.py      # exits non-zero if any check fails

Checks: (1) interplay on CUDA equals the CPU value to 1e-9 and its time; (2) InterplayLoss
gradients on CUDA equal CPU's; (3) probe.evaluate on CUDA (fp32, then bf16 autocast with
channels_last) against CPU on the bundled fixtures; (4) the CLI with ``--device cuda``,
``--amp`` and ``--channels-last`` on analyze, lmc (with ``--reset-bn``) and prune (also
fine-tuned, with bf16 and fp16 autocast, the latter through a gradient scaler).
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from infoprobe import info
from infoprobe.losses import InterplayLoss

FAILED: list[str] = []


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


def interplay_on_cuda() -> None:
    for n, d, c in [(10_000, 512, 10), (10_000, 512, 100), (50_000, 512, 10)]:
        z, y, w = clustered(n, d, c)
        t = time.perf_counter()
        cpu = info.interplay(z, y, w)
        t_cpu = time.perf_counter() - t
        info.interplay(z[:100].cuda(), y[:100].cuda(), w.cuda())  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        gpu = info.interplay(z.cuda(), y.cuda(), w.cuda())
        torch.cuda.synchronize()
        t_gpu = time.perf_counter() - t
        diff = max(abs(a - b) for a, b in zip((cpu.h_z, cpu.h_w, cpu.h_zw),
                                             (gpu.h_z, gpu.h_w, gpu.h_zw), strict=True))
        check(f"interplay n={n} d={d} C={c}", diff < 1e-9,
              f"max |cpu-cuda| {diff:.2e}; cpu {t_cpu:.2f}s, cuda {t_gpu:.2f}s; MIR {gpu.mir:.6f}")
    z, y, w = clustered(20_000, 2048, 1000)
    t = time.perf_counter()
    big = info.interplay(z.cuda(), y.cuda(), w.cuda(), max_exact_dim=None)
    torch.cuda.synchronize()
    check("interplay n=20000 d=2048 C=1000 (n x n route)", big.mir == big.mir,
          f"{time.perf_counter() - t:.2f}s, MIR {big.mir:.6f}, peak "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def loss_on_cuda() -> None:
    z, y, w = clustered(256, 64, 10)
    grads = []
    for dev in ("cpu", "cuda"):
        zz = z.double().to(dev).requires_grad_()
        ww = w.double().to(dev).requires_grad_()
        InterplayLoss(1.0, 1.0)(zz, y.to(dev), ww).backward()
        grads.append((zz.grad.cpu(), ww.grad.cpu()))
    diff = max(float((a - b).abs().max()) for a, b in zip(*grads, strict=True))
    check("InterplayLoss gradients cpu vs cuda", diff < 1e-9, f"max diff {diff:.2e}")


def probe_on_cuda() -> None:
    from infoprobe.checkpoint import load_model
    from infoprobe.data import load_data
    from infoprobe.probe import evaluate

    for ckpt in ("fixtures/series/test_efficientnet-step210.safetensors",
                 "fixtures/label_smoothing/ls0.0.safetensors"):
        data = load_data("fixtures/digits/test.safetensors")
        cpu = evaluate(load_model(ckpt).model, data, device="cpu")
        gpu = evaluate(load_model(ckpt).model, data, device="cuda")
        diff = float((cpu.features - gpu.features).abs().max())
        scale = float(cpu.features.abs().max())
        check(f"evaluate fp32 {ckpt}", diff <= 1e-3 * scale and cpu.accuracy == gpu.accuracy,
              f"max feature diff {diff:.2e} (scale {scale:.2f}); acc {cpu.accuracy:.4f} / "
              f"{gpu.accuracy:.4f}")
        amp = evaluate(load_model(ckpt).model, data, device="cuda", amp="bf16",
                       channels_last=True)
        check(f"evaluate bf16+channels_last {ckpt}", abs(amp.accuracy - cpu.accuracy) < 0.02,
              f"acc {amp.accuracy:.4f} vs {cpu.accuracy:.4f}; features {amp.features.dtype}")
        a, b = info.interplay(cpu.features, cpu.labels, cpu.head), \
            info.interplay(gpu.features, gpu.labels, gpu.head)
        check(f"MIR from cuda features {ckpt}", abs(a.mir - b.mir) < 1e-4,
              f"{a.mir:.6f} vs {b.mir:.6f}")


def cli_on_cuda() -> None:
    data = "fixtures/digits/test.safetensors"
    a, b = "fixtures/lmc/same_init_a.safetensors", "fixtures/lmc/same_init_b.safetensors"
    gpu = ["--device", "cuda", "--amp", "--channels-last"]
    for args in (
        ["analyze", a, "--data", data, *gpu],
        ["lmc", a, b, "--data", data, "--steps", "3", "--reset-bn", "--bn-data",
         "fixtures/digits/train.safetensors", *gpu],
        ["prune", a, "--data", data, "--ratios", "0,0.5", *gpu],
        ["prune", a, "--data", data, "--ratios", "0,0.5,0.9", "--method", "layer-magnitude",
         "--finetune-data", "fixtures/digits/train.safetensors", *gpu],
        ["prune", a, "--data", data, "--ratios", "0.5", "--finetune-data",
         "fixtures/digits/train.safetensors", "--device", "cuda", "--amp", "--amp-dtype",
         "fp16"],
    ):
        out = subprocess.run([sys.executable, "-m", "infoprobe", *args, "--csv", "-"],
                             capture_output=True, text=True, timeout=300)
        rows = out.stdout.strip().splitlines()
        check(f"cli {args[0]} on cuda", out.returncode == 0 and len(rows) > 1,
              f"rc {out.returncode}, {len(rows) - 1} rows; {out.stderr.strip()[-200:]}")


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    print(torch.__version__, torch.cuda.get_device_name())
    for step in (interplay_on_cuda, loss_on_cuda, probe_on_cuda, cli_on_cuda):
        try:
            step()
        except Exception as e:  # keep going: one report with every check
            check(step.__name__, False, f"{type(e).__name__}: {e}")
    print(f"{len(FAILED)} failed: {FAILED}" if FAILED else "all GPU checks passed")
    sys.exit(1 if FAILED else 0)
