"""Write the fixed split (train/real/split.tsv) into a bundle's manifest metadata, so the bundle
itself says which real cases trained it and which were only scored; with --et-threshold, also the
ET threshold chosen out of fold (train/real/choose_et_threshold.py).

    python train/real/record_split.py BUNDLE [--et-threshold T]
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


def main(bundle: Path, et_threshold: int | None) -> None:
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
    if et_threshold is not None:
        manifest["et_threshold"] = et_threshold
        manifest["metadata"]["et_threshold_chosen_on"] = "fold 0's held-out training cases, fold-0 models"
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2) + "\n")
    print(f"{manifest_path}: split recorded ({len(rows)} cases)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--et-threshold", type=int)
    args = parser.parse_args()
    main(args.bundle, args.et_threshold)
