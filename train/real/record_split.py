"""Write the fixed split (train/real/split.tsv) into a bundle's manifest metadata, so the bundle
itself says which real cases trained it and which were only scored; with --chosen, also the
post-processing chosen out of fold (the last line of train/real/choose_thresholds.py: each region's
probability threshold, the ET threshold, the component rule and the hole filling).

    python train/real/record_split.py BUNDLE [--folds 0 1] \
        [--chosen "chosen: wt=0.5 tc=0.5 et=0.5 et_threshold=600 min_component=0"]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from dataclasses import replace
from pathlib import Path

from brats_cli.bundle import Stage, load_bundle, manifest_from_dict, write_manifest

SPLIT = Path(__file__).with_name("split.tsv")


def parse_choice(line: str) -> dict[str, float]:
    """`chosen: wt=0.5 tc=0.4 et=0.5 et_threshold=600 min_component=3000 fill_core_holes=1` ->
    {"wt": 0.5, ...}; lines of the chooser before it measured components lack `min_component`, and
    before it measured the hole filling `fill_core_holes`."""
    pairs = [word.split("=", 1) for word in line.removeprefix("chosen:").split()]
    try:
        choice = {key: float(value) for key, value in pairs}
    except ValueError:  # a word without "=", or a value that is not a number
        choice = {}
    known = {"wt", "tc", "et", "et_threshold", "min_component", "fill_core_holes"}
    if not {"wt", "tc", "et", "et_threshold"} <= set(choice) <= known or choice.get("fill_core_holes", 0) not in (0, 1):
        raise SystemExit(f"not a choice line of choose_thresholds.py: {line!r}")
    return choice


def main(bundle: Path, chosen: str | None, folds: list[int]) -> None:
    """Record the split (and the choice) through the validated manifest: a choice the manifest
    cannot hold (a threshold outside (0, 1)) is refused before anything is written."""
    manifest = load_bundle(bundle).manifest
    with SPLIT.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    metadata = dict(manifest.metadata)
    metadata["split"] = {
        "file": "train/real/split.tsv",
        "sha256": hashlib.sha256(SPLIT.read_bytes()).hexdigest(),
        "source": "../shared/data/real-train/cases.tsv (public BraTS 2018, 2020 and BraTS-Africa 2023 cases)",
        "train": sorted(r["case"] for r in rows if r["role"] == "train"),
        "validation": sorted(r["case"] for r in rows if r["role"] == "validation"),
    }
    manifest = replace(manifest, metadata=metadata)
    if chosen is not None:
        choice = parse_choice(chosen)
        where = f"the held-out training cases of folds {', '.join(map(str, folds))}, each by its own fold's models"
        stages = dict(manifest.stages)
        for region in ("wt", "tc", "et"):
            stages[Stage(region)] = replace(stages[Stage(region)], threshold=choice[region])
        manifest = replace(
            manifest,
            stages=stages,
            et_threshold=int(choice["et_threshold"]),
            min_component=int(choice.get("min_component", 0)),
            fill_core_holes=bool(choice.get("fill_core_holes", 0)),
            metadata={
                **metadata,
                "et_threshold_chosen_on": where,
                "thresholds_chosen_on": where,
                "min_component_chosen_on": where,
                **({"fill_core_holes_chosen_on": where} if "fill_core_holes" in choice else {}),
            },
        )
    manifest_from_dict(manifest.to_dict(), str(bundle))  # refused here, before the manifest is replaced
    path = write_manifest(bundle, manifest)
    print(f"{path}: split recorded ({len(rows)} cases)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--chosen", help="the last line of train/real/choose_thresholds.py")
    parser.add_argument(
        "--folds", type=int, nargs="+", default=[0, 1], help="the folds whose held-out cases --chosen was measured on"
    )
    args = parser.parse_args()
    main(args.bundle, args.chosen, args.folds)
