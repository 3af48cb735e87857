#!/usr/bin/env bash
# One prepared run for the GPU machine (the device tool): no downloads; everything is built in
# place. Writes its numbers under $OUT and prints a summary last. Steps (STEPS, in this order):
#   bench  bench/gpu.py: per-forward time of fp32 / channels-last / bf16 at the paper's widths,
#          model compute per case, fold batching, peak memory; bench/backends.py with ONNX Runtime
#          CUDA (fp16) if this machine's onnxruntime has the CUDA provider
#   profile bench/gpu_profile.py: GroupNorm as PyTorch's kernel and as the network's reductions,
#          contiguous and channels-last, the heaviest kernels of each, folds fused or not
#   test   pytest -m gpu (segment on CUDA against the CPU; deterministic crash-and-resume training)
#   e2e    `brats segment` end to end on 20 phantoms with hand-set paper-width networks (widths
#          24/64, folds 1/5, one window per case: the paper's 16 forwards) in bf16, with --profile
#   e2ecompile the same with --compile (torch.compile), and its label agreement with e2e
#   compile bench/gpu_profile.py --compile: torch.compile (inductor) of the region model against
#          eager, compilation time included
#   train  a GPU default bundle (train/default.sh with train/default_gpu.toml), every model trained
#          for what is left of DEADLINE, then scored on the 20 held-out phantoms
# The phantoms (240 for training, 20 held out) are made and cached in the background while the
# GPU runs the tests and the benchmark. Python packages missing on the machine (nibabel,
# SimpleITK) and the MNI templates (for `brats synth`) travel in .carry/ (bench/RESULTS.md says
# how it is assembled). Logs are packed after every step, so a run stopped at its time limit still
# returns what it did. At most eight files come back: summary.txt, gpu-bench.json, logs.tar,
# heldout-eval.json and the bundle as three tar files.
set -uo pipefail
OUT=${OUT:-/tmp/brats-gpu}
STEPS=${STEPS:-"profile bench test e2e train"}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-540}  # seconds from the start by which everything should have ended
RESERVE=${RESERVE:-110}    # kept back from training: stopping, bundling and scoring the bundle
mkdir -p "$OUT/logs"
ROOT=$(pwd)
if [ -d .carry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .carry/whl/*.whl
fi
export PYTHONPATH="$ROOT:/tmp/site:$ROOT/.carry/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
brats() { python3 -m brats_cli "$@"; }
stamp() { printf '[%s +%ds] %s\n' "$(date +%T)" "$SECONDS" "$*" | tee -a "$OUT/summary.txt"; }
pack_logs() {  # eight files at most come back: the logs travel as one tar
  local extra=()
  mapfile -t extra < <(ls -d runs/default/logs runs/default/run/*/fold*/log.csv 2>/dev/null)
  tar cf "$OUT/logs.tar" -C "$OUT" logs ${extra[@]+-C "$ROOT" "${extra[@]}"}
}
# The training data and the held-out phantoms, as train/default.sh makes them for the GPU recipe.
# SHARDS, PER_SHARD, HELDOUT (phantoms), RECIPE and TRAIN_LANES are set only to try the script
# itself on a CPU.
DATA=(WORK=runs/default SHARDS="${SHARDS:-16}" PER_SHARD="${PER_SHARD:-15}" DEVICE="$DEVICE"
  RECIPE="${RECIPE:-train/default_gpu.toml}")
HELDOUT=${HELDOUT:-20}

heldout() {  # 20 phantoms never used in training (seed 9000, as weights/README.md), in runs/heldout
  [ -f runs/heldout/.done ] && return
  ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 OMP_NUM_THREADS=1 brats synth runs/heldout --n "$HELDOUT" --seed 9000 \
    >"$OUT/logs/synth-heldout.log" 2>&1 && touch runs/heldout/.done
}

prepare_data() {  # in the background: CPU work while the GPU benchmarks
  heldout &
  local making=$! status=0
  env "${DATA[@]}" STOP_AFTER=cache bash train/default.sh >"$OUT/logs/prepare-data.log" 2>&1 || status=$?
  wait "$making" || status=$?
  return "$status"
}

step_profile() {
  stamp "bench/gpu_profile.py"
  timeout 150 python3 -m bench.gpu_profile --stage region --folds 5 >"$OUT/logs/profile.log" 2>&1
  timeout 90 python3 -m bench.gpu_profile --stage base --folds 1 --top 6 >"$OUT/logs/profile-base.log" 2>&1
  grep -hE " ms|folds" "$OUT/logs/profile.log" "$OUT/logs/profile-base.log" | tee -a "$OUT/summary.txt"
}

step_compile() {
  stamp "bench/gpu_profile.py --compile"
  timeout 200 python3 -m bench.gpu_profile --stage region --compile >"$OUT/logs/compile.log" 2>&1
  grep -E " ms|compil" "$OUT/logs/compile.log" | tee -a "$OUT/summary.txt"
}

