"""The evaluation report: `write_evaluation_report(evaluation, DIR)` after `brats evaluate` (box
plots of Dice and HD95 per region, the per-case table worst first, and ground truth beside
prediction for the worst cases)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brats_cli import __version__
from brats_cli.choices import Naming
from brats_cli.errors import ImageReadError, first_line
from brats_cli.files import write_text_atomically
from brats_cli.io import SUFFIX, Modality, parse_name, read_image, read_label_map
from brats_cli.labels import REGIONS, region_masks
from brats_cli.report import numbers
from brats_cli.report.folder import CASES_FOLDER, INDEX, KIND, OnCase, staged_report, write_data_files
from brats_cli.report.page import Cell, Table, flags_cell, number, render, text, url

if TYPE_CHECKING:
    from brats_cli.scoring import CaseScores, Evaluation

WORST_CASES = 5


@dataclass
class EvaluationReport:
    """A written evaluation report: its folder, the worst cases by mean Dice, and its notes."""

    folder: Path
    worst: list[str]
    notes: list[str]

    @property
    def index(self) -> Path:
        return self.folder / INDEX


def _mean_dice(scores: CaseScores) -> float:
    return float(np.mean([scores.regions[region].dice for region in REGIONS]))


def _flair_beside(reference: Path, case_id: str) -> Path | None:
    """The FLAIR image in the ground truth's folder, named as the ground truth is, if there is one."""
    parsed = parse_name(reference)
    namings = [parsed.naming] if parsed is not None else list(Naming)
    for naming in namings:
        separator = "_" if naming is Naming.BRATS2021 else "-"
        for extension in (".nii.gz", ".nii"):
            candidate = reference.parent / f"{case_id}{separator}{SUFFIX[naming][Modality.FLAIR]}{extension}"
            if candidate.is_file():
                return candidate
    return None


