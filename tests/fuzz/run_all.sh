#!/usr/bin/env bash
# Run every atheris harness in tests/fuzz for FUZZ_SECONDS (default 60) each.
#
# Used by `make fuzz`.  Each harness starts from its seed corpus (tests/fuzz/corpus/<name>,
# read only) and keeps what it finds in tests/fuzz/corpus-work/<name> (git-ignored), so
# longer runs build on earlier ones.  Crash inputs are written to tests/fuzz/corpus-work/
# as <name>-crash-<sha1>; reproduce one with `python tests/fuzz/<name>.py <file>`.
# Exits non-zero if any harness failed.
set -uo pipefail

cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
WORK=tests/fuzz/corpus-work
failed=()

for harness in tests/fuzz/fuzz_*.py; do
    name="$(basename "$harness" .py)"
    mkdir -p "$WORK/$name"
    seeds=()
    if [ -d "tests/fuzz/corpus/$name" ]; then
        seeds=("tests/fuzz/corpus/$name")
    fi
    echo "== $name: ${SECONDS_EACH}s"
    if ! "$PYTHON" "$harness" \
        -max_total_time="$SECONDS_EACH" \
        -artifact_prefix="$WORK/$name-" \
        -print_final_stats=1 \
        "$WORK/$name" ${seeds[@]+"${seeds[@]}"}; then
        echo "!! $name failed: see $WORK/$name-*"
        failed+=("$name")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing failed: ${failed[*]}"
    exit 1
fi
echo "all harnesses ran clean for ${SECONDS_EACH}s each"
