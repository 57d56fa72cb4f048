"""Which threads a minunet training step keeps busy on the CPU, and for how long.

    python benchmarks/step_threads.py                   # base 32, depth 4, BN, 8x128x128
    python benchmarks/step_threads.py --winograd        # with the Winograd path on
    python benchmarks/step_threads.py --predict --batch 1   # an inference forward instead

Runs ``benchmarks/step.py``'s step (minunet only) and reads each thread's CPU time from
/proc (Linux) before and after, per step. minunet's own threads are the main thread and
the pool's workers (``minunet.accel.cpu``); any other thread is a library's: OpenBLAS's
workers, which spin on a core for a while after every product that OpenBLAS split over
them. On a 2-core machine a spinning thread takes a core from the pool, so its CPU time
here should be about zero; where it is not, some product ran outside
``cpu.single_threaded_blas``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_unet_arguments, load_line, setup, table  # noqa: E402


def thread_cpu_seconds() -> dict[int, float]:
    """CPU time (user + system) of each thread of this process, by native thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        times[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--winograd", action="store_true", help="switch the Winograd path on")
    parser.add_argument(
        "--predict", action="store_true", help="time an inference forward (eval mode), not a step"
    )
    args = parser.parse_args(argv)
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("step_threads.py reads per-thread CPU times from /proc (Linux only)")
    dev = setup("numpy", False)
    from step import build

    from minunet.accel import winograd

    winograd.ENABLED = args.winograd
    model, contenders = build(dev, args.base, args.depth, args.batch, args.size)
    step = contenders["minunet"]
    if args.predict:  # what prediction runs: the forward alone, BatchNorm's running stats
        model.eval()
        x = np.random.default_rng(0).standard_normal(
            (args.batch, 3, args.size, args.size), dtype=np.float32
        )

        def step() -> None:
            model.forward(x)

    for _ in range(2):  # warm up: buffers, the pool's threads
        step()
    print(
        f"# minunet {'inference forward' if args.predict else 'training step'}: base "
        f"{args.base}, depth {args.depth}, BN, batch {args.batch}, {args.size} px, float32, Adam; Winograd {'on' if args.winograd else 'off'}"
    )
    print(f"# {dev.describe()}")
    print(load_line())
    before = thread_cpu_seconds()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - start) / args.steps
    after = thread_cpu_seconds()
    names = {t.native_id: t.name for t in threading.enumerate()}
    rows = []
    for tid, seconds in sorted(after.items()):
        used = (seconds - before.get(tid, 0.0)) / args.steps
        name = names.get(tid, "not minunet's (a library's thread)")
        if name == "MainThread" or name.startswith("minunet") or used > 0:
            rows.append([name, str(tid), f"{used * 1e3:.0f}", f"{used / wall * 100:.0f}"])
    print(f"# mean wall time per call: {wall * 1e3:.0f} ms over {args.steps} calls")
    print(table(["thread", "id", "CPU ms per call", "% of the call's wall time"], rows))
    print(load_line())


if __name__ == "__main__":
    main()
