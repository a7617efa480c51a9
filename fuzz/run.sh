#!/usr/bin/env bash
# Builds and runs every fuzz target (or the ones named) for SECONDS each, one after another:
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]      # SECONDS defaults to 60
#
# For occasional use, not part of CI. New corpus entries go to fuzz/corpus/<target>, crashes
# to fuzz/artifacts/<target>, logs to fuzz/artifacts/logs (all ignored by git). Exits non-zero
# when any target crashed. FUZZ_SANITIZER=none builds without AddressSanitizer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=${1:-60}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer, sancov passes); this lets the stable
# toolchain accept them.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/fieldline-fuzz-target}
sanitizer=${FUZZ_SANITIZER:-address}

mkdir -p artifacts/logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    log="artifacts/logs/$target.log"
    echo "== $target: ${seconds}s (log: fuzz/$log)"
    if cargo fuzz run --sanitizer "$sanitizer" "$target" \
        "corpus/$target" "seeds/$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$target")
    fi
    runs=$(grep -Eo '^Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' || echo '?')
    echo "   $status: $runs executions"
    grep -m1 -A3 'panicked at' "$log" || true
    grep -m1 'Test unit written to' "$log" || true
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]}"
    exit 1
fi
