#!/usr/bin/env bash
# The default bundle's inference choices measured side by side in one run: Dice per region and
# seconds a case of `brats segment` variants (fold subsets, region window sizes, test-time
# mirroring, ...) on the shared real cases that have a reference segmentation and on held-out
# phantom series. Run from the repository root, alone on the machine:
#
#   bash bench/choices.sh        # about 30 minutes on 2 CPU cores with the default variants
#
# Settings (environment): WORK, WEIGHTS (default: the shipped bundle), REAL, PYTHON, VARIANTS
# (space-separated `name=options` pairs, options joined by commas; the word @wN in them stands for
# a copy of WEIGHTS whose region stages run N^3 windows, @onnx for its `brats export`), SERIES
# (held-out phantom series as "seed:generator" words, empty for none; their folders are made, or
# reused from train/score_default.sh's WORK when HELDOUT names it), REFERENCE (a variant; default
# the first): the summary's last column is the share of the real cases' tumour voxels (in either
# labelling) that a variant labels as the reference does, and SUMMARY_ONLY=1 (only the table, from
# the variants' results already in WORK).
set -euo pipefail

WORK=${WORK:-runs/choices}
WEIGHTS=${WEIGHTS:-weights}
REAL=$(realpath "${REAL:-../shared/data/real}")
PYTHON=${PYTHON:-python3}
# fold0: one model a stage (the base model has only fold 0, so there is no "fold1").
VARIANTS=${VARIANTS:-"shipped= fold0=--folds,0 w128=--weights,@w128 fp32=--precision,fp32 onnx=--weights,@onnx,--backend,onnx,--precision,fp32"}
SERIES=${SERIES-"9000:1 9100:1 9200:1"}
HELDOUT=${HELDOUT:-$WORK}
REFERENCE=${REFERENCE:-${VARIANTS%%=*}}
SUMMARY_ONLY=${SUMMARY_ONLY:-}

brats() { "$PYTHON" -m brats_cli "$@"; }
stamp() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
mkdir -p "$WORK"
bash "$(dirname "$0")/../train/link_real_cases.sh" "$REAL" "$WORK/real"

window_bundle() {  # N: WEIGHTS with N^3 region windows, in $WORK/w<N> (same weight files)
  local out=$WORK/w$1
  rm -rf "$out"
  cp -r "$WEIGHTS" "$out"
  "$PYTHON" - "$out/manifest.json" "$1" <<'PY'
import json, sys
path, size = sys.argv[1], int(sys.argv[2])
manifest = json.load(open(path))
for name, stage in manifest["stages"].items():
    if name != "base":
        stage["input_size"] = [size, size, size]
json.dump(manifest, open(path, "w"), indent=2)
PY
}

