"""The training loop: batches in, gradients, an optimiser step; validation every epoch.

One step, in the order the maths happens:

    logits = model.forward(x)                  (B, K, H, W)
    loss   = cross_entropy(logits, y, w)       a 0-d array on the backend
    model.backward(loss_fn.backward())         fills every Parameter.grad
    optimizer.step()                           p -= lr * update(grad)

Nothing in a step reads a number back from the GPU: the loss is summed on the device and
read once per ``log_every`` steps, validation counts go into a confusion matrix on the
device and are read once per epoch.

What a run leaves in ``out``: ``config.json``; ``metrics.jsonl`` (one line per epoch);
``last.npz`` (model + optimiser, to resume) and ``best.npz`` (the best validation mean
IoU so far); ``curves.png``; ``predictions.png``. Every file is written atomically, so a
crash or Ctrl-C leaves the last good one. Ctrl-C stops after the current step, saves and
exits; ``resume=True`` continues from ``last.npz`` and, on NumPy, gives bit-for-bit the
run that was never interrupted.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minunet.atomic import atomic_write
from minunet.backend import backend_name, get_backend, seed_everything, to_numpy
from minunet.checkpoint import load_checkpoint, save_checkpoint
from minunet.data.augment import AugmentConfig
from minunet.data.loader import DEFAULT_MEAN, DEFAULT_STD, DeviceLoader
from minunet.data.sources import DataOptions, load_splits
from minunet.distributed import Communicator, make_communicator
from minunet.errors import CheckpointError, MinunetError
from minunet.inference import predict_classes
from minunet.layers.concat import centre_crop_box
from minunet.losses import SoftmaxCrossEntropy
from minunet.metrics import confusion_matrix, metrics_from_confusion
from minunet.model import UNet
from minunet.optim import clip_grad_norm, learning_rate, make_optimizer
from minunet.plots import plot_curves, plot_predictions

PREVIEW_SAMPLES = 4  # validation images shown in predictions.png


@dataclass
class TrainConfig:
    """Every setting of a run; saved as config.json and in every checkpoint."""

    data: DataOptions = field(default_factory=DataOptions)
    backend: str = "numpy"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size_epochs: int = 0  # step schedule: decay every this many epochs
    gamma: float = 0.1
    clip_grad: float | None = None
    base_channels: int = 32
    depth: int = 4
    padding: str = "same"
    batchnorm: bool = True
    dropout: float = 0.0
    augment: bool = True
    flip: bool = True
    scale_min: float = 0.7
    jitter: float = 0.1
    elastic: float = 0.0  # std of the elastic grid displacements (px); 0: off
    crop: int | None = None  # train on random crops at native size
    class_weights: str = "none"  # none | auto | w0,w1,...
    seed: int = 0
    out: str = "runs/unet"
    resume: bool = False
    log_every: int = 10
    tf32: bool = False
    max_steps: int | None = None  # stop early (tests, smoke runs)
    progress: bool = True
    distributed: bool | None = None  # None: detect an MPI launch (mpiexec -n N ...)
    comm: str = "nccl"  # cupy: nccl or mpi; numpy always uses mpi
    sync_bn: bool = False  # BatchNorm statistics over the global batch


class NonFiniteLoss(MinunetError):
    pass


class _StopFlag:
    """Ctrl-C sets the flag; the loop checks it between steps, so no step is half-done.
    A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _progress(total: int, initial: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )


