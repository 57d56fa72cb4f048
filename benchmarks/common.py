"""What the benchmarks share: choosing the device and precision, and fair side-by-side timing.

Fair timing of NumPy against PyTorch in one process needs care (measured on a 2-core
machine, see FACTS): after a call, each library's idle worker threads keep spinning for a
while and steal the other library's cores. So every measurement here

* interleaves the contenders (A, B, A, B, ...) so that a noisy neighbour slows both alike,
* pauses ``PAUSE_S`` and then makes untimed warm-up calls, for at least ``WARMUP_S`` on
  the CPU (one call on the GPU), before each timed call,
* synchronises the device before starting and before stopping the clock (GPU), and
* reports the median time, the median of the per-round ratios, and the ratio of the
  fastest rounds (the least disturbed on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

PAUSE_S = 0.3  # lets the other library's spinning threads go to sleep (CPU only)
# After that pause the machine needs time, not one call, to run at full speed again: on the
# 2-core test machine a 3x3 convolution of some 8 ms took up to 2x its steady time for its
# first ~50 ms of calls after the pause (minunet's two threads ran at one thread's speed),
# PyTorch's 1.3-1.5x (benchmarks/warmup_decay.py), so one warm-up call left most of a
# short layer's timing in that state, unlike a training step, where the cores never idle
# (benchmarks/RESULTS.md, 2026-12-02). So the warm-up runs for at least this long.
WARMUP_S = 0.2


@dataclass
class Device:
    """The pair of libraries under test on one device."""

    backend: str  # "numpy" or "cupy"
    xp: ModuleType  # numpy or cupy
    torch: ModuleType
    torch_device: str  # "cpu" or "cuda"
    threads: int  # CPU threads given to each side (0 on the GPU)
    tf32: bool

    def sync(self) -> None:
        """Wait until both libraries' queued GPU work is done (nothing to do on the CPU)."""
        if self.backend == "cupy":
            self.xp.cuda.get_current_stream().synchronize()
            self.torch.cuda.synchronize()

    def describe(self) -> str:
        import numpy as np

        torch = self.torch
        parts = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
        parts.append(f"torch {torch.__version__}")
        if self.backend == "cupy":
            parts.append(f"cupy {self.xp.__version__}")
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
            parts.append("TF32 on both sides" if self.tf32 else "fp32 (TF32 off on both sides)")
        else:
            parts.append(f"CPU {cpu_model()}, {os.cpu_count()} logical cores")
            parts.append(f"{self.threads} threads each side")
            try:  # minunet's worker threads hold BLAS to one thread with it: say if missing
                import threadpoolctl

                parts.append(f"threadpoolctl {threadpoolctl.__version__}")
            except ImportError:
                parts.append("NO threadpoolctl (minunet's BLAS threads unmanaged)")
            parts.append(blas_kernels())
        return ", ".join(parts)


def blas_kernels() -> str:
    """Which kernels NumPy's OpenBLAS runs, and whether the environment chose them.

    OpenBLAS picks its kernels for the CPU when it loads, unless OPENBLAS_CORETYPE names
    them. Some machines pin an older set (on the 2-core AMD EPYC of RESULTS.md the
    environment sets OPENBLAS_CORETYPE=Haswell, AVX2, where OpenBLAS alone picks SkylakeX,
    AVX-512, whose products run about twice as fast), so every header says which ran.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "OpenBLAS kernels unknown (no threadpoolctl)"
    arch = next(
        (
            lib.get("architecture")
            for lib in threadpool_info()
            if lib.get("internal_api") == "openblas"
        ),
        None,
    )
    if arch is None:
        return "BLAS not OpenBLAS"
    pinned = os.environ.get("OPENBLAS_CORETYPE")
    return f"OpenBLAS {arch} kernels" + (f" (pinned: OPENBLAS_CORETYPE={pinned})" if pinned else "")


def load_line() -> str:
    """The machine's load average, printed at start and end: other processes on the same
    cores slow PyTorch's spinning OpenMP threads more than NumPy, so a loaded machine
    flatters minunet's ratio; trust runs whose load stayed well under the core count."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not available on Windows
        return "# load average: unknown"
    return f"# load average (1/5/15 min): {one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def setup(backend: str, tf32: bool) -> Device:
    """Import and configure both libraries for ``backend``; exit with one line if impossible.

    TF32 is set identically on both sides: CuPy reads CUPY_TF32 once, before its first
    matrix product, so it is set here, before CuPy is imported.
    """
    if backend == "cupy":
        os.environ["CUPY_TF32"] = "1" if tf32 else "0"
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise RuntimeError("no GPU visible")
        except Exception as exc:  # ImportError, or a CUDA driver/runtime error
            raise SystemExit(f"--backend cupy needs CuPy and a GPU: {exc}") from None
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--backend cupy compares against torch CUDA, which is unavailable")
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True  # PyTorch picks its fastest conv algorithm
        return Device("cupy", cupy, torch, "cuda", 0, tf32)
    if tf32:
        raise SystemExit("--tf32 only applies to --backend cupy")
    import numpy as np
    import torch

    from minunet.accel.cpu import num_threads

    threads = num_threads()
    torch.set_num_threads(threads)
    return Device("numpy", np, torch, "cpu", threads, False)


