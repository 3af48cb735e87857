"""The files of a segmentation QA report: report.json, report.csv and the page, index.html (the
cases' table, flagged ones first, the batch's tiles and what the flags mean)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from brats_cli import __version__
from brats_cli.files import write_text_atomically
from brats_cli.report import numbers
from brats_cli.report.folder import INDEX, KIND, write_data_files
from brats_cli.report.numbers import Flag
from brats_cli.report.page import Cell, Table, flags_cell, image_link, number, percent, render
from brats_cli.report.segmentation_rows import CSV_COLUMNS, CaseReport, Report

COLUMNS = [
    ("picture", "click for the full picture", True),
    ("case", "", True),
    ("flags", "what to look at first (hover a flag for why)", True),
    ("WT ml", "whole tumour", False),
    ("TC ml", "tumour core", False),
    ("ET ml", "enhancing tumour", False),
    ("NCR ml", "necrosis", False),
    ("ED ml", "edema", False),
    ("components", "26-connected components of the whole tumour", False),
    ("windows", "region windows the tumour needed", False),
    ("ET removed", "ET voxels the ET threshold relabelled necrosis", False),
    ("components removed", "tumour voxels in the small components the component rule removed", False),
    ("core filled", "voxels of the tumour core's holes labelled necrosis", False),
    ("disagreement", "share of tumour voxels on which the fold models disagree", False),
    ("entropy", "mean entropy (bits) of the ensemble probability near the tumour", False),
    ("seconds", "", False),
]

MEASURES = (
    '<p class="small muted">Fold disagreement: of the voxels at least one fold model puts in the tumour, the '
    "share on which the folds do not all agree (any region stage). Entropy: binary entropy of each region "
    "stage's ensemble probability, averaged within 3 voxels of the tumour and over the stages (0: certain, "
    "1: p = 0.5). ET removed, components removed, core filled: voxels (1 mm<sup>3</sup> each) the post-"
    "processing relabelled: ET as necrosis under the ET threshold, tumour as background in components under "
    "the bundle's <code>min_component</code>, the tumour core's holes as necrosis. All are measured while "
    "segmenting (<code>brats segment --report</code>); blank where not. "
    "report.csv and report.json hold these numbers.</p>"
)


def write_segmentation_files(folder: Path, report: Report, output: Path, input: str | Path | None) -> None:
    """report.json, report.csv and index.html of `report` in `folder`."""
    summary = report.summary()
    document = {
        "kind": KIND["segmentation"],
        "version": __version__,
        "output": str(output),
        "input": None if input is None else str(input),
        "summary": summary,
        "notes": report.notes,
        "measured_flags": [flag.value for flag in numbers.MEASURED_FLAGS],
        "flags": {flag.value: flag.explanation for flag in Flag},
        "cases": [case.to_json() for case in report.cases],
    }
    write_data_files(folder, document, CSV_COLUMNS, [case.csv_row() for case in report.cases])
    table = Table(columns=list(COLUMNS))
    for case in report.cases:
        table.rows.append(_row(case))
    page = render(
        f"QA report: {output.name}",
        f"brats {__version__}, {len(report.cases)} case(s); flagged cases first. Click a column to sort.",
        _tiles(summary),
        report.notes,
        table,
        after_table=_flag_help(report) + MEASURES,
    )
    write_text_atomically(folder / INDEX, page)


def _row(case: CaseReport) -> tuple[list[Cell], str]:
    """A case's cells and its row class ("failed" for a failed or missing case, "flagged")."""
    flags = [(flag.value, flag.explanation) for flag in case.flags]
    # Under the case ID: why it failed, or the notes about it (images unreadable, stray labels).
    lines = [case.message] if case.status != "done" else case.notes
    case_cell = Cell(
        escape(case.case_id) + "".join(f'<div class="small muted">{escape(line)}</div>' for line in lines),
        case.case_id,
        text=True,
    )
    flag_cell = flags_cell(flags, numbers.sort_key(case.case_id, case.flags)[0])
    if case.status != "done":
        blank = [Cell("")] * (len(COLUMNS) - 4)
        return [image_link(None, None, case.case_id), case_cell, flag_cell, *blank, number(case.seconds)], "failed"
    volumes = [number(case.volumes_ml.get(name)) for name in numbers.VOLUMES]
    # 0 where the run recorded its post-processing and it changed nothing; blank where it did not record.
    recorded = [
        number(count) if count is not None else Cell("")
        for count in (case.et_removed_voxels, case.components_removed_voxels, case.core_filled_voxels)
    ]
    cells = [
        image_link(case.figure, case.thumbnail, case.case_id),
        case_cell,
        flag_cell,
        *volumes,
        number(case.components),
        number(case.windows),
        *recorded,
        percent(case.disagreement),
        number(case.entropy, 3),
        number(case.seconds),
    ]
    return cells, "flagged" if case.flags else ""


def _tiles(summary: dict[str, object]) -> list[tuple[str, str]]:
    """The batch at a glance, above the table."""
    medians = summary["median_volumes_ml"]
    disagreement = summary["median_disagreement"]
    seconds = summary["seconds"]
    assert isinstance(medians, dict)
    assert isinstance(disagreement, float | None) and isinstance(seconds, float | None)
    tiles = [
        ("cases", str(summary["cases"])),
        ("flagged", str(summary["flagged"])),
        ("failed", str(summary["failed"])),
        *((f"median {name}", "-" if v is None else f"{v:.1f} ml") for name, v in medians.items()),
        ("median disagreement", "-" if disagreement is None else f"{100 * disagreement:.1f}%"),
        ("total seconds", "-" if seconds is None else f"{seconds:.0f}"),
    ]
    if summary["missing"]:
        tiles.insert(3, ("no output", str(summary["missing"])))
    return tiles


def _flag_help(report: Report) -> str:
    """What each flag raised on the page means (only those raised)."""
    items = "".join(
        f"<li><b>{escape(flag.value)}</b>: {escape(flag.explanation)}</li>"
        for flag in Flag
        if any(flag in case.flags for case in report.cases)
    )
    return f'<h2>Flags</h2><ul class="small">{items}</ul>' if items else ""
