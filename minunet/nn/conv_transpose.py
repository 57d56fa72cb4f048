"""ConvTranspose2d: the backward pass of a convolution, used as a layer.

A transposed convolution is the adjoint of Conv2d with respect to its input: where a
convolution gathers a (C, kh, kw) patch into one output pixel, the transposed one
scatters every input pixel, weighted by the kernel, into a (kh, kw) patch of the output.
So its forward is exactly Conv2d's ``dx`` computation, and its backward is Conv2d's
forward:

    cols = W^T @ x[n]          (K*kh*kw, H*W)     W reshaped to (C_in, K*kh*kw)
    y    = col2im(cols)        (N, K, Ho, Wo)     Ho = (H-1)*s - 2p + (kh-1)*d + op + 1

    backward:  dcols = im2col(dy),  dx[n] = W @ dcols[n],  dW = sum_n x[n] @ dcols[n]^T

The weight is (C_in, C_out, kh, kw), PyTorch's layout for this layer.
In the U-Net, a 2x2 kernel with stride 2 doubles the resolution; the patches then do not
overlap, and col2im's additions are plain copies. So when kernel == stride (no padding,
no dilation) both directions skip im2col/col2im: the forward is the product followed by
k*k strided copies that interleave the k*k outputs of each input pixel,

    cols (N, K, k, k, H, W)  ->  y[n, o, h*k + a, w*k + b] = cols[n, o, a, b, h, w]

and the backward reads dy through the inverse permutation (one copy) into dcols.

Fast paths: ``FastConvTranspose2d`` (listed in ``minunet.accel.IMPLEMENTATIONS``;
``minunet.accel.accelerate`` gives it to a model). On NumPy the products are split over
images and threads; on CuPy im2col and col2im are one GPU kernel each. ``MINUNET_ACCEL=0``
turns them all off.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module
from minunet.core.im2col import col2im, im2col
from minunet.nn.base import Layer, check_conv_arguments, check_input, conv_parameters


class ConvTranspose2d(Layer):
    """Transposed 2-D convolution. x (N, C_in, H, W) -> (N, C_out, Ho, Wo)."""

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
        output_padding: int = 0,
        bias: bool = True,
        dilation: int = 1,
        *,
        dtype: Any = np.float32,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        check_conv_arguments(
            "ConvTranspose2d", in_channels, out_channels, kernel_size, stride, padding, dilation
        )
        if not 0 <= output_padding < stride:
            # PyTorch also allows output_padding < dilation; those extra rows receive no
            # input at all, and supporting them is not worth the special case here.
            raise ValueError(
                f"ConvTranspose2d: output_padding ({output_padding}) must be >= 0 and "
                f"smaller than stride ({stride})"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.output_padding, self.dilation = output_padding, dilation
        # Each output pixel receives in_channels * (k/s)^2 contributions; for the U-Net's
        # k = s = 2 that is in_channels, the fan-in He initialisation should use.
        fan_in = max(1, in_channels * (kernel_size // stride) ** 2)
        shape = (in_channels, out_channels, kernel_size, kernel_size)
        self.params.update(conv_parameters(shape, fan_in, out_channels, bias, rng, dtype))
        self._cache: Any = None

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """(Ho, Wo) for an (H, W) input, PyTorch's formula."""
        s, p, op = self.stride, self.padding, self.output_padding
        span = self.dilation * (self.kernel_size - 1)  # from the first tap to the last
        return (h - 1) * s - 2 * p + span + op + 1, (w - 1) * s - 2 * p + span + op + 1

    def check(self, x: Any) -> tuple[int, int]:
        """Raise a clear ValueError for a wrong input; return the output size (Ho, Wo)."""
        check_input(x, "ConvTranspose2d", self.in_channels, self.params["weight"].data.dtype)
        h, w = x.shape[2:]
        ho, wo = self.output_shape(h, w)
        if ho < 1 or wo < 1:
            raise ValueError(f"ConvTranspose2d: output would be {ho}x{wo} for a {h}x{w} input")
        return ho, wo

    def forward(self, x: Any, out: Any = None) -> Any:
        """x (N, C_in, H, W) -> y (N, C_out, Ho, Wo), written into ``out`` if given: an
        array (or a view of one, such as the U-Net's concatenation buffer) of y's shape
        and dtype, which is returned."""
        ho, wo = self.check(x)
        n, c, h, w = x.shape
        shape = (n, self.out_channels, ho, wo)
        if out is not None and (tuple(out.shape) != shape or out.dtype != x.dtype):
            raise ValueError(
                f"ConvTranspose2d: out must be {shape} {x.dtype}, got "
                f"{tuple(out.shape)} {out.dtype}"
            )
        w2 = self.params["weight"].data.reshape(c, -1)  # (C_in, K*k*k)
        cols = self.matmul(w2.T, x.reshape(n, c, h * w))  # (N, K*k*k, H*W)
        self._cache = x
        return self.columns_to_image(cols, shape, h, w, out)

    def backward(self, dout: Any) -> Any:
        x = self._cache
        n, c, h, w = x.shape
        dcols = self.image_to_columns(dout, h, w)  # (N, K*k*k, H*W)
        weight = self.params["weight"]
        # dW (C_in, K*k*k): sum_n x[n] (C_in, H*W) @ dcols[n]^T
        dw = self.matmul(x.reshape(n, c, h * w), dcols.transpose(0, 2, 1)).sum(axis=0)
        weight.grad += dw.reshape(weight.shape)
        if "bias" in self.params:
            self.params["bias"].grad += dout.sum(axis=(0, 2, 3))
        dx = self.matmul(weight.data.reshape(c, -1), dcols)  # (N, C_in, H*W)
        return dx.reshape(x.shape)

    def columns_to_image(
        self, cols: Any, out_shape: tuple[int, ...], h: int, w: int, out: Any = None
    ) -> Any:
        """cols (N, K*k*k, H*W) -> the output (N, K, Ho, Wo), bias added, in ``out`` (a
        fresh array if None)."""
        n, kout, ho, wo = out_shape
        k = self.kernel_size
        if self._patches_tile():
            if out is None:
                out = get_array_module(cols).empty(out_shape, dtype=cols.dtype)
            self._interleave(cols.reshape(n, kout, k, k, h, w), out)
        else:
            image = self.col2im(cols, out_shape, k, k, self.stride, self.padding, self.dilation)
            if out is None:
                out = image
            else:
                out[...] = image
        if "bias" in self.params:
            out += self.params["bias"].data[:, None, None]
        return out

    def image_to_columns(self, dout: Any, h: int, w: int) -> Any:
        """dout (N, K, Ho, Wo) -> dcols (N, K*k*k, H*W): the adjoint of the scatter above."""
        n, k = dout.shape[0], self.kernel_size
        if self._patches_tile():  # the forward's permutation, inverted: one copy
            return self._patches(dout, h, w).reshape(n, self.out_channels * k * k, h * w)
        return self.im2col(dout, k, k, self.stride, self.padding, self.dilation)

    def _interleave(self, patches: Any, out: Any, bias: Any = None) -> None:
        """patches (N, K, k, k, H, W) -> out (N, K, H*k, W*k), written in place, when the
        patches tile the output exactly: offset (a, b) of every patch is one strided slice
        of the output, so interleaving is k*k plain copies. ``bias`` (K, 1, 1), if given,
        is added in the same pass."""
        k = self.kernel_size
        xp = get_array_module(out)
        for a in range(k):
            for b in range(k):
                if bias is None:
                    out[:, :, a::k, b::k] = patches[:, :, a, b]
                else:
                    xp.add(patches[:, :, a, b], bias, out=out[:, :, a::k, b::k])

    def _patches(self, dout: Any, h: int, w: int) -> Any:
        """The view (N, K, k, k, H, W) of dout (N, K, H*k, W*k) that ``_interleave`` wrote:
        [n, o, a, b, i, j] = dout[n, o, i*k + a, j*k + b]."""
        n, k = dout.shape[0], self.kernel_size
        return dout.reshape(n, self.out_channels, h, k, w, k).transpose(0, 1, 3, 5, 2, 4)

    def _patches_tile(self) -> bool:
        """True when each input pixel owns its own k x k output patch (kernel == stride)."""
        return (
            self.kernel_size == self.stride
            and self.padding == 0
            and self.dilation == 1
            and self.output_padding == 0
        )
