"""Generator 4's tumour outlines from real label maps: read (`load_tumour_shapes`, refusing maps
that cannot give one, naming the file) and placed in a case (`place_shape`: rotated, mirrored,
scaled, stretched and elastically deformed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_cli.errors import ImageReadError, InputError
from brats_cli.io import (
    BRATS_SHAPE,
    Geometry,
    is_nifti,
    nifti_stem,
    not_a_file,
    read_geometry,
    read_label_map,
)
from brats_cli.labels import EDEMA, NECROSIS
from brats_cli.metrics import bounding_box
from brats_cli.synth.fields import rotation, smooth_noise

# How far a real outline is transformed per case: isotropic scale (volume 0.17-1.95x the source's),
# a further stretch per axis, and an elastic displacement of about 2 mm over 12 mm.
SHAPE_SCALE = (0.55, 1.25)
SHAPE_STRETCH = 0.15
SHAPE_WARP_MM = 2.0
SHAPE_WARP_SCALE = 12.0
# A label map is read at its voxel grid: anything but 1 mm voxels would change the outline's size.
SHAPE_SPACING_TOLERANCE = 0.05
# An outline's core holds a ball of at least this radius (its deepest voxel this far from the
# core's edge). At the smallest scale (0.55 x 0.85) the placed grid samples the source about 2.1
# voxels apart, and a thinner core can fall between its points: of 400 placements, a one-voxel core
# vanished in 324, a 7-voxel ball (1.4 deep) in 24, a 1.7-deep ball in 1, a 2-deep one never.
MIN_CORE_DEPTH_MM = 3.0
# The phantom brain holds about 1,500 ml and spans 135 x 168 x 141 mm (+-6 % per case). A whole
# tumour over half its volume, or wider than its narrowest span, does not fit in it: BraTS whole
# tumours reach a few hundred ml and about 110 mm across; a larger "tumour" is a brain mask, a
# whole-head label or another grid's map.
MAX_TUMOUR_ML = 750.0
MAX_TUMOUR_MM = 125


@dataclass(frozen=True)
class TumourShape:
    """A real tumour's regions (nested WT, TC, ET masks) cut to the box around its whole tumour."""

    name: str
    whole: np.ndarray
    core: np.ndarray
    enhancing: np.ndarray


@dataclass(frozen=True)
class PlacedShape:
    """A `TumourShape` transformed into the output grid: its masks start at voxel `low`."""

    name: str
    low: np.ndarray
    whole: np.ndarray
    core: np.ndarray
    enhancing: np.ndarray


