"""BatchNorm2d (with its ReLU) as GPU kernels: ``KernelBatchNorm2d`` and its synchronised twin.

Written with array operations (``minunet.nn.batchnorm``), BatchNorm on the GPU is a dozen
passes over memory and some twenty tiny launches on (C,)-sized arrays per call, and
CuPy's reductions over the axes (0, 2, 3) of an NCHW array are slow (they are not
contiguous). Here a training forward is three launches: per-channel partial sums of x
(each work item strides over one channel, summing in float64), then one thread per
channel that adds up its partial sums and finishes the statistics (mean, rstd, the running
averages), then xhat and out in one pass. The backward has the same shape: partial sums of
dout and dout * xhat, one thread per channel for dbeta, dgamma and the factors of dx, then
dx. Synchronised BatchNorm adds up the partial sums with array operations instead, since
the allreduce has to come between.
"""

from __future__ import annotations

from typing import Any

from minunet.accel.cuda import kernel as cuda
from minunet.core.backend import get_array_module
from minunet.nn.base import check_input
from minunet.nn.batchnorm import BatchNorm2d, BatchNormCache
from minunet.nn.sync_batchnorm import SyncBatchNorm2d

# Threads per channel in the partial-sum kernels: each adds up m / SUM_THREADS values, and
# one thread per channel then adds up its SUM_THREADS partial sums.
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

