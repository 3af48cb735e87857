#!/usr/bin/env bash
# How the default weights bundle in weights/ is made: phantoms from `brats synth`, cached in
# parallel, the models of the recipe trained in parallel lanes (each lane trains its jobs one after
# the other), then `brats bundle`. Run from the repository root:
#
#   bash train/default.sh                       # the shipped bundle: 2 CPU cores, about 5 hours
#   git archive 2d8c0bf weights | tar -x -C /tmp/round3     # the bundle of rounds one to three
#   FROM_ROUND=4 ROUND4_INIT=/tmp/round3/weights bash train/default.sh   # rounds four and five, from it
#   git archive 144fee4 weights | tar -x -C /tmp/round4                   # the bundle of round four
#   FROM_ROUND=5 ROUND5_INIT=/tmp/round4/weights bash train/default.sh   # round five only, from it
#   git archive 00b7aee weights | tar -x -C /tmp/round5                   # the bundle of round five
#   SIXTH_LANES="wt:0 | wt:1" FROM_ROUND=6 ROUND6_INIT=/tmp/round5/weights bash train/default.sh
#                                               # round six, measured and not shipped, from it
#   SIXTH_LANES="wt:0 | wt:1" FROM_ROUND=6 ROUND6_INIT=/tmp/round5/weights BUNDLE=/tmp/round6 bash train/default.sh
#   SEVENTH_LANES="wt:0 | wt:1" FROM_ROUND=7 ROUND7_INIT=/tmp/round6 bash train/default.sh
#                                               # round seven, from round six's bundle
#   EIGHTH_LANES="et:0 | et:1" FROM_ROUND=8 ROUND8_INIT=/tmp/round5/weights bash train/default.sh
#                                               # round eight, from round five's (shipped) bundle
#   DEVICE=cuda RECIPE=train/default_gpu.toml TIME_BOX=270 THREADS=2 SECOND_LANES= THIRD_LANES= \
#     LANES="base:0 | wt:0 | wt:1 | tc:0 | tc:1 | et:0 | et:1" bash train/default.sh   # one GPU
#
# Settings (environment): WORK (run folder), SHARDS x PER_SHARD phantoms with seeds SEED0.. (one
# synth and one cache process per shard), LANES (jobs stage:fold; lanes split by "|"), THREADS per
# training process, SECOND_LANES (the second round's jobs, from the first round's models),
# THIRD_LANES (the third round's jobs, from the second round's models, with EXTRA_SHARDS x
# EXTRA_PER_SHARD training-only phantoms of seeds EXTRA_SEED0.. whose lesions are non-enhancing with
# share EXTRA_NON_ENHANCING), TIME_BOX (seconds per job; 0 = the recipe's full epochs), DEVICE,
# RECIPE, BUNDLE, FROM_ROUND (2 to 8: the earlier rounds' run folders exist, or for 4 to 8 the
# bundle ROUND4_INIT to ROUND8_INIT; train from this round on), STOP_AFTER (phantoms, cache, or
# cache4 to cache8 for rounds four to eight: prepare the data only,
# e.g. while a GPU is busy). Round four: FOURTH_LANES, its phantoms V2_SHARDS x V2_PER_SHARD of
# generator 2 with seeds V2_SEED0.. and non-enhancing share V2_NON_ENHANCING, plus the first
# V1_EXTRA generator-1 phantoms of seed SEED0 as training-only cases, ROUND4_RECIPE, ROUND4_INIT,
# ROUND4_STOP_AFTER (stage:epochs at which its jobs stop), ROUND4_KEEP (stages bundled from round three).
# Round five: FIFTH_LANES, its phantoms V3_SHARDS x V3_PER_SHARD of generator 3 with seeds V3_SEED0..
# and non-enhancing share V3_NON_ENHANCING, plus round four's V1_EXTRA generator-1 phantoms as
# training-only cases, ROUND5_RECIPE, ROUND5_INIT (a bundle; empty: round four's), ROUND5_KEEP.
# Round six (not in the shipped bundle): SIXTH_LANES, on round five's and round four's phantoms,
# ROUND6_RECIPE, ROUND6_INIT (a bundle; empty: round five's), ROUND6_KEEP.
# Round seven: SEVENTH_LANES, its phantoms V4_SHARDS x V4_PER_SHARD of generator 4 (outlines from the
# label maps V4_SHAPES) with seeds V4_SEED0.. and non-enhancing share V4_NON_ENHANCING, plus round
# four's V1_EXTRA generator-1 phantoms as training-only cases, ROUND7_RECIPE, ROUND7_INIT (a
# bundle; empty: round six's), ROUND7_KEEP. Round eight: EIGHTH_LANES, its phantoms V1B_SHARDS x
# V1B_PER_SHARD of generator 1 with seeds V1B_SEED0.., plus the V1_EXTRA ones, ROUND8_RECIPE,
# ROUND8_INIT (a bundle; empty: round seven's), ROUND8_KEEP.
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
# A third round for TC, whose second-round models still missed non-enhancing cores (3 of the 20
# held-out phantoms, TC Dice 0.35-0.51): the recipe's epochs again from round two, with 120 more
# phantoms, 60% of them non-enhancing, on the training side of both folds (brats train --extra;
# the validation split stays that of rounds one and two). Empty: no third round.
THIRD_LANES=${THIRD_LANES-"tc:0 | tc:1"}
EXTRA_SHARDS=${EXTRA_SHARDS:-2}
EXTRA_PER_SHARD=${EXTRA_PER_SHARD:-60}
EXTRA_SEED0=${EXTRA_SEED0:-1100}
EXTRA_NON_ENHANCING=${EXTRA_NON_ENHANCING:-0.6}
FROM_ROUND=${FROM_ROUND:-1}
THREADS=${THREADS:-1}
TIME_BOX=${TIME_BOX:-0}
DEVICE=${DEVICE:-cpu}
RECIPE=${RECIPE:-train/default.toml}
BUNDLE=${BUNDLE:-$WORK/bundle}
PYTHON=${PYTHON:-python3}
STOP_AFTER=${STOP_AFTER:-}
# Round four, for real scans: every model trained on from round three on phantoms of generator 2
# (domain-randomised contrast, resolution and artefacts, after SynthSeg; edema along white matter,
# uneven rims, unlabelled vessels), a third of them with non-enhancing cores, and 60 generator-1
# phantoms on the training side. Its run folder splits the new phantoms into its own folds, so
# validation is on generator-2 cases no model has seen. Empty FOURTH_LANES: no round four.
# As shipped (2026-12-04), round four trains the base and WT models and stops them after 2 of the
# recipe's 3 epochs (ROUND4_STOP_AFTER, to fit a 3-hour session; the manifest records the epochs
# each model ran), and the bundle keeps round three's TC and ET models (ROUND4_KEEP): TC and ET
# were trained in round four too (2 and 1 epochs) and made the real cases worse (TC 0.908 -> 0.730
# and 0.648 -> 0.071; weights/README.md), so this schedule no longer trains them.
FOURTH_LANES=${FOURTH_LANES-"base:0 wt:1 | wt:0"}
ROUND4_STOP_AFTER=${ROUND4_STOP_AFTER-"base:2 wt:2"}
ROUND4_KEEP=${ROUND4_KEEP-"tc,et"}
V2_SHARDS=${V2_SHARDS:-2}
V2_PER_SHARD=${V2_PER_SHARD:-75}
V2_SEED0=${V2_SEED0:-1200}
V2_NON_ENHANCING=${V2_NON_ENHANCING:-0.35}
V1_EXTRA=${V1_EXTRA:-60}
ROUND4_RECIPE=${ROUND4_RECIPE:-train/default_round4.toml}
ROUND4_INIT=${ROUND4_INIT:-}  # empty: the round before (its run folder, bundled for ROUND4_KEEP)
# Round five, for low-grade gliomas: the TC models trained on from round four's bundle on phantoms
# of generator 3 (generator 1 whose non-enhancing lesions look like diffuse low-grade gliomas:
# brighter than edema on T2, often darker on FLAIR, an infiltrative margin), 60% of them
# non-enhancing, in folds of their own, with round four's 60 generator-1 phantoms on the training
# side. The bundle keeps round four's base, WT and ET (ROUND5_KEEP). Empty FIFTH_LANES: none.
FIFTH_LANES=${FIFTH_LANES-"tc:0 | tc:1"}
ROUND5_KEEP=${ROUND5_KEEP-"base,wt,et"}
V3_SHARDS=${V3_SHARDS:-2}
V3_PER_SHARD=${V3_PER_SHARD:-75}
V3_SEED0=${V3_SEED0:-1300}
V3_NON_ENHANCING=${V3_NON_ENHANCING:-0.6}
ROUND5_RECIPE=${ROUND5_RECIPE:-train/default_round5.toml}
ROUND5_INIT=${ROUND5_INIT:-}
# Round six, for small tumours: the WT models trained on from round five's bundle on the phantoms of
# all three generators (generator 3's in folds of their own; round four's generator-1 and
# generator-2 ones on the training side), because round four's WT models, which learnt large
# edema from generator 2, paint edema far around small tumours. The bundle keeps round five's
# base, TC and ET (ROUND6_KEEP). Measured on 2026-12-05 and not shipped, so SIXTH_LANES is empty by
# default: it raised WT over the 60 held-out generator-1 phantoms from 0.922 to 0.942 but lowered
# it on both real cases (0.912 -> 0.897 and 0.901 -> 0.883; weights/README.md). To train it:
# SIXTH_LANES="wt:0 | wt:1".
SIXTH_LANES=${SIXTH_LANES-}
ROUND6_KEEP=${ROUND6_KEEP-"base,tc,et"}
ROUND6_RECIPE=${ROUND6_RECIPE:-train/default_round6.toml}
ROUND6_INIT=${ROUND6_INIT:-}
# Round seven, for real tumour outlines: the WT models trained on from round six's bundle on
# generator-4 phantoms, whose main tumour takes its outline (edema included) from a real label map,
# in folds of their own, with round four's 60 generator-1 phantoms on the training side: round six
# fixed small phantom tumours and lost edema on the real cases; real outlines are the edema it
# lacked. The label maps are the FeTS label-fusion case's three distinct segmentations, a case that
# is never scored (its images are not public). The bundle keeps round six's base, TC and ET.
# Measured on 2026-12-05 and not shipped, so SEVENTH_LANES is empty by default: WT over the 60
# held-out generator-1 phantoms 0.922 -> 0.966, on the real cases 0.912 -> 0.879 and 0.901 -> 0.787.
SEVENTH_LANES=${SEVENTH_LANES-}
V4_SHARDS=${V4_SHARDS:-2}
V4_PER_SHARD=${V4_PER_SHARD:-50}
V4_SEED0=${V4_SEED0:-1400}
V4_NON_ENHANCING=${V4_NON_ENHANCING:-0.35}
V4_FUSION=${V4_FUSION:-../shared/data/real/fets-labelfusion}
V4_SHAPES=${V4_SHAPES:-"$V4_FUSION/baseline.nii.gz $V4_FUSION/unet.nii.gz $V4_FUSION/baseline_staple.nii.gz"}
ROUND7_KEEP=${ROUND7_KEEP-"base,tc,et"}
ROUND7_RECIPE=${ROUND7_RECIPE:-train/default_round7.toml}
ROUND7_INIT=${ROUND7_INIT:-}
# Round eight, for enhancing tumour: the ET models, trained for two epochs in round one and never
# since, trained on from the shipped bundle (round five's) on fresh generator-1 phantoms (seeds
# V1B_SEED0..) in folds of their own, with round four's 60 generator-1 phantoms on the training side.
# The bundle keeps round five's base, WT and TC (ROUND8_KEEP). Measured on 2026-12-05 and not
# shipped, so EIGHTH_LANES is empty by default: ET over the 60 held-out generator-1 phantoms 0.796 ->
# 0.833, but brainlesion-demo's ET 0.865 -> 0.838 and 803 voxels of ET in the non-enhancing
# TCGA-DU-7294 (weights/README.md).
EIGHTH_LANES=${EIGHTH_LANES-}
V1B_SHARDS=${V1B_SHARDS:-2}
V1B_PER_SHARD=${V1B_PER_SHARD:-60}
V1B_SEED0=${V1B_SEED0:-1500}
ROUND8_KEEP=${ROUND8_KEEP-"base,wt,tc"}
ROUND8_RECIPE=${ROUND8_RECIPE:-train/default_round8.toml}
ROUND8_INIT=${ROUND8_INIT:-}

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

