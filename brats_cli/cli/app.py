"""The `brats` command: a root Typer app with one module per subcommand."""

from __future__ import annotations

from typing import Annotated

import typer

from brats_cli import installed_version
from brats_cli.cli import bundle, evaluate, export, info, report, segment, synth, train

app = typer.Typer(
    name="brats",
    help="Glioma segmentation with the residual 3D U-Net with localisation (BraTS 2021).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("segment")(segment.segment)
app.command("info")(info.info)
app.command("synth")(synth.synth)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("train")(train.train)
app.command("bundle")(bundle.bundle)
app.command("export")(export.export)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brats {installed_version()}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Glioma segmentation with the residual 3D U-Net with localisation (BraTS 2021)."""


def main() -> None:
    app()
