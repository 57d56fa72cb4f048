"""Which threads a minunet training step keeps busy on the CPU, and for how long.

    python benchmarks/step_threads.py                   # base 32, depth 4, BN, 8x128x128
    python benchmarks/step_threads.py --winograd        # with the Winograd path on
    python benchmarks/step_threads.py --predict --batch 1   # an inference forward instead
    python benchmarks/step_threads.py --winograd --base 16 --torch   # PyTorch's step too

Runs ``benchmarks/step.py``'s step (minunet only) and reads each thread's CPU time from
/proc (Linux) before and after, per step. minunet's own threads are the main thread and
the pool's workers (``minunet.accel.cpu``); any other thread is a library's: OpenBLAS's
workers, which spin on a core for a while after every product that OpenBLAS split over
them. On a 2-core machine a spinning thread takes a core from the pool, so its CPU time
here should be about zero; where it is not, some product ran outside
``cpu.single_threaded_blas``.

Each row also counts the thread's voluntary context switches per step (/proc's
``voluntary_ctxt_switches``): each is a wait in which the thread slept, for a lock (the
GIL, between two NumPy calls), for work (the pool's queue) or for another thread's result,
and on a virtual machine each wake-up costs tens of microseconds. ``--torch`` then runs
PyTorch's step (NCHW, from the same weights) the same way: its threads (OpenMP's) spin
rather than sleep. "cores busy" is the CPU time of all the rows over the wall time: how
much of the machine each library kept at work.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PAUSE_S, add_unet_arguments, load_line, setup, table  # noqa: E402


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


def thread_switches() -> dict[int, int]:
    """Voluntary context switches of each thread of this process so far, by native id."""
    counts = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            status = Path(f"/proc/self/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                counts[int(tid)] = int(line.split()[1])
    return counts


def measure(
    step: Callable[[], None],
    steps: int,
    keep: Callable[[str, float], bool],
    unnamed: str = "not minunet's (a library's thread)",
) -> tuple[float, list[list[str]]]:
    """Run ``step`` ``steps`` times: (wall seconds per step, one table row per thread that
    ``keep(name, CPU seconds per step)`` accepts, and a last row with their sum). Threads
    that Python did not start (a native library's) are named ``unnamed``."""
    before, switched = thread_cpu_seconds(), thread_switches()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    wall = (time.perf_counter() - start) / steps
    after, switches = thread_cpu_seconds(), thread_switches()
    names = {t.native_id: t.name for t in threading.enumerate()}
    rows, busy, slept = [], 0.0, 0.0
    for tid, seconds in sorted(after.items()):
        used = (seconds - before.get(tid, 0.0)) / steps
        waits = (switches.get(tid, 0) - switched.get(tid, 0)) / steps
        name = names.get(tid, unnamed)
        if keep(name, used):
            share = f"{used / wall * 100:.0f}"
            rows.append([name, str(tid), f"{used * 1e3:.0f}", share, f"{waits:.0f}"])
            busy, slept = busy + used, slept + waits
    rows.append(["cores busy", "", f"{busy * 1e3:.0f}", f"{busy / wall * 100:.0f}", f"{slept:.0f}"])
    return wall, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--winograd", action="store_true", help="switch the Winograd path on")
    parser.add_argument(
        "--predict", action="store_true", help="time an inference forward (eval mode), not a step"
    )
    parser.add_argument("--torch", action="store_true", help="PyTorch's training step too")
    args = parser.parse_args(argv)
    if args.torch and args.predict:
        parser.error("--torch compares training steps: drop --predict")
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

    def ours(name: str, used: float) -> bool:
        return name == "MainThread" or name.startswith("minunet") or used > 0

    wall, rows = measure(step, args.steps, ours)
    header = ["thread", "id", "CPU ms per call", "% of the call's wall time", "sleeps per call"]
    print(f"# mean wall time per call: {wall * 1e3:.0f} ms over {args.steps} calls")
    print(table(header, rows))
    if args.torch:
        theirs = contenders["torch"]
        time.sleep(PAUSE_S)  # minunet's threads asleep before PyTorch's warm up
        for _ in range(2):
            theirs()
        wall, rows = measure(theirs, args.steps, lambda name, used: used > 0, "PyTorch's (OpenMP)")
        print(f"# PyTorch's step (NCHW, {dev.threads} threads): {wall * 1e3:.0f} ms per call")
        print(table(header, rows))
    print(load_line())


if __name__ == "__main__":
    main()
