"""The pipeline's logic with oracle predictors (plain numpy callables behind the predictor seam)."""

import numpy as np
import pytest
from conftest import synthetic_image
from scipy import ndimage

from brats_cli.bundle import Stage
from brats_cli.choices import Ensemble
from brats_cli.labels import LabelConvention, Region, region_masks
from brats_cli.pipeline import PipelineConfig, ensemble_mask, fold_reduction, predict_windows, segment_image
from brats_cli.preprocess import MODEL_GRID


class Oracle:
    """Predicts a region from normalised FLAIR intensity: bright voxels are tumour."""

    def __init__(self, threshold: float, folds: int = 1, shift: float = 0.0) -> None:
        self.threshold = threshold
        self.folds = folds
        self.shift = shift
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls.append(image.shape)
        p = 1 / (1 + np.exp(np.clip(-8 * (image[0] - self.threshold - self.shift), -50, 50)))
        return np.stack([p] * self.folds).astype(np.float32)


def oracles(**kwargs):
    return {Stage.BASE: Oracle(1.0), Stage.WT: Oracle(1.0), Stage.TC: Oracle(1.0), Stage.ET: Oracle(1.0), **kwargs}


def test_tumour_is_found_localised_labelled_and_pasted_back():
    image = synthetic_image(tumour_centre=(120, 110, 80), tumour_radius=(18, 14, 12))
    predictors = oracles()
    result = segment_image(image, predictors, PipelineConfig(et_threshold=0))
    assert result.labels.shape == (240, 240, 155) and result.labels.dtype == np.uint8
    assert len(result.windows) == 1
    # Region models only ever see the 128^3 window.
    assert predictors[Stage.WT].calls == [(4, 128, 128, 128)]
    assert predictors[Stage.BASE].calls == [(4, *MODEL_GRID)]
    masks = region_masks(result.labels, LabelConvention.BRATS2021)
    grid = np.indices((240, 240, 155))
    truth = (
        sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip((120, 110, 80), (18, 14, 12), strict=True))) <= 1
    )
    dice = 2 * (masks[Region.WT] & truth).sum() / (masks[Region.WT].sum() + truth.sum())
    assert dice > 0.95
    assert set(np.unique(result.labels)) == {0, 4}  # WT = TC = ET with identical oracles


def test_no_tumour_gives_an_all_background_case_and_a_warning():
    predictors = oracles(**{Stage.BASE: Oracle(50.0)})
    result = segment_image(synthetic_image(), predictors, PipelineConfig())
    assert not result.labels.any()
    assert result.warnings and "found no tumour" in result.warnings[0]
    assert predictors[Stage.WT].calls == []


def test_a_large_tumour_is_covered_by_several_windows_and_never_cut():
    centre, radius = (120, 120, 77), (70, 40, 60)  # 140 voxels along x: more than one window
    image = synthetic_image(tumour_centre=centre, tumour_radius=radius)
    threshold = {stage: Oracle(0.0) for stage in Stage}  # half the brain is tumour: split at the mean
    result = segment_image(image, threshold, PipelineConfig(et_threshold=0))
    assert len(result.windows) == 2
    # How a large tumour is covered, not something to act on: information, never a warning.
    assert result.notes == ["tumour larger than one (128, 128, 128) window: 2 overlapping windows"]
    assert result.warnings == []
    grid = np.indices((240, 240, 155))
    truth = sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip(centre, radius, strict=True))) <= 0.9
    inside_crop = np.zeros_like(truth)
    inside_crop[24:216, 24:216, :] = True
    wt = result.labels > 0
    assert np.all(wt[truth & inside_crop])


def test_et_threshold_and_label_convention_apply():
    image = synthetic_image()
    config = PipelineConfig(convention=LabelConvention.BRATS2023, et_threshold=10**7)
    labels = segment_image(image, oracles(), config).labels
    assert set(np.unique(labels)) == {0, 1}  # every ET voxel relabelled necrosis
    labels = segment_image(
        image, oracles(), PipelineConfig(convention=LabelConvention.BRATS2023, et_threshold=0)
    ).labels
    assert set(np.unique(labels)) == {0, 3}


