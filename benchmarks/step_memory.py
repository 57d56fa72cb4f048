"""The memory one training step needs on the CPU, minunet against PyTorch, each side alone.

    python benchmarks/step_memory.py            # base 32, depth 4, BN, batch 8, 128 px

The step is ``benchmarks/step.py``'s (forward, cross-entropy, backward, Adam), the same
network, weights and batch on every side. Each contender runs in a process of its own
(``--one NAME``), which builds everything, reads its resident memory, runs 3 steps and
reads its high-water mark (``ru_maxrss``). The difference is what the steps needed on
top of the model and the data: the activations kept for the backward, the gradients,
the optimiser's state and the largest transient. Neither library gives memory back
between steps here (NumPy's and PyTorch's freed blocks may stay with the process), so
the high-water mark is the figure that decides whether a run fits.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_unet_arguments  # noqa: E402

CONTENDERS = ("minunet", "torch", "torch channels-last")


def resident_mib() -> float:
    """This process's resident memory now, in MiB (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(name: str, base: int, depth: int, batch: int, size: int) -> None:
    """Build the contenders, run ``name``'s step 3 times, print the MiB it added."""
    from common import setup
    from step import build

    dev = setup("numpy", False)
    _, contenders = build(dev, base, depth, batch, size, 3, reference=False)
    step = contenders[name]
    before = resident_mib()
    mark = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if peak <= mark:  # building the contenders went higher than the steps: no figure
        raise SystemExit(f"{name}: the steps did not raise the high-water mark")
    print(f"{peak - before:.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser)
    parser.add_argument("--one", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = (args.base, args.depth, args.batch, args.size)
    if args.one:
        one(args.one, *sizes)
        return
    if not sys.platform.startswith("linux"):
        raise SystemExit("step_memory.py reads /proc/self/statm: Linux only")
    flags = [f"--{k}={v}" for k, v in zip(("base", "depth", "batch", "size"), sizes, strict=True)]
    print(
        f"# training step's memory (peak resident minus resident before it), b{args.base} "
        f"depth {args.depth}, batch {args.batch}, {args.size} px, float32, Adam; each side alone"
    )
    results = {}
    for name in CONTENDERS:
        cmd = [sys.executable, __file__, "--one", name, *flags]
        results[name] = float(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        )
    for name, mib in results.items():
        print(f"{name:20s} {mib:8.1f} MiB   ratio to torch {mib / results['torch']:.2f}")


if __name__ == "__main__":
    main()
