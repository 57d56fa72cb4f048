"""BatchNorm2d: normalise each channel over the batch and the image, then scale and shift.

Training, per channel c, with m = N*H*W values:

    mean = (1/m) sum x            var = (1/m) sum (x - mean)^2      rstd = 1/sqrt(var + eps)
    xhat = (x - mean) * rstd      out = gamma * xhat + beta

Backward (the forward saves xhat and rstd for it):

    dbeta  = sum dout             dgamma = sum dout * xhat
    dx = (gamma * rstd / m) * (m * dout - dbeta - xhat * dgamma)

With ``relu=True`` the layer also applies the ReLU that follows it in every U-Net block,
out = max(gamma * xhat + beta, 0), and its backward first lets dout through only where
out > 0. One layer instead of two saves a full-size array per block: a separate ReLU
would keep its own output for its backward.

The running statistics follow PyTorch: running = (1 - momentum) * running + momentum *
batch, with the *unbiased* variance (m / (m - 1)) in running_var while the forward itself
divides by the biased one. In eval mode the running statistics replace the batch's, the
layer is a fixed per-channel affine map, and dx = dout * gamma * rstd.

Synchronised BatchNorm (data-parallel training over R processes): set ``sync`` to an
allreduce-sum. The forward then sums [count, sum x, sum x^2] over all ranks, so every
rank normalises with the statistics of the *global* batch, and the backward sums
[dbeta, dgamma] the same way before forming dx: R processes compute exactly what one
process computes on the whole batch. The parameter gradients stay local; the optimiser's
gradient averaging combines them like every other gradient.

On the GPU, BatchNorm written with array operations is a dozen passes over memory, and
CuPy's reductions over the axes (0, 2, 3) of an NCHW array are slow (they are not
contiguous). Four kernels at the end of this file do it in four passes: the per-channel
sums of x, then xhat and out in one pass; in the backward, the per-channel sums of dout
and dout * xhat, then dx. The sums are per-thread partial sums in float64 (each thread
strides over one channel), added up by a contiguous reduction afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minunet import cuda
from minunet.backend import get_array_module
from minunet.layers.base import Layer, Parameter, check_input


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel, then optionally a ReLU.

    x (N, C, H, W) -> same shape.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        *,
        relu: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.relu = relu
        self.params["weight"] = Parameter(np.ones(num_features, dtype=dtype))  # gamma
        self.params["bias"] = Parameter(np.zeros(num_features, dtype=dtype))  # beta
        self.buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype=dtype)
        self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)
        self.sync: Any = None  # an allreduce-sum across data-parallel ranks, or None
        self._cache: Any = None

    def forward(self, x: Any) -> Any:
        gamma = self.params["weight"].data
        check_input(x, "BatchNorm2d", self.num_features, gamma.dtype)
        xp = get_array_module(x)
        if self.training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if cuda.enabled_for(x):
                mean, var, m = self._kernel_statistics(x, m)
            elif self.sync is None:
                mean = x.mean(axis=(0, 2, 3))
                # x - mean is needed anyway for xhat; its squares are summed in place by
                # einsum (no temporary), where x.var would recompute it and square it.
                xc = x - mean[:, None, None]
                var = xp.einsum("nchw,nchw->c", xc, xc) / m
            else:
                mean, var, m = self._global_statistics(x, m)
            if self.sync is None and m < 2:
                raise ValueError(
                    "BatchNorm2d in training needs more than one value per channel "
                    f"(N*H*W > 1), got input shape {tuple(x.shape)}"
                )
            mom = self.momentum
            self.buffers["running_mean"] = (1 - mom) * self.buffers["running_mean"] + mom * mean
            unbiased = var * (m / (m - 1))
            self.buffers["running_var"] = (1 - mom) * self.buffers["running_var"] + mom * unbiased
            self.buffers["num_batches_tracked"] = self.buffers["num_batches_tracked"] + 1
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        rstd = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)  # (C,)
        beta = self.params["bias"].data
        if cuda.enabled_for(x):
            xhat, out = batchnorm_forward_kernel(x, mean, rstd, gamma, beta, self.relu)
            self._cache = (xhat, rstd, self.training, m if self.training else None, None)
            return out
        # Every full-size pass costs a trip through memory (on the CPU, on one core), so
        # each is done in place where a fresh array is not needed: 4 passes, 2 arrays.
        xhat = xc if self.training and self.sync is None else x - mean[:, None, None]
        xhat *= rstd[:, None, None]  # (N, C, H, W)
        out = xhat * gamma[:, None, None]
        out += beta[:, None, None]
        if self.relu:
            xp.maximum(out, 0, out=out)
        # The ReLU's backward needs to know where out > 0: out itself is kept for that.
        relu_out = out if self.relu else None
        self._cache = (xhat, rstd, self.training, m if self.training else None, relu_out)
        return out

    def backward(self, dout: Any) -> Any:
        xhat, rstd, training, m, relu_out = self._cache
        gamma = self.params["weight"]
        if cuda.enabled_for(dout):
            return self._kernel_backward(dout)
        xp = get_array_module(dout)
        if self.relu:
            dout = dout * (relu_out > 0)  # the ReLU's backward, before the BatchNorm's
        dbeta = dout.sum(axis=(0, 2, 3))
        dgamma = xp.einsum("nchw,nchw->c", dout, xhat)  # sum of dout * xhat, no temporary
        self.params["bias"].grad += dbeta
        gamma.grad += dgamma
        scale = (gamma.data * rstd)[:, None, None]
        if not training:  # a fixed affine map: its Jacobian is diagonal
            return dout * scale
        if self.sync is not None:  # sums over the global batch, for dx only
            dbeta, dgamma = self.sync(xp.stack([dbeta, dgamma]))
        # dx = scale * (dout - dbeta/m - xhat * dgamma/m), in 4 passes over one new array
        dx = xhat * (-dgamma / m).astype(dout.dtype)[:, None, None]
        dx += dout
        dx -= (dbeta / m).astype(dout.dtype)[:, None, None]
        dx *= scale
        return dx

    def _global_statistics(self, x: Any, m: int) -> tuple[Any, Any, Any]:
        """Mean and biased variance per channel over every rank's batch, and their count."""
        xp = get_array_module(x)
        # float64 sums: var = E[x^2] - mean^2 loses digits when |mean| >> std, as many as
        # float32 has (with a mean of 5 and a std of 2, float32 sums kept about 4 digits of it).
        local = xp.stack(
            [
                xp.full(self.num_features, m, dtype=xp.float64),
                x.sum(axis=(0, 2, 3), dtype=xp.float64),
                xp.square(x, dtype=xp.float64).sum(axis=(0, 2, 3)),
            ]
        )
        return self._from_global_sums(self.sync(local), x.dtype)

    @staticmethod
    def _from_global_sums(sums: Any, dtype: Any) -> tuple[Any, Any, Any]:
        """[count, sum x, sum x^2] over all ranks (float64) -> mean, var, count in dtype."""
        xp = get_array_module(sums)
        count, total, squares = sums
        mean = total / count
        var = xp.maximum(squares / count - mean * mean, 0)
        # count[0] stays a 0-d backend array: no wait for the device
        return mean.astype(dtype), var.astype(dtype), count[0].astype(dtype)

    # --- The GPU path: the kernels below ---------------------------------------------

    def _kernel_statistics(self, x: Any, m: int) -> tuple[Any, Any, Any]:
        """Per-channel mean and biased variance (dtype of x), and the count, via kernels."""
        xp = get_array_module(x)
        shift, sums, squares = channel_sums_kernel(x)  # float64: sum of (x - shift), of ^2
        if self.sync is None:
            mean = shift + sums / m
            var = xp.maximum(squares / m - (sums / m) ** 2, 0)
            return mean.astype(x.dtype), var.astype(x.dtype), m
        # Synchronised: the raw sums, as _global_statistics sends them.
        local = xp.stack(
            [
                xp.full(self.num_features, m, dtype=xp.float64),
                m * shift + sums,
                squares + 2 * shift * sums + m * shift * shift,
            ]
        )
        return self._from_global_sums(self.sync(local), x.dtype)

    def _kernel_backward(self, dout: Any) -> Any:
        """The backward of the GPU path (same formulas as ``backward``)."""
        xhat, rstd, training, m, _ = self._cache
        xp = get_array_module(dout)
        gamma, beta = self.params["weight"], self.params["bias"]
        dbeta, dgamma = batchnorm_backward_sums_kernel(dout, xhat, gamma.data, beta.data, self.relu)
        beta.grad += dbeta.astype(dout.dtype)
        gamma.grad += dgamma.astype(dout.dtype)
        scale = gamma.data * rstd
        if not training:  # a fixed affine map (and a ReLU): dx = dout * [out > 0] * scale
            zero = xp.zeros_like(scale)
            return batchnorm_backward_dx_kernel(
                dout, xhat, gamma.data, beta.data, scale, zero, zero, self.relu
            )
        if self.sync is not None:
            dbeta, dgamma = self.sync(xp.stack([dbeta, dgamma]))
        # dx = scale * (dout - dbeta/m - xhat * dgamma/m), per channel
        return batchnorm_backward_dx_kernel(
            dout,
            xhat,
            gamma.data,
            beta.data,
            scale,
            (dbeta / m).astype(dout.dtype),
            (dgamma / m).astype(dout.dtype),
            self.relu,
        )