def train(
    cfg: TrainConfig,
    log: Any = print,
    on_epoch: Callable[[int, dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """Run (or resume) training as ``cfg`` says. Returns the last epoch's metrics, with
    ``interrupted``: True when Ctrl-C was pressed during the run (it then stopped at the
    next step, or after the validation it was in).

    ``on_epoch(epoch, record)`` is called after each epoch's validation with the
    metrics.jsonl record (1-based epoch); returning True stops the run there (the
    hyper-parameter search uses it to prune a trial).
    """
    if cfg.tf32:
        if cfg.backend != "cupy":
            raise MinunetError("--tf32 is a GPU setting: use it with --backend cupy")
        import os

        os.environ["CUPY_TF32"] = "1"  # read by CuPy before its first matmul
    xp = get_backend(cfg.backend)
    comm = make_communicator(
        cfg.distributed, cfg.comm if cfg.backend == "cupy" else "mpi", cfg.backend
    )
    main = comm.is_main  # rank 0 alone logs and writes files
    if not main:
        log = _silent
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed, xp)

    data_opts = cfg.data
    if cfg.crop:
        data_opts = DataOptions(**{**asdict(cfg.data), "image_size": None})
    train_data, val_data = load_splits(data_opts)
    num_classes = train_data.num_classes
    ignore_index = train_data.ignore_index
    mean, std = DEFAULT_MEAN, DEFAULT_STD
    augment = AugmentConfig(
        enabled=cfg.augment, flip=cfg.flip, scale=(cfg.scale_min, 1.0), jitter=cfg.jitter
    )
    # The two loaders share one interface: native-size crops, or the resized split.
    batching = dict(
        augment=augment, seed=cfg.seed, mean=mean, std=std, rank=comm.rank, world_size=comm.size
    )
    if cfg.crop:
        from minunet.data.folder import CropLoader

        loader = CropLoader(train_data, xp, cfg.batch_size, crop=cfg.crop, **batching)
        ignore_index = loader.ignore_index
    else:
        loader = DeviceLoader(train_data, xp, cfg.batch_size, **batching)
    model = UNet(
        train_data.in_channels,
        num_classes,
        cfg.base_channels,
        cfg.depth,
        cfg.padding,
        cfg.batchnorm,
        cfg.dropout,
        seed=cfg.seed,
    ).to(xp)
    comm.broadcast_model(model)  # every replica starts from rank 0's weights
    if cfg.sync_bn:
        for layer in _batchnorms(model):
            layer.sync = comm.allreduce_sum
    if cfg.padding == "valid" and not cfg.crop:
        raise MinunetError(
            "padding='valid' shrinks the output; train it with --crop N "
            "(folder/isbi2012 data) or use --padding same"
        )
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.momentum)
    weights = None
    if cfg.class_weights != "none":
        from minunet.data.folder import class_weights

        weights = xp.asarray(class_weights(train_data, cfg.class_weights))
    loss_fn = SoftmaxCrossEntropy(weights, ignore_index=ignore_index, check_targets=False)

    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    meta = {
        "model": model.config,
        "data": {
            "source": cfg.data.data,
            "class_names": list(train_data.class_names),
            "mask_values": [int(v) for v in train_data.mask_values],
            "ignore_index": ignore_index,
            "in_channels": train_data.in_channels,
            "image_size": cfg.data.image_size,
            "normalization": {"mean": mean, "std": std},
        },
        "config": json.loads(json.dumps(asdict(cfg))),
    }

    # -- resume --------------------------------------------------------------------------
    epoch, step, skip, best, history = 0, 0, 0, -1.0, []
    last_path, best_path = out / "last.npz", out / "best.npz"
    if cfg.resume:
        if not last_path.exists():
            raise CheckpointError(
                f"--resume: no {last_path} to resume from; drop --resume to start a new run"
            )
        ck = load_checkpoint(last_path)
        if ck.model_config != model.config:
            raise CheckpointError(
                f"--resume: {last_path} holds a different model "
                f"({ck.model_config}); use the run's own settings"
            )
        model.load_state_dict(ck.model_state)
        opt.load_state_dict(ck.optim_state)
        state = ck.meta["train"]
        epoch, step, skip = state["epoch"], state["step"], state["batch"]
        best, history = state["best_miou"], state["history"]
        log(f"resuming {last_path}: epoch {epoch + 1}, step {step}")
    elif main:
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))

    def save_last(batch_in_epoch: int) -> None:
        if not main:
            return
        train_state = {
            "epoch": epoch,
            "step": step,
            "batch": batch_in_epoch,
            "best_miou": best,
            "history": history,
        }
        save_checkpoint(
            last_path, model.state_dict(), {**meta, "train": train_state}, opt.state_dict()
        )

    log(
        f"training on {len(train_data)} images, validating on {len(val_data)}, "
        f"{model.num_parameters():,} parameters, backend {backend_name(xp)}"
        + (f", {comm.size} processes" if comm.size > 1 else "")
    )
    metrics: dict[str, Any] = {}
    with _StopFlag() as stop:
        while epoch < cfg.epochs:
            model.train()
            loss_sum = xp.zeros((), dtype=xp.float32)
            first_bad = None
            n_steps, t0 = 0, time.perf_counter()
            bar = _progress(
                steps_per_epoch, skip, cfg.progress and main, f"epoch {epoch + 1}/{cfg.epochs}"
            )
            for i, batch in enumerate(loader.epoch(epoch)):
                if i < skip:  # resumed mid-epoch: same batches, skipped
                    continue
                x, y, w = batch
                if cfg.elastic > 0:
                    x, y, w = _elastic(x, y, w, cfg, epoch, i, xp)
                opt.lr = learning_rate(
                    step,
                    total_steps,
                    cfg.lr,
                    cfg.schedule,
                    warmup,
                    cfg.step_size_epochs * steps_per_epoch,
                    cfg.gamma,
                )
                logits = model.forward(x)
                if logits.shape[2:] != y.shape[1:]:  # a valid-padding net: labels of the centre
                    rows, cols = centre_crop_box(y.shape[1:], logits.shape[2:])
                    y = y[:, rows, cols]
                    w = None if w is None else w[:, rows, cols]
                loss = loss_fn.forward(logits, y, w)
                model.zero_grad()
                model.backward(loss_fn.backward(), input_grad=False)  # no use for dx
                if comm.size > 1:
                    # One allreduce averages every gradient; the stop flag rides along, so
                    # all ranks stop after the same step.
                    stops = comm.average_gradients(
                        model.parameters(), extra=[float(stop.requested)]
                    )
                    stop.requested = float(stops[0]) > 0
                if cfg.clip_grad:
                    clip_grad_norm(model.parameters(), cfg.clip_grad)
                opt.step()
                step += 1
                n_steps += 1
                loss_sum += loss
                finite = xp.isfinite(loss)
                if first_bad is None:
                    first_bad = xp.where(finite, -1, step)
                else:
                    first_bad = xp.where((first_bad < 0) & ~finite, step, first_bad)
                if n_steps % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                    bad = int(first_bad)  # the one host read per log interval
                    if bad >= 0:
                        bar.close()
                        raise NonFiniteLoss(
                            f"the loss became non-finite at step {bad}; stopped without "
                            f"saving. {last_path.name} holds the last good state: lower "
                            "--lr or add --clip-grad"
                        )
                    rate = n_steps * cfg.batch_size / (time.perf_counter() - t0)
                    bar.set_postfix(
                        loss=f"{float(loss_sum) / n_steps:.4f}",
                        lr=f"{opt.lr:.2e}",
                        img_s=f"{rate:.1f}",
                    )
                bar.update(1)
                if stop.requested or (cfg.max_steps and step >= cfg.max_steps):
                    break
            bar.close()
            if stop.requested or (
                cfg.max_steps and step >= cfg.max_steps and i + 1 < steps_per_epoch
            ):
                if first_bad is not None and int(first_bad) >= 0:  # never save a NaN model
                    raise NonFiniteLoss(f"the loss became non-finite at step {int(first_bad)}")
                save_last(i + 1)
                log(f"stopped at step {step}; saved {last_path} (resume with --resume)")
                return {**metrics, "interrupted": stop.requested}
            skip = 0
            train_loss = float(loss_sum) / max(1, n_steps)
            seconds = time.perf_counter() - t0
            metrics, conf = validate(
                model,
                val_data,
                xp,
                cfg,
                mean,
                std,
                num_classes,
                ignore_index,
                list(train_data.class_names),
                comm,
            )
            epoch += 1
            record = {
                "epoch": epoch,
                "step": step,
                "train_loss": train_loss,
                "val_miou": metrics["miou"],
                "val_pixel_accuracy": metrics["pixel_accuracy"],
                "val_iou": metrics["iou"],
                "val_dice": metrics["dice"],
                "images_per_s": n_steps * cfg.batch_size / seconds,
                "lr": opt.lr,
            }
            history.append(record)
            improved = metrics["miou"] > best
            best = max(best, metrics["miou"])
            if improved and main:
                save_checkpoint(
                    best_path,
                    model.state_dict(),
                    {**meta, "train": {"epoch": epoch, "step": step, "val_miou": metrics["miou"]}},
                )
            save_last(0)
            if main:
                lines = "".join(json.dumps(h) + "\n" for h in history)
                atomic_write(out / "metrics.jsonl", lambda f, s=lines: f.write(s.encode()))
                plot_curves(history, out / "curves.png")
            log(
                f"epoch {epoch}/{cfg.epochs}  loss {train_loss:.4f}  val mIoU {metrics['miou']:.4f}"
                f"  pixel acc {metrics['pixel_accuracy']:.4f}  {record['images_per_s']:.1f} img/s"
                + ("  (best)" if improved else "")
            )
            if on_epoch is not None and on_epoch(epoch, record):
                log(f"stopped after epoch {epoch} at the caller's request")
                break
            if cfg.max_steps and step >= cfg.max_steps:
                break
    if main:
        _preview(model, val_data, xp, mean, std, out / "predictions.png", train_data.class_names)
    # A Ctrl-C during the last validation, or in an epoch the caller stopped, still counts.
    return {**metrics, "interrupted": stop.requested}


