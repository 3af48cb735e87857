"""Choose a bundle's post-processing out of fold, never on the validation split: each region's
probability threshold (the manifest's per-stage `threshold`, 0.5 unless this changes it) and the ET
threshold (paper 2.6: relabel every ET voxel as necrosis when fewer than T remain).

PRED holds what `brats segment --save-probabilities --et-threshold 0` wrote for out-of-fold
training cases; GT the cases' folders. The rules, fixed before any measurement:

1. For WT, TC and ET in turn, with the other two at 0.5, each candidate probability threshold is
   applied to the saved probabilities, the labels composed as the pipeline composes them, and the
   region's mean Dice taken (BraTS rule: both empty = 1). A threshold other than 0.5 is kept only if
   it beats 0.5 by at least PROBABILITY_MARGIN; ties go to 0.5.
2. With the chosen probability thresholds, each candidate ET threshold T is applied and the mean
   ET Dice taken. The paper's 600 stays unless another T beats it by at least ET_MARGIN.
3. With both applied, tumour components (26-connected, any label) smaller than N voxels, all but
   the largest, are removed before the ET threshold (the manifest's `min_component`), for each
   candidate N: the mean Dice of each region and of the three, and the false-positive whole-tumour
   voxels left. N = 0 (none) stays unless another N beats it on the three regions' mean by at least
   COMPONENT_MARGIN.
4. With all three applied, the tumour core's holes are filled as necrosis slice by slice along the
   three axes (the manifest's `fill_core_holes`, after the component rule, before the ET threshold).
   It is chosen if it raises the mean TC Dice by at least FILL_MARGIN and lowers neither WT's nor
   ET's mean. (Written after the hole filling was tried on round seven's out-of-fold cases, where it
   raised TC 0.7197 -> 0.7315; fixed before round eight's were predicted.)

Prints the tables and, last, the choice:
`chosen: wt=W tc=C et=E et_threshold=T min_component=N fill_core_holes=0|1`.

    python train/real/choose_thresholds.py PRED GT
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_cli.io import PROBABILITY_REGIONS, discover_cases, probabilities_name
from brats_cli.labels import (
    LabelConvention,
    Region,
    apply_et_threshold,
    compose_labels,
    fill_core_holes,
    region_masks,
    remove_small_components,
)
from brats_cli.metrics import dice

PROBABILITY_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)
PROBABILITY_MARGIN = 0.01
ET_CANDIDATES = (0, 50, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000)
PAPER_ET = 600
ET_MARGIN = 0.005
REGIONS = (Region.WT, Region.TC, Region.ET)
COMPONENT_CANDIDATES = (0, 100, 300, 1000, 3000)
COMPONENT_MARGIN = 0.005
FILL_MARGIN = 0.005


@dataclass
class Case:
    case_id: str
    convention: LabelConvention
    probabilities: np.ndarray  # (X, Y, Z, 3) WT, TC, ET as written
    reference: dict[Region, np.ndarray]


def load_cases(pred: Path, gt: Path) -> list[Case]:
    cases = []
    for case in discover_cases(gt).cases:
        path = pred / probabilities_name(case.case_id)
        if not path.is_file() or case.segmentation is None:
            continue
        image = nib.load(path)
        if image.ndim != 4 or image.shape[-1] != len(PROBABILITY_REGIONS):
            raise SystemExit(f"{path}: expected {len(PROBABILITY_REGIONS)} probability maps, found shape {image.shape}")
        convention = LabelConvention.of_naming(case.naming)
        reference = region_masks(np.asarray(nib.load(case.segmentation).dataobj), convention)
        cases.append(Case(case.case_id, convention, np.asarray(image.dataobj, dtype=np.float32), reference))
    if not cases:
        raise SystemExit(f"{pred}: no <ID>_probabilities.nii.gz for the cases of {gt}")
    return cases


def labels_at(case: Case, thresholds: dict[Region, float]) -> np.ndarray:
    """The label map the pipeline composes from these probabilities at these thresholds."""
    masks = [case.probabilities[..., i] > thresholds[region] for i, region in enumerate(REGIONS)]
    return compose_labels(*masks, case.convention)


def check_reproduces_written_labels(cases: list[Case], pred: Path) -> None:
    """At 0.5 the probabilities must give back exactly the label maps written beside them: else
    they are not what this script assumes (another threshold, another composition)."""
    for case in cases:
        written = np.asarray(nib.load(pred / f"{case.case_id}.nii.gz").dataobj)
        differing = int((labels_at(case, dict.fromkeys(REGIONS, 0.5)) != written).sum())
        if differing:
            raise SystemExit(f"{case.case_id}: probabilities at 0.5 differ from its label map in {differing} voxels")


def mean_dice(cases: list[Case], thresholds: dict[Region, float], region: Region, et_threshold: int = 0) -> float:
    scores = []
    for case in cases:
        labels = apply_et_threshold(labels_at(case, thresholds), case.convention, et_threshold)
        scores.append(dice(region_masks(labels, case.convention)[region], case.reference[region]))
    return float(np.mean(scores))


def choose(cases: list[Case]) -> tuple[dict[Region, float], int]:
    chosen = dict.fromkeys(REGIONS, 0.5)
    print("| region | " + " | ".join(f"p > {p}" for p in PROBABILITY_CANDIDATES) + " | chosen |")
    print("|---" * (len(PROBABILITY_CANDIDATES) + 2) + "|")
    for region in REGIONS:
        at = {p: {**dict.fromkeys(REGIONS, 0.5), region: p} for p in PROBABILITY_CANDIDATES}
        scores = {p: mean_dice(cases, at[p], region) for p in PROBABILITY_CANDIDATES}
        best = max(PROBABILITY_CANDIDATES, key=lambda p: (scores[p], p == 0.5))
        chosen[region] = best if scores[best] >= scores[0.5] + PROBABILITY_MARGIN else 0.5
        cells = " | ".join(f"{scores[p]:.4f}" for p in PROBABILITY_CANDIDATES)
        print(f"| {region.value} | {cells} | {chosen[region]} |")
    et_scores = {t: mean_dice(cases, chosen, Region.ET, t) for t in ET_CANDIDATES}
    print()
    print("| ET threshold | mean ET Dice |")
    print("|---|---|")
    for t in ET_CANDIDATES:
        print(f"| {t} | {et_scores[t]:.4f} |")
    best_t = max(ET_CANDIDATES, key=lambda t: (et_scores[t], t == PAPER_ET))
    et_threshold = best_t if et_scores[best_t] >= et_scores[PAPER_ET] + ET_MARGIN else PAPER_ET
    return chosen, et_threshold


def measure_components(cases: list[Case], thresholds: dict[Region, float], et_threshold: int) -> int:
    """Rule 3: its table, and the N it chooses (0: none)."""
    print("| components below N voxels removed (but the largest) | WT | TC | ET | mean | false-positive WT voxels |")
    print("|---|---|---|---|---|---|")
    means = {}
    for n in COMPONENT_CANDIDATES:
        scores, false_positives = [], 0
        for case in cases:
            labels = apply_et_threshold(
                remove_small_components(labels_at(case, thresholds), n), case.convention, et_threshold
            )
            masks = region_masks(labels, case.convention)
            scores.append([dice(masks[region], case.reference[region]) for region in REGIONS])
            false_positives += int((masks[Region.WT] & ~case.reference[Region.WT]).sum())
        per_region = np.mean(scores, axis=0)
        means[n] = float(per_region.mean())
        cells = " | ".join(f"{value:.4f}" for value in per_region)
        print(f"| {n} | {cells} | {means[n]:.4f} | {false_positives} |")
    best = max(COMPONENT_CANDIDATES, key=lambda n: (means[n], n == 0))
    return best if means[best] >= means[0] + COMPONENT_MARGIN else 0


def measure_filling(cases: list[Case], thresholds: dict[Region, float], et_threshold: int, components: int) -> bool:
    """Rule 4: its table, and whether it fills the core's holes."""
    print("| tumour core's holes | WT | TC | ET | mean |")
    print("|---|---|---|---|---|")
    scores: dict[bool, list[list[float]]] = {False: [], True: []}
    for case in cases:
        kept = remove_small_components(labels_at(case, thresholds), components)
        for fill, labels in ((False, kept), (True, fill_core_holes(kept, case.convention))):
            masks = region_masks(apply_et_threshold(labels, case.convention, et_threshold), case.convention)
            scores[fill].append([dice(masks[region], case.reference[region]) for region in REGIONS])
    means = {fill: np.mean(rows, axis=0) for fill, rows in scores.items()}
    for fill in (False, True):
        cells = " | ".join(f"{value:.4f}" for value in means[fill])
        print(f"| {'filled' if fill else 'kept'} | {cells} | {means[fill].mean():.4f} |")
    gain = dict(zip(REGIONS, means[True] - means[False], strict=True))
    return bool(gain[Region.TC] >= FILL_MARGIN and gain[Region.WT] >= 0 and gain[Region.ET] >= 0)


def main(pred: Path, gt: Path) -> None:
    cases = load_cases(pred, gt)
    check_reproduces_written_labels(cases, pred)
    print(f"{len(cases)} out-of-fold cases: {', '.join(c.case_id for c in cases)}")
    print()
    thresholds, et_threshold = choose(cases)
    print()
    components = measure_components(cases, thresholds, et_threshold)
    print()
    fill = measure_filling(cases, thresholds, et_threshold, components)
    print()
    words = " ".join(f"{region.value.lower()}={thresholds[region]}" for region in REGIONS)
    print(f"chosen: {words} et_threshold={et_threshold} min_component={components} fill_core_holes={int(fill)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
