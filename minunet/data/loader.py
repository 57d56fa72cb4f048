"""Batches drawn on the backend: the whole split lives on the device, batches are views.

``DeviceLoader`` copies a ``SegmentationData`` to the backend once (uint8 images stay
uint8 there: Oxford-IIIT Pets at 128x128 is ~240 MB) and then, every epoch, gathers,
augments and normalises each batch where it already is. On CuPy nothing crosses the
PCIe bus per step except one small index array per epoch, and nothing waits on the GPU:
no ``.get()``, no Python number read back from a device array.

Reproducibility: the batch order and the augmentation of epoch ``e`` are a pure function
of ``(seed, e)``. ``loader.epoch(e)`` can be called in any order, so a run resumed at
epoch 7 sees exactly the batches an uninterrupted run would have seen. (The order is
drawn on the host, so it is also the same on NumPy and CuPy; the augmentation is drawn
by the backend's own generator, so it is not.)

Several processes (data parallel training): with ``world_size`` W, ``batch_size`` is the
GLOBAL batch. Every rank draws the same global order and the same augmentation
parameters, then takes its own contiguous slice of each global batch: rank r gets
samples [r * B/W, (r + 1) * B/W). The slices are disjoint, their union is the global
batch, and the augmentation a sample gets does not depend on W.

What a batch holds (``Batch``):
    x: (B, C, H, W) float32, normalised as (u8 / 255 - mean) / std per channel
    y: (B, H, W) int32 labels (ignore labels, e.g. 255, unchanged)
    w: (B, H, W) float32 per-pixel loss weights, or None when the data has none
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from minunet.core.backend import get_array_module, to_device
from minunet.data.augment import AugmentConfig, apply_augment, draw_augment_params
from minunet.data.dataset import SegmentationData
from minunet.errors import DataError, MinunetError

# Default per-channel normalisation: maps [0, 1] to [-2, 2], zero-centred for mid-grey.
# Deliberately not the data set's own statistics, so a model's input does not depend on
# which images it was trained on (predict needs nothing but these two numbers).
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25

# Salt of the augmentation stream, kept apart from the order stream of the same epoch.
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


class Batch(NamedTuple):
    """One batch on the backend: x (B, C, H, W) float32, y (B, H, W) int32, w or None."""

    x: Any
    y: Any
    w: Any | None


def _channel_constants(
    xp: ModuleType,
    channels: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    unit: float,
) -> tuple[Any, Any]:
    """Per-channel (scale, offset), each (C, 1, 1) float32 on ``xp``, so x * scale + offset
    equals (x * unit - mean) / std."""
    mean_c = np.broadcast_to(np.asarray(mean, dtype=np.float64), (channels,))
    std_c = np.broadcast_to(np.asarray(std, dtype=np.float64), (channels,))
    if np.any(std_c <= 0):
        raise ValueError(f"std must be positive, got {std}")
    scale = (unit / std_c).astype(np.float32).reshape(channels, 1, 1)
    offset = (-mean_c / std_c).astype(np.float32).reshape(channels, 1, 1)
    return xp.asarray(scale), xp.asarray(offset)


def _normalize_with(images: Any, scale: Any, offset: Any) -> Any:
    """(N, H, W, C) -> contiguous (N, C, H, W) float32 ``x * scale + offset``."""
    xp = get_array_module(images)
    # One pass converts and transposes into a fresh C-contiguous array (a plain astype of
    # the transposed view would keep the NHWC memory order the layers do not expect).
    out = xp.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    out *= scale
    out += offset
    return out


def normalize(
    images: Any,
    mean: float | Sequence[float] = DEFAULT_MEAN,
    std: float | Sequence[float] = DEFAULT_STD,
) -> Any:
    """Network input from images: ``(images / 255 - mean) / std``, channels first.

    images: (N, H, W, C) uint8 (0-255) or float (0-1; e.g. augmented), NumPy or CuPy
    mean, std: one value, or one per channel
    Returns (N, C, H, W) float32 on the same backend, C-contiguous. Training (through
    ``DeviceLoader``) and prediction both use it, so they see identical inputs.
    """
    xp = get_array_module(images)
    unit = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    scale, offset = _channel_constants(xp, images.shape[3], mean, std, unit)
    return _normalize_with(images, scale, offset)


class DeviceLoader:
    """Mini-batches of a ``SegmentationData``, held and drawn on the backend ``xp``.

    data:       the split; copied to the device once, in the constructor
    xp:         ``numpy`` or ``cupy``
    batch_size: the GLOBAL batch size (summed over ``world_size`` ranks)
    shuffle:    a new random order every epoch (else the data's own order)
    drop_last:  drop the last incomplete batch (so every step has the same shape)
    augment:    an ``AugmentConfig``, or None for no augmentation
    seed:       with the epoch number, determines order and augmentation
    mean, std:  per-channel normalisation, see ``normalize``
    rank, world_size: this process's place among the data-parallel processes

    Iterating the loader runs the next epoch (0, 1, 2, ...); ``set_epoch`` moves that
    counter (to resume), and ``epoch(e)`` runs any epoch directly. For validation use
    ``DeviceLoader.for_eval``: data order, every sample, no augmentation.
    """

    def __init__(
        self,
        data: SegmentationData,
        xp: ModuleType,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        mean: float | Sequence[float] = DEFAULT_MEAN,
        std: float | Sequence[float] = DEFAULT_STD,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise MinunetError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise MinunetError(f"rank {rank} is outside 0..{world_size - 1}")
        if batch_size % world_size:
            raise MinunetError(
                f"the global batch size {batch_size} is not divisible by the {world_size} "
                f"processes: use a multiple of {world_size}"
            )
        if drop_last and len(data) < batch_size:
            raise DataError(
                f"only {len(data)} samples, fewer than one batch of {batch_size}: "
                "lower the batch size or add data"
            )
        self.xp = xp
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_samples = len(data)
        self.next_epoch = 0

        # The one host-to-device copy of the split. uint8 stays uint8: 4x less memory
        # than float32, and the conversion is fused into each batch's normalisation.
        self.images = to_device(data.images, xp)
        self.masks = to_device(data.masks, xp)
        self.weights = (
            None if data.weights is None else to_device(data.weights.astype(np.float32), xp)
        )
        # Augmentation works on floats in [0, 1]; plain batches go straight from uint8.
        channels = data.in_channels
        self._u8_constants = _channel_constants(xp, channels, mean, std, 1.0 / 255.0)
        self._unit_constants = _channel_constants(xp, channels, mean, std, 1.0)

    @classmethod
    def for_eval(
        cls,
        data: SegmentationData,
        xp: ModuleType,
        batch_size: int,
        *,
        mean: float | Sequence[float] = DEFAULT_MEAN,
        std: float | Sequence[float] = DEFAULT_STD,
        rank: int = 0,
        world_size: int = 1,
    ) -> DeviceLoader:
        """A loader for validation and testing: data order, every sample, no augmentation.

        With several ranks the last batch may split unevenly (a rank's share can even be
        empty), but every rank yields the same number of batches, so collective
        operations stay in step.
        """
        return cls(
            data,
            xp,
            batch_size,
            shuffle=False,
            drop_last=False,
            augment=None,
            mean=mean,
            std=std,
            rank=rank,
            world_size=world_size,
        )

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The global sample order of ``epoch`` (host int64), cut to whole batches if
        ``drop_last``. A pure function of (seed, epoch)."""
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, _ORDER_STREAM])
            order = rng.permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        if self.drop_last:
            order = order[: len(self) * self.batch_size]
        return order

    def _shard(self, global_size: int) -> tuple[int, int]:
        """This rank's contiguous [lo, hi) within a global batch of ``global_size``."""
        lo = self.rank * global_size // self.world_size
        hi = (self.rank + 1) * global_size // self.world_size
        return lo, hi

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """Which samples (host indices into the data) this rank gets in each batch of
        ``epoch``, in order: for reports, and for tests of the sharding."""
        order = self.order(epoch)
        out = []
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            lo, hi = self._shard(len(batch))
            out.append(batch[lo:hi])
        return out

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch`` for this rank; see ``Batch`` for their shapes."""
        xp = self.xp
        order = self.order(epoch)
        # One small upload per epoch; batches are then sliced from it on the device.
        order_dev = to_device(order, xp)
        rng = None
        if self.augment is not None:
            # An integer seed derived on the host: both NumPy and CuPy generators take one.
            aug_seed = np.random.SeedSequence([self.seed, epoch, _AUGMENT_STREAM])
            rng = xp.random.default_rng(int(aug_seed.generate_state(1)[0]))
        for start in range(0, len(order), self.batch_size):
            global_size = min(self.batch_size, len(order) - start)
            lo, hi = self._shard(global_size)
            index = order_dev[start + lo : start + hi]
            images = self.images[index]
            masks = self.masks[index]
            weights = None if self.weights is None else self.weights[index]
            if rng is not None:
                # Every rank draws the whole global batch's parameters, in the same order,
                # and applies its own slice: augmentation is independent of world_size.
                params = draw_augment_params(global_size, self.augment, rng)[lo:hi]
                images = images.astype(np.float32) * np.float32(1 / 255)
                images, masks, weights = apply_augment(images, masks, weights, params, self.augment)
                x = _normalize_with(images, *self._unit_constants)
            else:
                x = _normalize_with(images, *self._u8_constants)
            yield Batch(x=x, y=masks.astype(np.int32), w=weights)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` run ``epoch`` (e.g. when resuming a run)."""
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        """Run the next epoch, and count it."""
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.epoch(epoch)