make_shards() {  # folder shards per_shard seed0 [synth options]: one synth process per shard
  local folder=$1 shards=$2 per_shard=$3 seed0=$4 pids=() i
  shift 4
  stamp "phantoms: $shards x $per_shard in $folder, seeds $seed0.. $*"
  for i in $(seq 0 $((shards - 1))); do
    # A shard with all its cases (each case folder appears whole, by one rename) is kept: a rerun
    # after a failed training step does not make the same phantoms again. Hidden staging folders
    # of a killed synth are not cases.
    if [ "$(find "$folder/$i" -mindepth 1 -name '.*' -prune -o -name '*_seg.nii.gz' -print 2>/dev/null | wc -l)" \
      -eq "$per_shard" ]; then continue; fi
    one_thread "$PYTHON" -m brats_cli synth "$folder/$i" --n "$per_shard" --seed $((seed0 + i)) "$@" \
      >"$WORK/logs/synth-$(basename "$folder")-$i.log" 2>&1 &
    pids+=($!)
  done
  wait_all "${pids[@]}"
}

link_data() {  # out data...: one folder of links to every case of the data folders (shards too)
  local out=$1 folder case
  shift
  rm -rf "$out"
  mkdir -p "$out"
  for folder in "$@"; do
    for case in "$folder"/*/; do
      ln -sfn "$(realpath "$case")" "$out/$(basename "$case")"
    done
  done
}

cache_shards() {  # folder shards [train options]: one cache process per shard
  local folder=$1 shards=$2 pids=() i
  shift 2
  for i in $(seq 0 $((shards - 1))); do
    # The prepare folders only fill the cache: a fresh one each time, so a rerun with a changed
    # recipe does not stop at the old folder's recipe.json.
    rm -rf "$WORK/prepare/$(basename "$folder")-$i"
    one_thread "$PYTHON" -m brats_cli train --recipe "$RECIPE" --data "$folder/$i" --out "$WORK/prepare/$(basename "$folder")-$i" \
      --cache "$WORK/cache" --prepare-only "$@" >"$WORK/logs/prepare-$(basename "$folder")-$i.log" 2>&1 &
    pids+=($!)
  done
  wait_all "${pids[@]}"
}

round_phantoms() {  # name shards per_shard seed0 [synth options]: made (complete shards kept),
  # linked into $WORK/<name>-data and cached, for rounds four to six
  local name=$1 shards=$2
  make_shards "$WORK/$name" "${@:2}"
  link_data "$WORK/$name-data" "$WORK/$name"/*/
  stamp "cache: $name"
  cache_shards "$WORK/$name" "$shards"
}

