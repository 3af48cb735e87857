#!/usr/bin/env bash
# Score a weights bundle on the real validation cases (never trained on): `brats segment` with the
# default settings, `brats evaluate`, then the card's table per dataset (summary.md).
#
#   WEIGHTS=runs/default/bundle bash train/real/score.sh runs/default/split/validation
#
# Settings (environment): WEIGHTS (default: the shipped weights/), WORK (default runs/score-real),
# PYTHON, SEGMENT_OPTIONS (extra `brats segment` options, e.g. "--precision fp32").
set -euo pipefail
CASES=${1:?usage: score.sh VALIDATION_FOLDER}
WEIGHTS=${WEIGHTS:-weights}
WORK=${WORK:-runs/score-real}
PYTHON=${PYTHON:-python3}
SEGMENT_OPTIONS=${SEGMENT_OPTIONS:-}
mkdir -p "$WORK"
# shellcheck disable=SC2086  # options split into words
"$PYTHON" -m brats_cli segment "$CASES" "$WORK/pred" --weights "$WEIGHTS" --overwrite --profile $SEGMENT_OPTIONS \
  2>&1 | tee "$WORK/segment.log"
"$PYTHON" -m brats_cli evaluate "$WORK/pred" "$CASES" --csv "$WORK/scores.csv" > "$WORK/evaluate.log"
"$PYTHON" "$(dirname "$0")/summarise.py" "$WORK/scores.csv" | tee "$WORK/summary.md"
