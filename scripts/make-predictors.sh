#!/usr/bin/env bash
# Train the keypoint predictors for a shipped FOMM checkpoint (MODEL: kpvid-heads-64, the
# default, kpvid-heads-256, kpvid-mesh-64 or kpvid-faces-64) and ship the best of each kind: keypoint sequences
# of the model's training videos, then SEEDS initialisations (seeds 0..) of each learned kind
# (vrnn, rnn, vae), JOBS runs at a time on one CPU thread each. About 50 minutes on 2 CPU cores
# with 10 seeds. The other initialisations stay in $RUNS for scripts/eval-predictors.sh (the
# papers report 10 for M1, 5 for M2).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-kpvid-heads-64}
NAME=${MODEL#kpvid-}
RUNS=${RUNS:-runs/predictors-$NAME}
SEEDS=${SEEDS:-10}
JOBS=${JOBS:-2}
KP=data/$NAME-kp-train.npz

case "$MODEL" in
    kpvid-faces-64)
        DATA=(data/faces-64)
        [ -d data/faces-64 ] || kpvid-data synth --domain faces --videos 2000 --seed 0 \
            --out data/faces-64 --size 64 ;;
    kpvid-heads-64|kpvid-mesh-64)  # their training data (scripts/make-heads-checkpoint.sh)
        DATA=(data/photos-64 data/faces-1200)
        [ -d data/photos-64 ] || kpvid-data synth --domain photos --videos 1600 --seed 0 \
            --test-fraction 0.0625 --out data/photos-64 --size 64 --workers 2
        [ -d data/faces-1200 ] || kpvid-data synth --domain faces --videos 1200 --seed 0 \
            --out data/faces-1200 --size 64 --workers 2
        if [ "$MODEL" = kpvid-mesh-64 ]; then  # keypoints from the FaceMesh tracks
            kpvid-data facemesh data/photos-64 --workers 2
            kpvid-data facemesh data/faces-1200 --workers 2
            EXTRACT=(--mesh-tracks)
        fi ;;
    kpvid-heads-256)  # its training data (scripts/make-heads-256-checkpoint.sh)
        DATA=(data/photos-256 data/faces-256)
        [ -d data/photos-256 ] || kpvid-data synth --domain photos --videos 800 --seed 0 \
            --test-fraction 0.0625 --out data/photos-256 --size 256 --workers 2
        [ -d data/faces-256 ] || kpvid-data synth --domain faces --videos 300 --seed 0 \
            --out data/faces-256 --size 256 --workers 2 ;;
    *) echo "MODEL must be kpvid-heads-64, kpvid-heads-256, kpvid-mesh-64 or kpvid-faces-64" >&2
       exit 2 ;;
esac
[ -f "$KP" ] || kpvid-extract --checkpoint "models/weights/$MODEL.pth.tar" --data "${DATA[@]}" \
    --split train --out "$KP" --threads 2 ${EXTRACT[@]+"${EXTRACT[@]}"}
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
# ship, of each kind, the initialisation with the lowest validation error on M1 (a VRNN whose
# posterior collapsed scores as hold-last does; models/weights/predictors/MANIFEST.md)
for kind in vrnn rnn vae; do
    best=$(python3 -c 'import json, sys
runs = sys.argv[1:]
print(min(runs, key=lambda r: json.load(open(r + "/summary.json"))["validation"]["m1"]["kp_mse"]))
' $(seq -f "$RUNS/$kind-s%g" 0 $((SEEDS - 1))))
    echo "$kind: shipping $best"
    cp "$best/predictor.pt" "models/weights/predictors/$kind-$NAME.pt"
done