def _draw_comparison(scores: CaseScores, pair_reference: Path, pair_prediction: Path, path: Path) -> str | None:
    """The worst case's picture: ground truth beside prediction; None (with the reason) on trouble."""
    from brats_cli.report import figures

    try:
        reference, reference_geometry = read_label_map(pair_reference)
        prediction, _ = read_label_map(pair_prediction)
    except ImageReadError as error:
        return str(error)
    reference = reference_geometry.to_canonical(reference)
    prediction = reference_geometry.to_canonical(prediction)
    flair = None
    flair_path = _flair_beside(pair_reference, scores.case_id)
    if flair_path is not None:
        try:
            image, geometry = read_image(flair_path)
            flair = geometry.to_canonical(image)
        except ImageReadError:
            flair = None
        if flair is not None and flair.shape != reference.shape:
            flair = None
    convention = scores.convention
    union = region_masks(reference, convention)[REGIONS[0]] | region_masks(prediction, convention)[REGIONS[0]]
    centre = numbers.centre_of_mass(union) or tuple(size // 2 for size in reference.shape)
    largest = numbers.largest_area_slice(union, axis=2)
    axial = largest if largest is not None else centre[2]
    views = [
        figures.View(2, axial, f"axial {axial}\nlargest area"),
        figures.View(1, centre[1], f"coronal {centre[1]}\ncentre of mass"),
    ]
    dice = "   ".join(f"{r.value} Dice {scores.regions[r].dice:.3f}" for r in REGIONS)
    hd95 = "   ".join(f"{r.value} HD95 {scores.regions[r].hd95:.1f}" for r in REGIONS)
    try:
        figures.comparison_figure(
            path, prediction, reference, convention, views, scores.case_id, f"{dice}\n{hd95}", flair
        )
    except Exception as error:  # a picture that cannot be drawn must not cost the report
        return f"{type(error).__name__}: {first_line(error)}"
    return None


def write_evaluation_report(
    evaluation: Evaluation, folder: str | Path, *, worst: int = WORST_CASES, on_case: OnCase | None = None
) -> EvaluationReport:
    """Write the report of a scored `Evaluation` (`evaluate(...)` or `Evaluation.run()`) to
    `folder`: box plots of Dice and HD95 per region, the per-case table, and ground truth beside
    prediction for the `worst` cases by mean Dice. An existing folder is replaced only if it is an
    earlier evaluation report. OutputError when it cannot be written; DependencyError without
    matplotlib."""
    from brats_cli.report import figures

    figures.require_matplotlib()
    folder = Path(folder)
    notes = list(evaluation.notes)
    pairs = {pair.case_id: pair for pair in evaluation.pairing.pairs}
    scored = [s for s in evaluation.scores if not s.missing]
    chosen = sorted(scored, key=lambda s: (_mean_dice(s), s.case_id))[:worst]
    pictures: dict[str, str] = {}
    with staged_report(folder, "evaluation", "choose another folder") as staging:
        if evaluation.scores:
            values = {
                metric: {r.value: [getattr(s.regions[r], key) for s in evaluation.scores] for r in REGIONS}
                for metric, key in (("Dice", "dice"), ("HD95", "hd95"))
            }
            figures.box_plots(staging / "boxplots.png", values, len(evaluation.scores))
        for scores in chosen:
            if on_case:
                on_case(scores.case_id)
            pair = pairs[scores.case_id]
            assert pair.prediction is not None
            name = f"{CASES_FOLDER}/{scores.case_id}.png"
            problem = _draw_comparison(scores, pair.reference, pair.prediction, staging / name)
            if problem is None:
                pictures[scores.case_id] = name
            else:
                notes.append(f"{scores.case_id}: no picture ({problem})")
        _write_evaluation_files(staging, evaluation, pictures, [s.case_id for s in chosen], notes)
    return EvaluationReport(folder, [s.case_id for s in chosen], notes)


def _write_evaluation_files(
    folder: Path, evaluation: Evaluation, pictures: dict[str, str], worst: list[str], notes: list[str]
) -> None:
    from brats_cli.scoring import CSV_COLUMNS as SCORE_COLUMNS

    document = {
        "kind": KIND["evaluation"],
        "version": __version__,
        **evaluation.document(),
        "worst": worst,
        "notes": notes,
    }
    rows = [{k: row[k] for k in SCORE_COLUMNS} for row in evaluation.rows()]
    write_data_files(folder, document, SCORE_COLUMNS, rows)
    before = ""
    if evaluation.scores:
        before = (
            '<h2>Dice and HD95 per region</h2><img src="boxplots.png" alt="box plots of Dice and HD95 per region" '
            f'style="max-width:100%">{_statistics(evaluation)}<h2>Cases, worst first</h2>'
        )
    page = render(
        "Evaluation report",
        f"brats {__version__}: predictions against the ground truth, BraTS 2021 rules (a missing prediction "
        "scores Dice 0 and HD95 374); the worst cases first. Click a column to sort.",
        _tiles(evaluation),
        notes,
        _table(evaluation, pictures, worst),
        before_table=before,
        after_table=_worst_pictures(worst, pictures),
    )
    write_text_atomically(folder / INDEX, page)


def _table(evaluation: Evaluation, pictures: dict[str, str], worst: list[str]) -> Table:
    """Every case: failures first, then missing predictions, then by mean Dice, lowest first."""
    table = Table(
        columns=[
            ("case", "", True),
            ("flags", "", True),
            *((f"{r.value} Dice", "", False) for r in REGIONS),
            *((f"{r.value} HD95", "voxels (mm)", False) for r in REGIONS),
            ("mean Dice", "over WT, TC, ET", False),
            ("picture", "ground truth beside prediction (the worst cases)", True),
        ]
    )
    rank = {case_id: index for index, case_id in enumerate(worst)}
    rows: list[tuple[tuple[int, float, str], list[Cell], str]] = []
    for failure in evaluation.failures:
        case_cell = Cell(
            f'{escape(failure.case_id)}<div class="small muted">{escape(failure.reason)}</div>',
            failure.case_id,
            text=True,
        )
        cells = [case_cell, flags_cell([("failed", failure.reason)], 0), *[Cell("")] * 7, Cell("", text=True)]
        rows.append(((0, 0.0, failure.case_id), cells, "failed"))
    for scores in evaluation.scores:
        flags = []
        if scores.missing:
            flags.append(("no prediction", "no prediction file: scored Dice 0 and HD95 374 as BraTS does"))
        if scores.case_id in rank:
            flags.append(("worst", f"#{rank[scores.case_id] + 1} by mean Dice"))
        mean = _mean_dice(scores)
        picture = pictures.get(scores.case_id)
        cells = [
            text(scores.case_id),
            flags_cell(flags, 1 if scores.missing else 2 if flags else 9),  # failed 0, as the order above
            *(number(scores.regions[r].dice, 3) for r in REGIONS),
            *(number(scores.regions[r].hd95, 1) for r in REGIONS),
            number(mean, 3),
            Cell(f'<a href="{url(picture)}">ground truth | prediction</a>' if picture else "", text=True),
        ]
        rows.append(((1 if scores.missing else 2, mean, scores.case_id), cells, "flagged" if flags else ""))
    for _, cells, row_class in sorted(rows, key=lambda row: row[0]):
        table.rows.append((cells, row_class))
    return table


def _tiles(evaluation: Evaluation) -> list[tuple[str, str]]:
    tiles = [
        ("cases", str(len(evaluation))),
        ("scored", str(len(evaluation.scores))),
        ("missing predictions", str(len(evaluation.missing))),
        ("failed", str(len(evaluation.failures))),
    ]
    for region, metrics in evaluation.summary().items():
        dice = metrics["dice"]["mean"]
        hd95 = metrics["hd95"]["mean"]
        tiles.append((f"{region} mean Dice / HD95", "-" if math.isnan(dice) else f"{dice:.3f} / {hd95:.1f}"))
    return tiles


def _statistics(evaluation: Evaluation) -> str:
    """The statistics of Dice and HD95 per region, as a small table."""
    rows = "".join(
        f"<tr><td class='text'>{escape(region)}</td>"
        + "".join(
            f"<td>{'-' if math.isnan(v) else format(v, '.3f' if metric == 'dice' else '.2f')}</td>"
            for metric in ("dice", "hd95")
            for v in metrics[metric].values()
        )
        + "</tr>"
        for region, metrics in evaluation.summary().items()
    )
    names = ("mean", "std", "median", "25%", "75%")
    head = "".join(f"<th>Dice {n}</th>" for n in names) + "".join(f"<th>HD95 {n}</th>" for n in names)
    return (
        f'<table class="small"><thead><tr><th class="text">region</th>{head}</tr></thead><tbody>{rows}</tbody></table>'
    )


def _worst_pictures(worst: list[str], pictures: dict[str, str]) -> str:
    """The worst cases' pictures below the table, those that could be drawn."""
    shown = [case_id for case_id in worst if case_id in pictures]
    if not shown:
        return ""
    return "<h2>The worst cases: ground truth beside prediction</h2>" + "".join(
        f'<a href="{url(pictures[case_id])}"><img src="{url(pictures[case_id])}" alt="{escape(case_id)}" '
        'style="max-width:48%;margin:0 1% 1em 0"></a>'
        for case_id in shown
    )
