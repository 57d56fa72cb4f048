"""How long a layer runs slow after the machine idles: the reason for ``common.WARMUP_S``.

    python benchmarks/warmup_decay.py                  # 3x3 conv 32->32 at 64 px, batch 8
    python benchmarks/warmup_decay.py --channels 128 --size 16 --pauses 0 0.05 0.3

For each pause, each side (minunet's ``FastConv2d``, PyTorch's ``Conv2d``, both with 2
threads) sleeps that long and then runs ``--calls`` forward + backward calls back to back,
each timed on its own; ``--rounds`` times, the median per call position printed. Pause 0 is
the steady state (calls back to back, as inside a training step). If the first calls after
a pause are slower than the steady state, a benchmark that times one call after one
warm-up call measures that slow state, not the layer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_line, setup  # noqa: E402
from layers import build  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pauses", type=float, nargs="+", default=[0.0, 0.01, 0.05, 0.3])
    parser.add_argument("--calls", type=int, default=8, help="timed calls after each pause")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    dev = setup("numpy", False)
    # layers.py's 3x3 contenders (the same weights, input and gradient on both sides)
    shape = (args.batch, args.channels, args.size, args.size)
    built = build("conv", shape, dev)
    sides = {name: built[name] for name in ("minunet", "torch")}
    for fn in sides.values():
        for _ in range(5):  # buffers, the pool's threads, lazy initialisation
            fn()
    print(f"# 3x3 conv {args.channels}->{args.channels}, {args.size} px, batch {args.batch},")
    print(f"# forward + backward; ms per call after each pause, median of {args.rounds} rounds")
    print(f"# {dev.describe()}")
    print(load_line())
    for pause in args.pauses:
        for name, fn in sides.items():
            per_call: list[list[float]] = [[] for _ in range(args.calls)]
            for _ in range(args.rounds):
                time.sleep(pause)
                for j in range(args.calls):
                    start = time.perf_counter()
                    fn()
                    per_call[j].append((time.perf_counter() - start) * 1e3)
            times = " ".join(f"{statistics.median(t):6.1f}" for t in per_call)
            print(f"pause {pause:4.2f} s  {name:8s} {times}")
    print(load_line())


if __name__ == "__main__":
    main()
