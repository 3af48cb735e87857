#!/usr/bin/env bash
# Lay out the shared real cases that have reference segmentations as BraTS case folders, by
# symbolic links: brainlesion-demo as it is (2023 names without a case prefix), TCGA-DU-7294 under
# BraTS 2021 names. Used by train/score_default.sh and bench/tta.sh.
#
#   bash train/link_real_cases.sh REAL DEST    # REAL: the shared real cases; DEST: the case folders
set -euo pipefail
REAL=$(realpath "$1")
DEST=$2

mkdir -p "$DEST/brainlesion-demo" "$DEST/TCGA-DU-7294"
for modality in t1c t1n t2f t2w; do
  ln -sfn "$REAL/brainlesion-demo/$modality.nii.gz" "$DEST/brainlesion-demo/$modality.nii.gz"
done
for pair in fla:flair t1:t1 t1c:t1ce t2:t2; do
  ln -sfn "$REAL/TCGA-DU-7294/TCGA-DU-7294_${pair%:*}_bet.nii.gz" "$DEST/TCGA-DU-7294/TCGA-DU-7294_${pair#*:}.nii.gz"
done
