"""Scoring predictions against ground truth: pairing files by case ID, choosing the label
convention, scoring each case and region, summarising as the paper's Table 3, writing CSV/JSON.

From Python: `evaluate(predictions, ground_truth)` scores every pair and returns the
`Evaluation`; `brats evaluate` iterates `Evaluation.cases()` to show progress.

The metrics themselves are in `metrics.py`; files are read through `io.py`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brats_cli.choices import Task
from brats_cli.errors import CaseError, ImageReadError, InputError, OutputError, first_line
from brats_cli.files import is_temporary
from brats_cli.io import (
    SEGMENTATION_SUFFIX,
    SEPARATOR,
    Geometry,
    Naming,
    atomic_path,
    is_nifti,
    is_probabilities_file,
    nifti_stem,
    not_a_file,
    parse_name,
    read_label_map,
)
from brats_cli.labels import REGIONS, LabelConvention, Region, region_masks
from brats_cli.metrics import (
    MISSING_HD95,
    MISSING_PREDICTION_SCORES,
    LesionWiseScores,
    RegionScores,
    lesion_wise,
    region_scores,
)
from brats_cli.spreadsheets import csv_text
from brats_cli.tasks import TaskRules, choose, task_rules

CSV_COLUMNS: tuple[str, ...] = ("case", "region", "dice", "hd95", "sensitivity", "specificity")
LESION_WISE_COLUMNS: tuple[str, ...] = ("lesion_wise_dice", "lesion_wise_hd95")
METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity")
# Summary statistics of the paper's Table 3. The standard deviation is the population one
# (numpy's default, ddof=0), so a one-case run has std 0 rather than none.
STATISTICS: tuple[str, ...] = ("mean", "std", "median", "25quantile", "75quantile")
# A missing prediction's lesion-wise score: every lesion unmatched.
MISSING_LESION_WISE = LesionWiseScores(dice=0.0, hd95=MISSING_HD95, true_positive_lesions=0,
                                       false_negative_lesions=0, false_positive_components=0)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Pairing


@dataclass(frozen=True)
class Pair:
    case_id: str
    reference: Path
    prediction: Path | None  # None: no prediction for this ground truth
    naming: Naming | None  # the release whose naming the ground-truth file follows, if any


@dataclass
class Pairing:
    pairs: list[Pair]
    notes: list[str] = field(default_factory=list)
    # Ground-truth case folders that could not be read: each fails alone, named by its folder.
    unreadable: list[CaseError] = field(default_factory=list)


def _segmentation_id(path: Path) -> tuple[str, Naming] | None:
    parsed = parse_name(path)
    if parsed is None or parsed.suffix != SEGMENTATION_SUFFIX:
        return None
    return parsed.case_id, parsed.naming


def _nifti_files(folder: Path) -> list[Path]:
    """The entries of `folder` named like NIfTI files, files or not: a folder or a FIFO at a
    prediction's or ground truth's name is that case's error (`_read`), not a missing file."""
    try:
        return sorted(p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith("."))
    except PermissionError as error:
        raise InputError(f"{folder}: cannot read folder (permission denied)") from error


def find_ground_truth(folder: Path, unreadable: list[CaseError] | None = None) -> list[tuple[str, Path, Naming]]:
    """`<ID>_seg` / `<ID>-seg` files directly in `folder` or in its case folders. A case folder
    that cannot be read is added to `unreadable` (raised as InputError without that list)."""
    found: dict[str, Path] = {}
    namings: dict[str, Naming] = {}
    folders = [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))]
    for sub in folders:
        try:
            files = _nifti_files(sub)
        except InputError as error:
            if unreadable is None or sub == folder:
                raise
            unreadable.append(CaseError(sub.name, str(error)))
            continue
        for path in files:
            parsed = _segmentation_id(path)
            if parsed is None:
                continue
            case_id, naming = parsed
            if case_id in found:
                raise InputError(f"{folder}: two ground truths for case {case_id}: {found[case_id]} and {path}")
            found[case_id], namings[case_id] = path, naming
    return [(case_id, found[case_id], namings[case_id]) for case_id in sorted(found)]


def _prediction_id(path: Path) -> str:
    parsed = _segmentation_id(path)
    return parsed[0] if parsed else nifti_stem(path)


