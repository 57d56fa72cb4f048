"""Reading and resizing images and masks on the host, with Pillow: all of minunet's decoding.

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

# Modes whose pixels are one intensity; anything else is converted to RGB first.
GRAY_MODES = {"1", "L", "LA", "I", "F"}


def decodable_extensions() -> set[str]:
    """The file extensions (lower case, with the dot) Pillow has a decoder for."""
    Image.init()  # registers every plugin, so TIFF, GIF, BMP, ... are all known
    return {ext.lower() for ext in Image.registered_extensions()}


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


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image to (H, W, 1) uint8 if it is grayscale, else (H, W, 3) uint8.

    Grayscale: a single-channel mode, or RGB with R = G = B everywhere. 16-bit and 32-bit
    integer images are scaled by ``v / 257`` (clipped to 0..65535 first); float images
    in [0, 1] are scaled by 255, other float images clipped to 0..255. Alpha is dropped.
    """
    return image_array(open_image(path))


def image_array(im: Image.Image) -> np.ndarray:
    """``read_image`` for an opened Pillow image (e.g. one page of a multi-page TIFF)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        raw = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return ((raw * 255 + 32767) // 65535).astype(np.uint8)[..., None]
    if mode == "F":
        raw = np.asarray(im, dtype=np.float64)
        raw = raw * 255.0 if raw.size and raw.max() <= 1.0 else raw
        return np.clip(np.round(raw), 0, 255).astype(np.uint8)[..., None]
    if mode in GRAY_MODES:
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., :1])
    return rgb


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) uint32 ``r * 65536 + g * 256 + b``."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def read_mask_values(path: str | os.PathLike, colour: bool = False) -> np.ndarray:
    """The raw value of every pixel of a mask file, before any class mapping.

    colour=False: (H, W) integer values (the palette index for mode P, the gray level for
    L, 0/255 for 1-bit, the 16-bit value for I;16; RGB only when R = G = B).
    colour=True: (H, W) uint32 packed colours (see ``pack_rgb``), whatever the mode.
    """
    im = open_image(path)
    if colour:
        return pack_rgb(np.asarray(im.convert("RGB")))
    if im.mode in ("P", "L") or im.mode.startswith("I;16"):
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    if im.mode in ("LA", "PA"):
        return np.asarray(im)[..., 0]
    if im.mode in ("I", "F"):
        raw = np.asarray(im)
        if im.mode == "F" and not np.array_equal(raw, np.round(raw)):
            raise DataError(
                f"{path}: mask has fractional values; save masks as integer class images"
            )
        return raw.astype(np.int64)
    rgb = np.asarray(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0]
    # A colour mask needs the colour of each class, which only the data set can say.
    raise DataError(
        f"{path}: colour-coded RGB mask but no classes.json; write ROOT/classes.json "
        'mapping each class name to its colour, e.g. {"background": [0, 0, 0], '
        '"road": [128, 64, 128]}, or save masks as class-index images'
    )


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
