"""Seconds to reach a validation mean IoU on the synthetic toy pets, minunet vs PyTorch.

Both sides train the same network from the same initial weights on the same batches (the
same ``DeviceLoader``, so the same order and augmentation), with Adam and the same
learning rate, and are scored after every epoch on the same fixed validation split with
the same confusion-matrix metric. The clock runs over training only (validation is
excluded on both sides). It stops at ``--target`` or after ``--max-epochs``.

    python benchmarks/time_to_accuracy.py                        # CPU, 64 px, base 16
    python benchmarks/time_to_accuracy.py --backend cupy --size 128 --base 32 --batch 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from minunet.accel import accelerate  # noqa: E402
from minunet.core.backend import get_backend, to_numpy  # noqa: E402
from minunet.data.augment import AugmentConfig  # noqa: E402
from minunet.data.loader import DeviceLoader  # noqa: E402
from minunet.data.synthetic import synthetic_splits  # noqa: E402
from minunet.model import UNet  # noqa: E402
from minunet.nn.losses import SoftmaxCrossEntropy  # noqa: E402
from minunet.nn.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402
from minunet.nn.optim import Adam  # noqa: E402


def run_minunet(model, train, val, args, xp):
    opt = accelerate(Adam(model.parameters(), args.lr))
    loss_fn = accelerate(SoftmaxCrossEntropy(check_targets=False))
    return _loop(
        lambda x, y: _minunet_step(model, opt, loss_fn, x, y),
        lambda x: model.infer(x).argmax(axis=1),
        train,
        val,
        args,
        xp,
        sync=lambda: _sync(xp),
    )


def _minunet_step(model, opt, loss_fn, x, y):
    loss_fn.forward(model.forward(x), y)
    model.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()


def run_torch(model, train, val, args, xp):
    import torch

    device = "cuda" if args.backend == "cupy" else "cpu"
    net = model.to(device)
    opt = torch.optim.Adam(net.parameters(), args.lr)

    def step(x, y):
        xt = torch.as_tensor(x, device=device)
        yt = torch.as_tensor(y, device=device).long()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()

    def predict(x):
        net.eval()
        with torch.no_grad():
            out = net(torch.as_tensor(x, device=device)).argmax(1)
        net.train()
        return xp.asarray(out.cpu().numpy() if device == "cpu" else out)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return _loop(step, predict, train, val, args, xp, sync=sync)


def _sync(xp):
    if xp is not np:
        xp.cuda.get_current_stream().synchronize()


def _loop(step, predict, train, val, args, xp, sync):
    """Train epoch by epoch; returns [(seconds of training so far, val mIoU)] per epoch."""
    loader = DeviceLoader(train, xp, args.batch, augment=AugmentConfig(), seed=args.seed)
    val_loader = DeviceLoader.for_eval(val, xp, args.batch)
    seconds, history = 0.0, []
    for epoch in range(args.max_epochs):
        sync()
        t0 = time.perf_counter()
        for x, y, _ in loader.epoch(epoch):
            step(x, y)
        sync()
        seconds += time.perf_counter() - t0
        conf = xp.zeros((3, 3), dtype=xp.int64)
        for x, y, _ in val_loader.epoch(0):
            conf += confusion_matrix(predict(x), y, 3)
        miou = metrics_from_confusion(to_numpy(conf))["miou"]
        history.append((seconds, miou))
        print(f"  epoch {epoch + 1}: {seconds:7.1f} s  val mIoU {miou:.3f}", flush=True)
        if miou >= args.target:
            break
    return history


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-size", type=int, default=400)
    p.add_argument("--val-size", type=int, default=64)
    p.add_argument("--target", type=float, default=0.80)
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    from minunet.io.interop.torch_unet import TorchUNet, to_torch_state_dict

    xp = get_backend(args.backend)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, val = synthetic_splits(args.train_size, args.val_size, args.size, args.seed)
    model = UNet(3, 3, args.base, args.depth, seed=args.seed)
    ref = TorchUNet(**model.config)
    ref.load_state_dict(to_torch_state_dict(model.state_dict()), strict=True)
    print(
        f"toy pets {args.size}px, {args.train_size} training images, U-Net base {args.base} "
        f"depth {args.depth}, batch {args.batch}, Adam {args.lr}, target mIoU {args.target}"
    )
    results = {}
    for name, run in (("minunet", run_minunet), ("pytorch", run_torch)):
        print(name)
        target = model.to(xp) if name == "minunet" else ref
        results[name] = run(target, train, val, args, xp)
    print(f"\n{'':10}{'epochs':>8}{'seconds':>10}{'best mIoU':>11}")
    for name, history in results.items():
        reached = [h for h in history if h[1] >= args.target]
        secs = f"{reached[0][0]:.1f}" if reached else f">{history[-1][0]:.0f}"
        print(f"{name:10}{len(history):>8}{secs:>10}{max(h[1] for h in history):>11.3f}")


if __name__ == "__main__":
    main()
