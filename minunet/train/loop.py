"""The training loop: batches in, gradients, an optimiser step; validation every epoch.

One step, in the order the maths happens:

    logits = model.forward(x)                  (B, K, H, W)
    loss   = cross_entropy(logits, y, w)       a 0-d array on the backend
    model.backward(loss_fn.backward())         fills every Parameter.grad
    optimizer.step()                           p -= lr * update(grad)

A run, as ``train`` reads:

    check the configuration             (before anything is loaded)
    start the backend, load the data, build the model, resume if asked
    until _stop_reason says why not:    (Ctrl-C, --max-steps, a non-finite loss, the
        train on the epoch's batches     caller, or all epochs done; asked after
        validate, record the epoch       every step and every epoch)

Nothing in a step reads a number back from the GPU: the loss is summed on the device and
read once per ``log_every`` steps, validation counts go into a confusion matrix on the
device and are read once per epoch. With several processes (``minunet.train.distributed``)
those reads are summed over the ranks, so every logged number (train_loss, img/s, lr)
means what it means for one process on the whole global batch.

What a run leaves in ``out``: ``config.json``; ``metrics.jsonl`` (one line per epoch);
``last.npz`` (model + optimiser, to resume) and ``best.npz`` (the best validation mean
IoU so far); ``curves.png``; ``predictions.png``. Every file is written atomically, so a
crash or Ctrl-C leaves the last good one. Ctrl-C stops after the current step, saves and
exits; ``resume=True`` continues from ``last.npz`` and, on NumPy, gives bit-for-bit the
run that was never interrupted, its metrics.jsonl included (but for the clock's img/s).
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

from minunet.accel import accelerate
from minunet.core.backend import backend_name, get_backend, seed_everything, to_numpy
from minunet.data.augment import AugmentConfig
from minunet.data.loader import DEFAULT_MEAN, DEFAULT_STD, DeviceLoader
from minunet.data.sources import DataOptions, load_native_val, load_splits
from minunet.errors import CheckpointError, MinunetError, RunFailure
from minunet.infer.inference import accepts_as_batch, predict_classes, predict_logits
from minunet.infer.scale import training_scale, upsampled_classes
from minunet.io.atomic import atomic_write
from minunet.io.checkpoint import load_checkpoint, save_checkpoint
from minunet.io.runlock import RunLock
from minunet.model import PADDINGS, UNet, geometry
from minunet.nn.concat import centre_crop_box
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.metrics import confusion_matrix, metrics_from_confusion
from minunet.nn.optim import clip_grad_norm, learning_rate, make_optimizer
from minunet.nn.sync_batchnorm import use_sync_batchnorm
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
    class_weights: str = "sqrt"  # sqrt | auto | none | w0,w1,... (data/class_weights.py)
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
    """Ctrl-C sets ``requested``; the loop asks ``_stop_reason`` between steps, so no step
    is half-done. A second Ctrl-C interrupts at once.

    A Ctrl-C reaches the ranks of a distributed run at different moments, so they act on
    ``agreed``: the flag combined over the ranks when they last exchanged it (each training
    step's gradient allreduce carries it; ``agree`` after a validation). In one process
    ``agreed`` is ``requested``.
    """

    def __init__(self, comm: Communicator) -> None:
        self.requested = False
        self.comm = comm
        self._agreed = False
        self._previous: Any = None

    @property
    def agreed(self) -> bool:
        return self.requested if self.comm.size == 1 else self._agreed

    def agree(self, combined: Any = None) -> None:
        """Combine the flag over the ranks (set if any rank's is). ``combined``: the flag
        already summed over the ranks (it rode along with the gradients)."""
        if self.comm.size == 1:
            return
        if combined is None:
            combined = self.comm.allreduce_sum(np.array([float(self.requested)]))
        self._agreed = float(to_numpy(combined)[0]) > 0

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
    ``interrupted``: True when Ctrl-C was pressed during the run (it then stopped after the
    step, or the validation, it was in).

    ``on_epoch(epoch, record)`` is called after each epoch's validation with the
    metrics.jsonl record (1-based epoch); returning True stops the run there (the
    hyper-parameter search uses it to prune a trial).
    """
    check_config(cfg)  # a wrong setting fails here, before any data is loaded
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

    metrics: dict[str, Any] = {}
    with _StopFlag(comm) as stop:
        reason = _stop_reason(cfg, run, stop)
        while reason is None:
            tally = _train_epoch(cfg, run, model, opt, loss_fn, data.loader, comm, stop, xp)
            totals = tally.read()
            reason = _stop_reason(cfg, run, stop, totals)
            if reason == NON_FINITE:  # never save a model that saw a non-finite loss
                raise NonFiniteLoss(
                    f"the loss became non-finite at step {totals.first_bad}; stopped without "
                    f"saving. {run.last_path.name} holds the last good state: lower --lr or "
                    "add --clip-grad"
                )
            inside_epoch = tally.batches < len(data.loader)
            if reason == INTERRUPTED or (reason == MAX_STEPS and inside_epoch):
                # Stopped before the epoch's validation: last.npz records the batch and the
                # epoch's totals so far, so --resume continues from the next batch (or goes
                # straight to the validation) and logs the epoch as an uninterrupted run.
                run.save_last(model, opt, tally.batches, totals)
                log(f"stopped at step {run.step}; saved {run.last_path} (resume with --resume)")
                return {**metrics, "interrupted": stop.agreed}
            metrics = validate(
                model,
                data.val,
                xp,
                batch_size=cfg.batch_size,
                mean=data.mean,
                std=data.std,
                ignore_index=data.ignore_index,
                comm=comm,
                native_masks=data.val_masks_native,
                loss_fn=loss_fn,
            )
            record = run.end_epoch(model, opt, metrics, totals, cfg.epochs, log)
            asked = on_epoch is not None and on_epoch(run.epoch, record)
            stop.agree()  # a Ctrl-C during the validation
            reason = _stop_reason(cfg, run, stop, totals, caller_asked=asked)
    if reason == INTERRUPTED:  # during a validation; last.npz was saved after it
        log(f"stopped at step {run.step}; saved {run.last_path} (resume with --resume)")
        return {**metrics, "interrupted": True}
    if reason == CALLER:
        log(f"stopped after epoch {run.epoch} at the caller's request")
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
    return {**metrics, "interrupted": stop.agreed}


# Why a run stops (``_stop_reason``).
NON_FINITE, INTERRUPTED, MAX_STEPS, CALLER, EPOCHS = (
    "non-finite loss",
    "Ctrl-C",
    "--max-steps",
    "caller",
    "all epochs done",
)


def _stop_reason(
    cfg: TrainConfig,
    run: _Run,
    stop: _StopFlag,
    totals: _Totals | None = None,
    caller_asked: bool = False,
) -> str | None:
    """The one place that decides whether the run stops here, and why (None: go on).

    Asked after every step, after every pass over an epoch's batches and after every
    epoch's validation. ``totals``: the latest numbers read back from the device, when
    there are new ones (a non-finite loss is only known then). Every rank decides the
    same: the stop flag and the totals are combined over the ranks.
    """
    if totals is not None and totals.first_bad >= 0:
        return NON_FINITE
    if stop.agreed:
        return INTERRUPTED
    if cfg.max_steps and run.step >= cfg.max_steps:
        return MAX_STEPS
    if caller_asked:
        return CALLER
    if run.epoch >= cfg.epochs:
        return EPOCHS
    return None


def check_config(cfg: TrainConfig) -> None:
    """Raise MinunetError for settings that cannot train, before anything is loaded."""
    if cfg.padding not in PADDINGS:
        raise MinunetError(f"--padding must be one of {', '.join(PADDINGS)}, got {cfg.padding!r}")
    if cfg.padding == "valid" and not cfg.crop:
        raise MinunetError(
            "padding='valid' shrinks the output; train it with --crop N "
            "(folder/isbi2012 data) or use --padding same"
        )
    side, option = (cfg.crop, "--crop") if cfg.crop else (cfg.data.image_size, "--image-size")
    if side is not None:
        try:
            geometry.check_input_size(side, cfg.depth, cfg.padding)
        except MinunetError as exc:
            raise MinunetError(f"{option} {side}: {exc}") from None


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
    loader: DeviceLoader  # .epoch(e, start) yields this rank's (x, y, w) batches
    num_classes: int
    ignore_index: int | None
    mean: Any
    std: Any
    # The validation masks (H_i, W_i) at native size when ``val`` is resized, else None.
    val_masks_native: list[np.ndarray] | None = None


def _load_data(cfg: TrainConfig, xp: Any, comm: Communicator) -> _Data:
    """Load the splits and build this rank's loader of (augmented) training batches.

    With ``--crop`` the splits are loaded at their native sizes and the loader cuts random
    N x N crops; without it they are loaded as ``cfg.data`` says (resized to its
    ``image_size``) and batched whole, and the validation split is loaded a second time at
    its native size (``load_native_val``), which its metrics are counted at, as ``predict``
    and ``evaluate`` count them.
    """
    data_opts = cfg.data
    if cfg.crop:
        data_opts = DataOptions(**{**asdict(cfg.data), "image_size": None})
    train_data, val_data = load_splits(data_opts)
    num_classes = train_data.num_classes
    mean, std = DEFAULT_MEAN, DEFAULT_STD
    augment = AugmentConfig(
        enabled=cfg.augment, flip=cfg.flip, scale=(cfg.scale_min, 1.0), jitter=cfg.jitter
    )
    # Native-size crops or the resized split; every augmentation, elastic included.
    loader = DeviceLoader(
        train_data,
        xp,
        cfg.batch_size,
        crop=cfg.crop or None,
        augment=augment,
        elastic=cfg.elastic,
        seed=cfg.seed,
        mean=mean,
        std=std,
        rank=comm.rank,
        world_size=comm.size,
    )
    val_native = None if cfg.crop else load_native_val(cfg.data)
    if val_native is not None and list(val_native.names) != list(val_data.names):
        raise MinunetError("the native-size validation split does not match the resized one")
    masks = None if val_native is None else val_native.masks  # its images are not needed
    # Crops pad small samples with the ignore label, which the loss must then skip.
    return _Data(train_data, val_data, loader, num_classes, loader.ignore_index, mean, std, masks)


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
        use_sync_batchnorm(model, comm.allreduce_sum)
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.momentum)
    accelerate(opt)  # the optimiser's and the loss's fast paths, as UNet takes its layers'
    weights = None
    if cfg.class_weights != "none":
        from minunet.data.class_weights import class_weights

        weights = xp.asarray(class_weights(data.train, cfg.class_weights))
    loss_fn = SoftmaxCrossEntropy(weights, ignore_index=data.ignore_index, check_targets=False)
    accelerate(loss_fn)
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
            # How the net saw its images, which predict and evaluate repeat.
            "input": training_scale(cfg.data.image_size, cfg.crop).record(),
        },
        "config": json.loads(json.dumps(asdict(cfg))),
    }


