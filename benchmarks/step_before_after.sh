#!/usr/bin/env bash
# The training step of an earlier commit against this checkout's, side by side: each run of
# benchmarks/step.py times minunet against PyTorch in one process (so each ratio is a
# same-run ratio), and the two trees take turns, so a noisy neighbour slows both alike.
#
#   bash benchmarks/step_before_after.sh BASE_COMMIT [TURNS] [step.py flags...]
#
# Prints each turn's "minunet / torch" line for BASE and for HEAD; compare the ratios, not
# the milliseconds. The base commit is exported to a temporary folder (git archive) and
# runs from there with this interpreter.
set -euo pipefail
base=${1:?usage: bash benchmarks/step_before_after.sh BASE_COMMIT [TURNS] [step.py flags]}
turns=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
root=$(git rev-parse --show-toplevel)
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
git -C "$root" archive "$base" | tar -x -C "$old"
echo "# base $(git -C "$root" rev-parse --short "$base"), head $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo ' (+ uncommitted changes)')"
for turn in $(seq "$turns"); do
    for side in base head; do
        dir=$([ "$side" = base ] && echo "$old" || echo "$root")
        echo "## turn $turn, $side"
        (cd "$dir" && python benchmarks/step.py "$@")
    done
done
