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

from minunet.core.backend import backend_name, get_backend, seed_everything, to_numpy
from minunet.data.augment import AugmentConfig
from minunet.data.loader import DEFAULT_MEAN, DEFAULT_STD, DeviceLoader
from minunet.data.sources import DataOptions, load_splits
from minunet.errors import CheckpointError, MinunetError, RunFailure
from minunet.infer.inference import accepts_as_batch, predict_classes
from minunet.io.atomic import atomic_write
from minunet.io.checkpoint import load_checkpoint, save_checkpoint
from minunet.io.runlock import RunLock
from minunet.model import UNet
from minunet.nn.concat import centre_crop_box
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.metrics import confusion_matrix, metrics_from_confusion
from minunet.nn.optim import clip_grad_norm, learning_rate, make_optimizer
from minunet.train.distributed import Communicator, make_communicator
from minunet.train.plots import plot_curves, plot_predictions

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


class NonFiniteLoss(RunFailure):
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
    xp, comm = _start_backend(cfg)
    main = comm.is_main  # rank 0 alone logs and writes files
    if not main:
        log = _silent
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    # One run per --out at a time; released when train returns or raises (and at exit).
    _lock = RunLock(out, log) if main else None
    seed_everything(cfg.seed, xp)

    data = _load_data(cfg, xp, comm)
    model, opt, loss_fn = _build_model(cfg, data, xp, comm)
    meta = _run_meta(cfg, data, model)
    run = _Run(out, meta, main)
    if cfg.resume:
        run.resume(model, opt, log)
    elif main:
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    log(
        f"training on {len(data.train)} images, validating on {len(data.val)}, "
        f"{model.num_parameters():,} parameters, backend {backend_name(xp)}"
        + (f", {comm.size} processes" if comm.size > 1 else "")
    )

    steps_per_epoch = len(data.loader)
    metrics: dict[str, Any] = {}
    with _StopFlag() as stop:
        while run.epoch < cfg.epochs:
            done = _train_epoch(cfg, run, model, opt, loss_fn, data.loader, comm, stop, xp)
            if stop.requested or (
                cfg.max_steps and run.step >= cfg.max_steps and done.batches < steps_per_epoch
            ):
                # Stopped inside the epoch: last.npz records the batch, so --resume
                # continues from the next one. Never save a NaN model:
                if done.first_bad is not None and int(done.first_bad) >= 0:
                    raise NonFiniteLoss(f"the loss became non-finite at step {int(done.first_bad)}")
                run.save_last(model, opt, done.batches)
                log(f"stopped at step {run.step}; saved {run.last_path} (resume with --resume)")
                return {**metrics, "interrupted": stop.requested}
            # The loss is read back before the clock stops: on a GPU that read waits for the
            # epoch's queued work, which the images/s should include.
            train_loss = float(done.loss_sum) / max(1, done.n_steps)
            seconds = time.perf_counter() - done.t0
            metrics, _ = validate(
                model,
                data.val,
                xp,
                cfg,
                data.mean,
                data.std,
                data.num_classes,
                data.ignore_index,
                list(data.train.class_names),
                comm,
            )
            images_per_s = done.n_steps * cfg.batch_size / seconds
            record = run.end_epoch(model, opt, metrics, train_loss, images_per_s, cfg.epochs, log)
            if on_epoch is not None and on_epoch(run.epoch, record):
                log(f"stopped after epoch {run.epoch} at the caller's request")
                break
            if cfg.max_steps and run.step >= cfg.max_steps:
                break
    if main:
        _preview(
            model,
            data.val,
            xp,
            data.mean,
            data.std,
            out / "predictions.png",
            data.train.class_names,
        )
    # A Ctrl-C during the last validation, or in an epoch the caller stopped, still counts.
    return {**metrics, "interrupted": stop.requested}


def _start_backend(cfg: TrainConfig) -> tuple[Any, Communicator]:
    """The array module (NumPy or CuPy) and the communicator between the processes (a
    one-process stand-in when the run was not launched with ``mpiexec``)."""
    if cfg.tf32:
        if cfg.backend != "cupy":
            raise MinunetError("--tf32 is a GPU setting: use it with --backend cupy")
        import os

        os.environ["CUPY_TF32"] = "1"  # read by CuPy before its first matmul
    xp = get_backend(cfg.backend)
    comm = make_communicator(
        cfg.distributed, cfg.comm if cfg.backend == "cupy" else "mpi", cfg.backend
    )
    return xp, comm


@dataclass
class _Data:
    """The two splits, the loader of the training batches, and what the loss, the metrics
    and the checkpoints need to know about the labels and the normalisation."""

    train: Any
    val: Any
    loader: Any  # DeviceLoader or CropLoader: .epoch(e) yields (x, y, w) batches
    num_classes: int
    ignore_index: int | None
    mean: Any
    std: Any


