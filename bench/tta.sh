#!/usr/bin/env bash
# Test-time mirroring (`brats segment --tta`) against none, on the shared real cases that have a
# reference segmentation: Dice per region and seconds a case for each variant, side by side in one
# run. Run from the repository root, alone on the machine:
#
#   bash bench/tta.sh        # about 3 minutes on 2 CPU cores with the default bundle
#
# Settings (environment): WORK, WEIGHTS (default: the shipped bundle), REAL, PYTHON, and
# VARIANTS (space-separated `name=options` pairs; options joined by commas).
set -euo pipefail

WORK=${WORK:-runs/tta}
WEIGHTS=${WEIGHTS:-weights}
REAL=$(realpath "${REAL:-../shared/data/real}")
PYTHON=${PYTHON:-python3}
VARIANTS=${VARIANTS:-"none= lr=--tta,--tta-axes,0 all8=--tta"}

bash "$(dirname "$0")/../train/link_real_cases.sh" "$REAL" "$WORK/real"

for variant in $VARIANTS; do
  name=${variant%%=*}
  options=${variant#*=}
  # shellcheck disable=SC2086  # options split into words
  "$PYTHON" -m brats_cli segment "$WORK/real" "$WORK/pred-$name" --weights "$WEIGHTS" --overwrite ${options//,/ } \
    2>"$WORK/segment-$name.log"
  "$PYTHON" -m brats_cli evaluate "$WORK/pred-$name/brainlesion-demo.nii.gz" "$REAL/brainlesion-demo/segmentation.nii.gz" \
    --json "$WORK/$name-brainlesion-demo.json" 2>/dev/null
  "$PYTHON" -m brats_cli evaluate "$WORK/pred-$name/TCGA-DU-7294.nii.gz" "$REAL/TCGA-DU-7294/segmentation/mav.nii.gz" \
    --json "$WORK/$name-TCGA-DU-7294.json" 2>/dev/null
done

"$PYTHON" - "$WORK" $VARIANTS <<'PY'
import json, re, sys
from pathlib import Path

work, variants = Path(sys.argv[1]), [v.split("=", 1)[0] for v in sys.argv[2:]]
print(f"{'variant':8} {'case':18} {'WT':>6} {'TC':>6} {'ET':>6} {'s/case':>7}")
for name in variants:
    log = (work / f"segment-{name}.log").read_text()
    seconds = {m[0]: float(m[1]) for m in re.findall(r"│ (\S+)\s+│ done\s+│\s+([\d.]+) │", log)}
    for case in ("brainlesion-demo", "TCGA-DU-7294"):
        rows = json.loads((work / f"{name}-{case}.json").read_text())["cases"]
        dice = {row["region"]: row["dice"] for row in rows}
        print(f"{name:8} {case:18} {dice['WT']:6.3f} {dice['TC']:6.3f} {dice['ET']:6.3f} {seconds.get(case, float('nan')):7.1f}")
PY