def pair_files(prediction: Path, reference: Path) -> Pairing:
    """Match predictions to ground truth by case ID: a folder against a folder, or a file
    against a file. Raises InputError when the input cannot be used at all."""
    prediction, reference = Path(prediction), Path(reference)
    for path, role in ((prediction, "prediction"), (reference, "ground truth")):
        if not path.exists():
            raise InputError(f"{path}: {role} path does not exist")
        if not path.is_file() and not path.is_dir():
            raise InputError(f"{path}: {role} is not a regular file or a folder (a FIFO, socket or device?)")
    if reference.is_file() or prediction.is_file():
        if not (reference.is_file() and prediction.is_file()):
            raise InputError(f"{prediction} vs {reference}: give two folders or two files, not a folder and a file")
        for path in (prediction, reference):
            if not is_nifti(path):
                raise InputError(f"{path}: not a NIfTI file (.nii or .nii.gz)")
        parsed = _segmentation_id(reference)
        case_id, naming = parsed if parsed else (nifti_stem(reference), None)
        return Pairing([Pair(case_id, reference, prediction, naming)])

    unreadable: list[CaseError] = []
    truths = find_ground_truth(reference, unreadable)
    if not truths and not unreadable:
        raise InputError(f"{reference}: no ground truth found (expected <ID>_seg.nii.gz or <ID>-seg.nii.gz files)")
    predictions: dict[str, Path] = {}
    notes: list[str] = []
    for path in _nifti_files(prediction):
        if is_temporary(path):  # hidden files are skipped already; kept explicit for the rule's sake
            continue
        if is_probabilities_file(path):  # `brats segment --save-probabilities` beside its label maps
            continue
        case_id = _prediction_id(path)
        if case_id in predictions:
            first = predictions[case_id].name
            raise InputError(f"{prediction}: two predictions for case {case_id}: {first}, {path.name}")
        predictions[case_id] = path
    if not predictions:
        raise InputError(f"{prediction}: no predictions found (expected <ID>.nii.gz files)")
    truth_ids = {case_id for case_id, _, _ in truths}
    if truth_ids and not truth_ids & predictions.keys():
        example = next(iter(predictions.values())).name
        raise InputError(
            f"{prediction}: no prediction matches a ground-truth case ID (e.g. {example} vs "
            f"{truths[0][1].name}; expected <ID>.nii.gz)"
        )
    for case_id in sorted(predictions.keys() - truth_ids):
        notes.append(f"{predictions[case_id]}: no ground truth for case {case_id}, ignored")
    pairs = [Pair(case_id, path, predictions.get(case_id), naming) for case_id, path, naming in truths]
    return Pairing(pairs, notes, unreadable)


# ---------------------------------------------------------------------------------------------
# Label convention


def label_values(label_map: np.ndarray) -> set[int]:
    """The distinct labels of a map. Label maps hold a handful of small values, so one comparison
    per value in [min, max] is many times faster than sorting (np.unique) or counting (bincount)
    9 million voxels."""
    if label_map.size == 0:
        return set()
    low, high = int(label_map.min()), int(label_map.max())
    if high - low <= 32:
        return {value for value in range(low, high + 1) if np.any(label_map == value)}
    return {int(v) for v in np.unique(label_map)}


def resolve_convention(
    choice: LabelConvention | None, naming: Naming | None, present: set[int]
) -> tuple[LabelConvention, str]:
    """The convention to score with and why: the user's choice; else the ground-truth file
    naming (`_seg` 2021, `-seg` 2023); else the labels present (4 -> 2021, else 3 -> 2023; with
    neither, ET is empty under both conventions and the scores agree)."""
    if choice is not None:
        return choice, "--labels"
    if naming is not None:
        separator = SEPARATOR[naming]
        return LabelConvention.of_naming(naming), f"ground-truth name ({separator}seg)"
    if LabelConvention.BRATS2021.enhancing in present:
        return LabelConvention.BRATS2021, "label 4 present"
    if LabelConvention.BRATS2023.enhancing in present:
        return LabelConvention.BRATS2023, "label 3 present"
    return LabelConvention.BRATS2021, "no ET label present, both conventions agree"


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class CaseScores:
    case_id: str
    convention: LabelConvention
    convention_reason: str
    regions: dict[Region, RegionScores]
    lesion_wise: dict[Region, LesionWiseScores] | None
    missing: bool
    warnings: list[str] = field(default_factory=list)


def _read(case_id: str, path: Path) -> tuple[np.ndarray, Geometry]:
    problem = not_a_file(path, "a label map")
    if problem:
        raise CaseError(case_id, problem)
    try:
        return read_label_map(path)
    except ImageReadError as error:
        raise CaseError(case_id, str(error)) from error


