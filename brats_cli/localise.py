"""Paper section 2.3, localisation: from the base model's whole-tumour mask, the 128^3 windows the
region models see.

Choice: the crop centres on the bounding box of one 26-connected component (the paper does not say
which). Speckle false positives of the base model far from the tumour would otherwise stretch the
box; satellite lesions near the main one still fall inside the window and are segmented by the
region models. The component is the one with the most voxels the base ensemble is confident about
(mean probability above CONFIDENT), ties broken by size: the largest component is not always the
tumour: the base model's false positives can be larger than the tumour and much less sure of
themselves (measured on the default bundle's held-out phantoms: bench/ARCHIVE.md, "Localisation").
Where the model is confident everywhere the two rules agree.

The paper assumes every tumour fits in 128^3. One that does not is covered by overlapping windows
(averaged where they overlap) so that no tumour voxel is ever cut off.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
from scipy import ndimage

Window = tuple[slice, slice, slice]


# Mean base-model probability above which a voxel counts as confident tumour.
CONFIDENT = 0.98


def tumour_box(
    mask: np.ndarray, probability: np.ndarray | None = None, confident: float = CONFIDENT
) -> tuple[tuple[int, int], ...] | None:
    """The bounding box (per axis [start, stop)) of the 26-connected component of `mask` to localise
    on: the one with the most voxels whose `probability` exceeds `confident`, ties (no confident
    voxel at all, or no `probability`) broken by size. None if the mask is empty.

    Components are labelled inside the box of the whole mask, not the whole model grid: no
    component reaches outside it, and the base mask usually fills a small part of the grid, so
    labelling the whole grid would cost most of the localisation's host time (bench/ARCHIVE.md,
    "Localisation")."""
    outer = bounding_box(mask)
    if outer is None:
        return None
    crop = tuple(slice(start, stop) for start, stop in outer)
    labelled, count = ndimage.label(mask[crop], structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    sure = np.zeros_like(sizes)
    if probability is not None:
        sure = np.bincount(labelled.ravel(), weights=(probability[crop] > confident).ravel(), minlength=count + 1)
    best = max(range(1, count + 1), key=lambda k: (sure[k], sizes[k]))
    found = ndimage.find_objects(labelled, max_label=best)[best - 1]
    return tuple((start + s.start, start + s.stop) for s, (start, _) in zip(found, outer, strict=True))


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Per axis the half-open [start, stop) extent of the True voxels, or None if there are none."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append((int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def _axis_starts(start: int, stop: int, size: int, window: int) -> list[int]:
    """Window starts along one axis covering [start, stop), each window inside [0, size)."""
    if window > size:
        raise ValueError(f"window {window} larger than the volume axis {size}")
    extent = stop - start
    if extent <= window:
        centre = (start + stop) / 2
        return [int(min(max(round(centre - window / 2), 0), size - window))]
    count = math.ceil(extent / window)
    first = start
    last = min(stop - window, size - window)
    # Evenly spread so neighbouring windows overlap by the same amount.
    return sorted({round(first + i * (last - first) / (count - 1)) for i in range(count)})


def localise_windows(box: tuple[tuple[int, int], ...], shape: tuple[int, ...], window: tuple[int, ...]) -> list[Window]:
    """The window-sized crops, clamped inside `shape`, that together cover the bounding box: one
    centred on the box when it fits, overlapping ones along any axis where it does not."""
    per_axis = [_axis_starts(lo, hi, size, w) for (lo, hi), size, w in zip(box, shape, window, strict=True)]
    return [
        (slice(x, x + wx), slice(y, y + wy), slice(z, z + wz))
        for (x, y, z), (wx, wy, wz) in ((starts, window) for starts in product(*per_axis))
    ]
