"""Labelled phantom cases in BraTS space, built on a real brain (the MNI ICBM152 2009 templates).

Each case warps the template's grey- and white-matter probability maps into the 240x240x155 LPS grid
with a random similarity transform, a smooth elastic deformation and the mass effect of its tumour,
then renders four contrasts from tissue fractions (CSF, GM, WM, necrosis, edema, enhancing tumour)
with partial volume, a smooth bias field, Rician noise and a per-case intensity scale.

Case `index` of seed `seed` depends only on (seed, index): every random draw comes from
`numpy.random.default_rng([seed, index])`, in a fixed order.

Generator 2 (`make_phantom(..., generator=2)`, `brats synth --generator 2`) randomises contrast,
resolution and artefacts far beyond one scanner's range, after SynthSeg, and adds unlabelled
look-alikes (vessels, choroid plexus, periventricular hyperintensity): see its section below. Its
cases come from streams of their own, `SeedSequence([seed, index, 2])`; generator 1, the default,
is unchanged bit for bit.

Generator 3 (`--generator 3`) is generator 1 with its non-enhancing lesions drawn as diffuse
low-grade gliomas instead: larger, with little edema, a core brighter than edema on T2 and often
darker than it on FLAIR (the T2-FLAIR mismatch), and an infiltrative margin over which core and
edema intensities blend. Its cases come from `default_rng([seed, index, 3])`.

Generator 4 (`--generator 4 --shapes LABEL_MAPS`) is generator 3 with the main tumour's outline
taken from real BraTS-space segmentations instead of a noisy ellipsoid: each case picks one of the
given label maps, rotates, flips, scales and elastically deforms its regions and centres the core
on a tumour site. Its cases come from `default_rng([seed, index, 4])` and also depend on the
label maps, in the order given.

The templates ship inside the `nilearn` wheel (the `synth` extra); they are located without
importing nilearn, which would pull scikit-learn and pandas in for three files.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_cli.errors import DependencyError, ImageReadError, InputError, OutputError, first_line
from brats_cli.files import atomic_folder, atomic_path, remove_stale_temporaries
from brats_cli.io import (
    BRATS_SHAPE,
    CHANNEL_ORDER,
    SEGMENTATION_SUFFIX,
    SEPARATOR,
    SUFFIX,
    Modality,
    Naming,
    check_output_folder,
    is_nifti,
    nifti_stem,
    read_label_map,
)
from brats_cli.labels import EDEMA, NECROSIS, LabelConvention
from brats_cli.metrics import bounding_box

TEMPLATE_PACKAGE = "nilearn"
TEMPLATE_FOLDER = ("datasets", "data")
TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
EXTRA_HINT = "install the synth extra: pip install 'brats-resunet[synth]' (in a clone: pip install -e '.[cpu,synth]')"

# The released BraTS affine: LPS, origin at voxel (0, 239, 0).
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])

# Where an SRI24 brain sits in the 240x240x155 grid, measured on the real cases in
# ../shared/data/real (skull-stripped extent): x centre ~119, y centre ~128, vertex at z ~140, and
# ~0.93 the size of the MNI152 2009 brain. The matching template points (voxel indices) are the
# centre of the template brain's x and y extent and its vertex.
GRID_ANCHOR = np.array([119.0, 128.0, 140.0])
TEMPLATE_ANCHOR = np.array([98.0, 118.0, 154.0])
TEMPLATE_SCALE = 0.93
# The displacement field is sampled every FIELD_SPACING voxels and interpolated linearly: the
# deformation is smooth on that scale and a coarse field keeps the warp cheap.
FIELD_SPACING = 3.0


class Tissue(IntEnum):
    """Tissue classes of a phantom; `Phantom.tissue` holds the dominant class of each voxel."""

    BACKGROUND = 0
    CSF = 1
    GM = 2
    WM = 3
    NECROSIS = 4
    EDEMA = 5
    ENHANCING = 6
    NON_ENHANCING = 7  # solid tumour core that does not enhance: labelled NCR, as in BraTS
    # Generator 2 only, never labelled: what real scans show outside the tumour.
    VESSEL = 8  # veins and arteries in the sulci and the deep white matter: bright on T1ce
    CHOROID = 9  # choroid plexus in the lateral ventricles: bright on T1ce
    PERIVENTRICULAR = 10  # periventricular white-matter hyperintensity: bright on FLAIR and T2


# Mean intensity of each class relative to white matter, per modality (FLAIR, T1, T1ce, T2): the
# contrasts of clinical 1.5-3 T glioma MRI (T1: WM > GM > CSF; T2: CSF brightest; FLAIR: CSF
# suppressed, edema brightest; T1ce: enhancing rim brightest, necrosis dark).
CONTRAST: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.CSF: (0.30, 0.32, 0.34, 2.60),
    Tissue.GM: (1.12, 0.80, 0.82, 1.38),
    Tissue.WM: (1.00, 1.00, 1.00, 1.00),
    Tissue.NECROSIS: (0.95, 0.42, 0.44, 2.20),
    Tissue.EDEMA: (1.85, 0.72, 0.74, 1.90),
    Tissue.ENHANCING: (1.45, 0.80, 1.50, 1.55),
    Tissue.NON_ENHANCING: (1.55, 0.62, 0.64, 1.75),
}
TUMOUR = (Tissue.NECROSIS, Tissue.ENHANCING, Tissue.EDEMA, Tissue.NON_ENHANCING)


@dataclass(frozen=True)
class Phantom:
    """One synthetic case in canonical LPS orientation.

    image: (4, 240, 240, 155) int16, channels FLAIR, T1, T1ce, T2, background exactly 0.
    labels: (240, 240, 155) uint8 in the convention of `naming` (ET = 4 for 2021, 3 for 2023).
    tissue: (240, 240, 155) uint8 `Tissue` value of the class with the largest fraction per voxel.
    generator: the generator version that made it (1 to 4).
    description: what `write_phantom` records in each file's NIfTI `descrip` ("" for generator 1,
        whose files stay byte for byte as they always were).
    acquisition: generator 2: how each channel was rendered (FLAIR, T1, T1ce, T2); () for generator 1.
    """

    case_id: str
    naming: Naming
    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    generator: int = 1
    description: str = ""
    acquisition: tuple[Acquisition, ...] = ()


@dataclass(frozen=True)
class Anatomy:
    """The template brain, ready to warp: (X, Y, Z, 3) float32 GM, WM and brain-mask fractions in
    template voxels (RAS), and the template voxels where a tumour may be centred."""

    fractions: np.ndarray
    tumour_sites: np.ndarray
    brain_box: np.ndarray  # (2, 3) first and last template voxel of the brain


def case_id(seed: int, index: int, naming: Naming) -> str:
    if naming is Naming.BRATS2021:
        return f"Synth2021_s{seed}_{index:05d}"
    return f"Synth-GLI-s{seed}-{index:05d}"


# ---------------------------------------------------------------------------------------------
# The template brain


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
    # Tumour centres: deep cerebral white matter. MNI mm = voxel - (98, 134, 72); the cerebellum and
    # brainstem lie below z = 0 behind y = -40 and near the midline below z = -5.
    inner = ndimage.binary_erosion(brain, iterations=8)
    x, y, z = np.nonzero((white > 0.9) & inner)
    mx, my, mz = x - 98.0, y - 134.0, z - 72.0
    cerebral = (mz > -28) & ~((my < -40) & (mz < 0)) & ~((np.abs(mx) < 16) & (mz < -4) & (my > -45) & (my < 0))
    sites = np.stack([x, y, z], axis=1)[cerebral]
    voxels = np.argwhere(brain)
    box = np.stack([voxels.min(axis=0), voxels.max(axis=0)]).astype(np.float64)
    return Anatomy(fractions=fractions, tumour_sites=sites.astype(np.float64), brain_box=box)


@functools.cache
def _template_image():
    import SimpleITK as sitk

    # sitk indexes (x, y, z) while numpy arrays from it are (z, y, x): transpose on the way in.
    # uint8 (the templates' own precision) halves the resampling time against float32.
    fractions = np.rint(load_anatomy().fractions * 255).astype(np.uint8)
    return sitk.GetImageFromArray(np.ascontiguousarray(fractions.transpose(2, 1, 0, 3)), isVector=True)


# ---------------------------------------------------------------------------------------------
# Geometry: output voxel -> template voxel


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


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
    matrix = flip @ _rotation(angles) / scale
    anchor = GRID_ANCHOR + shift
    return Placement(matrix, TEMPLATE_ANCHOR - matrix @ anchor)


@dataclass(frozen=True)
class Lesion:
    """One tumour in output voxels: centre, core radius and edema radius (mm), and its make-up."""

    centre: np.ndarray
    core_radius: float
    edema_radius: float
    necrosis: bool
    enhancing: bool
    rim_mm: float
    push: float  # mass effect: fraction by which tissue at the centre is pushed out
    # Generator 3, non-enhancing cores: width (Gaussian sigma, mm) of the infiltrative margin over
    # which core and edema intensities blend, and the core fraction where the label boundary lies.
    margin_mm: float = 0.6
    margin_level: float = 0.5


# Share of lesions whose core does not enhance (lower-grade looking). Of the enhancing ones, about
# one in four is solid (enhancing throughout, no necrosis): 20% of all lesions at the default share.
NON_ENHANCING_SHARE = 0.15
SOLID_SHARE = 0.20 / (1 - NON_ENHANCING_SHARE)


def _draw_lesion(
    rng: np.random.Generator, centre: np.ndarray, satellite: bool, non_enhancing: float, generator: int = 1
) -> Lesion:
    # Main lesions: log-uniform core radius, small (4 mm) to large (22 mm) equally often per octave.
    core = rng.uniform(2.5, 6.0) if satellite else float(np.exp(rng.uniform(np.log(4.0), np.log(22.0))))
    if generator != 2:
        # Edema reaches 2-20 mm past the core: whole tumours of ~0.5 to ~300 ml, the BraTS range.
        edema = core + rng.uniform(2.0, 20.0)
    else:
        # Generator 2: the edema front travels 6-24 mm plus up to 1.2 core radii through white
        # matter (draw_tumours grows it there), at most 40 mm: larger tumours have more edema.
        edema = core + min(40.0, rng.uniform(6.0, 24.0) + rng.uniform(0.0, 1.2) * core)
    kind = rng.uniform()
    enhancing = kind >= non_enhancing
    necrosis = enhancing and kind >= non_enhancing + SOLID_SHARE * (1 - non_enhancing) and core > 7.0
    push = 0.0 if satellite else min(0.6, 0.15 + 0.02 * core)
    # Generator 2 draws thicker rims (2.5-10 mm mean thickness), made uneven in draw_tumours.
    rim_mm = rng.uniform(2.5, 7.0) if generator != 2 else rng.uniform(2.5, 10.0)
    margin_mm, margin_level = 0.6, 0.5
    if generator == 3 and not enhancing:
        # A diffuse low-grade glioma: a larger solid core (~5-29 mm radius) whose T2/FLAIR signal
        # reaches only a few mm further (infiltration labelled edema, not wide vasogenic edema),
        # and a margin that fades over 0.6-2.5 mm instead of a sharp edge.
        core = core * 1.3
        edema = core + rng.uniform(2.0, 7.0)
        margin_mm = rng.uniform(0.6, 2.5)
        # Where in that fade the core's label ends: annotators outline a low-grade core on T2 out
        # to where its signal has mostly given way to edema's, so between the middle of the fade
        # (0.5) and its outer part (0.2), per case.
        margin_level = rng.uniform(0.2, 0.5)
    return Lesion(centre, core, edema, necrosis, enhancing, rim_mm, push, margin_mm, margin_level)


def draw_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    placement: Placement,
    non_enhancing: float = NON_ENHANCING_SHARE,
    generator: int = 1,
) -> list[Lesion]:
    sites = anatomy.tumour_sites
    site = sites[rng.integers(len(sites))]
    centre = placement.to_output(site[None])[0]
    lesions = [_draw_lesion(rng, centre, satellite=False, non_enhancing=non_enhancing, generator=generator)]
    if rng.uniform() < 0.15:  # an occasional satellite lesion near the main one
        main = lesions[0]
        near = np.linalg.norm(placement.to_output(sites) - centre, axis=1)
        ring = np.nonzero((near > main.edema_radius + 4) & (near < main.edema_radius + 25))[0]
        if len(ring):
            satellite_site = placement.to_output(sites[ring[rng.integers(len(ring))]][None])[0]
            lesions.append(
                _draw_lesion(rng, satellite_site, satellite=True, non_enhancing=non_enhancing, generator=generator)
            )
    return lesions


def displacement_field(
    rng: np.random.Generator, placement: Placement, lesions: list[Lesion]
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
    matrices = [_spline_matrix(n, 40.0 / FIELD_SPACING) for n in counts]
    for axis in range(3):
        template[..., axis] += _separable(rng.normal(0.0, 2.5, [m.shape[1] for m in matrices]), matrices)
    return template - points, FIELD_SPACING


def output_box(anatomy: Anatomy, placement: Placement, margin: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """First voxel and size of the part of the output grid the warped brain can reach: the
    placed template brain box plus a margin for the elastic deformation."""
    corners = np.array([[anatomy.brain_box[c][a] for a, c in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    placed = placement.to_output(corners)
    low = np.clip(np.floor(placed.min(axis=0) - margin), 0, None).astype(int)
    high = np.minimum(np.ceil(placed.max(axis=0) + margin).astype(int) + 1, BRATS_SHAPE)
    return low, high - low


def warp_anatomy(field: np.ndarray, spacing: float, low: np.ndarray, size: np.ndarray, template=None) -> np.ndarray:
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
    warped_image = resampler.Execute(_template_image() if template is None else template)
    warped = sitk.GetArrayViewFromImage(warped_image).transpose(3, 2, 1, 0)
    full = np.zeros((warped.shape[0], *BRATS_SHAPE), np.float32)
    full[:, low[0] : low[0] + size[0], low[1] : low[1] + size[1], low[2] : low[2] + size[2]] = warped / 255.0
    return full


# ---------------------------------------------------------------------------------------------
# Tumours


def _spline_matrix(size: int, scale: float) -> np.ndarray:
    """(size, coarse) cubic B-spline weights that upsample `coarse` random knots `scale` apart."""
    coarse = int(np.ceil(size / scale)) + 4
    distance = np.arange(size)[:, None] / scale + 2.0 - np.arange(coarse)[None, :]
    t = np.abs(distance)
    weights = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return weights.astype(np.float32)


def _separable(knots: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Apply one (fine, coarse) matrix along each axis of `knots`."""
    field = knots.astype(np.float32)
    for axis, matrix in enumerate(matrices):
        field = np.moveaxis(np.tensordot(matrix, field, axes=([1], [axis])), 0, axis)
    return field


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features ~`scale` voxels across: random knots
    smoothed by a separable cubic B-spline (three small matrix products, fast for any box)."""
    matrices = [_spline_matrix(size, scale) for size in shape]
    field = _separable(rng.standard_normal([m.shape[1] for m in matrices]), matrices)
    field = field - field.mean()
    return field / (field.std() + 1e-6)


@dataclass
class TumourMaps:
    """Hard region masks (for labels) and soft class fractions (for intensities), full grid."""

    necrosis: np.ndarray
    enhancing: np.ndarray
    edema: np.ndarray
    non_enhancing: np.ndarray
    soft: dict[Tissue, np.ndarray | None]  # None: the tissue is absent from this tumour
    heterogeneity: np.ndarray


def _blur(mask: np.ndarray, sigma: float) -> np.ndarray | None:
    """Gaussian-blurred float copy of a sparse mask, computed in its bounding box only."""
    from scipy import ndimage

    if not mask.any():
        return None
    voxels = np.argwhere(mask)
    low = np.maximum(voxels.min(axis=0) - 4, 0)
    high = np.minimum(voxels.max(axis=0) + 5, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    soft = np.zeros(mask.shape, np.float32)
    soft[box] = ndimage.gaussian_filter(mask[box].astype(np.float32), sigma)
    return soft


Regions = tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _drawn_regions(
    rng: np.random.Generator,
    lesion: Lesion,
    grey: np.ndarray,
    white: np.ndarray,
    brain_soft: np.ndarray,
    generator: int,
) -> Regions:
    """A drawn lesion's box and necrosis, enhancing, non-enhancing and edema masks in it: a
    roughened ellipsoid core, its rim and necrosis, and edema (see `draw_tumours`)."""
    from scipy import ndimage

    reach = lesion.edema_radius * 1.5 + 4
    low = np.maximum(np.floor(lesion.centre - reach).astype(int), 0)
    high = np.minimum(np.ceil(lesion.centre + reach).astype(int) + 1, BRATS_SHAPE)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    box_shape = tuple(int(b - a) for a, b in zip(low, high, strict=True))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high, strict=True)], indexing="ij"), -1)
    # An ellipsoid of random orientation and axis ratios, roughened by smooth noise.
    axes = _rotation(rng.uniform(-np.pi, np.pi, 3)) * rng.uniform(0.75, 1.3, 3)
    offset = (grid - lesion.centre) @ axes
    radius = np.linalg.norm(offset, axis=-1)
    core_noise = _smooth_noise(rng, box_shape, max(2.5, lesion.core_radius / 2.5))
    core_fine = _smooth_noise(rng, box_shape, 2.0)
    core_level = radius / lesion.core_radius + 0.28 * core_noise + 0.06 * core_fine
    core = core_level < 1.0
    if not core.any():
        core = radius <= 2.0
    if lesion.necrosis and lesion.enhancing:
        rim_noise = _smooth_noise(rng, box_shape, 4.0)
        if generator != 2:
            rim = (lesion.rim_mm / lesion.core_radius) * (1.0 + 0.35 * rim_noise)
        else:
            # Log-normal thickness along the surface: 0.4-2.7x the mean for 90 % of it, so the
            # wall is thin in places and nodular, bulging into the necrosis, in others.
            rim = (lesion.rim_mm / lesion.core_radius) * np.exp(0.6 * rim_noise)
        lesion_necrosis = core & (core_level < 1.0 - rim)
    else:
        lesion_necrosis = np.zeros(box_shape, bool)
    lesion_enhancing = core & ~lesion_necrosis if lesion.enhancing else np.zeros(box_shape, bool)
    lesion_non_enhancing = np.zeros(box_shape, bool) if lesion.enhancing else core
    if generator != 2:
        # Edema spreads through white matter and spares cortex and CSF: its reach shrinks with
        # the local white-matter fraction, which gives the finger-like outline of vasogenic edema.
        edema_noise = _smooth_noise(rng, box_shape, max(3.0, lesion.edema_radius / 3.0))
        edema_level = radius / lesion.edema_radius + 0.3 * edema_noise
        wm_box, gm_box = white[box], grey[box]
        csf_box = brain_soft[box] - wm_box - gm_box
        reach_factor = 0.35 + 0.75 * np.clip(wm_box / 0.8, 0, 1) + 0.2 * np.clip(gm_box / 0.8, 0, 1)
        lesion_edema = ((edema_level < reach_factor) & (csf_box < 0.5)) | ndimage.binary_dilation(core, iterations=2)
    else:
        wm_box, gm_box = white[box], grey[box]
        lesion_edema = _grow_edema(
            rng,
            ndimage.binary_dilation(core, iterations=2),
            wm_box,
            gm_box,
            brain_soft[box] - wm_box - gm_box,
            brain_soft[box] > 0.5,
            lesion.edema_radius - lesion.core_radius,
        )
    return box, lesion_necrosis, lesion_enhancing, lesion_non_enhancing, lesion_edema


def draw_tumours(
    rng: np.random.Generator,
    lesions: list[Lesion],
    grey: np.ndarray,
    white: np.ndarray,
    brain_soft: np.ndarray,
    generator: int = 1,
    shaped: PlacedShape | None = None,
) -> TumourMaps:
    """Tumour masks and fractions. Generator 2 makes the rim uneven (nodular, thin in places) and
    grows the edema as a front through white matter (`_grow_edema`) instead of a noisy ellipsoid.
    `shaped` (generator 4): the first lesion's regions, placed from a real label map."""

    shape = BRATS_SHAPE
    necrosis = np.zeros(shape, bool)
    enhancing = np.zeros(shape, bool)
    edema = np.zeros(shape, bool)
    non_enhancing = np.zeros(shape, bool)
    heterogeneity = np.zeros(shape, np.float32)
    for number, lesion in enumerate(lesions):
        if number == 0 and shaped is not None:
            regions = _shaped_regions(lesion, shaped, grey, white, brain_soft)
        else:
            regions = _drawn_regions(rng, lesion, grey, white, brain_soft, generator)
        box, lesion_necrosis, lesion_enhancing, lesion_non_enhancing, lesion_edema = regions
        inside = brain_soft[box] > 0.5
        necrosis[box] |= lesion_necrosis & inside
        enhancing[box] |= lesion_enhancing & inside
        non_enhancing[box] |= lesion_non_enhancing & inside
        edema[box] |= lesion_edema & inside
        heterogeneity[box] = _smooth_noise(rng, lesion_edema.shape, 3.0)
    # Nesting as in the released data: ET and NCR are the core, edema the rest of the envelope.
    # A satellite's core wins over its neighbour's edema; necrosis over another lesion's rim.
    enhancing &= ~(necrosis | non_enhancing)
    necrosis &= ~non_enhancing
    edema &= ~(necrosis | enhancing | non_enhancing)
    soft: dict[Tissue, np.ndarray | None] = {}
    masks = {
        Tissue.NECROSIS: necrosis,
        Tissue.ENHANCING: enhancing,
        Tissue.EDEMA: edema,
        Tissue.NON_ENHANCING: non_enhancing,
    }
    for tissue, mask in masks.items():
        # Partial volume at the region borders: the soft fraction is the blurred hard mask.
        soft[tissue] = _blur(mask, 0.6)
    low_grade = [lesion for lesion in lesions if not lesion.enhancing]
    if generator in (3, 4) and low_grade and non_enhancing.any():
        widest = max(low_grade, key=lambda lesion: lesion.margin_mm)
        envelope = necrosis | enhancing | edema | non_enhancing
        _blend_margin(soft, non_enhancing, envelope, widest.margin_mm, widest.margin_level)
    return TumourMaps(necrosis, enhancing, edema, non_enhancing, soft, heterogeneity)


