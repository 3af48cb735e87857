#!/usr/bin/env bash
# Out-of-fold predictions of a bundle for choosing its post-processing: for each FOLD, that fold's
# models (train/real/fold_bundle.py) on that fold's held-out training cases (the run's folds.json),
# written with their probabilities and no ET threshold, all into OUT/pred beside OUT/cases, and
# scored (OUT/scores.csv). Every case is predicted by models that never trained on it, except by the
# single base model, which is fold 0's (it trained on the other folds' cases).
#
#   bash train/real/out_of_fold.sh BUNDLE FOLDS_JSON TRAIN_CASES OUT FOLD...
set -euo pipefail
BUNDLE=${1:?usage: out_of_fold.sh BUNDLE FOLDS_JSON TRAIN_CASES OUT FOLD...}
FOLDS_JSON=${2:?}
CASES=${3:?}
OUT=${4:?}
shift 4
PYTHON=${PYTHON:-python3}
HERE=$(dirname "$0")
rm -rf "$OUT" && mkdir -p "$OUT/cases"
for fold in "$@"; do
  "$PYTHON" "$HERE/fold_bundle.py" "$BUNDLE" "$fold" "$OUT/bundle-fold$fold"
  mkdir -p "$OUT/fold$fold"
  "$PYTHON" -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["folds"][int(sys.argv[2])]))' \
    "$FOLDS_JSON" "$fold" | while read -r case; do
    ln -sfn "$(realpath "$CASES/$case")" "$OUT/fold$fold/$case"
    ln -sfn "$(realpath "$CASES/$case")" "$OUT/cases/$case"
  done
  "$PYTHON" -m brats_cli segment "$OUT/fold$fold" "$OUT/pred" --weights "$OUT/bundle-fold$fold" --et-threshold 0 \
    --save-probabilities >"$OUT/segment-fold$fold.log" 2>&1
done
"$PYTHON" -m brats_cli evaluate "$OUT/pred" "$OUT/cases" --csv "$OUT/scores.csv" >"$OUT/evaluate.log"
