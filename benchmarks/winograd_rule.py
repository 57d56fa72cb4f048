"""The measurement behind ``winograd.tile_for``: every 3x3 convolution of a U-Net, on each path.

    python benchmarks/winograd_rule.py                 # base 32 and base 16, 5 rounds
    python benchmarks/winograd_rule.py --base 16 --rounds 7
    python benchmarks/winograd_rule.py --error         # + each path's float32 error
    python benchmarks/winograd_rule.py --torch         # + PyTorch NCHW, and the rule's ratio

For each distinct 3x3 convolution of a depth-4 U-Net at 128 px (the encoder's, the
bottleneck's, the decoder's first convolutions whose input is the join, and their second
ones), one forward and one backward (dx and dW) in float32 on each CPU path, interleaved
round by round (``common.compare``): the blocked path (``minunet.accel.cpu``), Winograd
F(2x2, 3x3) and F(4x4, 3x3) (``minunet.accel.winograd``). The paths are called directly,
so the rule does not choose here; the "rule" column says what it chooses.

``--torch``: PyTorch's NCHW convolution (forward, then its backward for dx and dW, no
bias, the same arrays) joins the interleaved rounds, and "rule/torch" is the median over
rounds of the rule's path's time over PyTorch's in the same round: where, layer by layer,
the U-Net's convolutions stand against PyTorch's.

``--error``: each path's largest error in float32 against the same convolution in float64
(forward, dx and dW), relative to the largest value of that output, on the layer's data
(standard normal inputs, He-scaled weights): what F(4x4, 3x3)'s larger transforms cost.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compare, layer_shapes, load_line, setup, table  # noqa: E402

from minunet.accel import cpu, winograd  # noqa: E402

PATHS = {"blocked": 0, "F(2x2,3x3)": 2, "F(4x4,3x3)": 4}


def unet_convolutions(base: int, depth: int = 4, size: int = 128) -> list[tuple[int, int, int]]:
    """(input channels, output channels, side) of each distinct 3x3 convolution of a U-Net
    after its first (whose 3 input channels take the im2col path): ``common.layer_shapes``'s
    (each level's c->c, each decoder join's 2c->c) and each level's first, c/2->c after
    the pool; largest images first."""
    shapes = layer_shapes(base, depth, size)
    shapes += [
        ((base << level) // 2, base << level, size >> level) for level in range(1, depth + 1)
    ]
    return sorted(set(shapes), key=lambda s: (-s[2], s[0], s[1]))


def bound_call(tile: int, x: np.ndarray, w: np.ndarray, dout: np.ndarray) -> Callable[[], tuple]:
    """``path_call(tile)`` on these arrays, as a contender for ``common.compare``."""
    run = path_call(tile)
    return lambda: run(x, w, dout)


def path_call(tile: int) -> Callable[..., tuple]:
    """forward + backward of one path: (x, w, dout) -> (out, dx, dW)."""

    def run(x: np.ndarray, w: np.ndarray, dout: np.ndarray) -> tuple:
        if tile:
            out = winograd.conv2d_forward(x, w, None, 1, tile)
            dx, dw, _ = winograd.conv2d_backward(x, w, dout, 1, False, True, tile)
        else:
            out = cpu.conv2d_forward(x, w, None, 1)
            dx, dw, _ = cpu.conv2d_backward(x, w, dout, 1, False)
        return out, dx, dw

    return run


def torch_call(x: np.ndarray, w: np.ndarray, dout: np.ndarray) -> Callable[[], tuple]:
    """PyTorch's forward + backward (dx, dW) of the same convolution, as a contender."""
    import torch

    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.from_numpy(w).requires_grad_(True)
    td = torch.from_numpy(dout)

    def run() -> tuple:
        out = torch.nn.functional.conv2d(tx, tw, None, 1, 1)
        dx, dw = torch.autograd.grad(out, (tx, tw), td)
        return out, dx, dw

    return run


def errors(x: np.ndarray, w: np.ndarray, dout: np.ndarray) -> dict[str, str]:
    """Each path's max |float32 - float64| / max |float64| over (out, dx, dW), as text."""
    exact = path_call(0)(x.astype(np.float64), w.astype(np.float64), dout.astype(np.float64))
    result = {}
    for name, tile in PATHS.items():
        got = path_call(tile)(x, w, dout)
        worst = max(
            float(np.abs(g - e).max() / np.abs(e).max()) for g, e in zip(got, exact, strict=True)
        )
        result[name] = f"{worst:.1e}"
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, action="append", help="default: 32 and 16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timings per path")
    parser.add_argument("--side", type=int, action="append", help="only these image sides")
    parser.add_argument("--error", action="store_true", help="also each path's float32 error")
    parser.add_argument("--torch", action="store_true", help="also PyTorch's NCHW convolution")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch < 1:
        parser.error("--rounds and --batch must be at least 1")
    dev = setup("numpy", False)
    print(f"# 3x3 convolutions, forward + backward (dx, dW), float32, batch {args.batch}")
    print(f"# {dev.describe()}")
    print(load_line())
    print(f"# {args.rounds} interleaved rounds, median ms; 'rule' = winograd.tile_for's tile")
    names = list(PATHS)
    header = ["base", "conv", "side", *[f"{n} ms" for n in names], "fastest", "rule"]
    if args.torch:
        header += ["torch ms", "rule/torch"]
    if args.error:
        header += [f"{n} error" for n in names]
    rows = []
    rng = np.random.default_rng(0)
    for base in args.base or [32, 16]:
        for c, k, side in unet_convolutions(base):
            if args.side and side not in args.side:
                continue
            x = rng.standard_normal((args.batch, c, side, side), dtype=np.float32)
            w = (rng.standard_normal((k, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
            dout = rng.standard_normal((args.batch, k, side, side), dtype=np.float32)
            contenders = {n: bound_call(t, x, w, dout) for n, t in PATHS.items()}
            if args.torch:
                contenders["torch"] = torch_call(x, w, dout)
            timing = compare(contenders, dev, args.rounds)
            ms = {n: timing.median_ms(n) for n in names}
            fastest = min(names, key=ms.__getitem__)
            with winograd.enabled(True):
                rule = names[list(PATHS.values()).index(winograd.tile_for(x, k, 3, 1, 1, 1))]
            row = [str(base), f"{c}->{k}", str(side), *[f"{ms[n]:.1f}" for n in names]]
            row += [fastest, rule]
            if args.torch:
                row += [f"{timing.median_ms('torch'):.1f}", f"{timing.ratio(rule, 'torch'):.2f}"]
            if args.error:
                row += list(errors(x, w, dout).values())
            rows.append(row)
            print(f"  base {base} {c}->{k} at {side}: {fastest}", file=sys.stderr, flush=True)
    print(table(header, rows))
    print(load_line())


if __name__ == "__main__":
    main()
