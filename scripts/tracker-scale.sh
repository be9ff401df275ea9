#!/usr/bin/env bash
# Tracker scale figures of the real `p2p tracker` process, default limits, on loopback:
#
#   1. `tracker-load PEERS 0 ADDR PID` registers PEERS names (default 10,000, each from its own
#      127.x address, 50 per /24), then prints the tracker's resident memory (now and peak);
#   2. `p2p peers` against that table, RUNS times: wall time of each and the peers it printed.
#
# Throughput (replies/s, replies per CPU-second of the tracker thread) comes from the
# in-process mode of the same tool: `cargo run --release -p p2p-transports --example
# tracker-load -- PEERS SECONDS` (see the README's scale section).
#
# Env: PEERS (10000), RUNS (3), NO_BUILD=1 (skip the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS=${PEERS:-10000}
RUNS=${RUNS:-3}
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release -q -p p2p-apps
    cargo build --release -q -p p2p-transports --example tracker-load
fi
BIN=target/release/p2p
LOAD=target/release/examples/tracker-load
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADDR=127.0.0.1:$PORT
LOG=$(mktemp)
"$BIN" tracker --listen "$ADDR" >"$LOG" 2>&1 &
TRACKER=$!
trap 'kill $TRACKER 2>/dev/null; rm -f "$LOG"' EXIT
# Ready when it answers a listing (no sleeps: ask until it does, 5 s at most).
up=
for _ in $(seq 50); do
    if "$BIN" peers --tracker "$ADDR" >/dev/null 2>&1; then up=1; break; fi
done
if [[ -z "$up" ]]; then
    echo "the tracker at $ADDR never answered; its output:" >&2
    cat "$LOG" >&2
    exit 1
fi
"$LOAD" "$PEERS" 0 "$ADDR" "$TRACKER"
for run in $(seq "$RUNS"); do
    start=$(date +%s.%N)
    listed=$("$BIN" peers --tracker "$ADDR" | wc -l)
    end=$(date +%s.%N)
    printf 'p2p peers, run %d: %.3f s, %d lines\n' "$run" "$(echo "$end - $start" | bc)" "$listed"
done