@dataclass
class Timing:
    """Seconds per call of each contender, one entry per round."""

    times: dict[str, list[float]]

    def median_ms(self, name: str) -> float:
        return 1e3 * statistics.median(self.times[name])

    def best_ratio(self, name: str, reference: str) -> float:
        """min time(name) / min time(reference): interference from other processes only
        ever adds time, so on a shared machine the fastest rounds are the least disturbed."""
        return min(self.times[name]) / min(self.times[reference])

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of time(name) / time(reference) measured in the same round."""
        pairs = zip(self.times[name], self.times[reference], strict=True)
        return statistics.median(a / b for a, b in pairs)


def add_unet_arguments(parser: argparse.ArgumentParser, base: int = 32) -> None:
    """The flags that size a step-level benchmark's U-Net and batch: --base (channels of
    the first level), --depth, --batch and --size (pixels a side); the defaults are the
    step that benchmarks/RESULTS.md's tables time."""
    parser.add_argument("--base", type=int, default=base)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)


def layer_shapes(base: int, depth: int, size: int) -> list[tuple[int, int, int]]:
    """(C_in, C_out, side) of the U-Net's 3x3 convolutions after the first, one each."""
    shapes = []
    for level in range(depth + 1):
        c, side = base << level, size >> level
        shapes.append((c, c, side))  # conv2 of an encoder block or the bottleneck
        if level < depth:
            shapes.append((2 * c, c, side))  # conv1 of a decoder block (after the concat)
    return shapes


def warm_up(fn: Callable[[], Any], device: Device, seconds: float) -> None:
    """Untimed calls of ``fn``, at least one and for at least ``seconds``: caches, buffers,
    lazy initialisation, spinning threads, and the cores back at full speed (WARMUP_S)."""
    start = time.perf_counter()
    while True:
        fn()
        device.sync()
        if time.perf_counter() - start >= seconds:
            return


def compare(
    contenders: dict[str, Callable[[], Any]],
    device: Device,
    rounds: int = 5,
    calls: int = 1,
    warmup_s: float | None = None,
) -> Timing:
    """Time each contender ``rounds`` times, interleaved; each timing averages ``calls`` calls.

    ``warmup_s``: the warm-up's length before each timing (default WARMUP_S on the CPU, one
    call on the GPU); 0 means exactly one warm-up call, for contenders that must all make
    the same number of calls (benchmarks/pets_epoch.py: the same batches on every side)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu = device.backend == "numpy"
    pause, warmup = (PAUSE_S, WARMUP_S) if cpu else (0.0, 0.0)
    if warmup_s is not None:
        warmup = warmup_s
    for _ in range(rounds):
        for name, fn in contenders.items():
            time.sleep(pause)
            warm_up(fn, device, warmup)
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            device.sync()
            times[name].append((time.perf_counter() - start) / calls)
    return Timing(times)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table, columns right-aligned except the first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        cells = [str(r[0]).ljust(widths[0])]
        cells += [str(c).rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join(cells)

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [fmt(r) for r in rows])
