"""An accelerated module of an earlier commit against this checkout's, in one process.

    python benchmarks/conv_before_after.py BASE_COMMIT                # the 3x3 layers
    python benchmarks/conv_before_after.py BASE_COMMIT --step --base 16  # whole steps
    python benchmarks/conv_before_after.py BASE_COMMIT --module winograd --base 32
    python benchmarks/conv_before_after.py BASE_COMMIT --module batchnorm --step
    python benchmarks/conv_before_after.py BASE_COMMIT --step --pool   # every layer's pool

``benchmarks/step_before_after.sh`` runs the two trees in turns, each in its own process;
on a noisy machine the turns disagree by more than a change of 10%. Here the base
commit's ``minunet/accel/cpu.py`` (read with ``git show``) is loaded beside this
checkout's as a second module, and the two take turns call by call in one process
(``common.compare``: interleaved, a pause and a warm-up before each timed call), so a
noisy neighbour slows both alike. Only that module is swapped (by default the
convolution's ``cpu.py``): everything else is this checkout's on both sides.

Layers: ``conv2d_forward`` and ``conv2d_backward`` (with the input gradient, as every
3x3 layer of the U-Net but the first needs) of the U-Net's 3x3 shapes at ``--base``,
batch 8, 128 px input, float32. ``--step``: the training step of ``benchmarks/step.py``
with ``FastConv2d`` calling one module or the other (``step.build``'s minunet contender). Ratio = head / base, the median of
the per-round ratios (below 1: this checkout is faster).

``--module winograd`` swaps ``minunet/accel/winograd.py`` instead: the layers are then the
Winograd functions on the shapes that this checkout's rule (``winograd.tile_for``) gives
to Winograd, with the tile size it picks, and ``--step`` runs the step with Winograd
switched on in both modules.

``--pool`` (with ``--step``, ``--module cpu``) also gives every layer the base's thread pool
and its work split, ``cpu.parallel``, ``cpu.single_threaded_blas`` and
``cpu.channel_groups``: the BatchNorms, pools, Adam and the Winograd layers call them too.

``--module batchnorm`` swaps ``minunet/accel/batchnorm.py``: the layers are then
``ThreadedBatchNorm2d`` with its ReLU, forward and backward, at the shapes of the U-Net's
BatchNorms (``--base`` channels at ``--size`` px, doubling the channels and halving the
side per level), and ``--step`` gives every BatchNorm of the step one class or the other.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Timing,
    add_unet_arguments,
    compare,
    layer_shapes,
    load_line,
    setup,
    table,
)
from profile_cpu import leaves  # noqa: E402
from step import build  # noqa: E402

import minunet.accel.conv as fast_conv  # noqa: E402
from minunet.accel import batchnorm, cpu, winograd  # noqa: E402
from minunet.accel.cuda.batchnorm import KernelBatchNorm2d  # noqa: E402

# the swappable modules of minunet.accel
MODULES = {"cpu": cpu, "winograd": winograd, "batchnorm": batchnorm}


def module_at(commit: str, name: str = "cpu") -> ModuleType:
    """``minunet/accel/<name>.py`` as it was at ``commit``, imported as a module of its own."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:minunet/accel/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        message = f"cannot read minunet/accel/{name}.py at {commit!r}: {exc.stderr.strip()}"
        raise SystemExit(message) from None
    path = Path(tempfile.mkdtemp()) / f"{name}_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{name}_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pool_of(module: ModuleType) -> tuple[Callable, Callable, Callable]:
    """A cpu.py module's thread pool and work split: (``parallel``,
    ``single_threaded_blas``, ``channel_groups``)."""
    return module.parallel, module.single_threaded_blas, module.channel_groups


def use_pool(pool: tuple[Callable, Callable, Callable]) -> None:
    """Make ``pool`` (``pool_of``) the functions every accelerated layer calls: they look
    them up in ``minunet.accel.cpu`` as they run."""
    cpu.parallel, cpu.single_threaded_blas, cpu.channel_groups = pool


def batchnorm_layers(layer: Any) -> list[Any]:
    """Every ``ThreadedBatchNorm2d`` in ``layer``'s tree (the accelerated model's BatchNorms,
    leaves of it: ``profile_cpu.leaves``)."""
    return [leaf for _, leaf in leaves(layer) if isinstance(leaf, batchnorm.ThreadedBatchNorm2d)]


def batchnorm_class(module: ModuleType) -> type:
    """``FastBatchNorm2d`` with ``module``'s ``ThreadedBatchNorm2d`` under the CUDA part."""
    if module is batchnorm:
        return batchnorm.FastBatchNorm2d
    return type("BaseBatchNorm2d", (KernelBatchNorm2d, module.ThreadedBatchNorm2d), {})


def batchnorm_shapes(base: int, depth: int, size: int, batch: int) -> list[tuple[int, ...]]:
    """The (N, C, H, W) inputs of the U-Net's BatchNorms, one per level."""
    return [(batch, base << level, size >> level, size >> level) for level in range(depth + 1)]