BATCHNORM_STATISTICS = cuda.Kernel(
    r"""
// One thread per channel c: adds up the S partial sums of channel_sums, then
//   mean = shift + a/m,  var = b/m - (a/m)^2 (biased),  rstd = 1/sqrt(var + eps)
// and PyTorch's running averages (of the unbiased variance, var * m/(m-1)), in place.
// Thread 0 also counts the batch.
extern "C" __global__ void batchnorm_statistics(
        const double* __restrict__ shift, const double* __restrict__ sums,
        const double* __restrict__ squares, T* __restrict__ mean, T* __restrict__ rstd,
        T* __restrict__ running_mean, T* __restrict__ running_var,
        long long* __restrict__ batches, int C, int S, long long m, double eps,
        double momentum) {
    for_each(c, C) {
        double a = 0, b = 0;
        for (int s = 0; s < S; ++s) {
            a += sums[c * S + s];
            b += squares[c * S + s];
        }
        double mu = a / m;
        double var = b / m - mu * mu;
        if (var < 0) var = 0;  // rounding, when every value is the same
        mean[c] = (T)(shift[c] + mu);
        rstd[c] = (T)(1 / sqrt(var + eps));
        running_mean[c] = (T)((1 - momentum) * running_mean[c] + momentum * (shift[c] + mu));
        running_var[c] = (T)((1 - momentum) * running_var[c] + momentum * var * m / (m - 1));
        if (c == 0) *batches += 1;
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

BATCHNORM_PARTIAL_SUMS = cuda.Kernel(
    r"""
// Work item t = c*S + s, as in channel_sums: with g = dout, or dout where out > 0 when
// relu is set (out is recomputed from xhat: gamma * xhat + beta), it adds up g and
// g * xhat over its share of channel c, in double. Their totals are dbeta and dgamma.
extern "C" __global__ void batchnorm_partial_sums(
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

BATCHNORM_GRADIENTS = cuda.Kernel(
    r"""
// One thread per channel c: adds up the S partial sums into dbeta and dgamma, adds them to
// the parameters' gradients, and writes the per-channel factors of dx:
//   scale = gamma * rstd,  mean_g = dbeta / m,  mean_gx = dgamma / m  (both 0 in eval mode).
extern "C" __global__ void batchnorm_gradients(
        const double* __restrict__ dbeta_parts, const double* __restrict__ dgamma_parts,
        const T* __restrict__ gamma, const T* __restrict__ rstd, T* __restrict__ gamma_grad,
        T* __restrict__ beta_grad, T* __restrict__ scale, T* __restrict__ mean_g,
        T* __restrict__ mean_gx, int C, int S, long long m, int training) {
    for_each(c, C) {
        double db = 0, dg = 0;
        for (int s = 0; s < S; ++s) {
            db += dbeta_parts[c * S + s];
            dg += dgamma_parts[c * S + s];
        }
        beta_grad[c] += (T)db;
        gamma_grad[c] += (T)dg;
        scale[c] = gamma[c] * rstd[c];
        mean_g[c] = training ? (T)(db / m) : (T)0;
        mean_gx[c] = training ? (T)(dg / m) : (T)0;
    }
}
"""
)

BATCHNORM_DX = cuda.Kernel(
    r"""
// One thread per value e: g as in batchnorm_partial_sums, then
// dx = scale * (g - mean_g - xhat * mean_gx) with the per-channel factors above.
extern "C" __global__ void batchnorm_dx(
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


def channel_partial_sums_kernel(x: Any) -> tuple[Any, Any, Any]:
    """x (N, C, H, W) -> float64 shift (C,) = x[0, :, 0, 0], and the partial sums (C, S) of
    x - shift and of (x - shift)^2 over (N, H, W): their totals are ``.sum(axis=1)``."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    m, s = n * h * w, _sum_threads(n * h * w)
    x = xp.ascontiguousarray(x)
    shift = xp.empty(c, dtype=xp.float64)
    sums = xp.empty((c, s), dtype=xp.float64)
    squares = xp.empty((c, s), dtype=xp.float64)
    CHANNEL_SUMS(c * s, x.dtype, x, shift, sums, squares, c, h * w, m, s)
    return shift, sums, squares


def batchnorm_statistics_kernel(
    x: Any, buffers: dict[str, Any], eps: float, momentum: float
) -> tuple[Any, Any]:
    """Training statistics of x (N, C, H, W): returns (mean, rstd), (C,) in x's dtype, and
    updates ``buffers`` (running_mean, running_var, num_batches_tracked) in place."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    shift, sums, squares = channel_partial_sums_kernel(x)
    mean, rstd = xp.empty(c, dtype=x.dtype), xp.empty(c, dtype=x.dtype)
    BATCHNORM_STATISTICS(
        c, x.dtype, shift, sums, squares, mean, rstd, buffers["running_mean"],
        buffers["running_var"], buffers["num_batches_tracked"], c, sums.shape[1], n * h * w,
        eps, momentum,
    )  # fmt: skip
    return mean, rstd


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


def batchnorm_partial_sums_kernel(
    dout: Any, xhat: Any, gamma: Any, beta: Any, relu: bool
) -> tuple[Any, Any]:
    """Partial sums (C, S), float64, of g and g * xhat (g = dout, masked by the ReLU): their
    totals ``.sum(axis=1)`` are dbeta and dgamma."""
    xp = get_array_module(dout)
    n, c, h, w = dout.shape
    m, s = n * h * w, _sum_threads(n * h * w)
    dout = xp.ascontiguousarray(dout)
    dbeta = xp.empty((c, s), dtype=xp.float64)
    dgamma = xp.empty((c, s), dtype=xp.float64)
    BATCHNORM_PARTIAL_SUMS(
        c * s, dout.dtype, dout, xhat, gamma, beta, dbeta, dgamma, c, h * w, m, s, int(relu)
    )
    return dbeta, dgamma


def batchnorm_gradients_kernel(
    dout: Any, xhat: Any, gamma: Any, beta: Any, rstd: Any, relu: bool, training: bool
) -> tuple[Any, Any, Any]:
    """Adds dgamma and dbeta to the Parameters ``gamma`` and ``beta``; returns dx's
    per-channel factors (scale, mean_g, mean_gx), (C,) in dout's dtype."""
    xp = get_array_module(dout)
    n, c, h, w = dout.shape
    dbeta, dgamma = batchnorm_partial_sums_kernel(dout, xhat, gamma.data, beta.data, relu)
    scale, mean_g, mean_gx = (xp.empty(c, dtype=dout.dtype) for _ in range(3))
    BATCHNORM_GRADIENTS(
        c, dout.dtype, dbeta, dgamma, gamma.data, rstd, gamma.grad, beta.grad, scale, mean_g,
        mean_gx, c, dbeta.shape[1], n * h * w, int(training),
    )  # fmt: skip
    return scale, mean_g, mean_gx


def batchnorm_dx_kernel(
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
    BATCHNORM_DX(
        dx.size, dout.dtype, dout, xhat, gamma, beta, scale, mean_g, mean_gx, dx, dx.size,
        c, h * w, int(relu),
    )  # fmt: skip
    return dx


KERNELS = (
    CHANNEL_SUMS,
    BATCHNORM_STATISTICS,
    BATCHNORM_FORWARD,
    BATCHNORM_PARTIAL_SUMS,
    BATCHNORM_GRADIENTS,
    BATCHNORM_DX,
)


class KernelBatchNorm2d(BatchNorm2d):
    """BatchNorm2d through the kernels above, for the arrays they apply to (CuPy float32
    and float64, ``MINUNET_CUDA_KERNELS`` not 0); the reference for all others."""

    def forward(self, x: Any) -> Any:
        if not cuda.enabled_for(x):
            return super().forward(x)
        gamma, beta = self.params["weight"].data, self.params["bias"].data
        check_input(x, "BatchNorm2d", self.num_features, gamma.dtype)
        if self.training:
            mean, rstd, count = self.kernel_statistics(x)
        else:
            mean, count = self.buffers["running_mean"], None
            rstd = self._rstd(self.buffers["running_var"], x.dtype)
        xhat, out = batchnorm_forward_kernel(x, mean, rstd, gamma, beta, self.relu)
        # No relu_out: the kernels recompute where out > 0 from xhat.
        self._cache = BatchNormCache(xhat, rstd, count, None)
        return out

    def kernel_statistics(self, x: Any) -> tuple[Any, Any, Any]:
        """Training statistics: mean and rstd (C,), the count m; updates the running ones."""
        m = x.shape[0] * x.shape[2] * x.shape[3]
        self._check_count(x, m)
        mean, rstd = batchnorm_statistics_kernel(x, self.buffers, self.eps, self.momentum)
        return mean, rstd, m

    def backward(self, dout: Any) -> Any:
        if not cuda.enabled_for(dout):
            return super().backward(dout)
        c = self._cache
        scale, mean_g, mean_gx = self.dx_factors(dout, c)
        gamma, beta = self.params["weight"].data, self.params["bias"].data
        return batchnorm_dx_kernel(dout, c.xhat, gamma, beta, scale, mean_g, mean_gx, self.relu)

    def dx_factors(self, dout: Any, c: BatchNormCache) -> tuple[Any, Any, Any]:
        """Adds dgamma and dbeta to the parameters' gradients; returns dx's per-channel
        factors (scale, mean_g, mean_gx) (C,): dx = scale * (g - mean_g - xhat * mean_gx)."""
        gamma, beta = self.params["weight"], self.params["bias"]
        training = c.count is not None
        return batchnorm_gradients_kernel(dout, c.xhat, gamma, beta, c.rstd, self.relu, training)


class KernelSyncBatchNorm2d(KernelBatchNorm2d, SyncBatchNorm2d):
    """SyncBatchNorm2d with the kernels' partial sums: the statistics' sums and dx's sums
    go through the allreduce between the kernels."""

    def kernel_statistics(self, x: Any) -> tuple[Any, Any, Any]:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        # The kernel's sums of x - shift (shift = x[0, :, 0, 0]), turned into sums of x.
        shift, sums, squares = channel_partial_sums_kernel(x)
        sums, squares = sums.sum(axis=1), squares.sum(axis=1)
        total, square_total = m * shift + sums, squares + 2 * shift * sums + m * shift**2
        mean, var, count = self.global_statistics(total, square_total, m, x.dtype)
        self._update_running(mean, var, count)
        return mean, self._rstd(var, x.dtype), count

    def dx_factors(self, dout: Any, c: BatchNormCache) -> tuple[Any, Any, Any]:
        if c.count is None:  # eval mode: nothing to synchronise
            return super().dx_factors(dout, c)
        gamma, beta = self.params["weight"], self.params["bias"]
        partial = batchnorm_partial_sums_kernel(dout, c.xhat, gamma.data, beta.data, self.relu)
        dbeta, dgamma = partial[0].sum(axis=1), partial[1].sum(axis=1)
        beta.grad += dbeta.astype(dout.dtype)  # the parameter gradients stay local
        gamma.grad += dgamma.astype(dout.dtype)
        dbeta, dgamma = self.allreduce(get_array_module(dout).stack([dbeta, dgamma]))
        m = c.count
        return gamma.data * c.rstd, (dbeta / m).astype(dout.dtype), (dgamma / m).astype(dout.dtype)