@dataclass
class _Run:
    """Where a run stands, and the files in ``out`` that record it.

    ``epoch`` (epochs finished), ``step`` (optimiser steps taken), ``skip`` (batches of the
    current epoch already trained on, after a mid-epoch resume), ``partial`` (those
    batches' totals, for the epoch's log line), ``best`` (the best validation mean IoU so
    far) and ``history`` (one record per finished epoch) are what last.npz saves beside the
    model and the optimiser, so a resumed run continues exactly where this one stopped.
    Only rank 0 (``main``) writes files.
    """

    out: Path
    meta: dict[str, Any]
    main: bool
    epoch: int = 0
    step: int = 0
    skip: int = 0
    partial: _Totals | None = None
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
        # A checkpoint from before the totals were kept logs the resumed part alone.
        partial = state.get("partial_epoch")
        self.partial = None if partial is None else _Totals(**partial)
        log(f"resuming {last_path}: epoch {self.epoch + 1}, step {self.step}")

    def save_last(
        self, model: UNet, opt: Any, batch_in_epoch: int, partial: _Totals | None = None
    ) -> None:
        """last.npz: model, optimiser and position; ``batch_in_epoch`` batches of epoch
        ``self.epoch`` are done (0 at the end of an epoch, which has already been counted),
        and ``partial`` holds their totals."""
        if not self.main:
            return
        train_state = {
            "epoch": self.epoch,
            "step": self.step,
            "batch": batch_in_epoch,
            "partial_epoch": None if partial is None else asdict(partial),
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
        totals: _Totals,
        epochs: int,
        log: Any,
    ) -> dict[str, Any]:
        """Count a finished and validated epoch: add its record to the history, save
        best.npz when the mean IoU improved and last.npz always, rewrite metrics.jsonl and
        curves.png, and log one line. Returns the record (one line of metrics.jsonl)."""
        self.epoch += 1
        self.skip, self.partial = 0, None  # the next epoch starts at its first batch
        train_loss, images_per_s = totals.loss, totals.images_per_s
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_loss,
            "val_loss": metrics["loss"],
            "val_miou": metrics["miou"],
            "val_pixel_accuracy": metrics["pixel_accuracy"],
            "val_iou": metrics["iou"],
            "val_dice": metrics["dice"],
            "images_per_s": images_per_s,
            "lr": totals.lr,
            "val_collapsed": False,
        }
        warning = collapse_warning(metrics)
        if warning is not None:
            record["val_collapsed"] = True
            if not any(h.get("val_collapsed") for h in self.history):  # said once per run
                record["warning"] = warning
                log(f"warning: {warning}")
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
            f"epoch {self.epoch}/{epochs}  loss {train_loss:.4f}  val loss {metrics['loss']:.4f}"
            f"  val mIoU {metrics['miou']:.4f}"
            f"  pixel acc {metrics['pixel_accuracy']:.4f}  {images_per_s:.1f} img/s"
            + ("  (best)" if improved else "")
        )
        return record


