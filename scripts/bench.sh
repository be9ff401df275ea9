#!/usr/bin/env bash
# Transfer benchmark of the real `p2p` binary against raw TCP (socat), in one run.
#
#   scripts/bench.sh            loopback 127.0.0.1: raw TCP (socat -b 131072), our UDP, our TCP;
#                               MiB/s, ratio to raw TCP, peak RSS of sender and receiver
#   scripts/bench.sh impaired   two network namespaces joined by linkem (user-space delay / loss /
#                               reorder relay, scripts/linkem.c), 1 ms each way,
#                               loss 0 / 1 / 5 % and reordering: our UDP and TCP against raw TCP
#                               with bbr and with cubic
#   scripts/bench.sh wan        the same namespaces, internet-like paths: round trips of
#                               20 / 100 / 200 ms (WAN_RTTS) x loss 0 / 1 / 3 % (WAN_LOSSES)
#                               through a 200 Mbit/s bottleneck with a 100 ms drop-tail queue
#                               (LINKEM_RATE_MBIT, LINKEM_QUEUE_MS), 100 MiB by default; then
#                               coexistence at 100 ms: one `p2p get` (UDP) and one raw TCP flow
#                               (cubic, then bbr) through the bottleneck at once, and the UDP
#                               transfer's share of the bytes both moved while it ran
#                               (WAN_COEXIST=0 to skip)
#
# Env:
#   SIZE_MIB   file size (default 1024 loopback, 10 impaired)
#   RUNS       runs per case; the table shows the median (default 1)
#   CAP        seconds allowed per transfer before it counts as "timeout" (default 300 / 120)
#   NO_BUILD=1 skip `cargo build --release -p p2p-apps`
#   BIN        p2p binary (default target/release/p2p)
#   LINKEM_C   linkem source (default scripts/linkem.c: the project's own)
#   CEILING=1  impaired mode: also a case with no delay and no loss (the emulator's ceiling)
#   DELAY_MS=N impaired mode: delay each way (default 1); with LINKEM_RATE_MBIT and
#              LINKEM_QUEUE_MS in the environment, linkem adds a bottleneck (see linkem.c),
#              e.g. DELAY_MS=50 LINKEM_RATE_MBIT=200 LINKEM_QUEUE_MS=100: a 100 ms path
#   CC_TWEAK=0 impaired mode: never touch the init namespace's tcp_allowed_congestion_control
#              (by default cubic is added to it for the run, and restored on exit, because a
#              non-init namespace may only pick an "allowed" algorithm as its default, and our
#              TCP transport uses the namespace default)
#   CASES=RE   run only the cases whose label matches this bash regex; impaired mode labels:
#              "d0 l0% (ceiling)", "d1ms l0%", "d1ms l1%", "d1ms l5%", "d1ms reorder25%/50%";
#              loopback: "p2p UDP", "p2p TCP", "p2p UDP 1452 B", "p2p UDP fsync" (raw TCP,
#              the baseline, always runs)
#   ONLY=RE    impaired and wan modes: run only the transfers whose column matches this bash
#              regex ("raw TCP bbr", "raw TCP cubic", "p2p UDP", "p2p TCP (bbr)", ...), e.g.
#              ONLY='^p2p UDP$' for the first byte of a 1 GiB file alone
#   REPORTING=keep  leave the guest's free page reporting on (see below)
#   KEEP=1     keep the temporary directory (logs) on exit
#   VERBOSE=1  pass -v to the seeding peers and to p2p get (debug logs in the kept logs)
#
# On a VM whose balloon device reports free pages to the host (virtio-balloon free page
# reporting: /sys/module/page_reporting), every GiB a run frees is handed back to the host,
# and whichever later run touches those pages first pays the host's page faults inside its
# copies: the same 1 GiB copy then costs one to three times the CPU, landing at random on
# one case or another. So the script turns reporting off for the run (page_reporting_order
# above the largest order), restored on exit, and first writes and removes a file of twice
# the test size so that the pages the runs will reuse are backed again. REPORTING=keep skips
# both.
#
# Our `p2p get` runs with --no-fsync, so that it writes to the page cache as socat does; the
# loopback mode also times get's default (fsync of checkpoints and of the finished file),
# which the disk bounds, as "p2p UDP fsync", and UDP with the datagrams of a real network
# (a seeder with --max-datagram 1452; loopback otherwise carries 60 KiB datagrams) as
# "p2p UDP 1452 B". Loopback cases take turns run after run (RUNS rounds), each round starting
# one case later; "r round" pairs each run with the raw TCP run of its round. After each run
# its output is removed and `sync` waits until the disk has nothing pending from it.
#
# Rates are MiB (2^20 bytes) per second. "xfer" rates come from the `elapsed_ms` that
# `p2p get --json` reports for the transfer itself (request to verified file); "cmd" rates
# time the whole `p2p get` command (process start, tracker lookup, index, transfer, exit).
# Raw TCP is timed from the sender's start to the receiver's exit (both rates are that).
# Sender peak RSS of a seeding peer: VmHWM of its process, reset (clear_refs 5) right before
# each transfer and read after it, so it excludes the start-up indexing. Receiver peak RSS:
# /usr/bin/time -v "Maximum resident set size".
#
# Exit status: 0 when every finished copy is byte-identical (timeouts and failed transfers are
# reported in the table, not an error), 1 when a copy differs, 2 on a set-up error.
set -euo pipefail
export LC_ALL=C

