"""A full U-Net training step, minunet against the same network in PyTorch eager.

    python benchmarks/step.py                            # CPU: base 32, depth 4, BN, 8x128x128
    python benchmarks/step.py --backend cupy             # CuPy vs torch CUDA, fp32 on both
    python benchmarks/step.py --backend cupy --grid      # base 32/64 x batch 8/32 x 128/256
    python benchmarks/step.py --backend cupy --tf32
    python benchmarks/step.py --backend cupy --reference   # + minunet without its CUDA kernels
    python benchmarks/step.py --winograd                 # + minunet with Winograd off, F(2x2) only
    python benchmarks/step.py --joins                    # + minunet with the joins copying

One step = forward, softmax cross-entropy, backward, Adam update, on both sides, from
the same weights (``minunet.io.interop.torch_unet`` builds the identical graph). On the CPU
PyTorch is also timed in channels-last memory format, its faster layout there, for
reference. GFLOP/s counts the forward FLOPs of ``minunet.model.summary.trace`` times 3
(the backward of a convolution costs two forwards: input and weight gradients).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Device, add_unet_arguments, compare, load_line, setup, table  # noqa: E402

from minunet.accel import accelerate, cpu, fast_paths, winograd  # noqa: E402
from minunet.model import UNet  # noqa: E402
from minunet.model.summary import trace  # noqa: E402
from minunet.nn import Concat, ConvTranspose2d  # noqa: E402
from minunet.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from minunet.nn.optim import Adam  # noqa: E402

GRID = [(b, n, s) for b in (32, 64) for n in (8, 32) for s in (128, 256)]


def training_flops(model: UNet, size: int, batch: int) -> float:
    """FLOPs of one training step: 3x the forward's (multiply-add = 2 FLOPs)."""
    return 3.0 * sum(row[4] for row in trace(model, size, size, batch))


def build(
    dev: Device,
    base: int,
    depth: int,
    batch: int,
    size: int,
    classes: int = 3,
    reference: bool = False,
    winograd_rows: bool = False,
    join_rows: bool = False,
) -> tuple[UNet, dict[str, Callable[[], None]]]:
    """The contenders: minunet, torch (NCHW), on the CPU torch channels-last, and with
    ``reference`` minunet with its fast paths switched off: on the CPU the plain im2col
    path (and the fast path with OpenBLAS left to thread itself inside minunet's worker
    threads, as without threadpoolctl), on the GPU the generic CuPy code instead of the
    hand-written CUDA kernels. With ``winograd_rows`` (NumPy), minunet with its Winograd
    path switched off, and with F(2x2, 3x3) in place of F(4x4) in its rule
    (``winograd.RULE``: F(2x2) wherever F(4x4)'s thresholds are reached, counting 2x2 tiles).
    With ``join_rows``, minunet with the decoder's joins concatenating (``Concat.room``
    off: each up-convolution allocates its output and the join copies it, as before the
    up-convolutions wrote into the joins' buffers)."""
    from minunet.io.interop.torch_unet import TorchUNet, to_torch_state_dict

    xp, torch = dev.xp, dev.torch
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    y_host = rng.integers(0, classes, (batch, size, size))

    model = UNet(3, classes, base, depth, batchnorm=True).to(xp)
    opt = accelerate(Adam(model.parameters(), lr=1e-3))  # UNet accelerates its own layers
    loss = accelerate(SoftmaxCrossEntropy(check_targets=False))  # no device read per step
    x, y = xp.asarray(x_host), xp.asarray(y_host)

    def ours() -> None:
        opt.zero_grad()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward(), input_grad=False)  # as the training loop does
        opt.step()

    contenders = {"minunet": ours}

    def with_settings(changes: list[tuple[Any, str, Any]], **switches: bool) -> Callable[[], None]:
        """``ours`` run with each (object, attribute, value) set and the fast paths switched
        as ``switches`` says (``minunet.accel.fast_paths``), all restored after."""

        def run() -> None:
            saved = [(obj, name, getattr(obj, name)) for obj, name, _ in changes]
            for obj, name, value in changes:
                setattr(obj, name, value)
            try:
                with fast_paths(**switches):
                    ours()
            finally:
                for obj, name, value in saved:
                    setattr(obj, name, value)

        return run

    if reference and dev.backend == "numpy":
        plain = [(ConvTranspose2d, "_patches_tile", lambda self: False)]
        contenders["minunet reference"] = with_settings(plain, cpu=False)
        # as if threadpoolctl were not installed
        contenders["minunet, BLAS unmanaged"] = with_settings([(cpu, "_blas", False)])
    if winograd_rows and dev.backend == "numpy":
        contenders["minunet, Winograd off"] = with_settings([(winograd, "ENABLED", False)])
        only_f2 = tuple((2, *thresholds) for m, *thresholds in winograd.RULE if m == 4)
        changes = [(winograd, "ENABLED", True), (winograd, "RULE", only_f2)]
        contenders["minunet, F(2x2) only"] = with_settings(changes)
    if join_rows:
        copying = [(Concat, "room", lambda self, skip, up_shape: None)]
        contenders["minunet, joins copying"] = with_settings(copying)
    if reference and dev.backend == "cupy":
        contenders["minunet no kernels"] = with_settings([], cuda=False)
    layouts = ["nchw"] if dev.backend == "cupy" else ["nchw", "channels_last"]
    for layout in layouts:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        net = TorchUNet(**model.config)
        net.load_state_dict(to_torch_state_dict(model.state_dict()))
        net = net.to(dev.torch_device, memory_format=fmt)
        topt = torch.optim.Adam(net.parameters(), lr=1e-3)
        xt = torch.from_numpy(x_host).to(dev.torch_device).contiguous(memory_format=fmt)
        yt = torch.from_numpy(y_host).to(dev.torch_device)

        def theirs(net=net, topt=topt, xt=xt, yt=yt) -> None:
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(xt), yt).backward()
            topt.step()

        contenders["torch" if layout == "nchw" else "torch channels-last"] = theirs
    return model, contenders


