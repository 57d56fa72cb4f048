"""Wall time of one training epoch on the real Pets sample, minunet against PyTorch.

    python benchmarks/pets_epoch.py                      # CPU, $MINUNET_PETS_SAMPLE
    python benchmarks/pets_epoch.py --data-dir DIR --rounds 5 --steps 10
    python benchmarks/pets_epoch.py --quick              # a one-minute smoke run
    python benchmarks/pets_epoch.py --backend cupy       # CuPy against torch CUDA, fp32

The epoch is the one ``python -m minunet.train`` runs on the sample's trainval list (356
images, already decoded and resized to 128 px and held in memory): 44 steps of batch 8
(the last partial batch is dropped, as training does), U-Net base 16, depth 4, BatchNorm,
float32, Adam 1e-3, random horizontal flips.

Both sides start from the same weights (``minunet.io.interop.torch_unet``) and train on the
same batches: each has its own ``DeviceLoader`` with the training loop's flip-only
augmentation and the same seed, so the same order and the same flips, made by the same
code at the same cost. minunet's step is the training loop's (forward, softmax
cross-entropy, backward without the input gradient, Adam); PyTorch's is
``cross_entropy(net(x), y).backward()`` and ``torch.optim.Adam``, in NCHW and in
channels-last memory format. The first step's losses are printed: the same weights on the
same batch must give the same number.

Timing (``benchmarks/common.py``): the contenders take turns in blocks of ``--steps``
steps (A, B, C, A, B, C, ...), each block after a pause of ``PAUSE_S`` and one untimed
warm-up step, for ``--rounds`` rounds, each side carrying on through the epochs where its
last block stopped. Seconds per epoch = the median over rounds of the block's seconds per
step, times the steps of an epoch; the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PAUSE_S, Device, compare, load_line, setup, table  # noqa: E402
from pets_score import ENV_DATA, data_folder  # noqa: E402  (the same --data-dir rules)

from minunet.accel import accelerate  # noqa: E402
from minunet.data.augment import AugmentConfig  # noqa: E402
from minunet.data.dataset import SegmentationData  # noqa: E402
from minunet.data.loader import Batch, DeviceLoader  # noqa: E402
from minunet.data.pets import load_pets  # noqa: E402
from minunet.errors import MinunetError  # noqa: E402
from minunet.model import UNet  # noqa: E402
from minunet.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from minunet.nn.optim import make_optimizer  # noqa: E402

# The training loop's augmentation with everything but the flip switched off.
FLIPS = AugmentConfig(enabled=True, flip=True, scale=(1.0, 1.0), jitter=0.0)
QUICK = dict(rounds=2, steps=1)  # --quick: 2 rounds of a warm-up and 1 timed step per side


def endless(loader: DeviceLoader) -> Iterator[Batch]:
    """The loader's batches of epoch 0, 1, 2, ...: a block of steps may cross an epoch."""
    for epoch in count():
        yield from loader.epoch(epoch)


def build(
    dev: Device, data: SegmentationData, args: argparse.Namespace
) -> tuple[dict[str, Callable[[], None]], dict[str, list[Any]]]:
    """The contenders (each call: one training step on its next batch) and the lists each
    appends its step's loss to (device scalars, read after the timing)."""
    xp, torch = dev.xp, dev.torch
    from minunet.io.interop.torch_unet import TorchUNet, to_torch_state_dict

    def batches() -> Iterator[Batch]:
        return endless(DeviceLoader(data, xp, args.batch, augment=FLIPS, seed=args.seed))

    model = UNet(3, 3, args.base, args.depth, batchnorm=True, seed=args.seed).to(xp)
    initial = to_torch_state_dict(model.state_dict())  # before minunet takes a step
    # As the training loop makes them (minunet.train.loop): the optimiser and the loss
    # accelerated, as UNet accelerates its layers (without it, Adam was the reference's).
    opt = accelerate(make_optimizer("adam", model.parameters(), args.lr))
    loss_fn = accelerate(SoftmaxCrossEntropy(check_targets=False))  # no host read per step
    ours_batches = batches()
    losses: dict[str, list[Any]] = {"minunet": []}

    def ours() -> None:  # minunet.train.loop._train_step, without the multi-process parts
        x, y, _ = next(ours_batches)
        loss = loss_fn.forward(model.forward(x), y)
        model.zero_grad()
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        losses["minunet"].append(loss)

    contenders = {"minunet": ours}
    for name, fmt in (
        ("torch", torch.contiguous_format),
        ("torch channels-last", torch.channels_last),
    ):
        net = TorchUNet(**model.config)
        net.load_state_dict(initial)
        net = net.to(dev.torch_device, memory_format=fmt).train()
        losses[name] = []
        contenders[name] = torch_step(dev, net, fmt, args.lr, batches(), losses[name])
    return contenders, losses


