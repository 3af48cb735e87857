"""The metrics against medpy (what the BraTS 2021 platform used) on every pair of the real
segmentations, against hand-built edge cases, and the 2023 lesion-wise rules on known answers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from medpy.metric import binary as medpy

from brats_cli.io import read_label_map
from brats_cli.labels import REGIONS, LabelConvention, Region, region_masks
from brats_cli.metrics import (
    MISSING_HD95,
    ONE_EMPTY_HD95,
    EmptyMaskRules,
    dice,
    hd95,
    lesion_wise,
    region_scores,
    sensitivity,
    specificity,
    surface_distances,
)

SEGMENTATION_FOLDERS = ("TCGA-DU-7294/segmentation", "fets-labelfusion")
# Representative pairs for the default run (medpy's whole-volume HD95 takes about 2 s a call):
# an ET found by one algorithm only, an ET empty in both, stray labels 3/5/6 in an int32 file
# against an int64 one. Every pair runs under -m slow.
DEFAULT_PAIRS = (
    ("TCGA-DU-7294/segmentation", "hnfnetv1-20", "mav"),
    ("TCGA-DU-7294/segmentation", "isen-20", "scan-20"),
    ("fets-labelfusion", "baseline_simple", "resunet"),
)


def _all_pairs() -> list[tuple[str, str, str]]:
    from conftest import REAL_DATA

    pairs = []
    for folder in SEGMENTATION_FOLDERS:
        names = sorted(nifti.name.removesuffix(".nii.gz") for nifti in (REAL_DATA / folder).glob("*.nii.gz"))
        pairs += [(folder, a, b) for a, b in itertools.combinations(names, 2)]
    return pairs


_CACHE: dict[Path, dict] = {}


def _regions(path: Path) -> dict:
    if path not in _CACHE:
        labels, _ = read_label_map(path)
        _CACHE[path] = region_masks(labels, LabelConvention.BRATS2021)
    return _CACHE[path]


def _compare_counts_with_medpy(prediction: np.ndarray, reference: np.ndarray) -> None:
    """Dice, sensitivity, specificity; where medpy divides by zero (both empty: it returns 0; an
    empty reference: NaN sensitivity), the BraTS rule instead."""
    if not prediction.any() and not reference.any():
        assert dice(prediction, reference) == 1.0
        assert sensitivity(prediction, reference) == 1.0
        assert specificity(prediction, reference) == 1.0
        return
    assert dice(prediction, reference) == pytest.approx(medpy.dc(prediction, reference), abs=1e-9)
    assert specificity(prediction, reference) == pytest.approx(medpy.specificity(prediction, reference), abs=1e-9)
    if reference.any():
        assert sensitivity(prediction, reference) == pytest.approx(medpy.sensitivity(prediction, reference), abs=1e-9)
    else:
        # medpy's TP / (TP + FN) is 0/0 = NaN here; BraTS scores a prediction on an empty region 0.
        assert sensitivity(prediction, reference) == 0.0


def _compare_hd95_with_medpy(prediction: np.ndarray, reference: np.ndarray) -> None:
    """HD95 both ways against one medpy call (it is symmetric, and medpy's costs seconds);
    where medpy raises for an empty mask, the BraTS rule instead."""
    if prediction.any() and reference.any():
        expected = medpy.hd95(prediction, reference)
        assert hd95(prediction, reference) == pytest.approx(expected, abs=1e-6)
        assert hd95(reference, prediction) == pytest.approx(expected, abs=1e-6)
    elif prediction.any() or reference.any():
        with pytest.raises(RuntimeError):
            medpy.hd95(prediction, reference)
        assert hd95(prediction, reference) == hd95(reference, prediction) == ONE_EMPTY_HD95
    else:
        assert hd95(prediction, reference) == 0.0


def _compare_with_medpy(prediction: np.ndarray, reference: np.ndarray) -> None:
    _compare_counts_with_medpy(prediction, reference)
    _compare_counts_with_medpy(reference, prediction)
    _compare_hd95_with_medpy(prediction, reference)


def _check_pair(real_data: Path, folder: str, first: str, second: str) -> None:
    a = _regions(real_data / folder / f"{first}.nii.gz")
    b = _regions(real_data / folder / f"{second}.nii.gz")
    for region in REGIONS:
        _compare_with_medpy(a[region], b[region])


@pytest.mark.parametrize(("folder", "first", "second"), DEFAULT_PAIRS)
def test_real_pairs_match_medpy(real_data, folder, first, second):
    _check_pair(real_data, folder, first, second)


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "first", "second"), _all_pairs())
def test_every_real_pair_matches_medpy(real_data, folder, first, second):
    _check_pair(real_data, folder, first, second)


def test_real_data_holds_the_edge_cases_the_comparison_claims(real_data):
    """The pairs above do cover an empty ET reference and a one-sided ET."""
    mav = _regions(real_data / "TCGA-DU-7294/segmentation/mav.nii.gz")
    hnfnet = _regions(real_data / "TCGA-DU-7294/segmentation/hnfnetv1-20.nii.gz")
    assert not mav[Region.ET].any()
    assert hnfnet[Region.ET].any()


# ---------------------------------------------------------------------------------------------
# Hand-built cases


def _box(shape=(24, 24, 20), corner=(5, 5, 5), size=(6, 6, 6)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = True
    return mask


def test_both_empty_scores_perfect():
    empty = np.zeros((10, 10, 10), dtype=bool)
    scores = region_scores(empty, empty)
    assert (scores.dice, scores.hd95, scores.sensitivity, scores.specificity) == (1.0, 0.0, 1.0, 1.0)


def test_one_empty_mask():
    empty, mask = np.zeros((10, 10, 10), dtype=bool), _box((10, 10, 10), (2, 2, 2), (3, 3, 3))
    assert hd95(empty, mask) == hd95(mask, empty) == ONE_EMPTY_HD95
    assert dice(empty, mask) == dice(mask, empty) == 0.0
    assert sensitivity(empty, mask) == 0.0  # nothing found
    assert specificity(empty, mask) == 1.0
    assert sensitivity(mask, empty) == 0.0  # ground truth empty, prediction not: BraTS rule
    assert specificity(mask, empty) == pytest.approx(1 - 27 / 1000)


def test_empty_mask_rules_are_arguments():
    empty = np.zeros((5, 5, 5), dtype=bool)
    rules = EmptyMaskRules(both_empty_dice=0.0, both_empty_hd95=np.nan)
    assert dice(empty, empty, rules=rules) == 0.0
    assert np.isnan(hd95(empty, empty, rules=rules))


def test_single_voxels_at_known_distance():
    a = np.zeros((20, 20, 20), dtype=bool)
    b = a.copy()
    a[3, 4, 5] = True
    b[6, 8, 5] = True
    assert hd95(a, b) == 5.0 == medpy.hd95(a, b)
    assert hd95(a, a) == 0.0
    assert dice(a, b) == 0.0


@pytest.mark.parametrize(
    "corner",
    [(0, 0, 0), (18, 18, 14), (0, 9, 14)],
    ids=["low-corner", "high-corner", "two-faces"],
)
def test_masks_touching_the_volume_border_match_medpy(corner):
    # A mask touching the border has surface there (erosion counts outside as background); the
    # cropped distance transform must reproduce that.
    reference = _box(corner=corner, size=(6, 6, 6))
    rng = np.random.default_rng(1)
    prediction = reference.copy()
    prediction[rng.random(prediction.shape) < 0.2] = False
    prediction |= _box(corner=(8, 8, 8), size=(3, 2, 4))
    for a, b in ((prediction, reference), (reference, prediction)):
        assert hd95(a, b) == pytest.approx(medpy.hd95(a, b), abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_random_blobs_match_medpy(seed):
    rng = np.random.default_rng(seed)
    shape = (30, 26, 22)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.random(shape), 2)
    prediction = noise > np.quantile(noise, 0.85)
    reference = ndimage.gaussian_filter(rng.random(shape), 2) > np.quantile(noise, 0.8)
    _compare_with_medpy(prediction, reference)


def test_surface_distances_are_medpys_directed_sets():
    reference = _box(corner=(2, 3, 4), size=(7, 5, 6))
    prediction = _box(corner=(5, 6, 3), size=(9, 4, 5))
    to_reference, to_prediction = surface_distances(prediction, reference)
    pooled = np.sort(np.concatenate((to_reference, to_prediction)))
    medpy_directed = (
        medpy.__dict__["__surface_distances"](prediction, reference),
        medpy.__dict__["__surface_distances"](reference, prediction),
    )
    np.testing.assert_array_equal(pooled, np.sort(np.concatenate(medpy_directed)))


def test_metrics_refuse_non_boolean_or_mismatched_masks():
    with pytest.raises(TypeError):
        dice(np.zeros((3, 3, 3), dtype=np.uint8), np.zeros((3, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        hd95(np.zeros((3, 3, 3), dtype=bool), np.zeros((3, 3, 4), dtype=bool))


# ---------------------------------------------------------------------------------------------
# BraTS 2023 lesion-wise

SHAPE = (48, 40, 40)


def _cube(corner, size=4) -> np.ndarray:
    return _box(SHAPE, corner, (size, size, size))  # 4^3 = 64 voxels: above the 50-voxel cut


def test_lesion_wise_two_lesions_one_found():
    a, b = _cube((4, 4, 4)), _cube((30, 25, 25))
    scores = lesion_wise(a, a | b)
    assert (scores.dice, scores.hd95) == (0.5, (0.0 + MISSING_HD95) / 2)
    assert (scores.true_positive_lesions, scores.false_negative_lesions, scores.false_positive_components) == (1, 1, 0)


def test_lesion_wise_partial_overlap_uses_lesion_dice_and_hd95():
    a, b = _cube((4, 4, 4)), _cube((30, 25, 25))
    shifted = _cube((5, 4, 4))  # overlap 48 of 64: Dice 0.75
    scores = lesion_wise(shifted | b, a | b)
    assert scores.dice == pytest.approx((0.75 + 1.0) / 2)
    assert scores.hd95 == pytest.approx((medpy.hd95(shifted, a) + 0.0) / 2)


def test_lesion_wise_false_positive_component():
    a = _cube((4, 4, 4))
    stray = _cube((35, 30, 30), size=2)  # 8 voxels, far from every lesion
    scores = lesion_wise(a | stray, a)
    assert (scores.dice, scores.hd95) == (0.5, MISSING_HD95 / 2)
    assert scores.false_positive_components == 1


def test_lesion_wise_ignores_lesions_of_50_voxels_or_fewer():
    a = _cube((4, 4, 4))
    small = _box(SHAPE, (30, 25, 25), (5, 5, 2))  # 50 voxels: ignored
    missed = lesion_wise(a, a | small)
    assert (missed.dice, missed.hd95, missed.false_negative_lesions) == (1.0, 0.0, 0)
    # A prediction on an ignored lesion is not a false positive either.
    touched = lesion_wise(a | small, a | small)
    assert (touched.dice, touched.hd95, touched.false_positive_components) == (1.0, 0.0, 0)


def test_lesion_wise_lesion_of_51_voxels_counts():
    a = _cube((4, 4, 4))
    line = _box(SHAPE, (3, 20, 30), (3, 17, 1))  # 51 voxels, far from a
    scores = lesion_wise(a, a | line)
    assert (scores.dice, scores.false_negative_lesions) == (0.5, 1)


def test_lesion_wise_nearby_lesions_merge_after_dilation():
    # Two cubes 2 voxels apart become one lesion after 3 dilations; a prediction of one of them
    # is one partly found lesion, not one found and one missed.
    a, b = _cube((4, 4, 4)), _cube((10, 4, 4))
    scores = lesion_wise(a, a | b)
    assert scores.true_positive_lesions == 1 and scores.false_negative_lesions == 0
    assert scores.dice == pytest.approx(2 * 64 / (64 + 128))


def test_lesion_wise_prediction_touching_the_dilated_lesion_is_matched():
    a = _cube((4, 4, 4))
    near = _cube((10, 4, 4))  # gap of 2 voxels: inside the 3-voxel dilation, no overlap
    scores = lesion_wise(near, a)
    assert (scores.true_positive_lesions, scores.false_positive_components) == (1, 0)
    assert scores.dice == 0.0
    assert scores.hd95 == pytest.approx(medpy.hd95(near, a))


def test_lesion_wise_empty_masks():
    empty = np.zeros(SHAPE, dtype=bool)
    a = _cube((4, 4, 4))
    assert (lesion_wise(empty, empty).dice, lesion_wise(empty, empty).hd95) == (1.0, 0.0)
    assert (lesion_wise(a, empty).dice, lesion_wise(a, empty).hd95) == (0.0, MISSING_HD95)
    assert (lesion_wise(empty, a).dice, lesion_wise(empty, a).hd95) == (0.0, MISSING_HD95)