def ratio_row(what: str, t: Timing, ms: str) -> list[str]:
    """A table row: what, base and head milliseconds (format ``ms``), ratio, best ratio."""
    return [
        what,
        ms.format(t.median_ms("base")),
        ms.format(t.median_ms("head")),
        f"{t.ratio('head', 'base'):.3f}",
        f"{t.best_ratio('head', 'base'):.3f}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit", help="the earlier commit (any git revision)")
    add_unet_arguments(parser, base=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--step", action="store_true", help="whole training steps")
    parser.add_argument(
        "--module", choices=sorted(MODULES), default="cpu", help="the module to swap"
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="with --step and --module cpu: the base's thread pool (parallel, "
        "single_threaded_blas, channel_groups) for every layer, not only the convolutions'",
    )
    args = parser.parse_args(argv)
    if args.pool and not (args.step and args.module == "cpu"):
        parser.error("--pool needs --step and --module cpu")

    dev = setup("numpy", tf32=False)
    head = MODULES[args.module]
    before = module_at(args.commit, args.module)
    where = f"minunet/accel/{args.module}.py"
    print(f"# {args.commit} against this checkout: {where} swapped in one process")
    print(f"# {dev.describe()}")
    print(load_line())
    print(f"# {args.rounds} interleaved rounds, median; ratio = head / base (per round, median)")
    rng = np.random.default_rng(0)
    rows = []
    if args.step:
        model, contenders = build(dev, args.base, args.depth, args.batch, args.size)
        ours = contenders["minunet"]  # benchmarks/step.py's minunet step
        norms = batchnorm_layers(model)

        def step_with(module: ModuleType) -> Callable[[], None]:
            if args.module == "batchnorm":
                cls = batchnorm_class(module)

                def step() -> None:
                    for layer in norms:
                        layer.__class__ = cls
                    ours()

                return step

            pair = pool_of(module) if args.pool else None  # taken now, before any swap

            def step() -> None:
                setattr(fast_conv, args.module, module)
                if args.pool:
                    use_pool(pair)
                ours()

            return step

        pool = pool_of(cpu) if args.pool else None  # this checkout's
        saved = winograd.ENABLED
        if args.module == "winograd":  # opt-in: on in both modules for this comparison
            before.ENABLED = winograd.ENABLED = True
        try:
            t = compare({"base": step_with(before), "head": step_with(head)}, dev, args.rounds)
        finally:
            if args.module != "batchnorm":
                setattr(fast_conv, args.module, head)
            if args.pool:
                use_pool(pool)
            winograd.ENABLED = saved
            for layer in norms:
                layer.__class__ = batchnorm.FastBatchNorm2d
        rows.append(ratio_row(f"step b{args.base} n{args.batch} {args.size}px", t, "{:.1f}"))
    elif args.module == "batchnorm":
        for shape in batchnorm_shapes(args.base, args.depth, args.size, args.batch):
            x = rng.standard_normal(shape, dtype=np.float32)
            d = rng.standard_normal(shape, dtype=np.float32)
            sides = {}
            for side, module in (("base", before), ("head", head)):
                layer = batchnorm_class(module)(shape[1], relu=True)

                def call(layer: Any = layer, x: np.ndarray = x, d: np.ndarray = d) -> None:
                    layer.forward(x)
                    layer.backward(d)

                sides[side] = call
            t = compare(sides, dev, args.rounds)
            _, c, h, _ = shape
            rows.append(ratio_row(f"BatchNorm2d+ReLU {c}ch {h}px", t, "{:.2f}"))
            print(f"  {rows[-1][0]}: {rows[-1][3]}", flush=True)
    else:
        for c_in, c_out, side in layer_shapes(args.base, args.depth, args.size):
            x = rng.standard_normal((args.batch, c_in, side, side), dtype=np.float32)
            options = {}
            if args.module == "winograd":
                with winograd.enabled(True):
                    options["m"] = winograd.tile_for(x, c_out, 3, 1, 1, 1)
                if not options["m"]:
                    continue  # the rule gives these to the blocked path
            w = (rng.standard_normal((c_out, c_in, 3, 3)) * 0.1).astype(np.float32)
            d = rng.standard_normal((args.batch, c_out, side, side), dtype=np.float32)
            for name, call in [
                ("forward", lambda m, x=x, w=w, o=options: m.conv2d_forward(x, w, None, 1, **o)),
                (
                    "backward",
                    lambda m, x=x, w=w, d=d, o=options: m.conv2d_backward(
                        x, w, d, 1, False, True, **o
                    ),
                ),
            ]:
                sides = {"base": before, "head": head}
                contenders = {side: lambda m=m, f=call: f(m) for side, m in sides.items()}
                t = compare(contenders, dev, args.rounds)
                rows.append(ratio_row(f"{c_in}->{c_out} {side}px {name}", t, "{:.2f}"))
                print(f"  {rows[-1][0]}: {rows[-1][3]}", flush=True)
    print(table(["what", "base ms", "head ms", "ratio", "best ratio"], rows))
    print(load_line())


if __name__ == "__main__":
    main()
