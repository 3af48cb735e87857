"""`brats bundle RUN --out DIR`: a weights bundle from a training run's best (or last) checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brats_cli.choices import Checkpoint, Storage
from brats_cli.cli import console


def bundle(
    run: Annotated[Path, typer.Argument(help="Training run folder (the --out of brats train).")],
    out: Annotated[Path, typer.Option(help="Bundle folder to write (manifest.json + safetensors).")],
    stages_from: Annotated[
        Path | None,
        typer.Option(
            "--stages-from",
            help="Take the stages named by --stages from this torch bundle instead of the run (a later round "
            "that improved some stages keeps the earlier models of the others).",
        ),
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option(help="With --stages-from: the stages to take from it, comma-separated (e.g. tc,et)."),
    ] = None,
    checkpoint: Annotated[
        Checkpoint,
        typer.Option(
            help="Each fold's best epoch by validation Dice (best.pt), or its last complete epoch (last.pt): for "
            "folds whose validation cases their starting weights trained on, where choosing on them is optimistic."
        ),
    ] = Checkpoint.BEST,
    storage: Annotated[
        Storage,
        typer.Option(
            help="The precision the weight files hold: float16 halves the bundle; the weights are cast back to "
            "float32 when loaded, so --precision still decides what inference computes in.",
        ),
    ] = Storage.FLOAT32,
) -> None:
    """Assemble the best (or last) checkpoint of every trained stage and fold into a weights bundle."""
    from rich.table import Table

    from brats_cli.bundle import Stage
    from brats_cli.training.assemble import Borrowed, assemble_bundle

    if (stages_from is None) != (stages is None):
        console.error("--stages-from and --stages go together: the bundle to take stages from, and which")
        raise typer.Exit(console.EXIT_UNUSABLE)
    borrowed = None
    if stages_from is not None and stages is not None:
        names = [name.strip() for name in stages.split(",") if name.strip()]
        unknown = [name for name in names if name not in {s.value for s in Stage}]
        if unknown or not names:
            console.error(f"--stages {stages}: name stages among {', '.join(s.value for s in Stage)}")
            raise typer.Exit(console.EXIT_UNUSABLE)
        borrowed = Borrowed(stages_from, frozenset(Stage(name) for name in names))
    with console.writing(out):
        written, trained = assemble_bundle(run, out, borrowed, checkpoint, storage)
    table = Table(title=f"bundle {written.root}")
    for column in ("stage", "fold", "val Dice", "val loss", f"{checkpoint.value} epoch", "epochs"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for item in trained:
        table.add_row(
            item.stage.value,
            str(item.fold),
            f"{item.val_dice:.4f}",
            f"{item.val_loss:.4f}",
            str(item.epoch),
            f"{item.epochs_done}/{item.epochs_planned}",
        )
    console.stderr.print(table)
    if borrowed is not None:
        taken = ", ".join(s.value for s in sorted(borrowed.stages, key=list(Stage).index))
        console.info(f"stages {taken} taken from {borrowed.bundle}")
    unfinished = [t for t in trained if t.epochs_done < t.epochs_planned]
    if unfinished:
        short = ", ".join(f"{t.stage.value} fold {t.fold}" for t in unfinished)
        console.warning(f"not trained to the recipe's epochs: {short}")
