#!/usr/bin/env bash
# The measured numbers of the model card (weights/README.md), from scratch: the default bundle on
# 20 phantoms it never saw (seed 9000; training used seeds 1000 and 1001) and on the two shared
# real cases that have algorithm segmentations, with per-stage seconds, and the overlay figure.
# Run from the repository root:
#
#   bash train/score_default.sh                 # about 10 minutes on 2 CPU cores
#
# Settings (environment): WORK (folder for everything written), WEIGHTS (bundle; default: the
# shipped one), REAL (the shared real cases), PYTHON, and extra `brats segment` options in
# SEGMENT_OPTIONS (e.g. "--precision bf16").
set -euo pipefail

WORK=${WORK:-runs/score-default}
WEIGHTS=${WEIGHTS:-weights}
REAL=${REAL:-../shared/data/real}
PYTHON=${PYTHON:-python3}
SEGMENT_OPTIONS=${SEGMENT_OPTIONS:-}
REAL=$(realpath "$REAL")

brats() { "$PYTHON" -m brats_cli "$@"; }
stamp() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
mkdir -p "$WORK"

stamp "20 held-out phantoms, seed 9000"
if [ "$(find "$WORK/heldout" -name '*_seg.nii.gz' 2>/dev/null | wc -l)" -ne 20 ]; then
  ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 brats synth "$WORK/heldout" --n 20 --seed 9000
fi
# shellcheck disable=SC2086  # options split into words
brats segment "$WORK/heldout" "$WORK/pred-heldout" --weights "$WEIGHTS" --overwrite --profile $SEGMENT_OPTIONS
brats evaluate "$WORK/pred-heldout" "$WORK/heldout" --json "$WORK/heldout.json"

stamp "real cases: brainlesion-demo as it is; TCGA-DU-7294 linked under BraTS 2021 names"
bash "$(dirname "$0")/link_real_cases.sh" "$REAL" "$WORK/real"
# shellcheck disable=SC2086
brats segment "$WORK/real" "$WORK/pred-real" --weights "$WEIGHTS" --overwrite --profile $SEGMENT_OPTIONS
brats evaluate "$WORK/pred-real/brainlesion-demo.nii.gz" "$REAL/brainlesion-demo/segmentation.nii.gz" \
  --json "$WORK/brainlesion-demo.json"
brats evaluate "$WORK/pred-real/TCGA-DU-7294.nii.gz" "$REAL/TCGA-DU-7294/segmentation/mav.nii.gz" \
  --json "$WORK/TCGA-DU-7294.json"

stamp "overlays: docs/default-weights-real.png"
PYTHONPATH=. "$PYTHON" docs/make_default_weights_figure.py "$WORK/pred-real" --images "$WORK/real"
stamp "done: $WORK"