step_test() {
  stamp "pytest -m gpu"
  timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py tests/test_train.py 2>&1 \
    | tail -6 | tee -a "$OUT/summary.txt"
}

step_bench() {
  stamp "bench/gpu.py"
  timeout 180 python3 -m bench.gpu --folds 5 --repeats 5 --json "$OUT/gpu-bench.json" 2>&1 | tee -a "$OUT/summary.txt"
  if python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    heldout
    stamp "bench/backends.py --device cuda --fp16"
    timeout 100 python3 -m bench.backends --case "runs/heldout/$(ls runs/heldout | head -1)" --device cuda --fp16 \
      --torch-precision bf16 --warmup 1 2>&1 | tail -15 | tee -a "$OUT/summary.txt"
  else
    stamp "ONNX Runtime here has no CUDA provider: no ONNX CUDA timing"
  fi
}

paper_width_run() {  # label [segment options]: the 20 held-out phantoms through paper-width networks
  local label=$1 started=$SECONDS
  shift
  python3 -c "
from pathlib import Path
from brats_cli.bundle import Stage
from tests.builders import flair_bundle
flair_bundle(Path('runs/paper-width'), widths={Stage.BASE: 24, Stage.WT: 64, Stage.TC: 64, Stage.ET: 64},
             folds={Stage.BASE: 1, Stage.WT: 5, Stage.TC: 5, Stage.ET: 5})"
  heldout
  started=$SECONDS
  timeout 240 python3 -m brats_cli segment runs/heldout "runs/paper-pred-$label" --weights runs/paper-width \
    --device "$DEVICE" --precision bf16 --et-threshold 0 --profile --overwrite "$@" >"$OUT/logs/paper-e2e-$label.log" 2>&1
  stamp "end to end ($label): $HELDOUT cases in $((SECONDS - started)) s wall (process start and model loading included)"
  tail -32 "$OUT/logs/paper-e2e-$label.log" | tee -a "$OUT/summary.txt"
}

step_e2e() {
  stamp "end to end: paper-width hand-set networks, folds 1/5, bf16"
  paper_width_run eager
}

step_e2ecompile() {
  stamp "end to end: the same with --compile"
  paper_width_run compiled --compile
  python3 - <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import glob, os
import nibabel as nib, numpy as np
agree = total = 0
for path in sorted(glob.glob("runs/paper-pred-eager/*.nii.gz")):
    a = np.asarray(nib.load(path).dataobj)
    b = np.asarray(nib.load(path.replace("paper-pred-eager", "paper-pred-compiled")).dataobj)
    tumour = (a > 0) | (b > 0)
    agree += int((a[tumour] == b[tumour]).sum()); total += int(tumour.sum())
print(f"--compile against eager: {agree / max(total, 1):.5f} of {total} tumour voxels agree")
PY
}

step_train() {
  local box=$((DEADLINE - SECONDS - RESERVE))
  if [ "$box" -lt 60 ]; then stamp "default bundle: only $box s left for training; skipped"; return; fi
  stamp "default bundle: training, $box s per model"
  env "${DATA[@]}" TIME_BOX=$box THREADS=2 SECOND_LANES= THIRD_LANES= LANES="${TRAIN_LANES:-base:0 | wt:0 | wt:1 | tc:0 | tc:1 | et:0 | et:1}" \
    bash train/default.sh 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
  pack_logs
  [ -f runs/default/bundle/manifest.json ] || { stamp "no bundle"; return; }
  # At most 16 MB a file comes back: the bundle travels as three tar files.
  (cd runs/default/bundle && tar cf "$OUT/bundle-1.tar" manifest.json base_fold0.safetensors wt_fold*.safetensors \
    && tar cf "$OUT/bundle-2.tar" tc_fold*.safetensors && tar cf "$OUT/bundle-3.tar" et_fold*.safetensors)
  stamp "default bundle: $HELDOUT held-out phantoms"
  heldout
  timeout 90 python3 -m brats_cli segment runs/heldout runs/heldout-pred --weights runs/default/bundle \
    --device "$DEVICE" --profile >"$OUT/logs/heldout-segment.log" 2>&1
  brats evaluate runs/heldout-pred runs/heldout --json "$OUT/heldout-eval.json" 2>&1 | tail -30 | tee -a "$OUT/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())" \
  | tee -a "$OUT/summary.txt"
preparing=
if [[ " $STEPS " == *" train "* ]]; then
  prepare_data &
  preparing=$!
elif [[ " $STEPS " == *" e2e"* ]]; then
  heldout &  # only the 20 phantoms: 240 more would load the cores the timing needs
  preparing=$!
fi
for step in $STEPS; do
  # The end-to-end timing and the training want the CPU cores and the data: wait for the preparation.
  if [ -n "$preparing" ] && [[ $step == e2e* || $step == train ]]; then
    stamp "waiting for the phantoms and the cache"
    wait "$preparing" || stamp "data preparation failed (logs/prepare-data.log)"
    preparing=
    stamp "data ready"
  fi
  "step_$step"
  pack_logs
done
rm -rf "$OUT/logs"
stamp "done"
