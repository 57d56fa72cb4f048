"""The scale a model learned at, as its checkpoint records it, and prediction at that scale.

Training sees images one of two ways, and the checkpoint says which under
``meta["data"]["input"]``:

    {"mode": "resized", "size": S}    every image resized to S x S (``--image-size S``)
    {"mode": "native", "crop": N}     native resolution, random N x N crops (``--crop N``)

A resized model has learned objects at the scale of S x S images, so it predicts on the
image resized to S x S (``minunet.data.imageio.resize_image``, exactly as training resized
it) and its logits (K, S, S) are resized back to the native (H, W) with
``minunet.infer.rescale.resize_bilinear`` before the argmax. A crop model predicts at
native resolution (tiled where its padding needs it, by default in tiles of its crop
side for a valid-padding net). Metrics are then counted at the native size, against the
masks as the user has them.

A checkpoint written before the record existed is read with this default: native (crop N)
if its configuration has ``crop``; else resized at the metadata's ``image_size`` if it has
one; else native.

``--scale auto|native|N`` (predict, evaluate) overrides it: ``auto`` is the record,
``native`` runs the net on the image as it is, ``N`` on the image resized to N x N.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from minunet.core.backend import to_device, to_numpy
from minunet.data.imageio import resize_image
from minunet.data.loader import normalize
from minunet.infer.inference import accepts_side, predict_classes, predict_logits
from minunet.infer.rescale import resize_bilinear

RESIZED, NATIVE = "resized", "native"


@dataclass(frozen=True)
class InputScale:
    """How a net is run on an image. mode: RESIZED (on the image resized to size x size)
    or NATIVE (as it is; ``crop``: the crop side it trained on, or None)."""

    mode: str
    size: int | None = None
    crop: int | None = None

    @property
    def resized(self) -> bool:
        return self.mode == RESIZED

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``meta["data"]["input"]``."""
        if self.resized:
            return {"mode": RESIZED, "size": self.size}
        return {"mode": NATIVE, "crop": self.crop}

    def describe(self) -> str:
        if self.resized:
            return f"resized to {self.size}x{self.size}, logits resized back to native size"
        return "native resolution" + (f" (trained on {self.crop} px crops)" if self.crop else "")


def training_scale(image_size: int | None, crop: int | None) -> InputScale:
    """What a run with ``--image-size`` / ``--crop`` showed its net."""
    if crop:
        return InputScale(NATIVE, crop=crop)
    if image_size:
        return InputScale(RESIZED, size=image_size)
    return InputScale(NATIVE)


def scale_from_meta(meta: dict[str, Any]) -> InputScale:
    """The checkpoint's record, or for an older checkpoint the default of the module
    docstring."""
    data = meta.get("data", {})
    rec = data.get("input")
    if rec is not None:
        if rec.get("mode") == RESIZED:
            return InputScale(RESIZED, size=int(rec["size"]))
        return InputScale(NATIVE, crop=rec.get("crop"))
    crop = meta.get("config", {}).get("crop")
    return training_scale(None if crop else data.get("image_size"), crop)


def scale_flag(text: str) -> str | int:
    """argparse type of ``--scale``: "auto", "native" or a positive side."""
    if text in ("auto", NATIVE):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected auto, native or a positive image side, got {text!r}"
        )
    return value


def resolve_scale(flag: str | int | None, meta: dict[str, Any]) -> InputScale:
    """The scale ``--scale flag`` asks for (None or "auto": the checkpoint's record)."""
    if flag in (None, "auto"):
        return scale_from_meta(meta)
    if flag == NATIVE:
        return InputScale(NATIVE, crop=scale_from_meta(meta).crop)
    return InputScale(RESIZED, size=int(flag))


def upsampled_classes(logits: Any, shapes: list[tuple[int, int]]) -> list[Any]:
    """Class maps (H_i, W_i), on the logits' device, of logits (B, K, S, S) computed on
    resized images: each resized bilinearly to its image's native (H_i, W_i), then argmax."""
    return [
        resize_bilinear(lg, h, w).argmax(axis=0) for lg, (h, w) in zip(logits, shapes, strict=True)
    ]


def predict_logits_at_scale(
    model: Any,
    image: np.ndarray,
    xp: ModuleType,
    mean: Any,
    std: Any,
    scale: InputScale,
    tile: int | None = None,
) -> np.ndarray:
    """Logits (K, H, W) on the host for one (H, W, C) uint8 image, the net run at ``scale``."""
    h, w = image.shape[:2]
    if scale.resized:
        small = resize_image(image, (scale.size, scale.size))
        return resize_bilinear(predict_logits(model, small, xp, mean, std, tile=tile), h, w)
    if tile is None and model.padding == "valid" and scale.crop:
        tile = scale.crop  # the side it trained on, which the net accepts
    return predict_logits(model, image, xp, mean, std, tile=tile)


def predict_classes_at_scale(
    model: Any,
    images: Any,
    xp: ModuleType,
    mean: Any,
    std: Any,
    scale: InputScale,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Class maps (H_i, W_i) on the host for (H_i, W_i, C) uint8 images, the net run at
    ``scale``; a resized model takes ``batch_size`` resized images per forward pass."""
    one_by_one = not scale.resized or not accepts_side(model, scale.size)
    if one_by_one and model.padding == "same" and not scale.resized:
        return predict_classes(model, images, xp, mean, std, batch_size)
    if one_by_one:  # tiles, or a side the net takes only padded: one image at a time
        return [
            predict_logits_at_scale(model, im, xp, mean, std, scale).argmax(axis=0) for im in images
        ]
    model.eval()
    side = (scale.size, scale.size)
    out: list[np.ndarray] = []
    for lo in range(0, len(images), batch_size):
        chunk = images[lo : lo + batch_size]
        small = np.stack([resize_image(im, side) for im in chunk])
        x = normalize(to_device(small, xp), mean, std).astype(model.dtype)
        logits = model.infer(x)  # (B, K, S, S)
        out.extend(to_numpy(c) for c in upsampled_classes(logits, [im.shape[:2] for im in chunk]))
    return out
