"""How sure the ensemble was of a case, measured while the pipeline runs (no second pass): fold
disagreement, entropy of the ensemble probability near the tumour, whether the tumour touches the
edge of the region windows, how many windows were needed, and whether the ET threshold removed
enhancing voxels.

The pipeline measures only when asked (`PipelineConfig.quality`): each window's fold maps are seen
once, before they are averaged away, so the cost is a few comparisons per window voxel and no
extra network call; without it nothing here runs.

Definitions (the numbers the QA report shows):
- fold disagreement of a region: of the voxels that at least one fold puts in the region, the share
  on which the folds do not all agree (one minus the folds' intersection over their union). Where
  windows overlap, a voxel is disputed if the folds disagree in any window covering it. Undefined
  (None) with a single fold.
- disagreement of the case: the same over the whole tumour, a voxel being disputed when the folds
  disagree on it in any of the three region stages.
- entropy: binary entropy in bits (0: certain, 1: p = 0.5) of each stage's ensemble probability,
  averaged over the tumour's neighbourhood: the ensemble's whole tumour grown by NEIGHBOURHOOD_RADIUS
  voxels (a cube, i.e. Chebyshev distance), within the region windows (outside them there is no
  prediction). The case's value is the mean over the three stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from brats_cli.choices import REGION_STAGES, Stage
from brats_cli.localise import Window, bounding_box

# Voxels (1 mm in BraTS space) around the whole tumour where uncertainty matters: the tumour's
# surface and the tissue just outside it, where a boundary error would be. Three is a few voxels
# either side of where the folds' boundaries differ on the default bundle's phantoms.
NEIGHBOURHOOD_RADIUS = 3


@dataclass(frozen=True)
class EnsembleQuality:
    """What a case's run measured about the ensemble and its windows (see the module's definitions)."""

    windows: int
    folds: dict[str, int] = field(default_factory=dict)  # per region stage, the fold models averaged
    disagreement: float | None = None
    region_disagreement: dict[str, float | None] = field(default_factory=dict)
    entropy: float | None = None
    region_entropy: dict[str, float | None] = field(default_factory=dict)
    touches_window_border: bool = False
    et_removed_voxels: int = 0  # ET voxels the ET threshold relabelled necrosis (0: none removed)
    # What the rest of the post-processing changed: tumour voxels in the small components it removed
    # (the bundle's `min_component`), and voxels of the core's holes it labelled necrosis.
    components_removed_voxels: int = 0
    core_filled_voxels: int = 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> EnsembleQuality:
        """The inverse of `to_json`; a ValueError/TypeError/KeyError on a malformed record."""
        windows = data["windows"]
        if not isinstance(windows, int) or isinstance(windows, bool) or windows < 0:
            raise ValueError(f"windows must be a non-negative integer, got {windows!r}")

        def optional_float(value: object) -> float | None:
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"expected a number or null, got {value!r}")
            return float(value)

        def per_region(value: object) -> dict[str, float | None]:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object of regions, got {value!r}")
            return {str(k): optional_float(v) for k, v in value.items()}

        folds = data.get("folds", {})
        if not isinstance(folds, dict) or not all(isinstance(v, int) for v in folds.values()):
            raise TypeError(f"folds must map stages to counts, got {folds!r}")

        def count(name: str) -> int:
            value = data.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
            return value

        return cls(
            windows=windows,
            folds={str(k): int(v) for k, v in folds.items()},
            disagreement=optional_float(data.get("disagreement")),
            region_disagreement=per_region(data.get("region_disagreement", {})),
            entropy=optional_float(data.get("entropy")),
            region_entropy=per_region(data.get("region_entropy", {})),
            touches_window_border=bool(data.get("touches_window_border", False)),
            et_removed_voxels=count("et_removed_voxels"),
            components_removed_voxels=count("components_removed_voxels"),
            core_filled_voxels=count("core_filled_voxels"),
        )


def binary_entropy(probability: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli variable with this probability, elementwise: 0 at 0 and 1,
    1 at 0.5. float32 in, float32 out."""
    p = np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p), 0.0) + np.where(q > 0, q * np.log2(q), 0.0)
    return (-terms).astype(np.float32)


