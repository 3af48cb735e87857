import numpy as np
import pytest
from scipy import ndimage

from brats_cli.localise import CONFIDENT, bounding_box, localise_windows, tumour_box
from brats_cli.preprocess import MODEL_GRID

WINDOW = (128, 128, 128)


def test_without_probabilities_the_largest_component_is_kept():
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[2:10, 2:10, 2:10] = True  # 512 voxels
    mask[20:23, 20:23, 20:23] = True  # 27 voxels
    mask[15, 15, 15] = True
    assert tumour_box(mask) == ((2, 10), (2, 10), (2, 10))
    assert tumour_box(np.zeros((4, 4, 4), dtype=bool)) is None


def test_a_large_unsure_false_positive_loses_to_a_confident_tumour():
    """The default bundle's failure on held-out phantoms: a false positive larger than the tumour
    but with few confident voxels."""
    mask = np.zeros((40, 40, 40), dtype=bool)
    probability = np.zeros(mask.shape, dtype=np.float32)
    mask[2:14, 2:14, 2:14] = True  # false positive, 1728 voxels at 0.9
    probability[2:14, 2:14, 2:14] = 0.9
    probability[2:5, 2:5, 2:5] = 0.99  # with a sure spot of 27
    mask[25:35, 25:35, 25:35] = True  # tumour, 1000 voxels at 0.99
    probability[25:35, 25:35, 25:35] = 0.99
    assert tumour_box(mask, probability) == ((25, 35), (25, 35), (25, 35))
    # With no confident voxel anywhere the rule is the largest component again.
    assert tumour_box(mask, np.minimum(probability, 0.9)) == ((2, 14), (2, 14), (2, 14))


def reference_box(mask: np.ndarray, probability: np.ndarray) -> tuple[tuple[int, int], ...]:
    """The same rule on the whole volume, one component at a time."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    scores = [
        (int((probability[labelled == k] > CONFIDENT).sum()), int((labelled == k).sum()), k)
        for k in range(1, count + 1)
    ]
    best = max(scores)[2]
    where = np.nonzero(labelled == best)
    return tuple((int(axis.min()), int(axis.max()) + 1) for axis in where)


@pytest.mark.parametrize("seed", range(5))
def test_the_box_is_the_one_labelling_the_whole_volume_gives(seed: int):
    # Scattered blobs anywhere in the model grid, some touching its faces: labelling only inside the
    # mask's own box must choose the same component and give its box in grid coordinates.
    rng = np.random.default_rng(seed)
    mask = np.zeros(MODEL_GRID, dtype=bool)
    probability = np.zeros(MODEL_GRID, dtype=np.float32)
    for _ in range(6):
        corner = [int(rng.integers(0, size - 4)) for size in MODEL_GRID]
        extent = [int(rng.integers(2, 30)) for _ in MODEL_GRID]
        blob = tuple(slice(c, c + e) for c, e in zip(corner, extent, strict=True))
        mask[blob] = True
        probability[blob] = rng.uniform(0.6, 1.0, size=probability[blob].shape)
    assert tumour_box(mask, probability) == reference_box(mask, probability)


def test_window_is_centred_on_the_tumour_and_clamped_inside_the_volume():
    assert bounding_box(np.zeros((5, 5, 5), dtype=bool)) is None
    mask = np.zeros(MODEL_GRID, dtype=bool)
    mask[90:110, 80:100, 70:90] = True
    (window,) = localise_windows(bounding_box(mask), MODEL_GRID, WINDOW)
    assert [(s.start, s.stop) for s in window] == [(36, 164), (26, 154), (16, 144)]
    corner = np.zeros(MODEL_GRID, dtype=bool)
    corner[0:10, 185:192, 150:160] = True
    (window,) = localise_windows(bounding_box(corner), MODEL_GRID, WINDOW)
    assert [(s.start, s.stop) for s in window] == [(0, 128), (64, 192), (32, 160)]


def test_a_tumour_larger_than_the_window_is_covered_by_overlapping_windows():
    mask = np.zeros(MODEL_GRID, dtype=bool)
    mask[10:180, 40:100, 5:155] = True  # 170 x 60 x 150 voxels
    windows = localise_windows(bounding_box(mask), MODEL_GRID, WINDOW)
    assert len(windows) == 2 * 1 * 2
    covered = np.zeros(MODEL_GRID, dtype=bool)
    for window in windows:
        for axis, size in zip(window, MODEL_GRID, strict=True):
            assert axis.stop - axis.start == 128 and axis.start >= 0 and axis.stop <= size
        covered[window] = True
    assert np.all(covered[mask])  # no tumour voxel is ever cut off
