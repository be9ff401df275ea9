#!/usr/bin/env bash
# The tracker's relay against a punched path, in the NAT lab of scripts/nat-lab.sh (issue
# 23: "Relay: >= 80 % of the relay's link rate"). As root.
#
#   scripts/relay-bench.sh     per run, in two labs built once:
#                                punched  alice behind a cone NAT, bob behind another: the
#                                         transfer goes through the hole punched between them
#                                relayed  alice behind a symmetric NAT (--random-fully): no
#                                         hole; the transfer goes through the tracker's relay,
#                                         capped at RATE (--relay-rate and --relay-session-rate)
#                              each `p2p get alice 001 --json --no-fsync` of SIZE_MIB random
#                              bytes by bob, checked with cmp; prints each run's goodput and
#                              route, then the medians, the relayed goodput as a share of
#                              RATE and the tracker's CPU time over the relayed runs.
#
# Env:
#   SIZE_MIB  file size in MiB (default 64)
#   RATE      the relay's cap (default 16MiB: the default per-session cap); `1GiB` to see
#             what one tracker core forwards
#   RUNS      runs of each case (default 3)
#   TRANSPORT udp or tcp (default udp; over TCP the peers' NATs are both cone, the TCP peer
#             is reached through the relay since nothing is forwarded to it)
#   NO_BUILD=1 skip `cargo build --release -p p2p-apps`
#   BIN       p2p binary (default target/release/p2p)
set -euo pipefail
export LC_ALL=C

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *)
        echo "usage: $0 (settings through the environment: see $0 --help)" >&2
        exit 2
        ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ME=relay-bench
# shellcheck source=lib.sh
source "$HERE/lib.sh"
SIZE_MIB=${SIZE_MIB:-64}
RATE=${RATE:-16MiB}
RUNS=${RUNS:-3}
TRANSPORT=${TRANSPORT:-udp}
BIN=${BIN:-$REPO/target/release/p2p}
LAB=$HERE/nat-lab.sh
TRACKER=172.16.0.1:9000

die() {
    echo "relay-bench: $*" >&2
    exit 2
}
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$REPO" && cargo build --release -p p2p-apps) >&2
fi
[ -x "$BIN" ] || die "no binary at $BIN"

W=$(mktemp -d "${TMPDIR:-/tmp}/p2p-relay-bench.XXXXXX")
chmod 755 "$W"
LABS=()
PIDS=()
cleanup() {
    local rc=$? p l
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    for l in "${LABS[@]}"; do bash "$LAB" down "$l" >/dev/null 2>&1; done
    rm -rf "$W"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$W/src.bin"
mkdir -p "$W/share"
ln "$W/src.bin" "$W/share/file.bin"

# LABEL [nat-lab up flags]: a lab with the tracker and alice seeding; its prefix in PREFIX.
setup() {
    local label=$1 prefix
    shift
    bash "$LAB" up "$@" >"$W/prefix.$label" || die "nat-lab.sh up $* failed"
    prefix=$(cat "$W/prefix.$label")
    LABS+=("$prefix")
    bash "$LAB" exec "$prefix" pub "$BIN" tracker --listen "$TRACKER" \
        --relay-rate "$RATE" --relay-session-rate "$RATE" >"$W/tracker.$label.log" 2>&1 &
    PIDS+=($!)
    echo "$!" >"$W/tracker.$label.pid"
    wait_line "$W/tracker.$label.log" 'tracker listening on' "$!" || die "$label: no tracker"
    bash "$LAB" exec "$prefix" a "$BIN" peer --name alice --port 10001 --tracker "$TRACKER" \
        --share "$W/share" --transport "$TRANSPORT" --no-menu >"$W/alice.$label.log" 2>&1 &
    PIDS+=($!)
    wait_line "$W/alice.$label.log" 'registered with' "$!" || die "$label: alice did not register"
    PREFIX=$prefix
}

# LABEL PREFIX: one get by bob; prints "LABEL MiB/s route"
one() {
    local label=$1 prefix=$2 out=$W/out
    rm -rf "$out"
    mkdir -p "$out"
    if ! bash "$LAB" exec "$prefix" b "$BIN" get alice 001 --tracker "$TRACKER" \
        --transport "$TRANSPORT" --out "$out" --json --no-fsync >"$W/get.json" 2>"$W/get.err"; then
        echo "relay-bench: $label: get failed:" >&2
        sed 's/^/  | /' "$W/get.err" >&2
        return 1
    fi
    cmp -s "$W/src.bin" "$out/file.bin" || die "$label: the copy differs"
    python3 - "$label" "$W/get.json" "$SIZE_MIB" <<'PY' | tee -a "$W/runs.txt"
import json, sys
r = json.load(open(sys.argv[2]))
secs = r["elapsed_ms"] / 1000
print("%s %.1f %s" % (sys.argv[1], int(sys.argv[3]) / secs, r["route"]))
PY
}

cpu() { # PID: its CPU seconds (user + system)
    awk '{ printf "%.2f\n", ($14 + $15) / 100 }' "/proc/$1/stat"
}

PUNCHED=""
if [ "$TRANSPORT" != tcp ]; then
    setup punched
    PUNCHED=$PREFIX
    setup relayed --symmetric a
else
    setup relayed
fi
RELAYED=$PREFIX
echo "relay-bench: SIZE_MIB=$SIZE_MIB RATE=$RATE RUNS=$RUNS TRANSPORT=$TRANSPORT on $(nproc) cores, build $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
: >"$W/runs.txt"
TPID=$(cat "$W/tracker.relayed.pid")
T0=$(cpu "$TPID")
for ((run = 1; run <= RUNS; run++)); do
    [ -n "$PUNCHED" ] && one punched "$PUNCHED"
    one relayed "$RELAYED"
done
T1=$(cpu "$TPID")
python3 - "$W/runs.txt" "$RATE" "$SIZE_MIB" "$RUNS" "$T0" "$T1" <<'PY'
import re, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
m = re.fullmatch(r"(\d+)([KMG]i?B)?", sys.argv[2])
unit = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024, None: 1 / 1048576}[m.group(2)]
cap = int(m.group(1)) * unit
med = lambda label: statistics.median(float(r[1]) for r in rows if r[0] == label) if any(r[0] == label for r in rows) else None
p, r = med("punched"), med("relayed")
routes = {r[0]: r[2] for r in rows}
print("median goodput: relayed %.1f MiB/s (route %s) = %.0f %% of the relay's %.0f MiB/s cap (target >= 80 %%)" % (r, routes.get("relayed"), 100 * r / cap, cap))
if p:
    print("                punched %.1f MiB/s (route %s): relayed/punched %.2fx" % (p, routes.get("punched"), r / p))
cpu = float(sys.argv[6]) - float(sys.argv[5])
mib = int(sys.argv[3]) * int(sys.argv[4])
print("tracker CPU over the relayed runs: %.2f s for %d MiB relayed (%.0f MiB per CPU-second)" % (cpu, mib, mib / cpu if cpu > 0 else float("inf")))
PY
