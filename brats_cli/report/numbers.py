"""The QA report's numbers, as pure functions of arrays: volumes of each label and region in ml,
connected components, the slices a picture shows, the batch outliers, and the flags a reviewer
should see first."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

import numpy as np
from scipy import ndimage

from brats_cli.choices import EDEMA, NECROSIS, LabelConvention
from brats_cli.labels import region_masks

# Label and region names, in the order the report shows them: the three labels, then the two
# regions that are not a single label (ET the region is ET the label).
LABELS: tuple[str, ...] = ("NCR", "ED", "ET")
VOLUMES: tuple[str, ...] = ("WT", "TC", "ET", "NCR", "ED")

# Tumour components are counted 26-connected, as BraTS 2023's lesion-wise metrics count lesions.
COMPONENT_STRUCTURE = np.ones((3, 3, 3), dtype=bool)

# Batch outliers: Iglewicz and Hoaglin's modified z-score, 0.6745 (x - median) / MAD, beyond 3.5
# (their recommended cut-off; robust, so one wild case does not hide another). Only from
# MIN_BATCH cases on: in a smaller batch "far from the rest" means little.
OUTLIER_Z = 3.5
MIN_BATCH = 5
# A floor on the MAD, so that a batch of nearly equal values does not flag a case that differs by a
# hair: disagreement must then exceed the median by 3.5 / 0.6745 * 0.02 = 0.10 (ten percentage
# points); a volume (compared in log space: volumes vary by factors, not by millilitres) must
# differ from the median by a factor of exp(3.5 / 0.6745 * 0.1) = 1.7.
DISAGREEMENT_MAD_FLOOR = 0.02
LOG_VOLUME_MAD_FLOOR = 0.1


class Flag(str, Enum):
    """What a reviewer should look at first, most serious first (the page's sort order)."""

    FAILED = "failed"
    MISSING = "no output"
    UNREADABLE_IMAGES = "no images"
    EMPTY = "empty"
    WINDOW_BORDER = "window border"
    WINDOWS = "several windows"
    ET_REMOVED = "ET removed"
    DISAGREEMENT = "disagreement outlier"
    VOLUME = "volume outlier"
    STRAY_LABELS = "stray labels"

    @property
    def explanation(self) -> str:
        return _EXPLANATIONS[self]


_EXPLANATIONS = {
    Flag.FAILED: "the case could not be segmented or its label map cannot be read",
    Flag.MISSING: "the input has this case, the output folder has no label map for it",
    Flag.UNREADABLE_IMAGES: "the case's images could not be read: the picture shows the labels alone",
    Flag.EMPTY: "no tumour labelled at all",
    Flag.WINDOW_BORDER: "the tumour touches the edge of the region windows: it may continue beyond what was seen",
    Flag.WINDOWS: "the tumour needed more than one region window",
    Flag.ET_REMOVED: "the ET threshold relabelled every enhancing voxel as necrosis",
    Flag.DISAGREEMENT: "the fold models disagree far more than on the rest of the batch",
    Flag.VOLUME: "the whole-tumour volume is far from the rest of the batch",
    Flag.STRAY_LABELS: "the label map holds labels outside its convention (counted as background)",
}
FLAG_ORDER = {flag: index for index, flag in enumerate(Flag)}
# Flags from what the run measured while segmenting (the windows, the ET threshold, each fold's
# map): a label map alone does not hold them, so `brats report` afterwards knows them only from
# the run's QA record (`brats segment --report`).
MEASURED_FLAGS = (Flag.WINDOW_BORDER, Flag.WINDOWS, Flag.ET_REMOVED, Flag.DISAGREEMENT)


def label_volumes_ml(labels: np.ndarray, convention: LabelConvention, voxel_ml: float) -> dict[str, float]:
    """Volume in ml of each label (NCR, ED, ET) and of the regions WT and TC; labels outside the
    convention count as background."""
    masks = region_masks(labels, convention)
    voxels = {region.value: int(np.count_nonzero(mask)) for region, mask in masks.items()}
    voxels["NCR"] = int(np.count_nonzero(labels == NECROSIS))
    voxels["ED"] = int(np.count_nonzero(labels == EDEMA))
    return {name: voxels[name] * voxel_ml for name in VOLUMES}


def count_components(mask: np.ndarray) -> int:
    """Number of 26-connected components of a boolean mask."""
    if not mask.any():
        return 0
    _, count = ndimage.label(mask, structure=COMPONENT_STRUCTURE)
    return int(count)


def centre_of_mass(mask: np.ndarray) -> tuple[int, ...] | None:
    """The voxel nearest the mask's centre of mass (rounded per axis), or None for an empty mask."""
    points = np.nonzero(mask)
    if points[0].size == 0:
        return None
    return tuple(round(float(axis.mean())) for axis in points)


def largest_area_slice(mask: np.ndarray, axis: int = 2) -> int | None:
    """Index along `axis` of the slice with the most mask voxels (the first of equals); None if empty."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    areas = np.count_nonzero(mask, axis=other)
    if not areas.any():
        return None
    return int(np.argmax(areas))


def modified_z(values: np.ndarray, mad_floor: float) -> np.ndarray:
    """0.6745 (x - median) / max(MAD, mad_floor) for each value."""
    median = float(np.median(values))
    mad = max(float(np.median(np.abs(values - median))), mad_floor)
    return 0.6745 * (values - median) / mad


def outliers(values: Mapping[str, float | None], mad_floor: float, *, high_only: bool = False) -> set[str]:
    """Keys whose value is far from the batch's (OUTLIER_Z), by the modified z-score; None values
    take no part. Nothing from fewer than MIN_BATCH values."""
    known = {key: float(value) for key, value in values.items() if value is not None and np.isfinite(value)}
    if len(known) < MIN_BATCH:
        return set()
    keys = list(known)
    z = modified_z(np.array([known[k] for k in keys]), mad_floor)
    far = z > OUTLIER_Z if high_only else np.abs(z) > OUTLIER_Z
    return {key for key, is_far in zip(keys, far, strict=True) if is_far}


def volume_outliers(wt_ml: Mapping[str, float | None]) -> set[str]:
    """Cases whose whole-tumour volume is far from the batch's, compared in log space; empty cases
    take no part (they have a flag of their own)."""
    logs = {key: (None if value is None or value <= 0 else float(np.log(value))) for key, value in wt_ml.items()}
    return outliers(logs, LOG_VOLUME_MAD_FLOOR)


def disagreement_outliers(disagreement: Mapping[str, float | None]) -> set[str]:
    """Cases whose folds disagree far more than the batch's (low disagreement is never a flag)."""
    return outliers(disagreement, DISAGREEMENT_MAD_FLOOR, high_only=True)


def sort_key(case_id: str, flags: list[Flag]) -> tuple[int, int, str]:
    """Flagged cases first, the most serious flag first, then the most flags, then by ID."""
    worst = min((FLAG_ORDER[f] for f in flags), default=len(FLAG_ORDER))
    return (worst, -len(flags), case_id)