def test_min_component_removes_a_small_separate_tumour_component_before_the_et_threshold():
    image = synthetic_image()  # tumour centred (120, 110, 80), radii (18, 14, 12)
    image[:, 120:124, 140:144, 80:84] = image[:, 120, 110, 80][:, None, None, None]  # 64 voxels, 16 beyond its edge
    kept = segment_image(image, oracles(), PipelineConfig(et_threshold=0)).labels
    assert kept[121, 141, 81] == 4 and np.count_nonzero(kept[120:124, 140:144, 80:84]) == 64
    cleaned = segment_image(image, oracles(), PipelineConfig(et_threshold=0, min_component=100)).labels
    assert not cleaned[120:124, 140:144, 80:84].any()
    # What remains is the tumour's component, untouched (the oracles' scattered noise voxels go too).
    components, _ = ndimage.label(kept > 0, structure=np.ones((3, 3, 3)))
    assert np.array_equal(cleaned, np.where(components == components[120, 110, 80], kept, 0))
    # The ET threshold counts what the component rule left: one above the tumour's ET keeps it, one
    # above the tumour's and the removed component's ET voxels together relabels it.
    tumour_et = np.count_nonzero(cleaned == 4)
    passing = segment_image(image, oracles(), PipelineConfig(et_threshold=tumour_et, min_component=100)).labels
    assert np.count_nonzero(passing == 4) == tumour_et
    failing = PipelineConfig(et_threshold=tumour_et + 1, min_component=100)
    assert not np.any(segment_image(image, oracles(), failing).labels == 4)


def test_mean_and_vote_ensembles():
    p = np.array([[0.9, 0.2, 0.6], [0.9, 0.45, 0.4], [0.1, 0.45, 0.4]], dtype=np.float32)
    assert ensemble_mask(p, Ensemble.MEAN).tolist() == [True, False, False]
    assert ensemble_mask(p, Ensemble.VOTE).tolist() == [True, False, False]
    q = np.array([[0.6, 0.9], [0.6, 0.1], [0.1, 0.1]], dtype=np.float32)
    # Mean 0.433 is below 0.5 but two of three folds vote tumour.
    assert ensemble_mask(q, Ensemble.MEAN).tolist() == [False, False]
    assert ensemble_mask(q, Ensemble.VOTE).tolist() == [True, False]
    tie = np.array([[0.9], [0.1]], dtype=np.float32)
    assert ensemble_mask(tie, Ensemble.VOTE).tolist() == [False]  # a tie is no majority


