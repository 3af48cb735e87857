"""Smooth random fields, blurred masks and rotations: the numerical pieces every part of a phantom
is drawn with."""

from __future__ import annotations

import numpy as np


def rotation(angles: np.ndarray) -> np.ndarray:
    """The 3x3 rotation by `angles` (radians) about x, then y, then z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def spline_matrix(size: int, scale: float) -> np.ndarray:
    """(size, coarse) cubic B-spline weights that upsample `coarse` random knots `scale` apart."""
    coarse = int(np.ceil(size / scale)) + 4
    distance = np.arange(size)[:, None] / scale + 2.0 - np.arange(coarse)[None, :]
    t = np.abs(distance)
    weights = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    return weights.astype(np.float32)


def separable(knots: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Apply one (fine, coarse) matrix along each axis of `knots`."""
    field = knots.astype(np.float32)
    for axis, matrix in enumerate(matrices):
        field = np.moveaxis(np.tensordot(matrix, field, axes=([1], [axis])), 0, axis)
    return field


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features ~`scale` voxels across: random knots
    smoothed by a separable cubic B-spline (three small matrix products, fast for any box)."""
    matrices = [spline_matrix(size, scale) for size in shape]
    field = separable(rng.standard_normal([m.shape[1] for m in matrices]), matrices)
    field = field - field.mean()
    return field / (field.std() + 1e-6)


def blur(mask: np.ndarray, sigma: float) -> np.ndarray | None:
    """Gaussian-blurred float copy of a sparse mask, computed in its bounding box only; None when
    the mask is empty."""
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
