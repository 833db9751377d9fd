#!/usr/bin/env bash
# Measure a FOMM checkpoint (default: the shipped kpvid-heads-64) on held-out photographs
# animated with unseen motion and on unseen cartoon faces, with the FaceMesh figures and
# picture strips docs/real-faces.md shows; also the former cartoon-only model, for comparison.
# About 10 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKPOINT=${CHECKPOINT:-models/weights/kpvid-heads-64.pth.tar}
OUT=${OUT:-docs/real-faces}

[ -d data/photos-64-seed1 ] || kpvid-data synth --domain photos --videos 100 --seed 1 \
    --test-fraction 0.5 --out data/photos-64-seed1 --size 64
[ -d data/faces-64-seed1 ] || kpvid-data synth --domain faces --videos 100 --seed 1 \
    --test-fraction 0.5 --out data/faces-64-seed1 --size 64
mkdir -p "$OUT"
for model in "$CHECKPOINT" models/weights/kpvid-faces-64.pth.tar; do
    name=$(basename "$model" .pth.tar)
    kpvid-eval reconstruct --checkpoint "$model" --data data/photos-64-seed1 --quiet \
        --json "$OUT/$name.photos.json" --save-strips "runs/strips/$name" > "$OUT/$name.photos.txt"
    kpvid-eval reconstruct --checkpoint "$model" --data data/faces-64-seed1 --quiet \
        --no-face-metrics --json "$OUT/$name.faces.json" > "$OUT/$name.faces.txt"
done
# the pictures: one clip of each held-out face, both models
for clip in photos_00003 photos_00001 photos_00000; do  # grace_hopper, group_2, group_4
    for model in "$CHECKPOINT" models/weights/kpvid-faces-64.pth.tar; do
        name=$(basename "$model" .pth.tar)
        cp "runs/strips/$name/$clip.png" "$OUT/$name-$clip.png"
    done
done
