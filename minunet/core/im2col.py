"""im2col and col2im: a convolution becomes one matrix multiply.

A 2-D convolution slides a (C, kh, kw) kernel over the input. im2col copies every patch
the kernel sees into a column, so that the whole convolution is one product

    out[n, k, p] = sum_r  W[k, r] * cols[n, r, p]      r = (c, i, j), p = (oh, ow)

with W the weight reshaped to (K, C*kh*kw). col2im is the exact adjoint of im2col: it
sends every column entry back to the input pixel it was copied from, *adding* where
patches overlap. That sum is the backward pass of the copy, so dx = col2im(W^T @ dout).

Both are written without a loop over output pixels. There are only kh*kw kernel offsets
(9 for a 3x3 kernel), and for one offset (i, j) the entries of every patch form a strided
slice of the padded input:

    cols[n, c, i, j, oh, ow] = x_pad[n, c, i*d + oh*s, j*d + ow*s]

so im2col is kh*kw slice copies and col2im kh*kw slice additions. The same lines run on
NumPy and CuPy, since both index and add slices alike.

Fast path: on CuPy, ``minunet.accel.cuda.im2col`` does each in one GPU kernel (the layers
that call these, ``FastConv2d`` and ``FastConvTranspose2d``, use it).

Shapes: x (N, C, H, W); cols (N, C*kh*kw, Ho*Wo), rows ordered (c, i, j) like PyTorch's
weight (K, C, kh, kw), so ``weight.reshape(K, -1) @ cols`` needs no transpose.
"""

from __future__ import annotations

from typing import Any

from minunet.core.backend import get_array_module


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a convolution along one axis (PyTorch's formula)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x: Any, kh: int, kw: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Any:
    """Unroll every (C, kh, kw) patch of ``x`` into a column.

    x: (N, C, H, W)  ->  cols: (N, C*kh*kw, Ho*Wo)
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho = conv_output_size(h, kh, stride, padding, dilation)
    wo = conv_output_size(w, kw, stride, padding, dilation)
    if kh == kw == 1 and stride == 1 and padding == 0:
        return x.reshape(n, c, h * w)  # a 1x1 convolution's columns are the input itself
    if padding:
        # One padded copy; every offset below is then a plain slice of it.
        x_pad = xp.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
        x_pad[:, :, padding : padding + h, padding : padding + w] = x
    else:
        x_pad = x
    cols = xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        top = i * dilation
        for j in range(kw):
            left = j * dilation
            # Offset (i, j) of every patch: a strided slice of the padded input.
            cols[:, :, i, j] = x_pad[
                :, :, top : top + stride * ho : stride, left : left + stride * wo : stride
            ]
    return cols.reshape(n, c * kh * kw, ho * wo)


def col2im(
    cols: Any,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Any:
    """Adjoint of ``im2col``: add every column entry back onto the pixel it came from.

    cols: (N, C*kh*kw, Ho*Wo)  ->  (N, C, H, W) with H, W from ``x_shape``
    """
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    ho = conv_output_size(h, kh, stride, padding, dilation)
    wo = conv_output_size(w, kw, stride, padding, dilation)
    if kh == kw == 1 and stride == 1 and padding == 0:
        return cols.reshape(n, c, h, w)
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    # The padded canvas is large enough for every slice; the padding ring is dropped at the
    # end (its gradient belongs to the zeros that were padded in, not to x).
    hp = max(h + 2 * padding, dilation * (kh - 1) + stride * (ho - 1) + 1)
    wp = max(w + 2 * padding, dilation * (kw - 1) + stride * (wo - 1) + 1)
    x_pad = xp.zeros((n, c, hp, wp), dtype=cols.dtype)
    for i in range(kh):
        top = i * dilation
        for j in range(kw):
            left = j * dilation
            x_pad[:, :, top : top + stride * ho : stride, left : left + stride * wo : stride] += (
                cols[:, :, i, j]
            )
    return x_pad[:, :, padding : padding + h, padding : padding + w]
