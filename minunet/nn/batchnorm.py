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

Data-parallel training normalises with the statistics of the global batch instead:
``minunet.nn.sync_batchnorm``, which replaces ``batch_statistics`` and ``input_gradient``.

Fast path: ``FastBatchNorm2d`` (``minunet.accel.batchnorm``): in training, these passes
in channel groups over both CPU cores on NumPy, and three GPU kernels each way on CuPy
(``KernelBatchNorm2d``); listed in ``minunet.accel.IMPLEMENTATIONS``, and
``minunet.accel.accelerate`` gives it to a model. ``MINUNET_ACCEL=0`` turns it off
(``MINUNET_FAST_CPU=0``: the CPU part, ``MINUNET_CUDA_KERNELS=0``: every GPU kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module
from minunet.nn.base import Layer, Parameter, check_input


@dataclass
class BatchNormCache:
    """What the backward needs. ``count`` is m in training (None in eval mode, where the
    layer is affine); ``relu_out`` is the output when the layer applies a ReLU, else None."""

    xhat: Any  # (N, C, H, W)
    rstd: Any  # (C,)
    count: Any
    relu_out: Any


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
        self._cache: Any = None

    def forward(self, x: Any) -> Any:
        gamma = self.params["weight"].data
        check_input(x, "BatchNorm2d", self.num_features, gamma.dtype)
        xp = get_array_module(x)
        centred = None  # x - mean, when the statistics made it on the way
        if self.training:
            mean, var, count, centred = self.batch_statistics(x)
            self._update_running(mean, var, count)
        else:
            mean, var, count = self.buffers["running_mean"], self.buffers["running_var"], None
        rstd = self._rstd(var, x.dtype)  # (C,)
        # Every full-size pass costs a trip through memory (on the CPU, on one core), so
        # each is done in place where a fresh array is not needed: 4 passes, 2 arrays.
        xhat = centred if centred is not None else x - mean[:, None, None]
        xhat *= rstd[:, None, None]  # (N, C, H, W)
        out = xhat * gamma[:, None, None]
        out += self.params["bias"].data[:, None, None]
        if self.relu:
            xp.maximum(out, 0, out=out)
        # The ReLU's backward needs to know where out > 0: out itself is kept for that.
        self._cache = BatchNormCache(xhat, rstd, count, out if self.relu else None)
        return out

    def batch_statistics(self, x: Any) -> tuple[Any, Any, int, Any]:
        """Per-channel mean and biased variance (C,) of x, the count m, and x - mean."""
        xp = get_array_module(x)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        self._check_count(x, m)
        mean = x.mean(axis=(0, 2, 3))
        # x - mean is needed anyway for xhat; its squares are summed in place by einsum
        # (no temporary), where x.var would recompute it and square it.
        centred = x - mean[:, None, None]
        var = xp.einsum("nchw,nchw->c", centred, centred) / m
        return mean, var, m, centred

    def backward(self, dout: Any) -> Any:
        cache = self._cache
        gamma = self.params["weight"]
        xp = get_array_module(dout)
        if self.relu:
            dout = dout * (cache.relu_out > 0)  # the ReLU's backward, before the BatchNorm's
        dbeta = dout.sum(axis=(0, 2, 3))
        dgamma = xp.einsum("nchw,nchw->c", dout, cache.xhat)  # sum of dout * xhat, in place
        self.params["bias"].grad += dbeta
        gamma.grad += dgamma
        scale = (gamma.data * cache.rstd)[:, None, None]
        if cache.count is None:  # eval mode, a fixed affine map: its Jacobian is diagonal
            return dout * scale
        return self.input_gradient(dout, cache.xhat, dbeta, dgamma, cache.count, scale)

    def input_gradient(
        self, dout: Any, xhat: Any, dbeta: Any, dgamma: Any, m: Any, scale: Any
    ) -> Any:
        """dx = scale * (dout - dbeta/m - xhat * dgamma/m), in 4 passes over one new array."""
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