# Threads per channel in the sums kernels: each adds up m / SUM_THREADS values, and the
# (C, SUM_THREADS) partial sums are then reduced along their contiguous last axis.
SUM_THREADS = 1024

CHANNEL_SUMS = cuda.Kernel(
    r"""
// Work item t = c*S + s adds up x - shift[c] and its square over the values
// s, s + S, s + 2S, ... of channel c (value j is image j / HW, pixel j % HW), in double.
// Consecutive threads read consecutive pixels. shift[c] is the channel's first value:
// summing x - shift instead of x keeps E[x^2] - E[x]^2 accurate when |mean| >> std.
extern "C" __global__ void channel_sums(const T* __restrict__ x, double* __restrict__ shift,
                                        double* __restrict__ sums, double* __restrict__ squares,
                                        int C, long long HW, long long m, int S) {
    for_each(t, (long long)C * S) {
        int c = t / S;
        double k = x[(long long)c * HW];
        double a = 0, b = 0;
        for (long long j = t % S; j < m; j += S) {
            double v = x[((j / HW) * C + c) * HW + j % HW] - k;
            a += v;
            b += v * v;
        }
        sums[t] = a;
        squares[t] = b;
        if (t % S == 0) shift[c] = k;
    }
}
"""
)

BATCHNORM_FORWARD = cuda.Kernel(
    r"""
// One thread per value e of x (N, C, HW): xhat = (x - mean) * rstd and
// out = gamma * xhat + beta, then max(out, 0) when relu is set.
extern "C" __global__ void batchnorm_forward(const T* __restrict__ x, const T* __restrict__ mean,
                                             const T* __restrict__ rstd,
                                             const T* __restrict__ gamma,
                                             const T* __restrict__ beta, T* __restrict__ xhat,
                                             T* __restrict__ out, long long total, int C,
                                             long long HW, int relu) {
    for_each(e, total) {
        int c = (e / HW) % C;
        T h = (x[e] - mean[c]) * rstd[c];
        T y = h * gamma[c] + beta[c];
        xhat[e] = h;
        out[e] = (relu && y < 0) ? (T)0 : y;  // y < 0, not !(y > 0): a NaN stays NaN
    }
}
"""
)

