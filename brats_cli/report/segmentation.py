"""The segmentation QA report: `write_report(OUTPUT, INPUT)` reads a `brats segment` output folder
(the label maps and the run's QA records), measures each case (`numbers`), flags what a reviewer
should see first, draws a picture per case (`figures`) and writes the folder (`segmentation_page`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brats_cli.choices import LabelConvention
from brats_cli.errors import CaseError, ImageReadError, InputError, first_line
from brats_cli.files import is_temporary
from brats_cli.io import (
    Case,
    discover_cases,
    is_nifti,
    is_probabilities_file,
    load_case,
    nifti_stem,
    parse_name,
    read_label_map,
)
from brats_cli.labels import REGIONS, region_masks, unexpected_labels
from brats_cli.report import numbers
from brats_cli.report.folder import CASES_FOLDER, REPORT_FOLDER, OnCase, staged_report
from brats_cli.report.numbers import Flag
from brats_cli.report.records import CaseRecord, current, read_records
from brats_cli.report.segmentation_page import write_segmentation_files
from brats_cli.report.segmentation_rows import CaseReport, Report

if TYPE_CHECKING:
    from brats_cli.report.figures import View


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
    report.components_removed_voxels = quality.components_removed_voxels
    report.core_filled_voxels = quality.core_filled_voxels
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

    Raises InputError when OUTPUT is not a folder or holds no label maps, OutputError when the
    report cannot be written, DependencyError without matplotlib."""
    from brats_cli.report.figures import require_matplotlib

    require_matplotlib()
    output = Path(output)
    if not output.is_dir():
        problem = "output folder does not exist" if not output.exists() else "not a folder"
        raise InputError(f"{output}: {problem}")
    maps = _label_maps(output)
    records, notes = read_records(output)
    _check_segmentation_output(output, maps, records)
    cases, use_images = _input_cases(input, notes)
    case_ids = sorted(set(maps) | {cid for cid, r in records.items() if r.status == "failed"} | set(cases))
    reports = {
        case_id: _case_report(case_id, output, maps.get(case_id), records.get(case_id), cases.get(case_id))
        for case_id in case_ids
    }
    done = {case_id: report for case_id, report in reports.items() if report.status == "done"}
    _flag_batch(done, notes)

    target = output / REPORT_FOLDER
    with staged_report(target, "segmentation", "move it away") as staging:
        for case_id, report in done.items():
            if on_case:
                on_case(case_id)
            _draw_case(report, maps[case_id], cases.get(case_id), staging, use_images)
        for report in reports.values():
            report.flags.sort(key=lambda flag: numbers.FLAG_ORDER[flag])
        ordered = sorted(reports.values(), key=lambda r: numbers.sort_key(r.case_id, r.flags))
        result = Report(target, ordered, notes)
        write_segmentation_files(staging, result, output, input)
    return result


def _input_cases(input: str | Path | None, notes: list[str]) -> tuple[dict[str, Case], bool]:
    """The input's cases by ID, and whether the pictures can show images; why not, in `notes`."""
    if input is None:
        notes.append("no input folder given (--input): the pictures show the labels alone")
        return {}, False
    try:
        discovery = discover_cases(Path(input))
    except InputError as error:
        notes.append(f"{error}: the pictures show the labels alone")
        return {}, False
    return {case.case_id: case for case in discovery.cases}, True


def _case_report(
    case_id: str, output: Path, label_path: Path | None, record: CaseRecord | None, case: Case | None
) -> CaseReport:
    """One case's row: from its label map and its run's record while that is current; failed when
    the run failed or the map cannot be read, missing when the input has it and the output not."""
    record = current(record, label_path)
    if label_path is None:
        if record is not None:
            return CaseReport(case_id, "failed", record.message, seconds=record.seconds, flags=[Flag.FAILED])
        return CaseReport(case_id, "missing", f"no {case_id}.nii.gz in {output}", flags=[Flag.MISSING])
    report = CaseReport(case_id, "done")
    try:
        labels, voxel_ml = _read_labels(label_path)
    except ImageReadError as error:
        report.status, report.message, report.flags = "failed", str(error), [Flag.FAILED]
        return report
    present = {int(v) for v in np.unique(labels)}
    _measure(report, labels, voxel_ml, _convention(record, present, case))
    if record is not None:
        _apply_record(report, record)
    return report


def _flag_batch(done: dict[str, CaseReport], notes: list[str]) -> None:
    """The flags that compare a case with the rest of the batch, and which flags cannot be known."""
    unmeasured = sum(not report.measured for report in done.values())
    if unmeasured:
        notes.append(_unmeasured_note(unmeasured, len(done)))
    for case_id in numbers.volume_outliers({cid: r.volumes_ml.get("WT") for cid, r in done.items()}):
        done[case_id].flags.append(Flag.VOLUME)
    for case_id in numbers.disagreement_outliers({cid: r.disagreement for cid, r in done.items()}):
        done[case_id].flags.append(Flag.DISAGREEMENT)


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
