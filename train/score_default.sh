#!/usr/bin/env bash
# The measured numbers of the model card (weights/README.md), from scratch: the default bundle on
# the two shared real cases that have algorithm segmentations, then on four series of 20 phantoms
# that no model of the bundle trained on (generator 1 seeds 9000, 9100, 9200; generator 2 seed
# 9300; training used seeds 1000-1001, 1100-1101 and 1200-1201), with per-stage seconds, a summary
# table (summary.md) and the overlay figure. No real case is ever trained on; these two are only
# scored. Run from the repository root:
#
#   bash train/score_default.sh                 # about 15 minutes on 2 CPU cores
#
# Settings (environment): WORK (folder for everything written), WEIGHTS (bundle; default: the
# shipped one), REAL (the shared real cases), SERIES (the phantom series, "seed:generator" words),
# PYTHON, extra `brats segment` options in SEGMENT_OPTIONS (e.g. "--precision fp32"), and FIGURE
# (the overlay figure; default: the card's docs/default-weights-real.png for the shipped bundle,
# else WORK/default-weights-real.png).
set -euo pipefail

WORK=${WORK:-runs/score-default}
WEIGHTS=${WEIGHTS:-weights}
REAL=${REAL:-../shared/data/real}
SERIES=${SERIES:-"9000:1 9100:1 9200:1 9300:2"}
PYTHON=${PYTHON:-python3}
SEGMENT_OPTIONS=${SEGMENT_OPTIONS:-}
# The card's figure only for the shipped bundle: scoring a candidate leaves the docs as they are.
if [ "$(realpath "$WEIGHTS")" = "$(realpath weights)" ]; then FIGURE_DEFAULT=docs/default-weights-real.png
else FIGURE_DEFAULT=$WORK/default-weights-real.png; fi
FIGURE=${FIGURE:-$FIGURE_DEFAULT}
REAL=$(realpath "$REAL")

brats() { "$PYTHON" -m brats_cli "$@"; }
stamp() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
mkdir -p "$WORK"

stamp "real cases: brainlesion-demo as it is; TCGA-DU-7294 linked under BraTS 2021 names"
bash "$(dirname "$0")/link_real_cases.sh" "$REAL" "$WORK/real"
# shellcheck disable=SC2086  # options split into words
brats segment "$WORK/real" "$WORK/pred-real" --weights "$WEIGHTS" --overwrite --profile $SEGMENT_OPTIONS
brats evaluate "$WORK/pred-real/brainlesion-demo.nii.gz" "$REAL/brainlesion-demo/segmentation.nii.gz" \
  --json "$WORK/brainlesion-demo.json"
brats evaluate "$WORK/pred-real/TCGA-DU-7294.nii.gz" "$REAL/TCGA-DU-7294/segmentation/mav.nii.gz" \
  --json "$WORK/TCGA-DU-7294.json"

for series in $SERIES; do
  seed=${series%:*} generator=${series#*:}
  stamp "20 held-out phantoms, seed $seed, generator $generator"
  if [ "$(find "$WORK/heldout-$seed/" -name '*_seg.nii.gz' 2>/dev/null | wc -l)" -ne 20 ]; then
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 brats synth "$WORK/heldout-$seed" --n 20 --seed "$seed" --generator "$generator"
  fi
  # shellcheck disable=SC2086
  brats segment "$WORK/heldout-$seed" "$WORK/pred-$seed" --weights "$WEIGHTS" --overwrite --profile $SEGMENT_OPTIONS
  brats evaluate "$WORK/pred-$seed" "$WORK/heldout-$seed" --json "$WORK/heldout-$seed.json"
done

stamp "summary: $WORK/summary.md"
"$PYTHON" - "$WORK" $SERIES <<'EOF' | tee "$WORK/summary.md"
import json
import sys
from pathlib import Path

work, series = Path(sys.argv[1]), sys.argv[2:]
regions = ("WT", "TC", "ET")


def means(path: Path) -> dict[str, float]:
    summary = json.loads(path.read_text())["summary"]
    return {r: summary[r]["dice"]["mean"] for r in regions}


print("| cases | WT | TC | ET |")
print("|---|---|---|---|")
for case in ("brainlesion-demo", "TCGA-DU-7294"):
    dice = means(work / f"{case}.json")
    print(f"| {case} | " + " | ".join(f"{dice[r]:.3f}" for r in regions) + " |")
total = {r: 0.0 for r in regions}
for word in series:
    seed, generator = word.split(":")
    dice = means(work / f"heldout-{seed}.json")
    print(f"| 20 phantoms, seed {seed}, generator {generator} | " + " | ".join(f"{dice[r]:.3f}" for r in regions) + " |")
    if generator == "1":
        for r in regions:
            total[r] += dice[r]
ones = sum(word.endswith(":1") for word in series)
if ones:
    print(f"| all {20 * ones} generator-1 phantoms | " + " | ".join(f"{total[r] / ones:.3f}" for r in regions) + " |")
EOF

stamp "overlays: $FIGURE"
PYTHONPATH=. "$PYTHON" docs/make_default_weights_figure.py "$WORK/pred-real" --images "$WORK/real" --out "$FIGURE"
stamp "done: $WORK"
