#!/usr/bin/env bash
# How the default weights bundle in weights/ is made: phantoms from `brats synth`, cached in
# parallel, the models of the recipe trained in parallel lanes (each lane trains its jobs one after
# the other), then `brats bundle`. Run from the repository root:
#
#   bash train/default.sh                       # the shipped bundle: 2 CPU cores, about 170 minutes
#   DEVICE=cuda RECIPE=train/default_gpu.toml TIME_BOX=270 THREADS=2 SECOND_LANES= \
#     LANES="base:0 | wt:0 | wt:1 | tc:0 | tc:1 | et:0 | et:1" bash train/default.sh   # one GPU
#
# Settings (environment): WORK (run folder), SHARDS x PER_SHARD phantoms with seeds SEED0.. (one
# synth and one cache process per shard), LANES (jobs stage:fold; lanes split by "|"), THREADS per
# training process, SECOND_LANES (the second round's jobs, from the first round's models),
# TIME_BOX (seconds per job; 0 = the recipe's full epochs), DEVICE, RECIPE, BUNDLE,
# STOP_AFTER (phantoms or cache: prepare the data only, e.g. while a GPU is busy with something else).
set -euo pipefail

WORK=${WORK:-runs/default}
SHARDS=${SHARDS:-2}
PER_SHARD=${PER_SHARD:-120}
SEED0=${SEED0:-1000}
# Two lanes for two cores, balanced for train/default.toml: the base model's three epochs and two
# region models in one, four region models in the other.
LANES=${LANES:-"base:0 wt:1 tc:1 | wt:0 tc:0 et:0 et:1"}
# Then a second round for the models whose validation Dice was lowest after the first (base 0.896,
# TC fold 1 0.648, TC fold 0 0.781, WT fold 1 0.922): the recipe's epochs again, from where they
# stood. Empty: no second round.
SECOND_LANES=${SECOND_LANES-"base:0 tc:0 | tc:1 wt:1"}
THREADS=${THREADS:-1}
TIME_BOX=${TIME_BOX:-0}
DEVICE=${DEVICE:-cpu}
RECIPE=${RECIPE:-train/default.toml}
BUNDLE=${BUNDLE:-$WORK/bundle}
PYTHON=${PYTHON:-python3}
STOP_AFTER=${STOP_AFTER:-}

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
  # A shard with all its cases (each file is written atomically, the seg last) is kept: a rerun
  # after a failed training step does not make the same phantoms again.
  if [ "$(find "$WORK/shards/$i" -name '*_seg.nii.gz' 2>/dev/null | wc -l)" -eq "$PER_SHARD" ]; then continue; fi
  one_thread "$PYTHON" -m brats_cli synth "$WORK/shards/$i" --n "$PER_SHARD" --seed $((SEED0 + i)) >"$WORK/logs/synth-$i.log" 2>&1 &
  pids+=($!)
done
wait_all "${pids[@]}"
# One training folder of links; the cache keys on resolved paths, so the shards' entries serve it.
for case in "$WORK"/shards/*/*/; do
  ln -sfn "$(realpath "$case")" "$WORK/data/$(basename "$case")"
done
stamp "phantoms: $(find "$WORK/data" -mindepth 1 -maxdepth 1 | wc -l) cases"
[ "$STOP_AFTER" = phantoms ] && exit 0

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
[ "$STOP_AFTER" = cache ] && exit 0

RUN_DIR=$WORK/run  # the round being trained: run, then run2
INIT=()            # round two: --init-from the first round's run
ROUND=""
train_job() {  # stage:fold
  local stage=${1%:*} fold=${1#*:} status=0
  local command=("$PYTHON" -m brats_cli train --recipe "$RECIPE" --data "$WORK/data" --out "$RUN_DIR"
    --cache "$WORK/cache" --stage "$stage" --fold "$fold" --device "$DEVICE" "${INIT[@]}")
  local log="$WORK/logs/train$ROUND-$stage-$fold.log"
  stamp "train $stage fold $fold${ROUND:+ (round $ROUND)}"
  if [ "$TIME_BOX" -gt 0 ]; then
    # SIGINT at the limit: the epoch in progress is lost, the checkpoints of finished ones remain;
    # 124 and 130 are that stop, as intended.
    OMP_NUM_THREADS=$THREADS timeout --signal=INT --kill-after=60 "$TIME_BOX" "${command[@]}" >"$log" 2>&1 || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then status=0; fi
  else
    OMP_NUM_THREADS=$THREADS "${command[@]}" >"$log" 2>&1 || status=$?
  fi
  [ "$status" -eq 0 ] || stamp "train $stage fold $fold failed with status $status (see $WORK/logs)"
  return "$status"
}

lane() {  # jobs run one after the other; the lane stops at the first failure
  local job
  for job in "$@"; do train_job "$job" || return 1; done
}

run_lanes() {  # the lanes of "$1" in parallel
  local pids=() jobs lanes
  stamp "training: lanes $1 on $DEVICE, $THREADS thread(s) each"
  IFS='|' read -ra lanes <<<"$1"
  for jobs in "${lanes[@]}"; do
    # shellcheck disable=SC2086  # split the lane into its jobs
    lane $jobs &
    pids+=($!)
  done
  wait_all "${pids[@]}"
  stamp "training: done"
}

run_lanes "$LANES"
if [ -n "$SECOND_LANES" ]; then
  # Round two: the folds it names train the recipe's epochs again in run2, each starting from its
  # round-one best model (brats train --init-from) on the same split; the other folds are copied.
  rm -rf "$WORK/run2"
  mkdir -p "$WORK/run2"
  cp "$WORK/run/recipe.json" "$WORK/run/folds.json" "$WORK/run2/"
  for folder in "$WORK"/run/*/fold*/; do
    stage=$(basename "$(dirname "$folder")")
    fold=$(basename "$folder")
    if [[ " ${SECOND_LANES//|/ } " != *" $stage:${fold#fold} "* ]]; then
      mkdir -p "$WORK/run2/$stage"
      cp -r "$folder" "$WORK/run2/$stage/"
    fi
  done
  RUN_DIR=$WORK/run2 INIT=(--init-from "$WORK/run") ROUND=2
  run_lanes "$SECOND_LANES"
fi

rm -rf "$BUNDLE"
brats bundle "$RUN_DIR" --out "$BUNDLE"
stamp "bundle: $BUNDLE"
