"""The preprocessed-case cache: each labelled case decoded, reoriented, cropped and normalised once.

An entry is a folder `<case ID>-<key>/` holding `image.npy` ((4, 192, 192, 160) float16, the exact
`preprocess` output inference computes, rounded to half precision) and `labels.npy`
((192, 192, 160) uint8, the label map in the same canonical, cropped grid), read by memory map,
and `meta.json`, written last, which marks the entry complete.

The key hashes, for each of the case's five files, its resolved path, size and modification time
(nanoseconds), plus the preprocessing settings. Why not the content: hashing 1251 cases' ~45 GB of
NIfTI at every start costs minutes, a stat costs microseconds, and any copy, download or rewrite of
a file changes its mtime. The price: a file replaced by one of identical size whose mtime was
deliberately preserved (`cp -p`, `rsync -t` of a different file) is not noticed; delete the cache
folder after such surgery.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_cli.errors import BratsError, CaseError, InputError, UnusableCases, first_line
from brats_cli.files import atomic_path, write_text_atomically
from brats_cli.io import SEPARATOR, Case, check_output_folder, discover_cases, load_case, read_label_map
from brats_cli.labels import LabelConvention, Region, region_masks, unexpected_labels
from brats_cli.localise import bounding_box
from brats_cli.preprocess import CROP_START, MODEL_GRID, crop_to_model_grid, preprocess

CACHE_FORMAT = 1
# Everything that changes what is stored; a change here invalidates every entry.
PREPROCESSING = {
    "format": CACHE_FORMAT,
    "grid": list(MODEL_GRID),
    "crop_start": list(CROP_START),
    "normalise": "zero-mean-unit-variance-over-nonzero-per-channel",
    "image_dtype": "float16",
    "orientation": "LPS",
}
IMAGE_FILE = "image.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"


@dataclass(frozen=True)
class CachedCase:
    case_id: str
    folder: Path
    convention: LabelConvention
    # Half-open [start, stop) per axis of the ground-truth whole tumour in the model grid, or None.
    tumour_box: tuple[tuple[int, int], ...] | None

    def image(self) -> np.ndarray:
        return np.load(self.folder / IMAGE_FILE, mmap_mode="r")

    def labels(self) -> np.ndarray:
        return np.load(self.folder / LABELS_FILE, mmap_mode="r")


def cache_key(case: Case) -> str:
    assert case.segmentation is not None
    sources = []
    for path in [*(case.files[m] for m in sorted(case.files, key=lambda m: m.value)), case.segmentation]:
        stat = path.stat()
        sources.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    text = json.dumps({"sources": sources, "preprocessing": PREPROCESSING}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_cases(data: Path) -> list[Case]:
    """The labelled cases of a BraTS training folder; every unusable one is reported at once."""
    discovery = discover_cases(data)
    problems = []
    for case in discovery.cases:
        if case.problem:
            problems.append(f"{case.case_id}: {case.problem}")
        elif case.segmentation is None:
            separator = SEPARATOR[case.naming]
            problems.append(
                f"{case.case_id}: no segmentation ({case.case_id}{separator}seg.nii.gz); training needs labels"
            )
    if problems:
        raise UnusableCases(data, problems)
    return discovery.cases


def _atomic_save(path: Path, array: np.ndarray) -> None:
    # The temporary keeps the .npy suffix, so np.save writes exactly that name.
    with atomic_path(path) as temporary:
        np.save(temporary, array)


def preprocess_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(image float16 (4, 192, 192, 160), labels uint8 (192, 192, 160)) of one labelled case, or
    a CaseError naming the problem (mismatched label geometry, labels outside the convention)."""
    assert case.segmentation is not None
    image, geometry = load_case(case)
    seg_name = case.segmentation.name
    try:
        labels, label_geometry = read_label_map(case.segmentation)
    except BratsError as error:
        raise CaseError(case.case_id, str(error)) from error
    if label_geometry.shape != geometry.shape:
        raise CaseError(
            case.case_id, f"shape mismatch: {seg_name} is {label_geometry.shape}, the images are {geometry.shape}"
        )
    if not label_geometry.matches(geometry):
        raise CaseError(case.case_id, f"affine mismatch between {seg_name} and the images")
    labels = geometry.to_canonical(labels)
    convention = LabelConvention.of_naming(case.naming)
    unexpected = unexpected_labels(labels, convention)
    if unexpected:
        allowed = ", ".join(map(str, (0, *convention.labels)))
        raise CaseError(
            case.case_id,
            f"{seg_name} has labels {unexpected} outside the BraTS {convention.value} convention ({allowed})",
        )
    return preprocess(image).astype(np.float16), crop_to_model_grid(labels).astype(np.uint8)


def _read_entry(folder: Path, case: Case) -> CachedCase | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not all((folder / name).is_file() for name in (IMAGE_FILE, LABELS_FILE)):
        return None
    try:
        box = meta.get("tumour_box")
        return CachedCase(
            case.case_id,
            folder,
            LabelConvention(meta["convention"]),
            tuple((int(a), int(b)) for a, b in box) if box else None,
        )
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # a damaged entry is simply redone


def prepare_cache(
    cases: Sequence[Case],
    cache: Path,
    on_case: Callable[[Case, bool], None] | None = None,
) -> list[CachedCase]:
    """A cache entry for every case, preprocessing only new or changed ones.

    `on_case(case, reused)` is told of each case as it is done. Every failing case is checked
    before one InputError lists them all; entries of the good ones stay for the next run."""
    cache = check_output_folder(Path(cache), "cache folder")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{cache}: cannot create cache folder ({first_line(error)})") from error
    prepared: list[CachedCase] = []
    problems: list[str] = []
    for case in cases:
        try:
            entry = _prepare_one(case, cache, on_case)
        except CaseError as error:
            problems.append(str(error))
            continue
        except OSError as error:  # writing the entry: a full disk is no case's fault; stop here
            where = error.filename or cache
            raise InputError(f"{where}: cannot write the cache ({first_line(error)})") from error
        prepared.append(entry)
    if problems:
        raise UnusableCases(None, problems)
    return prepared


def _prepare_one(case: Case, cache: Path, on_case: Callable[[Case, bool], None] | None) -> CachedCase:
    try:
        key = cache_key(case)
    except OSError as error:
        raise CaseError(case.case_id, f"cannot read file information ({first_line(error)})") from error
    folder = cache / f"{case.case_id}-{key}"
    entry = _read_entry(folder, case)
    if entry is not None:
        if on_case:
            on_case(case, True)
        return entry
    image, labels = preprocess_case(case)
    # Older entries of this case (its files changed) are stale: remove them.
    stale_name = re.compile(rf"^{re.escape(case.case_id)}-[0-9a-f]{{16}}$")
    for stale in cache.glob(f"{case.case_id}-*"):
        if stale.is_dir() and stale.name != folder.name and stale_name.match(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    folder.mkdir(exist_ok=True)
    _atomic_save(folder / IMAGE_FILE, image)
    _atomic_save(folder / LABELS_FILE, labels)
    convention = LabelConvention.of_naming(case.naming)
    box = bounding_box(region_masks(labels, convention)[Region.WT])
    meta = {
        "case_id": case.case_id,
        "key": key,
        "convention": convention.value,
        "tumour_box": [list(axis) for axis in box] if box else None,
        "preprocessing": PREPROCESSING,
        "sources": [str(p) for p in [*case.files.values(), case.segmentation]],
    }
    write_text_atomically(folder / META_FILE, json.dumps(meta, indent=1) + "\n")
    if on_case:
        on_case(case, False)
    return CachedCase(case.case_id, folder, convention, box)
