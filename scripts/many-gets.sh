#!/usr/bin/env bash
# Many downloads of one file from one seeder at once, default flags, on 127.0.0.1
# (issue 20: "100 simultaneous `get`s from one seeder with default flags: 100/100 complete
# byte-exact, aggregate >= 0.9x a single get, fairness (max/min per-transfer rate) <= 2").
#
#   scripts/many-gets.sh              UDP, then TCP: per transport a tracker, one seeder
#                                     (`p2p peer --no-menu`, default flags but for its name,
#                                     address, share and downloads folders) sharing one file
#                                     of SIZE_MIB random bytes, then per run:
#                                       (a) one `p2p get --json --no-fsync` alone: the baseline
#                                       (b) N `p2p get --json --no-fsync` started together, each
#                                           into its own --out folder
#   TRANSPORTS=udp scripts/many-gets.sh   one transport only
#
# Env:
#   N          gets started together in (b) (default 100)
#   SIZE_MIB   file size in MiB (default 64)
#   RUNS       runs of (a)+(b) per transport; the summary shows medians (default 1)
#   TRANSPORTS transports to run, in order (default "udp tcp"; tcp = `--transport tcp` on the
#              seeder and on every get; the tracker serves both)
#   CAP        seconds allowed for one phase before the gets still running are killed and
#              counted as "timeout" (default 300)
#   NO_BUILD=1 skip `cargo build --release -p p2p-apps`
#   BIN        p2p binary (default target/release/p2p)
#   SEED_FLAGS extra flags for the seeder, GET_FLAGS for every get (default none: the target
#              is about default flags; these are for experiments, e.g.
#              SEED_FLAGS="--max-uploads-per-peer 100 --max-uploads 100")
#   KEEP=1     keep the temporary directory (per-get stdout/stderr, seeder and tracker logs;
#              the copies are removed after each run in any case: N x SIZE_MIB each)
#
# Figures (MiB = 2^20 bytes; times measured by one python launcher that starts the gets
# back to back, as fast as it can, and watches their stdout):
#   spawn      when the launcher started a get (just before fork/exec)
#   end        when the get's one stdout line (the --json report, printed once the file is
#              verified and in place, before get waits for the sender's FIN answer) arrived
#   exit       when the get's stdout closed (the process ended)
#   first byte spawn + first_byte_ms (get --json: command start to the first byte of the
#              file, including any busy-retry attempts before; the command start is a few ms
#              after spawn, so this makes a transfer at most that much longer)
#   single     (a): SIZE / (exit - spawn) of the get alone: "cmd MiB/s"; also its "xfer"
#              rate SIZE / (end - first byte)
#   aggregate  (b): C x SIZE / (last exit - first spawn), C = the gets that completed (N when
#              all did), and "ratio" = aggregate / single cmd MiB/s (whole commands on both
#              sides); "xratio" = C x SIZE / (last end - earliest first byte) over the single
#              get's xfer rate (transfers only)
#   fairness   (b): max/min over the completed gets of the per-transfer rate SIZE / (end -
#              first byte) ("fair"), and max/min of the command times exit - spawn ("cmdfair")
#   exact      completed gets (exit 0) whose file has the source's SHA-256
#   busy       gets whose stderr says the seeder was busy at least once ("asking again"), and
#              the total of those retries
# Failed gets (non-zero exit, or killed at CAP) are listed with their exit code and first error
# line (--json's {"error":{"kind","message"}} on stdout, else stderr's first non-JSON line).
# The machine's load average is printed before every phase.
#
# Exit status: 0 when every completed copy is byte-exact (failures and missed targets are
# reported, not an error), 1 when a copy differs, 2 on a set-up error.
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
ME=many-gets
# shellcheck source=lib.sh
source "$HERE/lib.sh"
N=${N:-100}
SIZE_MIB=${SIZE_MIB:-64}
RUNS=${RUNS:-1}
TRANSPORTS=${TRANSPORTS:-udp tcp}
CAP=${CAP:-300}
BIN=${BIN:-$REPO/target/release/p2p}

die() {
    echo "many-gets: $*" >&2
    exit 2
}
command -v python3 >/dev/null || die "needs python3"

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "building: cargo build --release -p p2p-apps" >&2
    (cd "$REPO" && cargo build --release -p p2p-apps) >&2
fi
[ -x "$BIN" ] || die "no binary at $BIN (build it with: cargo build --release -p p2p-apps)"

