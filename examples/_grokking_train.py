"""Training of the grokking study (``05_grokking.py``): data, the full-batch AdamW loop, the
stopping rule and resumable state.

One run per seed: the seed draws both the random 30% training split and the initialisation.
The grokking step ``g`` is the first evaluated step (every ``eval_every`` steps) at which test
accuracy reaches 99%; training goes on until step ``2 g`` (``grok_factor``), then stops. The
loop writes ``state.pt`` (model, optimizer, warm-up schedule, step, accuracy log) every
``every`` steps, so an interrupted run resumes where it was instead of starting over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import _common as C
import torch
import torch.nn.functional as F
from grokking_model import factory, modular_addition

ARCH = "examples/grokking_model.py:factory"  # recorded in the checkpoints (repo-relative)
GROKKED = 0.99  # test accuracy that defines the grokking step
BETAS = (0.9, 0.98)


@dataclass(frozen=True)
class GrokConfig:
    """Task, model and optimizer of one run (defaults: Nanda et al.'s setup, which the paper's
    §5.5 is taken to follow; assumed, the paper's text was not available to check)."""

    p: int = 113
    train_frac: float = 0.3
    lr: float = 1e-3
    weight_decay: float = 1.0
    warmup: int = 10
    max_steps: int = 40000
    grok_factor: float = 2.0
    every: int = 500
    log_points: int = 20
    eval_every: int = 100


def make_data(p: int, frac: float, seed: int, out: Path) -> tuple[dict, dict, Path, Path]:
    """All pairs split at random by ``seed``; tensor files with int64 tokens ``a b =``."""
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


def checkpoint_steps(cfg: GrokConfig) -> set[int]:
    """Log-spaced steps early (memorisation is fast), then every ``every`` steps."""
    early = C.log_spaced_steps(min(4 * cfg.every, cfg.max_steps), cfg.log_points)
    return set(early) | set(range(0, cfg.max_steps + 1, cfg.every))


def stop_step(grokked_at: int | None, cfg: GrokConfig) -> int:
    """``ceil(grok_factor * g)`` once grokked, else ``max_steps``."""
    if grokked_at is None:
        return cfg.max_steps
    return min(cfg.max_steps, math.ceil(cfg.grok_factor * grokked_at))


@torch.no_grad()
def _evaluate(model, data: dict) -> tuple[float, float]:
    logits = model(data["x"])
    return (
        float(F.cross_entropy(logits, data["y"])),
        float((logits.argmax(1) == data["y"]).float().mean()),
    )


class Run:
    """One seed's model, optimizer and log, saved to and resumed from ``out/state.pt``."""

    def __init__(self, cfg: GrokConfig, seed: int, model_kwargs: dict, out: Path) -> None:
        self.cfg, self.seed, self.model_kwargs, self.out = cfg, seed, model_kwargs, out
        torch.manual_seed(seed)
        self.model = factory(num_classes=cfg.p, **model_kwargs)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=BETAS
        )
        self.warmup = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / max(cfg.warmup, 1), 1.0)
        )
        self.step, self.history, self.grokked_at, self.done = 0, [], None, False
        self.state_path = out / "state.pt"
        if self.state_path.is_file():
            self._load()

    def _load(self) -> None:
        state = torch.load(self.state_path, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.warmup.load_state_dict(state["warmup"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.grokked_at, self.done = state["grokked_at"], bool(state["done"])
        C.log(f"seed {self.seed}: resumed at step {self.step}")

    def save(self) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "warmup": self.warmup.state_dict(),
            "step": self.step,
            "history": self.history,
            "grokked_at": self.grokked_at,
            "done": self.done,
        }
        tmp = self.state_path.with_name(".state.pt.tmp")
        torch.save(state, tmp)
        tmp.replace(self.state_path)
        C.write_csv(_frame(self.history), self.out / "train_log.csv")

    def evaluate(self, train_set: dict, test_set: dict) -> None:
        self.model.eval()
        tr_loss, tr_acc = _evaluate(self.model, train_set)
        te_loss, te_acc = _evaluate(self.model, test_set)
        params = [q.detach().flatten() for q in self.model.parameters()]
        self.history.append(
            {
                "step": self.step,
                "train_loss": tr_loss,
                "train_accuracy": tr_acc,
                "test_loss": te_loss,
                "test_accuracy": te_acc,
                "weight_norm": torch.cat(params).norm().item(),
            }
        )
        if te_acc >= GROKKED and self.grokked_at is None:
            self.grokked_at = self.step

    def checkpoint(self, ckpt_dir: Path) -> None:
        C.save_checkpoint(
            self.model,
            ckpt_dir / f"step{self.step:06d}.safetensors",
            arch=ARCH,
            num_classes=self.cfg.p,
            in_chans=None,
            model_kwargs=self.model_kwargs,
            step=self.step,
            epoch=self.step,
            seed=self.seed,
            task=f"(a + b) mod {self.cfg.p}",
            optimizer=f"AdamW(lr={self.cfg.lr}, weight_decay={self.cfg.weight_decay}, "
            f"betas={BETAS}), full batch",
        )

    def train_step(self, train_set: dict) -> None:
        self.model.train()
        loss = F.cross_entropy(self.model(train_set["x"]), train_set["y"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.warmup.step()
        self.step += 1


def train(cfg: GrokConfig, seed: int, model_kwargs: dict, out: Path, train_set, test_set):
    """Full-batch AdamW from ``out/state.pt`` (or the start) to ``stop_step``; the log."""
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run, saves, timer = Run(cfg, seed, model_kwargs, out), checkpoint_steps(cfg), C.Timer()
    while not run.done:
        stop = stop_step(run.grokked_at, cfg)
        at_eval = run.step % cfg.eval_every == 0 or run.step in saves or run.step == stop
        if at_eval and (not run.history or run.history[-1]["step"] != run.step):
            run.evaluate(train_set, test_set)
            stop = stop_step(run.grokked_at, cfg)
        if run.step in saves or run.step in (stop, run.grokked_at):
            run.checkpoint(ckpt_dir)
        run.done = run.step >= stop
        if run.step % cfg.every == 0 or run.done:
            run.save()
            last = run.history[-1]
            C.log(
                f"seed {seed} step {run.step}: train acc {last['train_accuracy']:.3f}, test acc "
                f"{last['test_accuracy']:.3f}, grokked at {run.grokked_at} ({timer})"
            )
        if not run.done:
            run.train_step(train_set)
    return _frame(run.history), run.grokked_at


def _frame(history: list[dict]):
    import pandas as pd

    return pd.DataFrame(history)
