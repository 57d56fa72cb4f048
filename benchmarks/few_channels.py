"""The measurement behind ``cpu.ROW_GRAD_CHANNELS``: a few-channel layer's weight gradient
by blocks of rows or by one product per row, and the U-Net's RGB layer on each path.

    python benchmarks/few_channels.py                   # 5 rounds, batch 8, 128 px
    python benchmarks/few_channels.py --rounds 9 --out 32

Two tables, each interleaved round by round (``common.compare``), float32, 2 threads:

* the weight gradient alone, for C input channels (3 ... 16) and ``--out`` output
  channels: ``cpu._rows_weight_grad`` (the blocked path's kh products per block of rows,
  each (kw*C, P) @ (P, K)) against ``cpu._row_taps_weight_grad`` (one (K, Wo) @ (Wo,
  kh*kw*C) product per output row). ``cpu.conv2d_backward`` takes the second below
  ROW_GRAD_CHANNELS input channels; the last column says which it takes.
* the U-Net's first layer, 3 -> ``--out`` channels (as a training step runs it: forward,
  then the backward without the input gradient), through ``FastConv2d`` as the library
  runs it now, and with the fast path refused (``fast_conv_ok`` returning False), which is
  the im2col path with threaded products that these layers took until 2026-12-02; and
  PyTorch's ``Conv2d`` on the same arrays (its input needing no gradient).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compare, load_line, setup, table  # noqa: E402

from minunet.accel import accelerate, cpu  # noqa: E402
from minunet.nn import Conv2d  # noqa: E402

CHANNELS = (3, 4, 8, 12, 16)


def weight_grad_rows(args: argparse.Namespace, dev) -> list[list[str]]:
    rng = np.random.default_rng(0)
    rows = []
    for c in CHANNELS:
        x = rng.standard_normal((args.batch, c, args.size, args.size), dtype=np.float32)
        dout = rng.standard_normal((args.batch, args.out, args.size, args.size), dtype=np.float32)
        timing = compare(
            {
                "blocks": lambda x=x, d=dout: cpu._rows_weight_grad(x, d, 3, 3, 1),
                "rows": lambda x=x, d=dout: cpu._row_taps_weight_grad(x, d, 3, 3, 1),
            },
            dev,
            args.rounds,
        )
        taken = "rows" if c < cpu.ROW_GRAD_CHANNELS else "blocks"
        rows.append(
            [
                f"{c}->{args.out}",
                f"{timing.median_ms('blocks'):.2f}",
                f"{timing.median_ms('rows'):.2f}",
                f"{timing.ratio('rows', 'blocks'):.2f}",
                taken,
            ]
        )
    return rows


def first_layer(args: argparse.Namespace, dev) -> dict[str, Callable[[], None]]:
    torch = dev.torch
    rng = np.random.default_rng(0)
    shape = (args.batch, 3, args.size, args.size)
    layer = accelerate(Conv2d(3, args.out, 3, padding=1, bias=False, rng=rng))
    ref = torch.nn.Conv2d(3, args.out, 3, padding=1, bias=False)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.params["weight"].data))
    x = rng.standard_normal(shape, dtype=np.float32)
    dout = rng.standard_normal((args.batch, args.out, args.size, args.size), dtype=np.float32)
    xt, dt = torch.from_numpy(x), torch.from_numpy(dout)
    fast_conv_ok = cpu.fast_conv_ok

    def ours() -> None:
        layer.forward(x)
        layer.backward(dout, input_grad=False)

    def im2col() -> None:
        cpu.fast_conv_ok = lambda *a: False  # what FastConv2d asks: the im2col path
        try:
            ours()
        finally:
            cpu.fast_conv_ok = fast_conv_ok

    def theirs() -> None:
        ref.weight.grad = None
        ref(xt).backward(dt)

    return {"minunet": ours, "minunet im2col": im2col, "torch": theirs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=int, default=16, help="output channels (the U-Net's base)")
    args = parser.parse_args(argv)
    dev = setup("numpy", False)
    print(f"# few-channel 3x3 layers, float32, batch {args.batch}, {args.size} px")
    print(f"# {dev.describe()}")
    print(load_line())
    print(f"# {args.rounds} interleaved rounds, median; ratio = rows / blocks (per round)")
    print(
        table(
            ["weight gradient", "blocks ms", "rows ms", "ratio", "taken"],
            weight_grad_rows(args, dev),
        )
    )
    timing = compare(first_layer(args, dev), dev, args.rounds)
    print(f"# the first layer, 3 -> {args.out}: forward + backward without dx; ratio / torch")
    print(
        table(
            ["contender", "ms", "ratio", "best ratio"],
            [
                [
                    name,
                    f"{timing.median_ms(name):.2f}",
                    f"{timing.ratio(name, 'torch'):.2f}",
                    f"{timing.best_ratio(name, 'torch'):.2f}",
                ]
                for name in ("minunet", "minunet im2col", "torch")
            ],
        )
    )
    print(load_line())


if __name__ == "__main__":
    main()
