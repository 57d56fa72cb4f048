"""Data-parallel scaling on paper, plus the measured 1- vs 2-process CPU step here.

The model. With N ranks, each step computes on B/N images (the global batch B is split)
and then averages the gradient with one ring allreduce, which sends and receives
2 (N - 1) / N of the gradient's bytes on every rank's link:

    t_step(N) = t_compute(B) / N + t_allreduce(N),   t_allreduce = 2 (N-1)/N * bytes / link
    efficiency(N) = t_compute(B) / (N * t_step(N))

``t_compute(B)`` is the measured single-GPU time of the full global batch (``--step-ms``;
measure it with ``benchmarks/step.py`` on the GPU). The allreduce here runs *after* the
backward, not overlapped with it; overlap (sending a layer's gradient while earlier layers
are still being differentiated) would hide up to the backward's ~2/3 of the step, and
matters once t_allreduce is a sizeable fraction of t_compute / N (the table flags it).
Latency per message (~10 us per ring hop) is included: 2 (N-1) hops.

    python benchmarks/scaling.py --step-ms 120 --base 64
    python benchmarks/scaling.py --measure-cpu        # 1 vs 2 MPI ranks on this machine
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

LINKS = {  # bytes per second per direction
    "NVLink (450 GB/s)": 450e9,
    "400 Gb/s network": 50e9,
}
HOP_LATENCY_S = 10e-6


def parameter_bytes(base: int, depth: int, dtype_bytes: int = 4) -> int:
    from minunet.model import UNet

    return UNet(3, 3, base_channels=base, depth=depth).num_parameters() * dtype_bytes


def table(step_ms: float, grad_bytes: int, ranks: list[int]) -> str:
    lines = [
        f"gradient: {grad_bytes / 2**20:.1f} MiB; single-GPU step of the global batch: "
        f"{step_ms:.1f} ms (given)"
    ]
    for name, bandwidth in LINKS.items():
        lines.append(f"\n{name}")
        lines.append(
            f"{'ranks':>6}{'compute ms':>12}{'allreduce ms':>14}{'step ms':>10}"
            f"{'speed-up':>10}{'efficiency':>12}  note"
        )
        for n in ranks:
            compute = step_ms / n
            comm = (
                0.0
                if n == 1
                else (2 * (n - 1) / n * grad_bytes / bandwidth + 2 * (n - 1) * HOP_LATENCY_S) * 1e3
            )
            step = compute + comm
            note = "overlap with backward would pay" if comm > 0.2 * compute else ""
            lines.append(
                f"{n:>6}{compute:>12.2f}{comm:>14.2f}{step:>10.2f}"
                f"{step_ms / step:>10.1f}{step_ms / (n * step):>12.0%}  {note}"
            )
    return "\n".join(lines)


def measure_cpu(batch: int, base: int, size: int, steps: int) -> str:
    """Time training steps with 1 and with 2 MPI ranks (same global batch) on this machine."""
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
        "mpiexec"
    )
    if mpiexec is None:
        return "mpiexec not found: pip install -e '.[mpi]'"
    out = []
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "MINUNET_THREADS": "1"}
    for n in (1, 2):
        args = [
            sys.executable,
            "-m",
            "minunet.train",
            "--data",
            "synthetic",
            "--image-size",
            str(size),
            "--base-channels",
            str(base),
            "--depth",
            "3",
            "--batch-size",
            str(batch),
            "--train-size",
            str(batch * (steps + 1)),
            "--val-size",
            "8",
            "--epochs",
            "1",
            "--no-augment",
            "--no-progress",
            "--out",
            f"/tmp/minunet-scaling-{n}",
        ]
        t0 = time.perf_counter()
        cmd = ([mpiexec, "-n", str(n)] + args) if n > 1 else args
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            return f"{n} ranks failed: {r.stderr.strip().splitlines()[-1]}"
        seconds = time.perf_counter() - t0
        rates = re.findall(r"([0-9.]+) img/s", r.stdout)
        out.append(
            f"{n} rank(s), one core each: {rates[-1]} images/s in training "
            f"(whole command {seconds:.1f} s)"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step-ms", type=float, help="measured single-GPU step, global batch")
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--measure-cpu", action="store_true")
    p.add_argument("--cpu-batch", type=int, default=8)
    args = p.parse_args()
    if args.step_ms:
        print(table(args.step_ms, parameter_bytes(args.base, args.depth), args.ranks))
    if args.measure_cpu:
        print(measure_cpu(args.cpu_batch, base=16, size=64, steps=40))
    if not args.step_ms and not args.measure_cpu:
        p.error("give --step-ms (the measured single-GPU step) and/or --measure-cpu")


if __name__ == "__main__":
    main()
