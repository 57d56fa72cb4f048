"""Predicting class maps for images of any size, at their native resolution.

A same-padding U-Net of depth d needs sides that are multiples of 2**d: the image is
mirror-padded up to the next multiple, predicted, and the prediction cropped back, so no
resizing blurs the result. A valid-padding (paper) U-Net shrinks its input, so its images
go through overlap-tile prediction (``minunet.infer.tiling``), which mirror-pads the border
as the paper does. Both paths pad with the one rule, ``tiling.mirror_pad``, so a
same-padding net predicts the same border pixels with and without ``--tile``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minunet.core.backend import to_device, to_numpy
from minunet.data.loader import normalize
from minunet.infer.tiling import mirror_pad, predict_tiled
from minunet.model import UNet, geometry


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad (H, W, ...) on the bottom and right to sides that are multiples of ``multiple``."""
    h, w = image.shape[:2]
    return mirror_pad(image, [(0, -h % multiple), (0, -w % multiple)] + [(0, 0)] * (image.ndim - 2))


DEFAULT_TILE_MIN = 256  # a valid net's default tile: the smallest accepted side >= this


def predict_logits(
    model: UNet, image: np.ndarray, xp: ModuleType, mean: Any, std: Any, tile: int | None = None
) -> np.ndarray:
    """Logits (K, H, W) on the host for one (H, W, C) uint8 image at native size.

    ``tile``: predict in tiles of this input side (``minunet.infer.tiling``); a valid-padding
    net always goes through tiles, by default the smallest side it accepts of at least 256.
    """
    h, w = image.shape[:2]
    model.eval()
    if model.padding == "valid" or tile:
        x = to_numpy(normalize(image[None], mean, std))[0]  # (C, H, W)

        def forward(batch: np.ndarray) -> np.ndarray:
            out = model.infer(to_device(batch.astype(model.dtype), xp))
            return to_numpy(out)

        if tile is None:
            _, tile = geometry.nearest_input_sizes(DEFAULT_TILE_MIN, model.depth, model.padding)
        model.output_size(tile)  # a tile the net does not take: one line naming ones it does
        logits = predict_tiled(
            forward,
            x,
            tile,
            num_classes=model.num_classes,
            depth=model.depth,
            border=geometry.border(model.depth, model.padding),
        )
        return logits
    padded = pad_to_multiple(image, 2**model.depth)
    x = normalize(to_device(padded[None], xp), mean, std).astype(model.dtype)
    logits = model.infer(x)[0, :, :h, :w]
    return to_numpy(logits)


def accepts_side(model: UNet, side: int) -> bool:
    """True when a same-padding ``model`` takes ``side`` x ``side`` images as they are."""
    return model.padding == "same" and geometry.output_size(side, model.depth, "same") is not None


def accepts_as_batch(model: UNet, images: Any) -> bool:
    """True when ``images`` is one (N, H, W, C) array the model takes as it is: a
    same-padding net and sides that are multiples of 2**depth. Anything else (a list of
    sizes, a valid-padding net) goes one image at a time through ``predict_logits``."""
    return isinstance(images, np.ndarray) and all(accepts_side(model, s) for s in images.shape[1:3])


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
