"""The paper's two-stage pipeline on arrays (sections 2.1-2.6):

crop to 192x192x160 -> base model (whole tumour) -> localise 128^3 windows -> WT, TC, ET fold
ensembles -> compose labels -> ET threshold -> paste back into 240x240x155.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from brats_cli.bundle import Manifest
from brats_cli.choices import REGION_STAGES, Ensemble, LabelConvention, Stage
from brats_cli.io import BRATS_SHAPE
from brats_cli.labels import apply_et_threshold, compose_labels, fill_core_holes, remove_small_components
from brats_cli.localise import Window, localise_windows, tumour_box
from brats_cli.predictors import StagePredictor
from brats_cli.preprocess import MODEL_GRID, preprocess, uncrop_from_model_grid
from brats_cli.quality import EnsembleQuality, QualityMeter
from brats_cli.settings import Settings


def _every_stage(value: float) -> dict[Stage, float]:
    return dict.fromkeys(Stage, value)


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does with the networks' probabilities, for one case."""

    convention: LabelConvention = LabelConvention.BRATS2021
    ensemble: Ensemble = Ensemble.MEAN
    et_threshold: int = 600
    # Tumour components smaller than this many voxels are removed, all but the largest; 0: none.
    min_component: int = 0
    # The tumour core's holes in 2D slices become necrosis (labels.fill_core_holes).
    fill_core_holes: bool = False
    # Per stage, the probability above which a voxel is in the stage's region (the manifest's
    # `threshold`; 0.5 unless a bundle was calibrated otherwise).
    thresholds: Mapping[Stage, float] = field(default_factory=lambda: _every_stage(0.5))
    region_window: tuple[int, int, int] = (128, 128, 128)
    # Test-time augmentation: the axis flips averaged in every stage; ((),) is none.
    mirrors: tuple[tuple[int, ...], ...] = ((),)
    # Keep the WT, TC and ET ensemble probabilities (Segmentation.probabilities).
    keep_probabilities: bool = False
    # Measure the ensemble's confidence for the QA report (`quality.py`) while segmenting; off, the
    # pipeline does exactly what it did without it (the labels never depend on it).
    quality: bool = False

    def __post_init__(self) -> None:
        if set(self.thresholds) != set(Stage):
            raise ValueError("thresholds must give one probability per stage")
        if not all(0 < t < 1 for t in self.thresholds.values()):
            raise ValueError("every stage's probability threshold must lie strictly between 0 and 1")
        if self.et_threshold < 0 or self.min_component < 0:
            raise ValueError("et_threshold and min_component must be >= 0")
        if any(w > g for w, g in zip(self.region_window, MODEL_GRID, strict=True)):
            raise ValueError(f"region_window {self.region_window} exceeds the model grid {MODEL_GRID}")

    @classmethod
    def from_manifest(
        cls,
        manifest: Manifest,
        settings: Settings | None = None,
        *,
        convention: LabelConvention | None = None,
    ) -> PipelineConfig:
        """The settings a bundle was made for (labels, ET threshold, per-stage probability
        thresholds, region window), with the user's settings where they override them.
        `convention` is the case's own (by its file names) when the settings leave it open."""
        settings = settings or Settings()
        chosen = settings.labels or convention or manifest.labels
        return cls(
            convention=chosen,
            ensemble=settings.ensemble,
            et_threshold=manifest.et_threshold if settings.et_threshold is None else settings.et_threshold,
            min_component=manifest.min_component if settings.min_component is None else settings.min_component,
            fill_core_holes=(
                manifest.fill_core_holes if settings.fill_core_holes is None else settings.fill_core_holes
            ),
            thresholds={stage: spec.threshold for stage, spec in manifest.stages.items()},
            region_window=manifest.region_window,
            mirrors=settings.mirrors,
            keep_probabilities=settings.probabilities,
        )


@dataclass
class Segmentation:
    labels: np.ndarray  # (240, 240, 155) uint8, canonical orientation
    windows: list[Window]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what a user should look into
    notes: list[str] = field(default_factory=list)  # information: the run went as designed
    # With `keep_probabilities`: (3, 240, 240, 155) float32, canonical orientation, the mean over
    # folds (and flips) of the WT, TC and ET models, 0 outside the region windows; all 0 when the
    # base model found no tumour (the region models did not run).
    probabilities: np.ndarray | None = None
    quality: EnsembleQuality | None = None  # measured when `PipelineConfig.quality` asks