MODE=${1:-loopback}
case "$MODE" in
    loopback | impaired) ;;
    wan)
        # The impaired mode's machinery, on the grid of paths below.
        MODE=impaired
        WAN=1
        export LINKEM_RATE_MBIT=${LINKEM_RATE_MBIT:-200} LINKEM_QUEUE_MS=${LINKEM_QUEUE_MS:-100}
        SIZE_MIB=${SIZE_MIB:-100}
        CAP=${CAP:-300}
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [loopback|impaired|wan]" >&2
        exit 2
        ;;
esac

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ME=bench
# shellcheck source=lib.sh
source "$HERE/lib.sh"
if [ "$MODE" = impaired ]; then
    SIZE_MIB=${SIZE_MIB:-10}
    CAP=${CAP:-120}
else
    SIZE_MIB=${SIZE_MIB:-1024}
    CAP=${CAP:-300}
fi
RUNS=${RUNS:-1}
BIN=${BIN:-$REPO/target/release/p2p}
LINKEM_C=${LINKEM_C:-$HERE/linkem.c}
CC_TWEAK=${CC_TWEAK:-1}
VFLAG=()
if [ "${VERBOSE:-0}" = 1 ]; then VFLAG=(-v); fi
SOCAT_BUF=131072
NS_A=p2pbenchA # tracker + seeders + raw TCP sender   10.99.7.1
NS_B=p2pbenchB # getter + raw TCP receiver            10.99.7.2
ADDR_A=10.99.7.1
ADDR_B=10.99.7.2

W=$(mktemp -d /tmp/p2p-bench.XXXXXX)
TSV=$W/runs.tsv
: >"$TSV"
PIDS=()
LOGN=0
CORRUPT=0
ALLOWED_CC_SAVED=""
REPORTING_PARAM=/sys/module/page_reporting/parameters/page_reporting_order
REPORTING_SAVED=""

# ------------------------------------------------------------------ process and namespace cleanup
untrack() {
    local x a=()
    for x in "${PIDS[@]}"; do [ "$x" != "$1" ] && a+=("$x"); done
    PIDS=("${a[@]}")
}
stop_pid() { # stop one process we started (tracked in PIDS) and reap it
    local p=$1
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    untrack "$p"
}
ns_exists() { ip netns list 2>/dev/null | grep -qw "^$1"; }
ns_delete() {
    local ns=$1 p
    ns_exists "$ns" || return 0
    # only processes inside our own namespaces, which this script created
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    sleep 0.2
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
}
cleanup() {
    local rc=$? p
    set +e
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [ "$MODE" = impaired ]; then
        ns_delete "$NS_A"
        ns_delete "$NS_B"
    fi
    if [ -n "$REPORTING_SAVED" ]; then
        echo "$REPORTING_SAVED" >"$REPORTING_PARAM"
    fi
    if [ -n "$ALLOWED_CC_SAVED" ]; then
        sysctl -qw net.ipv4.tcp_allowed_congestion_control="$ALLOWED_CC_SAVED"
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "logs kept in $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "bench: $*" >&2
    exit 2
}

# ------------------------------------------------------------------ tools
need=()
for pair in socat:socat cmp:diffutils timeout:coreutils awk:gawk ss:iproute2 ip:iproute2; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
[ -x /usr/bin/time ] || need+=(time)
if [ "$MODE" = impaired ]; then
    command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
    command -v sysctl >/dev/null 2>&1 || need+=(procps)
    command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
fi
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root"
    echo "installing ${need[*]}" >&2
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "building: cargo build --release -p p2p-apps" >&2
    (cd "$REPO" && cargo build --release -p p2p-apps) >&2
fi
[ -x "$BIN" ] || die "no binary at $BIN (build it with: cargo build --release -p p2p-apps)"

# ------------------------------------------------------------------ helpers
now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
mibs() { # bytes seconds
    awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.2f", b / 1048576 / s; else print "-" }'
}
kib_to_mib() { awk -v k="$1" 'BEGIN { if (k == "" || k == "-") print "-"; else printf "%.1f", k / 1024 }'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# wait_listen NS PORT: a TCP listener on PORT (NS: a namespace name or "" for this one)
wait_listen() {
    local ns=$1 port=$2 i pre=()
    [ -n "$ns" ] && pre=(ip netns exec "$ns")
    for ((i = 0; i < 500; i++)); do
        "${pre[@]}" ss -Hlnt "sport = :$port" 2>/dev/null | grep -q . && return 0
        sleep 0.01
    done
    return 1
}
free_port() { # a TCP port nobody listens on here
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        ss -Hlnt "sport = :$p" | grep -q . || {
            echo "$p"
            return
        }
    done
}
maxrss_kib() { # /usr/bin/time -v output file
    { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1" 2>/dev/null || true; } | tail -1
}
cpu_s() { # /usr/bin/time -v output file -> user + system seconds, and minor page faults
    awk -F': ' '/User time \(seconds\)/ { u = $2 } /System time \(seconds\)/ { s = $2 }
        /Minor \(reclaiming a frame\) page faults/ { f = $2 }
        END { if (u == "" && s == "") print "-"; else printf "%.2fs (%s faults)", u + s, f }' "$1" 2>/dev/null || echo -
}
TICKS=$(getconf CLK_TCK 2>/dev/null || echo 100)
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || true; } # "" if gone
vmrss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
vmhwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || true; }
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
json_field() { # file key  (flat JSON printed by p2p get --json)
    { grep -o "\"$2\":[^,}]*" "$1" 2>/dev/null || true; } | head -1 | cut -d: -f2 | tr -d ' "'
}
verify() { # copy source -> ok | missing | corrupt
    if [ ! -f "$1" ]; then
        echo missing
    elif cmp -s "$1" "$2"; then
        echo ok
    else
        echo corrupt
    fi
}
status_of_rc() { # exit code of `timeout ...` -> status word, or "" when 0
    case "$1" in
        0) echo "" ;;
        124 | 137) echo timeout ;;
        *) echo "fail$1" ;;
    esac
}

