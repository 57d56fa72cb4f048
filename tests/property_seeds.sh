#!/usr/bin/env bash
# Every property-test file (those that import hypothesis) under N different seeds, with the
# "seeds" profile of tests/conftest.py (50 random examples per property). Prints one line per
# seed and, at the end, the seeds that failed; their logs stay in $LOGS.
#
#   bash tests/property_seeds.sh [N=20]        (from the repository root)
set -uo pipefail
n=${1:-20}
LOGS=${LOGS:-$(mktemp -d)}
files=$(grep -l "from hypothesis\|import hypothesis" tests/test_*.py)
failed=()
for seed in $(seq "$n"); do
    if HYPOTHESIS_PROFILE=seeds python -m pytest -q -p no:cacheprovider --hypothesis-seed="$seed" \
        $files >"$LOGS/seed-$seed.log" 2>&1; then
        echo "seed $seed: $(tail -n 1 "$LOGS/seed-$seed.log")"
    else
        echo "seed $seed: FAILED ($(tail -n 1 "$LOGS/seed-$seed.log"))"
        failed+=("$seed")
    fi
done
echo "failed seeds: ${failed[*]:-none} (logs in $LOGS)"
[ ${#failed[@]} -eq 0 ]