def ensemble_mask(probabilities: np.ndarray, mode: Ensemble, threshold: float = 0.5) -> np.ndarray:
    """Binary mask from K fold probability maps (K, ...)."""
    if mode is Ensemble.MEAN:
        mean = probabilities[0] if probabilities.shape[0] == 1 else probabilities.mean(axis=0)
        return mean > threshold
    votes = (probabilities > threshold).sum(axis=0)
    return 2 * votes > probabilities.shape[0]


def predict_windows(
    predictor: StagePredictor,
    image: np.ndarray,
    windows: list[Window],
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    observe: Callable[[Window, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Fold probabilities over the model grid from window-sized predictions; overlapping windows are
    averaged, voxels outside every window get probability 0. `reduce` maps each window's (K, ...)
    fold maps to the (M, ...) maps kept (`fold_reduction`); `observe` sees each window's K fold maps
    before that (the QA report's fold disagreement)."""
    total: np.ndarray | None = None
    count = np.zeros(image.shape[1:], dtype=np.float32)
    for window in windows:
        probabilities = predictor(image[(slice(None), *window)])
        if observe is not None:
            observe(window, probabilities)
        if reduce is not None:
            probabilities = reduce(probabilities)
        if total is None:
            total = np.zeros((probabilities.shape[0], *image.shape[1:]), dtype=np.float32)
        total[(slice(None), *window)] += probabilities
        count[window] += 1
    assert total is not None, "predict_windows needs at least one window"
    if len(windows) > 1:  # one window: every voxel is covered once or not at all
        np.divide(total, count, out=total, where=count > 0)
    return total


def fold_reduction(mode: Ensemble) -> Callable[[np.ndarray], np.ndarray] | None:
    """What of a window's K fold maps the ensemble needs. The mean is linear, so averaging the folds
    inside each window, before the windows are pasted and averaged, gives the same mask with one
    grid-sized map instead of K (host time saved: bench/RESULTS.md, bench/host_overhead.py); a vote
    needs every fold's map."""
    if mode is Ensemble.MEAN:
        return lambda probabilities: probabilities.mean(axis=0, keepdims=True)
    return None


def mirrored(predictor: StagePredictor, mirrors: tuple[tuple[int, ...], ...]) -> StagePredictor:
    """`predictor` averaged over axis flips of its input (test-time augmentation, as nnU-Net's
    mirroring): each flip's (K, ...) fold maps are flipped back and the flips' maps averaged per
    fold, so the ensemble downstream still sees one map per fold."""
    if mirrors == ((),):
        return predictor
    return _Mirrored(predictor, mirrors)


class _Mirrored:
    def __init__(self, predictor: StagePredictor, mirrors: tuple[tuple[int, ...], ...]) -> None:
        self.predictor = predictor
        self.mirrors = mirrors

    @property
    def device(self) -> object:
        return self.predictor.device

    @property
    def precision(self) -> str:
        return self.predictor.precision

    def __call__(self, image: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        for axes in self.mirrors:
            # Spatial axes of the (4, X, Y, Z) input are 1..3; of the (K, X, Y, Z) output too.
            spatial = tuple(axis + 1 for axis in axes)
            flipped = np.flip(image, spatial) if axes else image
            probabilities = self.predictor(np.ascontiguousarray(flipped))
            if axes:
                probabilities = np.flip(probabilities, spatial)
            total = probabilities.astype(np.float32, copy=True) if total is None else total + probabilities
        assert total is not None
        total /= len(self.mirrors)
        return total


def segment_image(
    image: np.ndarray,
    predictors: Mapping[Stage, StagePredictor],
    config: PipelineConfig,
    on_stage: Callable[[str], None] | None = None,
) -> Segmentation:
    """Label map for one case. `image` is (4, 240, 240, 155), canonical orientation, raw intensities.

    `on_stage` is told the name of each stage as it starts (for progress display)."""
    if on_stage:
        on_stage("preprocess")
    started = time.perf_counter()
    model_input = preprocess(image)
    seconds = time.perf_counter() - started
    return segment_preprocessed(model_input, predictors, config, on_stage, {"preprocess": seconds})


def segment_preprocessed(
    model_input: np.ndarray,
    predictors: Mapping[Stage, StagePredictor],
    config: PipelineConfig,
    on_stage: Callable[[str], None] | None = None,
    seconds: dict[str, float] | None = None,
) -> Segmentation:
    """`segment_image` from the preprocessed model grid (`preprocess`'s output): a batch prepares
    the next case in its reader thread while this one computes. `seconds` are earlier stages' times."""

    def announce(name: str) -> None:
        if on_stage:
            on_stage(name)

    seconds = dict(seconds or {})
    announce("base")
    started = time.perf_counter()
    base_probabilities = mirrored(predictors[Stage.BASE], config.mirrors)(model_input)
    base_mean = base_probabilities.mean(axis=0, keepdims=True)
    base = ensemble_mask(
        base_mean if config.ensemble is Ensemble.MEAN else base_probabilities,
        config.ensemble,
        config.thresholds[Stage.BASE],
    )
    seconds["base"] = time.perf_counter() - started

    started = time.perf_counter()
    box = tumour_box(base, base_mean[0])
    seconds["localise"] = time.perf_counter() - started
    if box is None:
        return Segmentation(
            np.zeros(BRATS_SHAPE, dtype=np.uint8),
            [],
            seconds,
            ["the base model found no tumour; writing an all-background segmentation"],
            probabilities=(
                np.zeros((len(REGION_STAGES), *BRATS_SHAPE), dtype=np.float32) if config.keep_probabilities else None
            ),
            quality=EnsembleQuality(windows=0) if config.quality else None,
        )
    windows = localise_windows(box, MODEL_GRID, config.region_window)

    masks: dict[Stage, np.ndarray] = {}
    kept: list[np.ndarray] = []
    reduce = fold_reduction(config.ensemble)
    meter = QualityMeter(MODEL_GRID, windows, config.thresholds) if config.quality else None
    for stage in REGION_STAGES:
        announce(stage.value)
        started = time.perf_counter()
        predictor = mirrored(predictors[stage], config.mirrors)
        observe = None if meter is None else _observer(meter, stage)
        probabilities = predict_windows(predictor, model_input, windows, reduce, observe)
        masks[stage] = ensemble_mask(probabilities, config.ensemble, config.thresholds[stage])
        if config.keep_probabilities or meter is not None:
            # The mean over folds: what `mean` thresholds (a vote thresholds each fold instead).
            mean = probabilities[0] if probabilities.shape[0] == 1 else probabilities.mean(axis=0)
            if config.keep_probabilities:
                kept.append(mean)
            if meter is not None:
                meter.observe_ensemble(stage, mean, masks[stage])
        seconds[stage.value] = time.perf_counter() - started

    started = time.perf_counter()
    composed = compose_labels(masks[Stage.WT], masks[Stage.TC], masks[Stage.ET], config.convention)
    # Before the ET threshold, which counts the ET voxels that remain.
    components_kept = remove_small_components(composed, config.min_component)
    filled = fill_core_holes(components_kept, config.convention) if config.fill_core_holes else components_kept
    labels = apply_et_threshold(filled, config.convention, config.et_threshold)
    full = uncrop_from_model_grid(labels)
    probability_maps = uncrop_from_model_grid(np.stack(kept)) if kept else None
    seconds["compose"] = time.perf_counter() - started
    quality = None
    if meter is not None:
        # Each post-processing step returns a new array where it changes anything, so the steps'
        # inputs and outputs say what each did.
        enhancing = config.convention.enhancing
        et_removed = 0 if np.any(labels == enhancing) else int(np.count_nonzero(filled == enhancing))
        quality = meter.result(
            et_removed_voxels=et_removed,
            components_removed_voxels=int(np.count_nonzero(composed) - np.count_nonzero(components_kept)),
            # Filling only relabels edema and background as necrosis: every changed voxel is a filled one.
            core_filled_voxels=int(np.count_nonzero(filled != components_kept)),
        )
    # Several windows are how a large tumour is covered (localise.py), not a problem with the case.
    notes = []
    if len(windows) > 1:
        notes.append(f"tumour larger than one {config.region_window} window: {len(windows)} overlapping windows")
    return Segmentation(full, windows, seconds, notes=notes, probabilities=probability_maps, quality=quality)


def _observer(meter: QualityMeter, stage: Stage) -> Callable[[Window, np.ndarray], None]:
    return lambda window, probabilities: meter.observe_folds(stage, window, probabilities)
