"""Concat: the U-Net's skip connection, joining encoder and decoder maps along channels.

    out = concatenate([crop(skip), up], axis=1)      (N, C_skip + C_up, H, W)

For a "same"-padding U-Net the two maps have the same size. For the paper's "valid"
network the encoder map is larger (every unpadded 3x3 convolution trims a pixel from
each side), so its centre is cropped to the decoder's size, as in the paper's figure 1.
Backward splits the gradient along channels and pads the skip's part back with zeros:
the cropped-away border did not reach the output, so its gradient is zero.

No fast path: a copy each way.
"""

from __future__ import annotations

from typing import Any

from minunet.core.backend import get_array_module
from minunet.nn.base import Layer


def centre_crop_box(big: tuple[int, int], small: tuple[int, int]) -> tuple[slice, slice]:
    """Row and column slices of the centred ``small`` (h, w) window inside ``big`` (H, W)."""
    dh, dw = big[0] - small[0], big[1] - small[1]
    if dh < 0 or dw < 0:
        raise ValueError(f"Concat: skip map {big} is smaller than the decoder map {small}")
    return slice(dh // 2, dh // 2 + small[0]), slice(dw // 2, dw // 2 + small[1])


class Concat(Layer):
    """skip (N, Cs, Hs, Ws), up (N, Cu, H, W) -> (N, Cs + Cu, H, W), Hs >= H, Ws >= W."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None

    def forward(self, skip: Any, up: Any) -> Any:
        xp = get_array_module(skip, up)
        if skip.ndim != 4 or up.ndim != 4 or skip.shape[0] != up.shape[0]:
            raise ValueError(
                "Concat expects two 4-D maps (N, C, H, W) with the same batch size, got "
                f"{tuple(skip.shape)} and {tuple(up.shape)}"
            )
        rows, cols = centre_crop_box(skip.shape[2:], up.shape[2:])
        self._cache = (skip.shape, skip.shape[1], rows, cols)
        return xp.concatenate([skip[:, :, rows, cols], up], axis=1)

    def backward(self, dout: Any) -> tuple[Any, Any]:
        """Returns (d_skip, d_up)."""
        skip_shape, cs, rows, cols = self._cache
        xp = get_array_module(dout)
        d_up = dout[:, cs:]
        if skip_shape[2:] == dout.shape[2:]:
            return dout[:, :cs], d_up
        d_skip = xp.zeros(skip_shape, dtype=dout.dtype)
        d_skip[:, :, rows, cols] = dout[:, :cs]
        return d_skip, d_up