def torch_step(
    dev: Device, net: Any, fmt: Any, lr: float, stream: Iterator[Batch], out: list[Any]
) -> Callable[[], None]:
    """One PyTorch training step on the next batch of ``stream``, in memory format ``fmt``,
    appending its loss to ``out``."""
    torch = dev.torch
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step() -> None:
        x, y, _ = next(stream)
        # Zero-copy views of minunet's batch (NumPy or CuPy memory), then torch's layout.
        xt = torch.as_tensor(x, device=dev.torch_device).contiguous(memory_format=fmt)
        yt = torch.as_tensor(y, device=dev.torch_device).long()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xt), yt)
        loss.backward()
        opt.step()
        out.append(loss.detach())

    return step


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help=f"the Pets folder (default: ${ENV_DATA})")
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--rounds", type=int, default=5, help="interleaved blocks per side")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per block")
    p.add_argument("--quick", action="store_true", help="smoke run: --rounds 2 --steps 1")
    p.add_argument("--size", type=int, default=128, help="image side the data is resized to")
    p.add_argument("--base", type=int, default=16, help="channels of the first level")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if args.rounds < 1 or args.steps < 1:
        raise SystemExit(
            f"--rounds and --steps must be at least 1, got {args.rounds}, {args.steps}"
        )
    root = data_folder(args.data_dir, "trainval")
    dev = setup(args.backend, tf32=False)
    try:
        data = load_pets(root, args.size, "trainval", download=False, progress=False)
        steps_per_epoch = len(data) // args.batch  # DeviceLoader drops the partial batch
        if steps_per_epoch < 1:
            raise MinunetError(f"{len(data)} images are fewer than one batch of {args.batch}")
        UNet(3, 3, 1, args.depth).output_size(args.size)  # a size the net cannot take: one line
        contenders, losses = build(dev, data, args)
    except MinunetError as exc:
        raise SystemExit(str(exc)) from None

    print(
        f"# one training epoch on {root.name} trainval: {len(data)} images, {steps_per_epoch} "
        f"steps of batch {args.batch} (partial batch dropped, as training does)"
    )
    print(
        f"# U-Net base {args.base}, depth {args.depth}, BN, {args.size} px, float32, "
        f"Adam {args.lr:g}, random horizontal flips"
    )
    print(f"# {dev.describe()}")
    print(load_line())
    print(
        f"# {args.rounds} interleaved rounds of {args.steps} timed step(s) per side, each after a "
        f"{PAUSE_S if dev.backend == 'numpy' else 0} s pause and a warm-up step; "
        "s/epoch = median s/step x steps per epoch; ratio = time / torch NCHW time"
    )
    # One warm-up step, not common.WARMUP_S of them: every side must take the same batches.
    timing = compare(contenders, dev, args.rounds, calls=args.steps, warmup_s=0.0)
    rows, result = [], {"steps_per_epoch": steps_per_epoch, "seconds_per_epoch": {}}
    for name in contenders:
        per_step = timing.median_ms(name) / 1e3
        result["seconds_per_epoch"][name] = per_step * steps_per_epoch
        rows.append(
            [
                name,
                f"{per_step:.3f}",
                f"{per_step * steps_per_epoch:.1f}",
                f"{timing.ratio(name, 'torch'):.2f}",
                f"{timing.best_ratio(name, 'torch'):.2f}",
            ]
        )
    print(table(["contender", "s/step", "s/epoch", "ratio", "best ratio"], rows))
    print(
        "# best ratio: fastest round / torch's fastest round (least disturbed by other processes)"
    )
    result["first_loss"] = {name: float(v[0]) for name, v in losses.items()}
    result["last_loss"] = {name: float(v[-1]) for name, v in losses.items()}
    for key, what in (("first_loss", "first step"), ("last_loss", "last step")):
        values = ", ".join(f"{name} {v:.5f}" for name, v in result[key].items())
        print(f"# loss of the {what}: {values}")
    print(f"# steps taken per side: {len(losses['minunet'])} (same batches on every side)")
    print(load_line())
    return result


if __name__ == "__main__":
    main()
