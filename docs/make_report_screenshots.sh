#!/usr/bin/env bash
# docs/report.png and docs/evaluation-report.png: screenshots of the QA report pages, made with the
# bundled default weights on the shared real cases and a few phantoms (headless Chromium, Debian's
# `chromium` package).
#
#   bash docs/make_report_screenshots.sh REAL WORK   # REAL: ../shared/data/real; WORK: a scratch folder
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=$1
WORK=$2
mkdir -p "$WORK"

shoot() {  # shoot PAGE PNG HEIGHT
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$WORK/chromium" \
    --window-size=1400,"$3" --screenshot="$2" "file://$(realpath "$1")" 2>/dev/null
}

# The segmentation report: the three real cases with images, and three phantoms.
bash train/link_real_cases.sh "$REAL" "$WORK/cases"
ln -sfn "$(realpath "$REAL/BraTS-GLI-00001-000")" "$WORK/cases/BraTS-GLI-00001-000"
brats synth "$WORK/phantoms" --n 3 --seed 1
for case in "$WORK"/phantoms/*/; do ln -sfn "$(realpath "$case")" "$WORK/cases/$(basename "$case")"; done
brats segment "$WORK/cases" "$WORK/segmented" --report || true
shoot "$WORK/segmented/report/index.html" docs/report.png 1000

# The evaluation report: phantoms against their ground truth.
brats synth "$WORK/phantoms-gt" --n 5 --seed 7
brats segment "$WORK/phantoms-gt" "$WORK/phantoms-gt-predicted"
brats evaluate "$WORK/phantoms-gt-predicted" "$WORK/phantoms-gt" --report "$WORK/evaluation"
shoot "$WORK/evaluation/index.html" docs/evaluation-report.png 1000
