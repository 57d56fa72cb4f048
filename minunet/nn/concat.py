"""Concat: the U-Net's skip connection, joining encoder and decoder maps along channels.

    out = concatenate([crop(skip), up], axis=1)      (N, C_skip + C_up, H, W)

For a "same"-padding U-Net the two maps have the same size. For the paper's "valid"
network the encoder map is larger (every unpadded 3x3 convolution trims a pixel from
each side), so its centre is cropped to the decoder's size, as in the paper's figure 1.
Backward splits the gradient along channels and pads the skip's part back with zeros:
the cropped-away border did not reach the output, so its gradient is zero.

The U-Net's decoder avoids one of forward's two copies: it asks for ``room`` first, the
(N, C_up, H, W) part of a fresh output buffer behind the skip's channels, and has the
up-convolution write its map there (``ConvTranspose2d.forward(x, out=room)``); handed
that same view, forward then copies only the skip in. Backward returns views of dout
(for a cropped skip, a zero-padded copy of its part).
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
        self._room: Any = None  # (buffer, its up part) handed out by ``room``

    def room(self, skip: Any, up_shape: tuple[int, ...]) -> Any:
        """The up part (N, C_up, H, W) of a fresh output buffer (N, C_skip + C_up, H, W),
        for the layer that makes ``up`` to write into; ``forward(skip, that view)`` then
        returns the buffer with the skip copied in. Good for the next forward only."""
        n, cs = skip.shape[:2]
        cu, h, w = up_shape[-3:]
        buffer = get_array_module(skip).empty((n, cs + cu, h, w), dtype=skip.dtype)
        self._room = (buffer, buffer[:, cs:])
        return self._room[1]

    def forward(self, skip: Any, up: Any) -> Any:
        xp = get_array_module(skip, up)
        if skip.ndim != 4 or up.ndim != 4 or skip.shape[0] != up.shape[0]:
            raise ValueError(
                "Concat expects two 4-D maps (N, C, H, W) with the same batch size, got "
                f"{tuple(skip.shape)} and {tuple(up.shape)}"
            )
        rows, cols = centre_crop_box(skip.shape[2:], up.shape[2:])
        self._cache = (skip.shape, skip.shape[1], rows, cols)
        room, self._room = self._room, None
        if room is not None and room[1] is up and room[0].shape[1] == skip.shape[1] + up.shape[1]:
            room[0][:, : skip.shape[1]] = skip[:, :, rows, cols]  # up is in place already
            return room[0]
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
