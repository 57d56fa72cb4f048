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
        self._cache: Any = None

    def forward(self, x: Any) -> Any:
        gamma = self.params["weight"].data
        check_input(x, "BatchNorm2d", self.num_features, gamma.dtype)
        xp = get_array_module(x)
        if self.training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if m < 2:
                raise ValueError(
                    "BatchNorm2d in training needs more than one value per channel "
                    f"(N*H*W > 1), got input shape {tuple(x.shape)}"
                )
            mean = x.mean(axis=(0, 2, 3))
            var = x.var(axis=(0, 2, 3))
            mom = self.momentum
            self.buffers["running_mean"] = (1 - mom) * self.buffers["running_mean"] + mom * mean
            unbiased = var * (m / (m - 1))
            self.buffers["running_var"] = (1 - mom) * self.buffers["running_var"] + mom * unbiased
            self.buffers["num_batches_tracked"] = self.buffers["num_batches_tracked"] + 1
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        rstd = 1.0 / xp.sqrt(var + self.eps)  # (C,)
        xhat = (x - mean[:, None, None]) * rstd[:, None, None]  # (N, C, H, W)
        self._cache = (xhat, rstd, self.training)
        return xhat * gamma[:, None, None] + self.params["bias"].data[:, None, None]

    def backward(self, dout: Any) -> Any:
        xhat, rstd, training = self._cache
        gamma = self.params["weight"]
        dbeta = dout.sum(axis=(0, 2, 3))
        dgamma = (dout * xhat).sum(axis=(0, 2, 3))
        self.params["bias"].grad += dbeta
        gamma.grad += dgamma
        scale = (gamma.data * rstd)[:, None, None]
        if not training:  # a fixed affine map: its Jacobian is diagonal
            return dout * scale
        m = dout.shape[0] * dout.shape[2] * dout.shape[3]
        return (scale / m) * (m * dout - dbeta[:, None, None] - xhat * dgamma[:, None, None])