W=$(mktemp -d "${TMPDIR:-/tmp}/p2p-many-gets.XXXXXX")
PIDS=()
untrack() {
    local x a=()
    for x in "${PIDS[@]}"; do [ "$x" != "$1" ] && a+=("$x"); done
    PIDS=("${a[@]}")
}
stop_pid() { # stop one process this script started, and reap it
    local p=$1
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    untrack "$p"
}
cleanup() {
    local rc=$? p
    set +e
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "logs kept in $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ------------------------------------------------------------------ the launcher and the arithmetic
cat >"$W/many.py" <<'PY'
import hashlib, json, os, selectors, signal, statistics, subprocess, sys, time

CHILDREN = []  # every get this launcher started

def launch(result, n, cap, outroot, argv):
    """Starts n copies of argv ({i} in an argument: the get's number), back to back;
    records spawn, first stdout line and exit times; kills what is left at cap seconds."""
    procs, children = [], CHILDREN
    def on_signal(sig, frame):
        for p in children:
            try:
                p.kill()
            except OSError:
                pass
        sys.exit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    for i in range(n):
        out = os.path.join(outroot, "get%03d" % i)
        os.makedirs(out, exist_ok=True)
        err = open(os.path.join(outroot, "get%03d.stderr" % i), "wb")
        args = [a.replace("{out}", out) for a in argv]
        t = time.time()
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        children.append(p)
        os.set_blocking(p.stdout.fileno(), False)
        r = {"i": i, "out": out, "spawn": t, "end": None, "exit": None, "buf": b""}
        procs.append((p, r))
        sel.register(p.stdout, selectors.EVENT_READ, (p, r))
    deadline = time.time() + cap
    open_ = n
    while open_ and time.time() < deadline:
        for key, _ in sel.select(timeout=0.5):
            p, r = key.data
            now = time.time()
            try:
                chunk = os.read(p.stdout.fileno(), 65536)
            except BlockingIOError:
                continue
            if chunk:
                r["buf"] += chunk
                if r["end"] is None and b"\n" in r["buf"]:
                    r["end"] = now
            else:
                r["exit"] = now
                sel.unregister(p.stdout)
                p.stdout.close()
                open_ -= 1
    rows = []
    for p, r in procs:
        if r["exit"] is None:
            p.kill()
            p.wait()
            r["rc"] = "timeout"
        else:
            r["rc"] = p.wait()
        text = r.pop("buf").decode("utf-8", "replace").strip().splitlines()
        r["json"] = None
        for line in text:
            try:
                r["json"] = json.loads(line)
                break
            except ValueError:
                pass
        rows.append(r)
    with open(result, "w") as f:
        json.dump(rows, f)

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)

