"""``infoprobe prune``: one row per pruning ratio."""

from __future__ import annotations

from infoprobe.cli import examples, output
from infoprobe.cli.options import argument, command

CHECKPOINT = argument("checkpoint", str, metavar="CKPT", help="Dense checkpoint.")


@command("prune", arguments=[CHECKPOINT], epilog=examples.PRUNE)
def prune(checkpoint: str, options: dict) -> None:
    """Unstructured pruning sweep of Conv/Linear weights: one row per ratio (ft_* columns:
    after fine-tuning with --finetune-data; *_dense: pruned vs dense features)."""
    from infoprobe import api  # loads torch: only when the command runs

    with output.progress() as progress:
        frame = api.prune(checkpoint, progress=progress, log=output.log, **options)
    tuned = frame.attrs["finetune"]
    how = "no fine-tuning" if tuned is None else f"fine-tuned {tuned['epochs']} epoch(s)"
    output.show(
        frame,
        options,
        key="ratio",
        title=f"infoprobe prune {checkpoint} ({frame.attrs['method']}, {how})",
    )
