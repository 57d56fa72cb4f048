"""MaxPool2d 2x2 on NumPy over both cores: the reference's tournament, one channel group
at a time.

The reference's 2x2 pool (``MaxPool2d._forward_2x2``) and its backward for windows that
tile the input are a handful of whole-array NumPy calls, each on one core. Every
channel's windows are independent, so ``ThreadedMaxPool2d`` runs those same calls on
channel groups (``minunet.accel.cpu.channel_groups``) over the pool of
``minunet.accel.cpu``, each group writing its own slice of the output, argmax and dx.
Other windows, CuPy arrays and ``MINUNET_FAST_CPU=0`` take the reference.
``FastMaxPool2d`` puts it in front of the CUDA kernels' class. tests/test_fast_paths.py
compares it with the reference, ties included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minunet.accel import cpu
from minunet.accel.cuda.pool import KernelMaxPool2d
from minunet.nn.pool import MaxPool2d, PoolCache


class ThreadedMaxPool2d(MaxPool2d):
    """MaxPool2d whose 2x2, stride-2 windows run in channel groups over the threads.

    x (N, C, H, W) -> (N, C, H // 2, W // 2).
    """

    def _runs_here(self, x: Any) -> bool:
        return cpu.applies(x) and self.kernel_size == self.stride == 2

    def forward(self, x: Any) -> Any:
        if not self._runs_here(x):
            return super().forward(x)
        ho, wo = self.check(x)
        out = np.empty((*x.shape[:2], ho, wo), dtype=x.dtype)
        argmax = np.empty(out.shape, dtype=np.uint8)

        def work(worker: int, groups: Sequence[tuple[int, int]]) -> None:
            for c0, c1 in groups:
                out[:, c0:c1], argmax[:, c0:c1] = self._forward_2x2(x[:, c0:c1], ho, wo)

        cpu.parallel(work, cpu.channel_groups(x))
        self._cache = PoolCache(x.shape, x.dtype, argmax)
        return out

    def backward(self, dout: Any) -> Any:
        x_shape, dtype, argmax = self._cache.x_shape, self._cache.dtype, self._cache.argmax
        ho, wo = dout.shape[2:]
        tiled = x_shape[2] == 2 * ho and x_shape[3] == 2 * wo
        if not (self._runs_here(dout) and tiled):
            return super().backward(dout)
        dx = np.empty(x_shape, dtype=dtype)

        def work(worker: int, groups: Sequence[tuple[int, int]]) -> None:
            for c0, c1 in groups:  # the reference's tiled backward, on the group
                self._backward_tiled(dout[:, c0:c1], argmax[:, c0:c1], dx[:, c0:c1])

        cpu.parallel(work, cpu.channel_groups(dx))
        return dx


class FastMaxPool2d(KernelMaxPool2d, ThreadedMaxPool2d):
    """MaxPool2d with the CUDA kernels on CuPy and channel groups over threads on NumPy;
    the reference for the rest. x (N, C, H, W) -> (N, C, Ho, Wo)."""