def first_error(r):
    j = r["json"] or {}
    if "error" in j:
        e = j["error"]
        return "%s: %s" % (e.get("kind"), e.get("message"))
    try:
        with open(r["out"] + ".stderr", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("{"):
                    return line
    except OSError:
        pass
    return "(no message)"

def busy_retries(r):
    try:
        with open(r["out"] + ".stderr", errors="replace") as f:
            return sum("asking again" in line for line in f)
    except OSError:
        return 0

def judge(rows, size, src_hash):
    """Adds ok / exact / first-byte / xfer figures to each row."""
    for r in rows:
        j = r["json"] or {}
        r["ok"] = r["rc"] == 0 and j.get("verified") is True
        path = j.get("path")
        r["exact"] = bool(r["ok"] and path and os.path.isfile(path) and sha256(path) == src_hash)
        fb = j.get("first_byte_ms")
        r["fb"] = r["spawn"] + fb / 1000 if (r["ok"] and fb is not None) else None
        r["xfer_s"] = (r["end"] - r["fb"]) if (r["fb"] is not None and r["end"]) else None
        r["cmd_s"] = (r["exit"] - r["spawn"]) if r["exit"] else None
        r["busy"] = busy_retries(r)
        r["err"] = None if r["ok"] else first_error(r)

def mib(b, s):
    return b / 1048576 / s if s and s > 0 else None

def analyse(single_json, many_json, size, src_hash, transport, run, load_a, load_b, tsv):
    single = json.load(open(single_json))
    many = json.load(open(many_json))
    judge(single, size, src_hash)
    judge(many, size, src_hash)
    s = single[0]
    s_cmd = mib(size, s["cmd_s"]) if s["ok"] else None
    s_xfer = mib(size, s["xfer_s"]) if s["ok"] else None
    n = len(many)
    ok = [r for r in many if r["ok"]]
    exact = [r for r in many if r["exact"]]
    failed = [r for r in many if not r["ok"]]
    exits = [r["exit"] for r in many if r["exit"]]
    wall = (max(exits) - min(r["spawn"] for r in many)) if exits else None
    # over the completed gets only (when some failed, the target is missed anyway)
    agg = mib(len(ok) * size, wall) if ok else None
    ends = [r["end"] for r in ok if r["end"]]
    fbs = [r["fb"] for r in ok if r["fb"] is not None]
    xwall = (max(ends) - min(fbs)) if ends and fbs else None
    xagg = mib(len(ok) * size, xwall) if ok and xwall else None
    rates = [mib(size, r["xfer_s"]) for r in ok if r["xfer_s"]]
    cmds = [r["cmd_s"] for r in ok if r["cmd_s"]]
    fair = max(rates) / min(rates) if len(rates) >= 2 else None
    cmdfair = max(cmds) / min(cmds) if len(cmds) >= 2 else None
    ratio = agg / s_cmd if agg and s_cmd else None
    xratio = xagg / s_xfer if xagg and s_xfer else None
    busy_gets = sum(1 for r in many if r["busy"])
    busy_total = sum(r["busy"] for r in many)
    row = {
        "transport": transport, "run": run, "n": n, "ok": len(ok), "exact": len(exact),
        "failed": len(failed), "single_exact": s["exact"],
        "single_cmd_s": s["cmd_s"], "single_cmd": s_cmd, "single_xfer": s_xfer,
        "single_json": s["json"],
        "wall_s": wall, "agg": agg, "ratio": ratio, "xagg": xagg, "xratio": xratio,
        "fair": fair, "rate_min": min(rates) if rates else None,
        "rate_max": max(rates) if rates else None,
        "cmdfair": cmdfair, "cmd_min": min(cmds) if cmds else None,
        "cmd_max": max(cmds) if cmds else None,
        "busy_gets": busy_gets, "busy_total": busy_total, "load_a": load_a, "load_b": load_b,
    }
    with open(tsv, "a") as f:
        f.write(json.dumps(row) + "\n")
    f2 = lambda x, d=2: "-" if x is None else ("%.*f" % (d, x))
    print("  %s run %d (a) single: %s, cmd %s s = %s MiB/s, xfer %s MiB/s, json %s  [load %s]"
          % (transport, run, "exact" if s["exact"] else ("FAILED " + str(s["err"])),
             f2(s["cmd_s"], 3), f2(s_cmd, 1), f2(s_xfer, 1), json.dumps(s["json"]), load_a))
    print("  %s run %d (b) %d gets: %d completed, %d byte-exact, %d failed; wall %s s, "
          "aggregate %s MiB/s = %sx single (xfer: %s MiB/s = %sx); fairness %s "
          "(per-transfer %s..%s MiB/s), command times %s..%s s = %sx; %d gets were told busy "
          "(%d retries)  [load %s]"
          % (transport, run, n, len(ok), len(exact), len(failed), f2(wall, 3), f2(agg, 1),
             f2(ratio), f2(xagg, 1), f2(xratio), f2(fair), f2(row["rate_min"], 1),
             f2(row["rate_max"], 1), f2(row["cmd_min"], 3), f2(row["cmd_max"], 3), f2(cmdfair),
             busy_gets, busy_total, load_b))
    if failed:
        by = {}
        for r in failed:
            key = (str(r["rc"]), r["err"])
            by.setdefault(key, []).append(r["i"])
        for (rc, err), ids in sorted(by.items(), key=lambda kv: -len(kv[1])):
            print("    %d x exit %s: %s   (gets %s)" % (len(ids), rc, err,
                  ",".join(str(i) for i in ids[:12]) + ("..." if len(ids) > 12 else "")))
    corrupt = [r["i"] for r in ok if not r["exact"]]
    if corrupt or (s["ok"] and not s["exact"]):
        print("    NOT byte-exact: gets %s%s" % (corrupt, " and the single get" if s["ok"] and not s["exact"] else ""))
        return 1
    return 0

def summary(tsv):
    rows = [json.loads(l) for l in open(tsv)]
    med = lambda xs: statistics.median(xs) if xs else None
    f2 = lambda x, d=2: "-" if x is None else ("%.*f" % (d, x))
    print()
    print("| transport | runs | completed | byte-exact | single cmd MiB/s | aggregate MiB/s | ratio (>= 0.9) | xfer ratio | fairness (<= 2) | cmd-time max/min | busy gets | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in dict.fromkeys(r["transport"] for r in rows):
        rs = [r for r in rows if r["transport"] == t]
        col = lambda k: med([r[k] for r in rs if r[k] is not None])
        print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            t, len(rs),
            "/".join(str(r["ok"]) for r in rs) + " of %d" % rs[0]["n"],
            "/".join(str(r["exact"]) for r in rs),
            f2(col("single_cmd"), 1), f2(col("agg"), 1), f2(col("ratio")), f2(col("xratio")),
            f2(col("fair")), f2(col("cmdfair")), "/".join(str(r["busy_gets"]) for r in rs),
            f2(col("wall_s"), 2)))
    print("(medians over runs; aggregate and ratios count the completed gets' bytes only)")

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "launch":
        try:
            launch(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6:])
        except BaseException:
            for p in CHILDREN:  # no get outlives a failed launcher
                try:
                    p.kill()
                except OSError:
                    pass
            raise
    elif cmd == "hash":
        print(sha256(sys.argv[2]))
    elif cmd == "analyse":
        a = sys.argv
        sys.exit(analyse(a[2], a[3], int(a[4]), a[5], a[6], int(a[7]), a[8], a[9], a[10]))
    elif cmd == "summary":
        summary(sys.argv[2])