# record CASE PATH RUN STATUS XFER_S CMD_S SENDER_KIB RECEIVER_KIB
record() { # CASE PATH RUN STATUS XFER_S CMD_S RSS_TX RSS_RX [CPU_TX CPU_RX]
    local xm cm
    xm=$(mibs "$BYTES" "$5")
    cm=$(mibs "$BYTES" "$6")
    [ "$4" = ok ] || { xm=-; cm=-; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$xm" "$cm" "$7" "$8" >>"$TSV"
    printf '  run %-22s %-18s #%s %-8s xfer %8ss %9s MiB/s  cmd %8ss %9s MiB/s  rss tx %6s rx %6s MiB  cpu tx %6s rx %s  load %s\n' \
        "$1" "$2" "$3" "$4" "$5" "$xm" "$6" "$cm" "$(kib_to_mib "$7")" "$(kib_to_mib "$8")" "${9:--}" "${10:--}" "$(loadavg)" >&2
    if [ "$4" = corrupt ]; then CORRUPT=1; fi
}

# ------------------------------------------------------------------ the three kinds of transfer
# raw_tcp CASE PATH RX_NS TX_NS ADDR PORT [CC]   socat -b 131072, sender TX_NS -> receiver RX_NS
raw_tcp() {
    local case=$1 path=$2 rxns=$3 txns=$4 addr=$5 port=$6 cc=${7:-} run rxp=() txp=() opt=""
    if [ -n "${ONLY:-}" ] && ! [[ "$path" =~ $ONLY ]]; then return 0; fi
    [ -n "$rxns" ] && rxp=(ip netns exec "$rxns")
    [ -n "$txns" ] && txp=(ip netns exec "$txns")
    # IPPROTO_TCP=6, TCP_CONGESTION=13: the sender's algorithm, per socket
    [ -n "$cc" ] && opt=",setsockopt-string=6:13:$cc"
    local out=$W/out.raw
    for ((run = 1; run <= RUNS; run++)); do
        rm -f "$out" "$W/rx.time" "$W/tx.time"
        "${rxp[@]}" timeout -k 5 "$CAP" /usr/bin/time -v -o "$W/rx.time" \
            socat -u -b "$SOCAT_BUF" "TCP-LISTEN:$port,bind=$addr,reuseaddr" "OPEN:$out,creat,trunc" \
            2>>"$W/socat.log" &
        local rp=$!
        PIDS+=("$rp")
        wait_listen "$rxns" "$port" || echo "bench: socat listener on $addr:$port did not come up" >&2
        local s e rc=0 st
        s=$(now)
        "${txp[@]}" timeout -k 5 "$CAP" /usr/bin/time -v -o "$W/tx.time" \
            socat -u -b "$SOCAT_BUF" "OPEN:$SRC" "TCP:$addr:$port$opt" 2>>"$W/socat.log" || true
        wait "$rp" || rc=$?
        e=$(now)
        untrack "$rp"
        st=$(status_of_rc "$rc")
        [ -n "$st" ] || st=$(verify "$out" "$SRC")
        local d
        d=$(secs "$s" "$e")
        record "$case" "$path" "$run" "$st" "$d" "$d" "$(maxrss_kib "$W/tx.time")" "$(maxrss_kib "$W/rx.time")" \
            "$(cpu_s "$W/tx.time")" "$(cpu_s "$W/rx.time")"
        settle "$out"
    done
}

# settle PATH: removes a run's output and waits until the disk has nothing pending from it
# (`sync`: the writeback of an fsync run's last pages, and ext4's discard of the freed
# blocks at its next journal commit), so that no run pays for the one before it.
settle() {
    rm -rf "$1"
    sync
}

# p2p_get CASE PATH RX_NS TRANSPORT SEED_NAME SEED_PID TRACKER [GET FLAGS...]
p2p_get() {
    local case=$1 path=$2 rxns=$3 transport=$4 seed=$5 spid=$6 tracker=$7 run rxp=()
    if [ -n "${ONLY:-}" ] && ! [[ "$path" =~ $ONLY ]]; then return 0; fi
    local flags=("${@:8}")
    [ -n "$rxns" ] && rxp=(ip netns exec "$rxns")
    local outdir=$W/out.$transport
    for ((run = 1; run <= RUNS; run++)); do
        rm -rf "$outdir" "$W/get.time" "$W/get.json"
        reset_hwm "$spid"
        local t0
        t0=$(proc_ticks "$spid")
        echo "=== $case / $path / run $run" >>"$W/get.log"
        local s e rc=0 st xfer
        s=$(now)
        "${rxp[@]}" timeout -k 5 "$CAP" /usr/bin/time -v -o "$W/get.time" \
            "$BIN" "${VFLAG[@]}" get "$seed" 001 --tracker "$tracker" --transport "$transport" \
            --out "$outdir" --json "${flags[@]}" >"$W/get.json" 2>>"$W/get.log" || rc=$?
        e=$(now)
        st=$(status_of_rc "$rc")
        [ -n "$st" ] || st=$(verify "$outdir/$FILE_NAME" "$SRC")
        xfer=$(json_field "$W/get.json" elapsed_ms)
        if [ -n "$xfer" ]; then xfer=$(awk -v m="$xfer" 'BEGIN { printf "%.4f", m / 1000 }'); else xfer=-; fi
        if [ "$st" != ok ]; then
            echo "bench: $case $path run $run: $st; last lines of get's stderr:" >&2
            tail -n 3 "$W/get.log" | sed 's/^/  | /' >&2
        fi
        # The seeding peer's CPU over the whole command (the transfer, plus lookups)
        local txcpu
        txcpu=$(awk -v a="$t0" -v b="$(proc_ticks "$spid")" -v hz="$TICKS" \
            'BEGIN { if (a == "" || b == "" || b < a) print "-"; else printf "%.2fs", (b - a) / hz }')
        record "$case" "$path" "$run" "$st" "$xfer" "$(secs "$s" "$e")" "$(vmhwm_kib "$spid")" "$(maxrss_kib "$W/get.time")" \
            "$txcpu" "$(cpu_s "$W/get.time")"
        echo "      seeding peer RSS after the transfer: $(kib_to_mib "$(vmrss_kib "$spid")") MiB; first byte $(json_field "$W/get.json" first_byte_ms) ms after the command's start" >&2
        settle "$outdir"
    done
}

# start_tracker NS LISTEN -> TRACKER_PID TRACKER_ADDR
start_tracker() {
    local ns=$1 listen=$2 pre=() log
    [ -n "$ns" ] && pre=(ip netns exec "$ns")
    LOGN=$((LOGN + 1))
    log=$W/tracker.$LOGN.log
    "${pre[@]}" "$BIN" tracker --listen "$listen" >"$log" 2>&1 &
    TRACKER_PID=$!
    PIDS+=("$TRACKER_PID")
    wait_line "$log" '^tracker listening on ' "$TRACKER_PID" 30 || die "tracker did not start"
    TRACKER_ADDR=$(sed -n 's/^tracker listening on \([^ ]*\) .*/\1/p' "$log" | head -1)
}
# start_seed NS NAME LISTEN TRANSPORT TRACKER [PEER ARGS...] -> SEED_PID
start_seed() {
    local ns=$1 name=$2 listen=$3 transport=$4 tracker=$5 pre=() log
    shift 5
    [ -n "$ns" ] && pre=(ip netns exec "$ns")
    LOGN=$((LOGN + 1))
    log=$W/$name.$LOGN.log
    "${pre[@]}" "$BIN" "${VFLAG[@]}" peer --name "$name" --listen "$listen" --transport "$transport" \
        --tracker "$tracker" --share "$SHARE" --downloads "$W/seed-downloads" --no-menu "$@" >"$log" 2>&1 &
    SEED_PID=$!
    PIDS+=("$SEED_PID")
    wait_line "$log" 'registered with' "$SEED_PID" 120 || die "seed $name did not register"
}

# ------------------------------------------------------------------ summary tables
# median of column COL (1-based in the TSV) over ok runs of CASE/PATH; or the failure words
cell() {
    local case=$1 path=$2 col=$3
    awk -F'\t' -v c="$case" -v p="$path" -v k="$col" '
        $1 == c && $2 == p { n++; if ($4 == "ok" && $k != "-" && $k != "") v[++m] = $k; else bad[$4]++ }
        END {
            if (n == 0) { print "n/a"; exit }
            if (m == 0) { s = ""; for (b in bad) s = s (s == "" ? "" : "/") b; print s; exit }
            # sort numerically (insertion sort: few runs)
            for (i = 2; i <= m; i++) { x = v[i]; j = i - 1; while (j > 0 && v[j] + 0 > x + 0) { v[j + 1] = v[j]; j-- } v[j + 1] = x }
            if (m % 2) printf "%.2f\n", v[(m + 1) / 2]; else printf "%.2f\n", (v[m / 2] + v[m / 2 + 1]) / 2
        }' "$TSV"
}
paired() { # CASE PATH COL -> "median min-max" of the per-round ratios to raw TCP (loopback:
    # the cases take turns, so the k-th run of a path and raw TCP's k-th run share a round)
    awk -F'\t' -v c="$1" -v p="$2" -v k="$3" -v raw="raw TCP (socat)" '
        $1 == c && $2 == raw { r[++nr] = ($4 == "ok") ? $k : "" }
        $1 == c && $2 == p { x[++nx] = ($4 == "ok") ? $k : "" }
        END {
            for (i = 1; i <= nx && i <= nr; i++)
                if (x[i] != "" && x[i] != "-" && r[i] != "" && r[i] != "-" && r[i] + 0 > 0) v[++m] = x[i] / r[i]
            if (m == 0) { print "-"; exit }
            for (i = 2; i <= m; i++) { y = v[i]; j = i - 1; while (j > 0 && v[j] > y) { v[j + 1] = v[j]; j-- } v[j + 1] = y }
            med = (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
            printf "%.2f %.2f-%.2f\n", med, v[1], v[m]
        }' "$TSV"
}
okn() {
    awk -F'\t' -v c="$1" -v p="$2" '$1 == c && $2 == p { n++; if ($4 == "ok") o++ } END { printf "%d/%d", o, n }' "$TSV"
}
ratio() { # a b -> a/b, or "-" when either is not a number
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f", a / b; else print "-" }'
}
rss_mib() { # median KiB column -> MiB
    local v
    v=$(cell "$1" "$2" "$3")
    if [[ "$v" =~ ^[0-9.]+$ ]]; then kib_to_mib "$v"; else echo "$v"; fi
}

header() {
    echo "# p2p transfer benchmark, mode $MODE, $(date -u '+%F %T') UTC"
    echo "# host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM; load at start $LOAD_START, at end $(loadavg)"
    if [ "${NO_BUILD:-0}" != 1 ]; then
        echo "# binary: $BIN, built from $REPO at commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- core transports apps 2>/dev/null || echo ' + uncommitted changes in core/transports/apps')"
    else
        echo "# binary: $BIN ($(date -u -r "$BIN" '+%F %T') UTC; NO_BUILD=1)"
    fi
    echo "# file: $SIZE_MIB MiB from /dev/urandom; RUNS=$RUNS (median of ok runs), CAP=${CAP}s per transfer"
    echo "# $REPORTING_NOTE"
}

LOAD_START=$(loadavg)
BYTES=$((SIZE_MIB * 1048576))
SHARE=$W/share
mkdir -p "$SHARE"
FILE_NAME=bench.bin
SRC=$SHARE/$FILE_NAME
head -c "$BYTES" /dev/urandom >"$SRC"
# Write the new file out now, or its writeback would slow down whichever case runs first.
sync
# Free page reporting off, and the pages the runs will take backed by the host (see the top).
REPORTING_NOTE="free page reporting: not present"
if [ "${REPORTING:-}" != keep ] && [ -w "$REPORTING_PARAM" ]; then
    REPORTING_SAVED=$(cat "$REPORTING_PARAM")
    echo 11 >"$REPORTING_PARAM"
    head -c "$((2 * BYTES))" /dev/zero >"$W/warm"
    rm -f "$W/warm"
    sync
    REPORTING_NOTE="free page reporting: off for the run (page_reporting_order $REPORTING_SAVED -> 11), $((2 * SIZE_MIB)) MiB written and removed first"
elif [ -e "$REPORTING_PARAM" ]; then
    REPORTING_NOTE="free page reporting: left on (order $(cat "$REPORTING_PARAM"))"
fi

# ------------------------------------------------------------------ mode: loopback
loopback() {
    local cc
    cc=$(sysctl -n net.ipv4.tcp_congestion_control 2>/dev/null || echo '?')
    echo "loopback: $SIZE_MIB MiB, RUNS=$RUNS" >&2
    start_tracker "" 127.0.0.1:0
    local tracker=$TRACKER_ADDR
    start_seed "" seed-udp 127.0.0.1:0 udp "$tracker"
    local udp_pid=$SEED_PID
    local udp_idx_hwm
    udp_idx_hwm=$(vmhwm_kib "$udp_pid")
    start_seed "" seed-tcp 127.0.0.1:0 tcp "$tracker"
    local tcp_pid=$SEED_PID
    local tcp_idx_hwm
    tcp_idx_hwm=$(vmhwm_kib "$tcp_pid")
    start_seed "" seed-mtu 127.0.0.1:0 udp "$tracker" --max-datagram 1452
    local mtu_pid=$SEED_PID

    # The cases take turns, run after run, so that a slow spell of the machine does not
    # land on one case only; each round starts one case later than the one before, so that
    # no case always follows the same other one (5 rounds put each case in each place).
    local round rounds=$RUNS k
    for ((round = 1; round <= rounds; round++)); do
        echo "  round $round of $rounds" >&2
        for ((k = 0; k < 5; k++)); do
            local c=$(((round - 1 + k) % 5)) labels=("" "p2p UDP" "p2p TCP" "p2p UDP 1452 B" "p2p UDP fsync")
            if [ "$c" != 0 ] && [ -n "${CASES:-}" ] && ! [[ "${labels[$c]}" =~ $CASES ]]; then
                continue
            fi
            case $c in
                0) RUNS=1 raw_tcp lo "raw TCP (socat)" "" "" 127.0.0.1 "$(free_port)" ;;
                # Like socat, into the page cache (--no-fsync); "fsync" below is get's
                # default (checkpoints and the finished file synced), which the disk bounds.
                1) RUNS=1 p2p_get lo "p2p UDP" "" udp seed-udp "$udp_pid" "$tracker" --no-fsync ;;
                2) RUNS=1 p2p_get lo "p2p TCP" "" tcp seed-tcp "$tcp_pid" "$tracker" --no-fsync ;;
                # Datagrams of a real network's size (1,500-byte MTU) instead of loopback's
                # 60 KiB.
                3) RUNS=1 p2p_get lo "p2p UDP 1452 B" "" udp seed-mtu "$mtu_pid" "$tracker" --no-fsync ;;
                4) RUNS=1 p2p_get lo "p2p UDP fsync" "" udp seed-udp "$udp_pid" "$tracker" ;;
            esac
        done
    done
    RUNS=$rounds

    local raw_x raw_c
    raw_x=$(cell lo "raw TCP (socat)" 7)
    raw_c=$(cell lo "raw TCP (socat)" 8)
    echo
    header
    echo "# raw TCP: socat -u -b $SOCAT_BUF, congestion control $cc; peak RSS of the seeding peers after indexing (before any transfer): udp $(kib_to_mib "$udp_idx_hwm") MiB, tcp $(kib_to_mib "$tcp_idx_hwm") MiB"
    echo
    printf '%-16s %5s %10s %10s %7s %7s %7s %11s %12s %14s\n' path ok/n "MiB/s" "MiB/s cmd" ratio "r cmd" "r round" "round range" "sender MiB" "receiver MiB"
    local p x c pr
    for p in "raw TCP (socat)" "p2p UDP" "p2p TCP" "p2p UDP 1452 B" "p2p UDP fsync"; do
        x=$(cell lo "$p" 7)
        c=$(cell lo "$p" 8)
        read -r -a pr <<<"$(paired lo "$p" 7)"
        printf '%-16s %5s %10s %10s %7s %7s %7s %11s %12s %14s\n' "$p" "$(okn lo "$p")" "$x" "$c" \
            "$(ratio "$x" "$raw_x")" "$(ratio "$c" "$raw_c")" "${pr[0]:--}" "${pr[1]:--}" "$(rss_mib lo "$p" 9)" "$(rss_mib lo "$p" 10)"
    done
    echo
    echo "MiB/s: file size / transfer time (p2p: get --json elapsed_ms; raw TCP: sender start to receiver exit)."
    echo "p2p UDP, p2p TCP: get --no-fsync (written to the page cache, as socat does); p2p UDP fsync: get's default."
    echo "p2p UDP 1452 B: a seeder with --max-datagram 1452 (a 1,500-byte MTU's datagrams, as on a real network), get --no-fsync."
    echo "MiB/s cmd: file size / wall time of the whole receiving command; ratio, r cmd: against raw TCP."
    echo "r round, round range: median, lowest and highest of the per-round ratios (xfer) to the raw TCP run of the same round."
    echo "sender / receiver MiB: peak RSS (seeding peer: VmHWM reset before the transfer; receiver: /usr/bin/time -v)."
}

