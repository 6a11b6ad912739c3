"""Peak memory of an evaluation on an image folder: streaming vs decoding everything first.

Builds a synthetic image folder of N JPEGs (256x256, 10 classes), evaluated at 224 px
(timm's eval transform: resize, centre crop 224, normalise) by a small model, each way in a
fresh process:

* ``decode-all`` (the baseline, infoprobe's previous load path): every image decoded into
  float32 batches in RAM, concatenated, then evaluated from memory;
* ``stream`` (now, for image data over 1 GiB decoded): ``load_data(..., stream_above=0)``,
  decoded batch by batch through a DataLoader with ``--workers`` processes during the pass.

Reported per way: peak RSS of the process (its own and its decoding workers' peaks) beyond
its RSS before loading, less the features and logits kept ([N, d] and [N, C] float32),
and wall time. ``stream`` also runs at N/2, to show that its peak does not grow with N.
The extrapolation to 50,000 images is linear for the baseline (N x 3 x 224 x 224 x 4 bytes,
twice while concatenating) and the measured constant for the stream. Target: under 4 GB
beyond the features at 50,000 images of 224 px.

With ``--workers 0`` (the default) all decoding happens in the measured process. With
workers, each worker's own peak is reported too; it includes pages shared with the parent
(torch itself), so adding them up overstates the total.

    python3 benchmarks/bench_stream.py [--n 2000] [--workers 0] [--batch-size B]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infoprobe.info import DEFAULT_BATCH_SIZE

GB = 1e9
PER_IMAGE = 3 * 224 * 224 * 4  # float32 bytes of one decoded 224 px RGB image


def make_folder(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image

    gen = np.random.default_rng(0)
    base = gen.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for i in range(n):
        cls = root / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        # a smooth picture plus noise, so the JPEG is of a usual size (~20-40 kB)
        img = np.roll(base, i, axis=1) // 2 + gen.integers(0, 64, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(img).save(cls / f"{i:06d}.jpg", quality=90)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.AvgPool2d(8), nn.Flatten(), nn.Linear(3 * 28 * 28, 512), nn.ReLU(), nn.Linear(512, 10)
    )


def _decode_all(root: Path, workers: int):
    """The previous load path: every image decoded to float32 in RAM, then concatenated."""
    import torch

    from infoprobe import data

    cfg = data.resolve_transform_config(None, input_size=224)
    stream = data.images.open_images(root, None, cfg, None, 0, workers)
    loader = torch.utils.data.DataLoader(stream._decode, batch_size=64, num_workers=workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return data.LabelledTensors(torch.cat(xs).float(), torch.cat(ys).long(), str(root))


def child(way: str, root: Path, n: int, workers: int, batch_size: int) -> None:
    import torch

    from infoprobe.data import load_data
    from infoprobe.probe import evaluate

    torch.set_num_threads(1)
    model = _model()
    start_rss, t0 = _rss(), time.perf_counter()
    if way == "decode-all":
        dataset = _decode_all(root, workers)
    else:
        dataset = load_data(
            root, input_size=224, workers=workers, cache=None, stream_above=0, max_samples=n
        )
    ev = evaluate(model, dataset, device="cpu", batch_size=batch_size)
    seconds = time.perf_counter() - t0
    kept = ev.features.numel() * 4 + ev.logits.numel() * 4
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "way": way,
                "n": len(ev.labels),
                "seconds": seconds,
                "beyond": own - start_rss - kept,
                "workers_peak": workers_peak,
                "kept": kept,
            }
        )
    )


def run(way: str, root: Path, n: int, args) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            way,
            "--root",
            str(root),
            "--n",
            str(n),
            "--workers",
            str(args.workers),
            "--batch-size",
            str(args.batch_size),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--child")
    ap.add_argument("--root")
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.root), args.n, args.workers, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        t0 = time.perf_counter()
        make_folder(root, args.n)
        print(
            f"{args.n} JPEGs of 256x256 in {time.perf_counter() - t0:.1f} s; evaluated at "
            f"224 px, batch {args.batch_size}, {args.workers} decoding workers"
        )
        results = [
            run("decode-all", root, args.n, args),
            run("stream", root, args.n, args),
            run("stream", root, args.n // 2, args),
        ]
    for r in results:
        extra = (
            f" (a decoding worker's peak {r['workers_peak'] / GB:.3f} GB)" if args.workers else ""
        )
        print(
            f"{r['way']:>10} n={r['n']:>6}: peak RSS beyond the features "
            f"{r['beyond'] / GB:6.3f} GB{extra}, {r['seconds']:.1f} s"
        )
    base, stream, half = results
    stream_total = stream["beyond"] + (args.workers * stream["workers_peak"] if args.workers else 0)
    print(
        f"ratio stream/decode-all peak beyond the features at n={args.n}: "
        f"{stream['beyond'] / base['beyond']:.3f}; time ratio "
        f"{stream['seconds'] / base['seconds']:.3f}"
    )
    print(
        f"stream peak at n={half['n']} vs n={stream['n']}: {half['beyond'] / GB:.3f} vs "
        f"{stream['beyond'] / GB:.3f} GB (flat in n)"
    )
    print(
        f"extrapolated to 50,000 images at 224 px: decode-all >= "
        f"{50_000 * PER_IMAGE / GB:.1f} GB of inputs ({2 * 50_000 * PER_IMAGE / GB:.1f} GB "
        f"while concatenating); stream about {stream_total / GB:.2f} GB "
        f"(constant in n). Target < 4 GB beyond the features."
    )


if __name__ == "__main__":
    main()
