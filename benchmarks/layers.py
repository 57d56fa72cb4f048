"""Each minunet layer's forward + backward against PyTorch's, side by side, in one process.

    python benchmarks/layers.py                      # NumPy vs PyTorch CPU (same threads)
    python benchmarks/layers.py --backend cupy       # CuPy vs PyTorch CUDA, fp32 both
    python benchmarks/layers.py --backend cupy --tf32
    python benchmarks/layers.py --phase forward      # or backward: one half of each layer

Both sides get the same weights, input and output gradient (float32) and do the same
work: one forward and one backward (weights' and input's gradients). ``--phase`` times
one of the two alone: the forward with its graph recorded (as in training), or the
backward of one forward made beforehand, run again and again. The shapes are the
ones a base-32 U-Net meets at 128x128 with batch 8 (``--base`` for others); the 32-, 64-
and 256-channel 3x3 convolutions are issue 17's speed bar (at most PyTorch's time).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Device, compare, load_line, setup, table  # noqa: E402

from minunet.accel import accelerate, fast_paths, winograd  # noqa: E402
from minunet.nn import BatchNorm2d, Conv2d, ConvTranspose2d, MaxPool2d, ReLU  # noqa: E402
from minunet.nn.losses import SoftmaxCrossEntropy  # noqa: E402


def cases(batch: int, base: int = 32) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, kind, input shape) of every benchmarked layer: the shapes a U-Net of ``base``
    channels and depth 4 meets at 128 px (base 32 by default; the Pets protocol's is 16)."""
    n, b = batch, base
    convs = [(b << level, 128 >> level) for level in range(5)]  # (channels, side) per level
    return [
        *[(f"Conv2d 3x3 {c}->{c}", "conv", (n, c, s, s)) for c, s in convs],
        (f"Conv2d 3x3 3->{b}", "conv_in", (n, 3, 128, 128)),
        ("MaxPool2d 2x2", "pool", (n, b, 128, 128)),
        (f"ConvTranspose2d 2x2 s2 {2 * b}->{b}", "upconv", (n, 2 * b, 64, 64)),
        ("BatchNorm2d", "bn", (n, b, 128, 128)),
        ("ReLU", "relu", (n, b, 128, 128)),
        ("SoftmaxCE (3 classes)", "ce", (n, 3, 128, 128)),
    ]


