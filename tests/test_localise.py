import numpy as np

from brats_cli.localise import bounding_box, localise_windows, tumour_component
from brats_cli.preprocess import MODEL_GRID

WINDOW = (128, 128, 128)


def test_without_probabilities_the_largest_component_is_kept():
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[2:10, 2:10, 2:10] = True  # 512 voxels
    mask[20:23, 20:23, 20:23] = True  # 27 voxels
    mask[15, 15, 15] = True
    kept = tumour_component(mask)
    assert kept.sum() == 512 and kept[5, 5, 5] and not kept[21, 21, 21]
    assert not tumour_component(np.zeros((4, 4, 4), dtype=bool)).any()


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
    kept = tumour_component(mask, probability)
    assert kept.sum() == 1000 and kept[30, 30, 30]
    # With no confident voxel anywhere the rule is the largest component again.
    kept = tumour_component(mask, np.minimum(probability, 0.9))
    assert kept.sum() == 1728


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
