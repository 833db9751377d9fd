#!/usr/bin/env bash
# docs/speed.md's "Graceful overload": kpvid-demo streaming 40 s at its defaults while, from
# 20 s after it starts (about 10 s into the stream) for 10 s, two processes per core spin the
# CPU (the edge then gets about a third of the machine); once with the edge thinning frames under load (the default) and once without
# (--max-render-every 1). Prints each run's summary and the edge's load log. Run it on an
# otherwise idle machine; about 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/overload}
mkdir -p "$OUT"
burn() {  # after $1 s, two spinning processes per core for $2 s
    sleep "$1"
    echo "   ($((2 * $(nproc))) processes spin $(nproc) cores for $2 s)"
    for _ in $(seq $((2 * $(nproc)))); do
        timeout "$2" python3 -c 'while True: pass' || true &
    done
    wait
}
run() {  # name, kpvid-demo flags...
    local name=$1
    shift
    echo "== kpvid-demo --frames 800 $*"
    burn 20 10 &
    kpvid-demo --frames 800 --out "$OUT/$name" --json "$OUT/$name.json" "$@" \
        > "$OUT/$name.log" 2>&1 || { echo "kpvid-demo failed; see $OUT/$name.log" >&2; exit 1; }
    wait
    sed -n '/kpvid demo summary/,$p' "$OUT/$name.log" | grep -E \
        'frames out|lost / late|keypoint stream|frame rate|latency|CPU|PSNR'
    grep -E 'synthesis (overloaded|load down)' "$OUT/$name/receiver.log" || true
}
run thinning
[ "${THINNING_ONLY:-}" ] || run no-thinning --max-render-every 1
