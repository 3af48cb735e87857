import numpy as np

from brats_cli.localise import bounding_box, largest_component, localise_windows
from brats_cli.preprocess import MODEL_GRID

WINDOW = (128, 128, 128)


def test_largest_component_keeps_only_the_biggest_blob():
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[2:10, 2:10, 2:10] = True  # 512 voxels
    mask[20:23, 20:23, 20:23] = True  # 27 voxels
    mask[15, 15, 15] = True
    kept = largest_component(mask)
    assert kept.sum() == 512 and kept[5, 5, 5] and not kept[21, 21, 21]
    assert not largest_component(np.zeros((4, 4, 4), dtype=bool)).any()


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
