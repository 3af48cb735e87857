"""Generator 4's tumour outlines from real label maps: read (`load_tumour_shapes`, refusing maps
that cannot give one, naming the file) and placed in a case (`place_shape`: rotated, mirrored,
scaled, stretched and elastically deformed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_cli.errors import ImageReadError, InputError
from brats_cli.io import BRATS_SHAPE, is_nifti, nifti_stem, read_label_map
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
    """The label maps named by `paths`: files as given, folders' NIfTI files sorted by name."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(child for child in path.iterdir() if child.is_file() and is_nifti(child))
            if not found:
                raise InputError(f"{path}: no NIfTI label maps in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    return files


def load_tumour_shape(path: Path) -> TumourShape:
    """One label map as a `TumourShape`; InputError naming the file when it cannot be one."""
    try:
        labels, geometry = read_label_map(path)
    except ImageReadError as error:
        raise InputError(str(error)) from error
    if labels.ndim != 3:
        raise InputError(f"{path}: a tumour shape is a 3D label map, this one has shape {labels.shape}")
    spacing = np.sqrt((geometry.affine[:3, :3] ** 2).sum(axis=0))
    if np.abs(spacing - 1.0).max() > SHAPE_SPACING_TOLERANCE:
        voxel = " x ".join(f"{v:g}" for v in spacing)
        raise InputError(f"{path}: voxels of {voxel} mm; tumour shapes are read at 1 mm (resample it first)")
    present = {int(v) for v in np.unique(labels)} - {0}
    stray = sorted(present - {NECROSIS, EDEMA, 3, 4})
    if stray:
        raise InputError(f"{path}: label(s) {', '.join(map(str, stray))} are not BraTS labels (1 NCR, 2 ED, 3 or 4 ET)")
    if {3, 4} <= present:
        raise InputError(f"{path}: holds both 3 and 4; a BraTS label map marks enhancing tumour with one of them")
    enhancing = (labels == 3) | (labels == 4)
    core = enhancing | (labels == NECROSIS)
    if not core.any():
        raise InputError(f"{path}: no tumour core (labels 1, 3 or 4) to take a shape from")
    whole = core | (labels == EDEMA)
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
