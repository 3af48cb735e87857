"""How a phantom's four channels are acquired from its tissue fractions: class contrast, texture,
a smooth bias field, Rician noise and the intensity scale, and for generator 2 per channel random
contrast, gamma, thick slices and a sub-voxel shift (`Acquisition`, after SynthSeg, Billot et al.
2023). Every brain voxel comes out nonzero and everything else exactly 0, as in skull-stripped
BraTS images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brats_cli.io import BRATS_SHAPE, CHANNEL_ORDER, Modality
from brats_cli.synth.anatomy import WarpedBrain
from brats_cli.synth.fields import smooth_noise
from brats_cli.synth.tissues import CONTRAST_V2, TUMOUR, Levels, Tissue

# Spread (std of the log) of each class mean around CONTRAST, per case and channel. At 0.3 the
# 90 % range is 0.61-1.64x: T1 grey matter comes out brighter than white matter in ~23 % of
# channels, T2 grey matter brighter than CSF in ~7 %. The orderings hold on average only; what
# defines a label (`_floor_levels`) is kept.
LEVEL_SPREAD = 0.3
# Thick slices: share of channels (FLAIR, T1, T1ce, T2; FLAIR and T2 are the ones most often
# acquired as 2D multi-slice stacks), thickness in mm (whole voxels) and the share per axis.
THICK_SHARE = (0.5, 0.3, 0.3, 0.5)
THICK_MM = (2, 6)
THICK_AXIS_SHARE = (0.25, 0.25, 0.5)  # x, y, z: axial stacks are the commonest
SHIFT_SHARE = 0.5  # channels shifted against the labels, by up to SHIFT_VOXELS along each axis
SHIFT_VOXELS = 1.0
INT16_PEAK = 30000.0  # generator 2 scales a brighter channel down to this


def bias_field(rng: np.random.Generator, strength: float, voxels: tuple[np.ndarray, ...]) -> np.ndarray:
    """Smooth multiplicative field at `voxels`: a product of low-order cosine series per axis, the
    coefficients' std `strength` (the first order; half that for the second)."""
    log_field = np.zeros(len(voxels[0]), np.float32)
    for axis, size in enumerate(BRATS_SHAPE):
        t = np.linspace(0, np.pi, size)
        profile = np.zeros(size)
        for order in (1, 2):
            profile += rng.normal(0, strength / order) * np.cos(order * t + rng.uniform(0, np.pi))
        log_field += profile.astype(np.float32)[voxels[axis]]
    return np.exp(log_field)


def _brain_values(values: np.ndarray) -> np.ndarray:
    # Every brain voxel stays nonzero, so the brain mask is exactly the nonzero voxels.
    return np.clip(np.rint(values), 1, np.iinfo(np.int16).max).astype(np.int16)


def render_fixed(
    rng: np.random.Generator,
    fractions: dict[Tissue, np.ndarray],
    contrast: dict[Tissue, Levels],
    tumour_texture: np.ndarray,
    brain: WarpedBrain,
) -> np.ndarray:
    """Generators 1, 3 and 4: (4, 240, 240, 155) int16 from the fractions at the brain voxels, each
    class at its `contrast` level with a small per-case jitter and a texture (`tumour_texture` in
    the tumour, a faint anatomical one elsewhere), then a bias field, Rician noise and a scale."""
    inside = brain.inside
    # Normal tissue is not uniform either: a faint anatomical texture shared by all sequences.
    anatomy_texture = smooth_noise(rng, brain.box_shape, 5.0)[brain.inside_box]
    image = np.zeros((len(CHANNEL_ORDER), *BRATS_SHAPE), np.int16)
    for channel in range(len(CHANNEL_ORDER)):
        signal = np.zeros(len(inside[0]), np.float32)
        for tissue, fraction in fractions.items():
            # Per-case contrast jitter, small enough that the tissue order of each sequence holds.
            level: float | np.ndarray = contrast[tissue][channel] * rng.uniform(0.95, 1.05)
            level = level * (1.0 + (0.1 * tumour_texture if tissue in TUMOUR else 0.03 * anatomy_texture))
            signal += fraction * level
        white_level = float(np.exp(rng.uniform(np.log(250.0), np.log(2500.0))))
        signal *= white_level * bias_field(rng, 0.08, inside)
        # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
        sigma = white_level * rng.uniform(0.01, 0.025)
        real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
        imaginary = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
        image[channel][inside] = _brain_values(np.sqrt(real * real + imaginary * imaginary))
    return image


# ---------------------------------------------------------------------------------------------
# Generator 2: a random acquisition per case and channel


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


def _draw_channel(rng: np.random.Generator, channel: int) -> Acquisition:
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
    return Acquisition(
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


def draw_acquisition(rng: np.random.Generator) -> tuple[Acquisition, ...]:
    """The rendering of the four channels (FLAIR, T1, T1ce, T2), drawn in a fixed order."""
    return tuple(_draw_channel(rng, channel) for channel in range(len(CHANNEL_ORDER)))


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
    brain: WarpedBrain,
) -> np.ndarray:
    """int16 values at the brain voxels of one channel: the Gaussian mixture, gamma, bias field and
    Rician noise in the box, then thick slices and the shift, then the brain mask."""
    from scipy import ndimage

    inside, inside_box, box_shape = brain.inside, brain.inside_box, brain.box_shape
    own = smooth_noise(rng, box_shape, acquisition.texture_mm)[inside_box]
    normal_texture = (textures[0] + own) / np.sqrt(2.0)
    signal = np.zeros(len(inside[0]), np.float32)
    for tissue, fraction in fractions.items():
        texture = textures[1] if tissue in TUMOUR else normal_texture
        signal += fraction * acquisition.levels[tissue] * (1.0 + acquisition.spread[tissue] * texture)
    signal = (np.maximum(signal, 1e-3) ** acquisition.gamma).astype(np.float32)
    signal *= bias_field(rng, acquisition.bias, inside)
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
    if peak > INT16_PEAK:
        values *= INT16_PEAK / peak
    return _brain_values(values)


def render_randomised(
    rng: np.random.Generator,
    acquisition: tuple[Acquisition, ...],
    fractions: dict[Tissue, np.ndarray],
    tumour_texture: np.ndarray,
    brain: WarpedBrain,
) -> np.ndarray:
    """Generator 2: (4, 240, 240, 155) int16, each channel rendered as its `acquisition` says, over
    a tissue texture the channels share (and each one's own) and the tumour's `tumour_texture`."""
    shared = smooth_noise(rng, brain.box_shape, 5.0)[brain.inside_box]
    textures = (shared, tumour_texture)
    image = np.zeros((len(CHANNEL_ORDER), *BRATS_SHAPE), np.int16)
    for channel, settings in enumerate(acquisition):
        image[channel][brain.inside] = _render_channel(rng, settings, fractions, textures, brain)
    return image
