"""Label conventions and the mapping between label maps and the nested tumour regions.

BraTS 2017-2021 marks enhancing tumour with 4, BraTS 2023+ with 3; necrosis (1) and edema (2) are
shared. Regions are nested: ET inside TC inside WT.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from brats_cli.choices import EDEMA, NECROSIS, LabelConvention


class Region(str, Enum):
    WT = "WT"
    TC = "TC"
    ET = "ET"


REGIONS: tuple[Region, ...] = (Region.WT, Region.TC, Region.ET)


def region_masks(label_map: np.ndarray, convention: LabelConvention) -> dict[Region, np.ndarray]:
    """Boolean WT, TC and ET masks of a label map; labels outside the convention count as background."""
    et = label_map == convention.enhancing
    tc = (label_map == NECROSIS) | et
    wt = tc | (label_map == EDEMA)
    return {Region.WT: wt, Region.TC: tc, Region.ET: et}


def unexpected_labels(label_map: np.ndarray, convention: LabelConvention) -> list[int]:
    """Labels present in the map that the convention does not define (0 is always allowed)."""
    present = np.unique(label_map)
    allowed = {0, *convention.labels}
    return [int(v) for v in present if int(v) not in allowed]


def compose_labels(
    whole_tumour: np.ndarray,
    tumour_core: np.ndarray,
    enhancing_tumour: np.ndarray,
    convention: LabelConvention,
) -> np.ndarray:
    """Label map from the three binary region predictions, overwriting WT -> edema, TC -> necrosis,
    ET -> enhancing (the paper's order), so a voxel predicted ET is also TC and WT."""
    labels = np.zeros(whole_tumour.shape, dtype=np.uint8)
    labels[whole_tumour] = EDEMA
    labels[tumour_core] = NECROSIS
    labels[enhancing_tumour] = convention.enhancing
    return labels


def apply_et_threshold(labels: np.ndarray, convention: LabelConvention, min_voxels: int) -> np.ndarray:
    """Relabel every ET voxel as necrosis when fewer than `min_voxels` remain (paper section 2.6):
    small ET predictions are mostly false positives, and a tumour need not enhance."""
    enhancing = labels == convention.enhancing
    if 0 < int(enhancing.sum()) < min_voxels:
        labels = labels.copy()
        labels[enhancing] = NECROSIS
    return labels


def fill_core_holes(labels: np.ndarray, convention: LabelConvention) -> np.ndarray:
    """The label map with the holes of the tumour core (necrosis and enhancing tumour) filled as
    necrosis, in every 2D slice along each of the three axes: by the BraTS definition, what an
    enhancing or necrotic rim encloses is core, and a cystic cavity (dark on T1ce, bright on FLAIR)
    is what the region models most often read as edema instead. Slices, not the volume, because such
    a rim is rarely closed in 3D. The bundle's `fill_core_holes`, chosen out of fold by
    train/real/choose_thresholds.py."""
    from scipy import ndimage

    core = (labels == NECROSIS) | (labels == convention.enhancing)
    if not core.any():
        return labels
    box = ndimage.find_objects(core.astype(np.uint8))[0]
    inside = core[box]
    filled = inside.copy()
    for axis in range(3):
        slices, target = np.moveaxis(inside, axis, 0), np.moveaxis(filled, axis, 0)  # views
        for index in np.flatnonzero(slices.any(axis=(1, 2))):
            target[index] |= ndimage.binary_fill_holes(slices[index])
    holes = filled & ~inside
    if not holes.any():
        return labels
    labels = labels.copy()
    labels[box][holes] = NECROSIS
    return labels


def remove_small_components(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """The label map without the tumour components (26-connected voxels of any label) smaller than
    `min_voxels`, except the largest, so that a small tumour is never erased whole: the usual post-
    processing against scattered false positives (the bundle's `min_component`, chosen out of fold
    by train/real/choose_thresholds.py)."""
    if min_voxels <= 0 or not labels.any():
        return labels
    import SimpleITK as sitk

    tumour = sitk.GetImageFromArray((labels > 0).astype(np.uint8))
    # Relabelled by size, largest first: component 1 is the largest.
    components = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(tumour, True)))
    keep = np.bincount(components.ravel()) >= min_voxels
    keep[0], keep[1] = False, True
    if keep[1:].all():
        return labels
    return np.where(keep[components], labels, 0).astype(labels.dtype)