def score_pair(
    pair: Pair,
    choice: LabelConvention | None = None,
    with_lesion_wise: bool = False,
    task: TaskRules | None = None,
) -> CaseScores:
    """Score one case on WT, TC and ET with the task's label set and lesion-wise settings (the
    BraTS 2023 glioma task's by default). Raises CaseError when a file is unreadable or the
    prediction's shape or affine differs from the ground truth's."""
    task = task or task_rules(None)
    reference, reference_geometry = _read(pair.case_id, pair.reference)
    reference_labels = label_values(reference)
    prediction = None
    prediction_labels: set[int] = set()
    if pair.prediction is not None:
        prediction, prediction_geometry = _read(pair.case_id, pair.prediction)
        if prediction_geometry.shape != reference_geometry.shape:
            raise CaseError(
                pair.case_id,
                f"shape {prediction_geometry.shape} of {pair.prediction.name} differs from the ground truth's "
                f"{reference_geometry.shape} ({pair.reference.name})",
            )
        if not prediction_geometry.matches(reference_geometry):
            raise CaseError(
                pair.case_id,
                f"affine of {pair.prediction.name} differs from the ground truth's ({pair.reference.name})",
            )
        prediction_labels = label_values(prediction)
    if choice is None and task.convention is not None:
        convention, reason = task.convention, f"--task {task.task.value}"
    else:
        convention, reason = resolve_convention(choice, pair.naming, reference_labels | prediction_labels)

    allowed = {0, *convention.labels, *task.other_labels}
    warnings = []
    for path, values in ((pair.reference, reference_labels), (pair.prediction, prediction_labels)):
        stray = sorted(values - allowed)
        if path is not None and stray:
            warnings.append(
                f"{path.name}: labels {', '.join(map(str, stray))} are not in the {convention.value} convention "
                f"({', '.join(map(str, convention.labels))}); counted as background"
            )

    if prediction is None:
        regions = dict.fromkeys(REGIONS, MISSING_PREDICTION_SCORES)
        lesions = dict.fromkeys(REGIONS, MISSING_LESION_WISE) if with_lesion_wise else None
        return CaseScores(pair.case_id, convention, reason, regions, lesions, True, warnings)

    reference_masks = region_masks(reference, convention)
    prediction_masks = region_masks(prediction, convention)
    regions = {r: region_scores(prediction_masks[r], reference_masks[r]) for r in REGIONS}
    lesions = None
    if with_lesion_wise:
        lesions = {r: lesion_wise(prediction_masks[r], reference_masks[r], rules=task.lesion_rules[r]) for r in REGIONS}
    return CaseScores(pair.case_id, convention, reason, regions, lesions, False, warnings)


# ---------------------------------------------------------------------------------------------
# Summary and output


def rows(results: Iterable[CaseScores], with_lesion_wise: bool) -> list[dict[str, object]]:
    """One row per case and region, the CSV's columns in order."""
    table = []
    for result in results:
        for region in REGIONS:
            scores = result.regions[region]
            row: dict[str, object] = {
                "case": result.case_id,
                "region": region.value,
                "dice": scores.dice,
                "hd95": scores.hd95,
                "sensitivity": scores.sensitivity,
                "specificity": scores.specificity,
            }
            if with_lesion_wise and result.lesion_wise is not None:
                row["lesion_wise_dice"] = result.lesion_wise[region].dice
                row["lesion_wise_hd95"] = result.lesion_wise[region].hd95
            table.append(row)
    return table


def statistics(values: list[float]) -> dict[str, float]:
    """Mean, std, median and quartiles (numpy's linear percentiles) of one metric; NaN if no value."""
    if not values:
        return dict.fromkeys(STATISTICS, math.nan)
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "median": float(np.median(array)),
        "25quantile": float(np.percentile(array, 25)),
        "75quantile": float(np.percentile(array, 75)),
    }


def summarise(results: list[CaseScores], with_lesion_wise: bool) -> dict[str, dict[str, dict[str, float]]]:
    """Per region, per metric: the statistics over every scored case (missing ones included)."""
    metrics = METRICS + (LESION_WISE_COLUMNS if with_lesion_wise else ())
    table = rows(results, with_lesion_wise)
    return {
        region.value: {
            metric: statistics([float(row[metric]) for row in table if row["region"] == region.value])  # type: ignore[arg-type]
            for metric in metrics
        }
        for region in REGIONS
    }


