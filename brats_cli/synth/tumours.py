"""A phantom's tumours: where the lesions lie and what they are made of (`Lesion`), their regions
drawn as roughened ellipsoids or taken from a placed real outline (`shapes.PlacedShape`), the
partial-volume fractions the rendering reads and the label map the regions give."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brats_cli.io import BRATS_SHAPE, Naming
from brats_cli.labels import EDEMA, NECROSIS, LabelConvention
from brats_cli.synth.anatomy import Anatomy, Placement, WarpedBrain
from brats_cli.synth.fields import blur, rotation, smooth_noise
from brats_cli.synth.shapes import PlacedShape
from brats_cli.synth.tissues import TUMOUR, Tissue

# Share of lesions whose core does not enhance (lower-grade looking). Of the enhancing ones, about
# one in four is solid (enhancing throughout, no necrosis): 20% of all lesions at the default share.
NON_ENHANCING_SHARE = 0.15
SOLID_SHARE = 0.20 / (1 - NON_ENHANCING_SHARE)
# Below this share of necrosis in its core, an outline's core counts as solid, and a lesion drawn
# with necrosis is hollowed out (the FeTS label-fusion case: 1-2 %).
OWN_NECROSIS = 0.05


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
    """The main lesion on a tumour site and, in ~15 % of cases, a satellite near it. `generator`:
    the lesion style, 1, 2 (more edema, thicker rims) or 3 (low-grade non-enhancing cores)."""
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


@dataclass
class TumourMaps:
    """Hard region masks (for labels) and soft class fractions (for intensities), full grid."""

    necrosis: np.ndarray
    enhancing: np.ndarray
    edema: np.ndarray
    non_enhancing: np.ndarray
    soft: dict[Tissue, np.ndarray | None]  # None: the tissue is absent from this tumour
    heterogeneity: np.ndarray

    @property
    def envelope(self) -> np.ndarray:
        """The whole tumour."""
        return self.edema | self.necrosis | self.enhancing | self.non_enhancing


# One lesion's box in the output grid and its necrosis, enhancing, non-enhancing and edema masks in it.
Regions = tuple[tuple[slice, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _drawn_regions(rng: np.random.Generator, lesion: Lesion, brain: WarpedBrain, generator: int) -> Regions:
    """A drawn lesion's regions: a roughened ellipsoid core, its rim and necrosis, and edema
    (`_drawn_edema`). Generator 2 makes the rim uneven: nodular, thin in places."""
    reach = lesion.edema_radius * 1.5 + 4
    low = np.maximum(np.floor(lesion.centre - reach).astype(int), 0)
    high = np.minimum(np.ceil(lesion.centre + reach).astype(int) + 1, BRATS_SHAPE)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    box_shape = tuple(int(b - a) for a, b in zip(low, high, strict=True))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high, strict=True)], indexing="ij"), -1)
    # An ellipsoid of random orientation and axis ratios, roughened by smooth noise.
    axes = rotation(rng.uniform(-np.pi, np.pi, 3)) * rng.uniform(0.75, 1.3, 3)
    offset = (grid - lesion.centre) @ axes
    radius = np.linalg.norm(offset, axis=-1)
    core_noise = smooth_noise(rng, box_shape, max(2.5, lesion.core_radius / 2.5))
    core_fine = smooth_noise(rng, box_shape, 2.0)
    core_level = radius / lesion.core_radius + 0.28 * core_noise + 0.06 * core_fine
    core = core_level < 1.0
    if not core.any():
        core = radius <= 2.0
    if lesion.necrosis and lesion.enhancing:
        rim_noise = smooth_noise(rng, box_shape, 4.0)
        if generator != 2:
            rim = (lesion.rim_mm / lesion.core_radius) * (1.0 + 0.35 * rim_noise)
        else:
            # Log-normal thickness along the surface: 0.4-2.7x the mean for 90 % of it, so the
            # wall is thin in places and nodular, bulging into the necrosis, in others.
            rim = (lesion.rim_mm / lesion.core_radius) * np.exp(0.6 * rim_noise)
        necrosis = core & (core_level < 1.0 - rim)
    else:
        necrosis = np.zeros(box_shape, bool)
    enhancing = core & ~necrosis if lesion.enhancing else np.zeros(box_shape, bool)
    non_enhancing = np.zeros(box_shape, bool) if lesion.enhancing else core
    edema = _drawn_edema(rng, lesion, core, radius, box, brain, generator)
    return box, necrosis, enhancing, non_enhancing, edema


def _drawn_edema(
    rng: np.random.Generator,
    lesion: Lesion,
    core: np.ndarray,
    radius: np.ndarray,
    box: tuple[slice, ...],
    brain: WarpedBrain,
    generator: int,
) -> np.ndarray:
    """Edema around a drawn core (`radius`: the ellipsoid's radius at each box voxel). It spreads
    through white matter and spares cortex and CSF: its reach shrinks with the local white-matter
    fraction, which gives the finger-like outline of vasogenic edema. Generator 2 grows it as a
    front instead (`grow_edema`)."""
    from scipy import ndimage

    wm_box, gm_box = brain.white[box], brain.grey[box]
    csf_box = brain.brain_soft[box] - wm_box - gm_box
    if generator == 2:
        seed = ndimage.binary_dilation(core, iterations=2)
        extent = lesion.edema_radius - lesion.core_radius
        return grow_edema(rng, seed, wm_box, gm_box, csf_box, brain.brain_soft[box] > 0.5, extent)
    edema_noise = smooth_noise(rng, core.shape, max(3.0, lesion.edema_radius / 3.0))
    edema_level = radius / lesion.edema_radius + 0.3 * edema_noise
    reach_factor = 0.35 + 0.75 * np.clip(wm_box / 0.8, 0, 1) + 0.2 * np.clip(gm_box / 0.8, 0, 1)
    return ((edema_level < reach_factor) & (csf_box < 0.5)) | ndimage.binary_dilation(core, iterations=2)


def grow_edema(
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

    speed = np.clip(1.3 * white + 0.2 * grey, 0.0, 1.0) * np.exp(0.4 * smooth_noise(rng, seed.shape, 5.0))
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


def shaped_regions(lesion: Lesion, shaped: PlacedShape, brain: WarpedBrain) -> Regions:
    """The first lesion's regions from a placed real outline. The lesion's draw decides what the
    core is: a low-grade core (no enhancement) or the outline's own enhancing and necrotic parts,
    hollowed out deeper than its rim when the draw has necrosis and the outline has little of its
    own (under OWN_NECROSIS of its core). Edema spares CSF, as a drawn lesion's does."""
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
    csf = brain.brain_soft[box] - brain.white[box] - brain.grey[box]
    edema = shaped.whole & ~core & (csf < 0.5)
    return box, necrosis, enhancing, non_enhancing, edema


def draw_tumours(
    rng: np.random.Generator,
    lesions: list[Lesion],
    brain: WarpedBrain,
    generator: int = 1,
    shaped: PlacedShape | None = None,
) -> TumourMaps:
    """Tumour masks and fractions, inside the brain. `generator`: the lesion style (1, 2, or 3
    and 4, whose low-grade cores blend into their edema); `shaped` (generator 4): the first
    lesion's regions, placed from a real label map."""
    # The order of the classes is the order the rendering adds their signal in.
    masks = {tissue: np.zeros(BRATS_SHAPE, bool) for tissue in TUMOUR}
    heterogeneity = np.zeros(BRATS_SHAPE, np.float32)
    for number, lesion in enumerate(lesions):
        if number == 0 and shaped is not None:
            regions = shaped_regions(lesion, shaped, brain)
        else:
            regions = _drawn_regions(rng, lesion, brain, generator)
        box, necrosis, enhancing, non_enhancing, edema = regions
        inside = brain.brain_soft[box] > 0.5
        masks[Tissue.NECROSIS][box] |= necrosis & inside
        masks[Tissue.ENHANCING][box] |= enhancing & inside
        masks[Tissue.NON_ENHANCING][box] |= non_enhancing & inside
        masks[Tissue.EDEMA][box] |= edema & inside
        heterogeneity[box] = smooth_noise(rng, edema.shape, 3.0)
    necrosis, enhancing = masks[Tissue.NECROSIS], masks[Tissue.ENHANCING]
    edema, non_enhancing = masks[Tissue.EDEMA], masks[Tissue.NON_ENHANCING]
    # Nesting as in the released data: ET and NCR are the core, edema the rest of the envelope.
    # A satellite's core wins over its neighbour's edema; necrosis over another lesion's rim.
    enhancing &= ~(necrosis | non_enhancing)
    necrosis &= ~non_enhancing
    edema &= ~(necrosis | enhancing | non_enhancing)
    # Partial volume at the region borders: the soft fraction is the blurred hard mask.
    soft = {tissue: blur(mask, 0.6) for tissue, mask in masks.items()}
    maps = TumourMaps(necrosis, enhancing, edema, non_enhancing, soft, heterogeneity)
    low_grade = [lesion for lesion in lesions if not lesion.enhancing]
    if generator in (3, 4) and low_grade and non_enhancing.any():
        widest = max(low_grade, key=lambda lesion: lesion.margin_mm)
        blend_margin(soft, non_enhancing, maps.envelope, widest.margin_mm, widest.margin_level)
    return maps


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


def blend_margin(
    soft: dict[Tissue, np.ndarray | None], core: np.ndarray, envelope: np.ndarray, margin: float, level: float = 0.5
) -> None:
    """Generator 3: the non-enhancing core fades into the edema over `margin` mm (Gaussian sigma)
    instead of 0.6, its fraction `level` on the label boundary: inside the boundary the core
    fraction falls below 1 and edema takes the rest, outside it edema gives way to a tail of core,
    and nothing reaches past the whole-tumour envelope. Fractions still sum as before, so only the
    look of the boundary changes."""
    sharp, whole = blur(core, 0.6), blur(envelope, 0.6)
    assert sharp is not None and whole is not None  # core is not empty
    wide = np.minimum(_ramp(core, margin, level), whole)
    edema = soft[Tissue.EDEMA]
    if edema is None:
        edema = np.zeros_like(wide)
    soft[Tissue.EDEMA] = np.clip(edema + sharp - wide, 0.0, None)
    soft[Tissue.NON_ENHANCING] = wide


def label_map(tumours: TumourMaps, naming: Naming) -> np.ndarray:
    """The (240, 240, 155) uint8 labels of the tumours in the convention of `naming`."""
    convention = LabelConvention.of_naming(naming)
    labels = np.zeros(BRATS_SHAPE, np.uint8)
    labels[tumours.edema] = EDEMA
    labels[tumours.necrosis | tumours.non_enhancing] = NECROSIS
    labels[tumours.enhancing] = convention.enhancing
    return labels
