"""Paper section 2.1: crop 240x240x155 to the model grid 192x192x160 and normalise; and the exact
inverse that puts model-grid arrays back into BraTS space."""

from __future__ import annotations

import numpy as np

from brats_cli.io import BRATS_SHAPE

MODEL_GRID: tuple[int, int, int] = (192, 192, 160)
# x and y lose 24 voxels on each side (empty border around the brain in SRI24).
CROP_START: tuple[int, int] = (24, 24)


def crop_to_model_grid(volume: np.ndarray) -> np.ndarray:
    """(..., 240, 240, 155) -> (..., 192, 192, 160): centre crop in x and y, five zero slices
    appended at the top of z so every axis is a multiple of 8 (three 2x poolings)."""
    if volume.shape[-3:] != BRATS_SHAPE:
        raise ValueError(f"expected (..., {BRATS_SHAPE}), got {volume.shape}")
    x0, y0 = CROP_START
    cropped = volume[..., x0 : x0 + MODEL_GRID[0], y0 : y0 + MODEL_GRID[1], :]
    pad = [(0, 0)] * (volume.ndim - 1) + [(0, MODEL_GRID[2] - BRATS_SHAPE[2])]
    return np.pad(cropped, pad)


def uncrop_from_model_grid(grid: np.ndarray) -> np.ndarray:
    """Exact inverse of `crop_to_model_grid` for arrays that are zero outside the crop."""
    if grid.shape[-3:] != MODEL_GRID:
        raise ValueError(f"expected (..., {MODEL_GRID}), got {grid.shape}")
    x0, y0 = CROP_START
    full = np.zeros(grid.shape[:-3] + BRATS_SHAPE, dtype=grid.dtype)
    full[..., x0 : x0 + MODEL_GRID[0], y0 : y0 + MODEL_GRID[1], :] = grid[..., : BRATS_SHAPE[2]]
    return full


# Intensities further than OUTLIER_MARGIN times the 0.1-99.9 percentile range beyond that range
# are clipped to its edge before normalising: a few voxels of 1e30 would otherwise set the mean and
# variance of the whole channel. On the shared real cases the brightest voxel lies at most 1.2
# ranges beyond the 99.9th percentile (measured in bench/RESULTS.md, "Outlier clipping"), so normal
# scans are normalised exactly as before.
OUTLIER_MARGIN = 5.0
OUTLIER_PERCENTILES = (0.1, 99.9)


def intensity_bounds(values: np.ndarray) -> tuple[float, float]:
    """The range of plausible intensities of one channel's brain voxels (see OUTLIER_MARGIN)."""
    low, high = np.percentile(values, OUTLIER_PERCENTILES)
    spread = high - low
    return float(low - OUTLIER_MARGIN * spread), float(high + OUTLIER_MARGIN * spread)


def normalise(image: np.ndarray, clipped: list[int] | None = None) -> np.ndarray:
    """Per channel zero mean and unit variance over the nonzero (brain) voxels, after clipping
    outliers (OUTLIER_MARGIN); background stays 0. `clipped`, if given, receives each channel's
    number of clipped voxels.

    `image` is (C, X, Y, Z); returns float32. A channel with no brain voxels stays all zero, one
    with constant brain intensity becomes zero-mean (its variance is taken as 1)."""
    out = np.zeros(image.shape, dtype=np.float32)
    for channel, volume in enumerate(image):
        brain = volume != 0
        if clipped is not None:
            clipped.append(0)
        if not brain.any():
            continue
        values = volume[brain].astype(np.float64)
        low, high = intensity_bounds(values)
        if values.min() < low or values.max() > high:
            if clipped is not None:
                clipped[-1] = int(np.count_nonzero((values < low) | (values > high)))
            values = np.clip(values, low, high)
        mean = values.mean()
        std = values.std()
        out[channel][brain] = ((values - mean) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def preprocess(image: np.ndarray, clipped: list[int] | None = None) -> np.ndarray:
    """(4, 240, 240, 155) canonical image -> the (4, 192, 192, 160) normalised model input;
    `clipped` as in `normalise`."""
    return normalise(crop_to_model_grid(image), clipped)
