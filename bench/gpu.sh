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
# No training step: the default bundle trains on the real pool (train/default.sh), whose 820 MB
# cannot travel to the device (64 MiB carry) and may not be committed.
# The 20 held-out phantoms are made in the background while the GPU runs the tests and the benchmark. Python packages missing on the machine (nibabel,
# SimpleITK) and the MNI templates (for `brats synth`) travel in .carry/ (bench/RESULTS.md says
# how it is assembled). Logs are packed after every step, so a run stopped at its time limit still
# returns what it did. Files that come back: summary.txt, gpu-bench.json, logs.tar.
set -uo pipefail
OUT=${OUT:-/tmp/brats-gpu}
STEPS=${STEPS:-"profile bench test e2e"}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-540}  # seconds from the start by which everything should have ended
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
  tar cf "$OUT/logs.tar" -C "$OUT" logs
}
HELDOUT=${HELDOUT:-20}

heldout() {  # 20 phantoms never used in training (seed 9000, as weights/README.md), in runs/heldout
  [ -f runs/heldout/.done ] && return
  ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 OMP_NUM_THREADS=1 brats synth runs/heldout --n "$HELDOUT" --seed 9000 \
    >"$OUT/logs/synth-heldout.log" 2>&1 && touch runs/heldout/.done
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


nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'ort', o.__version__, o.get_available_providers())" \
  | tee -a "$OUT/summary.txt"
preparing=
if [[ " $STEPS " == *" e2e"* ]]; then
  heldout &
  preparing=$!
fi
for step in $STEPS; do
  # The end-to-end timing wants the CPU cores and the phantoms: wait for them.
  if [ -n "$preparing" ] && [[ $step == e2e* ]]; then
    stamp "waiting for the held-out phantoms"
    wait "$preparing" || stamp "making the phantoms failed (logs/synth-heldout.log)"
    preparing=
    stamp "data ready"
  fi
  "step_$step"
  pack_logs
done
rm -rf "$OUT/logs"
stamp "done"
