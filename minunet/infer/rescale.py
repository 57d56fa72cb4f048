"""Running a model at the scale it learned: resize the image in, resize the logits out.

A model trained on images resized to S x S has learned objects at that scale. Run on a
photo at its native resolution, it sees every object larger than it ever did (a 4000 px
phone photo: some 30 times), and its masks fall apart. So a resized model predicts on the
image resized to S x S (bilinear, as in training) and its logits are resized back to the
native size (bilinear) before the argmax: the class boundaries are interpolated smoothly,
where resizing the class map would give blocks.

Bilinear resizing here uses half-pixel centres (PyTorch's ``align_corners=False``): output
pixel i of n samples the input at (i + 0.5) * m / n - 0.5, clamped to the edge.
"""

from __future__ import annotations

from typing import Any

from minunet.core.backend import get_array_module


def _taps(n_out: int, n_in: int, xp: Any) -> tuple[Any, Any, Any]:
    """For each output index: the two input indices it lies between and the weight of the
    second, (n_out,) each."""
    pos = (xp.arange(n_out, dtype=xp.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = xp.clip(pos, 0, n_in - 1)
    lo = xp.floor(pos).astype(xp.int64)
    hi = xp.minimum(lo + 1, n_in - 1)
    return lo, hi, pos - lo


def resize_bilinear(maps: Any, height: int, width: int) -> Any:
    """Bilinear resize of maps (..., h, w) to (..., height, width), half-pixel centres.

    Separable: first along the rows, then along the columns; keeps the dtype of ``maps``.
    """
    xp = get_array_module(maps)
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps
    lo, hi, t = _taps(height, h, xp)
    t = t.astype(maps.dtype)[:, None]
    rows = maps[..., lo, :] * (1 - t) + maps[..., hi, :] * t  # (..., height, w)
    lo, hi, t = _taps(width, w, xp)
    t = t.astype(maps.dtype)
    return rows[..., lo] * (1 - t) + rows[..., hi] * t  # (..., height, width)