def shape_files(paths: Sequence[Path]) -> list[Path]:
    """The label maps named by `paths`: files as given, folders' NIfTI files sorted by name.
    InputError for a path that is not there, a folder without NIfTI files, and anything that is
    not a regular file (a FIFO, socket or device is never opened: reading it could block)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(child for child in path.iterdir() if is_nifti(child))
            if not found:
                raise InputError(f"{path}: no NIfTI label maps in this folder")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    for file in files:
        problem = not_a_file(file, "a label map")
        if problem:
            raise InputError(problem)
    return files


def _grid_problem(geometry: Geometry) -> str | None:
    """Why a label map's grid cannot give a tumour shape, from its header: not BraTS space, or
    voxels other than 1 mm (either would change the outline's size)."""
    if geometry.canonical_shape != BRATS_SHAPE:
        return (
            f"shape {'x'.join(map(str, geometry.shape))} is not BraTS space {'x'.join(map(str, BRATS_SHAPE))}; "
            "a tumour shape is the label map of a BraTS case (register and resample it to SRI24 first)"
        )
    spacing = np.sqrt((geometry.affine[:3, :3] ** 2).sum(axis=0))
    if np.abs(spacing - 1.0).max() > SHAPE_SPACING_TOLERANCE:
        voxel = " x ".join(f"{v:g}" for v in spacing)
        return f"voxels of {voxel} mm; tumour shapes are read at 1 mm (resample it first)"
    return None


def _read_labels(path: Path) -> np.ndarray:
    """The label map's voxels, read only once its header shows a usable grid (a map of another
    size is refused before gigabytes of it are read); InputError naming the file otherwise."""
    try:
        problem = _grid_problem(read_geometry(path))
        if problem:
            raise InputError(f"{path}: {problem}")
        labels, _ = read_label_map(path)
    except ImageReadError as error:
        raise InputError(str(error)) from error
    return labels


def _labels_problem(labels: np.ndarray) -> str | None:
    """Why a label map's values are not a BraTS segmentation with a tumour core, or None."""
    present = {int(v) for v in np.unique(labels)} - {0}
    stray = sorted(present - {NECROSIS, EDEMA, 3, 4})
    if stray:
        return f"label(s) {', '.join(map(str, stray))} are not BraTS labels (1 NCR, 2 ED, 3 or 4 ET)"
    if {3, 4} <= present:
        return "holds both 3 and 4; a BraTS label map marks enhancing tumour with one of them"
    if not np.isin(labels, (NECROSIS, 3, 4)).any():
        return "no tumour core (labels 1, 3 or 4) to take a shape from"
    return None


def outline_problem(whole: np.ndarray, core: np.ndarray) -> str | None:
    """Why a tumour (whole tumour and core masks, 1 mm voxels) cannot be placed in a phantom's
    brain, or None. Its core must hold a ball MIN_CORE_DEPTH_MM deep, or at the smallest scale
    the placed core can vanish between voxels (one voxel, voxels far apart: a tumour-free case);
    the whole tumour must fit in the brain (MAX_TUMOUR_ML, MAX_TUMOUR_MM), or it is cut off at the
    brain's edge and fills the brain."""
    from scipy import ndimage

    # Padded: a core touching the edge of its box is not deeper for it.
    depth = float(ndimage.distance_transform_edt(np.pad(core, 1)).max())
    if depth < MIN_CORE_DEPTH_MM:
        return (
            f"its tumour core is too small or scattered to place (at most {2 * depth:.0f} mm thick; "
            f"a tumour shape needs a core at least {2 * MIN_CORE_DEPTH_MM:.0f} mm thick)"
        )
    voxels = np.argwhere(whole)
    span = int((voxels.max(axis=0) - voxels.min(axis=0)).max()) + 1
    volume = int(whole.sum()) / 1000.0
    if volume > MAX_TUMOUR_ML or span > MAX_TUMOUR_MM:
        return (
            f"its whole tumour ({volume:.0f} ml, {span} mm across) does not fit in the brain "
            f"(a tumour shape is at most {MAX_TUMOUR_ML:.0f} ml and {MAX_TUMOUR_MM} mm across)"
        )
    return None


def load_tumour_shape(path: Path) -> TumourShape:
    """One label map as a `TumourShape`; InputError naming the file when it cannot be one."""
    labels = _read_labels(path)
    enhancing = (labels == 3) | (labels == 4)
    core = enhancing | (labels == NECROSIS)
    whole = core | (labels == EDEMA)
    problem = _labels_problem(labels) or outline_problem(whole, core)
    if problem:
        raise InputError(f"{path}: {problem}")
    box = bounding_box(whole)
    assert box is not None  # the core is not empty
    return TumourShape(nifti_stem(path), whole[box].copy(), core[box].copy(), enhancing[box].copy())


def load_tumour_shapes(paths: Sequence[Path]) -> tuple[TumourShape, ...]:
    """The shapes of `shape_files(paths)`, in that order (a case's draw depends on it)."""
    files = shape_files(paths)
    if not files:
        raise InputError("no tumour shape label maps given")
    return tuple(load_tumour_shape(path) for path in files)


def place_shape(rng: np.random.Generator, shape: TumourShape, centre: np.ndarray) -> PlacedShape:
    """`shape` rotated (any orientation, mirrored half the time), scaled, stretched and elastically
    deformed, with its core's centre of mass at `centre`, in output voxels (clipped to the grid).
    The three nested masks are interpolated linearly and cut at 0.5, so they stay nested."""
    from scipy import ndimage

    turn = rotation(rng.uniform(-np.pi, np.pi, 3))
    if rng.uniform() < 0.5:
        turn = turn @ np.diag([-1.0, 1.0, 1.0])
    scales = rng.uniform(*SHAPE_SCALE) * rng.uniform(1 - SHAPE_STRETCH, 1 + SHAPE_STRETCH, 3)
    # Output offset -> source offset: undo the scale, then the rotation.
    to_source = np.diag(1.0 / scales) @ turn.T
    source_centre = np.argwhere(shape.core).mean(axis=0)
    corners = np.array(list(np.ndindex(2, 2, 2))) * (np.array(shape.whole.shape) - 1) - source_centre
    reach = np.abs(corners @ np.linalg.inv(to_source).T).max(axis=0) + SHAPE_WARP_MM + 2
    low = np.maximum(np.floor(centre - reach).astype(int), 0)
    high = np.minimum(np.ceil(centre + reach).astype(int) + 1, BRATS_SHAPE)
    size = tuple(int(n) for n in high - low)
    grid = np.stack(
        np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(low, high, strict=True)], indexing="ij"),
        axis=-1,
    )
    offset = grid - centre.astype(np.float32)
    for axis in range(3):
        offset[..., axis] += SHAPE_WARP_MM * smooth_noise(rng, size, SHAPE_WARP_SCALE)
    coordinates = np.moveaxis(offset @ to_source.T.astype(np.float32) + source_centre, -1, 0)
    masks = [
        ndimage.map_coordinates(mask.astype(np.float32), coordinates, order=1, cval=0.0) >= 0.5
        for mask in (shape.whole, shape.core, shape.enhancing)
    ]
    return PlacedShape(shape.name, low, *masks)


def equivalent_radius(mask: np.ndarray) -> float:
    """Radius (mm) of the sphere of the same volume."""
    return float(np.cbrt(3.0 * max(int(mask.sum()), 1) / (4.0 * np.pi)))
