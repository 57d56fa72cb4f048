"""How much of a training step the operating system's kernel takes, each contender alone.

    python benchmarks/step_kernel_time.py                  # base 32, depth 4, BN, 8x128x128
    python benchmarks/step_kernel_time.py --base 16 --steps 5
    MALLOC_MMAP_THRESHOLD_=2000000000 MALLOC_TRIM_THRESHOLD_=2000000000 \\
        python benchmarks/step_kernel_time.py               # glibc reusing freed memory

Runs ``benchmarks/step.py``'s contenders (minunet, PyTorch NCHW and channels-last) one
after the other, each for a few warm-up steps and then ``--steps`` timed ones, and reads
the process's resource usage (``getrusage``: every thread's) before and after. Per step it
prints the wall time, the CPU time in user code and in the kernel, and the page faults.

Why: a fresh array of more than glibc's mmap threshold is new memory from the kernel, and
its first write faults every page in and has the kernel zero it. That is system time, and
it is part of every layer's time that allocates such an output. Which side pays it, and
how much, depends on each allocator's reuse of freed memory, not on its arithmetic, so a
layer's or a step's ratio can move with it (benchmarks/RESULTS.md, 2026-12-02). The two
glibc variables above make glibc keep and reuse freed memory instead (for both sides:
they share the process); the header says whether they were set. Wall times here are not
interleaved, so compare them only roughly; the system times and faults are the point.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_unet_arguments, load_line, setup, table  # noqa: E402

MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def per_step(step, steps: int, warmup: int) -> dict[str, float]:
    """Wall ms, user ms, system ms and minor page faults per step of ``step()``."""
    for _ in range(warmup):
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall": wall / steps * 1e3,
        "user": (after.ru_utime - before.ru_utime) / steps * 1e3,
        "system": (after.ru_stime - before.ru_stime) / steps * 1e3,
        "faults": (after.ru_minflt - before.ru_minflt) / steps,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    dev = setup("numpy", False)
    from step import build

    _, contenders = build(dev, args.base, args.depth, args.batch, args.size)
    glibc = ", ".join(f"{v}={os.environ[v]}" for v in MALLOC_VARIABLES if v in os.environ)
    print(
        f"# training step, base {args.base}, depth {args.depth}, batch {args.batch},"
        f" {args.size} px, float32, Adam; each contender alone, {args.warmup} warm-up and"
        f" {args.steps} timed steps; glibc: {glibc or 'defaults'}"
    )
    print(load_line())
    rows = []
    for name, step in contenders.items():
        got = per_step(step, args.steps, args.warmup)
        rows.append(
            [
                name,
                f"{got['wall']:.1f}",
                f"{got['user']:.1f}",
                f"{got['system']:.1f}",
                f"{got['system'] / got['wall']:.2f}",
                f"{got['faults']:.0f}",
            ]
        )
    headers = ["contender", "wall ms", "user ms", "system ms", "system / wall", "page faults"]
    print(table(headers, rows))
    print(load_line())


if __name__ == "__main__":
    main()
