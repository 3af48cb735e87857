"""The brain of a phantom: the MNI ICBM152 2009 templates, placed in the BraTS grid like an SRI24
brain and warped by one displacement field (a random similarity transform, a smooth elastic
deformation and the tumours' mass effect).

The templates ship inside the `nilearn` wheel (the `synth` extra); they are located without
importing nilearn, which would pull scikit-learn and pandas in for three files.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nibabel as nib
import numpy as np

from brats_cli.errors import DependencyError
from brats_cli.io import BRATS_SHAPE
from brats_cli.synth.fields import rotation, separable, spline_matrix

TEMPLATE_PACKAGE = "nilearn"
TEMPLATE_FOLDER = ("datasets", "data")
TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
EXTRA_HINT = "install the synth extra: pip install 'brats-resunet[synth]' (in a clone: pip install -e '.[cpu,synth]')"

# Where an SRI24 brain sits in the 240x240x155 grid, measured on the real cases in
# ../shared/data/real (skull-stripped extent): x centre ~119, y centre ~128, vertex at z ~140, and
# ~0.93 the size of the MNI152 2009 brain. The matching template points (voxel indices) are the
# centre of the template brain's x and y extent and its vertex.
GRID_ANCHOR = np.array([119.0, 128.0, 140.0])
TEMPLATE_ANCHOR = np.array([98.0, 118.0, 154.0])
TEMPLATE_SCALE = 0.93
# MNI mm = template voxel - MNI_ORIGIN.
MNI_ORIGIN = np.array([98.0, 134.0, 72.0])
# The displacement field is sampled every FIELD_SPACING voxels and interpolated linearly: the
# deformation is smooth on that scale and a coarse field keeps the warp cheap.
FIELD_SPACING = 3.0
# Ventricle proximity in the template, exp(-distance / PROXIMITY_MM): 1 in the lateral ventricles.
PROXIMITY_MM = 6.0


@dataclass(frozen=True)
class Anatomy:
    """The template brain, ready to warp: (X, Y, Z, 3) float32 GM, WM and brain-mask fractions in
    template voxels (RAS), and the template voxels where a tumour may be centred."""

    fractions: np.ndarray
    tumour_sites: np.ndarray
    brain_box: np.ndarray  # (2, 3) first and last template voxel of the brain


def template_paths(package: str | None = None) -> dict[str, Path]:
    """The T1, GM and WM template files inside the installed package, or DependencyError."""
    package = package or TEMPLATE_PACKAGE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(f"brats synth needs the MNI152 brain templates from {package}: {EXTRA_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*TEMPLATE_FOLDER)
    paths = {kind: folder / TEMPLATE_NAME.format(kind) for kind in ("t1", "gm", "wm")}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing:
        raise DependencyError(f"{folder}: {', '.join(missing)} not found in the installed {package}; {EXTRA_HINT}")
    return paths


def _read_template(path: Path) -> np.ndarray:
    # The templates are package data in a fixed, known format (uint8, RAS, 1 mm), not user input,
    # so they are read here rather than through io.read_image's validation.
    return np.asarray(nib.Nifti1Image.from_filename(path).dataobj, dtype=np.float32) / 255.0


@functools.cache
def load_anatomy() -> Anatomy:
    """Read the templates once per process and derive the brain mask and the tumour sites."""
    from scipy import ndimage

    paths = template_paths()
    grey = _read_template(paths["gm"])
    white = _read_template(paths["wm"])
    t1 = _read_template(paths["t1"])
    # Brain = tissue plus the CSF it encloses (ventricles, sulci): close the tissue map and fill
    # holes, then drop what the T1 shows as bright scalp fat caught by the closing.
    tissue = (grey + white) > 0.25
    brain = ndimage.binary_closing(tissue, structure=ndimage.generate_binary_structure(3, 1), iterations=3)
    brain = ndimage.binary_fill_holes(brain)
    brain &= (t1 < 0.75 * np.percentile(t1[brain], 99.5)) | tissue
    labelled, count = ndimage.label(brain)
    if count > 1:
        sizes = ndimage.sum_labels(brain, labelled, index=np.arange(1, count + 1))
        brain = labelled == 1 + int(np.argmax(sizes))
    soft_brain = ndimage.gaussian_filter(brain.astype(np.float32), 0.7)
    fractions = np.stack([grey, white, soft_brain], axis=-1)
    voxels = np.argwhere(brain)
    box = np.stack([voxels.min(axis=0), voxels.max(axis=0)]).astype(np.float64)
    return Anatomy(fractions=fractions, tumour_sites=_tumour_sites(brain, white), brain_box=box)


def _tumour_sites(brain: np.ndarray, white: np.ndarray) -> np.ndarray:
    """Tumour centres: deep cerebral white matter. The cerebellum and brainstem lie below MNI
    z = 0 behind y = -40 and near the midline below z = -5."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(brain, iterations=8)
    x, y, z = np.nonzero((white > 0.9) & inner)
    mx, my, mz = x - MNI_ORIGIN[0], y - MNI_ORIGIN[1], z - MNI_ORIGIN[2]
    cerebral = (mz > -28) & ~((my < -40) & (mz < 0)) & ~((np.abs(mx) < 16) & (mz < -4) & (my > -45) & (my < 0))
    return np.stack([x, y, z], axis=1)[cerebral].astype(np.float64)


