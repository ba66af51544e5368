#!/usr/bin/env bash
# The test suite: makes sure Redis and PostgreSQL answer (starting private ones under .dev/
# when needed, see scripts/services.sh), then runs every test target. Extra arguments go to
# cargo test, e.g. scripts/test.sh -- --nocapture
#
#   scripts/test.sh --stress N [FILTER...]
#
# runs the integration tests (tests/it) N times in a row with 16 test threads, more than
# the machine has cores, to bring out tests that share something or depend on timing; the
# optional FILTERs select tests as cargo test's do. It stops at the first run that fails
# and prints which run, which tests and their output; each run's log is kept in
# .dev/stress/. A run that takes longer than DCW_STRESS_RUN_SECS (default 1800) is stopped
# and counts as failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly STRESS_THREADS=16

if [[ ${1:-} == --stress ]]; then
    runs=${2:-}
    if [[ ! $runs =~ ^[1-9][0-9]*$ ]]; then
        printf 'usage: %s --stress N [FILTER...]   (N: runs, at least 1)\n' "$0" >&2
        exit 2
    fi
    shift 2
    limit=${DCW_STRESS_RUN_SECS:-1800}
fi

# shellcheck source=scripts/services.sh
source scripts/services.sh

if [[ -z ${runs:-} ]]; then
    exec cargo test --workspace --all-targets "$@"
fi

# Build once, so that a compile error is not taken for a failed run.
cargo test --test it --no-run
logs=.dev/stress
mkdir -p "$logs"
rm -f "$logs"/run-*.log
for ((run = 1; run <= runs; run++)); do
    log=$logs/run-$run.log
    started=$SECONDS
    status=0
    timeout --kill-after=30 "$limit" \
        cargo test --test it -- --test-threads="$STRESS_THREADS" "$@" >"$log" 2>&1 || status=$?
    summary=$(grep -E '^test result:' "$log" | tail -n 1 || true)
    if ((status == 0)); then
        printf 'stress run %d/%d: ok in %d s (%s)\n' "$run" "$runs" $((SECONDS - started)) \
            "${summary#test result: }"
        continue
    fi
    printf '\nstress run %d/%d FAILED after %d s (exit status %d; %s); log: %s\n' "$run" \
        "$runs" $((SECONDS - started)) "$status" "${summary:-no test result line}" "$log" >&2
    if ((status == 124 || status == 137)); then
        printf 'the run took longer than %d s; tests still running then:\n' "$limit" >&2
        grep -E 'has been running for over' "$log" >&2 || true
    fi
    failed=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/  \1/p' "$log")
    if [[ -n $failed ]]; then
        printf 'failed tests:\n' >&2
        printf '%s\n' "$failed" >&2
        # libtest's report: each failed test's output, then the list.
        sed -n '/^failures:$/,/^test result:/p' "$log" | head -n 300 >&2 || true
    else
        tail -n 40 "$log" >&2
    fi
    exit 1
done
printf 'stress: %d runs of the integration tests with %d test threads, no failure\n' \
    "$runs" "$STRESS_THREADS"