# ------------------------------------------------------------------ mode: impaired
LINKEM_PID=""
link_up() { # DELAY_MS LOSS_PCT [REORDER_PCT CORR_PCT]
    local d=$1 l=$2 r=${3:-0} c=${4:-0}
    "$W/linkem" "/run/netns/$NS_A" tunA "/run/netns/$NS_B" tunB "$((d * 1000))" "$l" "$r" "$c" \
        2>>"$W/linkem.log" &
    LINKEM_PID=$!
    PIDS+=("$LINKEM_PID")
    local i
    for ((i = 0; i < 250; i++)); do
        ip -n "$NS_A" link show tunA >/dev/null 2>&1 && ip -n "$NS_B" link show tunB >/dev/null 2>&1 && break
        kill -0 "$LINKEM_PID" 2>/dev/null || die "linkem exited: $(tail -n 3 "$W/linkem.log")"
        sleep 0.02
    done
    ip -n "$NS_A" addr add "$ADDR_A/24" dev tunA
    ip -n "$NS_A" link set tunA up
    ip -n "$NS_B" addr add "$ADDR_B/24" dev tunB
    ip -n "$NS_B" link set tunB up
}
link_down() {
    if [ -n "$LINKEM_PID" ]; then
        stop_pid "$LINKEM_PID"
        LINKEM_PID=""
        tail -n 2 "$W/linkem.log" | sed 's/^/  linkem: /' >&2
    fi
}
# set_cc CC: namespace default (our TCP transport uses it) in both namespaces; 0 if it took
set_cc() {
    local ns ok=0
    for ns in "$NS_A" "$NS_B"; do
        ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$1" 2>/dev/null || ok=1
    done
    return $ok
}
ns_cc() { ip netns exec "$NS_A" sysctl -n net.ipv4.tcp_congestion_control 2>/dev/null || echo '?'; }

