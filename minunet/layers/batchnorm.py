"""BatchNorm2d: normalise each channel over the batch and the image, then scale and shift.

Training, per channel c, with m = N*H*W values:

    mean = (1/m) sum x            var = (1/m) sum (x - mean)^2      rstd = 1/sqrt(var + eps)
    xhat = (x - mean) * rstd      out = gamma * xhat + beta

Backward (the forward saves xhat and rstd for it):

    dbeta  = sum dout             dgamma = sum dout * xhat
    dx = (gamma * rstd / m) * (m * dout - dbeta - xhat * dgamma)

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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minunet.backend import get_array_module
from minunet.layers.base import Layer, Parameter, check_input


class BatchNorm2d(Layer):
    """Batch normalisation over (N, H, W) per channel. x (N, C, H, W) -> same shape."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        *,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
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
            if self.sync is None:
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
        # Every full-size pass costs a trip through memory (on the CPU, on one core), so
        # each is done in place where a fresh array is not needed: 4 passes, 2 arrays.
        xhat = xc if self.training and self.sync is None else x - mean[:, None, None]
        xhat *= rstd[:, None, None]  # (N, C, H, W)
        self._cache = (xhat, rstd, self.training, m if self.training else None)
        out = xhat * gamma[:, None, None]
        out += self.params["bias"].data[:, None, None]
        return out

    def backward(self, dout: Any) -> Any:
        xhat, rstd, training, m = self._cache
        gamma = self.params["weight"]
        xp = get_array_module(dout)
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
        local = xp.stack(
            [
                xp.full(self.num_features, m, dtype=x.dtype),
                x.sum(axis=(0, 2, 3)),
                (x * x).sum(axis=(0, 2, 3)),
            ]
        )
        count, total, squares = self.sync(local)
        mean = total / count
        var = xp.maximum(squares / count - mean * mean, 0)
        return mean, var, count[0]  # a 0-d backend array: no wait for the device
