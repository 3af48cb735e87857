#!/usr/bin/env bash
# How the default weights bundle in weights/ is made, from the real labelled pool, on 2 CPU cores:
#
#   bash ../shared/data/real-train/extract.sh POOL SNAPSHOTS    # once: the 88 cases (its README)
#   POOL=POOL bash train/default.sh                             # everything below, about 6 hours
#   (on 2 cores alone: rounds one to five 61, about 40, 30, 20 and 65 minutes with an fp32 forward,
#   rounds six and seven 53 and 75 with bf16, which `brats train` picks on CPUs with AMX or AVX-512
#   BF16; rounds one to five take about half as long there now; the rest about 25)
#
# 1. split:  train/real/split.tsv (fixed before any training) -> WORK/split/{train,validation}
# 2. cache:  every case preprocessed once (WORK/cache)
# 3. train:  the rounds of train/rounds.tsv, in order (each: recipe, starting weights, lanes), each
#            bundled as WORK/bundle<round> (its stages named in `keep` taken from the round before,
#            its weights stored in `storage`)
# 4. bundle: the last round's bundle -> BUNDLE, with the split in its manifest and its post-processing
#            (each region's probability threshold, the ET threshold, the component rule) chosen out
#            of fold: folds 0 and 1's models on their own held-out training cases
#            (train/real/out_of_fold.sh, train/real/choose_thresholds.py)
# 5. score:  BUNDLE on the 18 validation cases -> WORK/score/summary.md (train/real/score.sh)
#
# Stopped? Run the same command again: finished steps are kept and every model resumes after its
# last complete epoch. STOP_AFTER=cache|train|bundle stops after that step; ROUNDS (default: every
# round of the schedule) names the rounds to train, e.g. ROUNDS="1".
set -euo pipefail

POOL=${POOL:?POOL: the folder extract.sh wrote the real cases to}
WORK=${WORK:-runs/default}
SCHEDULE=${SCHEDULE:-train/rounds.tsv}
INIT_COMMIT=${INIT_COMMIT:-1e6e973}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
BUNDLE=${BUNDLE:-$WORK/bundle}
STOP_AFTER=${STOP_AFTER:-}
PYTHON=${PYTHON:-python3}
OOF_FOLDS=${OOF_FOLDS:-0 1}
ROUNDS=${ROUNDS:-$(grep -v '^#' "$SCHEDULE" | tail -n +2 | cut -f1 | tr '\n' ' ')}
HERE=$(dirname "$0")

brats() { "$PYTHON" -m brats_cli "$@"; }
stamp() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
mkdir -p "$WORK/logs"

stamp "split: train/real/split.tsv"
bash "$HERE/real/link_split.sh" "$POOL" "$WORK/split"
if [ ! -f "$WORK/init/weights/manifest.json" ]; then
  rm -rf "$WORK/init" && mkdir -p "$WORK/init"
  git archive "$INIT_COMMIT" weights | tar -x -C "$WORK/init"
fi

stamp "cache"
first_recipe=$(grep -v '^#' "$SCHEDULE" | sed -n 2p | cut -f2)
for part in train validation; do
  # Throwaway run folders: they only fill the shared cache, one process per part.
  rm -rf "$WORK/prepare-$part"
  ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 OMP_NUM_THREADS=1 brats train --recipe "$first_recipe" \
    --data "$WORK/split/$part" --out "$WORK/prepare-$part" --cache "$WORK/cache" --prepare-only \
    >"$WORK/logs/prepare-$part.log" 2>&1 &
done
wait
[ "$STOP_AFTER" = cache ] && exit 0

lane() {  # round recipe init job...: the stage:fold[@initfold] jobs of one lane, in turn
  local round=$1 recipe=$2 init=$3 job stage fold from
  shift 3
  for job in "$@"; do
    stage=${job%%:*} fold=${job#*:} from=()
    if [[ $fold == *@* ]]; then from=(--init-fold "${fold#*@}") fold=${fold%@*}; fi
    stamp "round $round: train $stage fold $fold${from[1]:+ from fold ${from[1]}}"
    OMP_NUM_THREADS=$THREADS brats train --recipe "$recipe" --data "$WORK/split/train" --out "$WORK/run$round" \
      --cache "$WORK/cache" --stage "$stage" --fold "$fold" --device "$DEVICE" --resume \
      --init-from "$init" "${from[@]}" >>"$WORK/logs/train$round-$stage-$fold.log" 2>&1
  done
}

last=
while IFS=$'\t' read -r round recipe init keep storage lanes; do
  last=$round
  [[ " $ROUNDS " == *" $round "* ]] || continue
  case $init in
    phantoms) init=$WORK/init/weights ;;
    round*) init=$WORK/bundle${init#round} ;;
  esac
  pids=()
  IFS='|' read -ra jobs_of <<<"$lanes"
  for jobs in "${jobs_of[@]}"; do
    # shellcheck disable=SC2086  # a lane's jobs split into words
    lane "$round" "$recipe" "$init" $jobs &
    pids+=($!)
  done
  status=0
  for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
  [ "$status" -eq 0 ] || { stamp "round $round: a lane failed, see $WORK/logs"; exit "$status"; }
  stamp "round $round: bundle $WORK/bundle$round (kept from round $((round - 1)): $keep)"
  borrow=()
  [ "$keep" = - ] || borrow=(--stages-from "$WORK/bundle$((round - 1))" --stages "$keep")
  rm -rf "$WORK/bundle$round"
  brats bundle "$WORK/run$round" --out "$WORK/bundle$round" --storage "$storage" "${borrow[@]}"
done < <(grep -v '^#' "$SCHEDULE" | tail -n +2)
[ "$STOP_AFTER" = train ] && exit 0

stamp "bundle: $BUNDLE (round $last)"
rm -rf "$BUNDLE"
cp -r "$WORK/bundle$last" "$BUNDLE"

# Post-processing, chosen out of fold (never on the validation split): each of OOF_FOLDS' models
# (WT, TC, ET of that fold, the one base model) on that fold's held-out training cases, written with
# their probabilities and no ET threshold. Folds 2-4 are left out: their models started from folds
# 0 and 1, which trained on their held-out cases (train/default_round5.toml).
stamp "post-processing: folds ${OOF_FOLDS}' held-out training cases"
# shellcheck disable=SC2086  # the folds as words
PYTHON=$PYTHON bash "$HERE/real/out_of_fold.sh" "$BUNDLE" "$WORK/run$last/folds.json" "$WORK/split/train" \
  "$WORK/oof" $OOF_FOLDS
"$PYTHON" "$HERE/real/choose_thresholds.py" "$WORK/oof/pred" "$WORK/oof/cases" | tee "$WORK/oof/choice.md"
# shellcheck disable=SC2086
"$PYTHON" "$HERE/real/record_split.py" "$BUNDLE" --chosen "$(tail -1 "$WORK/oof/choice.md")" --folds $OOF_FOLDS
[ "$STOP_AFTER" = bundle ] && exit 0

WEIGHTS=$BUNDLE WORK=$WORK/score PYTHON=$PYTHON bash "$HERE/real/score.sh" "$WORK/split/validation"
stamp "done: $BUNDLE; copy it to weights/ to ship it"