prepare_run() {  # run data extra: a fresh run folder whose folds split data, with extra on every
  # training side
  rm -rf "$1"
  brats train --recipe "$RECIPE" --data "$2" --extra "$3" --out "$1" --cache "$WORK/cache" --prepare-only \
    >"$WORK/logs/prepare-$(basename "$1").log" 2>&1
}

if [ "$FROM_ROUND" -le 3 ]; then
  make_shards "$WORK/shards" "$SHARDS" "$PER_SHARD" "$SEED0"
  # One training folder of links; the cache keys on resolved paths, so the shards' entries serve it.
  link_data "$WORK/data" "$WORK/shards"/*/
  stamp "phantoms: $(find "$WORK/data" -mindepth 1 -maxdepth 1 | wc -l) cases"
  [ "$STOP_AFTER" = phantoms ] && exit 0

  stamp "cache: one process per shard"
  cache_shards "$WORK/shards" "$SHARDS"
  brats train --recipe "$RECIPE" --data "$WORK/data" --out "$WORK/run" --cache "$WORK/cache" --prepare-only \
    >"$WORK/logs/prepare.log" 2>&1
  stamp "cache: done"
  [ "$STOP_AFTER" = cache ] && exit 0
fi

RUN_DIR=$WORK/run  # the round being trained: run, run2, run3, run4
DATA=$WORK/data    # its --data: round four's own phantoms in v2-data
INIT=()            # rounds two and three: --init-from the round before
EXTRA=()           # round three: --extra, the training-only phantoms
ROUND=""
declare -A STOP=()  # round four: stage -> epochs after which its jobs are stopped
BUNDLE_FROM=()      # round four: the stages the bundle keeps from round three
train_job() {  # stage:fold
  local stage=${1%:*} fold=${1#*:} status=0
  local command=("$PYTHON" -m brats_cli train --recipe "$RECIPE" --data "$DATA" --out "$RUN_DIR"
    --cache "$WORK/cache" --stage "$stage" --fold "$fold" --device "$DEVICE" "${INIT[@]}" "${EXTRA[@]}")
  local log="$WORK/logs/train$ROUND-$stage-$fold.log"
  stamp "train $stage fold $fold${ROUND:+ (round $ROUND)}"
  if [ "$TIME_BOX" -gt 0 ]; then
    # SIGINT at the limit: the epoch in progress is lost, the checkpoints of finished ones remain;
    # 124 and 130 are that stop, as intended.
    OMP_NUM_THREADS=$THREADS timeout --signal=INT --kill-after=60 "$TIME_BOX" "${command[@]}" >"$log" 2>&1 || status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then status=0; fi
  elif [ -n "${STOP[$stage]:-}" ]; then
    # Stopped by SIGTERM once log.csv holds STOP[stage] epochs (written after that epoch's
    # checkpoints): the recipe's epochs cut short, as round four ran; 143 is that stop.
    OMP_NUM_THREADS=$THREADS "${command[@]}" >"$log" 2>&1 &
    local pid=$! csv="$RUN_DIR/$stage/fold$fold/log.csv" sent=""
    while kill -0 "$pid" 2>/dev/null; do
      if [ -z "$sent" ] && [ -f "$csv" ] && [ "$(($(wc -l <"$csv") - 1))" -ge "${STOP[$stage]}" ]; then
        kill -TERM "$pid" 2>/dev/null || true  # it may have ended since the check
        sent=yes
      fi
      sleep 5
    done
    wait "$pid" || status=$?
    if [ "$status" -eq 143 ]; then status=0; fi
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

copy_untrained() {  # from to lanes: the folds of run "from" that "lanes" does not train again
  local from=$1 to=$2 lanes=$3 folder stage fold
  for folder in "$from"/*/fold*/; do
    stage=$(basename "$(dirname "$folder")")
    fold=$(basename "$folder")
    if [[ " ${lanes//|/ } " != *" $stage:${fold#fold} "* ]]; then
      mkdir -p "$to/$stage"
      cp -r "$folder" "$to/$stage/"
    fi
  done
}

