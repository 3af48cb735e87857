"""Fix the real training pool's validation split, once, before any model trains on the pool.

Reads `cases.tsv` and the extracted pool's label maps (only to stratify: no prediction is ever
looked at here) and writes `train/real/split.tsv`: one row per case with its dataset, its role
(`train` or `validation`), whether it has enhancing tumour, and its whole-tumour volume in ml.

Stratification, by tumour size: the cases with enhancing tumour are sorted by whole-tumour volume
and dealt into bins of five, and one case of each bin (a seeded draw) is validation, so the
validation cases span the range of sizes; one of the cases without enhancing tumour (a seeded draw)
is validation too. The datasets are not drawn separately; the draw gives them in proportion (7 of
18 BraTS-Africa, 35 of 88 in the pool), which tests/test_train_real.py checks.

    python train/real/make_split.py POOL [--cases ../shared/data/real-train/cases.tsv]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import nibabel as nib
import numpy as np

SEED = 2026
BIN = 5


def label_facts(pool: Path, case: str) -> tuple[bool, float]:
    separator = "-" if case.startswith("BraTS-") else "_"
    seg = np.asarray(nib.load(pool / case / f"{case}{separator}seg.nii.gz").dataobj)
    et_label = 3 if separator == "-" else 4
    return bool((seg == et_label).any()), float((seg > 0).sum()) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pool", type=Path)
    parser.add_argument("--cases", type=Path, default=Path("../shared/data/real-train/cases.tsv"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("split.tsv"))
    args = parser.parse_args()
    with args.cases.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    rng = np.random.default_rng(SEED)
    facts = {row["case"]: label_facts(args.pool, row["case"]) for row in rows}
    validation: set[str] = set()
    with_et = sorted((c for c in facts if facts[c][0]), key=lambda c: facts[c][1])
    without_et = sorted(c for c in facts if not facts[c][0])
    validation.add(without_et[int(rng.integers(len(without_et)))])
    for start in range(0, len(with_et) - BIN + 1, BIN):
        chunk = with_et[start : start + BIN]
        validation.add(chunk[int(rng.integers(len(chunk)))])
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["case", "dataset", "role", "has_et", "wt_ml"])
        for row in rows:
            case = row["case"]
            role = "validation" if case in validation else "train"
            writer.writerow([case, row["dataset"], role, int(facts[case][0]), f"{facts[case][1]:.1f}"])
    print(f"{args.out}: {len(validation)} validation, {len(rows) - len(validation)} train")


if __name__ == "__main__":
    main()
