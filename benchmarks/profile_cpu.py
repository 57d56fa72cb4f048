"""Where a minunet training step's time goes on the CPU, per layer class.

    python benchmarks/profile_cpu.py                     # base 32, depth 4, BN, 8x128x128
    python benchmarks/profile_cpu.py --rounds 5 --base 16

Runs the same step as ``benchmarks/step.py`` (forward, softmax cross-entropy, backward,
Adam) with every leaf layer's ``forward`` and ``backward`` wrapped in a timer, and prints
the time per layer class, forward and backward, as a share of the whole step. A wrapped
call is timed from entry to return; the leaf layers do not call each other, so nothing
is counted twice, and "other" is what the step spent outside every leaf layer (the loss,
Adam, the gradient sum at each skip connection, Python). Only minunet runs: on a shared
machine compare shares, not milliseconds, and take the round with the shortest step.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_unet_arguments, load_line, table  # noqa: E402

from minunet.accel import accelerate, reference_class  # noqa: E402
from minunet.model import UNet  # noqa: E402
from minunet.nn import Layer  # noqa: E402
from minunet.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from minunet.nn.optim import Adam  # noqa: E402


def leaves(layer: Layer, prefix: str = "") -> list[tuple[str, Layer]]:
    """(dotted name, layer) of every layer under ``layer`` that has no sub-layers."""
    children = layer.children()
    if not children:
        return [(prefix.rstrip("."), layer)]
    return [leaf for name, child in children.items() for leaf in leaves(child, f"{prefix}{name}.")]


def instrument(model: UNet, totals: dict[tuple[str, str], float], by_name: bool) -> None:
    """Wrap each leaf's forward and backward (on the instance) to add its seconds to
    totals[(class name or, with ``by_name``, dotted name, "forward" | "backward")]."""
    for name, leaf in leaves(model):
        for method in ("forward", "backward"):
            inner = getattr(leaf, method)
            key = (name if by_name else reference_class(leaf).__name__, method)

            def timed(*args, _inner=inner, _key=key, **kwargs):
                start = time.perf_counter()
                try:
                    return _inner(*args, **kwargs)
                finally:
                    totals[_key] += time.perf_counter() - start

            setattr(leaf, method, timed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser)
    parser.add_argument("--rounds", type=int, default=3, help="timed steps; the fastest is shown")
    parser.add_argument("--by-name", action="store_true", help="one row per layer, not class")
    parser.add_argument(
        "--torch", action="store_true", help="also PyTorch's step, per operator (torch.profiler)"
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32)
    y = rng.integers(0, 3, (args.batch, args.size, args.size))
    model = UNet(3, 3, args.base, args.depth, batchnorm=True)
    opt = accelerate(Adam(model.parameters(), lr=1e-3))
    loss = accelerate(SoftmaxCrossEntropy(check_targets=False))

    def step() -> None:
        opt.zero_grad()
        loss.forward(model.forward(x), y)
        model.backward(loss.backward(), input_grad=False)  # as the training loop does
        opt.step()

    step()  # warm-up: scratch buffers, thread pool
    totals: dict[tuple[str, str], float] = defaultdict(float)
    instrument(model, totals, args.by_name)
    rounds = []
    for _ in range(args.rounds):
        totals.clear()
        start = time.perf_counter()
        step()
        rounds.append((time.perf_counter() - start, dict(totals)))
    total, totals = min(rounds, key=lambda r: r[0])

    print(f"# minunet training step, per layer class: base {args.base}, depth {args.depth}, BN,")
    print(f"# batch {args.batch}, {args.size}x{args.size}, float32, Adam")
    print(load_line())
    print(f"# fastest of {args.rounds} steps: {1e3 * total:.1f} ms")

    def seconds(name: str) -> float:
        return totals.get((name, "forward"), 0.0) + totals.get((name, "backward"), 0.0)

    rows = []
    for name in sorted({name for name, _ in totals}, key=seconds, reverse=True):
        fwd, bwd = totals.get((name, "forward"), 0.0), totals.get((name, "backward"), 0.0)
        rows.append(
            [name, f"{1e3 * fwd:.1f}", f"{1e3 * bwd:.1f}", f"{100 * (fwd + bwd) / total:.1f}"]
        )
    other = total - sum(totals.values())
    rows.append(["other (loss, Adam, skip sums)", "-", "-", f"{100 * other / total:.1f}"])
    rows.append(["step", "-", "-", "100.0"])
    print(
        table(
            ["layer" if args.by_name else "layer class", "forward ms", "backward ms", "% of step"],
            rows,
        )
    )
    print(load_line())
    if args.torch:
        profile_torch(model, x, y, args.rounds)


def profile_torch(model: UNet, x: np.ndarray, y: np.ndarray, rounds: int) -> None:
    """PyTorch's step on the same network, weights and batch, timed per operator by
    torch.profiler: each operator's self time on the calling thread, per step (the mean
    of ``rounds`` steps), the largest first. Its rows are operators, not layers: a
    convolution's forward is ``aten::mkldnn_convolution`` (the up-convolutions' too), its
    backward ``aten::convolution_backward``, BatchNorm's ReLU is ``aten::clamp_min``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from minunet.io.interop.torch_unet import TorchUNet, to_torch_state_dict

    torch.set_num_threads(cpu_threads())
    net = TorchUNet(**model.config)
    net.load_state_dict(to_torch_state_dict(model.state_dict()))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            step()
    wall = (time.perf_counter() - start) / rounds
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [
        [e.key, f"{e.self_cpu_time_total / 1e3 / rounds:.1f}", f"{e.count // rounds}"]
        for e in ops[:12]
    ]
    print(
        f"# PyTorch's step, same network and batch, {torch.get_num_threads()} threads, "
        f"profiled: {1e3 * wall:.1f} ms per step (mean of {rounds}, with the profiler)"
    )
    print(table(["operator", "self ms per step", "calls per step"], rows))


def cpu_threads() -> int:
    """The threads minunet's pool uses, for PyTorch too (the same cores each side)."""
    from minunet.accel import cpu

    return cpu.num_threads()


if __name__ == "__main__":
    main()
