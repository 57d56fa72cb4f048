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

On the GPU each of those copies is a kernel launch of its own, plus one for the padded
copy, so CuPy arrays take two hand-written kernels instead (``IM2COL`` and ``COL2IM``
below, one pass each, padding read as zeros instead of copied). col2im is written as a
gather: one thread per *input* pixel adds up the few column entries that copied it, in
the same order as the slice additions, so no two threads ever write the same pixel.

Shapes: x (N, C, H, W); cols (N, C*kh*kw, Ho*Wo), rows ordered (c, i, j) like PyTorch's
weight (K, C, kh, kw), so ``weight.reshape(K, -1) @ cols`` needs no transpose.
"""

from __future__ import annotations

from typing import Any

from minunet.accel.cuda import kernel as cuda
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
    if cuda.enabled_for(x):
        return im2col_kernel(x, kh, kw, stride, padding, dilation)
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
    if cuda.enabled_for(cols):
        return col2im_kernel(cols, x_shape, kh, kw, stride, padding, dilation)
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


# --- The same two functions as CUDA kernels (CuPy arrays) ------------------------------

IM2COL = cuda.Kernel(
    r"""
// One thread per column entry e = (((n*C + c)*kh + i)*kw + j)*Ho*Wo + oh*Wo + ow:
//   cols[e] = x[n, c, oh*stride - pad + i*dil, ow*stride - pad + j*dil], 0 in the padding.
extern "C" __global__ void im2col(const T* __restrict__ x, T* __restrict__ cols,
                                  long long total, int H, int W, int kh, int kw,
                                  int Ho, int Wo, int stride, int pad, int dil) {
    for_each(e, total) {
        int ow = e % Wo;
        long long r = e / Wo;
        int oh = r % Ho;  r /= Ho;
        int j = r % kw;   r /= kw;
        int i = r % kh;   r /= kh;  // r = n*C + c: which image plane
        int h = oh * stride - pad + i * dil;
        int w = ow * stride - pad + j * dil;
        cols[e] = (h >= 0 && h < H && w >= 0 && w < W) ? x[(r * H + h) * W + w] : (T)0;
    }
}
"""
)

COL2IM = cuda.Kernel(
    r"""
// One thread per input pixel e = ((n*C + c)*H + h)*W + w. Tap (i, j) of output (oh, ow)
// read row h = oh*stride - pad + i*dil, so for each tap the output that read this pixel
// is oh = (h + pad - i*dil) / stride, when that divides exactly and lies in [0, Ho).
extern "C" __global__ void col2im(const T* __restrict__ cols, T* __restrict__ x,
                                  long long total, int H, int W, int kh, int kw,
                                  int Ho, int Wo, int stride, int pad, int dil) {
    for_each(e, total) {
        int w = e % W;
        long long r = e / W;
        int h = r % H;  r /= H;  // r = n*C + c
        T sum = 0;
        for (int i = 0; i < kh; ++i) {
            int top = h + pad - i * dil;
            if (top < 0 || top % stride != 0 || top / stride >= Ho) continue;
            for (int j = 0; j < kw; ++j) {
                int left = w + pad - j * dil;
                if (left < 0 || left % stride != 0 || left / stride >= Wo) continue;
                sum += cols[(((r * kh + i) * kw + j) * Ho + top / stride) * Wo + left / stride];
            }
        }
        x[e] = sum;
    }
}
"""
)


def im2col_kernel(
    x: Any, kh: int, kw: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> Any:
    """``im2col`` in one kernel launch. x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho = conv_output_size(h, kh, stride, padding, dilation)
    wo = conv_output_size(w, kw, stride, padding, dilation)
    x = xp.ascontiguousarray(x)
    cols = xp.empty((n, c * kh * kw, ho * wo), dtype=x.dtype)
    args = (h, w, kh, kw, ho, wo, stride, padding, dilation)
    IM2COL(cols.size, x.dtype, x, cols, cols.size, *args)
    return cols


def col2im_kernel(
    cols: Any,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Any:
    """``col2im`` in one kernel launch. cols (N, C*kh*kw, Ho*Wo) -> (N, C, H, W)."""
    xp = get_array_module(cols)
    n, c, h, w = x_shape
    ho = conv_output_size(h, kh, stride, padding, dilation)
    wo = conv_output_size(w, kw, stride, padding, dilation)
    cols = xp.ascontiguousarray(cols)
    x = xp.empty((n, c, h, w), dtype=cols.dtype)
    args = (h, w, kh, kw, ho, wo, stride, padding, dilation)
    COL2IM(x.size, cols.dtype, cols, x, x.size, *args)
    return x
