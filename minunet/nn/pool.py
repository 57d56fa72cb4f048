"""MaxPool2d: keep the largest value of each window, and remember where it was.

Forward walks over the kh*kw offsets of the window (4 for the U-Net's 2x2 pool), each a
strided slice of the input, keeping the running maximum and the offset it came from:

    out[n, c, oh, ow]    = max_{i,j} x[n, c, oh*s + i, ow*s + j]
    argmax[n, c, oh, ow] = the (i, j) that attains it, stored as i*kw + j (uint8)

Backward routes each output gradient to the winning input pixel, and only there:

    dx[n, c, oh*s + i, ow*s + j] += dout[n, c, oh, ow]   where argmax == i*kw + j

Overlapping windows (stride < kernel) add, which the ``+=`` over offsets gives for free.
On ties the first offset in row-major order wins.

Fast path: ``FastMaxPool2d`` (``minunet.accel.pool``): the 2x2 tournament in channel
groups over both CPU cores on NumPy, and one GPU kernel for each direction on CuPy
(``KernelMaxPool2d``); listed in ``minunet.accel.IMPLEMENTATIONS``, and
``minunet.accel.accelerate`` gives it to a model. ``MINUNET_ACCEL=0`` turns it off
(``MINUNET_FAST_CPU=0``: the CPU part, ``MINUNET_CUDA_KERNELS=0``: every GPU kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minunet.core.backend import get_array_module
from minunet.core.im2col import conv_output_size
from minunet.nn.base import Layer


@dataclass
class PoolCache:
    """What the backward needs: the input's shape and dtype, and argmax (N, C, Ho, Wo) uint8."""

    x_shape: tuple[int, int, int, int]
    dtype: Any
    argmax: Any


class MaxPool2d(Layer):
    """Max pooling. x (N, C, H, W) -> (N, C, Ho, Wo), Ho = (H - k) // s + 1."""

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        stride = kernel_size if stride is None else stride
        if kernel_size < 1 or stride < 1 or kernel_size * kernel_size > 255:
            raise ValueError(
                f"MaxPool2d needs 1 <= kernel_size <= 15 and stride >= 1, "
                f"got kernel_size={kernel_size}, stride={stride}"
            )
        self.kernel_size, self.stride = kernel_size, stride
        self._cache: Any = None

    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        k, s = self.kernel_size, self.stride
        return conv_output_size(h, k, s), conv_output_size(w, k, s)

    def _window(self, x: Any, i: int, j: int, ho: int, wo: int) -> Any:
        """Offset (i, j) of every window: a strided view of x, (N, C, Ho, Wo)."""
        s = self.stride
        return x[:, :, i : i + s * ho : s, j : j + s * wo : s]

    def check(self, x: Any) -> tuple[int, int]:
        """Raise a clear ValueError for a wrong input; return the output size (Ho, Wo)."""
        if getattr(x, "ndim", 0) != 4:
            raise ValueError(
                f"MaxPool2d expects a 4-D input (N, C, H, W), got shape {getattr(x, 'shape', None)}"
            )
        k = self.kernel_size
        ho, wo = self.output_shape(*x.shape[2:])
        if ho < 1 or wo < 1:
            raise ValueError(
                f"MaxPool2d: input {x.shape[2]}x{x.shape[3]} is smaller than the {k}x{k} window"
            )
        return ho, wo

    def forward(self, x: Any) -> Any:
        ho, wo = self.check(x)
        xp = get_array_module(x)
        k = self.kernel_size
        if k == 2:
            out, argmax = self._forward_2x2(x, ho, wo)
            self._cache = PoolCache(x.shape, x.dtype, argmax)
            return out
        out = self._window(x, 0, 0, ho, wo).copy()
        argmax = xp.zeros(out.shape, dtype=xp.uint8)
        for i in range(k):
            for j in range(k):
                if i == j == 0:
                    continue
                window = self._window(x, i, j, ho, wo)
                better = window > out  # strict: the first maximum wins ties
                xp.copyto(out, window, where=better)
                # A masked copy, not argmax[better] = ...: boolean indexing first lists
                # the True positions, a second pass over memory.
                xp.copyto(argmax, xp.asarray(i * k + j, dtype=xp.uint8), where=better)
        self._cache = PoolCache(x.shape, x.dtype, argmax)
        return out

    def _forward_2x2(self, x: Any, ho: int, wo: int) -> tuple[Any, Any]:
        """The U-Net's 2x2 window as a tournament: the two pixels of each row, then the
        two row winners. Whole-array maxima and comparisons only (no masked copy per
        offset), so fewer passes over memory than the loop, for the same result, ties included."""
        xp = get_array_module(x)
        a, b, c, d = (self._window(x, i, j, ho, wo) for i in (0, 1) for j in (0, 1))
        top, bottom = xp.maximum(a, b), xp.maximum(c, d)
        argmax = (b > a).astype(xp.uint8)  # 0 or 1: the first maximum wins a tie
        arg_bottom = (d > c).astype(xp.uint8)
        arg_bottom += 2  # offsets 2 (1, 0) and 3 (1, 1)
        xp.copyto(argmax, arg_bottom, where=bottom > top)  # strict: the top row wins ties
        return xp.maximum(top, bottom), argmax

    def backward(self, dout: Any) -> Any:
        x_shape, dtype, argmax = self._cache.x_shape, self._cache.dtype, self._cache.argmax
        xp = get_array_module(dout)
        k = self.kernel_size
        ho, wo = dout.shape[2:]
        if self.stride == k and x_shape[2] == ho * k and x_shape[3] == wo * k:
            dx = xp.empty(x_shape, dtype=dtype)
            self._backward_tiled(dout, argmax, dx)
            return dx
        dx = xp.zeros(x_shape, dtype=dtype)
        for i in range(k):
            for j in range(k):
                routed = xp.where(argmax == i * k + j, dout, 0)
                self._window(dx, i, j, ho, wo)[...] += routed
        return dx

    def _backward_tiled(self, dout: Any, argmax: Any, dx: Any) -> None:
        """dx (N, C, H, W) from dout and argmax (N, C, Ho, Wo), written in place, when the
        windows tile the input: every input pixel is in exactly one window, so each
        offset's slice is written once, and dx needs no zero-fill and no +=."""
        xp = get_array_module(dout)
        k = self.kernel_size
        ho, wo = dout.shape[2:]
        for i in range(k):
            for j in range(k):
                xp.multiply(dout, argmax == i * k + j, out=self._window(dx, i, j, ho, wo))
