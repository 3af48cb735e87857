"""One split fold's models of a torch weights bundle, as a bundle of their own: every stage keeps
its model of FOLD, and a stage trained on a single fold (the default's base model) keeps that one.
Out-of-fold scoring runs this bundle on FOLD's held-out training cases (train/real/out_of_fold.sh);
`brats segment --folds` cannot, because it counts folds per stage and the base has only fold 0.

    python train/real/fold_bundle.py BUNDLE FOLD OUT
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from brats_cli.bundle import MANIFEST, Stage, load_bundle


def main(source: Path, fold: int, out: Path) -> None:
    bundle = load_bundle(source)  # verifies every file's checksum
    manifest = json.loads((source / MANIFEST).read_text())
    numbers = manifest.setdefault("metadata", {}).setdefault("fold_numbers", {})
    if out.exists():
        raise SystemExit(f"{out}: exists; remove it first")
    out.mkdir(parents=True)
    for stage, spec in manifest["stages"].items():
        held = bundle.manifest.fold_numbers(Stage(stage))
        if len(held) > 1:
            if fold not in held:
                raise SystemExit(f"{source}: stage {stage} has no model of fold {fold} (folds {held})")
            spec["folds"] = [spec["folds"][held.index(fold)]]
            numbers[stage] = [fold]
        for entry in spec["folds"]:
            shutil.copy2(source / entry["file"], out / entry["file"])
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    load_bundle(out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
