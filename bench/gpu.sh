#!/usr/bin/env bash
# One prepared run for the GPU machine (the device tool): no downloads; everything is built in
# place. Writes its numbers under $OUT and prints a summary last. Steps (STEPS, in this order):
#   bench  bench/gpu.py: per-forward time of fp32 / channels-last / bf16 at the paper's widths,
#          model compute per case, fold batching, peak memory; bench/backends.py with ONNX Runtime
#          CUDA (fp16) if this machine's onnxruntime has the CUDA provider
#   train  a GPU default bundle (train/default.sh with train/default_gpu.toml), scored on 20 held-out phantoms
#   e2e    `brats segment` end to end on phantoms with hand-set paper-width networks (widths 24/64,
#          5 folds, one window per case) in bf16, with --profile
# Python packages missing on the machine (nibabel, SimpleITK) and the MNI templates (for
# `brats synth`) travel in .carry/ (bench/RESULTS.md says how it is assembled). Logs are packed
# after every step, so a run stopped at its time limit still returns what it did.
set -uo pipefail
OUT=${OUT:-/tmp/brats-gpu}
STEPS=${STEPS:-"bench train e2e"}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT/logs"
ROOT=$(pwd)
if [ -d .carry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl
fi
export PYTHONPATH="$ROOT:/tmp/site:$ROOT/.carry/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
brats() { python3 -m brats_cli "$@"; }
stamp() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$OUT/summary.txt"; }
pack_logs() {  # eight files at most come back: the logs travel as one tar
  tar cf "$OUT/logs.tar" -C "$OUT" logs -C "$ROOT" $(ls -d runs/default/logs runs/default/run/*/fold*/log.csv 2>/dev/null)
}

step_bench() {
  stamp "bench/gpu.py"
  timeout 120 python3 bench/gpu.py --folds 5 --repeats 3 --json "$OUT/gpu-bench.json" 2>&1 | tee -a "$OUT/summary.txt"
  if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    stamp "bench/backends.py --device cuda --fp16"
    timeout 100 python3 bench/backends.py --case "$(heldout_case)" --device cuda --fp16 --torch-precision bf16 \
      --warmup 1 2>&1 | tail -15 | tee -a "$OUT/summary.txt"
  else
    stamp "ONNX Runtime here has no CUDA provider: no ONNX CUDA timing"
  fi
}

heldout() {  # 20 phantoms never used in training (seed 9000, as weights/README.md), in runs/heldout
  [ -d runs/heldout ] && return
  ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 brats synth runs/heldout --n 20 --seed 9000 >/dev/null 2>&1
}

heldout_case() { heldout; echo "runs/heldout/$(ls runs/heldout | head -1)"; }

step_train() {
  stamp "default bundle: training"
  WORK=runs/default SHARDS=16 PER_SHARD=15 DEVICE="$DEVICE" RECIPE=train/default_gpu.toml TIME_BOX=${TIME_BOX:-240} THREADS=2 \
    LANES="base:0 | wt:0 | wt:1 | tc:0 | tc:1 | et:0 | et:1" bash train/default.sh 2>&1 | tail -15 | tee -a "$OUT/summary.txt"
  pack_logs
  [ -f runs/default/bundle/manifest.json ] || { stamp "no bundle"; return; }
  # At most 16 MB a file comes back: the bundle travels as three tar files.
  (cd runs/default/bundle && tar cf "$OUT/bundle-1.tar" manifest.json base_fold0.safetensors wt_fold*.safetensors \
    && tar cf "$OUT/bundle-2.tar" tc_fold*.safetensors && tar cf "$OUT/bundle-3.tar" et_fold*.safetensors)
  stamp "default bundle: 20 held-out phantoms"
  heldout
  timeout 150 python3 -m brats_cli segment runs/heldout runs/heldout-pred --weights runs/default/bundle \
    --device "$DEVICE" --profile >"$OUT/logs/heldout-segment.log" 2>&1
  brats evaluate runs/heldout-pred runs/heldout --json "$OUT/heldout-eval.json" 2>&1 | tail -30 | tee -a "$OUT/summary.txt"
}

step_e2e() {
  stamp "end to end: paper-width hand-set networks, 5 folds, bf16"
  python3 -c "
from pathlib import Path
from brats_cli.bundle import Stage
from brats_cli.testing import flair_bundle
flair_bundle(Path('runs/paper-width'), widths={Stage.BASE: 24, Stage.WT: 64, Stage.TC: 64, Stage.ET: 64}, folds=5)"
  heldout
  timeout 200 python3 -m brats_cli segment runs/heldout runs/paper-pred --weights runs/paper-width \
    --device "$DEVICE" --precision bf16 --et-threshold 0 --profile --overwrite >"$OUT/logs/paper-e2e.log" 2>&1
  tail -45 "$OUT/logs/paper-e2e.log" | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())" \
  | tee -a "$OUT/gpu.txt"
for step in $STEPS; do
  "step_$step"
  pack_logs
done
rm -rf "$OUT/logs"
stamp "done"
