"""The one batch loader of training and validation: whole images, or random crops.

``DeviceLoader`` has two modes, with one interface (``len``, ``epoch(e)``, ``set_epoch``,
iteration) and the same ``Batch``es:

* whole images (``crop=None``): a ``SegmentationData`` is copied to the backend once
  (uint8 images stay uint8 there: Oxford-IIIT Pets at 128x128 is ~240 MB) and, every
  epoch, each batch is gathered, augmented and normalised where it already is. On CuPy
  nothing crosses the PCIe bus per step except one small index array per epoch, and
  nothing waits on the GPU: no ``.get()``, no number read back from a device array.
* native-size crops (``crop=N``): the samples (``NativeSizeData``, or a
  ``SegmentationData`` at its native size) have different sizes, so they stay on the
  host; each batch's random N x N windows are cut there and copied to the device as one
  (B, N, N, C) uint8 array, then augmented and normalised there. Samples smaller than N
  are mirror-padded, their masks padded with 255 (ignored) and their weights with 0:
  ``loader.ignore_index`` is then 255 and the loss must skip it.

Per batch, in order: gather (or crop), augment (``augment.py``), normalise, then the
elastic deformation (``elastic.py``) when ``elastic > 0``.

Reproducibility: the batch order, the crop positions and the augmentation of epoch ``e``
are a pure function of ``(seed, e)``. ``loader.epoch(e)`` can be called in any order, so
a run resumed at epoch 7 sees exactly the batches an uninterrupted run would have seen,
and ``loader.epoch(e, start=k)`` resumes inside an epoch: the first k batches are neither
gathered nor augmented, only their random draws are taken, so batch k onwards is
bit-identical to the uninterrupted epoch. (The order is drawn on the host, so it is also
the same on NumPy and CuPy; the augmentation is drawn by the backend's own generator, so
it is not.)

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
from minunet.data.dataset import IGNORE_LABEL, NativeSizeData, SegmentationData
from minunet.data.elastic import elastic_deform
from minunet.errors import DataError

# Default per-channel normalisation: maps [0, 1] to [-2, 2], zero-centred for mid-grey.
# Deliberately not the data set's own statistics, so a model's input does not depend on
# which images it was trained on (predict needs nothing but these two numbers).
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25

# Salts of an epoch's random streams, kept apart: the order of whole images, the
# augmentation, and the order and positions of crops.
_ORDER_STREAM, _AUGMENT_STREAM, _CROP_STREAM = 0, 1, 2


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


def _pad_to(array: np.ndarray, height: int, width: int, value: int | None) -> np.ndarray:
    """Pad (H, W, ...) at the bottom and right up to at least (height, width).

    value None: mirror the image ('symmetric': the edge pixel is repeated, then the image
    is read backwards, which works even for a 1-pixel image). Otherwise a constant.
    """
    ph, pw = max(height - array.shape[0], 0), max(width - array.shape[1], 0)
    if ph == 0 and pw == 0:
        return array
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    if value is None:
        return np.pad(array, pad, mode="symmetric")
    return np.pad(array, pad, mode="constant", constant_values=value)


class DeviceLoader:
    """Mini-batches of a split, augmented and normalised on the backend ``xp``.

    data:       the split: ``SegmentationData`` (copied to the device once, in the
                constructor), or with ``crop`` also ``NativeSizeData`` (kept on the host)
    xp:         ``numpy`` or ``cupy``
    batch_size: the GLOBAL batch size (summed over ``world_size`` ranks)
    crop:       None for whole images; N for a random N x N window of every sample
    shuffle:    a new random order every epoch (else the data's own order)
    drop_last:  drop the last incomplete batch (so every step has the same shape)
    augment:    an ``AugmentConfig``, or None for no augmentation
    elastic:    std (pixels) of the elastic grid displacements; 0 for none
    seed:       with the epoch number, determines order, crops and augmentation
    mean, std:  per-channel normalisation, see ``normalize``
    rank, world_size: this process's place among the data-parallel processes

    Iterating the loader runs the next epoch (0, 1, 2, ...); ``set_epoch`` moves that
    counter (to resume), and ``epoch(e)`` runs any epoch directly. For validation use
    ``DeviceLoader.for_eval``: data order, every sample, no augmentation.
    ``ignore_index``: the label the loss must skip (the data's, or 255 when crops pad).
    """

    def __init__(
        self,
        data: SegmentationData | NativeSizeData,
        xp: ModuleType,
        batch_size: int,
        *,
        crop: int | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: AugmentConfig | None = None,
        elastic: float = 0.0,
        seed: int = 0,
        mean: float | Sequence[float] = DEFAULT_MEAN,
        std: float | Sequence[float] = DEFAULT_STD,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside 0..{world_size - 1}")
        if batch_size % world_size:
            raise DataError(
                f"the global batch size {batch_size} is not divisible by the {world_size} "
                f"processes: use a multiple of {world_size}"
            )
        if (drop_last and len(data) < batch_size) or (crop is not None and len(data) == 0):
            raise DataError(
                f"only {len(data)} samples, fewer than one batch of {batch_size}: "
                "lower the batch size or add data"
            )
        if crop is None and not isinstance(data, SegmentationData):
            raise DataError(
                "samples of different sizes cannot be batched whole: pass crop=N (--crop N) "
                "or load them resized (--image-size N)"
            )
        if crop is not None and crop < 1:
            raise DataError(f"--crop {crop}: a crop must be at least 1 pixel")
        self.xp = xp
        self.batch_size = batch_size
        self.crop = crop
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment if augment is not None and augment.enabled else None
        self.elastic = float(elastic)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_samples = len(data)
        self.next_epoch = 0
        self.ignore_index = data.ignore_index

        if crop is None:
            # The one host-to-device copy of the split. uint8 stays uint8: 4x less memory
            # than float32, and the conversion is fused into each batch's normalisation.
            self.images = to_device(data.images, xp)
            self.masks = to_device(data.masks, xp)
            self.weights = (
                None if data.weights is None else to_device(data.weights.astype(np.float32), xp)
            )
        else:  # crops are cut on the host, per batch
            self.images, self.masks, self.weights = data.images, data.masks, data.weights
            if any(min(m.shape) < crop for m in data.masks):
                self.ignore_index = IGNORE_LABEL  # the padding of small samples
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
        return self._order_and_corners(epoch)[0]

    def _order_and_corners(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The order of ``epoch`` and, with crops, every sample's crop corner: (N, 2) in
        [0, 1), drawn up front so all ranks agree whatever share they take."""
        corners = None
        if self.crop is None:
            rng = np.random.default_rng([self.seed, epoch, _ORDER_STREAM])
        else:  # the order and the positions of crops come from one stream of their own
            rng = np.random.default_rng([self.seed, epoch, _CROP_STREAM])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        if self.crop is not None:
            corners = rng.random((self.num_samples, 2))
        if self.drop_last:
            order = order[: len(self) * self.batch_size]
        return order, corners

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

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` for this rank, from batch ``start`` on (a mid-epoch
        resume): the batches before it are not built, but their augmentation is drawn,
        so the rest is exactly what the whole epoch gives. See ``Batch`` for shapes."""
        xp = self.xp
        order, corners = self._order_and_corners(epoch)
        # Whole images: one small upload per epoch; batches are then sliced on the device.
        order_dev = to_device(order, xp) if self.crop is None else None
        rng = None
        if self.augment is not None:
            # An integer seed derived on the host: both NumPy and CuPy generators take one.
            aug_seed = np.random.SeedSequence([self.seed, epoch, _AUGMENT_STREAM])
            rng = xp.random.default_rng(int(aug_seed.generate_state(1)[0]))
        for b, first in enumerate(range(0, len(order), self.batch_size)):
            global_size = min(self.batch_size, len(order) - first)
            params = None
            if rng is not None:
                # Every rank draws the whole global batch's parameters, in the same order,
                # and applies its own slice: augmentation is independent of world_size.
                params = draw_augment_params(global_size, self.augment, rng)
            if b < start:
                continue  # skipped on resume: its draw is taken, nothing is built
            lo, hi = self._shard(global_size)
            if order_dev is not None:
                index = order_dev[first + lo : first + hi]
                images, masks = self.images[index], self.masks[index]
                weights = None if self.weights is None else self.weights[index]
            else:
                images, masks, weights = self._crops(order[first + lo : first + hi], corners)
            if params is not None:
                images = images.astype(np.float32) * np.float32(1 / 255)
                images, masks, weights = apply_augment(
                    images, masks, weights, params[lo:hi], self.augment
                )
                x = _normalize_with(images, *self._unit_constants)
            else:
                x = _normalize_with(images, *self._u8_constants)
            y = masks.astype(np.int32)
            if self.elastic > 0:
                x, y, weights = self._elastic(x, y, weights, epoch, b)
            yield Batch(x=x, y=y, w=weights)

    def _crops(self, index: np.ndarray, corners: np.ndarray) -> tuple[Any, Any, Any | None]:
        """The crops of samples ``index``, cut on the host and copied to the device:
        images (B, N, N, C) uint8, masks (B, N, N) uint8, weights (B, N, N) float32 or None."""
        n, xp = self.crop, self.xp
        images, masks, weights = [], [], []
        for i in index.tolist():
            mask = _pad_to(self.masks[i], n, n, IGNORE_LABEL)
            # corner in [0, 1) scales to a top-left position in the free room, inclusive.
            top = int(corners[i, 0] * (mask.shape[0] - n + 1))
            left = int(corners[i, 1] * (mask.shape[1] - n + 1))
            window = (slice(top, top + n), slice(left, left + n))
            images.append(_pad_to(self.images[i], n, n, None)[window])
            masks.append(mask[window])
            if self.weights is not None:
                weights.append(_pad_to(self.weights[i], n, n, 0)[window].astype(np.float32))
        return (
            xp.asarray(np.stack(images)),
            xp.asarray(np.stack(masks)),
            xp.asarray(np.stack(weights)) if weights else None,
        )

    def _elastic(self, x: Any, y: Any, w: Any | None, epoch: int, b: int) -> tuple[Any, Any, Any]:
        """The U-Net paper's elastic deformation of batch ``b`` of ``epoch``.

        Its generator is seeded by (seed, epoch, batch) alone, so a skipped batch has
        nothing to draw. It warps the normalised network input x (B, C, H, W): bilinear
        resampling commutes with the per-channel affine normalisation up to rounding, and
        this order is the one runs were recorded with, so they stay bit-identical.
        """
        xp = self.xp
        rng = xp.random.default_rng(((self.seed * 100_003 + epoch) * 1_000_003 + b) % 2**63)
        nhwc = x.transpose(0, 2, 3, 1)
        warped, y, w = elastic_deform(nhwc, y, w, rng, sigma=self.elastic)
        return xp.ascontiguousarray(warped.transpose(0, 3, 1, 2)).astype(x.dtype), y, w

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` run ``epoch`` (e.g. when resuming a run)."""
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        """Run the next epoch, and count it."""
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.epoch(epoch)
