"""Labelled phantom cases in BraTS space, built on a real brain (the MNI ICBM152 2009 templates).

Each case warps the template's grey- and white-matter probability maps into the 240x240x155 LPS grid
with a random similarity transform, a smooth elastic deformation and the mass effect of its tumour,
then renders four contrasts from tissue fractions (CSF, GM, WM, necrosis, edema, enhancing tumour)
with partial volume, a smooth bias field, Rician noise and a per-case intensity scale.

Case `index` of seed `seed` depends only on (seed, index): every random draw comes from
`numpy.random.default_rng([seed, index])`, in a fixed order.

The templates ship inside the `nilearn` wheel (the `synth` extra); they are located without
importing nilearn, which would pull scikit-learn and pandas in for three files.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_cli.errors import DependencyError
from brats_cli.io import BRATS_SHAPE, CHANNEL_ORDER, SEGMENTATION_SUFFIX, SEPARATOR, SUFFIX, Naming, save_nifti
from brats_cli.labels import EDEMA, NECROSIS, LabelConvention

TEMPLATE_PACKAGE = "nilearn"
TEMPLATE_FOLDER = ("datasets", "data")
TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
EXTRA_HINT = "install the synth extra: pip install 'brats[synth]'"

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
    """

    case_id: str
    naming: Naming
    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray


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


# Share of lesions whose core does not enhance (lower-grade looking). Of the enhancing ones, about
# one in four is solid (enhancing throughout, no necrosis): 20% of all lesions at the default share.
NON_ENHANCING_SHARE = 0.15
SOLID_SHARE = 0.20 / (1 - NON_ENHANCING_SHARE)


def _draw_lesion(rng: np.random.Generator, centre: np.ndarray, satellite: bool, non_enhancing: float) -> Lesion:
    # Main lesions: log-uniform core radius, small (4 mm) to large (22 mm) equally often per octave.
    core = rng.uniform(2.5, 6.0) if satellite else float(np.exp(rng.uniform(np.log(4.0), np.log(22.0))))
    # Edema reaches 2-20 mm past the core: whole tumours of ~0.5 to ~300 ml, the BraTS range.
    edema = core + rng.uniform(2.0, 20.0)
    kind = rng.uniform()
    enhancing = kind >= non_enhancing
    necrosis = enhancing and kind >= non_enhancing + SOLID_SHARE * (1 - non_enhancing) and core > 7.0
    push = 0.0 if satellite else min(0.6, 0.15 + 0.02 * core)
    return Lesion(centre, core, edema, necrosis, enhancing, rng.uniform(2.5, 7.0), push)


def draw_lesions(
    rng: np.random.Generator, anatomy: Anatomy, placement: Placement, non_enhancing: float = NON_ENHANCING_SHARE
) -> list[Lesion]:
    sites = anatomy.tumour_sites
    site = sites[rng.integers(len(sites))]
    centre = placement.to_output(site[None])[0]
    lesions = [_draw_lesion(rng, centre, satellite=False, non_enhancing=non_enhancing)]
    if rng.uniform() < 0.15:  # an occasional satellite lesion near the main one
        main = lesions[0]
        near = np.linalg.norm(placement.to_output(sites) - centre, axis=1)
        ring = np.nonzero((near > main.edema_radius + 4) & (near < main.edema_radius + 25))[0]
        if len(ring):
            satellite_site = placement.to_output(sites[ring[rng.integers(len(ring))]][None])[0]
            lesions.append(_draw_lesion(rng, satellite_site, satellite=True, non_enhancing=non_enhancing))
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