def validate(
    model: UNet,
    data: Any,
    xp: Any,
    cfg: TrainConfig,
    mean: Any,
    std: Any,
    num_classes: int,
    ignore_index: int | None,
    class_names: list[str],
    comm: Communicator | None = None,
) -> tuple[dict[str, Any], Any]:
    """Metrics of ``model`` on a split, from one confusion matrix accumulated on the device.

    With several ranks, each scores its own share of the split and the matrices are summed.
    """
    comm = comm or Communicator()
    model.eval()
    conf = xp.zeros((num_classes, num_classes), dtype=xp.int64)
    if isinstance(data.images, np.ndarray):
        loader = DeviceLoader.for_eval(
            data, xp, cfg.batch_size, mean=mean, std=std, rank=comm.rank, world_size=comm.size
        )
        for x, y, _ in loader.epoch(0):
            if len(x):  # with several ranks, a rank's share of the last batch can be empty
                pred = model.infer(x).argmax(axis=1)
                conf += confusion_matrix(pred, y, num_classes, ignore_index)
    else:  # native sizes (crop training): one image at a time, at full resolution
        mine = list(range(comm.rank, len(data.images), comm.size))
        preds = predict_classes(model, [data.images[i] for i in mine], xp, mean, std)
        for pred, i in zip(preds, mine, strict=True):
            mask = xp.asarray(data.masks[i])
            conf += confusion_matrix(xp.asarray(pred), mask, num_classes, ignore_index)
    conf = comm.allreduce_sum(conf)
    model.release()
    model.train()
    return metrics_from_confusion(conf, class_names), to_numpy(conf)


