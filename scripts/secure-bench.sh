#!/usr/bin/env bash
# Cost of sealed sessions: `p2p get` of one file over loopback from a `peer --secure` (which
# serves sealed and plaintext clients alike), with and without `--secure`, runs alternating;
# prints each run and the medians.
#
# Env:
#   SIZE_MIB   file size (default 64)
#   RUNS       runs per case (default 5)
#   TRANSPORT  udp or tcp (default udp)
#   NO_BUILD=1 skip `cargo build --release -p p2p-apps`
#   BIN        p2p binary (default target/release/p2p)
#
# `get` runs with --no-fsync (the page cache, as scripts/bench.sh does). "xfer" is the
# transfer's own rate (`mib_per_s` of `get --json`: request to verified file); "cmd" is the
# whole command, start to exit (tracker lookup, handshake, entry, piece table included).
set -euo pipefail
ME=secure-bench
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
source "$HERE/lib.sh"
SIZE_MIB=${SIZE_MIB:-64}
RUNS=${RUNS:-5}
TRANSPORT=${TRANSPORT:-udp}
BIN=${BIN:-$ROOT/target/release/p2p}
if [[ -z ${NO_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release -p p2p-apps --bin p2p)
fi
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
export XDG_DATA_HOME=$DIR/data XDG_CONFIG_HOME=$DIR/config
mkdir -p "$DIR/share"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$DIR/share/big.bin"
PORT=$(free_port)
"$BIN" tracker --listen "127.0.0.1:$PORT" >"$DIR/tracker.log" 2>&1 &
PIDS+=($!)
wait_line "$DIR/tracker.log" "tracker listening on" "${PIDS[-1]}"
"$BIN" peer --name seed --listen 127.0.0.1:0 --tracker "127.0.0.1:$PORT" --share "$DIR/share" \
    --transport "$TRANSPORT" --no-menu --secure >"$DIR/peer.log" 2>&1 &
PIDS+=($!)
wait_line "$DIR/peer.log" "sealed sessions accepted" "${PIDS[-1]}"

declare -A XFER CMD
for ((r = 1; r <= RUNS; r++)); do
    # Alternate which case goes first, round by round.
    if ((r % 2)); then cases=(plain secure); else cases=(secure plain); fi
    for c in "${cases[@]}"; do
        flags=(--no-fsync --json --out "$DIR/out-$c" --tracker "127.0.0.1:$PORT" --transport "$TRANSPORT")
        [[ $c == secure ]] && flags+=(--secure)
        start=$(date +%s.%N)
        json=$("$BIN" get seed 1 "${flags[@]}" 2>"$DIR/get-$c.log")
        end=$(date +%s.%N)
        cmp -s "$DIR/out-$c/big.bin" "$DIR/share/big.bin" || {
            echo "$ME: $c: the copy differs" >&2
            exit 1
        }
        sealed=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sealed"])' "$json")
        xfer=$(python3 -c 'import json,sys; print("%.1f" % json.loads(sys.argv[1])["mib_per_s"])' "$json")
        cmd=$(python3 -c "print('%.1f' % ($SIZE_MIB / ($end - $start)))")
        printf '%-7s run %d: xfer %7s MiB/s, cmd %7s MiB/s (sealed: %s)\n' "$c" "$r" "$xfer" "$cmd" "$sealed"
        XFER[$c]+="$xfer "
        CMD[$c]+="$cmd "
        rm -rf "$DIR/out-$c"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "$SIZE_MIB MiB over loopback ($TRANSPORT), $RUNS runs each, $(nproc) cores; medians:"
for c in plain secure; do
    printf '  %-7s xfer %7s MiB/s, cmd %7s MiB/s\n' "$c" "$(echo "${XFER[$c]}" | median)" "$(echo "${CMD[$c]}" | median)"
done