@dataclass
class _Totals:
    """An epoch's training so far, over every rank: what its log line reports.

    With N ranks each step has N losses, each the mean over one rank's equal share of the
    global batch, so the global batch's loss is their mean: the summed losses over their
    count, the same number one process computes on the whole batch.
    """

    loss_sum: float  # the losses summed over steps and ranks
    losses: int  # how many were summed (steps x ranks)
    images: int  # images trained on, over all ranks
    seconds: float  # wall time of the epoch's training steps (rank 0's clock)
    lr: float  # the learning rate of the last step (the same on every rank)
    first_bad: int = -1  # the first step whose loss was not finite, or -1

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.losses)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class _Tally:
    """The running totals of one pass over an epoch's batches.

    Between reads they stay on the device, so a step never waits for the GPU. ``read``
    brings them to the host, summed over the ranks in one small allreduce; it is called
    at the log intervals and at the end of the pass, by every rank at the same steps.
    ``start``: the epoch's totals from before a resume, counted once (on rank 0).
    """

    def __init__(self, xp: Any, comm: Communicator, start: _Totals | None) -> None:
        self.xp, self.comm = xp, comm
        self.start = start or _Totals(0.0, 0, 0, 0.0, 0.0)
        if not comm.is_main:  # the sums from before a resume are rank 0's to count
            self.start = _Totals(0.0, 0, 0, 0.0, self.start.lr)
        self.lr = self.start.lr
        # float32 as the per-step losses, so a resumed sum continues bit for bit.
        self.loss_sum = xp.asarray(self.start.loss_sum, dtype=xp.float32)
        self.first_bad = xp.asarray(-1)  # 0-d on the device: first non-finite step, or -1
        self.steps = self.images = 0
        self.batches = 0  # the epoch's batches gone through, the skipped ones included
        self.t0 = time.perf_counter()
        self._read: tuple[int, _Totals] | None = None

    def add(self, loss: Any, step: int, images: int, lr: float) -> None:
        """Count one step: its loss (0-d on the device), number, images and learning rate."""
        xp = self.xp
        self.loss_sum += loss
        self.first_bad = xp.where((self.first_bad < 0) & ~xp.isfinite(loss), step, self.first_bad)
        self.steps += 1
        self.images += images
        self.lr = lr

    def read(self) -> _Totals:
        """The totals so far over all ranks (read once per step count: a second call is free)."""
        if self._read is not None and self._read[0] == self.steps:
            return self._read[1]
        comm, start = self.comm, self.start
        # The first non-finite step of each rank, in its own slot (0: none), so that the
        # sum over the ranks keeps them apart.
        xp = self.xp
        # The one host read (it waits for the device's queue): the loss sum and the first bad
        # step travel together, in float64, which holds both exactly.
        loss_sum, first_bad = to_numpy(
            xp.stack([self.loss_sum.astype(xp.float64), self.first_bad.astype(xp.float64)])
        ).tolist()
        numbers = np.zeros(3 + comm.size)
        numbers[0] = loss_sum
        numbers[1] = start.losses + self.steps
        numbers[2] = start.images + self.images
        numbers[3 + comm.rank] = int(first_bad) + 1
        # The clock stops after the read: on a GPU the read waits for the queued work,
        # which the images/s should include.
        seconds = start.seconds + time.perf_counter() - self.t0
        numbers = to_numpy(comm.allreduce_sum(numbers))
        bad = [int(b) - 1 for b in numbers[3:] if b > 0]
        totals = _Totals(
            float(numbers[0]),
            int(numbers[1]),
            int(numbers[2]),
            seconds,
            self.lr,
            min(bad, default=-1),
        )
        self._read = (self.steps, totals)
        return totals


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
) -> _Tally:
    """Train on the batches of epoch ``run.epoch``, from batch ``run.skip`` on, counting the
    steps in ``run.step``, until the epoch ends or ``_stop_reason`` says stop (asked after
    every step). Returns the pass's tally, ``batches`` being the epoch's batches gone
    through, the skipped ones included.

    The losses stay on the device; once per ``cfg.log_every`` steps the totals are read
    back (a non-finite loss is noticed then) and shown on the progress bar.
    """
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    model.train()
    tally = _Tally(xp, comm, run.partial)
    bar = _progress(
        steps_per_epoch, run.skip, cfg.progress and run.main, f"epoch {run.epoch + 1}/{cfg.epochs}"
    )
    batches = run.skip  # the epoch's batches gone through, the skipped ones included
    # Resumed mid-epoch: the loader skips the batches already trained on, unbuilt.
    for x, y, w in loader.epoch(run.epoch, start=run.skip):
        batches += 1
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
        tally.add(loss, run.step, len(x), opt.lr)
        totals = None
        if tally.steps % cfg.log_every == 0:
            totals = tally.read()
            bar.set_postfix(
                loss=f"{totals.loss:.4f}", lr=f"{opt.lr:.2e}", img_s=f"{totals.images_per_s:.1f}"
            )
        bar.update(1)
        if _stop_reason(cfg, run, stop, totals) is not None:
            break
    bar.close()
    tally.batches = batches
    return tally


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
        stop.agree(comm.average_gradients(model.parameters(), extra=[float(stop.requested)]))
    if cfg.clip_grad:
        clip_grad_norm(model.parameters(), cfg.clip_grad)
    opt.step()
    return loss


