"""MaxPool2d as two GPU kernels, one pass each (``KernelMaxPool2d``).

The reference (``minunet.nn.pool``) walks the window's offsets, each a strided pass over
memory of its own on the GPU (several, with the masked copies). Forward here: one thread
per output element scans its window and writes the maximum and its offset, with the same
tie rule (the first maximum in row-major order wins). Backward is a gather: one thread
per *input* pixel adds up the gradients of the windows whose argmax points at it, in the
same order as the reference's slice additions, so no two threads write the same pixel
and the result equals the reference's exactly (as numbers: where the windows tile the
input, NumPy writes dout * 0, which can be -0.0 where the kernel has 0).
"""

from __future__ import annotations

from typing import Any

from minunet.accel.cuda import kernel as cuda
from minunet.core.backend import get_array_module
from minunet.core.im2col import conv_output_size
from minunet.nn.pool import MaxPool2d, PoolCache

MAXPOOL_FORWARD = cuda.Kernel(
    r"""
// One thread per output element e = ((n*C + c)*Ho + oh)*Wo + ow: scans its k x k window
// x[n, c, oh*stride + i, ow*stride + j] in row-major (i, j) order and keeps the first
// maximum (strict >, like the NumPy code) and its offset i*k + j.
extern "C" __global__ void maxpool_forward(const T* __restrict__ x, T* __restrict__ out,
                                           unsigned char* __restrict__ argmax,
                                           long long total, int H, int W, int Ho, int Wo,
                                           int k, int stride) {
    for_each(e, total) {
        int ow = e % Wo;
        long long r = e / Wo;
        int oh = r % Ho;  r /= Ho;  // r = n*C + c: which image plane
        const T* window = x + (r * H + oh * stride) * W + ow * stride;  // its top-left pixel
        T best = window[0];
        int best_at = 0;
        for (int i = 0; i < k; ++i)
            for (int j = 0; j < k; ++j)
                if (window[i * W + j] > best) {  // strict: the first maximum wins ties
                    best = window[i * W + j];
                    best_at = i * k + j;
                }
        out[e] = best;
        argmax[e] = (unsigned char)best_at;
    }
}
"""
)

MAXPOOL_BACKWARD = cuda.Kernel(
    r"""
// One thread per input pixel e = ((n*C + c)*H + h)*W + w. Offset (i, j) of window
// (oh, ow) is pixel (oh*stride + i, ow*stride + j), so for each offset the window that
// holds this pixel is oh = (h - i) / stride, when that divides exactly and lies in
// [0, Ho). The pixel's gradient is the sum of dout over those windows whose argmax is
// i*k + j, added in the NumPy code's (i, j) order; 0 where no window covers the pixel.
extern "C" __global__ void maxpool_backward(const T* __restrict__ dout,
                                            const unsigned char* __restrict__ argmax,
                                            T* __restrict__ dx, long long total, int H, int W,
                                            int Ho, int Wo, int k, int stride) {
    for_each(e, total) {
        int w = e % W;
        long long r = e / W;
        int h = r % H;  r /= H;  // r = n*C + c
        T sum = 0;
        for (int i = 0; i < k; ++i) {
            int top = h - i;
            if (top < 0 || top % stride != 0 || top / stride >= Ho) continue;
            for (int j = 0; j < k; ++j) {
                int left = w - j;
                if (left < 0 || left % stride != 0 || left / stride >= Wo) continue;
                long long o = (r * Ho + top / stride) * Wo + left / stride;
                if (argmax[o] == i * k + j) sum += dout[o];
            }
        }
        dx[e] = sum;
    }
}
"""
)


def maxpool_forward_kernel(x: Any, kernel_size: int, stride: int) -> tuple[Any, Any]:
    """``MaxPool2d.forward`` in one kernel launch.

    x (N, C, H, W) -> out (N, C, Ho, Wo) of x's dtype, argmax (N, C, Ho, Wo) uint8 i*k + j
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kernel_size, stride), conv_output_size(w, kernel_size, stride)
    x = xp.ascontiguousarray(x)
    out = xp.empty((n, c, ho, wo), dtype=x.dtype)
    argmax = xp.empty((n, c, ho, wo), dtype=xp.uint8)
    MAXPOOL_FORWARD(out.size, x.dtype, x, out, argmax, out.size, h, w, ho, wo, kernel_size, stride)
    return out, argmax


def maxpool_backward_kernel(
    dout: Any, argmax: Any, x_shape: tuple[int, int, int, int], kernel_size: int, stride: int
) -> Any:
    """``MaxPool2d.backward`` in one kernel launch, a gather over input pixels.

    dout (N, C, Ho, Wo), argmax (N, C, Ho, Wo) uint8 -> dx (N, C, H, W) of dout's dtype
    """
    xp = get_array_module(dout)
    n, c, h, w = x_shape
    ho, wo = dout.shape[2:]
    dout, argmax = xp.ascontiguousarray(dout), xp.ascontiguousarray(argmax)
    dx = xp.empty((n, c, h, w), dtype=dout.dtype)
    MAXPOOL_BACKWARD(
        dx.size, dout.dtype, dout, argmax, dx, dx.size, h, w, ho, wo, kernel_size, stride
    )
    return dx


KERNELS = (MAXPOOL_FORWARD, MAXPOOL_BACKWARD)


class KernelMaxPool2d(MaxPool2d):
    """MaxPool2d through the two kernels above, for the arrays they apply to (CuPy float32
    and float64, ``MINUNET_CUDA_KERNELS`` not 0); the reference for all others."""

    def forward(self, x: Any) -> Any:
        if not cuda.enabled_for(x):
            return super().forward(x)
        self.check(x)
        out, argmax = maxpool_forward_kernel(x, self.kernel_size, self.stride)
        self._cache = PoolCache(x.shape, x.dtype, argmax)
        return out

    def backward(self, dout: Any) -> Any:
        if not cuda.enabled_for(dout):
            return super().backward(dout)
        c = self._cache
        # The kernel's T is one type for dout and dx; dx takes x's, as in the reference.
        dout = dout.astype(c.dtype, copy=False)
        return maxpool_backward_kernel(dout, c.argmax, c.x_shape, self.kernel_size, self.stride)
