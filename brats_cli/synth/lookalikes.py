"""Generator 2's unlabelled look-alikes, what a real scan tempts a model with outside the tumour:
enhancing vessels and choroid plexus on T1ce, and periventricular white-matter hyperintensity on
FLAIR and T2. Each is drawn in the box the brain can reach, kept 3 mm clear of the tumour, and
takes its share of the signal from normal tissue only."""

from __future__ import annotations

import numpy as np

from brats_cli.synth.anatomy import MNI_ORIGIN, PROXIMITY_MM, Placement, WarpedBrain
from brats_cli.synth.fields import blur, smooth_noise
from brats_cli.synth.tissues import Tissue
from brats_cli.synth.tumours import TumourMaps


def add_lookalikes(
    rng: np.random.Generator,
    fractions: dict[Tissue, np.ndarray],
    brain: WarpedBrain,
    tumours: TumourMaps,
    placement: Placement,
) -> None:
    """Draw the look-alikes and add their fractions (at the brain voxels) to `fractions`: hyperintense
    white matter, plexus in the CSF, vessels out of whatever normal tissue they run through."""
    from scipy import ndimage

    box = brain.box
    envelope = tumours.envelope[box]
    exclude = ndimage.binary_dilation(envelope, iterations=3) if envelope.any() else envelope
    csf_box = np.clip(brain.brain_soft[box] - brain.grey[box] - brain.white[box], 0.0, None)
    assert brain.proximity is not None  # warped from template_image_v2
    proximity = brain.proximity[box]
    vessels = draw_vessels(rng, brain.mask[box], csf_box, exclude)[brain.inside_box]
    choroid = draw_choroid(rng, placement, proximity, csf_box, brain.low, exclude)[brain.inside_box]
    periventricular = draw_periventricular(rng, proximity, exclude)[brain.inside_box]
    fractions[Tissue.PERIVENTRICULAR] = periventricular * fractions[Tissue.WM]
    fractions[Tissue.WM] = fractions[Tissue.WM] - fractions[Tissue.PERIVENTRICULAR]
    fractions[Tissue.CHOROID] = choroid * fractions[Tissue.CSF]
    fractions[Tissue.CSF] = fractions[Tissue.CSF] - fractions[Tissue.CHOROID]
    normal_total = np.zeros(len(vessels), np.float32)
    for tissue in (Tissue.CSF, Tissue.GM, Tissue.WM, Tissue.PERIVENTRICULAR, Tissue.CHOROID):
        normal_total += fractions[tissue]
        fractions[tissue] = fractions[tissue] * (1.0 - vessels)
    fractions[Tissue.VESSEL] = vessels * normal_total


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
    x, y, z = (placement.to_template(voxels + low) - MNI_ORIGIN).T
    voxels = voxels[(np.abs(x) > 10) & (np.abs(x) < 35) & (y > -50) & (y < -15) & (z > 0) & (z < 28)]
    if not len(voxels):
        return fraction
    first, last = voxels.min(axis=0), voxels.max(axis=0) + 1
    noise = smooth_noise(rng, tuple(int(n) for n in last - first), 2.5)
    voxels = voxels[noise[tuple((voxels - first).T)] > level]
    mask = np.zeros(proximity.shape, bool)
    mask[tuple(voxels.T)] = True
    soft = blur(mask, 0.7)
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
    reach = width * np.exp(0.45 * smooth_noise(rng, proximity.shape, 8.0))
    share = np.clip((reach - distance) / 2.0 + 0.5, 0.0, 1.0) * strength
    return np.where((distance > 0.5) & ~exclude, share, 0.0).astype(np.float32)
