"""`brats evaluate PRED GT`: the BraTS metrics of predictions against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brats_cli.choices import LabelConvention, Task
from brats_cli.cli import console
from brats_cli.cli.options import LabelWord, label_convention


def evaluate(
    prediction: Annotated[
        Path, typer.Argument(metavar="PRED", help="A folder of <ID>.nii.gz predictions, or one prediction file.")
    ],
    reference: Annotated[
        Path,
        typer.Argument(
            metavar="GT",
            help="Ground truth: <ID>_seg.nii.gz / <ID>-seg.nii.gz files, flat or in case folders; or one file.",
        ),
    ],
    labels: Annotated[
        LabelWord,
        typer.Option(help="Label convention: ET = 4 (2021) or 3 (2023); auto from the ground-truth names or labels."),
    ] = "auto",
    csv: Annotated[Path | None, typer.Option("--csv", help="Write one row per case and region to this CSV.")] = None,
    json: Annotated[Path | None, typer.Option("--json", help="Write the rows and the summary to this JSON.")] = None,
    lesion_wise: Annotated[
        bool, typer.Option("--lesion-wise", help="Add the BraTS 2023 lesion-wise Dice and HD95.")
    ] = False,
    task: Annotated[
        Task,
        typer.Option(
            help="The task whose rules apply: lesion-wise dilations and smallest lesion per task (2023: gli, ssa, "
            "ped 3 and 50 voxels, men 1 and 50, met 1 and 2); gli2024: labels 1-3 and 4 = resection cavity "
            "(in no region), 3 dilations, lesions of 20 voxels (ET 10) or fewer ignored."
        ),
    ] = Task.GLI2023,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write a visual report to this folder: box plots of Dice and HD95 per region, the per-case "
            "table, ground truth beside prediction for the worst cases. Needs matplotlib (the report extra).",
        ),
    ] = None,
) -> None:
    """Score PRED against GT per case and region (WT, TC, ET): Dice, HD95, sensitivity,
    specificity with the BraTS 2021 rules; a summary table per region."""
    convention = label_convention(labels)
    raise typer.Exit(run_evaluate(prediction, reference, convention, csv, json, lesion_wise, task, report))


def run_evaluate(
    prediction: Path,
    reference: Path,
    labels: LabelConvention | None,
    csv_path: Path | None,
    json_path: Path | None,
    with_lesion_wise: bool,
    task: Task = Task.GLI2023,
    report_path: Path | None = None,
) -> int:
    """Pair, score while rendering progress, render the summary, write; the exit code."""
    from brats_cli.errors import BratsError
    from brats_cli.scoring import Evaluation

    problem = _report_problem(csv_path, json_path, (prediction, reference))
    if problem:
        console.error(problem)
        return console.EXIT_UNUSABLE
    try:
        if report_path is not None:  # before scoring: a missing extra or a blocked folder is said now
            from brats_cli.report import check_report_folder

            check_report_folder(report_path, "evaluation")
        evaluation = Evaluation.of(prediction, reference, labels=labels, lesion_wise=with_lesion_wise, task=task)
    except BratsError as error:
        console.error(str(error))
        return console.EXIT_UNUSABLE
    for message in evaluation.notes:
        console.note(message)
    for failure in evaluation.failures:  # case folders of the ground truth that cannot be read
        console.error(str(failure))

    progress = console.progress()
    with progress:
        task = progress.add_task("evaluate", total=len(evaluation))
        for pair, result in evaluation.cases():
            progress.update(task, description=pair.case_id)
            if isinstance(result, BratsError):
                console.error(str(result))
            else:
                for message in result.warnings:
                    console.warning(f"{pair.case_id}: {message}")
            progress.advance(task)

    conventions = evaluation.conventions()
    described = "; ".join(
        f"{convention.value} ({reason}{f', {count} cases' if len(conventions) > 1 else ''})"
        for convention, reason, count in conventions
    )
    rules = evaluation.task
    console.stderr.print(
        f"brats evaluate: {len(evaluation.scores)} of {len(evaluation)} case(s) scored, labels {described or '-'}"
        + (f", task {rules.task.value} (lesion-wise: {rules.describe()})" if with_lesion_wise else "")
    )
    _render_summary(evaluation.summary(), len(evaluation.scores), evaluation.missing)
    if evaluation.failures:
        failed = ", ".join(f.case_id for f in evaluation.failures)
        console.stderr.print(f"{len(evaluation.failures)} case(s) not scored: {failed}")
    try:
        if csv_path is not None:
            evaluation.write_csv(csv_path)
        if json_path is not None:
            evaluation.write_json(json_path)
        if report_path is not None:
            from brats_cli.report import write_evaluation_report

            written = write_evaluation_report(evaluation, report_path)
            for message in written.notes[len(evaluation.notes) :]:
                console.note(message)
            console.stderr.print(f"report: {written.index}")
    except BratsError as error:
        console.error(str(error))
        return console.EXIT_UNUSABLE
    return console.EXIT_CASE_FAILED if evaluation.failures else console.EXIT_OK


def _report_problem(csv_path: Path | None, json_path: Path | None, inputs: tuple[Path, Path]) -> str | None:
    """Why --csv or --json cannot be written, checked before any case is scored: a missing or
    read-only folder, a folder at the name, the two options naming one file (the JSON would
    replace the CSV), or a report that would overwrite an input file."""
    import os

    reports = [(path, option) for path, option in ((csv_path, "--csv"), (json_path, "--json")) if path is not None]
    for path, option in reports:
        if not path.parent.is_dir():
            return f"{path}: folder for {option} does not exist"
        if path.is_dir():
            return f"{path}: is a folder; {option} needs a file name"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"{path}: folder for {option} is not writable"
        if any(source.is_file() and path.resolve() == source.resolve() for source in inputs):
            return f"{path}: {option} would overwrite an input of this evaluation"
    if len(reports) == 2 and reports[0][0].resolve() == reports[1][0].resolve():
        return f"{csv_path}: --csv and --json name the same file"
    return None


_TITLES = {
    "dice": "Dice",
    "hd95": "HD95",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "lesion_wise_dice": "Lesion-wise Dice",
    "lesion_wise_hd95": "Lesion-wise HD95",
}
_STATISTIC_TITLES = {"mean": "Mean", "std": "StdDev", "median": "Median", "25quantile": "25%", "75quantile": "75%"}


def _render_summary(summary: dict, scored: int, missing: list[str]) -> None:
    import math

    from rich.table import Table

    for region, metrics in summary.items():
        table = Table(title=f"{region} ({scored} cases, {len(missing)} missing)", title_justify="left")
        table.add_column("metric")
        for title in _STATISTIC_TITLES.values():
            table.add_column(title, justify="right")
        for metric, statistics in metrics.items():
            digits = 2 if "hd95" in metric else 4
            cells = ["-" if math.isnan(v) else f"{v:.{digits}f}" for v in statistics.values()]
            table.add_row(_TITLES[metric], *cells)
        console.stderr.print(table)
    if missing:
        console.stderr.print(f"missing predictions ({len(missing)}), scored Dice 0, HD95 374: {', '.join(missing)}")