def fold_agreement(fold_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(any, disputed) of K boolean fold masks (K, ...): the voxels at least one fold marks, and
    those on which the folds do not all agree."""
    marked = np.asarray(fold_masks.any(axis=0))
    return marked, np.asarray(marked & ~fold_masks.all(axis=0))


def disagreement_share(marked: np.ndarray, disputed: np.ndarray) -> float | None:
    """Disputed voxels as a share of marked ones; None when no fold marks anything."""
    count = int(np.count_nonzero(marked))
    return None if count == 0 else int(np.count_nonzero(disputed)) / count


def coverage(windows: Sequence[Window], shape: tuple[int, ...]) -> np.ndarray:
    """The voxels inside at least one window."""
    covered = np.zeros(shape, dtype=bool)
    for window in windows:
        covered[window] = True
    return covered


def coverage_border(covered: np.ndarray) -> np.ndarray:
    """The covered voxels on the edge of the coverage: a face neighbour outside it, or the grid's
    edge. A tumour there may continue beyond what the region models saw."""
    padded = np.pad(covered, 1, constant_values=False)
    inner = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(3, 1))[1:-1, 1:-1, 1:-1]
    return covered & ~inner


def neighbourhood(mask: np.ndarray, radius: int = NEIGHBOURHOOD_RADIUS) -> np.ndarray:
    """`mask` grown by `radius` voxels in every direction, diagonals included (Chebyshev distance);
    computed inside the mask's bounding box grown by `radius`, which holds all of it."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    grown = np.zeros(mask.shape, dtype=bool)
    extent = bounding_box(mask)
    if extent is None:
        return grown
    crop = tuple(
        slice(max(start - radius, 0), min(stop + radius, size))
        for (start, stop), size in zip(extent, mask.shape, strict=True)
    )
    if radius == 0:
        grown[crop] = mask[crop]
    else:
        grown[crop] = ndimage.maximum_filter(mask[crop], size=2 * radius + 1, mode="constant", cval=False)
    return grown


class QualityMeter:
    """Collects a case's statistics as the pipeline produces them: `observe_folds` for each window's
    fold maps (before they are averaged), `observe_ensemble` for each stage's ensemble probability
    over the grid, `result` at the end. One meter per case."""

    def __init__(self, shape: tuple[int, ...], windows: Sequence[Window], thresholds: Mapping[Stage, float]) -> None:
        self.shape = shape
        self.windows = list(windows)
        self.thresholds = thresholds
        self.covered = coverage(self.windows, shape)
        self._tumour = np.zeros(shape, dtype=bool)  # any fold of any stage
        self._disputed = np.zeros(shape, dtype=bool)  # folds disagree in some stage
        self._stage_marked: np.ndarray | None = None
        self._stage_disputed: np.ndarray | None = None
        self._stage: Stage | None = None
        self.folds: dict[str, int] = {}
        self.region_disagreement: dict[str, float | None] = {}
        self.region_entropy: dict[str, float | None] = {}
        self._near_tumour: np.ndarray | None = None
        self.touches_window_border = False

    def observe_folds(self, stage: Stage, window: Window, fold_probabilities: np.ndarray) -> None:
        """One window's (K, ...) fold probability maps of a region stage."""
        if stage is not self._stage:
            self._close_stage()
            self._stage = stage
            self._stage_marked = np.zeros(self.shape, dtype=bool)
            self._stage_disputed = np.zeros(self.shape, dtype=bool)
        assert self._stage_marked is not None and self._stage_disputed is not None
        self.folds[stage.value] = int(fold_probabilities.shape[0])
        marked, disputed = fold_agreement(fold_probabilities > self.thresholds[stage])
        self._stage_marked[window] |= marked
        self._stage_disputed[window] |= disputed

    def _close_stage(self) -> None:
        if self._stage is None or self._stage_marked is None or self._stage_disputed is None:
            return
        single = self.folds.get(self._stage.value, 0) < 2
        self.region_disagreement[self._stage.value] = (
            None if single else disagreement_share(self._stage_marked, self._stage_disputed)
        )
        self._tumour |= self._stage_marked
        self._disputed |= self._stage_disputed
        self._stage = self._stage_marked = self._stage_disputed = None

    def observe_ensemble(self, stage: Stage, probability: np.ndarray, mask: np.ndarray) -> None:
        """A region stage's ensemble probability over the grid and its binary mask; the WT stage
        (the first) fixes the tumour's neighbourhood the entropy is averaged over."""
        self._close_stage()
        if stage is Stage.WT:
            self._near_tumour = neighbourhood(mask) & self.covered
            self.touches_window_border = bool(np.any(mask & coverage_border(self.covered)))
        near = self._near_tumour
        if near is None or not near.any():
            self.region_entropy[stage.value] = None
            return
        self.region_entropy[stage.value] = float(binary_entropy(probability[near]).mean())

    def result(
        self, et_removed_voxels: int = 0, components_removed_voxels: int = 0, core_filled_voxels: int = 0
    ) -> EnsembleQuality:
        self._close_stage()
        several = [count for count in self.folds.values() if count >= 2]
        disagreement = disagreement_share(self._tumour, self._disputed) if several else None
        entropies = [self.region_entropy.get(stage.value) for stage in REGION_STAGES]
        known = [value for value in entropies if value is not None]
        return EnsembleQuality(
            windows=len(self.windows),
            folds=dict(self.folds),
            disagreement=disagreement,
            region_disagreement=dict(self.region_disagreement),
            entropy=float(np.mean(known)) if len(known) == len(entropies) else None,
            region_entropy=dict(self.region_entropy),
            touches_window_border=self.touches_window_border,
            et_removed_voxels=et_removed_voxels,
            components_removed_voxels=components_removed_voxels,
            core_filled_voxels=core_filled_voxels,
        )
