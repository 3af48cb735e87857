"""The BraTS 2024 glioma label set (4 = resection cavity, in no region) against the official
`brats-evaluation` package (PyPI, panoptica; its `gli` configuration has the same label groups):
`brats evaluate --task gli2024` and `brats-evaluate --config gli` on three real TCGA segmentations
in the 2023 labels with a cavity added to both sides (shifted in the prediction); prints both
tools' global Dice and HD95 of WT, TC and ET per case. No timing.

    python3 -m venv /work/venv-official && /work/venv-official/bin/pip install brats-evaluation
    python -m bench.gli2024_official --official /work/venv-official/bin/brats-evaluate
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.evaluate import REAL, TCGA, to_2023

PREDICTIONS = ("hnfnetv1-20", "isen-20", "sanet0-20")
CAVITY = 4


def add_cavity(path: Path, shift: int) -> None:
    """A 15 x 20 x 15 cavity just outside the tumour's lower x edge, moved `shift` voxels along x."""
    image = nib.load(path)
    labels = np.asarray(image.dataobj).astype(np.uint8)
    low = np.argwhere(labels > 0).min(axis=0)
    box = np.zeros(labels.shape, dtype=bool)
    box[max(low[0] - 25 + shift, 0) : max(low[0] - 10 + shift, 0), low[1] : low[1] + 20, low[2] : low[2] + 15] = True
    labels[box & (labels == 0)] = CAVITY
    nib.save(nib.Nifti1Image(labels, image.affine, image.header), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="the brats-evaluate executable of brats-evaluation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "gt").mkdir()
        (root / "pred").mkdir()
        for index, prediction in enumerate(PREDICTIONS):
            case_id = f"BraTS-GLI-{index + 1:05d}-100"
            to_2023(REAL / TCGA / "mav.nii.gz", root / "gt" / f"{case_id}-seg.nii.gz")
            to_2023(REAL / TCGA / f"{prediction}.nii.gz", root / "pred" / f"{case_id}.nii.gz")
            add_cavity(root / "gt" / f"{case_id}-seg.nii.gz", 0)
            add_cavity(root / "pred" / f"{case_id}.nii.gz", 3 + index)
        subprocess.run([args.official, "--ref_path", str(root / "gt"), "--pred_path", str(root / "pred"),
                        "--config", "gli", "--summary_json", str(root / "official.json")],
                       check=True, capture_output=True)  # fmt: skip
        ours_command = [sys.executable, "-m", "brats_cli", "evaluate", str(root / "pred"), str(root / "gt"),
                        "--task", "gli2024", "--json", str(root / "ours.json")]  # fmt: skip
        subprocess.run(ours_command, check=True, capture_output=True)
        official = json.loads((root / "official.json").read_text())["metrics"]
        ours = {(r["case"], r["region"]): r for r in json.loads((root / "ours.json").read_text())["cases"]}
    print("case,region,official_dice,brats_dice,official_hd95,brats_hd95")
    for case in official:
        case_id = case["subject_name"].removesuffix("-seg.nii.gz")
        for region in ("wt", "tc", "et"):
            row = ours[(case_id, region.upper())]
            theirs = case[region]
            print(f"{case_id},{region.upper()},{theirs['global_bin_dsc']},{row['dice']},"
                  f"{theirs['global_bin_hd95']},{row['hd95']}")  # fmt: skip


if __name__ == "__main__":
    main()
