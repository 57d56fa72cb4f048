"""Reading and resizing images and masks on the host, with Pillow.

Pillow decodes whatever a ``.jpg`` really is (PNG, GIF, CMYK or grayscale JPEG, an alpha
channel) when asked to ``convert("RGB")``, which is exactly the robustness a real data set
needs. Images are resized bilinearly with antialiasing; masks with nearest neighbour, so no
new class values appear on boundaries.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from minunet.errors import DataError


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully (decoded now, file closed), or raise a one-line DataError."""
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{path}: cannot decode this image ({exc}); replace or remove the file"
        ) from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode any image to RGB. Returns (H, W, 3) uint8."""
    return np.asarray(open_image(path).convert("RGB"), dtype=np.uint8)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of (H, W, C) or (H, W) uint8 to ``size = (height, width)``."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    squeeze = image.ndim == 3 and image.shape[2] == 1
    im = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=None))
    return out[..., None] if squeeze else out


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) label map to ``size = (height, width)``."""
    h, w = size
    if mask.shape == (h, w):
        return mask
    # Index arithmetic instead of Pillow: exact for any integer dtype, and pixel-centre aligned.
    rows = ((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.int64)
    cols = ((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.int64)
    return mask[rows[:, None], cols[None, :]]
