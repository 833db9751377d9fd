#!/usr/bin/env bash
# The papers' prediction experiments (docs/prediction.md): M1 and M2, reconstruction and
# transfer, on 50 freshly generated test videos (data seed 1; held-out photographs for
# kpvid-heads-64, cartoon faces for kpvid-faces-64), for the five predictors, the learned ones
# over the initialisations scripts/make-predictors.sh trained for MODEL (10 for M1, 5 for M2).
# Writes docs/prediction/<mode>.{json,md} and the plots. The two modes run side by side on one
# CPU thread each: about 30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-kpvid-heads-64}
NAME=${MODEL#kpvid-}
RUNS=${RUNS:-runs/predictors-$NAME}
OUT=${OUT:-docs/prediction}
DOMAIN=$([ "$MODEL" = kpvid-faces-64 ] && echo faces || echo photos)
SIZE=${NAME##*-}  # the model's frame size: kpvid-heads-256 -> 256
DATA=data/$DOMAIN-$SIZE-seed1

[ -d "$DATA" ] || kpvid-data synth --domain "$DOMAIN" --videos 100 --seed 1 \
    --test-fraction 0.5 --out "$DATA" --size "$SIZE"
inits() {  # kind: its predictor files, seed order, comma-separated
    ls "$RUNS/$1"-s*/predictor.pt | sort -V | paste -sd, -
}
# every kind trained in $RUNS (vrnn, rnn, vae, and variants trained by hand into $RUNS/NAME-sSEED,
# such as vrnn-fixed-std), each with its initialisations
learned=()
for kind in $(ls -d "$RUNS"/*-s*/ | sed -E 's#.*/([^/]+)-s[0-9]+/$#\1#' | sort -u); do
    learned+=("$kind=$(inits "$kind")")
done
mkdir -p "$OUT"
pids=()
for mode in reconstruction transfer; do
    kpvid-eval predict --checkpoint "models/weights/$MODEL.pth.tar" --data "$DATA" \
        --protocol m1 m2 --mode "$mode" \
        --predictors "${learned[@]}" constant-velocity hold-last \
        --json "$OUT/$mode.json" --markdown "$OUT/$mode.md" --plots "$OUT" \
        --threads 1 --quiet > "$RUNS/eval-$mode.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "an evaluation failed; see $RUNS/eval-*.log" >&2; exit 1; }
done
