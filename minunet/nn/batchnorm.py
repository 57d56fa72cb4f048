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

On the GPU, BatchNorm written with array operations is a dozen passes over memory and
some twenty tiny launches on (C,)-sized arrays per call, and CuPy's reductions over the
axes (0, 2, 3) of an NCHW array are slow (they are not contiguous). The kernels at the end
of this file do a training forward in three launches: per-channel partial sums of x
(each thread strides over one channel, summing in float64), then one thread per channel
that adds up its partial sums and finishes the statistics (mean, rstd, the running
averages), then xhat and out in one pass. The backward is the same shape: partial sums of
dout and dout * xhat, one thread per channel for dbeta, dgamma and the factors of dx, then
dx. (Synchronised BatchNorm adds up the partial sums with array operations instead, since
the allreduce has to come between.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minunet.accel.cuda import kernel as cuda
from minunet.core.backend import get_array_module
from minunet.nn.base import Layer, Parameter, check_input


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
        if cuda.enabled_for(x):
            return self._forward_kernels(x)
        xp = get_array_module(x)
        if self.training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if self.sync is None:
                self._check_count(x, m)
                mean = x.mean(axis=(0, 2, 3))
                # x - mean is needed anyway for xhat; its squares are summed in place by
                # einsum (no temporary), where x.var would recompute it and square it.
                xc = x - mean[:, None, None]
                var = xp.einsum("nchw,nchw->c", xc, xc) / m
            else:
                mean, var, m = self._global_statistics(x, m)
            self._update_running(mean, var, m)
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        rstd = self._rstd(var, x.dtype)  # (C,)
        # Every full-size pass costs a trip through memory (on the CPU, on one core), so
        # each is done in place where a fresh array is not needed: 4 passes, 2 arrays.
        xhat = xc if self.training and self.sync is None else x - mean[:, None, None]
        xhat *= rstd[:, None, None]  # (N, C, H, W)
        out = xhat * gamma[:, None, None]
        out += self.params["bias"].data[:, None, None]
        if self.relu:
            xp.maximum(out, 0, out=out)
        # The ReLU's backward needs to know where out > 0: out itself is kept for that.
        relu_out = out if self.relu else None
        self._cache = (xhat, rstd, self.training, m if self.training else None, relu_out)
        return out

    def backward(self, dout: Any) -> Any:
        if cuda.enabled_for(dout):
            return self._backward_kernels(dout)
        xhat, rstd, training, m, relu_out = self._cache
        gamma = self.params["weight"]
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

    def _rstd(self, var: Any, dtype: Any) -> Any:
        """1 / sqrt(var + eps), (C,) in ``dtype``."""
        return (1.0 / get_array_module(var).sqrt(var + self.eps)).astype(dtype, copy=False)

    @staticmethod
    def _check_count(x: Any, m: int) -> None:
        if m < 2:
            raise ValueError(
                "BatchNorm2d in training needs more than one value per channel "
                f"(N*H*W > 1), got input shape {tuple(x.shape)}"
            )

    def _update_running(self, mean: Any, var: Any, m: Any) -> None:
        """PyTorch's running averages, of the mean and of the unbiased variance."""
        mom = self.momentum
        self.buffers["running_mean"] = (1 - mom) * self.buffers["running_mean"] + mom * mean
        unbiased = var * (m / (m - 1))
        self.buffers["running_var"] = (1 - mom) * self.buffers["running_var"] + mom * unbiased
        # asarray: NumPy's 0-d array + 1 is a scalar, and the counter stays an array
        count = self.buffers["num_batches_tracked"]
        self.buffers["num_batches_tracked"] = get_array_module(count).asarray(count + 1)

    def _global_statistics(self, x: Any, m: int) -> tuple[Any, Any, Any]:
        """Mean and biased variance per channel over every rank's batch, and their count."""
        xp = get_array_module(x)
        # float64 sums: var = E[x^2] - mean^2 loses digits when |mean| >> std, as many as
        # float32 has (with a mean of 5 and a std of 2, float32 sums kept about 4 digits of it).
        if cuda.enabled_for(x):  # the kernel's sums of x - shift, turned into sums of x
            shift, sums, squares = channel_partial_sums_kernel(x)
            sums, squares = sums.sum(axis=1), squares.sum(axis=1)
            total, square_total = m * shift + sums, squares + 2 * shift * sums + m * shift**2
        else:
            total = x.sum(axis=(0, 2, 3), dtype=xp.float64)
            square_total = xp.square(x, dtype=xp.float64).sum(axis=(0, 2, 3))
        count = xp.full(self.num_features, m, dtype=xp.float64)
        local = xp.stack([count, total, square_total])
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

    def _forward_kernels(self, x: Any) -> Any:
        """``forward`` for CuPy arrays: the same formulas, in the kernels below."""
        gamma, beta = self.params["weight"].data, self.params["bias"].data
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if not self.training:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
            rstd = self._rstd(var, x.dtype)
        elif self.sync is None:
            self._check_count(x, m)
            mean, rstd = batchnorm_statistics_kernel(x, self.buffers, self.eps, self.momentum)
        else:
            mean, var, m = self._global_statistics(x, m)
            self._update_running(mean, var, m)
            rstd = self._rstd(var, x.dtype)
        xhat, out = batchnorm_forward_kernel(x, mean, rstd, gamma, beta, self.relu)
        self._cache = (xhat, rstd, self.training, m if self.training else None, None)
        return out

    def _backward_kernels(self, dout: Any) -> Any:
        """``backward`` for CuPy arrays: the same formulas, in the kernels below."""
        xhat, rstd, training, m, _ = self._cache
        gamma, beta = self.params["weight"], self.params["bias"]
        relu = self.relu
        if self.sync is None or not training:
            scale, mean_g, mean_gx = batchnorm_gradients_kernel(
                dout, xhat, gamma, beta, rstd, relu, training
            )
        else:  # the parameter gradients are local, dx's sums global
            xp = get_array_module(dout)
            partial = batchnorm_partial_sums_kernel(dout, xhat, gamma.data, beta.data, relu)
            dbeta, dgamma = partial[0].sum(axis=1), partial[1].sum(axis=1)
            beta.grad += dbeta.astype(dout.dtype)
            gamma.grad += dgamma.astype(dout.dtype)
            dbeta, dgamma = self.sync(xp.stack([dbeta, dgamma]))
            scale = gamma.data * rstd
            mean_g, mean_gx = (dbeta / m).astype(dout.dtype), (dgamma / m).astype(dout.dtype)
        return batchnorm_dx_kernel(dout, xhat, gamma.data, beta.data, scale, mean_g, mean_gx, relu)


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