def write_csv(path: Path, table: list[dict[str, object]], with_lesion_wise: bool) -> None:
    """Full float precision (Python's shortest round-trip repr), written atomically."""
    columns = CSV_COLUMNS + (LESION_WISE_COLUMNS if with_lesion_wise else ())
    try:
        with atomic_path(Path(path)) as temporary, open(temporary, "w", newline="") as handle:
            handle.write(csv_text(columns, table))  # case IDs neutralised against spreadsheet formulas
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({first_line(error)})") from error


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, document: dict[str, object]) -> None:
    try:
        with atomic_path(Path(path)) as temporary, open(temporary, "w") as handle:
            json.dump(_json_safe(document), handle, indent=2)
            handle.write("\n")
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({first_line(error)})") from error


# ---------------------------------------------------------------------------------------------
# A whole run


@dataclass
class Evaluation:
    """One scoring run: the pairs are found when it is made (`Evaluation.of`, InputError when
    the folders cannot be used at all); `cases()` scores them in order; the summary, the table
    and the JSON document describe what was scored. A case that cannot be scored (unreadable,
    another shape or affine) is a failure of its own; the others are still scored."""

    pairing: Pairing
    labels: LabelConvention | None = None
    lesion_wise: bool = False
    scores: list[CaseScores] = field(default_factory=list)
    failures: list[CaseError] = field(default_factory=list)
    task: TaskRules = field(default_factory=lambda: task_rules(None))

    @classmethod
    def of(
        cls,
        prediction: Path,
        reference: Path,
        *,
        labels: LabelConvention | str | None = None,
        lesion_wise: bool = False,
        task: Task | str | None = None,
    ) -> Evaluation:
        chosen = None if labels is None else choose(LabelConvention, labels, "labels")
        rules = task_rules(task)
        if chosen is not None and rules.convention is not None and chosen is not rules.convention:
            raise InputError(
                f"--labels {chosen.value} contradicts --task {rules.task.value}, whose labels are the "
                f"{rules.convention.value} convention's (ET = {rules.convention.enhancing})"
                + "".join(f", {value} = {name}" for value, name in rules.other_labels.items())
            )
        pairing = pair_files(Path(prediction), Path(reference))
        return cls(pairing, chosen, lesion_wise, failures=list(pairing.unreadable), task=rules)

    @property
    def notes(self) -> list[str]:
        return self.pairing.notes

    def __len__(self) -> int:
        return len(self.pairing.pairs)

    def cases(self) -> Iterator[tuple[Pair, CaseScores | CaseError]]:
        """Score each pair, yielding it with its scores or the reason it could not be scored."""
        for pair in self.pairing.pairs:
            try:
                scores = score_pair(pair, self.labels, self.lesion_wise, self.task)
            except CaseError as error:
                self.failures.append(error)
                yield pair, error
            else:
                self.scores.append(scores)
                yield pair, scores

    def run(self) -> Evaluation:
        for _ in self.cases():
            pass
        return self

    @property
    def missing(self) -> list[str]:
        """Cases with ground truth and no prediction (scored as the BraTS rules score them)."""
        return [r.case_id for r in self.scores if r.missing]

    def conventions(self) -> list[tuple[LabelConvention, str, int]]:
        """The label conventions scored with, each with why and how many cases."""
        counted = Counter((r.convention, r.convention_reason) for r in self.scores)
        return [(convention, reason, count) for (convention, reason), count in sorted(counted.items())]

    def rows(self) -> list[dict[str, object]]:
        return rows(self.scores, self.lesion_wise)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        return summarise(self.scores, self.lesion_wise)

    def document(self) -> dict[str, object]:
        """What `--json` writes: every row, each case's labels, the summary, missing and failed cases."""
        return {
            "cases": self.rows(),
            "labels": {r.case_id: r.convention.value for r in self.scores},
            "task": self.task.task.value,
            "summary": self.summary(),
            "missing": self.missing,
            "errors": {f.case_id: f.reason for f in self.failures},
        }

    def write_csv(self, path: Path) -> None:
        write_csv(path, self.rows(), self.lesion_wise)

    def write_json(self, path: Path) -> None:
        write_json(path, self.document())


def evaluate(
    prediction: Path | str,
    reference: Path | str,
    *,
    labels: LabelConvention | str | None = None,
    lesion_wise: bool = False,
    task: Task | str | None = None,
) -> Evaluation:
    """`brats evaluate PRED GT` from Python: every pair scored (with `task`'s rules, `brats_cli.tasks`)."""
    return Evaluation.of(Path(prediction), Path(reference), labels=labels, lesion_wise=lesion_wise, task=task).run()
