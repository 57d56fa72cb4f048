"""Data augmentation that runs on the backend, a whole batch at a time.

Augmentation happens where the batch already is (NumPy on the CPU, CuPy on the GPU),
written once against ``xp``: no copy back to the host, no Python loop over samples or
pixels. Every random number comes from an explicit backend Generator
(``xp.random.default_rng``), so a batch's augmentation is reproducible from its seed.

What it does, per sample:

- a random horizontal flip;
- a random resized crop: a square window of ``scale`` times the image side, at a random
  offset, resampled back to full size (a zoom in of up to 1/scale);
- mild colour jitter: brightness, contrast and saturation factors in [1 - j, 1 + j].

Layout decision: augmentation acts on **NHWC** images (the layout data is stored in),
before normalisation and before the transpose to the network's NCHW. Images may be uint8
(range 0-255, returned as uint8, rounded) or float (range 0-1, returned as float); the
loader passes float32 in [0, 1], so nothing is rounded twice. Masks and weight maps are
resampled with nearest neighbour, so labels stay exact: no new values appear, and an
ignore label such as 255 stays 255.

The flip and the crop are folded into one sampling grid, and the grid is sampled by
``sample_bilinear`` (images) and ``sample_nearest`` (labels, weights). Those two are
public: any geometric augmentation (an elastic deformation, a rotation) is just another
grid handed to them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module

# ITU-R BT.601 luma weights, the usual "grey" of an RGB image.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """What to augment, and how strongly.

    enabled: master switch; False makes ``augment_batch`` return its inputs unchanged.
    flip:    flip each sample horizontally with probability 1/2.
    scale:   (min, max) side of the random crop as a fraction of the image side;
             (1.0, 1.0) turns cropping off. The crop is square, at a uniform offset.
    jitter:  strength j of the colour jitter: brightness, contrast and saturation factors
             are drawn uniformly from [1 - j, 1 + j]; 0 turns it off.
    """

    enabled: bool = True
    flip: bool = True
    scale: tuple[float, float] = (0.7, 1.0)
    jitter: float = 0.1

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")

    @property
    def crops(self) -> bool:
        """True when the random resized crop can change an image."""
        return tuple(self.scale) != (1.0, 1.0)


@dataclass
class AugmentParams:
    """The random draws of one batch: one entry per sample, all arrays (N,) on the backend.

    Drawn separately from their application so that a batch can be split between
    processes after the draw: every rank draws the whole global batch's parameters
    (cheap) and applies only its own slice (``params[lo:hi]``). The result does not
    depend on how many processes share the batch.

    flip:       bool, mirror the sample left-right
    scale:      float32, crop side / image side
    offset_y:   float32 in [0, 1], where the crop sits in the free room (0 top, 1 bottom)
    offset_x:   float32 in [0, 1], likewise (0 left, 1 right)
    brightness, contrast, saturation: float32 colour factors (1 = unchanged)
    """

    flip: Any
    scale: Any
    offset_y: Any
    offset_x: Any
    brightness: Any
    contrast: Any
    saturation: Any

    def __len__(self) -> int:
        return int(self.flip.shape[0])

    def __getitem__(self, index: slice) -> AugmentParams:
        """The parameters of a contiguous run of samples (views, no copy)."""
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def draw_augment_params(n: int, config: AugmentConfig, rng: Any) -> AugmentParams:
    """Draw the augmentation of ``n`` samples from the backend Generator ``rng``.

    Always draws the same block of (n, 7) uniforms, whatever the config switches on, so
    turning e.g. the jitter off does not change which crops and flips a seed gives.
    """
    u = rng.random((n, 7), dtype=np.float32)
    xp = get_array_module(u)
    lo, hi = (float(s) for s in config.scale)
    j = float(config.jitter)
    flip = u[:, 0] < 0.5 if config.flip else xp.zeros(n, dtype=bool)
    return AugmentParams(
        flip=flip,
        scale=lo + (hi - lo) * u[:, 1],
        offset_y=u[:, 2],
        offset_x=u[:, 3],
        brightness=1.0 + j * (2.0 * u[:, 4] - 1.0),
        contrast=1.0 + j * (2.0 * u[:, 5] - 1.0),
        saturation=1.0 + j * (2.0 * u[:, 6] - 1.0),
    )


# --------------------------------------------------------------------------------------
# Samplers: read an array at fractional pixel positions
# --------------------------------------------------------------------------------------


def _taps(xp: ModuleType, n: int, grid_y: Any, grid_x: Any) -> tuple[Any, Any, Any]:
    """Batch index (N, 1, 1) and the grids broadcast to a common (N, Ho, Wo) shape."""
    gy, gx = xp.broadcast_arrays(grid_y, grid_x)
    if gy.ndim != 3 or gy.shape[0] != n:
        raise ValueError(
            f"grid_y and grid_x must broadcast to (N, Ho, Wo) with N = {n}, got {gy.shape}"
        )
    batch = xp.arange(n).reshape(n, 1, 1)
    return batch, gy, gx


def sample_bilinear(images: Any, grid_y: Any, grid_x: Any, fill: float | None = None) -> Any:
    """Bilinear interpolation of ``images`` at fractional pixel positions, batched.

    images: (N, H, W) or (N, H, W, C), any dtype, NumPy or CuPy
    grid_y, grid_x: source row and column of every output pixel, broadcastable to
        (N, Ho, Wo), in pixel-centre coordinates: (i, j) is the centre of pixel [i, j],
        so ``grid_y = i`` and ``grid_x = j`` reproduce the image exactly.
    fill: value of everything outside the image; None extends the border pixels
        outward instead (clamping), which is what crops and small deformations want.
    Returns (N, Ho, Wo[, C]) float32 (float64 input stays float64).

    Each output pixel is the weighted sum of its four neighbours: four gathers and a
    few elementwise products over the batch, the same code on NumPy and CuPy.
    """
    xp = get_array_module(images, grid_y, grid_x)
    n, h, w = images.shape[:3]
    batch, gy, gx = _taps(xp, n, grid_y, grid_x)
    dtype = np.float64 if images.dtype == np.float64 else np.float32
    gy = gy.astype(dtype, copy=False)
    gx = gx.astype(dtype, copy=False)
    y0f, x0f = xp.floor(gy), xp.floor(gx)
    fy, fx = gy - y0f, gx - x0f  # fractional parts in [0, 1)
    y0, x0 = y0f.astype(np.int64), x0f.astype(np.int64)
    extra = (None,) * (images.ndim - 3)  # weights broadcast over the channel axis

    out = None
    leftover = None  # weight that falls outside the image, for ``fill``
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            weight = wy * wx
            if fill is not None:
                inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
                outside_weight = xp.where(inside, 0.0, weight).astype(dtype)
                leftover = outside_weight if leftover is None else leftover + outside_weight
                weight = weight - outside_weight
            # Clamped indices: with fill=None this is the border extension itself; with a
            # fill the clamped taps carry zero weight and only keep the gather in bounds.
            value = images[batch, xp.clip(yi, 0, h - 1), xp.clip(xi, 0, w - 1)]
            term = weight[(...,) + extra] * value
            out = term if out is None else out + term
    if fill is not None:
        out = out + leftover[(...,) + extra] * dtype(fill)
    return out.astype(dtype, copy=False)


def sample_nearest(values: Any, grid_y: Any, grid_x: Any, fill: float | None = None) -> Any:
    """Nearest-neighbour sampling of ``values`` at fractional pixel positions, batched.

    values: (N, H, W) or (N, H, W, C): label maps, weight maps, or images
    grid_y, grid_x: as in ``sample_bilinear`` (pixel-centre coordinates, broadcastable
        to (N, Ho, Wo))
    fill: value outside the image (e.g. the ignore label 255); None clamps to the border.
    Returns (N, Ho, Wo[, C]) in the dtype of ``values``: every output is one of the input
    values (or ``fill``), which is why labels are resampled with it.
    """
    xp = get_array_module(values, grid_y, grid_x)
    n, h, w = values.shape[:3]
    batch, gy, gx = _taps(xp, n, grid_y, grid_x)
    # The nearest centre: round half up (floor(g + 0.5)), the same on NumPy and CuPy.
    yi = xp.floor(gy + 0.5).astype(np.int64)
    xi = xp.floor(gx + 0.5).astype(np.int64)
    out = values[batch, xp.clip(yi, 0, h - 1), xp.clip(xi, 0, w - 1)]
    if fill is not None:
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        extra = (None,) * (values.ndim - 3)
        out = xp.where(inside[(...,) + extra], out, xp.asarray(fill, dtype=values.dtype))
    return out


# --------------------------------------------------------------------------------------
# The augmentations
# --------------------------------------------------------------------------------------


def flip_horizontal(x: Any, flags: Any) -> Any:
    """Mirror the samples of ``x`` (N, H, W[, C]) left-right where ``flags`` (N,) is True."""
    xp = get_array_module(x, flags)
    where = flags.reshape((-1,) + (1,) * (x.ndim - 1))
    return xp.where(where, x[:, :, ::-1], x)


def crop_grid(params: AugmentParams, height: int, width: int) -> tuple[Any, Any]:
    """The sampling grid of each sample's flipped, resized crop.

    Returns grid_y (N, H, 1) and grid_x (N, 1, W): the crop is axis-aligned, so rows and
    columns are independent and the grids stay separable (they broadcast to (N, H, W)).
    A scale of 1 without flip gives grid_y = i, grid_x = j: the identity.
    """
    xp = get_array_module(params.scale)
    s = params.scale[:, None, None]
    # Crop side in pixels, and its top-left corner somewhere in the free room.
    top = params.offset_y[:, None, None] * (height * (1.0 - s))
    left = params.offset_x[:, None, None] * (width * (1.0 - s))
    i = xp.arange(height, dtype=np.float32)[None, :, None]
    j = xp.arange(width, dtype=np.float32)[None, None, :]
    # A flip reads the columns right to left: output column j samples crop column W-1-j.
    j = xp.where(params.flip[:, None, None], (width - 1) - j, j)
    # Pixel centres of the output, mapped into the crop: (i + 0.5) * s - 0.5 from its top.
    grid_y = top + (i + 0.5) * s - 0.5
    grid_x = left + (j + 0.5) * s - 0.5
    return grid_y, grid_x


def colour_jitter(images: Any, params: AugmentParams) -> Any:
    """Brightness, contrast and saturation jitter of float images in [0, 1].

    images: (N, H, W, C) float, C = 1 or 3 (saturation needs colour and is skipped for
    grayscale). Returns the same shape, clipped back to [0, 1].
    """
    xp = get_array_module(images)
    shape = (-1, 1, 1, 1)
    x = images * params.brightness.reshape(shape)
    if x.shape[3] == 3:
        luma = xp.asarray(LUMA, dtype=x.dtype)
        grey = (x @ luma)[..., None]  # (N, H, W, 1)
    else:
        grey = x
    # Contrast: stretch around the image's mean grey level.
    mean = grey.mean(axis=(1, 2, 3), keepdims=True)
    x = mean + (x - mean) * params.contrast.reshape(shape)
    if x.shape[3] == 3:
        # Saturation: move each pixel away from (or towards) its own grey.
        grey = (x @ luma)[..., None]
        x = grey + (x - grey) * params.saturation.reshape(shape)
    return xp.clip(x, 0.0, 1.0)


def apply_augment(
    images: Any,
    masks: Any,
    weights: Any | None,
    params: AugmentParams,
    config: AugmentConfig,
) -> tuple[Any, Any, Any | None]:
    """Apply drawn ``params`` to a batch; see ``augment_batch`` for the arguments."""
    if not config.enabled:
        return images, masks, weights
    is_u8 = images.dtype == np.uint8
    x = images.astype(np.float32) * np.float32(1 / 255) if is_u8 else images
    if config.crops:
        grid_y, grid_x = crop_grid(params, images.shape[1], images.shape[2])
        x = sample_bilinear(x, grid_y, grid_x)
        masks = sample_nearest(masks, grid_y, grid_x)
        if weights is not None:
            weights = sample_nearest(weights, grid_y, grid_x)
    elif config.flip:
        # No crop: a flip alone is an exact reversal, no resampling needed.
        x = flip_horizontal(x, params.flip)
        masks = flip_horizontal(masks, params.flip)
        if weights is not None:
            weights = flip_horizontal(weights, params.flip)
    if config.jitter > 0:
        x = colour_jitter(x, params)
    if is_u8:
        xp = get_array_module(x)
        x = xp.clip(xp.rint(x * 255.0), 0, 255).astype(np.uint8)
    return x, masks, weights


def augment_batch(
    images: Any,
    masks: Any,
    weights: Any | None,
    config: AugmentConfig,
    rng: Any,
) -> tuple[Any, Any, Any | None]:
    """Randomly flip, crop-and-resize and colour-jitter a batch, on its own backend.

    images:  (N, H, W, C) uint8 in 0-255 or float in [0, 1] (NHWC, before normalisation)
    masks:   (N, H, W) integer labels (any value, e.g. an ignore label 255, is kept exact)
    weights: (N, H, W) per-pixel loss weights, or None
    config:  which augmentations, how strong
    rng:     a Generator of the batch's backend: ``xp.random.default_rng(seed)``
    Returns (images, masks, weights) with the same shapes and dtypes.
    """
    if not config.enabled:
        return images, masks, weights
    params = draw_augment_params(images.shape[0], config, rng)
    return apply_augment(images, masks, weights, params, config)
