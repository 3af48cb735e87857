"""Choose the ET threshold (paper 2.6: relabel every ET voxel as necrosis when fewer than T remain)
on out-of-fold predictions of training-pool cases, never on the validation split.

PRED holds label maps written with `--et-threshold 0`; GT the cases' folders. For each candidate T
the small-ET rule is applied to every prediction and the mean ET Dice (BraTS rule: both empty = 1)
computed. The paper's 600 stays unless another candidate beats it by at least MARGIN; ties go to
the paper's value. Prints the table and, last, the chosen T.

    python train/real/choose_et_threshold.py PRED GT
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_cli.io import discover_cases
from brats_cli.labels import LabelConvention, Region, apply_et_threshold, region_masks
from brats_cli.metrics import dice

CANDIDATES = (0, 50, 100, 200, 300, 400, 600, 800, 1000, 1500, 2000)
PAPER = 600
MARGIN = 0.005


def main(pred: Path, gt: Path) -> None:
    rows: dict[int, list[float]] = {t: [] for t in CANDIDATES}
    print("| case | ET voxels predicted | ET voxels reference |")
    print("|---|---|---|")
    for case in discover_cases(gt).cases:
        path = pred / f"{case.case_id}.nii.gz"
        if not path.is_file() or case.segmentation is None:
            continue
        convention = LabelConvention.of_naming(case.naming)
        predicted = np.asarray(nib.load(path).dataobj)
        reference = region_masks(np.asarray(nib.load(case.segmentation).dataobj), convention)[Region.ET]
        count = int((predicted == convention.enhancing).sum())
        print(f"| {case.case_id} | {count} | {int(reference.sum())} |")
        for t in CANDIDATES:
            found = region_masks(apply_et_threshold(predicted, convention, t), convention)[Region.ET]
            rows[t].append(dice(found, reference))
    print()
    print("| threshold | mean ET Dice | cases |")
    print("|---|---|---|")
    for t in CANDIDATES:
        print(f"| {t} | {np.mean(rows[t]):.4f} | {len(rows[t])} |")
    best = max(CANDIDATES, key=lambda t: (np.mean(rows[t]), t == PAPER))
    chosen = best if np.mean(rows[best]) >= np.mean(rows[PAPER]) + MARGIN else PAPER
    print()
    print(f"chosen: {chosen}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
