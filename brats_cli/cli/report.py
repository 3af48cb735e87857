"""`brats report OUTPUT`: the visual QA report of a segmentation output folder, in OUTPUT/report/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from brats_cli.cli import console

if TYPE_CHECKING:
    from brats_cli.report import Report


def report(
    output: Annotated[Path, typer.Argument(help="A `brats segment` output folder of <ID>.nii.gz label maps.")],
    input: Annotated[
        Path | None,
        typer.Option(help="The cases' input folder: puts FLAIR, T1, T1ce and T2 in the pictures (else labels alone)."),
    ] = None,
) -> None:
    """Write OUTPUT/report/: index.html (every case, flagged ones first), a picture per case,
    report.csv and report.json."""
    raise typer.Exit(run_report(output, input))


def run_report(output: Path, input: Path | None) -> int:
    """Write the report while rendering progress, render what a reviewer should look at; the exit
    code (1 when a case failed or has no output, as `brats segment` counts it)."""
    from brats_cli.errors import BratsError
    from brats_cli.interrupts import Interrupted, interruptible
    from brats_cli.report import REPORT_FOLDER, check_report_folder, write_report

    try:
        with interruptible():
            try:
                check_report_folder(output / REPORT_FOLDER)
                progress = console.progress()
                with progress:
                    task = progress.add_task("report", total=None)

                    def on_case(case_id: str) -> None:
                        progress.update(task, description=f"report: {case_id}")

                    written = write_report(output, input, on_case=on_case)
            except BratsError as error:
                console.error(str(error))
                return console.EXIT_UNUSABLE
    except Interrupted as interrupted:
        console.error("interrupted; no report written (an earlier one, if any, is left as it was)")
        return interrupted.exit_code
    render_report(written)
    unfinished = [case for case in written.cases if case.status != "done"]
    return console.EXIT_CASE_FAILED if unfinished else console.EXIT_OK


def render_report(written: Report) -> None:
    """The report's notes, the flagged cases (at most 20, most serious first) and where the page is."""
    from rich.table import Table

    for message in written.notes:
        console.note(message)
    flagged = written.flagged
    if flagged:
        table = Table(title=f"{len(flagged)} of {len(written.cases)} case(s) flagged", title_justify="left")
        table.add_column("case")
        table.add_column("flags")
        table.add_column("WT ml", justify="right")
        for case in flagged[:20]:
            volume = case.volumes_ml.get("WT")
            flags = ", ".join(flag.value for flag in case.flags)
            if case.message:
                flags += f" ({case.message})"
            table.add_row(case.case_id, flags, "" if volume is None else f"{volume:.1f}")
        console.stderr.print(table)
        if len(flagged) > 20:
            console.stderr.print(f"... and {len(flagged) - 20} more on the page")
    console.stderr.print(f"report: {written.index}")
