#!/usr/bin/env bash
# The CamVid GPU recipes (both by default) on one GPU machine, trained side by side without Ray
# (`segray train --no-ray`: the same per-worker function as one process), then compared on val.
#
#   bash bench/gpu_camvid.sh DATA OUT [key=value overrides for every recipe run]
#
# DATA: a CamVid root (train/ trainannot/ val/ valannot/); OUT: a local folder for runs, logs and
# the comparison. Environment:
#   TRAIN_DEADLINE_S (default 1800, each recipe's budget): a training still running then is stopped,
#     and its best checkpoint so far is exported (its log says so; the schedule had not finished).
#   HOLDOUT_IF_LEFT_S (default 0 = never): after the runs, when at least this many seconds of
#     SCRIPT_BUDGET_S are left, the recipes train again without the 0001TP frames and are
#     evaluated on them (the unseen-sequence check).
#   LOADER_WORKERS (default 6): loader processes per run.
#   RECIPES (default "unet pspnet"): which configs/camvid-<name>-gpu.yaml recipes run, e.g.
#     RECIPES="segnet vgg-unet" for the SegNet / VGG-UNet comparison.
# Writes OUT/results.tar.gz: logs, curves, comparison.md/.json, each run's metrics.
set -u
DATA=${1:?usage: bench/gpu_camvid.sh DATA OUT [overrides]}
OUT=${2:?usage: bench/gpu_camvid.sh DATA OUT [overrides]}
shift 2
export PYTHONUNBUFFERED=1
DEADLINE=${TRAIN_DEADLINE_S:-1800}
BUDGET=${SCRIPT_BUDGET_S:-3600}
HOLDOUT_IF_LEFT=${HOLDOUT_IF_LEFT_S:-0}
LW=${LOADER_WORKERS:-6}
read -r -a RECIPE_LIST <<<"${RECIPES:-unet pspnet}"
HERE=$(cd "$(dirname "$0")/.." && pwd)
for m in "${RECIPE_LIST[@]}"; do
  [ -f "$HERE/configs/camvid-$m-gpu.yaml" ] || {
    have=$(cd "$HERE/configs" && ls camvid-*-gpu.yaml | sed 's/^camvid-//; s/-gpu\.yaml$//' | tr '\n' ' ')
    echo "RECIPES: no configs/camvid-$m-gpu.yaml (recipes: ${have% })" >&2; exit 2; }
done
START=$(date +%s)
mkdir -p "$OUT"
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"

last_epoch() {  # the newest checkpoint's epoch in a --no-ray run folder, or 0
  python3 -c "import json,sys; k=json.load(open(sys.argv[1]))['kept']; print(int(k[-1]['name'][6:]) if k else 0)" \
    "$1/segray-checkpoints.json" 2>/dev/null || echo 0
}

# train_side_by_side TAG [overrides...]: the recipes (names suffixed TAG) at once, under the deadline.
train_side_by_side() {
  local tag=$1; shift
  local pids=()
  for m in "${RECIPE_LIST[@]}"; do
    python3 "$HERE/jobs/train.py" --no-ray --config "$HERE/configs/camvid-$m-gpu.yaml" \
      name="camvid-$m-gpu$tag" data.root="$DATA" run.storage="$OUT/runs" data.loader_workers="$LW" "$@" \
      >"$OUT/train-$m$tag.log" 2>&1 &
    pids+=($!)
  done
  local t0; t0=$(date +%s)
  while :; do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    if [ $(($(date +%s) - t0)) -ge "$DEADLINE" ]; then
      echo "deadline ${DEADLINE}s: stopping the runs still training"
      for p in "${pids[@]}"; do pkill -TERM -P "$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done
      sleep 5
      break
    fi
    sleep 5
  done
  wait
  echo "side-by-side training$tag: $(($(date +%s) - t0)) s"
  for m in "${RECIPE_LIST[@]}"; do
    local name="camvid-$m-gpu$tag"; local run="$OUT/runs/$name"
    if [ ! -f "$run/model/segray.json" ]; then
      local n; n=$(last_epoch "$run")
      echo "$name: no export (stopped); exporting the best of its $n epochs"
      [ "$n" -gt 0 ] && python3 "$HERE/jobs/train.py" --no-ray --config "$HERE/configs/camvid-$m-gpu.yaml" \
        name="$name" data.root="$DATA" run.storage="$OUT/runs" "$@" run.epochs="$n" \
        >>"$OUT/train-$m$tag.log" 2>&1
    fi
    grep -E "trained |stopped after|exported|fitted offsets|Error|error" "$OUT/train-$m$tag.log" | tail -5
  done
}

train_side_by_side "" "$@"
MAIN_S=$(($(date +%s) - START))
MODELS=(); for m in "${RECIPE_LIST[@]}"; do MODELS+=("$OUT/runs/camvid-$m-gpu/model"); done
python3 "$HERE/jobs/compare_models.py" --models "${MODELS[@]}" \
  --data "$DATA" --split val --output "$OUT/compare" 2>"$OUT/compare.log"
echo "recipes and comparison: $(($(date +%s) - START)) s"

LEFT=$((BUDGET - $(date +%s) + START))
if [ "$HOLDOUT_IF_LEFT" -gt 0 ] && [ "$LEFT" -ge "$HOLDOUT_IF_LEFT" ]; then
  echo "holdout: ${LEFT}s left of ${BUDGET}s (the recipes took ${MAIN_S}s): training without 0001TP"
  DEADLINE=$((LEFT - 90)) train_side_by_side "-holdout" "$@" "data.train={split: train, exclude_prefixes: [0001TP]}"
  for m in "${RECIPE_LIST[@]}"; do
    python3 "$HERE/jobs/evaluate.py" --model "$OUT/runs/camvid-$m-gpu-holdout/model" --data "$DATA" --split train \
      --include-prefix 0001TP --output "$OUT/eval-$m-0001TP" --overlays 0 >"$OUT/eval-$m-0001TP.log" 2>&1
    grep -m1 '"miou"' "$OUT/eval-$m-0001TP.log"
  done
else
  echo "holdout: skipped (${LEFT}s left of ${BUDGET}s, HOLDOUT_IF_LEFT_S=${HOLDOUT_IF_LEFT})"
fi

cd "$OUT" && tar -czf results.tar.gz --exclude='*.safetensors' --exclude='overlays' \
  ./*.log compare eval-* runs/*/curves.png runs/*/segray-checkpoints.json runs/*/model/segray.json \
  runs/*/epoch-*/state.json 2>/dev/null
echo "total: $(($(date +%s) - START)) s"
