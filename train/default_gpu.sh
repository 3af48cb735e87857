#!/usr/bin/env bash
# How the default weights bundle in weights/ is made: phantoms from `brats synth`, cached in
# parallel, then the seven models of train/default.toml (base fold 0; WT, TC, ET folds 0 and 1)
# trained at the same time on one GPU, each stopped at a wall-clock limit (the bundle's metadata
# records how many epochs each ran), then `brats bundle`. Run from the repository root:
#
#   bash train/default_gpu.sh                       # one 80 GB GPU, about 7 minutes
#   DEVICE=cpu SHARDS=2 PER_SHARD=3 TIME_BOX=60 RECIPE=train/smoke.toml bash train/default_gpu.sh
#
# Settings (environment): WORK (run folder), SHARDS x PER_SHARD phantoms with seeds SEED0.. (one
# synth and one cache process per shard), TIME_BOX seconds per model, DEVICE, RECIPE, BUNDLE.
set -euo pipefail

WORK=${WORK:-runs/default}
SHARDS=${SHARDS:-16}
PER_SHARD=${PER_SHARD:-15}
SEED0=${SEED0:-1000}
TIME_BOX=${TIME_BOX:-270}
DEVICE=${DEVICE:-cuda}
RECIPE=${RECIPE:-train/default.toml}
BUNDLE=${BUNDLE:-$WORK/bundle}
PYTHON=${PYTHON:-python3}

brats() { "$PYTHON" -m brats_cli "$@"; }
# Many processes share the machine's cores: one thread each for the CPU-bound steps (SimpleITK and
# OpenMP would otherwise each start one thread per core; seen: 240 phantoms took 157 s on 16 cores).
one_thread() { ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 OMP_NUM_THREADS=1 "$@"; }

wait_all() {  # wait for every PID given; fail if any failed
  local status=0
  for pid in "$@"; do wait "$pid" || status=$?; done
  return "$status"
}

stamp() { printf '[%s] %s\n' "$(date +%T)" "$*"; }

mkdir -p "$WORK/shards" "$WORK/data" "$WORK/logs"

stamp "phantoms: $SHARDS x $PER_SHARD, seeds $SEED0.."
pids=()
for i in $(seq 0 $((SHARDS - 1))); do
  one_thread "$PYTHON" -m brats_cli synth "$WORK/shards/$i" --n "$PER_SHARD" --seed $((SEED0 + i)) >"$WORK/logs/synth-$i.log" 2>&1 &
  pids+=($!)
done
wait_all "${pids[@]}"
# One training folder of links; the cache keys on resolved paths, so the shards' entries serve it.
for case in "$WORK"/shards/*/*/; do
  ln -sfn "$(realpath "$case")" "$WORK/data/$(basename "$case")"
done
stamp "phantoms: $(find "$WORK/data" -mindepth 1 -maxdepth 1 | wc -l) cases"

stamp "cache: one process per shard"
pids=()
for i in $(seq 0 $((SHARDS - 1))); do
  one_thread "$PYTHON" -m brats_cli train --recipe "$RECIPE" --data "$WORK/shards/$i" --out "$WORK/prepare/$i" --cache "$WORK/cache" \
    --prepare-only >"$WORK/logs/prepare-$i.log" 2>&1 &
  pids+=($!)
done
wait_all "${pids[@]}"
brats train --recipe "$RECIPE" --data "$WORK/data" --out "$WORK/run" --cache "$WORK/cache" --prepare-only \
  >"$WORK/logs/prepare.log" 2>&1
stamp "cache: done"

stamp "training 7 models at once, ${TIME_BOX}s each, on $DEVICE"
pids=()
for job in base:0 wt:0 wt:1 tc:0 tc:1 et:0 et:1; do
  stage=${job%:*}
  fold=${job#*:}
  # SIGINT at the limit: the epoch in progress is lost, the checkpoints of finished ones remain.
  OMP_NUM_THREADS=2 timeout --signal=INT --kill-after=60 "$TIME_BOX" \
    "$PYTHON" -m brats_cli train --recipe "$RECIPE" --data "$WORK/data" --out "$WORK/run" --cache "$WORK/cache" \
    --stage "$stage" --fold "$fold" --device "$DEVICE" >"$WORK/logs/train-$stage-$fold.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  status=0
  wait "$pid" || status=$?
  # 124 and 130: stopped at the time limit, as intended.
  if [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 130 ]; then
    stamp "a training process failed with status $status"
  fi
done
stamp "training: done"

rm -rf "$BUNDLE"
brats bundle "$WORK/run" --out "$BUNDLE"
stamp "bundle: $BUNDLE"
