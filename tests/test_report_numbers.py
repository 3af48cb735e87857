"""The QA report's numbers on small synthetic arrays, each against a value computed another way:
volumes in ml, connected components, fold disagreement, entropy, outliers, slices, colours."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import synthetic_image
from scipy import ndimage

from brats_cli.bundle import Stage
from brats_cli.labels import LabelConvention
from brats_cli.pipeline import PipelineConfig, segment_image
from brats_cli.preprocess import preprocess
from brats_cli.quality import (
    QualityMeter,
    binary_entropy,
    coverage_border,
    disagreement_share,
    fold_agreement,
    neighbourhood,
)
from brats_cli.report import numbers
from brats_cli.report.figures import COLOURS, display_slice, overlay


def test_volumes_in_ml_count_each_label_and_region_at_the_voxel_size():
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # 8 NCR
    labels[5:8, 5:8, 5:8] = 2  # 27 ED
    labels[0:1, 9:10, 0:5] = 4  # 5 ET (2021)
    labels[9, 9, 9] = 3  # a stray label under 2021: background
    voxel_ml = 0.5 * 1.0 * 2.0 / 1000  # 0.5 x 1 x 2 mm voxels
    volumes = numbers.label_volumes_ml(labels, LabelConvention.BRATS2021, voxel_ml)
    assert volumes == pytest.approx({"NCR": 0.008, "ED": 0.027, "ET": 0.005, "TC": 0.013, "WT": 0.040})
    # Under 2023 the 3 is ET and the 4 is nothing.
    volumes = numbers.label_volumes_ml(labels, LabelConvention.BRATS2023, 0.001)
    assert volumes == pytest.approx({"NCR": 0.008, "ED": 0.027, "ET": 0.001, "TC": 0.009, "WT": 0.036})


def test_components_are_26_connected():
    mask = np.zeros((8, 8, 8), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # touch at a corner only: one 26-connected component
    mask[4:6, 4:6, 4:6] = True
    mask[7, 0, 7] = True
    assert numbers.count_components(mask) == 3
    assert numbers.count_components(np.zeros((3, 3, 3), dtype=bool)) == 0
    # The 6-connected count would be 4: the corner pair is two components there.
    assert ndimage.label(mask)[1] == 4


def test_fold_disagreement_is_the_disputed_share_of_voxels_any_fold_marks():
    rng = np.random.default_rng(1)
    folds = rng.random((3, 6, 5, 4)) > 0.6
    marked, disputed = fold_agreement(folds)
    any_count = disputed_count = 0
    for index in np.ndindex(folds.shape[1:]):
        votes = [bool(folds[(k, *index)]) for k in range(3)]
        any_count += any(votes)
        disputed_count += any(votes) and not all(votes)
    assert marked.sum() == any_count and disputed.sum() == disputed_count
    assert disagreement_share(marked, disputed) == pytest.approx(disputed_count / any_count)
    assert disagreement_share(np.zeros(3, bool), np.zeros(3, bool)) is None


def test_binary_entropy_in_bits():
    p = np.array([0.0, 1.0, 0.5, 0.1, 0.9, 0.25], dtype=np.float32)
    expected = [0.0 if q in (0, 1) else -(q * math.log2(q) + (1 - q) * math.log2(1 - q)) for q in p.tolist()]
    assert binary_entropy(p) == pytest.approx(expected, abs=1e-6)


def test_neighbourhood_is_the_chebyshev_ball_and_coverage_border_the_edge():
    mask = np.zeros((12, 11, 10), dtype=bool)
    mask[5, 5, 5] = mask[6, 7, 5] = True
    grown = neighbourhood(mask, 2)
    chessboard = ndimage.distance_transform_cdt(~mask, metric="chessboard")
    assert np.array_equal(grown, chessboard <= 2)
    covered = np.zeros((6, 6, 6), dtype=bool)
    covered[1:5, 1:5, 1:5] = True
    border = coverage_border(covered)
    assert border.sum() == 4**3 - 2**3 and not border[2:4, 2:4, 2:4].any()


class FoldOracle:
    """K folds that find bright FLAIR at K different thresholds: they disagree on a shell."""

    def __init__(self, thresholds):
        self.thresholds = thresholds

    def __call__(self, image):
        maps = [1 / (1 + np.exp(np.clip(-8 * (image[0] - t), -50, 50))) for t in self.thresholds]
        return np.stack(maps).astype(np.float32)


def test_the_pipeline_measures_without_changing_the_labels():
    image = synthetic_image()
    # Normalised, the tumour's FLAIR lies near 11.8 (the brain's below 1): folds with thresholds
    # there disagree on many tumour voxels and on nothing else.
    predictors = {Stage.BASE: FoldOracle([5.0]), Stage.WT: FoldOracle([11.0, 11.6, 12.2]),
                  Stage.TC: FoldOracle([11.4, 11.8]), Stage.ET: FoldOracle([11.7, 12.0])}  # fmt: skip
    plain = segment_image(image, predictors, PipelineConfig(et_threshold=0))
    measured = segment_image(image, predictors, PipelineConfig(et_threshold=0, quality=True))
    assert plain.quality is None and measured.quality is not None
    assert np.array_equal(plain.labels, measured.labels)
    quality = measured.quality
    assert quality.windows == len(measured.windows) == 1 and quality.folds == {"wt": 3, "tc": 2, "et": 2}

    # The same numbers from the definitions, on the preprocessed window.
    grid = preprocess(image)
    window = measured.windows[0]
    crop = grid[(slice(None), *window)]
    masks = {stage: predictors[stage](crop) > 0.5 for stage in (Stage.WT, Stage.TC, Stage.ET)}
    marked = {s: m.sum(0) > 0 for s, m in masks.items()}
    disputed = {s: marked[s] & (m.sum(0) < m.shape[0]) for s, m in masks.items()}
    for stage in masks:
        assert quality.region_disagreement[stage.value] == pytest.approx(disputed[stage].sum() / marked[stage].sum())
    tumour = marked[Stage.WT] | marked[Stage.TC] | marked[Stage.ET]
    anywhere = disputed[Stage.WT] | disputed[Stage.TC] | disputed[Stage.ET]
    assert quality.disagreement == pytest.approx(anywhere.sum() / tumour.sum())
    assert 0 < quality.disagreement < 1

    wt = predictors[Stage.WT](crop).mean(0) > 0.5
    near = ndimage.distance_transform_cdt(~np.pad(wt, 1), metric="chessboard")[1:-1, 1:-1, 1:-1] <= 3
    entropies = []
    for stage in masks:
        p = predictors[stage](crop).mean(0)[near].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.nan_to_num(p * np.log2(p)) - np.nan_to_num((1 - p) * np.log2(1 - p))
        entropies.append(h.mean())
        assert quality.region_entropy[stage.value] == pytest.approx(h.mean(), abs=1e-5)
    assert quality.entropy == pytest.approx(np.mean(entropies), abs=1e-5)
    assert not quality.touches_window_border and quality.et_removed_voxels == 0


def test_et_removed_and_a_single_fold_are_recorded():
    image = synthetic_image()
    predictors = {stage: FoldOracle([1.0]) for stage in Stage}
    result = segment_image(image, predictors, PipelineConfig(et_threshold=10**7, quality=True))
    removed = result.quality.et_removed_voxels
    assert removed > 0 and not (result.labels == 4).any()
    # The ET threshold relabels ET as necrosis: the removed voxels are the necrosis now.
    assert removed == (result.labels == 1).sum()
    assert result.quality.disagreement is None and result.quality.region_disagreement["wt"] is None


def test_the_component_rule_and_the_core_filling_are_recorded_as_what_they_changed():
    """The QA record says how many voxels the component rule removed and the core filling
    relabelled: the same counts as the label maps of runs without each step."""
    image = synthetic_image()  # tumour centred (120, 110, 80), radii (18, 14, 12)
    grid = np.indices(image.shape[1:])
    middle = sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip((120, 110, 80), (9, 7, 6), strict=True)))
    image[:, middle <= 1] += 400  # a cavity the core models miss (FLAIR about 20 once normalised)
    blob = sum(((grid[a] - c) / 3) ** 2 for a, c in enumerate((120, 110, 100))) <= 1
    image[:, blob] += 400  # a small bright component 8 voxels from the tumour, in the same window

    class Rim:
        def __call__(self, crop):
            p = 1 / (1 + np.exp(np.clip(-8 * (crop[0] - 1.0), -50, 50)))
            return np.where(crop[0] > 15, 0.0, p)[None].astype(np.float32)

    predictors = {Stage.BASE: FoldOracle([1.0]), Stage.WT: FoldOracle([1.0]), Stage.TC: Rim(), Stage.ET: Rim()}
    composed = segment_image(image, predictors, PipelineConfig(et_threshold=0)).labels
    kept = segment_image(image, predictors, PipelineConfig(et_threshold=0, min_component=500)).labels
    result = segment_image(
        image, predictors, PipelineConfig(et_threshold=0, min_component=500, fill_core_holes=True, quality=True)
    )
    quality = result.quality
    assert quality.components_removed_voxels == np.count_nonzero(composed) - np.count_nonzero(kept)
    assert 0.9 * blob.sum() < quality.components_removed_voxels < 1.5 * blob.sum()
    assert quality.core_filled_voxels == np.count_nonzero(result.labels != kept)
    assert quality.core_filled_voxels > 0.9 * (middle <= 1).sum()
    plain = segment_image(image, predictors, PipelineConfig(et_threshold=0, quality=True)).quality
    assert plain.components_removed_voxels == 0 and plain.core_filled_voxels == 0


def test_a_tumour_at_the_window_edge_is_flagged_by_the_meter():
    shape = (20, 20, 20)
    windows = [(slice(0, 10), slice(0, 10), slice(0, 10)), (slice(8, 18), slice(0, 10), slice(0, 10))]
    meter = QualityMeter(shape, windows, dict.fromkeys(Stage, 0.5))
    inside = np.zeros(shape, dtype=bool)
    inside[9, 4:6, 4:6] = True  # on window 1's face but inside window 2: not the coverage's edge
    meter.observe_ensemble(Stage.WT, inside.astype(np.float32), inside)
    assert not meter.touches_window_border
    meter = QualityMeter(shape, windows, dict.fromkeys(Stage, 0.5))
    edge = inside.copy()
    edge[17, 5, 5] = True
    meter.observe_ensemble(Stage.WT, edge.astype(np.float32), edge)
    assert meter.touches_window_border


def test_outliers_by_the_modified_z_score():
    values = {"a": 1.0, "b": 1.1, "c": 0.9, "d": 1.0, "e": 1.05, "f": 5.0, "g": None}
    median = 1.025  # of the six numbers
    mad = float(np.median(np.abs(np.array([1.0, 1.1, 0.9, 1.0, 1.05, 5.0]) - median)))
    assert 0.6745 * (5.0 - median) / mad > numbers.OUTLIER_Z > 0.6745 * (median - 0.9) / mad
    assert numbers.outliers(values, 0.0) == {"f"}
    assert numbers.outliers({k: values[k] for k in "abcf"}, 0.0) == set()  # fewer than MIN_BATCH
    low = {**values, "f": 0.0}
    assert numbers.outliers(low, 0.0) == {"f"} and numbers.outliers(low, 0.0, high_only=True) == set()
    # Volumes compare in log space; an empty case takes no part.
    volumes = {"a": 10.0, "b": 12.0, "c": 9.0, "d": 11.0, "e": 10.5, "f": 300.0, "g": 0.0}
    assert numbers.volume_outliers(volumes) == {"f"}


def test_slices_through_the_centre_of_mass_and_of_largest_area():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[2:5, 3:6, 7] = True  # 9 voxels on slice 7
    mask[2:4, 3:5, 2] = True  # 4 on slice 2
    points = np.argwhere(mask)
    assert numbers.centre_of_mass(mask) == tuple(round(v) for v in points.mean(axis=0))
    assert numbers.largest_area_slice(mask, axis=2) == 7
    assert numbers.centre_of_mass(np.zeros((2, 2, 2), bool)) is None


def test_slices_are_shown_radiologically_and_labels_in_the_brats_colours():
    volume = np.zeros((6, 5, 4))
    volume[4, 1, 3] = 1  # left (high x in LPS), anterior (low y), superior (high z)
    axial = display_slice(volume, 2, 3)
    assert axial.shape == (5, 6) and axial[1, 4] == 1  # row = y (anterior up), column = x (left on the right)
    coronal = display_slice(volume, 1, 1)
    assert coronal.shape == (4, 6) and coronal[0, 4] == 1  # superior at the top
    sagittal = display_slice(volume, 0, 4)
    assert sagittal.shape == (4, 5) and sagittal[0, 1] == 1
    labels = np.array([[0, 1, 2, 3, 4]])
    rgb = overlay(None, labels, LabelConvention.BRATS2023)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 4].tolist() == [0, 0, 0]  # 4 is no label in 2023
    assert [tuple(rgb[0, i]) for i in (1, 2, 3)] == [COLOURS["NCR"], COLOURS["ED"], COLOURS["ET"]]