def test_folds_averaged_per_window_give_the_mask_of_the_averaged_fold_maps():
    """The mean ensemble averages each window's folds before the windows are pasted; with
    overlapping windows that must be the mask of the K window-averaged fold maps."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((4, 40, 36, 32)).astype(np.float32)

    def folds(window_image: np.ndarray) -> np.ndarray:  # five different maps that depend on the window
        return np.stack([1 / (1 + np.exp(-(window_image[0] * k + window_image[1]))) for k in range(1, 6)])

    windows = [
        (slice(0, 24), slice(0, 24), slice(0, 24)),
        (slice(16, 40), slice(0, 24), slice(8, 32)),
        (slice(8, 32), slice(12, 36), slice(4, 28)),
    ]
    every_fold = predict_windows(folds, image, windows)
    reduced = predict_windows(folds, image, windows, fold_reduction(Ensemble.MEAN))
    assert every_fold.shape == (5, 40, 36, 32) and reduced.shape == (1, 40, 36, 32)
    np.testing.assert_allclose(reduced[0], every_fold.mean(axis=0), atol=1e-6)
    clear = np.abs(every_fold.mean(axis=0) - 0.5) > 1e-5  # float rounding may only matter at 0.5 itself
    assert clear.mean() > 0.99
    expected = ensemble_mask(every_fold, Ensemble.MEAN)
    assert np.array_equal(ensemble_mask(reduced, Ensemble.MEAN)[clear], expected[clear])
    assert expected[clear].any() and not expected[clear].all()  # a mask with both sides
    outside = np.ones(image.shape[1:], dtype=bool)
    for window in windows:
        outside[window] = False
    assert outside.any() and not reduced[0][outside].any()  # no window: probability 0
    assert fold_reduction(Ensemble.VOTE) is None  # a vote needs every fold


def test_invalid_config_is_refused():
    with pytest.raises(ValueError):
        PipelineConfig(thresholds={**dict.fromkeys(Stage, 0.5), Stage.WT: 1.5})
    with pytest.raises(ValueError):
        PipelineConfig(region_window=(256, 128, 128))


def test_mirroring_averages_the_flipped_predictions_flipped_back():
    from brats_cli.pipeline import mirrored
    from brats_cli.settings import ALL_MIRRORS, mirrors_of

    assert mirrors_of([0]) == ((), (0,)) and mirrors_of([0, 1, 2]) == ALL_MIRRORS
    rng = np.random.default_rng(3)
    image = rng.random((4, 6, 8, 10), dtype=np.float32)
    ramp = np.linspace(0, 1, 6, dtype=np.float32)[:, None, None]

    def lopsided(x):  # not flip-equivariant: weighs voxels by their x position
        return np.stack([x[0] * ramp, x[1] * ramp])

    by_hand = (lopsided(image) + lopsided(image[:, ::-1])[:, ::-1]) / 2
    np.testing.assert_allclose(mirrored(lopsided, mirrors_of([0]))(image), by_hand, rtol=1e-6)
    assert mirrored(lopsided, ((),)) is lopsided

    def voxelwise(x):  # flip-equivariant: every flip gives the same map back
        return x[:2] ** 2

    np.testing.assert_allclose(mirrored(voxelwise, ALL_MIRRORS)(image), voxelwise(image), rtol=1e-6)


def test_each_stage_uses_the_probability_threshold_its_bundle_gives(tmp_path):
    from conftest import random_bundle

    from brats_cli.bundle import MANIFEST, load_bundle
    from brats_cli.pipeline import segment_preprocessed

    def constant(p):
        return lambda image: np.full((1, *image.shape[1:]), p, np.float32)

    model_input = np.zeros((4, *MODEL_GRID), np.float32)
    predictors = {stage: constant(0.7) for stage in Stage}
    default = segment_preprocessed(model_input, predictors, PipelineConfig(et_threshold=0))
    assert (default.labels == 4).any()  # 0.7 > 0.5 everywhere: every stage marks its region
    strict = {**dict.fromkeys(Stage, 0.5), Stage.BASE: 0.8}
    none = segment_preprocessed(model_input, predictors, PipelineConfig(thresholds=strict))
    assert not none.labels.any() and "found no tumour" in none.warnings[0]

    # ... read from the manifest's per-stage `threshold`.
    bundle = random_bundle(tmp_path / "b", window=(64, 64, 64))
    manifest = (bundle.root / MANIFEST).read_text().replace('"threshold": 0.5', '"threshold": 0.8', 1)
    (bundle.root / MANIFEST).write_text(manifest)
    config = PipelineConfig.from_manifest(load_bundle(bundle.root).manifest)
    assert config.thresholds == strict


def test_core_holes_are_filled_when_the_bundle_or_the_user_asks(tmp_path):
    """A core whose centre the TC and ET models miss (a cystic cavity): with `fill_core_holes`
    the enclosed edema becomes necrosis; the bundle's choice holds unless the settings override it."""
    from dataclasses import replace

    from conftest import random_bundle

    from brats_cli.bundle import load_bundle
    from brats_cli.settings import Settings

    image = synthetic_image()  # tumour centred (120, 110, 80), radii (18, 14, 12): about 10 once normalised
    grid = np.indices(image.shape[1:])
    centre = sum(((grid[a] - c) / r) ** 2 for a, (c, r) in enumerate(zip((120, 110, 80), (9, 7, 6), strict=True)))
    image[:, centre <= 1] += 400  # its middle twice as bright: about 20

    class Rim(Oracle):
        """Core where the tumour is, but not its bright middle, which WT alone takes (edema)."""

        def __call__(self, image: np.ndarray) -> np.ndarray:
            return np.where(image[0] > 15, 0.0, super().__call__(image)).astype(np.float32)

    rim = oracles(**{Stage.TC: Rim(1.0), Stage.ET: Rim(1.0)})
    plain = segment_image(image, rim, PipelineConfig(et_threshold=0)).labels
    filled = segment_image(image, rim, PipelineConfig(et_threshold=0, fill_core_holes=True)).labels
    cavity = (plain == 2) & (filled != 2)
    assert cavity.sum() > 0.9 * (centre <= 1).sum() and np.all(filled[cavity] == 1)
    assert np.array_equal(filled[~cavity], plain[~cavity])

    manifest = load_bundle(random_bundle(tmp_path / "b", window=(32, 32, 32)).root).manifest
    chosen = replace(manifest, fill_core_holes=True)
    assert PipelineConfig.from_manifest(chosen).fill_core_holes
    assert not PipelineConfig.from_manifest(chosen, Settings(fill_core_holes=False)).fill_core_holes
    assert PipelineConfig.from_manifest(manifest, Settings(fill_core_holes=True)).fill_core_holes
