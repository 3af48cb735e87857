"""Write the fixed split (train/real/split.tsv) into a bundle's manifest metadata, so the bundle
itself says which real cases trained it and which were only scored; with --chosen, also the
post-processing chosen out of fold (the last line of train/real/choose_thresholds.py: each region's
probability threshold, the ET threshold and the component rule).

    python train/real/record_split.py BUNDLE [--folds 0 1] \
        [--chosen "chosen: wt=0.5 tc=0.5 et=0.5 et_threshold=600 min_component=0"]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

from brats_cli.bundle import MANIFEST
from brats_cli.files import write_text_atomically

SPLIT = Path(__file__).with_name("split.tsv")


def parse_choice(line: str) -> dict[str, float]:
    """`chosen: wt=0.5 tc=0.4 et=0.5 et_threshold=600 min_component=3000` -> {"wt": 0.5, ...}; lines
    of the chooser before it measured components lack `min_component`."""
    pairs = [word.split("=", 1) for word in line.removeprefix("chosen:").split()]
    try:
        choice = {key: float(value) for key, value in pairs}
    except ValueError:  # a word without "=", or a value that is not a number
        choice = {}
    if not {"wt", "tc", "et", "et_threshold"} <= set(choice) <= {"wt", "tc", "et", "et_threshold", "min_component"}:
        raise SystemExit(f"not a choice line of choose_thresholds.py: {line!r}")
    return choice


def main(bundle: Path, chosen: str | None, folds: list[int]) -> None:
    manifest_path = bundle / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    with SPLIT.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    manifest.setdefault("metadata", {})["split"] = {
        "file": "train/real/split.tsv",
        "sha256": hashlib.sha256(SPLIT.read_bytes()).hexdigest(),
        "source": "../shared/data/real-train/cases.tsv (public BraTS 2018, 2020 and BraTS-Africa 2023 cases)",
        "train": sorted(r["case"] for r in rows if r["role"] == "train"),
        "validation": sorted(r["case"] for r in rows if r["role"] == "validation"),
    }
    if chosen is not None:
        choice = parse_choice(chosen)
        manifest["et_threshold"] = int(choice.pop("et_threshold"))
        manifest["min_component"] = int(choice.pop("min_component", 0))
        for stage, threshold in choice.items():
            manifest["stages"][stage]["threshold"] = threshold
        where = f"the held-out training cases of folds {', '.join(map(str, folds))}, each by its own fold's models"
        manifest["metadata"]["et_threshold_chosen_on"] = where
        manifest["metadata"]["thresholds_chosen_on"] = where
        manifest["metadata"]["min_component_chosen_on"] = where
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2) + "\n")
    print(f"{manifest_path}: split recorded ({len(rows)} cases)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--chosen", help="the last line of train/real/choose_thresholds.py")
    parser.add_argument(
        "--folds", type=int, nargs="+", default=[0, 1], help="the folds whose held-out cases --chosen was measured on"
    )
    args = parser.parse_args()
    main(args.bundle, args.chosen, args.folds)
