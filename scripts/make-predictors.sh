#!/usr/bin/env bash
# Train the keypoint predictors for the shipped FOMM checkpoint and ship the seed-0 weights:
# keypoint sequences of the faces-64 training videos, then SEEDS initialisations (seeds 0..)
# of each learned kind (vrnn, rnn, vae), JOBS runs at a time on one CPU thread each.
# About 50 minutes on 2 CPU cores with the defaults. The other initialisations stay in
# $RUNS for scripts/eval-predictors.sh (the papers report 10 for M1, 5 for M2).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/predictors}
SEEDS=${SEEDS:-10}
JOBS=${JOBS:-2}
KP=data/faces-64-kp-train.npz

[ -d data/faces-64 ] || kpvid-data synth --domain faces --videos 2000 --seed 0 \
    --out data/faces-64 --size 64
[ -f "$KP" ] || kpvid-extract --data data/faces-64 --split train --out "$KP"
mkdir -p "$RUNS" models/weights/predictors

train_one() {  # kind seed: one initialisation, skipped when already done
    local run="$RUNS/$1-s$2"
    [ -f "$run/summary.json" ] && return 0
    kpvid-train predictor --kind "$1" --seed "$2" --data "$KP" --out "$run" \
        --threads 1 --no-progress > "$run.log" 2>&1
}
export -f train_one
export RUNS KP
for seed in $(seq 0 $((SEEDS - 1))); do
    for kind in vrnn rnn vae; do
        echo "$kind $seed"
    done
done | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _ \
    || { echo "a training run failed; see $RUNS/*.log" >&2; exit 1; }
for kind in vrnn rnn vae; do
    cp "$RUNS/$kind-s0/predictor.pt" "models/weights/predictors/$kind-faces-64.pt"
done
