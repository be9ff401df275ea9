#!/usr/bin/env bash
# Multi-source downloads on 127.0.0.1 (issue 22: "4 seeders each capped at 40 MiB/s
# (--max-upload-rate) vs one of them: >= 3.6x the goodput").
#
#   scripts/swarm-bench.sh     a tracker and SEEDERS peers (`p2p peer --no-menu`, each with
#                              --max-upload-rate RATE) sharing the same file of SIZE_MIB
#                              random bytes (each in its own share folder), then per run:
#                                (a) `p2p get seed0 001 --one-source`: one capped seeder
#                                (b) `p2p get blake3:HASH`: every seeder at once
#                              both `--json --no-fsync`; goodput = size / command time;
#                              also each get's peak RSS.
#   DOWNLOADERS=8 scripts/swarm-bench.sh
#                              downloaders serve (issue 22: "1 seeder capped at 40 MiB/s and
#                              8 downloaders starting together on a 256 MiB file: the last
#                              one finishes within 2.5x the time one download alone takes"):
#                              per run, (a) one `p2p get blake3:HASH --serve` alone, then
#                              (c) DOWNLOADERS of them started together, each listening on
#                              its own 127.0.1.N address; the ratio is the time the last of
#                              (c) took over the time of (a). Use with SEEDERS=1.
#
# Env:
#   SEEDERS    seeders (default 4)
#   DOWNLOADERS  downloaders started together (default 0: the seeders comparison)
#   RATE       each seeder's --max-upload-rate (default 40MiB)
#   SIZE_MIB   file size in MiB (default 256)
#   RUNS       runs of (a)+(b); the summary shows medians (default 3)
#   TRANSPORT  udp or tcp (default udp)
#   NO_BUILD=1 skip `cargo build --release -p p2p-apps`
#   BIN        p2p binary (default target/release/p2p)
#   KEEP=1     keep the temporary directory (logs)
#   GET_FLAGS  extra flags for every get (e.g. -v for its log on stderr)
#
# Exit status: 0 when every copy is byte-exact, 1 when one differs or a get fails, 2 on a
# set-up error.
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
ME=swarm-bench
# shellcheck source=lib.sh
source "$HERE/lib.sh"
SEEDERS=${SEEDERS:-4}
RATE=${RATE:-40MiB}
SIZE_MIB=${SIZE_MIB:-256}
RUNS=${RUNS:-3}
TRANSPORT=${TRANSPORT:-udp}
BIN=${BIN:-$REPO/target/release/p2p}

die() {
    echo "swarm-bench: $*" >&2
    exit 2
}
command -v python3 >/dev/null || die "needs python3"
if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "building: cargo build --release -p p2p-apps" >&2
    (cd "$REPO" && cargo build --release -p p2p-apps) >&2
fi
[ -x "$BIN" ] || die "no binary at $BIN (build it with: cargo build --release -p p2p-apps)"