def validate(
    model: UNet,
    split: Any,
    xp: Any,
    *,
    batch_size: int,
    mean: Any,
    std: Any,
    ignore_index: int | None,
    comm: Communicator | None = None,
    native_masks: list[np.ndarray] | None = None,
    loss_fn: SoftmaxCrossEntropy | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on a split (``nn.metrics.metrics_from_confusion``), from one
    confusion matrix accumulated on the device and read once, as ``predict`` would score
    them (``minunet.infer.scale``).

    Images the model takes as one batch go through ``batch_size`` at a time (normalised
    with ``mean`` and ``std``); others (crop training: native sizes) one at a time, tiled
    for a valid-padding net. ``native_masks``: the split's masks (H_i, W_i) at native size
    when its images were resized for training; the logits are then resized back to each
    native size before the argmax and scored against these, as ``predict`` does.
    With several ranks, each scores its own share of the split and the matrices are summed.

    Besides the metrics: ``loss``, the mean per image of ``loss_fn`` on the split at the
    scale it trains at (None without ``loss_fn``), comparable with the training loss;
    ``classes_predicted`` and ``classes_present``: how many classes the predictions use
    and how many the truth has (``collapse_warning`` compares them).
    """
    comm = comm or Communicator()
    k = model.num_classes
    model.eval()
    conf = xp.zeros((k, k), dtype=xp.int64)
    loss_sum = xp.zeros((), dtype=xp.float64)
    if accepts_as_batch(model, split.images):
        loader = DeviceLoader.for_eval(
            split, xp, batch_size, mean=mean, std=std, rank=comm.rank, world_size=comm.size
        )
        shares = loader.batch_indices(0)
        for (x, y, w), index in zip(loader.epoch(0), shares, strict=True):
            if not len(x):  # with several ranks, a rank's share of the last batch can be empty
                continue
            logits = model.infer(x)  # (B, K, S, S)
            if loss_fn is not None:
                loss_sum += loss_fn.forward(logits, y, w).astype(xp.float64) * len(x)
            if native_masks is None:
                conf += confusion_matrix(logits.argmax(axis=1), y, k, ignore_index)
                continue
            masks = [native_masks[i] for i in index]
            preds = upsampled_classes(logits, [m.shape for m in masks])
            for pred, mask in zip(preds, masks, strict=True):
                conf += confusion_matrix(pred, xp.asarray(mask), k, ignore_index)
    else:
        for i in range(comm.rank, len(split.images), comm.size):
            logits = xp.asarray(predict_logits(model, split.images[i], xp, mean, std))  # (K, H, W)
            mask = xp.asarray(split.masks[i])
            if logits.shape[1:] != mask.shape:  # a valid net on a side it cannot reach
                raise MinunetError(f"validation logits {logits.shape} do not cover {mask.shape}")
            if loss_fn is not None:
                loss_sum += loss_fn.forward(logits[None], mask[None].astype(xp.int32))
            conf += confusion_matrix(logits.argmax(axis=0), mask, k, ignore_index)
    # One allreduce and one read back: the confusion counts and the loss sum side by side
    # (float64 holds the counts exactly).
    both = xp.concatenate([conf.ravel().astype(xp.float64), loss_sum[None]])
    totals = to_numpy(comm.allreduce_sum(both))
    counts = totals[:-1].astype(np.int64).reshape(k, k)
    model.release()
    model.train()
    metrics = metrics_from_confusion(counts, list(split.class_names))
    metrics["loss"] = None if loss_fn is None else float(totals[-1]) / max(1, len(split.images))
    names = list(split.class_names)
    metrics["classes_predicted"] = [n for n, c in zip(names, counts.sum(axis=0), strict=True) if c]
    metrics["classes_present"] = [n for n, c in zip(names, counts.sum(axis=1), strict=True) if c]
    return metrics


def collapse_warning(metrics: dict[str, Any]) -> str | None:
    """The one-line warning for validation predictions that use only one or two classes
    while the truth has more (None otherwise): the net has learned to answer the
    cheapest class everywhere, usually the dominant one."""
    used, present = metrics["classes_predicted"], metrics["classes_present"]
    if len(used) > 2 or len(used) >= len(present):
        return None
    return (
        f"the predicted masks are all {' and '.join(used) or 'ignored'}: the validation "
        f"predictions use {len(used)} of the {len(present)} classes in the truth "
        f"({', '.join(present)}). Likely causes: one class dominates the pixels, so predicting "
        "it everywhere is the cheapest answer; a learning rate too high; too few steps. "
        "Try --class-weights auto (or w0,w1,...), --border-weights (folder/isbi2012), "
        "a lower --lr (e.g. 10 times lower)"
    )


def _silent(*args: Any, **kwargs: Any) -> None:
    pass


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
