import numpy as np
import pytest

from brats_cli.labels import (
    EDEMA,
    NECROSIS,
    LabelConvention,
    Region,
    apply_et_threshold,
    compose_labels,
    fill_core_holes,
    region_masks,
    unexpected_labels,
)


@pytest.mark.parametrize("convention, enhancing", [(LabelConvention.BRATS2021, 4), (LabelConvention.BRATS2023, 3)])
def test_compose_overwrites_in_paper_order_and_nests_regions(convention, enhancing):
    wt = np.array([1, 1, 1, 1, 0], dtype=bool)
    tc = np.array([0, 1, 1, 0, 1], dtype=bool)  # the last voxel is TC but not WT
    et = np.array([0, 0, 1, 0, 0], dtype=bool)
    labels = compose_labels(wt, tc, et, convention)
    assert labels.dtype == np.uint8
    assert labels.tolist() == [EDEMA, NECROSIS, enhancing, EDEMA, NECROSIS]
    masks = region_masks(labels, convention)
    # ET within TC within WT, whatever the region models predicted.
    assert np.all(masks[Region.ET] <= masks[Region.TC])
    assert np.all(masks[Region.TC] <= masks[Region.WT])


def test_region_masks_follow_the_convention_and_ignore_stray_labels():
    labels = np.array([0, 1, 2, 3, 4, 5])
    m21 = region_masks(labels, LabelConvention.BRATS2021)
    assert m21[Region.WT].tolist() == [0, 1, 1, 0, 1, 0]
    assert m21[Region.TC].tolist() == [0, 1, 0, 0, 1, 0]
    assert m21[Region.ET].tolist() == [0, 0, 0, 0, 1, 0]
    m23 = region_masks(labels, LabelConvention.BRATS2023)
    assert m23[Region.ET].tolist() == [0, 0, 0, 1, 0, 0]
    assert unexpected_labels(labels, LabelConvention.BRATS2021) == [3, 5]
    assert unexpected_labels(labels, LabelConvention.BRATS2023) == [4, 5]


def test_et_threshold_relabels_small_enhancing_as_necrosis():
    labels = np.zeros(1000, dtype=np.uint8)
    labels[:100] = EDEMA
    labels[100:110] = 4
    small = apply_et_threshold(labels, LabelConvention.BRATS2021, min_voxels=11)
    assert (small == 4).sum() == 0
    assert (small == NECROSIS).sum() == 10
    kept = apply_et_threshold(labels, LabelConvention.BRATS2021, min_voxels=10)
    assert (kept == 4).sum() == 10  # exactly N voxels is not "fewer than N"
    assert np.array_equal(apply_et_threshold(labels, LabelConvention.BRATS2021, 0), labels)


def test_remove_small_components_matches_scipy_on_random_maps():
    """26-connected components of the tumour (any label), each removed whole when smaller than the
    threshold unless it is the largest, labels inside the kept ones untouched; scipy.ndimage is the
    independent reference."""
    from scipy import ndimage

    from brats_cli.labels import remove_small_components

    rng = np.random.default_rng(7)
    labels = (rng.random((40, 36, 30)) > 0.93).astype(np.uint8) * rng.integers(1, 5, (40, 36, 30)).astype(np.uint8)
    labels[5:15, 5:15, 5:15] = 2  # the largest component: at least 1000 voxels
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum_labels(np.ones_like(components), components, index=range(1, count + 1))
    largest = 1 + int(np.argmax(sizes))
    assert components[10, 10, 10] == largest
    for min_voxels in (2, 5, 1000, 10**6):
        small = np.isin(components, [k for k in 1 + np.flatnonzero(sizes < min_voxels) if k != largest])
        expected = np.where(small, 0, labels)
        np.testing.assert_array_equal(remove_small_components(labels, min_voxels), expected)
    only_largest = remove_small_components(labels, 10**6)
    assert np.array_equal(only_largest > 0, components == largest)
    assert remove_small_components(labels, 0) is labels


def test_remove_small_components_joins_diagonal_neighbours_and_keeps_a_small_tumour():
    from brats_cli.labels import remove_small_components

    labels = np.zeros((5, 5, 5), dtype=np.uint8)
    labels[1, 1, 1], labels[2, 2, 2] = 4, 1  # corner-touching: one component of 2 voxels, the largest
    labels[4, 4, 0] = 2  # alone: 1 voxel
    cleaned = remove_small_components(labels, 600)
    assert cleaned[1, 1, 1] == 4 and cleaned[2, 2, 2] == 1 and cleaned[4, 4, 0] == 0
    assert cleaned.dtype == labels.dtype


@pytest.mark.parametrize("convention", list(LabelConvention))
def test_fill_core_holes_relabels_what_a_rim_encloses_and_nothing_else(convention):
    """A cavity inside an enhancing shell becomes necrosis (edema and background alike); edema
    outside the shell, the shell itself and a cavity that opens to the outside stay as they were."""
    grid = np.indices((60, 60, 60))
    radius = np.sqrt(((grid - 20) ** 2).sum(axis=0))
    labels = np.zeros((60, 60, 60), dtype=np.uint8)
    labels[radius < 12] = EDEMA
    labels[radius < 9] = convention.enhancing
    labels[radius < 6] = EDEMA  # the cystic cavity the models read as edema
    labels[20, 20, 20] = 0  # and a background voxel inside it
    # A second lesion: a tube of necrosis along x, slit open along its whole length, with edema inside.
    tube = np.hypot(grid[1] - 45, grid[2] - 45)
    labels[(tube < 5) & (grid[0] > 30) & (grid[0] < 58)] = NECROSIS
    labels[(tube < 3) & (grid[0] > 30) & (grid[0] < 58)] = EDEMA
    labels[(grid[1] >= 45) & (np.abs(grid[2] - 45) < 2) & (tube < 5) & (grid[0] > 30)] = EDEMA  # the slit
    filled = fill_core_holes(labels, convention)
    assert filled.dtype == labels.dtype
    assert np.all(filled[radius < 6] == NECROSIS)
    unchanged = radius >= 6
    assert np.array_equal(filled[unchanged], labels[unchanged])
    tube_alone = labels[:, 35:, 35:]  # open at both ends and along the slit: no slice encloses anything
    assert np.array_equal(fill_core_holes(tube_alone, convention), tube_alone)


def test_fill_core_holes_leaves_a_map_without_core_alone():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    assert fill_core_holes(labels, LabelConvention.BRATS2021) is labels
    labels[5:15, 5:15, 5:15] = EDEMA
    labels[9:11, 9:11, 9:11] = 0
    assert fill_core_holes(labels, LabelConvention.BRATS2021) is labels