# coexist_case LABEL DELAY_MS CC: our UDP get and a raw TCP flow (CC) start together; when
# the get ends, the bytes the TCP flow delivered meanwhile are counted: the get's share is
# its bytes over both. Recorded as the path "UDP share" (in percent, column 5).
coexist_case() {
    local label=$1 d=$2 cc=$3 port=5002
    echo "-- $label" >&2
    link_up "$d" 0
    start_tracker "$NS_A" "$ADDR_A:0"
    local tracker=$TRACKER_ADDR tpid=$TRACKER_PID
    start_seed "$NS_A" seed-udp "$ADDR_A:0" udp "$tracker"
    local spid=$SEED_PID out=$W/out.coexist outdir=$W/out.udp run
    for ((run = 1; run <= RUNS; run++)); do
        rm -rf "$out" "$outdir"
        ip netns exec "$NS_B" socat -u -b "$SOCAT_BUF" "TCP-LISTEN:$port,bind=$ADDR_B,reuseaddr" \
            "OPEN:$out,creat,trunc" 2>>"$W/socat.log" &
        local rp=$!
        PIDS+=("$rp")
        wait_listen "$NS_B" "$port" || echo "bench: coexist listener did not come up" >&2
        ip netns exec "$NS_A" socat -u -b "$SOCAT_BUF" /dev/zero \
            "TCP:$ADDR_B:$port,setsockopt-string=6:13:$cc" 2>>"$W/socat.log" &
        local tp=$!
        PIDS+=("$tp")
        local rc=0 st share
        ip netns exec "$NS_B" timeout -k 5 "$CAP" "$BIN" get seed-udp 001 --tracker "$tracker" \
            --transport udp --out "$outdir" --json --no-fsync >"$W/get.json" 2>>"$W/get.log" || rc=$?
        local tcp_bytes
        tcp_bytes=$(stat -c %s "$out" 2>/dev/null || echo 0)
        stop_pid "$tp"
        stop_pid "$rp"
        st=$(status_of_rc "$rc")
        [ -n "$st" ] || st=$(verify "$outdir/$FILE_NAME" "$SRC")
        share=$(awk -v u="$((SIZE_MIB * 1048576))" -v t="$tcp_bytes" 'BEGIN { printf "%.1f", 100 * u / (u + t) }')
        echo "      UDP share $share % (TCP $cc moved $((tcp_bytes / 1048576)) MiB meanwhile)" >&2
        record "$label" "UDP share" "$run" "$st" "$share" "$share" - - - -
        settle "$outdir"
        rm -f "$out"
    done
    stop_pid "$spid"
    stop_pid "$tpid"
    link_down
}