def _vector_image(maps: np.ndarray) -> Any:
    import SimpleITK as sitk

    # sitk indexes (x, y, z) while numpy arrays from it are (z, y, x): transpose on the way in.
    # uint8 (the templates' own precision) halves the resampling time against float32.
    fractions = np.rint(maps * 255).astype(np.uint8)
    return sitk.GetImageFromArray(np.ascontiguousarray(fractions.transpose(2, 1, 0, 3)), isVector=True)


@functools.cache
def template_image() -> Any:
    """The GM, WM and brain fractions as the SimpleITK vector image `warp_anatomy` resamples."""
    return _vector_image(load_anatomy().fractions)


@functools.cache
def template_image_v2() -> Any:
    """`template_image` with the ventricle proximity as a fourth map (generator 2)."""
    return _vector_image(np.concatenate([load_anatomy().fractions, ventricle_proximity()[..., None]], axis=-1))


@functools.cache
def ventricle_proximity() -> np.ndarray:
    """exp(-d / PROXIMITY_MM) in template voxels, d the distance to the lateral ventricles (1 in them):
    the ventricles are the large CSF components at least 10 mm deep, off the midline and above
    the temporal lobes (the symmetric template has one on each side)."""
    from scipy import ndimage

    anatomy = load_anatomy()
    grey, white, brain_soft = (anatomy.fractions[..., channel] for channel in range(3))
    brain = brain_soft > 0.5
    csf = (brain_soft - grey - white > 0.6) & (ndimage.distance_transform_edt(brain) > 10)
    labelled, count = ndimage.label(csf)
    components = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(csf, labelled, components)
    kept = []
    for component, size in zip(components, sizes, strict=True):
        if size >= 2000:
            x, _, z = np.array(ndimage.center_of_mass(csf, labelled, component)) - MNI_ORIGIN
            if 5 < abs(x) < 25 and 0 < z < 30:  # MNI mm
                kept.append(component)
    ventricles = np.isin(labelled, kept)
    proximity = np.zeros(brain.shape, np.float32)
    if not kept:
        return proximity
    # Beyond 8 lengths (48 mm) the map rounds to 0 in uint8: measure distances in that box only.
    voxels = np.argwhere(ventricles)
    margin = int(8 * PROXIMITY_MM)
    low, high = np.maximum(voxels.min(axis=0) - margin, 0), np.minimum(voxels.max(axis=0) + margin + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    distance = ndimage.distance_transform_edt(~ventricles[box])
    proximity[box] = np.where(brain[box], np.exp(-distance / PROXIMITY_MM), 0.0)
    return proximity


# ---------------------------------------------------------------------------------------------
# Geometry: output voxel -> template voxel


@dataclass(frozen=True)
class Placement:
    """Affine map from output (BraTS LPS) voxels to template (RAS) voxels: q = matrix @ x + offset."""

    matrix: np.ndarray
    offset: np.ndarray

    def to_template(self, points: np.ndarray) -> np.ndarray:
        return points @ self.matrix.T + self.offset

    def to_output(self, points: np.ndarray) -> np.ndarray:
        return (points - self.offset) @ np.linalg.inv(self.matrix).T


def draw_placement(rng: np.random.Generator) -> Placement:
    """The template placed like an SRI24 brain, with a random similarity transform on top."""
    flip = np.diag([-1.0, -1.0, 1.0])  # LPS output axes -> RAS template axes
    angles = np.deg2rad(rng.uniform(-1, 1, 3) * np.array([6.0, 4.0, 8.0]))
    scale = TEMPLATE_SCALE * rng.uniform(0.94, 1.06)
    shift = rng.uniform(-1, 1, 3) * np.array([4.0, 5.0, 3.0])
    matrix = flip @ rotation(angles) / scale
    anchor = GRID_ANCHOR + shift
    return Placement(matrix, TEMPLATE_ANCHOR - matrix @ anchor)


class MassEffect(Protocol):
    """What the warp reads of a lesion: where it is, how large its core is, how hard it pushes."""

    @property
    def centre(self) -> np.ndarray: ...
    @property
    def core_radius(self) -> float: ...
    @property
    def push(self) -> float: ...


def displacement_field(
    rng: np.random.Generator, placement: Placement, lesions: Sequence[MassEffect]
) -> tuple[np.ndarray, float]:
    """(nx, ny, nz, 3) displacement (template position minus output position) on a grid every
    FIELD_SPACING output voxels: similarity, elastic deformation and mass effect in one field."""

    counts = [int(np.ceil((size - 1) / FIELD_SPACING)) + 2 for size in BRATS_SHAPE]
    axes = [np.arange(n) * FIELD_SPACING for n in counts]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    pushed = points.copy()
    for lesion in lesions:
        if lesion.push <= 0:
            continue
        # Radial compression around the tumour: output radius r samples template radius
        # r * (1 - k exp(-(r/rho)^2)), monotonic in r for k < 1, so tissue moves outwards.
        offset = pushed - lesion.centre
        radius = np.linalg.norm(offset, axis=-1, keepdims=True)
        rho = 1.3 * lesion.core_radius + 4.0
        pushed = lesion.centre + offset * (1.0 - lesion.push * np.exp(-((radius / rho) ** 2)))
    template = placement.to_template(pushed)
    # Elastic: random control displacements (std ~2.5 mm) ~40 mm apart, cubic-spline smooth.
    matrices = [spline_matrix(n, 40.0 / FIELD_SPACING) for n in counts]
    for axis in range(3):
        template[..., axis] += separable(rng.normal(0.0, 2.5, [m.shape[1] for m in matrices]), matrices)
    return template - points, FIELD_SPACING


def output_box(anatomy: Anatomy, placement: Placement, margin: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """First voxel and size of the part of the output grid the warped brain can reach: the
    placed template brain box plus a margin for the elastic deformation."""
    corners = np.array([[anatomy.brain_box[c][a] for a, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    placed = placement.to_output(corners)
    low = np.clip(np.floor(placed.min(axis=0) - margin), 0, None).astype(int)
    high = np.minimum(np.ceil(placed.max(axis=0) + margin).astype(int) + 1, BRATS_SHAPE)
    return low, high - low


def warp_anatomy(
    field: np.ndarray, spacing: float, low: np.ndarray, size: np.ndarray, template: Any = None
) -> np.ndarray:
    """Template GM, WM and brain fractions resampled into the output grid: (3, 240, 240, 155),
    zero outside the box (`low`, `size`) that the brain can reach. `template`: another uint8
    vector image in template voxels to warp instead (generator 2 adds a fourth map)."""
    import SimpleITK as sitk

    field_image = sitk.GetImageFromArray(np.ascontiguousarray(field.transpose(2, 1, 0, 3)), isVector=True)
    field_image.SetSpacing((spacing,) * 3)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in size])
    resampler.SetOutputOrigin([float(v) for v in low])
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetTransform(transform)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkVectorFloat32)
    # Keep the result alive: the view below borrows its buffer.
    warped_image = resampler.Execute(template_image() if template is None else template)
    warped = sitk.GetArrayViewFromImage(warped_image).transpose(3, 2, 1, 0)
    full = np.zeros((warped.shape[0], *BRATS_SHAPE), np.float32)
    full[:, low[0] : low[0] + size[0], low[1] : low[1] + size[1], low[2] : low[2] + size[2]] = warped / 255.0
    return full


@dataclass(frozen=True)
class WarpedBrain:
    """One case's brain in the output grid (full 240x240x155 arrays): grey- and white-matter
    fractions, the soft brain fraction and its mask (> 0.5), the box (`low`, `size`) the brain can
    reach, and the ventricle proximity when the template carried it (generator 2; else None)."""

    grey: np.ndarray
    white: np.ndarray
    brain_soft: np.ndarray
    mask: np.ndarray
    low: np.ndarray
    size: np.ndarray
    proximity: np.ndarray | None = None

    @property
    def box(self) -> tuple[slice, ...]:
        return tuple(slice(int(a), int(a + n)) for a, n in zip(self.low, self.size, strict=True))

    @property
    def box_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.size)

    @functools.cached_property
    def inside(self) -> tuple[np.ndarray, ...]:
        """The brain's voxels in the full grid (`np.nonzero` of the mask)."""
        return np.nonzero(self.mask)

    @functools.cached_property
    def inside_box(self) -> tuple[np.ndarray, ...]:
        """The brain's voxels in the box."""
        return tuple(axis - offset for axis, offset in zip(self.inside, self.low, strict=True))


def warp_brain(
    rng: np.random.Generator,
    anatomy: Anatomy,
    placement: Placement,
    lesions: Sequence[MassEffect],
    template: Any = None,
) -> WarpedBrain:
    """The template warped for one case: `placement`, an elastic deformation drawn from `rng` and
    the lesions' mass effect; `template` as `warp_anatomy` takes it."""
    field, spacing = displacement_field(rng, placement, lesions)
    low, size = output_box(anatomy, placement)
    warped = warp_anatomy(field, spacing, low, size, template)
    proximity = warped[3] if len(warped) > 3 else None
    return WarpedBrain(warped[0], warped[1], warped[2], warped[2] > 0.5, low, size, proximity)
