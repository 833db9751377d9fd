#!/usr/bin/env bash
# The papers' BAIR protocol (observe 5, predict 25) on the robot-arm domain, for
# docs/prediction.md: synthetic arm videos, a FOMM model for them (configs/kpvid-arm-64.yaml;
# not shipped), keypoints, 5 seeds each of vrnn/rnn/vae, and the evaluation in both modes on
# 50 fresh test videos. About 55 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/arm-64}
SEEDS=${SEEDS:-5}
JOBS=${JOBS:-2}
OUT=${OUT:-docs/prediction}
MODEL=$RUN/kpvid-arm-64.pth.tar
KP=data/arm-64-kp-train.npz
DATA=data/arm-64-seed1

[ -d data/arm-64 ] || kpvid-data synth --domain arm --videos 1000 --seed 0 --out data/arm-64 \
    --size 64 --quiet
if [ ! -f "$MODEL" ]; then
    kpvid-train fomm --config models/configs/kpvid-arm-64.yaml --data data/arm-64 \
        --out "$RUN" --threads 2 --no-progress > "$RUN.log" 2>&1
    kpvid-train export --checkpoint "$RUN/checkpoints/latest.pth.tar" --out "$MODEL"
fi
[ -f "$KP" ] || kpvid-extract --checkpoint "$MODEL" --data data/arm-64 --split train \
    --out "$KP" --quiet

train_one() {  # kind seed: one initialisation, skipped when already done
    local run="$RUN/predictors/$1-s$2"
    [ -f "$run/summary.json" ] && return 0
    mkdir -p "$RUN/predictors"
    kpvid-train predictor --kind "$1" --seed "$2" --data "$KP" --out "$run" \
        --threads 1 --no-progress > "$run.log" 2>&1
}
export -f train_one
export RUN KP
for seed in $(seq 0 $((SEEDS - 1))); do
    for kind in vrnn rnn vae; do
        echo "$kind $seed"
    done
done | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _ \
    || { echo "a training run failed; see $RUN/predictors/*.log" >&2; exit 1; }

[ -d "$DATA" ] || kpvid-data synth --domain arm --videos 100 --seed 1 --test-fraction 0.5 \
    --out "$DATA" --size 64 --quiet
inits() {  # kind: its predictor files, seed order, comma-separated
    ls "$RUN/predictors/$1"-s*/predictor.pt | sort -V | paste -sd, -
}
mkdir -p "$OUT"
pids=()
for mode in reconstruction transfer; do
    kpvid-eval predict --checkpoint "$MODEL" --data "$DATA" --protocol bair --mode "$mode" \
        --predictors "vrnn=$(inits vrnn)" "rnn=$(inits rnn)" "vae=$(inits vae)" \
        constant-velocity hold-last \
        --json "$OUT/bair-$mode.json" --markdown "$OUT/bair-$mode.md" --plots "$OUT" \
        --threads 1 --quiet > "$RUN/eval-$mode.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "an evaluation failed; see $RUN/eval-*.log" >&2; exit 1; }
done
