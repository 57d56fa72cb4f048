"""Conv2d: a convolution as im2col followed by one matrix multiply.

Forward, with W reshaped to (K, C*kh*kw) and cols = im2col(x) of shape (N, C*kh*kw, P),
P = Ho*Wo output pixels:

    out[n] = W @ cols[n] + b                                   (K, P)

Backward, from dout (N, K, P), is three lines of calculus on that product:

    dW = sum_n dout[n] @ cols[n]^T                             (K, C*kh*kw)
    db = sum_{n,p} dout[n, :, p]                               (K,)
    dx = col2im(W^T @ dout[n])                                 (N, C, H, W)

Weight (K, C, kh, kw) and bias (K,) have PyTorch's shapes and meaning (cross-correlation,
not a flipped kernel), and so does the output size.

Fast paths: ``FastConv2d`` (listed in ``minunet.accel.IMPLEMENTATIONS``;
``minunet.accel.accelerate`` gives it to a model). On NumPy, stride-1 convolutions with 8 or
more input channels are computed channels-last on blocks of image rows over threads
(``minunet.accel.cpu``), other products are split over images and threads; on CuPy,
im2col and col2im are one GPU kernel each. ``MINUNET_ACCEL=0`` turns them all off.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from minunet.core.im2col import col2im, conv_output_size, im2col
from minunet.nn.base import Layer, check_conv_arguments, check_input, conv_parameters


@dataclass
class Im2colCache:
    """What the backward needs: the input's shape and the columns, (N, C*kh*kw, P)."""

    x_shape: tuple[int, int, int, int]
    cols: Any


class Conv2d(Layer):
    """2-D convolution. x (N, C_in, H, W) -> (N, C_out, Ho, Wo)."""

    # The products (a plain ``a @ b``) and the column functions, as attributes so that a
    # fast subclass can swap in its own.
    matmul = staticmethod(operator.matmul)
    im2col = staticmethod(im2col)
    col2im = staticmethod(col2im)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        dilation: int = 1,
        *,
        dtype: Any = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        check_conv_arguments(
            "Conv2d", in_channels, out_channels, kernel_size, stride, padding, dilation
        )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation = dilation
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        fan_in = in_channels * kernel_size * kernel_size
        self.params.update(conv_parameters(shape, fan_in, out_channels, bias, rng, dtype))
        self._cache: Any = None

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """(Ho, Wo) for an (H, W) input, PyTorch's formula."""
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        return conv_output_size(h, k, s, p, d), conv_output_size(w, k, s, p, d)

    def check(self, x: Any) -> tuple[int, int]:
        """Raise a clear ValueError for a wrong input; return the output size (Ho, Wo)."""
        check_input(x, "Conv2d", self.in_channels, self.params["weight"].data.dtype)
        h, w = x.shape[2:]
        ho, wo = self.output_shape(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"Conv2d: input {h}x{w} is smaller than the kernel "
                f"({self.kernel_size}, dilation {self.dilation}, padding {self.padding})"
            )
        return ho, wo

    def forward(self, x: Any) -> Any:
        ho, wo = self.check(x)
        n, k = x.shape[0], self.kernel_size
        cols = self.im2col(x, k, k, self.stride, self.padding, self.dilation)  # (N, C*k*k, P)
        w2 = self.params["weight"].data.reshape(self.out_channels, -1)  # (K, C*k*k)
        out = self.matmul(w2, cols)  # W @ cols[n] for every n: (N, K, P)
        if "bias" in self.params:
            out += self.params["bias"].data[:, None]
        self._cache = Im2colCache(x.shape, cols)
        return out.reshape(n, self.out_channels, ho, wo)

    def backward(self, dout: Any, input_grad: bool = True) -> Any:
        """dout (N, C_out, Ho, Wo) -> dx (N, C_in, H, W); adds into the parameters' .grad.

        ``input_grad=False`` skips dx (returns None): a network's first layer needs none.
        """
        weight, cache = self.params["weight"], self._cache
        n, kout = dout.shape[:2]
        d = dout.reshape(n, kout, -1)  # (N, K, P)
        dw = self.matmul(d, cache.cols.transpose(0, 2, 1)).sum(axis=0)  # (K, C*k*k), sum over n
        weight.grad += dw.reshape(weight.shape)
        if "bias" in self.params:
            self.params["bias"].grad += d.sum(axis=(0, 2))
        if not input_grad:
            return None
        dcols = self.matmul(weight.data.reshape(kout, -1).T, d)  # (N, C*k*k, P)
        k = self.kernel_size
        return self.col2im(dcols, cache.x_shape, k, k, self.stride, self.padding, self.dilation)