def warp_anatomy(field: np.ndarray, spacing: float, low: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Template GM, WM and brain fractions resampled into the output grid: (3, 240, 240, 155),
    zero outside the box (`low`, `size`) that the brain can reach."""
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
    warped_image = resampler.Execute(_template_image())  # keep it alive: the view below borrows its buffer
    warped = sitk.GetArrayViewFromImage(warped_image).transpose(3, 2, 1, 0)
    full = np.zeros((3, *BRATS_SHAPE), np.float32)
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


def draw_tumours(
    rng: np.random.Generator,
    lesions: list[Lesion],
    grey: np.ndarray,
    white: np.ndarray,
    brain_soft: np.ndarray,
) -> TumourMaps:
    from scipy import ndimage

    shape = BRATS_SHAPE
    necrosis = np.zeros(shape, bool)
    enhancing = np.zeros(shape, bool)
    edema = np.zeros(shape, bool)
    non_enhancing = np.zeros(shape, bool)
    heterogeneity = np.zeros(shape, np.float32)
    for lesion in lesions:
        reach = lesion.edema_radius * 1.5 + 4
        low = np.maximum(np.floor(lesion.centre - reach).astype(int), 0)
        high = np.minimum(np.ceil(lesion.centre + reach).astype(int) + 1, shape)
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
            rim = (lesion.rim_mm / lesion.core_radius) * (1.0 + 0.35 * _smooth_noise(rng, box_shape, 4.0))
            lesion_necrosis = core & (core_level < 1.0 - rim)
        else:
            lesion_necrosis = np.zeros(box_shape, bool)
        lesion_enhancing = core & ~lesion_necrosis if lesion.enhancing else np.zeros(box_shape, bool)
        lesion_non_enhancing = np.zeros(box_shape, bool) if lesion.enhancing else core
        # Edema spreads through white matter and spares cortex and CSF: its reach shrinks with the
        # local white-matter fraction, which gives the finger-like outline of vasogenic edema.
        edema_noise = _smooth_noise(rng, box_shape, max(3.0, lesion.edema_radius / 3.0))
        edema_level = radius / lesion.edema_radius + 0.3 * edema_noise
        wm_box, gm_box = white[box], grey[box]
        csf_box = brain_soft[box] - wm_box - gm_box
        reach_factor = 0.35 + 0.75 * np.clip(wm_box / 0.8, 0, 1) + 0.2 * np.clip(gm_box / 0.8, 0, 1)
        lesion_edema = ((edema_level < reach_factor) & (csf_box < 0.5)) | ndimage.binary_dilation(core, iterations=2)
        inside = brain_soft[box] > 0.5
        necrosis[box] |= lesion_necrosis & inside
        enhancing[box] |= lesion_enhancing & inside
        non_enhancing[box] |= lesion_non_enhancing & inside
        edema[box] |= lesion_edema & inside
        heterogeneity[box] = _smooth_noise(rng, box_shape, 3.0)
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
    return TumourMaps(necrosis, enhancing, edema, non_enhancing, soft, heterogeneity)


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


def make_phantom(
    seed: int, index: int, naming: Naming = Naming.BRATS2021, non_enhancing: float = NON_ENHANCING_SHARE
) -> Phantom:
    """Case `index` of the phantom series `seed`; depends only on (seed, index) and the share of
    non-enhancing lesions (the default keeps every series as it has always been)."""
    if not 0.0 <= non_enhancing <= 1.0:
        raise ValueError(f"non_enhancing is a share in [0, 1], not {non_enhancing}")
    naming = Naming(naming)
    rng = np.random.default_rng([seed, index])
    anatomy = load_anatomy()
    placement = draw_placement(rng)
    lesions = draw_lesions(rng, anatomy, placement, non_enhancing)
    field, spacing = displacement_field(rng, placement, lesions)
    low, size = output_box(anatomy, placement)
    warped = warp_anatomy(field, spacing, low, size)
    grey, white, brain_soft = warped[0], warped[1], warped[2]
    brain = brain_soft > 0.5
    tumours = draw_tumours(rng, lesions, grey, white, brain_soft)

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
            level: float | np.ndarray = CONTRAST[tissue][channel] * rng.uniform(0.95, 1.05)
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
    return Phantom(case_id(seed, index, naming), naming, image, labels, tissue_map)


# ---------------------------------------------------------------------------------------------
# Files


def _nifti(data: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, BRATS_AFFINE)
    image.set_qform(BRATS_AFFINE, code=1)
    image.set_sform(BRATS_AFFINE, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image


def write_phantom(phantom: Phantom, root: Path) -> Path:
    """Write one case folder in the BraTS training layout; every file is written atomically."""
    folder = Path(root) / phantom.case_id
    folder.mkdir(parents=True, exist_ok=True)
    separator = SEPARATOR[phantom.naming]
    for channel, modality in enumerate(CHANNEL_ORDER):
        name = f"{phantom.case_id}{separator}{SUFFIX[phantom.naming][modality]}.nii.gz"
        save_nifti(_nifti(phantom.image[channel]), folder / name)
    save_nifti(_nifti(phantom.labels), folder / f"{phantom.case_id}{separator}{SEGMENTATION_SUFFIX}.nii.gz")
    return folder


def write_phantom_cases(
    root: Path,
    n: int,
    seed: int,
    naming: Naming = Naming.BRATS2021,
    on_case: Callable[[Phantom], None] | None = None,
    non_enhancing: float = NON_ENHANCING_SHARE,
) -> list[Path]:
    """Write cases 0..n-1 of series `seed` under `root`; `on_case` sees each phantom once written."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for index in range(n):
        phantom = make_phantom(seed, index, naming, non_enhancing)
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


def save_preview(rows: list[PreviewRow], path: Path) -> None:
    """One PNG, a row per case: FLAIR, T1, T1ce, T2 and the labels over FLAIR, radiological view."""
    try:
        import matplotlib
    except ImportError as error:
        raise DependencyError(f"--preview needs matplotlib: {EXTRA_HINT}") from error
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
    from brats_cli.io import atomic_path

    with atomic_path(Path(path)) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
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
