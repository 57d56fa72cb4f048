"""Synchronised BatchNorm: every data-parallel rank normalises with the global batch's statistics.

In data-parallel training over R processes each holds a slice of the batch. A plain
BatchNorm2d would normalise each slice with its own statistics; SyncBatchNorm2d sums,
over all ranks with an allreduce,

    forward:   [count, sum x, sum x^2]   per channel, in float64
    backward:  [dbeta, dgamma]           per channel, before forming dx

so every rank computes exactly what one process computes on the whole batch. The
parameter gradients stay local; the optimiser's gradient averaging combines them like
every other gradient.

    use_sync_batchnorm(model, comm.allreduce_sum)     # every BatchNorm2d in the model

Fast path: ``KernelSyncBatchNorm2d`` takes the sums from the GPU kernels on CuPy arrays
(listed in ``minunet.accel.IMPLEMENTATIONS``). ``MINUNET_ACCEL=0`` turns it off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minunet.core.backend import get_array_module
from minunet.nn.base import Layer
from minunet.nn.batchnorm import BatchNorm2d

Allreduce = Callable[[Any], Any]  # an array -> its sum over every rank, same shape


class SyncBatchNorm2d(BatchNorm2d):
    """BatchNorm2d over the global batch of every rank. x (N, C, H, W) -> same shape.

    ``allreduce`` sums an array over the ranks (``Communicator.allreduce_sum``); with one
    process, ``lambda a: a.copy()`` gives plain BatchNorm2d's numbers.
    """

    def __init__(self, num_features: int, allreduce: Allreduce, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.allreduce = allreduce

    def batch_statistics(self, x: Any) -> tuple[Any, Any, Any, None]:
        """Global mean and biased variance (C,), the global count (0-d), and no x - mean."""
        xp = get_array_module(x)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        total = x.sum(axis=(0, 2, 3), dtype=xp.float64)
        squares = xp.square(x, dtype=xp.float64).sum(axis=(0, 2, 3))
        return (*self.global_statistics(total, squares, m, x.dtype), None)

    def global_statistics(
        self, total: Any, squares: Any, m: int, dtype: Any
    ) -> tuple[Any, Any, Any]:
        """This rank's float64 sums of x and x^2 (C,) over m values -> the global batch's
        mean and biased variance (C,) and its count (0-d), in ``dtype``.

        float64 sums: var = E[x^2] - mean^2 loses digits when |mean| >> std, as many as
        float32 holds (with a mean of 5 and a std of 2, float32 sums kept about 4 digits).
        """
        xp = get_array_module(total)
        count = xp.full(self.num_features, m, dtype=xp.float64)
        count, total, squares = self.allreduce(xp.stack([count, total, squares]))
        mean = total / count
        var = xp.maximum(squares / count - mean * mean, 0)
        # count[0] stays a 0-d backend array: no wait for the device
        return mean.astype(dtype), var.astype(dtype), count[0].astype(dtype)

    def input_gradient(
        self, dout: Any, xhat: Any, dbeta: Any, dgamma: Any, m: Any, scale: Any
    ) -> Any:
        """BatchNorm2d's dx, with dbeta and dgamma summed over the global batch."""
        dbeta, dgamma = self.allreduce(get_array_module(dout).stack([dbeta, dgamma]))
        return super().input_gradient(dout, xhat, dbeta, dgamma, m, scale)


def use_sync_batchnorm(model: Layer, allreduce: Allreduce) -> Layer:
    """Make every BatchNorm2d in ``model`` (the model itself included) a SyncBatchNorm2d
    summing with ``allreduce``, in place; returns the model.

    Parameters, buffers and mode are kept. A layer that ``minunet.accel.accelerate`` had
    given a fast path gets the synchronised one (``KernelSyncBatchNorm2d``).
    """
    from minunet.accel import accelerate  # minunet.accel imports this module

    def convert(layer: Layer) -> None:
        if isinstance(layer, BatchNorm2d):
            accelerated = type(layer) not in (BatchNorm2d, SyncBatchNorm2d)
            layer.__class__ = SyncBatchNorm2d
            layer.allreduce = allreduce
            if accelerated:
                accelerate(layer)
        for child in layer.children().values():
            convert(child)

    convert(model)
    return model
