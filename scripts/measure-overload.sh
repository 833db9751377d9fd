#!/usr/bin/env bash
# docs/speed.md's "Graceful overload": kpvid-demo streaming 40 s at its defaults while, from
# 10 s into the stream, for 10 s, two processes per core spin the CPU (the edge then gets
# about a third of the machine); once with the edge thinning frames under load (the default)
# and once without (--max-render-every 1). Prints each run's summary and the edge's log of the
# burn and its load steps. Run it on an otherwise idle machine; about 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/overload}
mkdir -p "$OUT"
burn() {  # once the stream in $1's receiver log has started: wait 10 s, then spin for 10 s
    local log=$1
    for _ in $(seq 600); do
        grep -q "source image .* ready" "$log" 2>/dev/null && break
        sleep 0.2
    done
    sleep 10
    echo "$(date '+%F %T,000') burn: $((2 * $(nproc))) processes spin $(nproc) cores for 10 s" \
        >> "$log.burn"
    for _ in $(seq $((2 * $(nproc)))); do
        timeout 10 python3 -c 'while True: pass' || true &
    done
    wait
    echo "$(date '+%F %T,000') burn: over" >> "$log.burn"
}
run() {  # name, kpvid-demo flags...
    local name=$1
    shift
    echo "== kpvid-demo --frames 800 $*"
    rm -rf "${OUT:?}/$name"
    mkdir -p "$OUT/$name"
    burn "$OUT/$name/receiver.log" &
    kpvid-demo --frames 800 --out "$OUT/$name" --json "$OUT/$name.json" "$@" \
        > "$OUT/$name.log" 2>&1 || { echo "kpvid-demo failed; see $OUT/$name.log" >&2; exit 1; }
    wait
    sed -n '/kpvid demo summary/,$p' "$OUT/$name.log" | grep -E \
        'frames out|lost / late|keypoint stream|latency|CPU|PSNR'
    cat "$OUT/$name/receiver.log" "$OUT/$name/receiver.log.burn" | grep -E \
        'burn:|synthesis (overloaded|load down)|source image .* ready' | sort | cut -c12-
}
run thinning
[ "${THINNING_ONLY:-}" ] || run no-thinning --max-render-every 1  # THINNING_ONLY=1: the first run only