def _ramp(mask: np.ndarray, sigma: float, level: float) -> np.ndarray:
    """A Gaussian edge across the boundary of `mask` (width `sigma` voxels): 1 deep inside, 0 far
    outside, `level` on the boundary (0.5: the blurred mask of a flat boundary), from the signed
    distance to the boundary, computed in the mask's bounding box."""
    from scipy import ndimage, special

    voxels = np.argwhere(mask)
    pad = int(np.ceil(4 * sigma)) + 2
    low = np.maximum(voxels.min(axis=0) - pad, 0)
    high = np.minimum(voxels.max(axis=0) + pad + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    inside = mask[box]
    # Voxel centres: a boundary voxel is half a voxel inside, its neighbour half a voxel outside.
    signed = np.where(
        inside, ndimage.distance_transform_edt(inside) - 0.5, 0.5 - ndimage.distance_transform_edt(~inside)
    )
    ramp = np.zeros(mask.shape, np.float32)
    ramp[box] = special.ndtr((signed + sigma * special.ndtri(level)) / sigma)
    return ramp


def _blend_margin(
    soft: dict[Tissue, np.ndarray | None], core: np.ndarray, envelope: np.ndarray, margin: float, level: float = 0.5
) -> None:
    """Generator 3: the non-enhancing core fades into the edema over `margin` mm (Gaussian sigma)
    instead of 0.6, its fraction `level` on the label boundary: inside the boundary the core
    fraction falls below 1 and edema takes the rest, outside it edema gives way to a tail of core,
    and nothing reaches past the whole-tumour envelope. Fractions still sum as before, so only the
    look of the boundary changes."""
    sharp, whole = _blur(core, 0.6), _blur(envelope, 0.6)
    assert sharp is not None and whole is not None  # core is not empty
    wide = np.minimum(_ramp(core, margin, level), whole)
    edema = soft[Tissue.EDEMA]
    if edema is None:
        edema = np.zeros_like(wide)
    soft[Tissue.EDEMA] = np.clip(edema + sharp - wide, 0.0, None)
    soft[Tissue.NON_ENHANCING] = wide


# ---------------------------------------------------------------------------------------------
# Rendering


def _bias_field(rng: np.random.Generator, strength: float, voxels: tuple[np.ndarray, ...]) -> np.ndarray:
    """Smooth multiplicative field at `voxels`: a product of low-order cosine series per axis."""
    log_field = np.zeros(len(voxels[0]), np.float32)
    for axis, size in enumerate(BRATS_SHAPE):
        t = np.linspace(0, np.pi, size)
        profile = np.zeros(size)
        for order in (1, 2):
            profile += rng.normal(0, strength / order) * np.cos(order * t + rng.uniform(0, np.pi))
        log_field += profile.astype(np.float32)[voxels[axis]]
    return np.exp(log_field)


# ---------------------------------------------------------------------------------------------
# Generator 4: tumour outlines from real label maps

# How far a real outline is transformed per case: isotropic scale (volume 0.17-1.95x the source's),
# a further stretch per axis, and an elastic displacement of about 2 mm over 12 mm.
SHAPE_SCALE = (0.55, 1.25)
SHAPE_STRETCH = 0.15
SHAPE_WARP_MM = 2.0
SHAPE_WARP_SCALE = 12.0
# A label map is read at its voxel grid: anything but 1 mm voxels would change the outline's size.
SHAPE_SPACING_TOLERANCE = 0.05
# Below this share of necrosis in its core, an outline's core counts as solid, and a lesion drawn
# with necrosis is hollowed out (the FeTS label-fusion case: 1-2 %).
OWN_NECROSIS = 0.05
DESCRIPTION_BYTES = 79  # the NIfTI descrip field holds 80 bytes, NUL-terminated


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

    rotation = _rotation(rng.uniform(-np.pi, np.pi, 3))
    if rng.uniform() < 0.5:
        rotation = rotation @ np.diag([-1.0, 1.0, 1.0])
    scales = rng.uniform(*SHAPE_SCALE) * rng.uniform(1 - SHAPE_STRETCH, 1 + SHAPE_STRETCH, 3)
    # Output offset -> source offset: undo the scale, then the rotation.
    to_source = np.diag(1.0 / scales) @ rotation.T
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
        offset[..., axis] += SHAPE_WARP_MM * _smooth_noise(rng, size, SHAPE_WARP_SCALE)
    coordinates = np.moveaxis(offset @ to_source.T.astype(np.float32) + source_centre, -1, 0)
    masks = [
        ndimage.map_coordinates(mask.astype(np.float32), coordinates, order=1, cval=0.0) >= 0.5
        for mask in (shape.whole, shape.core, shape.enhancing)
    ]
    return PlacedShape(shape.name, low, *masks)


def _shaped_regions(
    lesion: Lesion, shaped: PlacedShape, grey: np.ndarray, white: np.ndarray, brain_soft: np.ndarray
) -> Regions:
    """The first lesion's box and necrosis, enhancing, non-enhancing and edema masks from a placed
    real outline. The lesion's draw decides what the core is: a low-grade core (no enhancement) or
    the outline's own enhancing and necrotic parts, hollowed out deeper than its rim when the draw
    has necrosis and the outline has little of its own (under OWN_NECROSIS of its core). Edema
    spares CSF, as in `draw_tumours`."""
    from scipy import ndimage

    box = tuple(slice(int(a), int(a) + n) for a, n in zip(shaped.low, shaped.whole.shape, strict=True))
    core = shaped.core
    if not lesion.enhancing:
        empty = np.zeros(core.shape, bool)
        necrosis, enhancing, non_enhancing = empty, empty, core
    else:
        enhancing = shaped.enhancing.copy()
        necrosis = core & ~enhancing
        if lesion.necrosis and necrosis.sum() < OWN_NECROSIS * core.sum():
            depth = ndimage.distance_transform_edt(core)
            necrosis |= core & (depth > lesion.rim_mm)
            enhancing &= ~necrosis
        non_enhancing = np.zeros(core.shape, bool)
    csf = brain_soft[box] - white[box] - grey[box]
    edema = shaped.whole & ~core & (csf < 0.5)
    return box, necrosis, enhancing, non_enhancing, edema


def _equivalent_radius(mask: np.ndarray) -> float:
    """Radius (mm) of the sphere of the same volume."""
    return float(np.cbrt(3.0 * max(int(mask.sum()), 1) / (4.0 * np.pi)))


GENERATORS = (1, 2, 3, 4)


def make_phantom(
    seed: int,
    index: int,
    naming: Naming = Naming.BRATS2021,
    non_enhancing: float = NON_ENHANCING_SHARE,
    generator: int = 1,
    shapes: Sequence[TumourShape] = (),
) -> Phantom:
    """Case `index` of the phantom series `seed`; depends only on (seed, index), the share of
    non-enhancing lesions and the generator version (the defaults keep every series as it has
    always been). Generator 2 (`make_phantom_v2`) randomises contrast, resolution and artefacts;
    generator 3 draws non-enhancing lesions as diffuse low-grade gliomas (`LOW_GRADE_RATIO`);
    generator 4 is generator 3 with the main tumour's outline from one of `shapes` (required)."""
    if not 0.0 <= non_enhancing <= 1.0:
        raise ValueError(f"non_enhancing is a share in [0, 1], not {non_enhancing}")
    if generator not in GENERATORS:
        raise ValueError(f"generator is one of {', '.join(map(str, GENERATORS))}, not {generator}")
    if (generator == 4) != bool(shapes):
        raise ValueError("tumour shapes are for generator 4, which needs at least one")
    naming = Naming(naming)
    if generator == 2:
        return make_phantom_v2(seed, index, naming, non_enhancing)
    rng = np.random.default_rng([seed, index] if generator == 1 else [seed, index, generator])
    anatomy = load_anatomy()
    placement = draw_placement(rng)
    lesions = draw_lesions(rng, anatomy, placement, non_enhancing, generator=min(generator, 3))
    shaped = None
    if generator == 4:
        shaped = place_shape(rng, shapes[int(rng.integers(len(shapes)))], lesions[0].centre)
        # The mass effect follows the placed outline's size, not the ellipsoid drawn for it.
        core_radius = _equivalent_radius(shaped.core)
        lesions[0] = replace(
            lesions[0],
            core_radius=core_radius,
            edema_radius=_equivalent_radius(shaped.whole),
            push=min(0.6, 0.15 + 0.02 * core_radius),
        )
    field, spacing = displacement_field(rng, placement, lesions)
    low, size = output_box(anatomy, placement)
    warped = warp_anatomy(field, spacing, low, size)
    grey, white, brain_soft = warped[0], warped[1], warped[2]
    brain = brain_soft > 0.5
    tumours = draw_tumours(rng, lesions, grey, white, brain_soft, generator=generator, shaped=shaped)
    contrast = CONTRAST
    if generator in (3, 4):
        contrast = dict(CONTRAST)
        contrast[Tissue.EDEMA] = _edema_contrast(rng)
        contrast[Tissue.NON_ENHANCING] = _low_grade_contrast(rng, contrast[Tissue.EDEMA])

    inside = np.nonzero(brain)
    fractions = {Tissue.GM: grey[inside], Tissue.WM: white[inside]}
    fractions[Tissue.CSF] = np.clip(brain_soft[inside] - fractions[Tissue.GM] - fractions[Tissue.WM], 0, None)
    # Skull-stripped images have a hard edge: within the brain the fractions are renormalised.
    total = fractions[Tissue.CSF] + fractions[Tissue.GM] + fractions[Tissue.WM] + 1e-6
    tumour_total = np.zeros(len(inside[0]), np.float32)
    for tissue, soft in tumours.soft.items():
        fractions[tissue] = soft[inside] if soft is not None else np.zeros_like(tumour_total)
        tumour_total += fractions[tissue]
    tumour_total = np.clip(tumour_total, 0, 1)
    for tissue in (Tissue.CSF, Tissue.GM, Tissue.WM):
        fractions[tissue] = fractions[tissue] / total * (1.0 - tumour_total)

    texture = tumours.heterogeneity[inside]
    # Normal tissue is not uniform either: a faint anatomical texture shared by all sequences.
    anatomy_texture = _smooth_noise(rng, tuple(int(n) for n in size), 5.0)
    anatomy_texture = anatomy_texture[tuple(axis - offset for axis, offset in zip(inside, low, strict=True))]
    image = np.zeros((len(CHANNEL_ORDER), *BRATS_SHAPE), np.int16)
    for channel in range(len(CHANNEL_ORDER)):
        signal = np.zeros(len(inside[0]), np.float32)
        for tissue, fraction in fractions.items():
            # Per-case contrast jitter, small enough that the tissue order of each sequence holds.
            level: float | np.ndarray = contrast[tissue][channel] * rng.uniform(0.95, 1.05)
            level = level * (1.0 + (0.1 * texture if tissue in TUMOUR else 0.03 * anatomy_texture))
            signal += fraction * level
        white_level = float(np.exp(rng.uniform(np.log(250.0), np.log(2500.0))))
        signal *= white_level * _bias_field(rng, 0.08, inside)
        # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
        sigma = white_level * rng.uniform(0.01, 0.025)
        real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
        imaginary = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
        magnitude = np.sqrt(real * real + imaginary * imaginary)
        # Every brain voxel stays nonzero, so the brain mask is exactly the nonzero voxels.
        image[channel][inside] = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)

    convention = LabelConvention.of_naming(naming)
    labels = np.zeros(BRATS_SHAPE, np.uint8)
    labels[tumours.edema] = EDEMA
    labels[tumours.necrosis | tumours.non_enhancing] = NECROSIS
    labels[tumours.enhancing] = convention.enhancing

    order = list(fractions)
    dominant = np.argmax(np.stack([fractions[t] for t in order]), axis=0)
    tissue_map = np.zeros(BRATS_SHAPE, np.uint8)
    tissue_map[inside] = np.array([int(t) for t in order], np.uint8)[dominant]
    if generator == 1:
        return Phantom(case_id(seed, index, naming), naming, image, labels, tissue_map)
    description = f"brats-synth v{generator} seed {seed} index {index}"
    if shaped is not None:
        # descrip is ASCII: a label map's name is recorded with anything else replaced by '?'.
        name = shaped.name.encode("ascii", "replace").decode("ascii")
        description = f"{description} shape {name}"[:DESCRIPTION_BYTES]
    return Phantom(case_id(seed, index, naming), naming, image, labels, tissue_map, generator, description)


