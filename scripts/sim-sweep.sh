#!/usr/bin/env bash
# Runs every simulation scenario of p2p-sim-tests for a range of seeds, in parallel, and sums
# up: failures with their replay lines, and simulated time against real time.
#
#   scripts/sim-sweep.sh [SEEDS] [FILTER]
#
#   SEEDS    the seeds, as SIM_SEEDS takes them: 0..1000 (half-open), 0..=99, 7,42 or 7
#            (default: $SIM_SEEDS, else 0..1000; an empty argument means the default)
#   FILTER   extended regex on `file::test`, e.g. 'loss::' or '^crash::.*_udp$'
#            (default: $SIM_FILTER, else every scenario)
#
# Env:
#   SIM_JOBS     test processes at once (default: nproc)
#   SIM_SLICES   slices each scenario's seeds are cut into (default: one per 25 seeds, so
#                that no single process holds up the end); one process runs one scenario over
#                one slice
#   SIM_TIMEOUT  seconds one process may run, 0 for no limit (default 0); a process killed by
#                it counts as failed, its unreported seeds listed
#   SIM_LOGS     folder for the logs (default: target/sim-sweep/<date>-<time>)
#   SIM_TMPDIR   TMPDIR of the tests, where each run keeps its peers' files (default: a folder
#                under /dev/shm when that is a writable tmpfs, where the real fsyncs of the
#                downloads cost no disk waits; empty: the system's default)
#   NO_BUILD=1   skip the build and use the test binaries of the last one (its cargo output in
#                target/sim-sweep/artifacts.json)
#
# Builds the tests with plain cargo (release), lists the scenarios of every test binary of
# p2p-sim-tests (tests marked #[ignore] are left out), then runs each scenario's binary with
# `--exact <test>` once per seed slice, SIM_SEEDS set to the slice. Every seed's run prints
# `ok: <test> seed <n> in <real>s, simulated <sim>s` (or `FAILED: ...`, see
# sim-tests/src/harness.rs); the summary is built from those lines and from the CPU time
# (user + system) of each test process:
#   - one line per scenario, the lowest simulated/CPU ratio first: runs, failures, simulated,
#     real (the sum of its runs' wall times) and CPU seconds, simulated/real, simulated/CPU;
#   - the totals ("Sweep results"): scenarios, seeds, runs, failures, simulated time, real
#     time, CPU time, the two ratios, and the sweep's wall clock;
#   - every failing scenario and seed with the line that replays it, and every process that
#     died or left seeds unreported, with its log.
# Exits 1 when anything failed or went unreported, 2 on a usage error.
#
# Examples:
#   scripts/sim-sweep.sh                        # everything, seeds 0..1000
#   scripts/sim-sweep.sh 0..20                  # a quick look
#   SIM_SEEDS=0..200 scripts/sim-sweep.sh '' 'loss::|faults::'
#   scripts/sim-sweep.sh 0..200 '^nat::'       # hole punching through simulated NATs

set -euo pipefail
export LC_ALL=C # `.` in numbers, byte order in sort

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cd "$root"

die() {
    echo "sim-sweep: $*" >&2
    exit 2
}

seeds_spec=${1:-${SIM_SEEDS:-0..1000}}
filter=${2:-${SIM_FILTER:-}}
jobs=${SIM_JOBS:-$(nproc)}
slices=${SIM_SLICES:-auto}
timeout_s=${SIM_TIMEOUT:-0}
logs=${SIM_LOGS:-$target/sim-sweep/$(date +%Y%m%d-%H%M%S)}

# Where the runs' files go: a tmpfs when there is one (a folder of this sweep's own, removed
# at the end).
own_tmpdir=
if [[ -z ${SIM_TMPDIR+set} ]] && [[ -d /dev/shm && -w /dev/shm ]]; then
    own_tmpdir=/dev/shm/p2p-sim-sweep.$$
    SIM_TMPDIR=$own_tmpdir
fi
tmpdir=${SIM_TMPDIR:-${TMPDIR:-}}