BATCHNORM_BACKWARD_SUMS = cuda.Kernel(
    r"""
// Work item t = c*S + s, as in channel_sums: with g = dout, or dout where out > 0 when
// relu is set (out is recomputed from xhat: gamma * xhat + beta), it adds up g and
// g * xhat over its share of channel c, in double. Their totals are dbeta and dgamma.
extern "C" __global__ void batchnorm_backward_sums(
        const T* __restrict__ dout, const T* __restrict__ xhat, const T* __restrict__ gamma,
        const T* __restrict__ beta, double* __restrict__ dbeta, double* __restrict__ dgamma,
        int C, long long HW, long long m, int S, int relu) {
    for_each(t, (long long)C * S) {
        int c = t / S;
        double a = 0, b = 0;
        for (long long j = t % S; j < m; j += S) {
            long long e = ((j / HW) * C + c) * HW + j % HW;
            T h = xhat[e];
            T g = (relu && !(h * gamma[c] + beta[c] > 0)) ? (T)0 : dout[e];
            a += g;
            b += (double)g * h;
        }
        dbeta[t] = a;
        dgamma[t] = b;
    }
}
"""
)

BATCHNORM_BACKWARD_DX = cuda.Kernel(
    r"""
// One thread per value e: g as in batchnorm_backward_sums, then
// dx = scale * (g - mean_g - xhat * mean_gx) with the per-channel scale = gamma * rstd,
// mean_g = dbeta / m and mean_gx = dgamma / m (both 0 in eval mode).
extern "C" __global__ void batchnorm_backward_dx(
        const T* __restrict__ dout, const T* __restrict__ xhat, const T* __restrict__ gamma,
        const T* __restrict__ beta, const T* __restrict__ scale, const T* __restrict__ mean_g,
        const T* __restrict__ mean_gx, T* __restrict__ dx, long long total, int C,
        long long HW, int relu) {
    for_each(e, total) {
        int c = (e / HW) % C;
        T h = xhat[e];
        T g = (relu && !(h * gamma[c] + beta[c] > 0)) ? (T)0 : dout[e];
        dx[e] = scale[c] * (g - mean_g[c] - h * mean_gx[c]);
    }
}
"""
)


