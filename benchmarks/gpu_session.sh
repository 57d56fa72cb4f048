#!/usr/bin/env bash
# Everything that needs a GPU, as ONE command for a lent GPU machine (device time is scarce):
# the CuPy parity and kernel tests, the layer and step benchmarks against PyTorch (fp32, with
# minunet also timed without its CUDA kernels, and TF32), the
# per-layer profile, an epoch of Pets-sized synthetic data, and the NCCL path at world size 1.
#
#   OUT=/path/for/logs bash benchmarks/gpu_session.sh        (run from the repository root)
#
# Every log lands in $OUT; the last lines printed are a short summary. Nothing here is
# installed: the machine must already have cupy, torch, pytest, hypothesis, mpi4py.
# The limits (with 40 s for the kernel check) add up to 540 s, so the whole script fits one 10-minute device call
# (run it with timeout_s=600); a step that hits its limit is cut and the next one runs.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the log, never abort
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "   exit $? ($name)" | tee -a "$OUT/summary.txt"
}
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
step parity 100 python -m pytest -q -m gpu -p no:cacheprovider tests
# The CUDA kernels have been checked on a CPU emulator and compiled with NVRTC, but if they
# fail on the real GPU, the rest still measures the generic CuPy path (and says so).
if ! timeout 40 python -m pytest -q -x -m gpu -p no:cacheprovider -k "kernel or cuda" tests \
    >"$OUT/kernels.log" 2>&1; then
    echo "   CUDA kernels FAILED on the GPU (kernels.log): MINUNET_CUDA_KERNELS=0 below" \
        | tee -a "$OUT/summary.txt"
    export MINUNET_CUDA_KERNELS=0
fi
step layers 40 python benchmarks/layers.py --backend cupy
step step_fp32 120 python benchmarks/step.py --backend cupy --grid --reference
step step_tf32 60 python benchmarks/step.py --backend cupy --grid --tf32
step profile 40 python benchmarks/profile_gpu.py --base 64 --batch 32 --size 128
# Generating the 3,680 synthetic images comes first (78 s on the busy 2-core dev machine);
# the epoch time is in the log (images/s per epoch).
step epoch 100 python -m minunet.train --backend cupy --data synthetic --train-size 3680 \
    --val-size 64 --image-size 128 --base-channels 64 --batch-size 32 --epochs 2 --no-progress \
    --out "$OUT/epoch-run"
step nccl 40 mpiexec -n 1 python -m minunet.train --backend cupy --distributed --comm nccl \
    --data synthetic --train-size 64 --val-size 16 --image-size 64 --base-channels 16 \
    --epochs 1 --no-progress --out "$OUT/nccl-run"
echo "== tails"
for f in parity layers step_fp32 step_tf32 profile epoch nccl; do
    echo "-- $f"; tail -n 12 "$OUT/$f.log"
done
