#!/usr/bin/env bash
# Which native functions a minunet training step spends its CPU time in, from Linux perf:
# OpenBLAS's kernel and packing, NumPy's copy loops, the kernel zeroing fresh pages, ...
#
#   bash benchmarks/perf_symbols.sh [BASE] [STEPS] [TOP]     # defaults: 16 20 15
#
# Runs STEPS training steps (base BASE, depth 4, BN, batch 8, 128 px, float32, Adam; the
# step of benchmarks/step.py, after one warm-up step) under `perf record` and prints the
# TOP symbols by share of all CPU samples, every thread together. Needs `perf` (linux-perf)
# and permission to use it. Shares, not milliseconds: a sampled profile says where the
# time goes, the side-by-side benchmarks say how much.
set -euo pipefail
base=${1:-16}
steps=${2:-20}
top=${3:-15}
command -v perf > /dev/null || { echo "perf_symbols.sh: perf is not installed (linux-perf)" >&2; exit 1; }
root=$(cd "$(dirname "$0")/.." && pwd)  # the checkout this script is in: its minunet runs
data=$(mktemp)
trap 'rm -f "$data"' EXIT
perf record -q -F 999 -o "$data" -- python - "$root" "$base" "$steps" <<'PY' > /dev/null
import sys

sys.path.insert(0, sys.argv[1])
import numpy as np
from minunet.accel import accelerate
from minunet.model import UNet
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import Adam

base, steps = int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 3, 128, 128), dtype=np.float32)
y = rng.integers(0, 3, (8, 128, 128))
model = UNet(3, 3, base, 4, batchnorm=True)
opt = accelerate(Adam(model.parameters(), lr=1e-3))
loss = accelerate(SoftmaxCrossEntropy(check_targets=False))
for _ in range(steps + 1):
    opt.zero_grad()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward(), input_grad=False)
    opt.step()
PY
echo "# perf: base $base, $steps steps; share of all CPU samples, by symbol"
perf report -i "$data" --no-children --sort symbol -g none 2> /dev/null \
    | grep -v '^#' | grep '%' | sed -n "1,${top}p"
