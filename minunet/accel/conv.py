"""The convolutions' fast paths: ``FastConv2d`` and ``FastConvTranspose2d``.

Both do the reference's arithmetic (``minunet.nn.conv``, ``minunet.nn.conv_transpose``)
with faster pieces, chosen per call from the arrays they meet:

* NumPy, 3x3, stride 1, with many channels in and out and enough output tiles (the
  U-Net's deep layers; ``winograd.tile_for``'s measured rule): Winograd F(4x4, 3x3) or
  F(2x2, 3x3) (``minunet.accel.winograd``), 36 multiplications per 4x4 output tile
  instead of 144, or 16 per 2x2 tile instead of 36. ``MINUNET_WINOGRAD=0`` switches it off.
* NumPy, stride 1, dilation 1 (every other convolution of the U-Net, its RGB input layer
  included): the blocked convolution (shifted rows) of ``minunet.accel.cpu``, which keeps
  only the input for the backward.
* Otherwise the im2col formulation, with its products split over images and threads on
  NumPy (``cpu.batched_matmul``; a plain ``@`` on CuPy) and, on CuPy, im2col and col2im as
  one GPU kernel each (``minunet.accel.cuda.im2col``).

With every switch off (``fast_paths(cpu=False, cuda=False)``) each piece is the
reference's own, and the result is the reference layer's to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minunet.accel import cpu, winograd
from minunet.accel.cuda import im2col as cuda_im2col
from minunet.nn.conv import Conv2d
from minunet.nn.conv_transpose import ConvTranspose2d


@dataclass
class BlockedConvCache:
    """The blocked convolution's backward rebuilds the columns block by block from x."""

    x: Any  # (N, C, H, W)


@dataclass
class WinogradCache:
    """The Winograd backward re-transforms x's tiles: x (N, C, H, W) and the tile size m."""

    x: Any
    tile: int


class FastConv2d(Conv2d):
    """Conv2d with the fast paths above. x (N, C_in, H, W) -> (N, C_out, Ho, Wo)."""

    matmul = staticmethod(cpu.batched_matmul)
    im2col = staticmethod(cuda_im2col.im2col)
    col2im = staticmethod(cuda_im2col.col2im)

    def forward(self, x: Any) -> Any:
        self.check(x)
        weight = self.params["weight"].data
        bias = self.params["bias"].data if "bias" in self.params else None
        k = self.kernel_size
        tile = winograd.tile_for(x, self.out_channels, k, self.stride, self.dilation, self.padding)
        if tile:
            self._cache = WinogradCache(x, tile)
            return winograd.conv2d_forward(x, weight, bias, self.padding, tile)
        if cpu.fast_conv_ok(x, self.stride, self.dilation, self.padding, k):
            self._cache = BlockedConvCache(x)
            return cpu.conv2d_forward(x, weight, bias, self.padding)
        return super().forward(x)  # im2col, with the batched products

    def backward(self, dout: Any, input_grad: bool = True) -> Any:
        weight, cache = self.params["weight"], self._cache
        has_bias = "bias" in self.params
        if isinstance(cache, WinogradCache):
            dx, dw, db = winograd.conv2d_backward(
                cache.x, weight.data, dout, self.padding, has_bias, input_grad, cache.tile
            )
        elif isinstance(cache, BlockedConvCache):
            dx, dw, db = cpu.conv2d_backward(
                cache.x, weight.data, dout, self.padding, has_bias, input_grad
            )
        else:
            return super().backward(dout, input_grad)
        weight.grad += dw.reshape(weight.shape)
        if has_bias:
            self.params["bias"].grad += db
        return dx


class FastConvTranspose2d(ConvTranspose2d):
    """ConvTranspose2d with the fast paths above (its products are batched ones) and, on
    NumPy with kernel == stride, the reference's interleaving copies split over images and
    threads, the bias added in the same pass.

    x (N, C_in, H, W) -> (N, C_out, Ho, Wo)
    """

    matmul = staticmethod(cpu.batched_matmul)
    im2col = staticmethod(cuda_im2col.im2col)
    col2im = staticmethod(cuda_im2col.col2im)

    def _threaded_copies(self, a: Any) -> bool:
        return cpu.applies(a) and self._patches_tile()

    def columns_to_image(
        self, cols: Any, out_shape: tuple[int, ...], h: int, w: int, out: Any = None
    ) -> Any:
        """cols (N, K*k*k, H*W) -> (N, K, Ho, Wo), bias added, in ``out`` (a fresh array if
        None): the reference's copies."""
        if not self._threaded_copies(cols):
            return super().columns_to_image(cols, out_shape, h, w, out)
        n, kout = out_shape[:2]
        k = self.kernel_size
        if out is None:
            out = np.empty(out_shape, dtype=cols.dtype)
        patches = cols.reshape(n, kout, k, k, h, w)
        bias = self.params["bias"].data[:, None, None] if "bias" in self.params else None

        def work(worker: int, images: Sequence[int]) -> None:
            for i in images:
                self._interleave(patches[i : i + 1], out[i : i + 1], bias)

        cpu.parallel(work, range(n))
        return out

    def image_to_columns(self, dout: Any, h: int, w: int) -> Any:
        """dout (N, K, Ho, Wo) -> dcols (N, K*k*k, H*W): the reference's copy, per image."""
        if not self._threaded_copies(dout):
            return super().image_to_columns(dout, h, w)
        n, kout, k = dout.shape[0], self.out_channels, self.kernel_size
        dcols = np.empty((n, kout, k, k, h, w), dtype=dout.dtype)
        patches = self._patches(dout, h, w)  # a view: the copy is the workers'

        def work(worker: int, images: Sequence[int]) -> None:
            for i in images:
                dcols[i] = patches[i]

        cpu.parallel(work, range(n))
        return dcols.reshape(n, kout * k * k, h * w)
