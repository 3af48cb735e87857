#!/usr/bin/env bash
# Lay out the extracted real pool (../shared/data/real-train/extract.sh) by the fixed split
# (train/real/split.tsv) as two folders of links: DEST/train (the cases models train on) and
# DEST/validation (the cases every figure of the model card comes from; never trained on).
#
#   bash train/real/link_split.sh POOL DEST
set -euo pipefail
POOL=$(realpath "$1")
DEST=$2
SPLIT=$(dirname "$0")/split.tsv
rm -rf "$DEST/train" "$DEST/validation"
mkdir -p "$DEST/train" "$DEST/validation"
missing=0
while IFS=$'\t' read -r case _dataset role _rest; do
  if [ ! -d "$POOL/$case" ]; then echo "$POOL/$case: not extracted" >&2; missing=1; continue; fi
  ln -sfn "$POOL/$case" "$DEST/$role/$case"
done < <(tail -n +2 "$SPLIT")
[ "$missing" -eq 0 ] || { echo "run ../shared/data/real-train/extract.sh first" >&2; exit 2; }
echo "$(ls "$DEST/train" | wc -l) train, $(ls "$DEST/validation" | wc -l) validation cases under $DEST"