def _sum_threads(m: int) -> int:
    return max(1, min(SUM_THREADS, m))


def channel_sums_kernel(x: Any) -> tuple[Any, Any, Any]:
    """x (N, C, H, W) -> float64 (C,) arrays: shift (x[0, c, 0, 0]), sum of x - shift, and
    sum of (x - shift)^2 over (N, H, W)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    m, s = n * h * w, _sum_threads(n * h * w)
    x = xp.ascontiguousarray(x)
    shift = xp.empty(c, dtype=xp.float64)
    sums = xp.empty((c, s), dtype=xp.float64)
    squares = xp.empty((c, s), dtype=xp.float64)
    CHANNEL_SUMS(c * s, x.dtype, x, shift, sums, squares, c, h * w, m, s)
    return shift, sums.sum(axis=1), squares.sum(axis=1)


def batchnorm_forward_kernel(
    x: Any, mean: Any, rstd: Any, gamma: Any, beta: Any, relu: bool
) -> tuple[Any, Any]:
    """x (N, C, H, W), per-channel (C,) mean, rstd, gamma, beta -> (xhat, out), both like x."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    x = xp.ascontiguousarray(x)
    xhat, out = xp.empty_like(x), xp.empty_like(x)
    BATCHNORM_FORWARD(
        x.size, x.dtype, x, mean, rstd, gamma, beta, xhat, out, x.size, c, h * w, int(relu)
    )
    return xhat, out


def batchnorm_backward_sums_kernel(
    dout: Any, xhat: Any, gamma: Any, beta: Any, relu: bool
) -> tuple[Any, Any]:
    """-> float64 (C,) dbeta = sum g and dgamma = sum g * xhat, g = dout (masked by the ReLU)."""
    xp = get_array_module(dout)
    n, c, h, w = dout.shape
    m, s = n * h * w, _sum_threads(n * h * w)
    dout = xp.ascontiguousarray(dout)
    dbeta = xp.empty((c, s), dtype=xp.float64)
    dgamma = xp.empty((c, s), dtype=xp.float64)
    BATCHNORM_BACKWARD_SUMS(
        c * s, dout.dtype, dout, xhat, gamma, beta, dbeta, dgamma, c, h * w, m, s, int(relu)
    )
    return dbeta.sum(axis=1), dgamma.sum(axis=1)


def batchnorm_backward_dx_kernel(
    dout: Any,
    xhat: Any,
    gamma: Any,
    beta: Any,
    scale: Any,
    mean_g: Any,
    mean_gx: Any,
    relu: bool,
) -> Any:
    """dx (N, C, H, W) = scale * (g - mean_g - xhat * mean_gx), per-channel (C,) factors."""
    xp = get_array_module(dout)
    n, c, h, w = dout.shape
    dout = xp.ascontiguousarray(dout)
    dx = xp.empty_like(dout)
    BATCHNORM_BACKWARD_DX(
        dx.size,
        dout.dtype,
        dout,
        xhat,
        gamma,
        beta,
        scale,
        mean_g,
        mean_gx,
        dx,
        dx.size,
        c,
        h * w,
        int(relu),
    )
    return dx
