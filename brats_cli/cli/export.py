"""`brats export --out DIR`: a torch weights bundle as a verified ONNX bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brats_cli.cli import console


def export(
    out: Annotated[Path, typer.Option(help="Folder for the ONNX bundle (must not exist, or be empty).")],
    weights: Annotated[
        Path | None, typer.Option(help="Torch weights bundle to export. Default: the bundle shipped with brats.")
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Half-precision convolutions, for GPUs (verified to 1e-2, not 1e-4).")
    ] = False,
    opset: Annotated[int, typer.Option(min=17, max=20, help="ONNX opset version.")] = 17,
) -> None:
    """Export every fold model to ONNX, check each against PyTorch on random input, write a bundle
    that `brats segment --backend onnx --weights OUT` runs."""
    from rich.table import Table

    from brats_cli.bundle import load_weights
    from brats_cli.choices import ExportPrecision
    from brats_cli.errors import ExportError
    from brats_cli.export import export_bundle

    precision = ExportPrecision.FP16 if fp16 else ExportPrecision.FP32
    with console.writing(out):
        source = load_weights(weights)
        with console.stderr.status("exporting") as status:
            try:
                result = export_bundle(
                    source,
                    out,
                    precision=precision,
                    opset=opset,
                    on_model=lambda file: status.update(f"exporting and verifying {file}"),
                )
            except ExportError as error:  # said as the export's failure, not the weights'
                raise ExportError(f"export failed: {error}") from None
    table = Table(title=f"brats export ({precision.value}, opset {opset})")
    table.add_column("model")
    table.add_column("max |ONNX - PyTorch|", justify="right")
    table.add_column("tolerance", justify="right")
    table.add_column("provider")
    for check in result.verifications:
        table.add_row(check.file, f"{check.max_abs_difference:.2e}", f"{check.tolerance:g}", check.provider)
    console.stderr.print(table)
    console.stderr.print(f"wrote {result.bundle.root} (backend onnx, {len(result.verifications)} models)")