for series in $SERIES; do
  seed=${series%:*} generator=${series#*:}
  if [ "$(find "$HELDOUT/heldout-$seed/" -name '*_seg.nii.gz' 2>/dev/null | wc -l)" -ne 20 ]; then
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 brats synth "$HELDOUT/heldout-$seed" --n 20 --seed "$seed" --generator "$generator"
  fi
done

for variant in $VARIANTS; do
  [ -z "$SUMMARY_ONLY" ] || break
  name=${variant%%=*}
  options=${variant#*=}
  for word in ${options//,/ }; do
    if [[ $word == @w* ]]; then window_bundle "${word#@w}"; fi
    if [[ $word == @onnx ]]; then rm -rf "$WORK/onnx" && brats export --weights "$WEIGHTS" --out "$WORK/onnx" >/dev/null; fi
  done
  options=${options//@w/$WORK/w}
  options=${options//@onnx/$WORK/onnx}
  stamp "variant $name: ${options//,/ }"
  mkdir -p "$WORK/$name"
  # A variant's --weights comes later than WEIGHTS and wins (click keeps the last value).
  # shellcheck disable=SC2086  # options split into words
  brats segment "$WORK/real" "$WORK/$name/pred-real" --weights "$WEIGHTS" --overwrite --profile ${options//,/ } \
    >"$WORK/$name/segment-real.log" 2>&1 || { tail -n 3 "$WORK/$name/segment-real.log" >&2; exit 1; }
  brats evaluate "$WORK/$name/pred-real/brainlesion-demo.nii.gz" "$REAL/brainlesion-demo/segmentation.nii.gz" \
    --json "$WORK/$name/brainlesion-demo.json" >/dev/null 2>&1
  brats evaluate "$WORK/$name/pred-real/TCGA-DU-7294.nii.gz" "$REAL/TCGA-DU-7294/segmentation/mav.nii.gz" \
    --json "$WORK/$name/TCGA-DU-7294.json" >/dev/null 2>&1
  for series in $SERIES; do
    seed=${series%:*}
    # shellcheck disable=SC2086
    brats segment "$HELDOUT/heldout-$seed" "$WORK/$name/pred-$seed" --weights "$WEIGHTS" --overwrite --profile \
      ${options//,/ } >"$WORK/$name/segment-$seed.log" 2>&1 || { tail -n 3 "$WORK/$name/segment-$seed.log" >&2; exit 1; }
    brats evaluate "$WORK/$name/pred-$seed" "$HELDOUT/heldout-$seed" --json "$WORK/$name/heldout-$seed.json" >/dev/null 2>&1
  done
done

stamp "summary: $WORK/summary.md"
"$PYTHON" - "$WORK" "$SERIES" "$REFERENCE" $VARIANTS <<'PY' | tee "$WORK/summary.md"
import json
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

work, series, reference = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3]
variants = [v.split("=", 1)[0] for v in sys.argv[4:]]
seeds = [s.split(":")[0] for s in series]
regions = ("WT", "TC", "ET")


def seconds(log: Path) -> list[float]:
    """Per-case seconds from the --profile table's `done` rows."""
    return [float(m) for m in re.findall(r"│ \S+\s+│ done\s+│\s+([\d.]+) │", log.read_text())]


def case_dice(path: Path) -> dict[str, float]:
    return {row["region"]: row["dice"] for row in json.loads(path.read_text())["cases"]}


def agreement(name: str) -> float:
    """Share of the real cases' tumour voxels (in either labelling) labelled as the reference does."""
    same = total = 0
    for path in sorted((work / reference / "pred-real").glob("*.nii.gz")):
        first = np.asarray(nib.load(path).dataobj)
        other = np.asarray(nib.load(work / name / "pred-real" / path.name).dataobj)
        tumour = (first > 0) | (other > 0)
        same += int((first[tumour] == other[tumour]).sum())
        total += int(tumour.sum())
    return same / max(total, 1)


print("| variant | brainlesion-demo WT / TC / ET | TCGA-DU-7294 WT / TC | "
      f"{len(seeds) * 20} phantoms WT / TC / ET | s/case real | s/case phantoms | real labels as {reference} |")
print("|---|---|---|---|---|---|---|")
for name in variants:
    folder = work / name
    demo, tcga = case_dice(folder / "brainlesion-demo.json"), case_dice(folder / "TCGA-DU-7294.json")
    per_case: dict[str, list[float]] = {r: [] for r in regions}
    for seed in seeds:
        for row in json.loads((folder / f"heldout-{seed}.json").read_text())["cases"]:
            per_case[row["region"]].append(row["dice"])
    phantoms = " / ".join(f"{sum(v) / len(v):.3f}" for v in per_case.values()) if seeds else "-"
    real_s = seconds(folder / "segment-real.log")
    phantom_s = [s for seed in seeds for s in seconds(folder / f"segment-{seed}.log")]
    print(
        f"| {name} | {demo['WT']:.3f} / {demo['TC']:.3f} / {demo['ET']:.3f} | {tcga['WT']:.3f} / {tcga['TC']:.3f} | "
        f"{phantoms} | {' and '.join(f'{s:.1f}' for s in real_s)} | "
        + (f"{sum(phantom_s) / len(phantom_s):.1f} (max {max(phantom_s):.1f}) | " if phantom_s else "- | ")
        + f"{agreement(name):.2%} |"
    )
PY
