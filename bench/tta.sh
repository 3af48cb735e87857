#!/usr/bin/env bash
# Test-time mirroring (`brats segment --tta`) against none, on the shared real cases that have a
# reference segmentation: Dice per region and seconds a case for each variant, side by side in one
# run (bench/choices.sh with these variants and no phantom series). Run from the repository root,
# alone on the machine:
#
#   bash bench/tta.sh        # about 3 minutes on 2 CPU cores with the default bundle
#
# Settings (environment): those of bench/choices.sh; WORK defaults to runs/tta.
set -euo pipefail

WORK=${WORK:-runs/tta} VARIANTS=${VARIANTS:-"none= lr=--tta,--tta-axes,0 all8=--tta"} SERIES=${SERIES-} \
  exec bash "$(dirname "$0")/choices.sh"