def _load_data(cfg: TrainConfig, xp: Any, comm: Communicator) -> _Data:
    """Load the splits and build this rank's loader of (augmented) training batches.

    With ``--crop`` the splits are loaded at their native sizes and the loader cuts random
    N x N crops; without it they are loaded as ``cfg.data`` says (resized to its
    ``image_size``) and batched whole.
    """
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
    return _Data(train_data, val_data, loader, num_classes, ignore_index, mean, std)


def _build_model(
    cfg: TrainConfig, data: _Data, xp: Any, comm: Communicator
) -> tuple[UNet, Any, SoftmaxCrossEntropy]:
    """The U-Net on the backend, its optimiser and the loss.

    Every rank builds the model and then takes rank 0's weights, so the replicas start with
    equal weights; the averaged gradients of every step then keep them equal.
    """
    model = UNet(
        data.train.in_channels,
        data.num_classes,
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

        weights = xp.asarray(class_weights(data.train, cfg.class_weights))
    loss_fn = SoftmaxCrossEntropy(weights, ignore_index=data.ignore_index, check_targets=False)
    return model, opt, loss_fn


def _run_meta(cfg: TrainConfig, data: _Data, model: UNet) -> dict[str, Any]:
    """What config.json and every checkpoint carry besides the weights: how to rebuild the
    model, how its inputs were prepared and what its classes are, and every setting."""
    return {
        "model": model.config,
        "data": {
            "source": cfg.data.data,
            "class_names": list(data.train.class_names),
            "mask_values": [int(v) for v in data.train.mask_values],
            "ignore_index": data.ignore_index,
            "in_channels": data.train.in_channels,
            "image_size": cfg.data.image_size,
            "normalization": {"mean": data.mean, "std": data.std},
        },
        "config": json.loads(json.dumps(asdict(cfg))),
    }


@dataclass
class _Run:
    """Where a run stands, and the files in ``out`` that record it.

    ``epoch`` (epochs finished), ``step`` (optimiser steps taken), ``skip`` (batches of the
    current epoch already trained on, after a mid-epoch resume), ``best`` (the best
    validation mean IoU so far) and ``history`` (one record per finished epoch) are what
    last.npz saves beside the model and the optimiser, so a resumed run continues exactly
    where this one stopped. Only rank 0 (``main``) writes files.
    """

    out: Path
    meta: dict[str, Any]
    main: bool
    epoch: int = 0
    step: int = 0
    skip: int = 0
    best: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_path(self) -> Path:
        return self.out / "last.npz"

    @property
    def best_path(self) -> Path:
        return self.out / "best.npz"

    def resume(self, model: UNet, opt: Any, log: Any) -> None:
        """Load the model, the optimiser and the position from last.npz (every rank)."""
        last_path = self.last_path
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
        self.epoch, self.step, self.skip = state["epoch"], state["step"], state["batch"]
        self.best, self.history = state["best_miou"], state["history"]
        log(f"resuming {last_path}: epoch {self.epoch + 1}, step {self.step}")

    def save_last(self, model: UNet, opt: Any, batch_in_epoch: int) -> None:
        """last.npz: model, optimiser and position; ``batch_in_epoch`` batches of epoch
        ``self.epoch`` are done (0 at the end of an epoch, which has already been counted)."""
        if not self.main:
            return
        train_state = {
            "epoch": self.epoch,
            "step": self.step,
            "batch": batch_in_epoch,
            "best_miou": self.best,
            "history": self.history,
        }
        save_checkpoint(
            self.last_path,
            model.state_dict(),
            {**self.meta, "train": train_state},
            opt.state_dict(),
        )

    def end_epoch(
        self,
        model: UNet,
        opt: Any,
        metrics: dict[str, Any],
        train_loss: float,
        images_per_s: float,
        epochs: int,
        log: Any,
    ) -> dict[str, Any]:
        """Count a finished and validated epoch: add its record to the history, save
        best.npz when the mean IoU improved and last.npz always, rewrite metrics.jsonl and
        curves.png, and log one line. Returns the record (one line of metrics.jsonl)."""
        self.epoch += 1
        self.skip = 0  # the next epoch starts at its first batch
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_loss,
            "val_miou": metrics["miou"],
            "val_pixel_accuracy": metrics["pixel_accuracy"],
            "val_iou": metrics["iou"],
            "val_dice": metrics["dice"],
            "images_per_s": images_per_s,
            "lr": opt.lr,
        }
        self.history.append(record)
        improved = metrics["miou"] > self.best
        self.best = max(self.best, metrics["miou"])
        if improved and self.main:
            save_checkpoint(
                self.best_path,
                model.state_dict(),
                {
                    **self.meta,
                    "train": {"epoch": self.epoch, "step": self.step, "val_miou": metrics["miou"]},
                },
            )
        self.save_last(model, opt, 0)
        if self.main:
            lines = "".join(json.dumps(h) + "\n" for h in self.history)
            atomic_write(self.out / "metrics.jsonl", lambda f, s=lines: f.write(s.encode()))
            plot_curves(self.history, self.out / "curves.png")
        log(
            f"epoch {self.epoch}/{epochs}  loss {train_loss:.4f}  val mIoU {metrics['miou']:.4f}"
            f"  pixel acc {metrics['pixel_accuracy']:.4f}  {images_per_s:.1f} img/s"
            + ("  (best)" if improved else "")
        )
        return record


