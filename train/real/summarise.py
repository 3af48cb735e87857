"""The model card's validation table from `brats evaluate --csv`: per dataset and region the mean
Dice, the median HD95 (mm) and the lowest Dice, then one row per case.

    python train/real/summarise.py scores.csv
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict

REGIONS = ("WT", "TC", "ET")


def dataset(case: str) -> str:
    if case.startswith("BraTS-SSA"):
        return "BraTS-Africa 2023"
    if case.startswith("BraTS20_"):
        return "BraTS 2020"
    return "BraTS 2018" if case.startswith("Brats18_") else "other"


def number(text: str) -> float:
    return float(text) if text not in ("", "nan", "inf") else float("inf")


def main(path: str) -> None:
    with open(path) as handle:
        rows = [row for row in csv.DictReader(handle) if row["region"] in REGIONS]
    scores: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for row in rows:
        scores[row["case"]][row["region"]] = {"dice": float(row["dice"]), "hd95": number(row["hd95"])}
    groups: dict[str, list[str]] = defaultdict(list)
    for case in sorted(scores):
        groups[dataset(case)].append(case)
    groups["all"] = sorted(scores)
    header = " | ".join(f"{r} Dice | {r} HD95" for r in REGIONS)
    print(f"| cases | n | {header} | lowest WT |")
    print("|---|---|" + "---|---|" * len(REGIONS) + "---|")
    for name, cases in groups.items():
        cells = []
        for region in REGIONS:
            dice = statistics.mean(scores[c][region]["dice"] for c in cases)
            hd95 = statistics.median(scores[c][region]["hd95"] for c in cases)
            cells.append(f"{dice:.3f} | {hd95:.1f}")
        lowest = min(scores[c]["WT"]["dice"] for c in cases)
        print(f"| {name} | {len(cases)} | " + " | ".join(cells) + f" | {lowest:.3f} |")
    print()
    print("| case | " + " | ".join(REGIONS) + " |")
    print("|---|" + "---|" * len(REGIONS))
    for case in sorted(scores):
        print(f"| {case} | " + " | ".join(f"{scores[case][r]['dice']:.3f}" for r in REGIONS) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
