#!/usr/bin/env bash
# Rebuild the shipped checkpoint models/weights/kpvid-faces-64.pth.tar from nothing and measure
# it: synthetic data (seed 0), training, export, reconstruction on unseen videos (seed 1),
# per-frame speed. Takes about 1.5 hours on 2 CPU cores. Writes the eval figures beside the
# checkpoint; MANIFEST.md quotes them.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/faces-64}

kpvid-data synth --domain faces --videos 2000 --seed 0 --out data/faces-64 --size 64
kpvid-train fomm --config kpvid-faces-64 --data data/faces-64 --out "$RUN" --threads 2
kpvid-train export --checkpoint "$RUN/checkpoints/latest.pth.tar" \
    --out models/weights/kpvid-faces-64.pth.tar

kpvid-data synth --domain faces --videos 100 --seed 1 --test-fraction 0.5 \
    --out data/faces-64-seed1 --size 64
kpvid-eval reconstruct --data data/faces-64-seed1 \
    --json models/weights/kpvid-faces-64.reconstruct.json
kpvid-eval speed --threads 2 --json models/weights/kpvid-faces-64.speed.json
