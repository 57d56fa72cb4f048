"""Predicting class maps for images of any size, at their native resolution.

A same-padding U-Net of depth d needs sides that are multiples of 2**d: the image is
mirror-padded up to the next multiple, predicted, and the prediction cropped back, so no
resizing blurs the result. A valid-padding (paper) U-Net shrinks its input, so its images
go through overlap-tile prediction (``minunet.infer.tiling``), which mirror-pads the border the
way the paper does.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minunet.core.backend import to_device, to_numpy
from minunet.data.loader import normalize
from minunet.model import UNet


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad (H, W, ...) on the bottom and right to sides that are multiples of ``multiple``."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return image
    pads = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
    # "symmetric" repeats the edge pixel, so it works even when the pad exceeds the side.
    return np.pad(image, pads, mode="symmetric")


def predict_logits(
    model: UNet, image: np.ndarray, xp: ModuleType, mean: Any, std: Any, tile: int | None = None
) -> np.ndarray:
    """Logits (K, H, W) on the host for one (H, W, C) uint8 image at native size."""
    h, w = image.shape[:2]
    model.eval()
    if model.padding == "valid" or tile:
        from minunet.infer.tiling import predict_tiled, valid_output_size

        x = to_numpy(normalize(image[None], mean, std))[0]  # (C, H, W)

        def forward(batch: np.ndarray) -> np.ndarray:
            out = model.infer(to_device(batch.astype(model.dtype), xp))
            return to_numpy(out)

        if tile is None:  # the smallest tile a valid net accepts that is at least 256 px out
            tile = next(t for t in range(256, 4096) if _fits(model, t))
        out_side = valid_output_size(tile, model.depth) if model.padding == "valid" else tile
        shrink = (tile - out_side) // 2
        logits = predict_tiled(
            forward, x, tile, num_classes=model.num_classes, depth=model.depth, valid_shrink=shrink
        )
        return logits
    padded = pad_to_multiple(image, 2**model.depth)
    x = normalize(to_device(padded[None], xp), mean, std).astype(model.dtype)
    logits = model.infer(x)[0, :, :h, :w]
    return to_numpy(logits)


def _fits(model: UNet, size: int) -> bool:
    try:
        model.output_size(size)
    except Exception:
        return False
    return True


def accepts_as_batch(model: UNet, images: Any) -> bool:
    """True when ``images`` is one (N, H, W, C) array the model takes as it is: a
    same-padding net and sides that are multiples of 2**depth. Anything else (a list of
    sizes, a valid-padding net) goes one image at a time through ``predict_logits``."""
    return (
        isinstance(images, np.ndarray)
        and model.padding == "same"
        and all(s % 2**model.depth == 0 for s in images.shape[1:3])
    )


def predict_classes(
    model: UNet, images: Any, xp: ModuleType, mean: Any, std: Any, batch_size: int = 8
) -> list[np.ndarray]:
    """Class maps (H, W) for a list of (H, W, C) uint8 images, or an (N, H, W, C) array.

    Equal-sized images that a same-padding net accepts as they are go through in batches;
    anything else is predicted one image at a time at native size.
    """
    model.eval()
    if accepts_as_batch(model, images):
        out = []
        for lo in range(0, len(images), batch_size):
            x = normalize(to_device(images[lo : lo + batch_size], xp), mean, std)
            out.extend(to_numpy(model.infer(x.astype(model.dtype)).argmax(axis=1)))
        return out
    return [predict_logits(model, img, xp, mean, std).argmax(axis=0) for img in images]
