"""Which timm architectures infoprobe measures, which it refuses, and which do not build.

For every name in ``timm.list_models()`` (or those matching ``--filter``), the model is built
with ``pretrained=False`` (nothing is downloaded) and ``num_classes=5``, and ``evaluate()``
runs on a few random images at the model's own input size. The outcome is one of:

- ``supported``: the features are timm's pre-logits and the head reproduces the logits
  (evaluate checks this on the first batch);
- ``refused``: evaluate raised InputError naming the heads (several heads whose logits no
  single linear head gives, or a layer beside the head that adds to the logits);
- ``build``, ``forward``, ``other``: the model did not build, rejected the input, or failed
  in another way (recorded with the first line of the error).

One JSON line per model goes to ``--out`` as it finishes, so a long run can be stopped and
resumed (``--resume`` skips the names already there); the counts are printed at the end.
This is slow (all of timm takes hours on one CPU thread) and is not part of the tests;
``tests/test_multihead.py`` checks a fixed, varied sample of families in CI time.

    python3 benchmarks/timm_sweep.py [--filter 'vit_*'] [--out timm_sweep.jsonl]
        [--resume] [--threads 1] [--max-params 100e6]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import timm
import torch

from infoprobe.data import LabelledTensors
from infoprobe.errors import InputError
from infoprobe.probe import evaluate

NUM_CLASSES = 5


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def measure(name: str, max_params: float) -> dict:
    """The outcome for one architecture (see the module docstring)."""
    started = time.perf_counter()
    try:
        with torch.device("meta"):  # count the parameters without allocating them
            params = sum(
                p.numel()
                for p in timm.create_model(
                    name, pretrained=False, num_classes=NUM_CLASSES
                ).parameters()
            )
    except Exception:  # some constructors need real tensors: count after the real build
        params = 0
    if params > max_params:
        return {"name": name, "outcome": "skipped", "error": f"{params:.3g} parameters"}
    try:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).eval()
    except Exception as e:  # any constructor failure is an outcome to record
        return {"name": name, "outcome": "build", "error": _first_line(e)}
    params = sum(p.numel() for p in model.parameters())
    if params > max_params:
        return {"name": name, "outcome": "skipped", "error": f"{params:.3g} parameters"}
    size = model.pretrained_cfg.get("test_input_size") or model.pretrained_cfg.get(
        "input_size", (3, 224, 224)
    )
    gen = torch.Generator().manual_seed(1)
    data = LabelledTensors(
        inputs=torch.randn(2, *size, generator=gen),
        labels=torch.arange(2) % NUM_CLASSES,
        source="random",
    )
    row = {"name": name, "params": params, "input_size": list(size)}
    try:
        ev = evaluate(model, data, device="cpu")
        row.update(outcome="supported", dim=int(ev.features.shape[1]))
    except InputError as e:
        kind = "refused" if "heads found" in str(e) else "forward"
        row.update(outcome=kind, error=_first_line(e))
    except Exception as e:  # a model that fails in another way is an outcome too
        row.update(outcome="other", error=f"{type(e).__name__}: {_first_line(e)}")
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="*", help="timm.list_models pattern")
    parser.add_argument("--out", default="timm_sweep.jsonl")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-params", type=float, default=100e6, help="skip larger models (memory and time)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    done = {}
    if args.resume and out.exists():
        done = {r["name"]: r for r in map(json.loads, out.read_text().splitlines())}
    names = timm.list_models(args.filter)
    with out.open("a" if args.resume else "w") as f:
        for i, name in enumerate(names):
            if name in done:
                continue
            row = measure(name, args.max_params)
            done[name] = row
            f.write(json.dumps(row) + "\n")
            f.flush()
            print(
                f"[{i + 1}/{len(names)}] {name}: {row['outcome']} {row.get('error', '')}",
                flush=True,
            )
    counts = collections.Counter(r["outcome"] for r in done.values())
    print(json.dumps({"models": len(done), **counts}))
    refused = sorted(r["name"] for r in done.values() if r["outcome"] == "refused")
    print("refused:", ", ".join(refused) or "none")


if __name__ == "__main__":
    main()
