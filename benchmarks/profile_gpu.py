"""Where a CuPy training step spends its time: every layer's forward and backward, timed
with CUDA events, next to the floor that the GPU's peak arithmetic and bandwidth allow.

    python benchmarks/profile_gpu.py                                # base 32, batch 8, 128 px
    python benchmarks/profile_gpu.py --base 64 --batch 32 --size 256 --tf32

For each layer the step is bracketed by CUDA events recorded on the stream just before
and just after the layer's call, so a row's time is what that layer occupied on the GPU
stream, including any gap when the GPU waited for Python to launch the next kernel (a
layer of many tiny kernels shows up as launch-bound: time far above both floors).

The floor of a row is max(FLOPs / peak FLOP/s, bytes / peak bandwidth), with

* FLOPs from ``minunet.model.summary.trace`` (forward; a convolution's backward is 2x its
  forward: input and weight gradients; other layers' backward ~ their forward),
* bytes the compulsory traffic: forward reads its inputs and parameters and writes its
  output; backward reads the output gradient and the saved input and writes the input
  gradient, and reads and writes the parameter gradients,
* the peaks measured here at start-up: a large SGEMM (TF32 if --tf32) and a device-to-
  device copy (read + write), since datasheet numbers are rarely reached.

It needs CuPy and a GPU, and says so in one line where they are missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_unet_arguments  # noqa: E402


def load_cupy(tf32: bool) -> Any:
    """Import CuPy with TF32 set as asked (read once, before the first product), or exit."""
    os.environ["CUPY_TF32"] = "1" if tf32 else "0"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no GPU visible")
        cupy.zeros(1).sum()  # fails here, not later, when the driver cannot run kernels
    except Exception as exc:  # ImportError, or a CUDA driver or runtime error
        raise SystemExit(f"profile_gpu.py needs CuPy and a CUDA GPU: {exc}") from None
    return cupy


def measure_peaks(cp: Any) -> tuple[float, float]:
    """(FLOP/s of a 8192^3 float32 product, bytes/s of a 1 GiB device copy), medians of 5."""
    n = 8192
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    c = cp.empty_like(a)
    src = cp.empty(2**28, dtype=cp.float32)  # 1 GiB
    dst = cp.empty_like(src)

    def timed(fn: Any) -> float:
        fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(5):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
        return statistics.median(times)

    flops = 2 * n**3 / timed(lambda: cp.matmul(a, b, out=c))
    bandwidth = 2 * src.nbytes / timed(lambda: dst.__setitem__(Ellipsis, src))
    return flops, bandwidth  # the caller frees the pool's blocks once these are gone


def nbytes(obj: Any) -> int:
    """Bytes of an array, or of every array in a tuple (Concat's two inputs and gradients)."""
    if isinstance(obj, tuple | list):
        return sum(nbytes(o) for o in obj)
    return int(getattr(obj, "nbytes", 0))


class Recorder:
    """Wraps every leaf layer's forward and backward with CUDA events and byte counts."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.events: dict[tuple[str, str], list[tuple[Any, Any]]] = defaultdict(list)
        self.bytes: dict[tuple[str, str], int] = {}
        self.active = False

    def wrap(self, name: str, layer: Any) -> None:
        params_bytes = sum(p.data.nbytes for p in layer.params.values())
        forward, backward = layer.forward, layer.backward
        saved: dict[str, int] = {}

        # The U-Net passes keywords to some layers (an up-convolution's out=, a
        # convolution's input_grad=): the wrappers hand them on.
        def timed_forward(*args: Any, **options: Any) -> Any:
            start, out, end = self._run(forward, args, options)
            if self.active:
                self.events[(name, "fwd")].append((start, end))
                saved["in"] = nbytes(args)
                self.bytes[(name, "fwd")] = saved["in"] + nbytes(out) + params_bytes
            return out

        def timed_backward(dout: Any, **options: Any) -> Any:
            start, dx, end = self._run(backward, (dout,), options)
            if self.active:
                self.events[(name, "bwd")].append((start, end))
                traffic = nbytes(dout) + saved.get("in", 0) + nbytes(dx) + 2 * params_bytes
                self.bytes[(name, "bwd")] = traffic
            return dx

        layer.forward, layer.backward = timed_forward, timed_backward

    def _run(self, fn: Any, args: tuple, options: dict[str, Any]) -> tuple[Any, Any, Any]:
        if not self.active:
            return None, fn(*args, **options), None
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        result = fn(*args, **options)
        end.record()
        return start, result, end

    def median_ms(self, key: tuple[str, str]) -> float:
        return statistics.median(
            self.cp.cuda.get_elapsed_time(s, e) for s, e in self.events.get(key, [])
        )


def leaf_layers(layer: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, layer) of every layer without children, in assignment order."""
    children = layer.children()
    if not children:
        return [(prefix.rstrip("."), layer)]
    found = []
    for cname, child in children.items():
        found += leaf_layers(child, f"{prefix}{cname}.")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (median)")
    parser.add_argument("--tf32", action="store_true", help="CUPY_TF32=1 for the products")
    args = parser.parse_args(argv)
    cp = load_cupy(args.tf32)

    from minunet.accel import accelerate, reference_class
    from minunet.model import UNet
    from minunet.model.summary import trace
    from minunet.nn.losses import SoftmaxCrossEntropy
    from minunet.nn.optim import Adam

    peak_flops, peak_bw = measure_peaks(cp)
    cp.get_default_memory_pool().free_all_blocks()
    model = UNet(3, 3, args.base, args.depth, batchnorm=True).to(cp)
    opt = accelerate(Adam(model.parameters(), lr=1e-3))
    loss = accelerate(SoftmaxCrossEntropy(check_targets=False))
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32))
    y = cp.asarray(rng.integers(0, 3, (args.batch, args.size, args.size)))

    rec = Recorder(cp)
    leaves = leaf_layers(model)
    for name, layer in leaves:
        rec.wrap(name, layer)
    flops = {row[0]: float(row[4]) for row in trace(model, args.size, args.size, args.batch)}
    kinds = {name: reference_class(layer).__name__ for name, layer in leaves}

    def step() -> None:
        opt.zero_grad()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()

    for _ in range(3):  # warm-up: kernel compilation, cuBLAS handles, memory pool
        step()
    cp.cuda.Device().synchronize()
    rec.active = True
    step_ms = []
    for _ in range(args.steps):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        step()
        end.record()
        end.synchronize()
        step_ms.append(cp.cuda.get_elapsed_time(start, end))
    cp.cuda.Device().synchronize()

    def floor_ms(f: float, b: int) -> float:
        return 1e3 * max(f / peak_flops, b / peak_bw)

    header = (
        f"{'layer':<22}{'kind':<16}{'dir':<5}{'ms':>8}{'floor ms':>10}{'x floor':>9}"
        f"{'GFLOP':>9}{'MB':>9}{'% step':>8}"
    )
    total_step = statistics.median(step_ms)
    print(f"# minunet CuPy training step: base {args.base}, depth {args.depth}, BN, batch ")
    print(f"#   {args.batch}, {args.size}x{args.size}, {'TF32' if args.tf32 else 'fp32'}")
    print(f"# GPU {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {cp.__version__}")
    print(
        f"# measured peaks: SGEMM {peak_flops / 1e12:.1f} TFLOP/s, "
        f"copy {peak_bw / 1e12:.2f} TB/s (read + write)"
    )
    print(header)
    print("-" * len(header))
    layer_total, floor_total = 0.0, 0.0
    order = [(n, "fwd") for n, _ in leaves] + [(n, "bwd") for n, _ in reversed(leaves)]
    for name, direction in order:
        if (name, direction) not in rec.events:
            continue  # e.g. dropout with p = 0 is still timed; nothing is skipped silently
        ms = rec.median_ms((name, direction))
        f = flops.get(name, 0.0)
        if direction == "bwd":
            f *= 2 if kinds[name] in ("Conv2d", "ConvTranspose2d") else 1
        b = rec.bytes[(name, direction)]
        fl = floor_ms(f, b)
        layer_total += ms
        floor_total += fl
        print(
            f"{name:<22}{kinds[name]:<16}{direction:<5}{ms:>8.3f}{fl:>10.3f}"
            f"{ms / fl if fl else float('nan'):>9.1f}{f / 1e9:>9.2f}{b / 1e6:>9.1f}"
            f"{100 * ms / total_step:>8.1f}"
        )
    print("-" * len(header))
    print(
        f"layers {layer_total:.2f} ms (floor {floor_total:.2f} ms), whole step "
        f"{total_step:.2f} ms: loss, Adam and launch gaps {total_step - layer_total:.2f} ms"
    )
    train_flops = 3 * sum(flops.values())
    print(
        f"step: {args.batch / total_step * 1e3:.1f} images/s, "
        f"{train_flops / total_step / 1e9:.0f} GFLOP/s achieved (3x forward FLOPs)"
    )


if __name__ == "__main__":
    main()
