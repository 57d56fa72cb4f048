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

On NumPy, stride-1 convolutions (every convolution of the U-Net) take the fast path of
``minunet.accel.cpu``: the same products, done channels-last on cache-sized blocks of image
rows over two threads, which is 2-5x faster on a small CPU. The im2col code below is the
reference it is tested against, and what CuPy and every other geometry run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minunet.accel import cpu
from minunet.core.im2col import col2im, conv_output_size, im2col
from minunet.nn.base import Layer, Parameter, check_input, he_normal


class Conv2d(Layer):
    """2-D convolution. x (N, C_in, H, W) -> (N, C_out, Ho, Wo)."""

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
        if min(in_channels, out_channels, kernel_size, stride, dilation) < 1 or padding < 0:
            raise ValueError(
                "Conv2d needs positive channels, kernel_size, stride and dilation, "
                f"and padding >= 0; got in={in_channels} out={out_channels} "
                f"k={kernel_size} s={stride} p={padding} d={dilation}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation = dilation
        rng = rng or np.random.default_rng()
        fan_in = in_channels * kernel_size * kernel_size
        w = he_normal((out_channels, in_channels, kernel_size, kernel_size), fan_in, rng, dtype)
        self.params["weight"] = Parameter(w)
        if bias:
            self.params["bias"] = Parameter(np.zeros(out_channels, dtype=dtype))
        self._cache: tuple | None = None

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """(Ho, Wo) for an (H, W) input, PyTorch's formula."""
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        return conv_output_size(h, k, s, p, d), conv_output_size(w, k, s, p, d)

    def forward(self, x: Any) -> Any:
        weight = self.params["weight"].data
        check_input(x, "Conv2d", self.in_channels, weight.dtype)
        n, _, h, w = x.shape
        ho, wo = self.output_shape(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(
                f"Conv2d: input {h}x{w} is smaller than the kernel "
                f"({self.kernel_size}, dilation {self.dilation}, padding {self.padding})"
            )
        k = self.kernel_size
        bias = self.params["bias"].data if "bias" in self.params else None
        if cpu.fast_conv_ok(x, self.stride, self.dilation, self.padding, k):
            self._cache = ("fast", x)  # the backward rebuilds the columns block by block
            return cpu.conv2d_forward(x, weight, bias, self.padding)
        cols = im2col(x, k, k, self.stride, self.padding, self.dilation)  # (N, C*k*k, P)
        w2 = weight.reshape(self.out_channels, -1)  # (K, C*k*k)
        out = cpu.batched_matmul(w2, cols)  # (N, K, P), ``@`` split over images and threads
        if bias is not None:
            out += bias[:, None]
        self._cache = ("im2col", x.shape, cols)
        return out.reshape(n, self.out_channels, ho, wo)

    def backward(self, dout: Any, input_grad: bool = True) -> Any:
        """dout (N, C_out, Ho, Wo) -> dx (N, C_in, H, W); adds into the parameters' .grad.

        ``input_grad=False`` skips dx (returns None): a network's first layer needs none.
        """
        weight = self.params["weight"]
        if self._cache[0] == "fast":
            x = self._cache[1]
            has_bias = "bias" in self.params
            dx, dw, db = cpu.conv2d_backward(
                x, weight.data, dout, self.padding, has_bias, input_grad
            )
            weight.grad += dw
            if has_bias:
                self.params["bias"].grad += db
            return dx
        _, x_shape, cols = self._cache
        n, kout = dout.shape[:2]
        d = dout.reshape(n, kout, -1)  # (N, K, P)
        # dW = sum_n d[n] @ cols[n]^T: a batched product, then a sum over the batch.
        dw = cpu.batched_matmul(d, cols.transpose(0, 2, 1)).sum(axis=0)  # (K, C*k*k)
        weight.grad += dw.reshape(weight.shape)
        if "bias" in self.params:
            self.params["bias"].grad += d.sum(axis=(0, 2))
        if not input_grad:
            return None
        dcols = cpu.batched_matmul(weight.data.reshape(kout, -1).T, d)  # (N, C*k*k, P)
        k = self.kernel_size
        return col2im(dcols, x_shape, k, k, self.stride, self.padding, self.dilation)