if [ "$FROM_ROUND" -le 1 ]; then run_lanes "$LANES"; fi
if [ -n "$SECOND_LANES" ] && [ "$FROM_ROUND" -le 3 ]; then
  # Round two: the folds it names train the recipe's epochs again in run2, each starting from its
  # round-one best model (brats train --init-from) on the same split; the other folds are copied.
  if [ "$FROM_ROUND" -le 2 ]; then
    rm -rf "$WORK/run2"
    mkdir -p "$WORK/run2"
    cp "$WORK/run/recipe.json" "$WORK/run/folds.json" "$WORK/run2/"
    copy_untrained "$WORK/run" "$WORK/run2" "$SECOND_LANES"
    RUN_DIR=$WORK/run2 INIT=(--init-from "$WORK/run") ROUND=2
    run_lanes "$SECOND_LANES"
  fi
  RUN_DIR=$WORK/run2
fi
if [ -n "$THIRD_LANES" ] && [ "$FROM_ROUND" -le 3 ]; then
  # Round three: as round two, from the round before, with the training-only phantoms. Its
  # folds.json is written by its first job: the same split, plus the training-only cases.
  make_shards "$WORK/extra" "$EXTRA_SHARDS" "$EXTRA_PER_SHARD" "$EXTRA_SEED0" --non-enhancing "$EXTRA_NON_ENHANCING"
  link_data "$WORK/extra-data" "$WORK/extra"/*/
  stamp "cache: training-only phantoms"
  cache_shards "$WORK/extra" "$EXTRA_SHARDS"
  previous=$RUN_DIR
  rm -rf "$WORK/run3"
  mkdir -p "$WORK/run3"
  cp "$previous/recipe.json" "$WORK/run3/"
  brats train --recipe "$RECIPE" --data "$WORK/data" --extra "$WORK/extra-data" --out "$WORK/run3" --cache "$WORK/cache" \
    --prepare-only >"$WORK/logs/prepare-run3.log" 2>&1
  copy_untrained "$previous" "$WORK/run3" "$THIRD_LANES"
  RUN_DIR=$WORK/run3 INIT=(--init-from "$previous") EXTRA=(--extra "$WORK/extra-data") ROUND=3
  run_lanes "$THIRD_LANES"
fi

if [ -n "$FOURTH_LANES" ] && [ "$FROM_ROUND" -le 4 ]; then
  [ "$FROM_ROUND" -le 3 ] || RUN_DIR=$WORK/run3
  previous=${ROUND4_INIT:-$RUN_DIR}
  RECIPE=$ROUND4_RECIPE
  round_phantoms v2 "$V2_SHARDS" "$V2_PER_SHARD" "$V2_SEED0" --generator 2 --non-enhancing "$V2_NON_ENHANCING"
  round_phantoms v1-extra 1 "$V1_EXTRA" "$SEED0"
  prepare_run "$WORK/run4" "$WORK/v2-data" "$WORK/v1-extra-data"
  [ "$STOP_AFTER" = cache4 ] && exit 0
  # Its own recipe, so folds of the round before cannot join its run folder: the stages it does not
  # train come into the bundle from the round before's bundle (ROUND4_KEEP, below).
  RUN_DIR=$WORK/run4 DATA=$WORK/v2-data INIT=(--init-from "$previous") EXTRA=(--extra "$WORK/v1-extra-data") ROUND=4
  for cap in $ROUND4_STOP_AFTER; do STOP[${cap%:*}]=${cap#*:}; done
  run_lanes "$FOURTH_LANES"
  if [ -n "$ROUND4_KEEP" ]; then
    kept=$previous
    if [ -f "$previous/recipe.json" ]; then  # a run folder: its bundle holds the models to keep
      kept=$WORK/bundle-round3
      rm -rf "$kept"
      brats bundle "$previous" --out "$kept"
    fi
    BUNDLE_FROM=(--stages-from "$kept" --stages "$ROUND4_KEEP")
  fi
fi

round_start() {  # round init recipe: sets previous, the bundle the round trains on from (init, or
  # else the round before's bundle as it would ship, made from RUN_DIR and BUNDLE_FROM), and RECIPE
  local round=$1
  previous=$2
  if [ "$FROM_ROUND" -ge "$round" ] && [ -z "$previous" ]; then
    echo "train/default.sh: FROM_ROUND=$round needs ROUND${round}_INIT, the bundle of round $((round - 1))" >&2
    exit 2
  fi
  if [ -z "$previous" ]; then
    previous=$WORK/bundle-round$((round - 1))
    rm -rf "$previous"
    brats bundle "$RUN_DIR" --out "$previous" "${BUNDLE_FROM[@]}"
  fi
  RECIPE=$3
}

round_train() {  # round lanes data extra keep: its run folder (data in folds, extra on every training
  # side; STOP_AFTER=cache<round> stops there), its jobs from previous, the stages kept from it
  prepare_run "$WORK/run$1" "$3" "$4"
  [ "$STOP_AFTER" = "cache$1" ] && exit 0
  RUN_DIR=$WORK/run$1 DATA=$3 INIT=(--init-from "$previous") EXTRA=(--extra "$4") ROUND=$1
  STOP=()
  run_lanes "$2"
  BUNDLE_FROM=()
  [ -z "$5" ] || BUNDLE_FROM=(--stages-from "$previous" --stages "$5")
}

if [ -n "$FIFTH_LANES" ] && [ "$FROM_ROUND" -le 5 ]; then
  round_start 5 "$ROUND5_INIT" "$ROUND5_RECIPE"
  round_phantoms v3 "$V3_SHARDS" "$V3_PER_SHARD" "$V3_SEED0" --generator 3 --non-enhancing "$V3_NON_ENHANCING"
  round_phantoms v1-extra 1 "$V1_EXTRA" "$SEED0"
  round_train 5 "$FIFTH_LANES" "$WORK/v3-data" "$WORK/v1-extra-data" "$ROUND5_KEEP"
fi

if [ -n "$SIXTH_LANES" ]; then
  round_start 6 "$ROUND6_INIT" "$ROUND6_RECIPE"
  round_phantoms v3 "$V3_SHARDS" "$V3_PER_SHARD" "$V3_SEED0" --generator 3 --non-enhancing "$V3_NON_ENHANCING"
  round_phantoms v2 "$V2_SHARDS" "$V2_PER_SHARD" "$V2_SEED0" --generator 2 --non-enhancing "$V2_NON_ENHANCING"
  round_phantoms v1-extra 1 "$V1_EXTRA" "$SEED0"
  link_data "$WORK/mix-extra-data" "$WORK/v1-extra-data" "$WORK/v2-data"
  round_train 6 "$SIXTH_LANES" "$WORK/v3-data" "$WORK/mix-extra-data" "$ROUND6_KEEP"
fi

if [ -n "$SEVENTH_LANES" ]; then
  round_start 7 "$ROUND7_INIT" "$ROUND7_RECIPE"
  shapes=()
  for shape in $V4_SHAPES; do shapes+=(--shapes "$(realpath "$shape")"); done
  round_phantoms v4 "$V4_SHARDS" "$V4_PER_SHARD" "$V4_SEED0" --generator 4 --non-enhancing "$V4_NON_ENHANCING" \
    "${shapes[@]}"
  round_phantoms v1-extra 1 "$V1_EXTRA" "$SEED0"
  round_train 7 "$SEVENTH_LANES" "$WORK/v4-data" "$WORK/v1-extra-data" "$ROUND7_KEEP"
fi

if [ -n "$EIGHTH_LANES" ]; then
  round_start 8 "$ROUND8_INIT" "$ROUND8_RECIPE"
  round_phantoms v1b "$V1B_SHARDS" "$V1B_PER_SHARD" "$V1B_SEED0"
  round_phantoms v1-extra 1 "$V1_EXTRA" "$SEED0"
  round_train 8 "$EIGHTH_LANES" "$WORK/v1b-data" "$WORK/v1-extra-data" "$ROUND8_KEEP"
fi

rm -rf "$BUNDLE"
brats bundle "$RUN_DIR" --out "$BUNDLE" "${BUNDLE_FROM[@]}"
stamp "bundle: $BUNDLE"
