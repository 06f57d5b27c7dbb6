#!/usr/bin/env bash
# Builds and runs every fuzz target of fuzz/ (cargo fuzz, libFuzzer), one
# after the other, each for SECONDS_PER_TARGET seconds (default 600) or
# until it finds a crash, then prints per target the executions, their rate
# and the crashes found (reproducers land in fuzz/artifacts/<target>/).
# New inputs that add coverage are kept in fuzz/corpus/<target>/; minimize
# before committing them (see fuzz/README.md).
#
#   scripts/fuzz.sh                      # every target, 600 s each
#   scripts/fuzz.sh 60                   # every target, 60 s each
#   scripts/fuzz.sh 300 sse openai_stream
#
# Environment:
#   FUZZ_RUNS=N          also stop a target after N executions
#   FUZZ_SANITIZER=name  address (default) or none (faster, finds less)
#   FUZZ_NICE=N          niceness of builds and runs (default 19: a shared
#                        machine keeps its cores for other work)
#   FUZZ_TIMEOUT=S       one input running this long (wall clock) is a hang
#                        (default 120). A niced (or paused) run on a busy
#                        machine can stall that long without a bug, so a
#                        timeout counts only if the input hangs again when
#                        run alone, twice; otherwise it is moved to
#                        fuzz/target/fuzz-logs/unconfirmed/. libFuzzer's
#                        slow-unit-* files (not failures) go there too.
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take the
# nightly flags cargo fuzz passes (-Z sanitizer, sanitizer coverage).
# Everything builds under fuzz/target, apart from the gateway's own target/.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz" || exit 1

SECONDS_PER_TARGET="${1:-600}"
shift $(($# > 0 ? 1 : 0))
RUNS="${FUZZ_RUNS:--1}"
SANITIZER="${FUZZ_SANITIZER:-address}"
NICE="${FUZZ_NICE:-19}"
TIMEOUT="${FUZZ_TIMEOUT:-120}"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 1
fi

# -O: optimized; -a: with debug assertions (overflow checks) all the same.
BUILD=(-O -a --sanitizer "$SANITIZER")

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

echo "==> building ${#TARGETS[@]} fuzz targets (sanitizer: $SANITIZER)"
nice -n "$NICE" cargo fuzz build "${BUILD[@]}" || exit 1

LOGS=target/fuzz-logs
mkdir -p "$LOGS"
ROWS=()
TOTAL_CRASHES=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | sort)
    log="$LOGS/$t.log"
    echo "==> $t: up to ${SECONDS_PER_TARGET}s$([ "$RUNS" != -1 ] && echo " or $RUNS runs")"
    start=$(date +%s)
    # The time limit is wall-clock time: on a busy (or paused) machine the
    # CPU time, printed too, tells how much fuzzing actually happened.
    TIMEFORMAT='%U %S'
    { time nice -n "$NICE" cargo fuzz run "${BUILD[@]}" "$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -runs="$RUNS" -timeout="$TIMEOUT" \
        -report_slow_units="$TIMEOUT" -rss_limit_mb=2048 -print_final_stats=1 \
        </dev/null >"$log" 2>&1; } 2>"$LOGS/$t.time"
    status=$?
    took=$(($(date +%s) - start))
    cpu=$(awk '{printf "%d", $1 + $2}' "$LOGS/$t.time")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(ls "corpus/$t" | wc -l)
    new=$(comm -13 <(echo "$before") <(ls "artifacts/$t" | sort) | grep -v '^$')
    for f in $(printf '%s\n' "$new" | grep -E '^(timeout|slow-unit)-'); do
        hung=0
        if [[ $f == timeout-* ]]; then
            hung=1
            for _ in 1 2; do
                if nice -n "$NICE" cargo fuzz run "${BUILD[@]}" "$t" "artifacts/$t/$f" -- \
                    -timeout="$TIMEOUT" </dev/null >"$LOGS/$t.$f.log" 2>&1; then
                    hung=0
                    break
                fi
            done
        fi
        if [ "$hung" -eq 0 ]; then
            mkdir -p "$LOGS/unconfirmed"
            mv "artifacts/$t/$f" "$LOGS/unconfirmed/$t.$f"
            echo "    $f is no failure (slow once, not again): moved to fuzz/$LOGS/unconfirmed/"
            new=$(printf '%s\n' "$new" | grep -vx "$f")
        fi
    done
    crashes=$(printf '%s' "$new" | grep -c . || true)
    TOTAL_CRASHES=$((TOTAL_CRASHES + crashes))
    ROWS+=("$(printf '%-18s %12s %9s %6ss %6ss %8s %7s' "$t" "${execs:-?}" "${rate:-?}" "$took" "${cpu:-?}" "$crashes" "$corpus")")
    if [ "$crashes" -gt 0 ]; then
        echo "    crash: $(printf '%s' "$new" | sed "s|^|artifacts/$t/|" | tr '\n' ' ')"
        grep -m1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" | sed 's/^/    /'
        echo "    reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${BUILD[*]} $t artifacts/$t/<file>"
    elif [ "$status" -ne 0 ]; then
        echo "    exited with $status (see fuzz/$log)"
    fi
done

echo
printf '%-18s %12s %9s %7s %7s %8s %7s\n' target executions exec/s time cpu crashes corpus
printf '%s\n' "${ROWS[@]}"
[ "$TOTAL_CRASHES" -eq 0 ]
