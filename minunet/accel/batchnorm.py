"""BatchNorm2d on NumPy over both cores: the reference's passes, one channel group at a time.

The reference (``minunet.nn.batchnorm``) makes about seven full-size passes each way
(the mean, x - mean, the variance, xhat, gamma * xhat + beta, the ReLU; and back), each
a NumPy call on one core over megabytes that do not fit in the caches. Every channel
is independent in those passes: its mean, variance and gradient sums run over (N, H, W)
only. So ``ThreadedBatchNorm2d`` cuts the channels into groups of about ``cpu.GROUP_BYTES``
(about a MB, one core's L2 cache on the test machine, which keeps a group there from one
pass to the next; smaller groups cost more calls than they save), hands the
groups to the pool of ``minunet.accel.cpu`` (NumPy releases the GIL in those calls) and
runs the reference's formulas on each group:

    forward    mean, centred = x - mean, var = sum centred^2 / m, rstd, xhat = centred * rstd,
               out = max(gamma * xhat + beta, 0) with the ReLU
    backward   d = dout * (out > 0) with the ReLU, dbeta = sum d, dgamma = sum d * xhat,
               dx = gamma * rstd * (d - dbeta / m - xhat * dgamma / m)

Training mode only, on NumPy float arrays, with the CPU fast paths on; anything else
(eval mode, CuPy, ``MINUNET_FAST_CPU=0``) is the reference. ``FastBatchNorm2d`` puts
this in front of the CUDA kernels' class, so one accelerated layer serves both devices.
tests/test_fast_paths.py compares it with the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minunet.accel import cpu
from minunet.accel.cuda.batchnorm import KernelBatchNorm2d
from minunet.nn.base import check_input
from minunet.nn.batchnorm import BatchNorm2d, BatchNormCache


def _runs_here(layer: BatchNorm2d, x: Any) -> bool:
    return cpu.applies(x) and layer.training and x.dtype in cpu.FLOATS


class ThreadedBatchNorm2d(BatchNorm2d):
    """BatchNorm2d (with its optional ReLU) in channel groups over the pool's threads.

    x (N, C, H, W) -> same shape.
    """

    def forward(self, x: Any) -> Any:
        if not _runs_here(self, x):
            return super().forward(x)
        gamma = self.params["weight"].data
        beta = self.params["bias"].data
        check_input(x, "BatchNorm2d", self.num_features, gamma.dtype)
        n, c, h, w = x.shape
        m = n * h * w
        self._check_count(x, m)
        xhat, out = np.empty_like(x), np.empty_like(x)
        mean, var = np.empty(c, x.dtype), np.empty(c, x.dtype)
        rstd = np.empty(c, x.dtype)

        def work(worker: int, groups: Sequence[tuple[int, int]]) -> None:
            for c0, c1 in groups:
                xs, xh, o = x[:, c0:c1], xhat[:, c0:c1], out[:, c0:c1]
                mean[c0:c1] = xs.mean(axis=(0, 2, 3))
                np.subtract(xs, mean[c0:c1, None, None], out=xh)  # centred
                var[c0:c1] = np.einsum("nchw,nchw->c", xh, xh) / m
                rstd[c0:c1] = self._rstd(var[c0:c1], x.dtype)
                xh *= rstd[c0:c1, None, None]
                np.multiply(xh, gamma[c0:c1, None, None], out=o)
                o += beta[c0:c1, None, None]
                if self.relu:
                    np.maximum(o, 0, out=o)

        cpu.parallel(work, cpu.channel_groups(x))
        self._update_running(mean, var, m)
        self._cache = BatchNormCache(xhat, rstd, m, out if self.relu else None)
        return out

    def backward(self, dout: Any) -> Any:
        cache = self._cache
        if not (_runs_here(self, dout) and cache.count is not None):
            return super().backward(dout)
        gamma = self.params["weight"]
        c, m = dout.shape[1], cache.count
        dx = np.empty(dout.shape, dout.dtype)
        dbeta, dgamma = np.empty(c, dout.dtype), np.empty(c, dout.dtype)

        def work(worker: int, groups: Sequence[tuple[int, int]]) -> None:
            for c0, c1 in groups:
                d, xh = dx[:, c0:c1], cache.xhat[:, c0:c1]
                if self.relu:  # the ReLU's backward, before the BatchNorm's
                    np.multiply(dout[:, c0:c1], cache.relu_out[:, c0:c1] > 0, out=d)
                else:
                    d[...] = dout[:, c0:c1]
                dbeta[c0:c1] = d.sum(axis=(0, 2, 3))
                dgamma[c0:c1] = np.einsum("nchw,nchw->c", d, xh)
                d -= (dbeta[c0:c1] / m)[:, None, None]
                d -= xh * (dgamma[c0:c1] / m)[:, None, None]
                d *= (gamma.data[c0:c1] * cache.rstd[c0:c1])[:, None, None]

        cpu.parallel(work, cpu.channel_groups(dout))
        self.params["bias"].grad += dbeta
        gamma.grad += dgamma
        return dx


class FastBatchNorm2d(KernelBatchNorm2d, ThreadedBatchNorm2d):
    """BatchNorm2d with the CUDA kernels on CuPy (``KernelBatchNorm2d``) and the channel
    groups over threads on NumPy (``ThreadedBatchNorm2d``); each hands what it does not
    take to the next, and the reference takes the rest. x (N, C, H, W) -> same shape."""