W=$(mktemp -d "${TMPDIR:-/tmp}/p2p-swarm-bench.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? p
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept in $W" >&2; else rm -rf "$W"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM


# ------------------------------------------------------------------ the file, the tracker, the seeders
SRC=$W/src.bin
head -c $((SIZE_MIB * 1048576)) /dev/urandom >"$SRC"
TPORT=$(free_port)
"$BIN" tracker --listen "127.0.0.1:$TPORT" >"$W/tracker.log" 2>&1 &
PIDS+=($!)
wait_line "$W/tracker.log" '^tracker listening on ' "${PIDS[-1]}" 30 || die "the tracker did not start"
TRACKER=127.0.0.1:$TPORT
for ((i = 0; i < SEEDERS; i++)); do
    mkdir -p "$W/share$i"
    ln "$SRC" "$W/share$i/swarm.bin"
    port=$(free_port)
    "$BIN" peer --no-menu --name "seed$i" --listen "127.0.0.1:$port" --transport "$TRANSPORT" \
        --tracker "$TRACKER" --share "$W/share$i" --downloads "$W/dl$i" \
        --max-upload-rate "$RATE" >"$W/seed$i.log" 2>&1 &
    PIDS+=($!)
done
for ((i = 0; i < SEEDERS; i++)); do
    wait_line "$W/seed$i.log" 'registered with' "${PIDS[$((i + 1))]}" 300 || die "seed$i did not register"
done
HASH=$("$BIN" ls seed0 --tracker "$TRACKER" --transport "$TRANSPORT" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["hash"])')
# Every seeder announced the content.
for ((i = 0; i < 600; i++)); do
    n=$("$BIN" peers --has "blake3:$HASH" --tracker "$TRACKER" --transport "$TRANSPORT" --json |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
    [ "$n" -ge "$SEEDERS" ] && break
    sleep 0.05
done
[ "$n" -ge "$SEEDERS" ] || die "the tracker lists $n of $SEEDERS seeders for the content"

echo "swarm-bench: SEEDERS=$SEEDERS RATE=$RATE SIZE_MIB=$SIZE_MIB RUNS=$RUNS TRANSPORT=$TRANSPORT on $(nproc) cores, build $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
FAILED=0
: >"$W/runs.txt"
one() { # LABEL ARGS...: runs one get into a fresh folder; prints "LABEL seconds sources"
    local label=$1 out=$W/out.$1
    shift
    rm -rf "$out"
    mkdir -p "$out"
    local t0 t1
    t0=$(date +%s.%N)
    # Through python, for the get's peak RSS (ru_maxrss of the child, KiB).
    if ! python3 -c 'import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)' "$out.rss" "$BIN" get "$@" ${GET_FLAGS:-} --tracker "$TRACKER" --transport "$TRANSPORT" --out "$out" --json --no-fsync >"$out.json" 2>"$out.err"; then
        echo "swarm-bench: $label failed:" >&2
        sed 's/^/  | /' "$out.json" "$out.err" >&2
        FAILED=1
        return
    fi
    t1=$(date +%s.%N)
    if ! cmp -s "$SRC" "$out/swarm.bin"; then
        echo "swarm-bench: $label: the copy differs from the source" >&2
        FAILED=1
    fi
    python3 - "$label" "$t0" "$t1" "$out.json" "$SIZE_MIB" "$(cat "$out.rss")" <<'PY' | tee -a "$W/runs.txt"
import json, sys
label, t0, t1, path, size, rss = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
r = json.load(open(path))
secs = t1 - t0
srcs = r.get("sources") or []
per = " ".join("%s=%.0fMiB" % (s["name"], s["bytes"] / 1048576) for s in srcs)
print("%s %.3f %.1f %d %.0fMiB-rss %s" % (label, secs, size / secs, max(len(srcs), 1), rss / 1024, per))
PY
    rm -rf "$out"
}
DOWNLOADERS=${DOWNLOADERS:-0}
crowd() { # N downloaders started together; prints "crowd SECONDS-OF-THE-LAST ..."
    local n=$1 k pids=() t0 out
    rm -f "$W"/crowd.*
    t0=$(date +%s.%N)
    for ((k = 0; k < n; k++)); do
        out=$W/crowd.$k
        mkdir -p "$out"
        (
            "$BIN" get "blake3:$HASH" --serve "dl$k" --listen "127.0.1.$((k + 1)):0" ${GET_FLAGS:-} \
                --tracker "$TRACKER" --transport "$TRANSPORT" --out "$out" --json --no-fsync \
                >"$out.json" 2>"$out.err"
            echo "$? $(date +%s.%N)" >"$out.end"
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    python3 - "$W" "$n" "$t0" "$SIZE_MIB" <<'PY' | tee -a "$W/runs.txt"
import json, os, sys
w, n, t0, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ends, fromseed = [], 0
for k in range(n):
    rc, t = open("%s/crowd.%d.end" % (w, k)).read().split()
    if rc != "0":
        print("crowd FAILED dl%d rc=%s" % (k, rc)); sys.exit(0)
    ends.append(float(t) - t0)
    for s in json.load(open("%s/crowd.%d.json" % (w, k))).get("sources") or []:
        if s["name"].startswith("seed"):
            fromseed += s["bytes"]
print("crowd %.3f first=%.3f seeder-sent=%.0fMiB(%.1f copies)" % (max(ends), min(ends), fromseed / 1048576, fromseed / 1048576 / size))
PY
    for ((k = 0; k < n; k++)); do
        if ! cmp -s "$SRC" "$W/crowd.$k/swarm.bin"; then
            echo "swarm-bench: downloader $k: the copy is missing or differs:" >&2
            sed 's/^/  | /' "$W/crowd.$k.err" >&2
            FAILED=1
        fi
    done
    if [ "${KEEP:-0}" = 1 ]; then
        mkdir -p "$W/kept.$RANDOM" && mv "$W"/crowd.* "$_"/
    else
        rm -rf "$W"/crowd.*
    fi
}
if [ "$DOWNLOADERS" -gt 0 ]; then
    for ((run = 1; run <= RUNS; run++)); do
        one alone "blake3:$HASH" --serve alone
        crowd "$DOWNLOADERS"
    done
    python3 - "$W/runs.txt" "$DOWNLOADERS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
alone = statistics.median(float(r[1]) for r in rows if r[0] == "alone")
last = statistics.median(float(r[1]) for r in rows if r[0] == "crowd")
print("median: one download alone %.2f s; the last of %s started together %.2f s: %.2fx (target <= 2.5x)"
      % (alone, sys.argv[2], last, last / alone))
PY
    exit "$FAILED"
fi
for ((run = 1; run <= RUNS; run++)); do
    one single seed0 001 --one-source
    one swarm "blake3:$HASH"
done
python3 - "$W/runs.txt" "$SEEDERS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
def med(label, col=2):
    xs = [float(r[col].replace("MiB-rss", "")) for r in rows if r[0] == label]
    return statistics.median(xs) if xs else float("nan")
s, m = med("single"), med("swarm")
print("median goodput: one seeder %.1f MiB/s, %s seeders %.1f MiB/s: %.2fx (target >= %.1fx)"
      % (s, sys.argv[2], m, m / s, 0.9 * int(sys.argv[2])))
print("median peak RSS of get: one seeder %.0f MiB, %s seeders %.0f MiB"
      % (med("single", 4), sys.argv[2], med("swarm", 4)))
PY
exit "$FAILED"