# Generator 3: the edema's levels relative to white matter (FLAIR, T1, T2), drawn uniformly per case
# around generator 1's (1.85, 0.72, 1.90). Vasogenic edema next to a glioblastoma can be as dark on
# T1 and as bright on T2 as a low-grade tumour's core, and BraTS labels it edema all the same: what
# tells the two apart is the enhancing rim it surrounds, or a core darker on T1 and brighter on T2
# than the edema around it, so the TC model has to learn that context instead of an intensity.
EDEMA_RANGE = {Modality.FLAIR: (1.5, 2.3), Modality.T1: (0.55, 0.85), Modality.T2: (1.6, 2.3)}
# Generator 3, a diffuse low-grade glioma's solid core relative to the case's edema: markedly
# T2-hyperintense, brighter than the edema; darker on T1; on FLAIR often no brighter than the edema
# (the T2-FLAIR mismatch of IDH-mutant astrocytomas, Patel et al., Clin Cancer Res 2017). It does
# not enhance: T1ce is T1 within 10 %.
LOW_GRADE_RATIO = {Modality.FLAIR: (0.7, 1.05), Modality.T1: (0.6, 0.85), Modality.T2: (1.1, 1.4)}


def _levels(flair: float, t1: float, t2: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(FLAIR, T1, T1ce, T2) in channel order for a class that does not enhance: T1ce is T1 within 10 %."""
    levels = {
        Modality.FLAIR: flair,
        Modality.T1: t1,
        Modality.T1CE: t1 * float(rng.uniform(0.95, 1.1)),
        Modality.T2: t2,
    }
    first, second, third, fourth = (levels[modality] for modality in CHANNEL_ORDER)
    return (first, second, third, fourth)


def _edema_contrast(rng: np.random.Generator) -> tuple[float, float, float, float]:
    flair, t1, t2 = (float(rng.uniform(*EDEMA_RANGE[m])) for m in (Modality.FLAIR, Modality.T1, Modality.T2))
    return _levels(flair, t1, t2, rng)


def _low_grade_contrast(
    rng: np.random.Generator, edema: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    flair, t1, t2 = (
        edema[CHANNEL_ORDER.index(m)] * float(rng.uniform(*LOW_GRADE_RATIO[m]))
        for m in (Modality.FLAIR, Modality.T1, Modality.T2)
    )
    return _levels(flair, t1, t2, rng)


# ---------------------------------------------------------------------------------------------
# Generator 2: domain randomisation (after SynthSeg, Billot et al. 2023)
#
# Same anatomy, warp and tumour drawing as generator 1, from a stream of its own
# (SeedSequence([seed, index, 2])), with:
# - per case and channel a random Gaussian mixture: a log-normal mean per class around CONTRAST, a
#   random within-class spread, random gamma, bias field strength, noise level and scale;
# - per channel, at random, thick slices along one axis and a sub-voxel mis-registration;
# - tumours with edema grown through white matter and uneven, nodular rims;
# - unlabelled look-alikes: enhancing vessels and choroid plexus on T1ce, periventricular
#   hyperintensity on FLAIR and T2.
# Anatomy and tumours come from one child stream, the rendering from another, so the labels do
# not depend on any intensity draw.

# Mean intensity relative to white matter (FLAIR, T1, T1ce, T2) of the unlabelled classes.
EXTRA_CONTRAST: dict[Tissue, tuple[float, float, float, float]] = {
    # Veins and slow-flow arteries: enhance strongly; dark on T2 (flow void), isointense on T1.
    Tissue.VESSEL: (0.85, 0.90, 2.30, 0.60),
    # Choroid plexus: enhances strongly; darker than the CSF around it on T2 and FLAIR-bright vs CSF.
    Tissue.CHOROID: (1.00, 0.85, 2.00, 1.40),
    # Periventricular white-matter hyperintensity (gliosis, small-vessel disease, transependymal CSF).
    Tissue.PERIVENTRICULAR: (1.50, 0.88, 0.90, 1.50),
}
CONTRAST_V2 = {**CONTRAST, **EXTRA_CONTRAST}
NORMAL = (Tissue.CSF, Tissue.GM, Tissue.WM, Tissue.VESSEL, Tissue.CHOROID, Tissue.PERIVENTRICULAR)

# Spread (std of the log) of each class mean around CONTRAST, per case and channel. At 0.3 the
# 90 % range is 0.61-1.64x: T1 grey matter comes out brighter than white matter in ~23 % of
# channels, T2 grey matter brighter than CSF in ~7 %. The orderings hold on average only; what
# defines a label (FLOORS) is kept.
LEVEL_SPREAD = 0.3
# Thick slices: share of channels (FLAIR, T1, T1ce, T2; FLAIR and T2 are the ones most often
# acquired as 2D multi-slice stacks), thickness in mm (whole voxels) and the share per axis.
THICK_SHARE = (0.5, 0.3, 0.3, 0.5)
THICK_MM = (2, 6)
THICK_AXIS_SHARE = (0.25, 0.25, 0.5)  # x, y, z: axial stacks are the commonest
SHIFT_SHARE = 0.5  # channels shifted against the labels, by up to SHIFT_VOXELS along each axis
SHIFT_VOXELS = 1.0
# Ventricle proximity in the template, exp(-distance / PROXIMITY_MM): 1 in the lateral ventricles.
PROXIMITY_MM = 6.0


@dataclass(frozen=True)
class Acquisition:
    """How one channel of a generator-2 phantom is rendered; every value drawn per case and channel.

    levels: mean intensity of each class relative to white matter (before gamma).
    spread: within-class standard deviation of each class, relative to its mean.
    gamma: exponent applied to the WM-relative noiseless image.
    bias: std of the log bias field's coefficients (generator 1: 0.08).
    noise: Rician sigma relative to white matter (generator 1: 0.01-0.025).
    scale: white-matter intensity.
    texture_mm: feature size of the channel's own tissue texture.
    slice_axis: axis of the thick slices (0, 1, 2), or None; slice_mm their thickness (1: none) and
        slice_phase the voxel where the first whole slice starts.
    shift: displacement of the channel against the labels, voxels per axis.
    """

    levels: dict[Tissue, float]
    spread: dict[Tissue, float]
    gamma: float
    bias: float
    noise: float
    scale: float
    texture_mm: float
    slice_axis: int | None
    slice_mm: int
    slice_phase: int
    shift: tuple[float, float, float]


def _floor_levels(channel: int, levels: dict[Tissue, float]) -> None:
    """Keep what the BraTS annotation protocol reads a label from: enhancement is brighter than
    white matter and than necrosis on T1ce; edema is hyperintense on FLAIR and T2."""
    if channel == CHANNEL_ORDER.index(Modality.T1CE):
        levels[Tissue.ENHANCING] = max(levels[Tissue.ENHANCING], 1.25)
        levels[Tissue.NECROSIS] = min(levels[Tissue.NECROSIS], 0.75 * levels[Tissue.ENHANCING])
    if channel in (CHANNEL_ORDER.index(Modality.FLAIR), CHANNEL_ORDER.index(Modality.T2)):
        levels[Tissue.EDEMA] = max(levels[Tissue.EDEMA], 1.2)


def draw_acquisition(rng: np.random.Generator) -> tuple[Acquisition, ...]:
    """The rendering of the four channels (FLAIR, T1, T1ce, T2), drawn in a fixed order."""
    channels = []
    for channel in range(len(CHANNEL_ORDER)):
        levels = {}
        spread = {}
        for tissue, contrast in CONTRAST_V2.items():
            # White matter is the reference (its level is the scale); every other mean is log-normal.
            factor = 1.0 if tissue is Tissue.WM else float(np.exp(rng.normal(0.0, LEVEL_SPREAD)))
            levels[tissue] = contrast[channel] * factor
            # Within-class spread: normal tissue 1-10 % (generator 1: 3 %), tumour 3-18 % (10 %).
            spread[tissue] = float(rng.uniform(0.03, 0.18) if tissue in TUMOUR else rng.uniform(0.01, 0.10))
        _floor_levels(channel, levels)
        gamma = float(np.exp(rng.uniform(-0.3, 0.3)))  # 0.74-1.35
        bias = float(rng.uniform(0.0, 0.3))  # up to ~ +-50 % across the brain at the extreme
        noise = float(np.exp(rng.uniform(np.log(0.008), np.log(0.05))))
        scale = float(np.exp(rng.uniform(np.log(250.0), np.log(2500.0))))
        texture_mm = float(rng.uniform(1.5, 4.0))
        thick = rng.uniform() < THICK_SHARE[channel]
        slice_mm = int(rng.integers(THICK_MM[0], THICK_MM[1] + 1))
        slice_axis = int(rng.choice(3, p=THICK_AXIS_SHARE))
        slice_phase = int(rng.integers(slice_mm))
        shifted = rng.uniform() < SHIFT_SHARE
        offsets = rng.uniform(-SHIFT_VOXELS, SHIFT_VOXELS, 3)
        channels.append(
            Acquisition(
                levels,
                spread,
                gamma,
                bias,
                noise,
                scale,
                texture_mm,
                slice_axis if thick else None,
                slice_mm if thick else 1,
                slice_phase if thick else 0,
                (float(offsets[0]), float(offsets[1]), float(offsets[2])) if shifted else (0.0, 0.0, 0.0),
            )
        )
    return tuple(channels)


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
            x, _, z = np.array(ndimage.center_of_mass(csf, labelled, component)) - np.array([98.0, 134.0, 72.0])
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


@functools.cache
def _template_image_v2():
    import SimpleITK as sitk

    maps = np.concatenate([load_anatomy().fractions, ventricle_proximity()[..., None]], axis=-1)
    fractions = np.rint(maps * 255).astype(np.uint8)
    return sitk.GetImageFromArray(np.ascontiguousarray(fractions.transpose(2, 1, 0, 3)), isVector=True)


def _grow_edema(
    rng: np.random.Generator,
    seed: np.ndarray,
    white: np.ndarray,
    grey: np.ndarray,
    csf: np.ndarray,
    inside: np.ndarray,
    extent: float,
) -> np.ndarray:
    """Vasogenic edema as a front grown from `seed` for about `extent` mm of white matter.

    Each step the voxels next to the edema gain their speed and join at 1: the speed is the
    white-matter fraction x 1.3 (grey matter x 0.2; CSF and the outside stop it) times smooth
    log-normal noise, so the edema runs along the white matter into the gyri, finger-like, and
    spares cortex and CSF. The step alternates 6- and 18-connected dilation (~1.2 mm a step).
    """
    from scipy import ndimage

    speed = np.clip(1.3 * white + 0.2 * grey, 0.0, 1.0) * np.exp(0.4 * _smooth_noise(rng, seed.shape, 5.0))
    speed = np.where((csf < 0.5) & inside, np.minimum(speed, 1.0), 0.0).astype(np.float32)
    gained = np.zeros(seed.shape, np.float32)
    mask = seed.copy()
    if not mask.any():
        return mask
    structures = (ndimage.generate_binary_structure(3, 1), ndimage.generate_binary_structure(3, 2))
    voxels = np.argwhere(mask)
    low, high = voxels.min(axis=0), voxels.max(axis=0) + 1
    for step in range(round(float(extent) / 1.2)):
        # Work in the edema's bounding box plus the one voxel it can grow by.
        low, high = np.maximum(low - 1, 0), np.minimum(high + 1, mask.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        grown = mask[box]
        front = ndimage.binary_dilation(grown, structure=structures[step % 2]) & ~grown
        gained[box][front] += speed[box][front]
        grown |= front & (gained[box] >= 1.0)
    return mask


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / (np.linalg.norm(vector) + 1e-9)


def draw_vessels(rng: np.random.Generator, brain: np.ndarray, csf: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Fraction (box voxels) of 6-16 thin tubes, 15-70 mm long, that start in sulcal or
    ventricular CSF and wander as smooth random walks: cortical and deep veins, sulcal arteries.
    A third are ~2 mm across, the rest ~1.3 mm (Gaussian profile). They stop at the brain's edge
    and are cut out of `exclude` (the tumour and 3 mm around it)."""
    from scipy import ndimage

    shape = np.array(brain.shape)
    starts = np.argwhere((csf > 0.4) & brain & ~exclude)
    volumes = {0.55: np.zeros(brain.shape, np.float32), 0.9: np.zeros(brain.shape, np.float32)}
    count = int(rng.integers(6, 17))
    for _ in range(count):
        position = starts[rng.integers(len(starts))].astype(np.float64)
        direction = _unit(rng.normal(size=3))
        steps = int(rng.uniform(15.0, 70.0) / 0.5)
        sigma = 0.9 if rng.uniform() < 0.35 else 0.55
        turns = rng.normal(0.0, 0.12, (steps, 3))
        points = []
        for turn in turns:
            direction = _unit(direction + turn)
            position = position + 0.5 * direction
            voxel = np.rint(position).astype(int)
            if (voxel < 0).any() or (voxel >= shape).any() or not brain[tuple(voxel)]:
                break
            points.append(voxel)
        if points:
            np.add.at(volumes[sigma], tuple(np.array(points).T), 1.0)
    fraction = np.zeros(brain.shape, np.float32)
    for sigma, volume in volumes.items():
        if volume.any():
            # Two points a mm along a line blur to a peak of 2 / (2 pi sigma^2): scale that to 1.
            fraction = np.maximum(fraction, ndimage.gaussian_filter(volume, sigma) * (np.pi * sigma**2))
    return np.where(brain & ~exclude, np.clip(fraction, 0.0, 1.0), 0.0).astype(np.float32)


def draw_choroid(
    rng: np.random.Generator,
    placement: Placement,
    proximity: np.ndarray,
    csf: np.ndarray,
    low: np.ndarray,
    exclude: np.ndarray,
) -> np.ndarray:
    """Fraction (box voxels) of choroid plexus: lumpy blobs (smooth noise above a random level)
    in the atria and posterior bodies of the lateral ventricles (MNI |x| 10-35, y -50 to -15,
    z 0-28 mm), present in 85 % of cases."""
    present = rng.uniform() < 0.85
    level = rng.uniform(-0.4, 0.6)
    fraction = np.zeros(proximity.shape, np.float32)
    voxels = np.argwhere((proximity > 0.93) & (csf > 0.5) & ~exclude)
    if not present or not len(voxels):
        return fraction
    x, y, z = (placement.to_template(voxels + low) - np.array([98.0, 134.0, 72.0])).T
    voxels = voxels[(np.abs(x) > 10) & (np.abs(x) < 35) & (y > -50) & (y < -15) & (z > 0) & (z < 28)]
    if not len(voxels):
        return fraction
    first, last = voxels.min(axis=0), voxels.max(axis=0) + 1
    noise = _smooth_noise(rng, tuple(int(n) for n in last - first), 2.5)
    voxels = voxels[noise[tuple((voxels - first).T)] > level]
    mask = np.zeros(proximity.shape, bool)
    mask[tuple(voxels.T)] = True
    soft = _blur(mask, 0.7)
    return fraction if soft is None else np.minimum(soft, np.clip(csf, 0.0, 1.0))


def draw_periventricular(rng: np.random.Generator, proximity: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Share (0-1, box voxels) of the white matter that is hyperintense around the lateral
    ventricles: a band 2-9 mm wide, uneven along the wall (smooth noise), of random strength,
    in 60 % of cases."""
    present = rng.uniform() < 0.6
    width = rng.uniform(2.0, 9.0)
    strength = rng.uniform(0.5, 1.0)
    if not present:
        return np.zeros(proximity.shape, np.float32)
    distance = -PROXIMITY_MM * np.log(np.maximum(proximity, 1e-3))
    reach = width * np.exp(0.45 * _smooth_noise(rng, proximity.shape, 8.0))
    share = np.clip((reach - distance) / 2.0 + 0.5, 0.0, 1.0) * strength
    return np.where((distance > 0.5) & ~exclude, share, 0.0).astype(np.float32)


def _bias_log_profiles(rng: np.random.Generator, strength: float) -> list[np.ndarray]:
    """Per-axis log profiles of a smooth bias field (as `_bias_field`, generator 1)."""
    profiles = []
    for size in BRATS_SHAPE:
        t = np.linspace(0, np.pi, size)
        profile = np.zeros(size)
        for order in (1, 2):
            profile += rng.normal(0, strength / order) * np.cos(order * t + rng.uniform(0, np.pi))
        profiles.append(profile.astype(np.float32))
    return profiles


def thick_slices(volume: np.ndarray, axis: int, thickness: int, phase: int = 0) -> np.ndarray:
    """`volume` as if acquired in slices `thickness` voxels thick along `axis` (the first whole one
    starting at voxel `phase`) and interpolated back to 1 mm: blocks of voxels are averaged (a
    box slice profile), then interpolated linearly between the slice centres."""
    data = np.moveaxis(volume, axis, 0)
    n = data.shape[0]
    phase = phase % thickness
    starts = np.arange(-phase, n, thickness) if phase else np.arange(0, n, thickness)
    before, after = int(-starts[0]), int(len(starts) * thickness + starts[0] - n)
    padded = np.concatenate([np.repeat(data[:1], before, 0), data, np.repeat(data[-1:], after, 0)])
    slices = padded.reshape(len(starts), thickness, *data.shape[1:]).mean(axis=1, dtype=np.float32)
    centres = starts + (thickness - 1) / 2.0
    position = np.clip((np.arange(n) - centres[0]) / thickness, 0, len(starts) - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, len(starts) - 1)
    weight = (position - below).astype(np.float32).reshape(-1, *([1] * (data.ndim - 1)))
    return np.moveaxis(slices[below] * (1 - weight) + slices[above] * weight, 0, axis)


def _render_channel(
    rng: np.random.Generator,
    acquisition: Acquisition,
    fractions: dict[Tissue, np.ndarray],
    textures: tuple[np.ndarray, np.ndarray],
    inside: tuple[np.ndarray, ...],
    inside_box: tuple[np.ndarray, ...],
    box_shape: tuple[int, ...],
) -> np.ndarray:
    """int16 values at the brain voxels `inside` of one channel: the Gaussian mixture, gamma, bias
    field and Rician noise in the box, then thick slices and the shift, then the brain mask."""
    from scipy import ndimage

    own = _smooth_noise(rng, box_shape, acquisition.texture_mm)[inside_box]
    normal_texture = (textures[0] + own) / np.sqrt(2.0)
    signal = np.zeros(len(inside[0]), np.float32)
    for tissue, fraction in fractions.items():
        texture = textures[1] if tissue in TUMOUR else normal_texture
        signal += fraction * acquisition.levels[tissue] * (1.0 + acquisition.spread[tissue] * texture)
    signal = (np.maximum(signal, 1e-3) ** acquisition.gamma).astype(np.float32)
    log_bias = np.zeros(len(inside[0]), np.float32)
    for axis, profile in enumerate(_bias_log_profiles(rng, acquisition.bias)):
        log_bias += profile[inside[axis]]
    signal *= np.exp(log_bias)
    # The acquisition: Rician noise everywhere in the box (the background too, so thick slices and
    # the shift mix noise, not zeros, into the brain's edge), then slices and motion.
    volume = np.zeros(box_shape, np.float32)
    volume[inside_box] = signal
    real = volume + acquisition.noise * rng.standard_normal(box_shape, dtype=np.float32)
    imaginary = acquisition.noise * rng.standard_normal(box_shape, dtype=np.float32)
    volume = np.sqrt(real * real + imaginary * imaginary)
    if acquisition.slice_axis is not None:
        volume = thick_slices(volume, acquisition.slice_axis, acquisition.slice_mm, acquisition.slice_phase)
    if any(acquisition.shift):
        volume = ndimage.shift(volume, acquisition.shift, order=1, mode="nearest")
    values = volume[inside_box] * acquisition.scale
    # A bright channel is scaled down rather than clipped: int16 holds every value.
    peak = float(values.max())
    if peak > 30000.0:
        values *= 30000.0 / peak
    # Every brain voxel stays nonzero, so the brain mask is exactly the nonzero voxels.
    return np.clip(np.rint(values), 1, np.iinfo(np.int16).max).astype(np.int16)


def make_phantom_v2(
    seed: int, index: int, naming: Naming = Naming.BRATS2021, non_enhancing: float = NON_ENHANCING_SHARE
) -> Phantom:
    """Case `index` of the generator-2 series `seed` (see the section comment above); depends only
    on (seed, index) and the share of non-enhancing lesions."""
    from scipy import ndimage

    naming = Naming(naming)
    geometry_seed, render_seed = np.random.SeedSequence([seed, index, 2]).spawn(2)
    rng = np.random.default_rng(geometry_seed)
    anatomy = load_anatomy()
    placement = draw_placement(rng)
    lesions = draw_lesions(rng, anatomy, placement, non_enhancing, generator=2)
    field, spacing = displacement_field(rng, placement, lesions)
    low, size = output_box(anatomy, placement)
    warped = warp_anatomy(field, spacing, low, size, _template_image_v2())
    grey, white, brain_soft = warped[0], warped[1], warped[2]
    brain = brain_soft > 0.5
    tumours = draw_tumours(rng, lesions, grey, white, brain_soft, generator=2)

    # The look-alikes, in the box the brain can reach, kept 3 mm clear of the tumour.
    box = tuple(slice(int(a), int(a + n)) for a, n in zip(low, size, strict=True))
    box_shape = tuple(int(n) for n in size)
    envelope = (tumours.edema | tumours.necrosis | tumours.enhancing | tumours.non_enhancing)[box]
    exclude = ndimage.binary_dilation(envelope, iterations=3) if envelope.any() else envelope
    brain_box = brain[box]
    csf_box = np.clip(brain_soft[box] - grey[box] - white[box], 0.0, None)
    proximity = warped[3][box]
    vessels = draw_vessels(rng, brain_box, csf_box, exclude)
    choroid = draw_choroid(rng, placement, proximity, csf_box, low, exclude)
    periventricular = draw_periventricular(rng, proximity, exclude)

    inside = np.nonzero(brain)
    inside_box = tuple(axis - offset for axis, offset in zip(inside, low, strict=True))
    fractions = {Tissue.GM: grey[inside], Tissue.WM: white[inside]}
    fractions[Tissue.CSF] = np.clip(brain_soft[inside] - fractions[Tissue.GM] - fractions[Tissue.WM], 0, None)
    total = fractions[Tissue.CSF] + fractions[Tissue.GM] + fractions[Tissue.WM] + 1e-6
    tumour_total = np.zeros(len(inside[0]), np.float32)
    for tissue, soft in tumours.soft.items():
        fractions[tissue] = soft[inside] if soft is not None else np.zeros_like(tumour_total)
        tumour_total += fractions[tissue]
    tumour_total = np.clip(tumour_total, 0, 1)
    for tissue in (Tissue.CSF, Tissue.GM, Tissue.WM):
        fractions[tissue] = fractions[tissue] / total * (1.0 - tumour_total)
    # The look-alikes take their share from normal tissue only: hyperintense white matter, plexus
    # in the CSF, vessels out of whatever normal tissue they run through.
    fractions[Tissue.PERIVENTRICULAR] = periventricular[inside_box] * fractions[Tissue.WM]
    fractions[Tissue.WM] = fractions[Tissue.WM] - fractions[Tissue.PERIVENTRICULAR]
    fractions[Tissue.CHOROID] = choroid[inside_box] * fractions[Tissue.CSF]
    fractions[Tissue.CSF] = fractions[Tissue.CSF] - fractions[Tissue.CHOROID]
    vessel = vessels[inside_box]
    normal_total = np.zeros(len(inside[0]), np.float32)
    for tissue in (Tissue.CSF, Tissue.GM, Tissue.WM, Tissue.PERIVENTRICULAR, Tissue.CHOROID):
        normal_total += fractions[tissue]
        fractions[tissue] = fractions[tissue] * (1.0 - vessel)
    fractions[Tissue.VESSEL] = vessel * normal_total

    render = np.random.default_rng(render_seed)
    acquisition = draw_acquisition(render)
    shared = _smooth_noise(render, box_shape, 5.0)[inside_box]
    textures = (shared, tumours.heterogeneity[inside])
    image = np.zeros((len(CHANNEL_ORDER), *BRATS_SHAPE), np.int16)
    for channel, settings in enumerate(acquisition):
        image[channel][inside] = _render_channel(render, settings, fractions, textures, inside, inside_box, box_shape)

    convention = LabelConvention.of_naming(naming)
    labels = np.zeros(BRATS_SHAPE, np.uint8)
    labels[tumours.edema] = EDEMA
    labels[tumours.necrosis | tumours.non_enhancing] = NECROSIS
    labels[tumours.enhancing] = convention.enhancing

    order = list(fractions)
    dominant = np.argmax(np.stack([fractions[t] for t in order]), axis=0)
    tissue_map = np.zeros(BRATS_SHAPE, np.uint8)
    tissue_map[inside] = np.array([int(t) for t in order], np.uint8)[dominant]
    return Phantom(
        case_id(seed, index, naming),
        naming,
        image,
        labels,
        tissue_map,
        generator=2,
        description=f"brats-synth v2 seed {seed} index {index}",
        acquisition=acquisition,
    )


# ---------------------------------------------------------------------------------------------
# Files


def _nifti(data: np.ndarray, description: str = "") -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, BRATS_AFFINE)
    image.set_qform(BRATS_AFFINE, code=1)
    image.set_sform(BRATS_AFFINE, code=1)
    image.header.set_xyzt_units("mm", "sec")
    if description:  # generator 1 leaves descrip empty: its files stay byte for byte as before
        image.header["descrip"] = description.encode("ascii")
    return image


def write_phantom(phantom: Phantom, root: Path) -> Path:
    """Write one case folder in the BraTS training layout, whole or not at all: it is filled under
    a hidden staging name and renamed into place (a case folder already there is replaced), so an
    interrupted or failing write (a full disk: OutputError naming the case folder) never leaves a
    case with only some modalities. Generator-2 and -3 files record the generator, seed and index in the
    NIfTI `descrip` field."""
    folder = Path(root) / phantom.case_id
    separator = SEPARATOR[phantom.naming]
    files = [
        (f"{phantom.case_id}{separator}{SUFFIX[phantom.naming][modality]}.nii.gz", phantom.image[channel])
        for channel, modality in enumerate(CHANNEL_ORDER)
    ]
    files.append((f"{phantom.case_id}{separator}{SEGMENTATION_SUFFIX}.nii.gz", phantom.labels))
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)  # `root` need not exist yet, as before
        with atomic_folder(folder) as staging:
            for name, data in files:
                with atomic_path(staging / name) as temporary:  # fsync'd before the folder's rename
                    nib.save(_nifti(data, phantom.description), temporary)
    except OSError as error:
        raise OutputError(f"{folder}: cannot write ({first_line(error)}); this case was not written") from error
    return folder


def write_phantom_cases(
    root: Path,
    n: int,
    seed: int,
    naming: Naming = Naming.BRATS2021,
    on_case: Callable[[Phantom], None] | None = None,
    non_enhancing: float = NON_ENHANCING_SHARE,
    generator: int = 1,
    shapes: Sequence[TumourShape] = (),
) -> list[Path]:
    """Write cases 0..n-1 of series `seed` under `root`; `on_case` sees each phantom once written.
    Staging folders that killed runs left in `root` are deleted first (only those of dead processes)."""
    root = check_output_folder(Path(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{root}: cannot create output folder ({first_line(error)})") from error
    remove_stale_temporaries(root)
    folders = []
    for index in range(n):
        phantom = make_phantom(seed, index, naming, non_enhancing, generator, shapes)
        folders.append(write_phantom(phantom, root))
        if on_case is not None:
            on_case(phantom)
    return folders


# ---------------------------------------------------------------------------------------------
# Preview


def tumour_slice(labels: np.ndarray) -> int:
    """The axial slice with the most tumour voxels (the middle slice when there is no tumour)."""
    counts = (labels > 0).sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.any() else labels.shape[2] // 2


@dataclass(frozen=True)
class PreviewRow:
    case_id: str
    slices: np.ndarray  # (4, 240, 240) FLAIR, T1, T1ce, T2 at the slice
    labels: np.ndarray  # (240, 240)
    enhancing: int
    z: int


def preview_row(phantom: Phantom) -> PreviewRow:
    z = tumour_slice(phantom.labels)
    convention = LabelConvention.of_naming(phantom.naming)
    return PreviewRow(
        phantom.case_id, phantom.image[:, :, :, z].copy(), phantom.labels[:, :, z].copy(), convention.enhancing, z
    )


def require_preview() -> None:
    """DependencyError unless matplotlib (for --preview) is installed: checked before any case."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise DependencyError(f"--preview needs matplotlib: {EXTRA_HINT}") from error


def save_preview(rows: list[PreviewRow], path: Path) -> None:
    """One PNG, a row per case: FLAIR, T1, T1ce, T2 and the labels over FLAIR, radiological view."""
    require_preview()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["FLAIR", "T1", "T1ce", "T2", "labels"]
    figure, axes = plt.subplots(len(rows), 5, figsize=(12.5, 2.7 * len(rows)), squeeze=False)
    for row, (case, axes_row) in enumerate(zip(rows, axes, strict=True)):
        for column in range(4):
            show_slice(axes_row[column], case.slices[column])
        show_labels(axes_row[4], case.slices[0], case.labels, case.enhancing)
        axes_row[0].set_ylabel(f"{case.case_id}\nz={case.z}", fontsize=8)
        for column, axis in enumerate(axes_row):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(titles[column])
    figure.tight_layout()
    try:
        with atomic_path(Path(path)) as temporary:
            figure.savefig(temporary, dpi=80, format="png")
    except OSError as error:
        raise OutputError(f"{path}: cannot write ({first_line(error)})") from error
    finally:
        plt.close(figure)


def show_slice(axis, data: np.ndarray) -> None:
    """An axial LPS slice in radiological view: anterior up, the patient's right on the left."""
    values = data[data > 0]
    top = float(np.percentile(values, 99.5)) if values.size else 1.0
    axis.imshow(data.T, cmap="gray", vmin=0, vmax=top, interpolation="nearest")


LABEL_COLOURS = {NECROSIS: (1.0, 0.2, 0.2), EDEMA: (0.2, 0.9, 0.2)}


def show_labels(axis, background: np.ndarray, labels: np.ndarray, enhancing: int) -> None:
    show_slice(axis, background)
    overlay = np.zeros((*labels.T.shape, 4), np.float32)
    colours = {**LABEL_COLOURS, enhancing: (1.0, 0.9, 0.1)}
    for label, colour in colours.items():
        overlay[label == labels.T] = (*colour, 0.6)
    axis.imshow(overlay, interpolation="nearest")


# Draws a sixth column for one row: (axis, row index, image, labels, axial slice z).
ExtraColumn = Callable[[object, int, np.ndarray, np.ndarray, int], None]


def draw_tumour_rows(
    rows: list[tuple[str, np.ndarray, np.ndarray]],
    titles: list[str],
    out: Path,
    *,
    enhancing: int,
    label_channel: int = 0,
    extra: ExtraColumn | None = None,
    extra_ticks: bool = False,
    name_size: int = 7,
) -> None:
    """The documentation figures: a row per (name, image (4, X, Y, Z), labels) at its axial slice
    with the most tumour, with the four channels, the labels over channel `label_channel` and,
    given `extra`, a sixth column (with its ticks where `extra_ticks`); PNG at 70 dpi."""
    require_preview()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 6 if extra is not None else 5
    figure, axes = plt.subplots(len(rows), columns, figsize=(3.0 * columns - 1, 3.0 * len(rows)), squeeze=False)
    for index, ((name, image, labels), axes_row) in enumerate(zip(rows, axes, strict=True)):
        z = tumour_slice(labels)
        for column in range(4):
            show_slice(axes_row[column], image[column, :, :, z])
        show_labels(axes_row[4], image[label_channel, :, :, z], labels[:, :, z], enhancing)
        if extra is not None:
            extra(axes_row[5], index, image, labels, z)
        axes_row[0].set_ylabel(f"{name}\naxial z={z}", fontsize=name_size)
        for column, axis in enumerate(axes_row):
            if index == 0:
                axis.set_title(titles[column], fontsize=10)
            if column < 5 or not extra_ticks:
                axis.set_xticks([])
                axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(out, dpi=70)
    plt.close(figure)