def build(
    kind: str, shape: tuple[int, ...], dev: Device, base: int = 32, phase: str = "both"
) -> dict[str, Callable]:
    """The contenders, each running the layer's forward and backward (``phase`` "both"),
    or only one of them ("forward", "backward"): minunet, torch, and for layers with a CPU
    fast path, minunet's plain reference path (and each 3x3 path, forced)."""
    xp, torch = dev.xp, dev.torch
    rng = np.random.default_rng(0)
    c = shape[1]
    if kind in ("conv", "conv_in"):
        out_c = base if kind == "conv_in" else c
        # bias=False as in the U-Net, where BatchNorm follows every 3x3 convolution
        layer: Any = Conv2d(c, out_c, 3, padding=1, bias=False, rng=rng)
        ref: Any = torch.nn.Conv2d(c, out_c, 3, padding=1, bias=False)
    elif kind == "upconv":
        layer = ConvTranspose2d(c, c // 2, 2, stride=2, rng=rng)
        ref = torch.nn.ConvTranspose2d(c, c // 2, 2, stride=2)
    elif kind == "pool":
        layer, ref = MaxPool2d(2), torch.nn.MaxPool2d(2)
    elif kind == "bn":
        layer, ref = BatchNorm2d(c), torch.nn.BatchNorm2d(c)
    elif kind == "relu":
        layer, ref = ReLU(), torch.nn.ReLU()
    elif kind == "ce":
        return _build_ce(shape, dev, rng, phase)
    else:
        raise ValueError(kind)
    accelerate(layer)  # its fast paths, as a UNet's layers have them
    layer.to(xp)
    ref = ref.to(dev.torch_device)
    with torch.no_grad():  # the same weights on both sides
        for name, p in ref.named_parameters():
            p.copy_(torch.from_numpy(np.asarray(layer.state_dict()[name])))

    x_host = rng.standard_normal(shape, dtype=np.float32)
    x = xp.asarray(x_host)
    y_shape = layer.forward(x).shape
    dy_host = rng.standard_normal(y_shape, dtype=np.float32)
    dy = xp.asarray(dy_host)
    xt = torch.from_numpy(x_host).to(dev.torch_device).requires_grad_(True)
    dyt = torch.from_numpy(dy_host).to(dev.torch_device)

    def timed(context: Callable[[], AbstractContextManager]) -> Callable[[], None]:
        return ours_in_phase(
            layer, lambda: layer.forward(x), lambda: layer.backward(dy), phase, context
        )

    def reset() -> None:
        xt.grad = None
        for p in ref.parameters():
            p.grad = None  # PyTorch's own training loop default (zero_grad(set_to_none))

    theirs = torch_in_phase(lambda: ref(xt), dyt, reset, phase)
    contenders = {"minunet": timed(nullcontext), "torch": theirs}
    if dev.backend == "numpy" and kind in ("conv", "conv_in", "upconv"):

        @contextmanager
        def reference() -> Iterator[None]:
            """The same layer through im2col/col2im: what the fast paths replaced."""
            layer._patches_tile = lambda: False  # ConvTranspose2d's shortcut, off
            try:
                with fast_paths(cpu=False):
                    yield
            finally:
                vars(layer).pop("_patches_tile")

        contenders["reference"] = timed(reference)
    if dev.backend == "numpy" and kind == "conv":
        # Each 3x3 path forced, whatever the rule picks: the measurement behind the rule.
        # (Before 2026-12-02 05:15 UTC the "winograd" column forced only the rule's channel
        # threshold, not the switch, which was off by default: it timed the blocked path.)
        contenders["blocked"] = timed(lambda: winograd.forced(0))
        contenders["F(2x2)"] = timed(lambda: winograd.forced(2))
        contenders["F(4x4)"] = timed(lambda: winograd.forced(4))
    return contenders


def ours_in_phase(
    module: Any,
    forward: Callable[[], Any],
    backward: Callable[[], Any],
    phase: str,
    context: Callable[[], AbstractContextManager] = nullcontext,
) -> Callable[[], None]:
    """One call of minunet's ``module`` in ``phase``, each call inside ``context()``. The
    backward alone reads the cache of one forward made here, in the same context (so a
    forced path's backward is that path's), and set again before every call."""
    cache = None
    if phase == "backward":
        with context():
            forward()
        cache = module._cache

    def run() -> None:
        with context():
            if phase == "backward":
                module._cache = cache
            else:
                forward()
            if phase != "forward":
                backward()

    return run


def torch_in_phase(
    forward: Callable[[], Any], dout: Any, reset: Callable[[], None], phase: str
) -> Callable[[], None]:
    """One call of PyTorch's side in ``phase``, its gradients ``reset()`` first: the forward
    with its graph recorded (as a training step's forward records it), the backward of
    one graph recorded here and kept, or both."""
    graph = forward() if phase == "backward" else None

    def run() -> None:
        reset()
        if phase == "forward":
            forward()
        elif phase == "backward":
            graph.backward(dout, retain_graph=True)
        else:
            forward().backward(dout)

    return run


def _build_ce(shape: tuple[int, ...], dev: Device, rng: np.random.Generator, phase: str):
    xp, torch = dev.xp, dev.torch
    n, k, h, w = shape
    z_host = rng.standard_normal(shape, dtype=np.float32)
    y_host = rng.integers(0, k, (n, h, w))
    z, y = xp.asarray(z_host), xp.asarray(y_host)
    loss = accelerate(SoftmaxCrossEntropy(check_targets=False))  # no device-to-host read
    zt = torch.from_numpy(z_host).to(dev.torch_device).requires_grad_(True)
    yt = torch.from_numpy(y_host).to(dev.torch_device)

    def reset() -> None:
        zt.grad = None

    ours = ours_in_phase(loss, lambda: loss.forward(z, y), loss.backward, phase)
    theirs = torch_in_phase(lambda: torch.nn.functional.cross_entropy(zt, yt), None, reset, phase)
    return {"minunet": ours, "torch": theirs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    parser.add_argument("--tf32", action="store_true", help="TF32 on both sides (GPU only)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--base", type=int, default=32, help="the U-Net's first-level channels")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timings per side")
    parser.add_argument("--only", default="", help="run the layers whose name contains this")
    parser.add_argument(
        "--phase",
        choices=("both", "forward", "backward"),
        default="both",
        help="time the forward and backward together (default), or one of them",
    )
    args = parser.parse_args(argv)
    dev = setup(args.backend, args.tf32)
    calls = 1 if dev.backend == "numpy" else 10  # GPU calls are short: average 10
    halves = {"both": "forward + backward", "forward": "forward", "backward": "backward"}
    print(f"# layers: {halves[args.phase]}, float32, batch {args.batch}")
    print(f"# {dev.describe()}")
    print(load_line())
    print(f"# {args.rounds} interleaved rounds, median; ratio = minunet / torch (lower is better)")
    rows = []
    for name, kind, shape in cases(args.batch, args.base):
        if args.only.lower() not in name.lower():
            continue
        contenders = build(kind, shape, dev, args.base, args.phase)
        t = compare(contenders, dev, args.rounds, calls)
        has_ref = "reference" in contenders
        paths = [
            f"{t.ratio(path, 'torch'):.2f}" if path in contenders else "-"
            for path in ("blocked", "F(2x2)", "F(4x4)")
        ]
        rows.append(
            [
                name,
                "x".join(map(str, shape)),
                f"{t.median_ms('minunet'):.2f}",
                f"{t.median_ms('torch'):.2f}",
                f"{t.ratio('minunet', 'torch'):.2f}",
                f"{t.best_ratio('minunet', 'torch'):.2f}",
                f"{t.ratio('reference', 'torch'):.2f}" if has_ref else "-",
                *paths,
            ]
        )
        print(f"  {name}: {rows[-1][4]}x", file=sys.stderr, flush=True)
    header = ["layer", "input", "minunet ms", "torch ms", "ratio", "best ratio", "ref. ratio"]
    header += ["blocked ratio", "F(2x2) ratio", "F(4x4) ratio"]
    print(table(header, rows))
    print(load_line())
    if dev.backend == "numpy":
        print("# best ratio: fastest round / fastest round (least disturbed by other processes)")
        print("# ref. ratio: the plain im2col/col2im path that the CPU fast path replaced")
        print(
            "# blocked / F(2x2) / F(4x4) ratio: that 3x3 path forced (minunet: winograd.tile_for's)"
        )


if __name__ == "__main__":
    main()
