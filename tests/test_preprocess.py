import numpy as np
import pytest

from brats_cli.io import BRATS_SHAPE
from brats_cli.preprocess import MODEL_GRID, crop_to_model_grid, normalise, uncrop_from_model_grid


def test_crop_pad_round_trip_is_exact_inside_the_crop():
    rng = np.random.default_rng(0)
    volume = np.zeros((2, *BRATS_SHAPE), dtype=np.float32)
    volume[:, 24:216, 24:216, :] = rng.normal(size=(2, 192, 192, 155))
    grid = crop_to_model_grid(volume)
    assert grid.shape == (2, *MODEL_GRID)
    assert np.all(grid[..., 155:] == 0)  # five zero slices appended
    assert np.array_equal(uncrop_from_model_grid(grid), volume)


def test_crop_takes_voxels_24_to_216():
    volume = np.zeros(BRATS_SHAPE, dtype=np.int16)
    volume[24, 24, 0] = 7
    volume[215, 215, 154] = 9
    volume[23, 100, 10] = 5  # outside the crop
    grid = crop_to_model_grid(volume)
    assert grid[0, 0, 0] == 7 and grid[191, 191, 154] == 9
    assert grid.sum() == 16


def test_crop_refuses_other_shapes():
    with pytest.raises(ValueError, match="240"):
        crop_to_model_grid(np.zeros((4, 200, 240, 155)))


def test_normalise_is_zero_mean_unit_variance_over_brain_and_keeps_background_zero():
    rng = np.random.default_rng(1)
    image = np.zeros((2, 20, 20, 20), dtype=np.float32)
    image[0, 5:15, 5:15, 5:15] = rng.normal(500, 80, (10, 10, 10))
    image[1, 2:8, 2:8, 2:8] = 3.0  # constant brain intensity: zero-mean, no division by zero
    out = normalise(image)
    brain = image[0] != 0
    assert out.dtype == np.float32
    assert abs(out[0][brain].mean()) < 1e-5
    assert abs(out[0][brain].std() - 1) < 1e-4
    assert np.all(out[0][~brain] == 0)
    assert np.all(out[1] == 0)
