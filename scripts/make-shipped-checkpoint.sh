#!/usr/bin/env bash
# Rebuild the shipped checkpoint models/weights/kpvid-faces-64.pth.tar from nothing and measure
# it: synthetic data (seed 0), training, export, reconstruction on unseen videos (seed 1),
# per-frame speed. About 1.5 hours on 2 CPU cores. Writes the figures beside the checkpoint;
# MANIFEST.md quotes them.
#
# Training runs in two phases, as the shipped checkpoint was made: the first 4725 steps
# (21 epochs) without the SSIM loss term, the rest resumed with the config as committed.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/faces-64}
CONFIG=models/configs/kpvid-faces-64.yaml

kpvid-data synth --domain faces --videos 2000 --seed 0 --out data/faces-64 --size 64
mkdir -p "$RUN"
sed 's/^    ssim: .*/    ssim: 0/' "$CONFIG" > "$RUN/phase1.yaml"
kpvid-train fomm --config "$RUN/phase1.yaml" --data data/faces-64 --out "$RUN/phase1" \
    --threads 2 --max-steps 4725
kpvid-train fomm --config "$CONFIG" --data data/faces-64 --out "$RUN" --threads 2 \
    --resume "$RUN/phase1/checkpoints/latest.pth.tar"
kpvid-train export --checkpoint "$RUN/checkpoints/latest.pth.tar" \
    --out models/weights/kpvid-faces-64.pth.tar

kpvid-data synth --domain faces --videos 100 --seed 1 --test-fraction 0.5 \
    --out data/faces-64-seed1 --size 64
kpvid-eval reconstruct --data data/faces-64-seed1 \
    --json models/weights/kpvid-faces-64.reconstruct.json
kpvid-eval speed --threads 2 --json models/weights/kpvid-faces-64.speed.json
