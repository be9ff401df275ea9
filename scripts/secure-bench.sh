#!/usr/bin/env bash
# Cost of sealed sessions: `p2p get` of one file over loopback from a `peer --secure` (which
# serves sealed and plaintext clients alike), with and without `--secure`, and the same file
# through raw TCP (`socat -b 131072`) and TLS over TCP (`socat OPENSSL`, a self-signed
# certificate, TLS 1.3 as OpenSSL negotiates it) as baselines; runs alternating; prints each
# run, the medians and the ratios.
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
# For the socat baselines both figures are the receiving command's wall time (connection,
# TLS handshake and all bytes to the page cache).
set -euo pipefail
ME=secure-bench
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
source "$HERE/lib.sh"
need=()
for pair in socat:socat openssl:openssl cmp:diffutils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || { echo "$ME: missing ${need[*]}: apt-get install ${need[*]}" >&2; exit 2; }
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
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

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench \
    -keyout "$DIR/key.pem" -out "$DIR/cert.pem" >/dev/null 2>&1

# socat_run CASE: one transfer of the file through socat, plain TCP or TLS; prints the
# receiver's wall time in seconds.
socat_run() {
    local c=$1 port listen connect
    port=$(free_port)
    if [[ $c == tcp ]]; then
        listen="TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr"
        connect="TCP:127.0.0.1:$port"
    else
        listen="OPENSSL-LISTEN:$port,bind=127.0.0.1,reuseaddr,cert=$DIR/cert.pem,key=$DIR/key.pem,verify=0"
        connect="OPENSSL:127.0.0.1:$port,verify=0"
    fi
    socat -u -b 131072 "OPEN:$DIR/share/big.bin" "$listen" 2>>"$DIR/socat.log" &
    local sender=$!
    while ! ss -ltn "sport = :$port" | grep -q LISTEN; do
        kill -0 "$sender" 2>/dev/null || { echo "$ME: socat $c did not listen" >&2; exit 1; }
    done
    local start end
    start=$(date +%s.%N)
    socat -u -b 131072 "$connect" "OPEN:$DIR/out-$c.bin,creat,trunc" 2>>"$DIR/socat.log"
    end=$(date +%s.%N)
    wait "$sender" || true
    cmp -s "$DIR/out-$c.bin" "$DIR/share/big.bin" || { echo "$ME: $c: the copy differs" >&2; exit 1; }
    rm -f "$DIR/out-$c.bin"
    python3 -c "print($end - $start)"
}

declare -A XFER CMD
for ((r = 1; r <= RUNS; r++)); do
    # Alternate which case goes first, round by round.
    if ((r % 2)); then cases=(plain secure tcp tls); else cases=(tls tcp secure plain); fi
    for c in "${cases[@]}"; do
        if [[ $c == tcp || $c == tls ]]; then
            secs=$(socat_run "$c")
            rate=$(python3 -c "print('%.1f' % ($SIZE_MIB / $secs))")
            printf '%-7s run %d: %7s MiB/s (socat)\n' "$c" "$r" "$rate"
            XFER[$c]+="$rate "
            CMD[$c]+="$rate "
            continue
        fi
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
declare -A MED
for c in plain secure tcp tls; do
    MED[$c]=$(echo "${XFER[$c]}" | median)
    printf '  %-7s xfer %7s MiB/s, cmd %7s MiB/s\n' "$c" "${MED[$c]}" "$(echo "${CMD[$c]}" | median)"
done
python3 - "${MED[plain]}" "${MED[secure]}" "${MED[tcp]}" "${MED[tls]}" <<'PY'
import sys
plain, secure, tcp, tls = map(float, sys.argv[1:])
print(f"ratios (xfer): secure/plain {secure / plain:.2f}, secure/raw TCP {secure / tcp:.2f}, "
      f"secure/TLS {secure / tls:.2f}, TLS/raw TCP {tls / tcp:.2f}")
PY