[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "SIM_JOBS=$jobs is not a positive number"
[[ $slices == auto || $slices =~ ^[1-9][0-9]*$ ]] || die "SIM_SLICES=$slices is not a positive number"
[[ $timeout_s =~ ^[0-9]+$ ]] || die "SIM_TIMEOUT=$timeout_s is not a number of seconds"

# The seeds, one a line: the same forms as sim-tests/src/seeds.rs accepts.
expand_seeds() {
    local spec=${1//[[:space:]]/}
    if [[ $spec =~ ^([0-9]+)\.\.=([0-9]+)$ ]]; then
        ((BASH_REMATCH[1] <= BASH_REMATCH[2])) || die "empty seed range $spec"
        seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
    elif [[ $spec =~ ^([0-9]+)\.\.([0-9]+)$ ]]; then
        ((BASH_REMATCH[1] < BASH_REMATCH[2])) || die "empty seed range $spec"
        seq "${BASH_REMATCH[1]}" $((BASH_REMATCH[2] - 1))
    elif [[ $spec =~ ^[0-9]+(,[0-9]+)*,?$ ]]; then
        tr ',' '\n' <<<"${spec%,}"
    else
        die "bad seeds '$1' (expected 0..1000, 0..=99, 7,42 or 7)"
    fi
}

# A slice of seeds as SIM_SEEDS: `a..b` when consecutive, else a list.
seeds_arg() {
    local first=$1 last=${*: -1}
    if (($# == last - first + 1)) && [[ "$*" == "$(seq -s ' ' "$first" "$last")" ]]; then
        echo "$first..$((last + 1))"
    else
        local IFS=,
        echo "$*"
    fi
}

seed_lines=$(expand_seeds "$seeds_spec") # exits here on a bad spec
mapfile -t seeds <<<"$seed_lines"
[[ $slices == auto ]] && slices=$(((${#seeds[@]} + 24) / 25))
((slices > ${#seeds[@]})) && slices=${#seeds[@]}

# --- build, and find the test binaries (one per file of sim-tests/tests) ---

artifacts=$target/sim-sweep/artifacts.json
mkdir -p "$target/sim-sweep" "$logs"
if [[ -n $own_tmpdir ]]; then
    mkdir -p "$own_tmpdir"
    trap 'rm -rf -- "$own_tmpdir"' EXIT
    trap 'exit 130' INT TERM
fi
if [[ ${NO_BUILD:-0} != 1 ]]; then
    cargo test -p p2p-sim-tests --release --no-run --message-format=json >"$artifacts"
fi
[[ -s $artifacts ]] || die "no build output in $artifacts (run without NO_BUILD=1)"

# (file stem, executable) of each integration test target, tab-separated.
binaries=()
while IFS= read -r line; do
    stem=$(sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)".*/\1/p' <<<"$line")
    exe=$(sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' <<<"$line")
    if [[ -n $stem && -x $exe ]]; then
        binaries+=("$stem"$'\t'"$exe")
    fi
done < <(grep '"reason":"compiler-artifact"' "$artifacts" | grep '"kind":\["test"\]' | grep '"executable":"/')
((${#binaries[@]} > 0)) || die "no test binary found in $artifacts"

# --- the scenarios: every test a binary lists, less the ignored ones, through the filter ---

if [[ -n $filter ]]; then
    rc=0
    grep -Eq -- "$filter" <<<"" 2>/dev/null || rc=$?
    ((rc < 2)) || die "bad filter '$filter' (an extended regex on file::test)"
fi
scenarios=() # "stem<tab>test<tab>exe"
for b in "${binaries[@]}"; do
    IFS=$'\t' read -r stem exe <<<"$b"
    "$exe" --list --format terse >"$logs/tests-$stem.all" || die "$exe --list failed"
    # `--list --ignored` lists only the ignored tests.
    "$exe" --list --format terse --ignored >"$logs/tests-$stem.ignored" || die "$exe --list failed"
    comm -23 <(sed -n 's/: test$//p' "$logs/tests-$stem.all" | sort) \
        <(sed -n 's/: test$//p' "$logs/tests-$stem.ignored" | sort) >"$logs/tests-$stem"
    while IFS= read -r test; do
        if [[ -z $filter ]] || grep -Eq -- "$filter" <<<"$stem::$test"; then
            scenarios+=("$stem"$'\t'"$test"$'\t'"$exe")
        fi
    done <"$logs/tests-$stem"
done
((${#scenarios[@]} > 0)) || die "no scenario matches '$filter'"

# --- run: one process per (scenario, seed slice), at most $jobs at once ---

# CPU seconds (user + system) of this shell's children that have ended, from `times` (which
# must run in this shell: a subshell starts from zero).
children_cpu() {
    times >"$1"
    awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, p, /[ms]/); n += p[1] * 60 + p[2] }
        printf "%.3f\n", n }' "$1" >"$1.s"
}

# Runs one job; leaves <id>.out/.err (the test's output), <id>.rc (exit code), <id>.job (what
# it ran), <id>.cpu.s (CPU seconds of the test process) and <id>.tsv (one line per reported
# seed: status stem test seed real sim).
run_job() {
    local id=$1 stem=$2 test=$3 exe=$4 seeds=$5 count=$6 rc=0
    local limit=()
    ((timeout_s > 0)) && limit=(timeout --kill-after=10 "$timeout_s")
    printf '%s\t%s\t%s\t%s\n' "$stem" "$test" "$seeds" "$count" >"$logs/$id.job"
    # Test binaries run in their package's folder under cargo: do the same.
    (cd "$root/sim-tests" && SIM_SEEDS=$seeds TMPDIR=${tmpdir:-/tmp} "${limit[@]}" "$exe" \
        --exact "$test" --nocapture --test-threads=1) >"$logs/$id.out" 2>"$logs/$id.err" || rc=$?
    children_cpu "$logs/$id.cpu"
    # `   ok: NAME seed N in 0.4120s, simulated 37.120s (90x)`. `simulated ?`: no simulated
    # time was counted; for a run that passed, its sim was not stepped through run_sim,
    # run_until or run_for (unmeasured, -1); a failed run may have failed before its sim ran.
    awk -v stem="$stem" -v test="$test" '
        $1 ~ /^(ok|FAILED):$/ && $3 == "seed" && $5 == "in" && $7 == "simulated" {
            status = ($1 == "ok:") ? "ok" : "FAILED"
            real = $6; sub(/s,$/, "", real)
            sim = $8; sub(/s$/, "", sim)
            if (sim == "?") sim = (status == "ok") ? -1 : 0
            printf "%s\t%s\t%s\t%s\t%s\t%s\n", status, stem, test, $4, real, sim
        }' "$logs/$id.err" >"$logs/$id.tsv"
    echo "$rc" >"$logs/$id.rc"
}

total_jobs=$((${#scenarios[@]} * slices))
echo "sim-sweep: ${#scenarios[@]} scenarios x ${#seeds[@]} seeds ($seeds_spec) in" \
    "$total_jobs processes, $jobs at once; logs in $logs; TMPDIR=${tmpdir:-/tmp}" >&2
started=$EPOCHREALTIME
id=0
for ((s = 0; s < slices; s++)); do
    # Slice s: seeds[from, to).
    from=$((s * ${#seeds[@]} / slices))
    to=$(((s + 1) * ${#seeds[@]} / slices))
    slice=$(seeds_arg "${seeds[@]:from:to-from}")
    for sc in "${scenarios[@]}"; do
        IFS=$'\t' read -r stem test exe <<<"$sc"
        while (($(jobs -rp | wc -l) >= jobs)); do
            wait -n || true
        done
        id=$((id + 1))
        run_job "$id" "$stem" "$test" "$exe" "$slice" $((to - from)) &
        if ((id * 10 / total_jobs != (id - 1) * 10 / total_jobs)); then
            echo "sim-sweep: started $id of $total_jobs processes" >&2
        fi
    done
done
wait || true
wall=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }')

# --- summary ---

cat "$logs"/[0-9]*.tsv >"$logs/results.tsv"

# CPU seconds per scenario (all its processes), and the processes that died (non-zero exit
# without a FAILED line) or left seeds unreported.
broken=()
: >"$logs/cpu.tsv"
for job in "$logs"/*.job; do
    n=${job%.job}
    IFS=$'\t' read -r stem test seeds count <"$job"
    printf '%s::%s\t%s\n' "$stem" "$test" "$(cat "$n.cpu.s" 2>/dev/null || echo 0)" >>"$logs/cpu.tsv"
    rc=$(cat "$n.rc" 2>/dev/null || echo "?")
    reported=0 failed=0
    if [[ -f $n.tsv ]]; then
        reported=$(wc -l <"$n.tsv")
        failed=$(grep -c '^FAILED' "$n.tsv" || true)
    fi
    if ((reported < count)) || { [[ $rc != 0 ]] && ((failed == 0)); }; then
        why="exit $rc"
        if ((timeout_s > 0)) && [[ $rc == 124 || $rc == 137 ]]; then
            why="killed after SIM_TIMEOUT=${timeout_s}s"
        fi
        broken+=("$stem::$test seeds $seeds: $why, $reported of $count seeds reported; log: $n.err")
    fi
done

# Per scenario: runs, failures, simulated s, real s (sum of the runs' wall times), CPU s (its
# processes), simulated/real, simulated/CPU, unmeasured runs. Ratios of -1 are unknown;
# unmeasured runs are left out of simulated/real, and make simulated/CPU too low.
awk -F'\t' '
    NR == FNR { cpu[$1] += $2; next }
    { key = $2 "::" $3; runs[key]++; real[key] += $5
      if ($1 == "FAILED") fail[key]++
      if ($6 >= 0) { sim[key] += $6; mreal[key] += $5 } else unmeasured[key]++ }
    END {
        for (k in runs) {
            r = (mreal[k] > 0) ? sim[k] / mreal[k] : -1
            c = (cpu[k] > 0) ? sim[k] / cpu[k] : -1
            printf "%s\t%d\t%d\t%.1f\t%.2f\t%.2f\t%.0f\t%.0f\t%d\n", k, runs[k], fail[k], sim[k],
                real[k], cpu[k], r, c, unmeasured[k]
        }
    }' "$logs/cpu.tsv" "$logs/results.tsv" | sort -t$'\t' -k8,8g >"$logs/scenarios.tsv"

echo
echo "Per scenario, lowest simulated/CPU ratio first:"
awk -F'\t' '
    function x(v) { return (v < 0) ? "?" : v "x" }
    BEGIN { printf "  %-64s %5s %4s %11s %8s %8s %6s %6s\n", "scenario", "runs", "fail",
            "simulated s", "real s", "CPU s", "s/real", "s/CPU" }
    { note = ($9 > 0) ? sprintf("  (%d runs unmeasured)", $9) : ""
      printf "  %-64s %5d %4d %11.1f %8.2f %8.2f %6s %6s%s\n", $1, $2, $3, $4, $5, $6, x($7),
             x($8), note }' "$logs/scenarios.tsv"

echo
echo "Sweep results"
awk -F'\t' -v scenarios="${#scenarios[@]}" -v seeds="${#seeds[@]}" -v spec="$seeds_spec" \
    -v filter="${filter:-(none)}" -v wall="$wall" -v jobs="$jobs" -v broken="${#broken[@]}" '
    function human(s) {
        if (s >= 3600) return sprintf("%.0f s (%.1f h)", s, s / 3600)
        if (s >= 60) return sprintf("%.0f s (%.1f min)", s, s / 60)
        return sprintf("%.1f s", s)
    }
    NR == FNR { cpu += $2; next }
    { runs++; real += $5; if ($1 == "FAILED") fail++
      if ($6 >= 0) { sim += $6; mreal += $5 } else unmeasured++ }
    END {
        printf "  %-24s %s\n", "scenarios", scenarios
        printf "  %-24s %s (%s)\n", "seeds", seeds, spec
        printf "  %-24s %s\n", "filter", filter
        printf "  %-24s %d of %d\n", "runs reported", runs, scenarios * seeds
        printf "  %-24s %d\n", "failed runs", fail
        printf "  %-24s %d\n", "broken processes", broken
        printf "  %-24s %s\n", "simulated time", human(sim)
        printf "  %-24s %s\n", "real time (sum of runs)", human(real)
        printf "  %-24s %s\n", "CPU time (processes)", human(cpu)
        if (unmeasured > 0) printf "  %-24s %d (no simulated time: see sim-tests/README.md)\n",
            "unmeasured runs", unmeasured
        printf "  %-24s %s\n", "simulated/real", (mreal > 0) ? sprintf("%.0fx", sim / mreal) : "?"
        printf "  %-24s %s%s\n", "simulated/CPU", (cpu > 0) ? sprintf("%.0fx", sim / cpu) : "?",
            (unmeasured > 0) ? " (too low: unmeasured runs)" : ""
        printf "  %-24s %s, %d processes at once\n", "wall clock", human(wall), jobs
    }' "$logs/cpu.tsv" "$logs/results.tsv"

status=0
if grep -q '^FAILED' "$logs/results.tsv"; then
    status=1
    echo
    echo "Failures (replay each with its line):"
    awk -F'\t' '$1 == "FAILED"' "$logs/results.tsv" | sort -t$'\t' -k2,3 -k4,4n |
        awk -F'\t' '{
            printf "  %s::%s seed %s\n    SIM_SEEDS=%s cargo test -p p2p-sim-tests --test %s %s\n",
                $2, $3, $4, $4, $2, $3
        }'
fi
if ((${#broken[@]} > 0)); then
    status=1
    echo
    echo "Processes that died or left seeds unreported:"
    printf '  %s\n' "${broken[@]}"
fi
exit "$status"
