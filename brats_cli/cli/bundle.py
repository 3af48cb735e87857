"""`brats bundle RUN --out DIR`: a weights bundle from a training run's best checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brats_cli.cli import console


def bundle(
    run: Annotated[Path, typer.Argument(help="Training run folder (the --out of brats train).")],
    out: Annotated[Path, typer.Option(help="Bundle folder to write (manifest.json + safetensors).")],
) -> None:
    """Assemble the best checkpoint of every trained stage and fold into a weights bundle."""
    from rich.table import Table

    from brats_cli.errors import BratsError
    from brats_cli.interrupts import Interrupted, interruptible
    from brats_cli.training.assemble import assemble_bundle

    try:
        with interruptible():
            written, trained = assemble_bundle(run, out)
    except Interrupted as interrupted:
        console.error(f"interrupted; nothing was written to {out}")
        raise typer.Exit(interrupted.exit_code) from None
    except BratsError as error:
        console.error(str(error))
        raise typer.Exit(console.EXIT_UNUSABLE) from None
    table = Table(title=f"bundle {written.root}")
    for column in ("stage", "fold", "val Dice", "val loss", "best epoch", "epochs"):
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
    unfinished = [t for t in trained if t.epochs_done < t.epochs_planned]
    if unfinished:
        names = ", ".join(f"{t.stage.value} fold {t.fold}" for t in unfinished)
        console.warning(f"not trained to the recipe's epochs: {names}")