def peak_gpu_mib(dev: Device, name: str, step: Callable[[], None]) -> float:
    """GPU memory one training step needs, in MiB: what stays allocated (weights, optimiser
    state) plus its largest transient. For minunet it is what CuPy's memory pool holds after
    the step, having been emptied of unused blocks before it: the pool keeps every block
    it allocated, so that is the step's high-water mark (and the reuse from step to step
    that makes later steps allocation-free). For PyTorch, its own peak counter."""
    if name.startswith("torch"):
        dev.torch.cuda.synchronize()
        dev.torch.cuda.empty_cache()
        dev.torch.cuda.reset_peak_memory_stats()
        step()
        dev.torch.cuda.synchronize()
        return dev.torch.cuda.max_memory_reserved() / 2**20
    pool = dev.xp.get_default_memory_pool()
    dev.sync()
    pool.free_all_blocks()
    step()
    dev.sync()
    return pool.total_bytes() / 2**20


def free_device_memory(dev: Device) -> None:
    """Hand cached GPU blocks back between configs, so the next one starts from empty."""
    if dev.backend == "cupy":
        dev.xp.get_default_memory_pool().free_all_blocks()
        dev.torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    parser.add_argument("--tf32", action="store_true", help="TF32 on both sides (GPU only)")
    add_unet_arguments(parser)
    parser.add_argument("--grid", action="store_true", help="base 32/64 x batch 8/32 x 128/256")
    parser.add_argument(
        "--rounds", type=int, default=None, help="interleaved timings per side (CPU 5, GPU 3)"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also time minunet without its fast paths (CPU) or CUDA kernels (GPU)",
    )
    parser.add_argument(
        "--winograd",
        action="store_true",
        help="also time minunet with its Winograd path off, and with F(2x2) only (CPU)",
    )
    parser.add_argument(
        "--joins",
        action="store_true",
        help="also time minunet with the decoder's joins copying the up-convolutions' maps",
    )
    args = parser.parse_args(argv)
    dev = setup(args.backend, args.tf32)
    configs = GRID if args.grid else [(args.base, args.batch, args.size)]
    # A GPU step is short next to its launch jitter: time 3 calls per round, 3 rounds,
    # which keeps the 8-config grid within a few minutes.
    calls = 1 if dev.backend == "numpy" else 3
    if args.rounds is None:
        args.rounds = 5 if dev.backend == "numpy" else 3
    print(f"# U-Net training step (fwd, CE loss, bwd, Adam), depth {args.depth}, BN, float32")
    print(f"# {dev.describe()}")
    print(load_line())
    print(f"# {args.rounds} interleaved rounds, median; ratio = time / torch NCHW time")
    rows = []
    for base, batch, size in configs:
        try:
            model, contenders = build(
                dev,
                base,
                args.depth,
                batch,
                size,
                reference=args.reference,
                winograd_rows=args.winograd,
                join_rows=args.joins,
            )
            flops = training_flops(model, size, batch)
            t = compare(contenders, dev, args.rounds, calls)
        except Exception as exc:  # a config too large for the GPU is a row, not the end
            # CuPy's OutOfMemoryError is a MemoryError; torch's is a RuntimeError.
            if not (isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()):
                raise
            rows.append(["(out of memory)", f"b{base} n{batch} {size}px"] + ["-"] * 6)
            print(f"  b{base} n{batch} {size}px: out of memory ({exc})", file=sys.stderr)
            free_device_memory(dev)
            continue
        for name, step in contenders.items():
            ms = t.median_ms(name)
            memory = f"{peak_gpu_mib(dev, name, step):.0f}" if dev.backend == "cupy" else "-"
            rows.append(
                [
                    name,
                    f"b{base} n{batch} {size}px",
                    f"{ms:.1f}",
                    f"{batch / ms * 1e3:.1f}",
                    f"{flops / ms / 1e6:.0f}",
                    f"{t.ratio(name, 'torch'):.2f}",
                    f"{t.best_ratio(name, 'torch'):.2f}",
                    memory,
                ]
            )
        print(f"  b{base} n{batch} {size}px done", file=sys.stderr, flush=True)
        del model, contenders
        free_device_memory(dev)
    header = ["contender", "config", "ms/step", "images/s", "GFLOP/s", "ratio", "best ratio"]
    header.append("GPU MiB")
    print(table(header, rows))
    print(
        "# best ratio: fastest round / torch's fastest round (least disturbed by other processes)"
    )
    if dev.backend == "cupy":
        print("# GPU MiB: memory held after one step, from empty caches (see peak_gpu_mib)")
    print(load_line())


if __name__ == "__main__":
    main()