CC_NOTES=()
impaired_case() { # LABEL DELAY_MS LOSS_PCT [REORDER_PCT CORR_PCT]
    local label=$1
    shift
    if [ -n "${CASES:-}" ] && ! [[ "$label" =~ $CASES ]]; then return 0; fi
    echo "-- $label" >&2
    link_up "$@"
    ip netns exec "$NS_B" ping -c 3 -i 0.2 -q "$ADDR_A" 2>&1 | tail -1 | sed 's/^/  ping: /' >&2 || true
    local cc first=1
    for cc in bbr cubic; do
        if [ "$cc" = bbr ] && [ "$HAVE_BBR" != 1 ]; then
            first=0
            continue
        fi
        raw_tcp "$label" "raw TCP $cc" "$NS_B" "$NS_A" "$ADDR_B" 5001 "$cc"
        # our processes start after the namespace default is set: sockets take it at creation
        set_cc "$cc" || true
        local eff
        eff=$(ns_cc)
        [ "$eff" = "$cc" ] || CC_NOTES+=("$label: could not make $cc the namespace default; our TCP ran with $eff")
        start_tracker "$NS_A" "$ADDR_A:0"
        local tracker=$TRACKER_ADDR tpid=$TRACKER_PID
        start_seed "$NS_A" seed-tcp "$ADDR_A:0" tcp "$tracker"
        local tcp_pid=$SEED_PID
        p2p_get "$label" "p2p TCP ($eff)" "$NS_B" tcp seed-tcp "$tcp_pid" "$tracker" --no-fsync
        stop_pid "$tcp_pid"
        if [ "$first" = 1 ] || [ "$HAVE_BBR" != 1 ]; then
            start_seed "$NS_A" seed-udp "$ADDR_A:0" udp "$tracker"
            local udp_pid=$SEED_PID
            p2p_get "$label" "p2p UDP" "$NS_B" udp seed-udp "$udp_pid" "$tracker" --no-fsync
            stop_pid "$udp_pid"
        fi
        stop_pid "$tpid"
        first=0
    done
    link_down
}

