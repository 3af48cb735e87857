"""Building a QA report folder: from a segmentation output folder (`write_report`) or from a scored
evaluation (`write_evaluation_report`). Reading files, the numbers (`numbers`), the pictures
(`figures`) and the page (`page`) meet here; the folder is built under a hidden staging name and
renamed into place (`files.staged_folder`), so a half-written report never stands in place of a
complete one."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brats_cli import __version__
from brats_cli.choices import LabelConvention, Naming
from brats_cli.errors import CaseError, ImageReadError, InputError, OutputError, first_line
from brats_cli.files import is_temporary, staged_folder, write_text_atomically
from brats_cli.io import (
    SUFFIX,
    Case,
    Modality,
    discover_cases,
    is_nifti,
    is_probabilities_file,
    load_case,
    nifti_stem,
    parse_name,
    read_image,
    read_label_map,
)
from brats_cli.labels import REGIONS, region_masks, unexpected_labels
from brats_cli.report import numbers
from brats_cli.report.numbers import Flag
from brats_cli.report.page import Cell, Table, flags_cell, image_link, number, render, text, url
from brats_cli.report.records import CaseRecord, current, read_records
from brats_cli.spreadsheets import csv_text

if TYPE_CHECKING:
    from brats_cli.report.figures import View
    from brats_cli.scoring import CaseScores, Evaluation

REPORT_FOLDER = "report"
INDEX = "index.html"
CSV_NAME = "report.csv"
JSON_NAME = "report.json"
CASES_FOLDER = "cases"
# What marks a folder as one of these reports, so that rebuilding replaces only a report.
KIND = {"segmentation": "brats segmentation QA report", "evaluation": "brats evaluation report"}

OnCase = Callable[[str], None]  # told each case ID as its picture is drawn


# ---------------------------------------------------------------------------------------------
# One segmented case


@dataclass
class CaseReport:
    """One row of the segmentation report: what the label map holds, what the run recorded, the
    flags, and where the picture is (relative to the report folder)."""

    case_id: str
    status: str  # "done", "failed" (with `message`), or "missing" (an input case without output)
    message: str = ""
    convention: str | None = None
    volumes_ml: dict[str, float] = field(default_factory=dict)
    components: int | None = None  # 26-connected components of the whole tumour
    region_components: dict[str, int] = field(default_factory=dict)
    windows: int | None = None
    et_removed_voxels: int | None = None
    seconds: float | None = None
    disagreement: float | None = None
    region_disagreement: dict[str, float | None] = field(default_factory=dict)
    entropy: float | None = None
    region_entropy: dict[str, float | None] = field(default_factory=dict)
    touches_window_border: bool | None = None
    measured: bool = False  # the run's QA record holds what it measured (numbers.MEASURED_FLAGS)
    flags: list[Flag] = field(default_factory=list)
    figure: str | None = None
    thumbnail: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "case": self.case_id,
            "status": self.status,
            "message": self.message,
            "flags": [flag.value for flag in self.flags],
            "labels": self.convention,
            "volumes_ml": self.volumes_ml,
            "components": self.components,
            "region_components": self.region_components,
            "windows": self.windows,
            "et_removed_voxels": self.et_removed_voxels,
            "seconds": self.seconds,
            "disagreement": self.disagreement,
            "region_disagreement": self.region_disagreement,
            "entropy": self.entropy,
            "region_entropy": self.region_entropy,
            "touches_window_border": self.touches_window_border,
            "measured": self.measured,
            "figure": self.figure,
            "notes": self.notes,
        }

    def csv_row(self) -> dict[str, object]:
        row: dict[str, object] = {
            "case": self.case_id,
            "status": self.status,
            "flags": "; ".join(flag.value for flag in self.flags),
            "message": self.message,
        }
        for name in numbers.VOLUMES:
            row[f"{name}_ml"] = self.volumes_ml.get(name)
        row.update(
            components=self.components,
            windows=self.windows,
            et_removed_voxels=self.et_removed_voxels,
            seconds=self.seconds,
            disagreement=self.disagreement,
            entropy=self.entropy,
            touches_window_border=self.touches_window_border,
            figure=self.figure,
        )
        return row


CSV_COLUMNS = (
    "case",
    "status",
    "flags",
    "message",
    *(f"{name}_ml" for name in numbers.VOLUMES),
    "components",
    "windows",
    "et_removed_voxels",
    "seconds",
    "disagreement",
    "entropy",
    "touches_window_border",
    "figure",
)


@dataclass
class Report:
    """A written segmentation report: its folder, the cases in page order, and the batch's notes."""

    folder: Path
    cases: list[CaseReport]
    notes: list[str]

    @property
    def index(self) -> Path:
        return self.folder / INDEX

    @property
    def flagged(self) -> list[CaseReport]:
        return [case for case in self.cases if case.flags]

    @property
    def failed(self) -> list[CaseReport]:
        return [case for case in self.cases if case.status == "failed"]

    def summary(self) -> dict[str, object]:
        done = [case for case in self.cases if case.status == "done"]

        def median(values: Sequence[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return float(np.median(known)) if known else None

        seconds = [case.seconds for case in self.cases if case.seconds is not None]
        return {
            "cases": len(self.cases),
            "done": len(done),
            "failed": len(self.failed),
            "missing": sum(case.status == "missing" for case in self.cases),
            "flagged": len(self.flagged),
            "unmeasured": sum(case.status == "done" and not case.measured for case in self.cases),
            "median_volumes_ml": {name: median([c.volumes_ml.get(name) for c in done]) for name in ("WT", "TC", "ET")},
            "median_disagreement": median([c.disagreement for c in done]),
            "median_entropy": median([c.entropy for c in done]),
            "seconds": float(sum(seconds)) if seconds else None,
        }


def _label_maps(output: Path) -> dict[str, Path]:
    """The label maps directly in the output folder, by case ID: hidden files, temporaries and
    `--save-probabilities` files skipped, as `brats evaluate` skips them."""
    try:
        entries = sorted(output.iterdir())
    except OSError as error:
        raise InputError(f"{output}: cannot read the output folder ({first_line(error)})") from error
    return {
        nifti_stem(path): path
        for path in entries
        if is_nifti(path)
        and not path.name.startswith(".")
        and not is_temporary(path)
        and not is_probabilities_file(path)
        and path.is_file()
    }


def _check_segmentation_output(output: Path, maps: dict[str, Path], records: dict[str, CaseRecord]) -> None:
    """InputError unless OUTPUT looks like what `brats segment` writes: a label map not named as a
    BraTS input image or ground truth (`<ID>_flair.nii.gz`, `<ID>-seg.nii.gz`), or a QA record.
    An input folder given by mistake is refused before anything is written into it."""
    if records or any(parse_name(path) is None for path in maps.values()):
        return
    found = f" (it holds {next(iter(maps.values())).name}, a BraTS input file name)" if maps else ""
    raise InputError(
        f"{output}: no label maps (<ID>.nii.gz written by brats segment) to report on{found}; "
        "give the output folder of brats segment, and the input folder with --input"
    )


def _convention(record: CaseRecord | None, present: set[int], case: Case | None) -> LabelConvention:
    """The labels of a map: as the run recorded; else by the ET label present (4: 2021, 3: 2023);
    else by the case's naming (ET is then empty and both conventions give the same volumes)."""
    if record is not None and record.convention is not None:
        try:
            return LabelConvention(record.convention)
        except ValueError:
            pass
    has_2021 = LabelConvention.BRATS2021.enhancing in present
    has_2023 = LabelConvention.BRATS2023.enhancing in present
    if has_2021 != has_2023:
        return LabelConvention.BRATS2021 if has_2021 else LabelConvention.BRATS2023
    return LabelConvention.of_naming(case.naming if case is not None else None)


def _read_labels(path: Path) -> tuple[np.ndarray, float]:
    """Canonical (LPS) labels of a map and its voxel volume in ml. ImageReadError if unreadable."""
    labels, geometry = read_label_map(path)
    voxel_ml = float(np.prod(geometry.header.get_zooms()[:3])) / 1000.0
    return geometry.to_canonical(labels), voxel_ml


def _measure(report: CaseReport, labels: np.ndarray, voxel_ml: float, convention: LabelConvention) -> None:
    masks = region_masks(labels, convention)
    report.convention = convention.value
    report.volumes_ml = numbers.label_volumes_ml(labels, convention, voxel_ml)
    report.region_components = {region.value: numbers.count_components(masks[region]) for region in REGIONS}
    report.components = report.region_components["WT"]
    if not masks[REGIONS[0]].any():
        report.flags.append(Flag.EMPTY)
    stray = unexpected_labels(labels, convention)
    if stray:
        report.flags.append(Flag.STRAY_LABELS)
        report.notes.append(
            f"labels {', '.join(map(str, stray))} are outside the {convention.value} convention (counted as background)"
        )


def _apply_record(report: CaseReport, record: CaseRecord) -> None:
    report.seconds = record.seconds
    quality = record.quality
    if quality is None:
        return
    report.measured = True
    report.windows = quality.windows
    report.et_removed_voxels = quality.et_removed_voxels
    report.disagreement = quality.disagreement
    report.region_disagreement = dict(quality.region_disagreement)
    report.entropy = quality.entropy
    report.region_entropy = dict(quality.region_entropy)
    report.touches_window_border = quality.touches_window_border
    if quality.touches_window_border:
        report.flags.append(Flag.WINDOW_BORDER)
    if quality.windows > 1:
        report.flags.append(Flag.WINDOWS)
    if quality.et_removed_voxels > 0:
        report.flags.append(Flag.ET_REMOVED)


def _views(labels: np.ndarray, convention: LabelConvention) -> list[View]:
    """Axial, coronal and sagittal slices through the tumour's centre of mass, and the axial slice
    of largest tumour area; the volume's centre for an empty map."""
    from brats_cli.report.figures import View

    tumour = region_masks(labels, convention)[REGIONS[0]]
    centre = numbers.centre_of_mass(tumour)
    largest = numbers.largest_area_slice(tumour, axis=2)
    where = "centre of mass" if centre is not None else "volume centre (no tumour)"
    if centre is None:
        centre = tuple(size // 2 for size in labels.shape)
    views = [
        View(2, centre[2], f"axial {centre[2]}\n{where}"),
        View(1, centre[1], f"coronal {centre[1]}\n{where}"),
        View(0, centre[0], f"sagittal {centre[0]}\n{where}"),
    ]
    if largest is not None:
        views.append(View(2, largest, f"axial {largest}\nlargest area"))
    return views


def _subtitle(report: CaseReport) -> str:
    volumes = "   ".join(f"{name} {report.volumes_ml[name]:.1f} ml" for name in numbers.VOLUMES)
    parts = [volumes, f"{report.components} component(s)"]
    if report.disagreement is not None:
        parts.append(f"fold disagreement {100 * report.disagreement:.1f}%")
    if report.entropy is not None:
        parts.append(f"entropy {report.entropy:.3f} bit")
    if report.windows is not None:
        parts.append(f"{report.windows} window(s)")
    text_ = "   |   ".join(parts)
    if report.flags:
        text_ += "\nflags: " + ", ".join(flag.value for flag in report.flags)
    return text_


def _draw_case(report: CaseReport, label_path: Path, case: Case | None, folder: Path, use_images: bool) -> None:
    """The case's picture and thumbnail in folder/cases; a problem becomes a note, never an exception."""
    from brats_cli.report import figures

    try:
        labels, _ = _read_labels(label_path)
    except ImageReadError as error:  # changed since it was measured
        report.notes.append(f"no picture: {error}")
        return
    convention = LabelConvention(report.convention or LabelConvention.BRATS2021.value)
    images = None
    note = None
    if use_images and case is not None:
        try:
            images, _ = load_case(case)
        except CaseError as error:
            note = f"images unreadable ({error.reason}): labels alone"
            report.flags.append(Flag.UNREADABLE_IMAGES)
            report.notes.append(note)
        else:
            if images.shape[1:] != labels.shape:
                note = f"images are {images.shape[1:]}, the label map {labels.shape}: labels alone"
                report.notes.append(note)
                images = None
    elif use_images:
        note = "no input case of this ID: labels alone"
        report.notes.append(note)
    name = f"{CASES_FOLDER}/{report.case_id}.png"
    thumbnail = f"{CASES_FOLDER}/{report.case_id}.thumb.png"
    try:
        figures.case_figure(
            folder / name,
            folder / thumbnail,
            labels,
            convention,
            _views(labels, convention),
            report.case_id,
            _subtitle(report),
            images,
            note,
        )
    except Exception as error:  # a picture that cannot be drawn must not cost the report
        report.notes.append(f"no picture: {type(error).__name__}: {first_line(error)}")
        return
    report.figure, report.thumbnail = name, thumbnail


def _is_report(kind: str) -> Callable[[Path], bool]:
    def check(folder: Path) -> bool:
        try:
            return json.loads((folder / JSON_NAME).read_text()).get("kind") == KIND[kind]
        except (OSError, ValueError, AttributeError):
            return False

    return check


def check_report_folder(folder: str | Path, kind: str = "segmentation") -> Path:
    """Refuse, before any work, a report folder that cannot be written: a file or a user's folder
    at its name (only an earlier report is replaced), or matplotlib missing. `kind` is
    "segmentation" or "evaluation". OutputError or DependencyError."""
    from brats_cli.io import check_output_folder
    from brats_cli.report.figures import require_matplotlib

    require_matplotlib()
    folder = Path(folder)
    if (folder.exists() or folder.is_symlink()) and not (folder.is_dir() and _is_report(kind)(folder)):
        raise OutputError(f"{folder}: exists and is not a brats {kind} report; move it away or choose another folder")
    # Its parent may be made later (a segmentation's output folder is made at its first case).
    check_output_folder(folder.parent, "folder for the report")
    return folder


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _percent(value: float | None) -> Cell:
    return Cell("") if value is None else Cell(f"{100 * value:.1f}%", repr(value))


def write_report(
    output: str | Path,
    input: str | Path | None = None,
    *,
    on_case: OnCase | None = None,
) -> Report:
    """Write the QA report of a segmentation output folder to OUTPUT/report/ (replacing an earlier
    report there): a picture per case, index.html, report.csv and report.json.

    `input` (the cases' folder) puts FLAIR, T1, T1ce and T2 in the pictures and lists input cases
    that have no output; without it, or when it cannot be read, the pictures show the labels alone
    and the page says why. A label map that cannot be read is listed as failed. What the run
    measured (seconds, windows, ET threshold, fold disagreement, entropy) comes from its QA records
    (`segment --report`); a map without one shows only what its labels say.

    Raises InputError when OUTPUT is not a folder, OutputError when the report cannot be written,
    DependencyError without matplotlib."""
    from brats_cli.report.figures import require_matplotlib

    require_matplotlib()
    output = Path(output)
    if not output.is_dir():
        problem = "output folder does not exist" if not output.exists() else "not a folder"
        raise InputError(f"{output}: {problem}")
    notes: list[str] = []
    maps = _label_maps(output)
    records, record_notes = read_records(output)
    _check_segmentation_output(output, maps, records)
    notes.extend(record_notes)

    cases: dict[str, Case] = {}
    use_images = input is not None
    if input is None:
        notes.append("no input folder given (--input): the pictures show the labels alone")
    else:
        try:
            discovery = discover_cases(Path(input))
        except InputError as error:
            notes.append(f"{error}: the pictures show the labels alone")
            use_images = False
        else:
            cases = {case.case_id: case for case in discovery.cases}

    case_ids = sorted(set(maps) | {cid for cid, r in records.items() if r.status == "failed"} | set(cases))
    reports: dict[str, CaseReport] = {}
    for case_id in case_ids:
        label_path = maps.get(case_id)
        record = current(records.get(case_id), label_path)
        if label_path is None:
            if record is not None:
                reports[case_id] = CaseReport(
                    case_id, "failed", record.message, seconds=record.seconds, flags=[Flag.FAILED]
                )
            else:
                reports[case_id] = CaseReport(
                    case_id, "missing", f"no {case_id}.nii.gz in {output}", flags=[Flag.MISSING]
                )
            continue
        report = CaseReport(case_id, "done")
        try:
            labels, voxel_ml = _read_labels(label_path)
        except ImageReadError as error:
            report.status, report.message, report.flags = "failed", str(error), [Flag.FAILED]
            reports[case_id] = report
            continue
        present = {int(v) for v in np.unique(labels)}
        _measure(report, labels, voxel_ml, _convention(record, present, cases.get(case_id)))
        if record is not None:
            _apply_record(report, record)
        reports[case_id] = report

    done = {cid: r for cid, r in reports.items() if r.status == "done"}
    unmeasured = sum(not report.measured for report in done.values())
    if unmeasured:
        notes.append(_unmeasured_note(unmeasured, len(done)))
    for case_id in numbers.volume_outliers({cid: r.volumes_ml.get("WT") for cid, r in done.items()}):
        done[case_id].flags.append(Flag.VOLUME)
    for case_id in numbers.disagreement_outliers({cid: r.disagreement for cid, r in done.items()}):
        done[case_id].flags.append(Flag.DISAGREEMENT)

    target = output / REPORT_FOLDER
    try:
        with staged_folder(target, _is_report("segmentation")) as staging:
            (staging / CASES_FOLDER).mkdir()
            for case_id, report in done.items():
                if on_case:
                    on_case(case_id)
                _draw_case(report, maps[case_id], cases.get(case_id), staging, use_images)
            for report in reports.values():
                report.flags.sort(key=lambda flag: numbers.FLAG_ORDER[flag])
            ordered = sorted(reports.values(), key=lambda r: numbers.sort_key(r.case_id, r.flags))
            result = Report(target, ordered, notes)
            _write_segmentation_files(staging, result, output, input)
    except FileExistsError:
        raise OutputError(f"{target}: exists and is not a brats segmentation report; move it away") from None
    except OSError as error:
        raise OutputError(f"{target}: cannot write the report ({first_line(error)})") from error
    return result


def _unmeasured_note(unmeasured: int, done: int) -> str:
    """Why some flags are absent: `segment --report` and `report` afterwards flag alike, except
    what only the run itself could measure."""
    flags = ", ".join(f'"{flag.value}"' for flag in numbers.MEASURED_FLAGS)
    return (
        f"{unmeasured} of {done} case(s) have no QA record of the run that wrote them (segmented without "
        f"--report, or rewritten since): the flags {flags} come from what a run measures while segmenting "
        "(its windows, ET threshold and fold models), which a label map does not hold, so they cannot be known "
        "afterwards and are not given for these cases; brats segment INPUT OUTPUT --report --overwrite measures them"
    )


def _write_segmentation_files(folder: Path, report: Report, output: Path, input: str | Path | None) -> None:
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
    write_text_atomically(folder / JSON_NAME, json.dumps(_json_safe(document), indent=1) + "\n")
    write_text_atomically(folder / CSV_NAME, csv_text(CSV_COLUMNS, [case.csv_row() for case in report.cases]))

    table = Table(
        columns=[
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
            ("disagreement", "share of tumour voxels on which the fold models disagree", False),
            ("entropy", "mean entropy (bits) of the ensemble probability near the tumour", False),
            ("seconds", "", False),
        ]
    )
    for case in report.cases:
        flags = [(flag.value, flag.explanation) for flag in case.flags]
        # Under the case ID: why it failed, or the notes about it (images unreadable, stray labels).
        lines = [case.message] if case.status != "done" else case.notes
        case_cell = Cell(
            _escape(case.case_id) + "".join(f'<div class="small muted">{_escape(line)}</div>' for line in lines),
            case.case_id,
            text=True,
        )
        flag_cell = flags_cell(flags, numbers.sort_key(case.case_id, case.flags)[0])
        if case.status != "done":
            blank = [Cell("")] * (len(table.columns) - 4)
            table.rows.append(
                ([image_link(None, None, case.case_id), case_cell, flag_cell, *blank, number(case.seconds)], "failed")
            )
            continue
        volumes = [number(case.volumes_ml.get(name)) for name in numbers.VOLUMES]
        # 0 where the run recorded its ET threshold and removed nothing; blank where it did not record.
        removed = number(case.et_removed_voxels) if case.et_removed_voxels is not None else Cell("")
        cells = [
            image_link(case.figure, case.thumbnail, case.case_id),
            case_cell,
            flag_cell,
            *volumes,
            number(case.components),
            number(case.windows),
            removed,
            _percent(case.disagreement),
            number(case.entropy, 3),
            number(case.seconds),
        ]
        table.rows.append((cells, "flagged" if case.flags else ""))

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
    flag_help = "".join(
        f"<li><b>{_escape(flag.value)}</b>: {_escape(flag.explanation)}</li>"
        for flag in Flag
        if any(flag in case.flags for case in report.cases)
    )
    after = f'<h2>Flags</h2><ul class="small">{flag_help}</ul>' if flag_help else ""
    after += (
        '<p class="small muted">Fold disagreement: of the voxels at least one fold model puts in the tumour, the '
        "share on which the folds do not all agree (any region stage). Entropy: binary entropy of each region "
        "stage's ensemble probability, averaged within 3 voxels of the tumour and over the stages (0: certain, "
        "1: p = 0.5). Both are measured while segmenting (<code>brats segment --report</code>); blank where not. "
        "report.csv and report.json hold these numbers.</p>"
    )
    page = render(
        f"QA report: {output.name}",
        f"brats {__version__}, {len(report.cases)} case(s); flagged cases first. Click a column to sort.",
        tiles,
        report.notes,
        table,
        after_table=after,
    )
    write_text_atomically(folder / INDEX, page)


def _escape(value: str) -> str:
    from html import escape

    return escape(value)


# ---------------------------------------------------------------------------------------------
# An evaluation

WORST_CASES = 5


@dataclass
class EvaluationReport:
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
    ranked = sorted(scored, key=lambda s: (_mean_dice(s), s.case_id))
    chosen = ranked[:worst]
    pictures: dict[str, str] = {}
    try:
        with staged_folder(folder, _is_report("evaluation")) as staging:
            (staging / CASES_FOLDER).mkdir()
            values = {
                metric: {r.value: [getattr(s.regions[r], key) for s in evaluation.scores] for r in REGIONS}
                for metric, key in (("Dice", "dice"), ("HD95", "hd95"))
            }
            if evaluation.scores:
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
    except FileExistsError:
        raise OutputError(f"{folder}: exists and is not a brats evaluation report; choose another folder") from None
    except OSError as error:
        raise OutputError(f"{folder}: cannot write the report ({first_line(error)})") from error
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
    write_text_atomically(folder / JSON_NAME, json.dumps(_json_safe(document), indent=1) + "\n")
    write_text_atomically(
        folder / CSV_NAME, csv_text(SCORE_COLUMNS, [{k: row[k] for k in SCORE_COLUMNS} for row in evaluation.rows()])
    )

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
            f'{_escape(failure.case_id)}<div class="small muted">{_escape(failure.reason)}</div>',
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

    summary = evaluation.summary()
    tiles = [
        ("cases", str(len(evaluation))),
        ("scored", str(len(evaluation.scores))),
        ("missing predictions", str(len(evaluation.missing))),
        ("failed", str(len(evaluation.failures))),
    ]
    for region, metrics in summary.items():
        dice = metrics["dice"]["mean"]
        hd95 = metrics["hd95"]["mean"]
        tiles.append((f"{region} mean Dice / HD95", "-" if math.isnan(dice) else f"{dice:.3f} / {hd95:.1f}"))
    statistics = "".join(
        f"<tr><td class='text'>{_escape(region)}</td>"
        + "".join(
            f"<td>{'-' if math.isnan(v) else format(v, '.3f' if metric == 'dice' else '.2f')}</td>"
            for metric in ("dice", "hd95")
            for v in metrics[metric].values()
        )
        + "</tr>"
        for region, metrics in summary.items()
    )
    names = ("mean", "std", "median", "25%", "75%")
    head = "".join(f"<th>Dice {n}</th>" for n in names) + "".join(f"<th>HD95 {n}</th>" for n in names)
    before = ""
    if evaluation.scores:
        before = (
            '<h2>Dice and HD95 per region</h2><img src="boxplots.png" alt="box plots of Dice and HD95 per region" '
            'style="max-width:100%">'
            f'<table class="small"><thead><tr><th class="text">region</th>{head}</tr></thead>'
            f"<tbody>{statistics}</tbody></table><h2>Cases, worst first</h2>"
        )
    shown = [case_id for case_id in worst if case_id in pictures]
    after = ""
    if shown:
        after = "<h2>The worst cases: ground truth beside prediction</h2>" + "".join(
            f'<a href="{url(pictures[case_id])}"><img src="{url(pictures[case_id])}" alt="{_escape(case_id)}" '
            'style="max-width:48%;margin:0 1% 1em 0"></a>'
            for case_id in shown
        )
    page = render(
        "Evaluation report",
        f"brats {__version__}: predictions against the ground truth, BraTS 2021 rules (a missing prediction "
        "scores Dice 0 and HD95 374); the worst cases first. Click a column to sort.",
        tiles,
        notes,
        table,
        before_table=before,
        after_table=after,
    )
    write_text_atomically(folder / INDEX, page)