PY

# ------------------------------------------------------------------ the file, the tracker
SHARE=$W/share
mkdir -p "$SHARE"
BYTES=$((SIZE_MIB * 1048576))
head -c "$BYTES" /dev/urandom >"$SHARE/many-gets.bin"
SRC_HASH=$(python3 "$W/many.py" hash "$SHARE/many-gets.bin")
TSV=$W/runs.jsonl
: >"$TSV"

TPORT=$(free_port)
"$BIN" tracker --listen "127.0.0.1:$TPORT" >"$W/tracker.log" 2>&1 &
TRACKER_PID=$!
PIDS+=("$TRACKER_PID")
wait_line "$W/tracker.log" '^tracker listening on ' "$TRACKER_PID" 30 || die "the tracker did not start"
TRACKER=127.0.0.1:$TPORT

echo "many-gets: N=$N SIZE_MIB=$SIZE_MIB RUNS=$RUNS TRANSPORTS='$TRANSPORTS' SEED_FLAGS='${SEED_FLAGS:-}' GET_FLAGS='${GET_FLAGS:-}' BIN=$BIN on $(nproc) cores, build $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?'), load $(loadavg)"
CORRUPT=0
for transport in $TRANSPORTS; do
    name=seed-$transport
    SPORT=$(free_port)
    "$BIN" peer --no-menu --name "$name" --listen "127.0.0.1:$SPORT" --transport "$transport" \
        --tracker "$TRACKER" --share "$SHARE" --downloads "$W/seed-downloads-$transport" \
        ${SEED_FLAGS:-} >"$W/$name.log" 2>&1 &
    SEED_PID=$!
    PIDS+=("$SEED_PID")
    wait_line "$W/$name.log" 'registered with' "$SEED_PID" 120 || die "seeder $name did not register"
    GET=("$BIN" get "$name" 001 --tracker "$TRACKER" --transport "$transport" --out "{out}" --json --no-fsync ${GET_FLAGS:-})
    for ((run = 1; run <= RUNS; run++)); do
        a=$W/$transport.$run.single
        b=$W/$transport.$run.many
        mkdir -p "$a" "$b"
        sync
        load_a=$(loadavg)
        python3 "$W/many.py" launch "$a.json" 1 "$CAP" "$a" "${GET[@]}" &
        lp=$!
        PIDS+=("$lp")
        wait "$lp" || die "the launcher failed"
        untrack "$lp"
        sync
        load_b=$(loadavg)
        python3 "$W/many.py" launch "$b.json" "$N" "$CAP" "$b" "${GET[@]}" &
        lp=$!
        PIDS+=("$lp")
        wait "$lp" || die "the launcher failed"
        untrack "$lp"
        python3 "$W/many.py" analyse "$a.json" "$b.json" "$BYTES" "$SRC_HASH" "$transport" "$run" \
            "$load_a" "$load_b" "$TSV" || CORRUPT=1
        # The copies go, even with KEEP=1 (N x SIZE per run); stdout/stderr stay in $W
        rm -rf "$a"/get[0-9][0-9][0-9] "$b"/get[0-9][0-9][0-9]
        sync
    done
    stop_pid "$SEED_PID"
done
python3 "$W/many.py" summary "$TSV"
echo "load at the end: $(loadavg)"
exit "$CORRUPT"