impaired() {
    [ "$(id -u)" = 0 ] || die "impaired mode needs root (network namespaces, TUN devices)"
    [ -r "$LINKEM_C" ] || die "no linkem source at $LINKEM_C (set LINKEM_C)"
    [ -c /dev/net/tun ] || die "no /dev/net/tun"
    gcc -O2 -Wall -o "$W/linkem" "$LINKEM_C" || die "linkem build failed"
    : >"$W/linkem.log"

    # bbr: load it if the kernel has it as a module
    HAVE_BBR=0
    if ! grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control; then
        modprobe tcp_bbr 2>/dev/null || true
    fi
    grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control && HAVE_BBR=1
    grep -qw cubic /proc/sys/net/ipv4/tcp_available_congestion_control || modprobe tcp_cubic 2>/dev/null || true
    # A non-init namespace may make only an allowed algorithm its default.
    if [ "$CC_TWEAK" = 1 ]; then
        local allowed want cc
        allowed=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
        want=$allowed
        for cc in bbr cubic; do
            grep -qw "$cc" /proc/sys/net/ipv4/tcp_available_congestion_control || continue
            [[ " $want " == *" $cc "* ]] || want="$want $cc"
        done
        if [ "$want" != "$allowed" ]; then
            ALLOWED_CC_SAVED=$allowed
            sysctl -qw net.ipv4.tcp_allowed_congestion_control="$want" ||
                echo "bench: could not extend tcp_allowed_congestion_control" >&2
        fi
    fi

    ns_delete "$NS_A" # leftovers of an interrupted run
    ns_delete "$NS_B"
    local ns
    for ns in "$NS_A" "$NS_B"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 || true
    done

    echo "impaired: $SIZE_MIB MiB, RUNS=$RUNS, CAP=${CAP}s, bbr $([ "$HAVE_BBR" = 1 ] && echo available || echo 'n/a')" >&2
    local cases=()
    if [ "${CEILING:-0}" = 1 ]; then
        impaired_case "d0 l0% (ceiling)" 0 0
        cases+=("d0 l0% (ceiling)")
    fi
    local d=${DELAY_MS:-1}
    if [ "${WAN:-0}" = 1 ]; then
        local rtt loss
        for rtt in ${WAN_RTTS:-20 100 200}; do
            for loss in ${WAN_LOSSES:-0 1 3}; do
                impaired_case "rtt${rtt}ms l${loss}%" "$((rtt / 2))" "$loss"
                cases+=("rtt${rtt}ms l${loss}%")
            done
        done
        if [ "${WAN_COEXIST:-1}" = 1 ]; then
            local cc
            for cc in cubic bbr; do
                [ "$cc" = bbr ] && [ "$HAVE_BBR" != 1 ] && continue
                if [ -z "${CASES:-}" ] || [[ "coexist $cc" =~ $CASES ]]; then
                    coexist_case "coexist $cc" 50 "$cc"
                fi
            done
        fi
    else
        impaired_case "d${d}ms l0%" "$d" 0
        impaired_case "d${d}ms l1%" "$d" 1
        impaired_case "d${d}ms l5%" "$d" 5
        impaired_case "d${d}ms reorder25%/50%" "$d" 0 25 50
        cases+=("d${d}ms l0%" "d${d}ms l1%" "d${d}ms l5%" "d${d}ms reorder25%/50%")
    fi

    echo
    header
    if [ "${LINKEM_RATE_MBIT:-0}" != 0 ]; then
        echo "# bottleneck: ${LINKEM_RATE_MBIT} Mbit/s each way, drop-tail queue of ${LINKEM_QUEUE_MS:-100} ms"
    fi
    echo "# link: linkem (TUN relay) between namespaces $NS_A ($ADDR_A: tracker, seeders, raw TCP sender)"
    echo "#       and $NS_B ($ADDR_B: p2p get, raw TCP receiver); delay each way, loss each way,"
    echo "#       reorder = share of packets that skip the delay queue / correlation"
    echo "# raw TCP: socat -u -b $SOCAT_BUF with TCP_CONGESTION set per socket on the sender;"
    echo "# p2p TCP (X): our TCP transport with namespace default congestion control X"
    local n
    for n in "${CC_NOTES[@]}"; do echo "# note: $n"; done
    echo
    printf '%-21s %9s %9s %9s %10s %10s %8s %8s %8s %8s\n' "case (goodput MiB/s)" "raw bbr" "raw cubic" "p2p UDP" "TCP(bbr)" "TCP(cubic)" "UDP/bbr" "UDP/cub" "TCP/bbr" "TCP/cub"
    local c rb rc u tb tc
    for c in "${cases[@]}"; do
        if [ -n "${CASES:-}" ] && ! [[ "$c" =~ $CASES ]]; then continue; fi
        rb=$(cell "$c" "raw TCP bbr" 7)
        rc=$(cell "$c" "raw TCP cubic" 7)
        u=$(cell "$c" "p2p UDP" 7)
        tb=$(cell "$c" "p2p TCP (bbr)" 7)
        tc=$(cell "$c" "p2p TCP (cubic)" 7)
        printf '%-21s %9s %9s %9s %10s %10s %8s %8s %8s %8s\n' "$c" "$rb" "$rc" "$u" "$tb" "$tc" \
            "$(ratio "$u" "$rb")" "$(ratio "$u" "$rc")" "$(ratio "$tb" "$rb")" "$(ratio "$tc" "$rc")"
    done
    if [ "${WAN:-0}" = 1 ] && [ "${WAN_COEXIST:-1}" = 1 ]; then
        for c in "coexist cubic" "coexist bbr"; do
            if [ -n "${CASES:-}" ] && ! [[ "$c" =~ $CASES ]]; then continue; fi
            printf '%-21s UDP share of the bottleneck while both ran: %s %% (target 33-67)\n' \
                "$c (rtt 100 ms)" "$(cell "$c" "UDP share" 5)"
        done
    fi
    echo
    echo "goodput: file size / transfer time (p2p: get --json elapsed_ms; raw TCP: sender start to receiver exit)."
    echo "TCP/bbr = p2p TCP (bbr) / raw bbr; TCP/cub = p2p TCP (cubic) / raw cubic; n/a: not run."
    echo "whole-command wall times and each run: see the 'run' lines above (stderr)."
    for ns in "$NS_A" "$NS_B"; do ns_delete "$ns"; done
}

if [ "$MODE" = impaired ]; then impaired; else loopback; fi

if [ "$CORRUPT" = 1 ]; then
    echo "bench: a copy differs from its source" >&2
    exit 1
fi
