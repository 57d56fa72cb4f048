"""The convolutions' fast paths: ``FastConv2d`` and ``FastConvTranspose2d``.

Both do the reference's arithmetic (``minunet.nn.conv``, ``minunet.nn.conv_transpose``)
with faster pieces, chosen per call from the arrays they meet:

* NumPy, 3x3, stride 1, at least ``winograd.MIN_CHANNELS`` input and output channels (the
  U-Net's deep layers): Winograd F(2x2, 3x3) (``minunet.accel.winograd``), 16
  multiplications per output tile instead of 36.
* NumPy, stride 1, dilation 1, at least ``cpu.MIN_CHANNELS`` input channels (every other 3x3
  convolution of the U-Net after the first): the blocked channels-last convolution of
  ``minunet.accel.cpu``, which keeps only the input for the backward.
* Otherwise the im2col formulation, with its products split over images and threads on
  NumPy (``cpu.batched_matmul``; a plain ``@`` on CuPy) and, on CuPy, im2col and col2im as
  one GPU kernel each (``minunet.accel.cuda.im2col``).

With every switch off (``fast_paths(cpu=False, cuda=False)``) each piece is the
reference's own, and the result is the reference layer's to the bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minunet.accel import cpu, winograd
from minunet.accel.cuda import im2col as cuda_im2col
from minunet.nn.conv import Conv2d, Im2colCache
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

    im2col = staticmethod(cuda_im2col.im2col)
    col2im = staticmethod(cuda_im2col.col2im)

    def forward(self, x: Any) -> Any:
        ho, wo = self.check(x)
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
        cols = self.im2col(x, k, k, self.stride, self.padding, self.dilation)  # (N, C*k*k, P)
        out = cpu.batched_matmul(weight.reshape(self.out_channels, -1), cols)  # (N, K, P)
        if bias is not None:
            out += bias[:, None]
        self._cache = Im2colCache(x.shape, cols)
        return out.reshape(x.shape[0], self.out_channels, ho, wo)

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
            n, kout = dout.shape[:2]
            d = dout.reshape(n, kout, -1)  # (N, K, P)
            dw = cpu.batched_matmul(d, cache.cols.transpose(0, 2, 1)).sum(axis=0)
            db = d.sum(axis=(0, 2)) if has_bias else None
            dx = None
            if input_grad:
                dcols = cpu.batched_matmul(weight.data.reshape(kout, -1).T, d)  # (N, C*k*k, P)
                k, s, p, dil = self.kernel_size, self.stride, self.padding, self.dilation
                dx = self.col2im(dcols, cache.x_shape, k, k, s, p, dil)
        weight.grad += dw.reshape(weight.shape)
        if has_bias:
            self.params["bias"].grad += db
        return dx


class FastConvTranspose2d(ConvTranspose2d):
    """ConvTranspose2d with the fast paths above (its products are batched ones).

    x (N, C_in, H, W) -> (N, C_out, Ho, Wo)
    """

    im2col = staticmethod(cuda_im2col.im2col)
    col2im = staticmethod(cuda_im2col.col2im)

    def forward(self, x: Any) -> Any:
        ho, wo = self.check(x)
        n, c, h, w = x.shape
        w2 = self.params["weight"].data.reshape(c, -1)  # (C_in, K*k*k)
        cols = cpu.batched_matmul(w2.T, x.reshape(n, c, h * w))  # (N, K*k*k, H*W)
        self._cache = x
        return self.columns_to_image(cols, (n, self.out_channels, ho, wo), h, w)

    def backward(self, dout: Any) -> Any:
        x = self._cache
        n, c, h, w = x.shape
        dcols = self.image_to_columns(dout, h, w)  # (N, K*k*k, H*W)
        weight = self.params["weight"]
        dw = cpu.batched_matmul(x.reshape(n, c, h * w), dcols.transpose(0, 2, 1)).sum(axis=0)
        weight.grad += dw.reshape(weight.shape)
        if "bias" in self.params:
            self.params["bias"].grad += dout.sum(axis=(0, 2, 3))
        dx = cpu.batched_matmul(weight.data.reshape(c, -1), dcols)  # (N, C_in, H*W)
        return dx.reshape(x.shape)