def _silent(*args: Any, **kwargs: Any) -> None:
    pass


def _batchnorms(model: UNet) -> list[Any]:
    """Every BatchNorm2d in the model, depth first."""
    from minunet.layers import BatchNorm2d

    found = []

    def walk(layer: Any) -> None:
        if isinstance(layer, BatchNorm2d):
            found.append(layer)
        for child in layer.children().values():
            walk(child)

    walk(model)
    return found


def _elastic(
    x: Any, y: Any, w: Any, cfg: TrainConfig, epoch: int, i: int, xp: Any
) -> tuple[Any, Any, Any]:
    """The U-Net paper's elastic deformation of one batch (a seeded function of the step)."""
    from minunet.data.elastic import elastic_deform

    rng = xp.random.default_rng(((cfg.seed * 100_003 + epoch) * 1_000_003 + i) % 2**63)
    nhwc = x.transpose(0, 2, 3, 1)
    warped, y, w = elastic_deform(nhwc, y, w, rng, sigma=cfg.elastic)
    return xp.ascontiguousarray(warped.transpose(0, 3, 1, 2)).astype(x.dtype), y, w


def _preview(
    model: UNet, data: Any, xp: Any, mean: Any, std: Any, path: Path, class_names: list[str]
) -> None:
    """predictions.png: image | truth | prediction for the first validation samples."""
    n = min(PREVIEW_SAMPLES, len(data))
    if n == 0:
        return
    images = data.images[:n]
    preds = predict_classes(model, images, xp, mean, std)
    truths = list(data.masks[:n])
    if isinstance(images, np.ndarray):
        plot_predictions(images, np.stack(truths), np.stack(preds), path, list(class_names))
    else:
        # native sizes differ: show each at its own size via a list
        plot_predictions(images, truths, preds, path, list(class_names))
    model.train()