@dataclass
class _EpochSteps:
    """What one pass over an epoch's training batches leaves for the end of the epoch."""

    batches: int  # batches of the epoch gone through, the skipped ones included
    n_steps: int  # optimiser steps taken in this pass
    loss_sum: Any  # 0-d array on the device: the sum of their losses
    first_bad: Any  # None (no step), or 0-d on the device: first non-finite step, else -1
    t0: float  # time.perf_counter() when the pass began


def _train_epoch(
    cfg: TrainConfig,
    run: _Run,
    model: UNet,
    opt: Any,
    loss_fn: SoftmaxCrossEntropy,
    loader: Any,
    comm: Communicator,
    stop: _StopFlag,
    xp: Any,
) -> _EpochSteps:
    """Train on the batches of epoch ``run.epoch``, from batch ``run.skip`` on, counting the
    steps in ``run.step``. Stops after the step in which Ctrl-C was pressed or the one that
    reaches ``cfg.max_steps``.

    The losses stay on the device. Once per ``cfg.log_every`` steps (and at the epoch's
    last step) one number is read back: the first step whose loss was not finite, which
    raises NonFiniteLoss before anything is saved; otherwise the progress bar shows the
    mean loss.
    """
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    model.train()
    loss_sum = xp.zeros((), dtype=xp.float32)
    first_bad = None
    n_steps, t0 = 0, time.perf_counter()
    bar = _progress(
        steps_per_epoch, run.skip, cfg.progress and run.main, f"epoch {run.epoch + 1}/{cfg.epochs}"
    )
    for i, batch in enumerate(loader.epoch(run.epoch)):
        if i < run.skip:  # resumed mid-epoch: same batches, skipped
            continue
        x, y, w = batch
        if cfg.elastic > 0:
            x, y, w = _elastic(x, y, w, cfg, run.epoch, i, xp)
        opt.lr = learning_rate(
            run.step,
            total_steps,
            cfg.lr,
            cfg.schedule,
            warmup,
            cfg.step_size_epochs * steps_per_epoch,
            cfg.gamma,
        )
        loss = _train_step(model, opt, loss_fn, x, y, w, cfg, comm, stop)
        run.step += 1
        n_steps += 1
        loss_sum += loss
        finite = xp.isfinite(loss)
        if first_bad is None:
            first_bad = xp.where(finite, -1, run.step)
        else:
            first_bad = xp.where((first_bad < 0) & ~finite, run.step, first_bad)
        if n_steps % cfg.log_every == 0 or i + 1 == steps_per_epoch:
            bad = int(first_bad)  # the one host read per log interval
            if bad >= 0:
                bar.close()
                raise NonFiniteLoss(
                    f"the loss became non-finite at step {bad}; stopped without "
                    f"saving. {run.last_path.name} holds the last good state: lower "
                    "--lr or add --clip-grad"
                )
            rate = n_steps * cfg.batch_size / (time.perf_counter() - t0)
            bar.set_postfix(
                loss=f"{float(loss_sum) / n_steps:.4f}",
                lr=f"{opt.lr:.2e}",
                img_s=f"{rate:.1f}",
            )
        bar.update(1)
        if stop.requested or (cfg.max_steps and run.step >= cfg.max_steps):
            break
    bar.close()
    return _EpochSteps(i + 1, n_steps, loss_sum, first_bad, t0)


def _train_step(
    model: UNet,
    opt: Any,
    loss_fn: SoftmaxCrossEntropy,
    x: Any,
    y: Any,
    w: Any,
    cfg: TrainConfig,
    comm: Communicator,
    stop: _StopFlag,
) -> Any:
    """One optimiser step on one batch (x: (B, C, H, W), y and w: (B, H, W)), at the
    learning rate already in ``opt.lr``. Returns the loss, a 0-d array still on the device.

    With several ranks the gradients are averaged before the step, and the stop flag is
    combined over the ranks on the way.
    """
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
        stops = comm.average_gradients(model.parameters(), extra=[float(stop.requested)])
        stop.requested = float(stops[0]) > 0
    if cfg.clip_grad:
        clip_grad_norm(model.parameters(), cfg.clip_grad)
    opt.step()
    return loss


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
    if accepts_as_batch(model, data.images):
        loader = DeviceLoader.for_eval(
            data, xp, cfg.batch_size, mean=mean, std=std, rank=comm.rank, world_size=comm.size
        )
        for x, y, _ in loader.epoch(0):
            if len(x):  # with several ranks, a rank's share of the last batch can be empty
                pred = model.infer(x).argmax(axis=1)
                conf += confusion_matrix(pred, y, num_classes, ignore_index)
    else:  # crop training: one image at a time at native size (tiled for a valid net)
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
    from minunet.nn import BatchNorm2d

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
