#!/usr/bin/env bash
# The README's "Measured on this machine" table: kpvid-demo (a real receiver and sender on this
# machine, the shipped model, the default delta codec) with the default schedule three times,
# then the other rows once each. Prints each run's summary; run it on an otherwise idle
# machine (the two processes share its cores). About 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo-table}
mkdir -p "$OUT"
run() {  # name, kpvid-demo flags...
    local name=$1
    shift
    echo "== kpvid-demo $*"
    kpvid-demo --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 \
        || { echo "kpvid-demo $* failed; see $OUT/$name.log" >&2; exit 1; }
    sed -n '/kpvid demo summary/,$p' "$OUT/$name.log" | grep -E \
        'frames out|lost / late|keypoint stream|latency|split|CPU|PSNR'
}
for i in 1 2 3; do run "default-$i"; done
run constant-velocity --predictor constant-velocity
run hold-last --predictor hold-last
run predict-0 --predict 0
run predict-3 --predict 3
run predict-3-cv --predict 3 --predictor constant-velocity
