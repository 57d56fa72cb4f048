"""im2col and col2im as GPU kernels: one pass each instead of one launch per kernel offset.

The reference (``minunet.core.im2col``) is kh*kw slice copies (or additions) plus a padded
copy of the input; on CuPy each of those is a kernel launch and a pass over memory of its
own. ``IM2COL`` reads the padding as zeros instead of copying it, and ``COL2IM`` is
written as a gather: one thread per *input* pixel adds up the few column entries that
copied it, in the same order as the slice additions, so no two threads ever write the
same pixel and the sums equal the reference's.

``im2col`` and ``col2im`` below take the kernels for arrays they apply to (CuPy float32 and
float64, kernels switched on) and the reference otherwise: ``FastConv2d`` and
``FastConvTranspose2d`` (``minunet.accel.conv``) call them.
"""

from __future__ import annotations

from typing import Any

from minunet.accel.cuda import kernel as cuda
from minunet.core import im2col as reference
from minunet.core.backend import get_array_module
from minunet.core.im2col import conv_output_size

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


KERNELS = (IM2COL, COL2IM)


def im2col(x: Any, kh: int, kw: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Any:
    """``minunet.core.im2col.im2col``, in one kernel where the kernels apply."""
    if cuda.enabled_for(x) and not (kh == kw == 1 and stride == 1 and padding == 0):
        return im2col_kernel(x, kh, kw, stride, padding, dilation)
    return reference.im2col(x, kh, kw, stride, padding, dilation)


def col2im(
    cols: Any,
    x_shape: tuple[int, int, int, int],
    kh: int,
    kw: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Any:
    """``minunet.core.im2col.col2im``, in one kernel where the kernels apply."""
    if cuda.enabled_for(cols) and not (kh == kw == 1 and stride == 1 and padding == 0):
        return col2im_kernel(cols, x_shape, kh, kw, stride, padding, dilation)
    return reference.col2im(cols, x_shape, kh, kw, stride, padding, dilation)
