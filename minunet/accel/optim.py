"""The optimisers' step on NumPy over both cores: the reference's update, parameters shared
out between the pool's threads.

``Optimizer.step`` updates one parameter after another, each update a few full-size NumPy
passes on one core (Adam: about ten over its weights, gradient and two moments). The
parameters are independent, so ``ThreadedOptimizer`` deals them out to the threads of
``minunet.accel.cpu`` in bins of about equal size (largest first, each to the lightest
bin) and each thread runs the reference ``_update`` on its own parameters: the same code,
so the same numbers, to the bit. A step with no state yet runs as the reference does, in
one thread: the first one creates the state buffers (``Optimizer._buffers``), which two
threads must not race to do (plain SGD, which keeps no state, always runs so; its update
is one pass). CuPy parameters and ``MINUNET_FAST_CPU=0`` take the reference step.

``FastSGD``, ``FastAdam`` and ``FastAdamW`` put it under the CUDA kernels' classes, whose
per-parameter ``_update`` runs the kernel on CuPy and the reference on NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence

from minunet.accel import cpu
from minunet.accel.cuda.optim import KernelAdam, KernelAdamW, KernelSGD
from minunet.nn.optimizer_base import Optimizer


def balanced_bins(sizes: Sequence[int], bins: int) -> list[list[int]]:
    """Indices 0..len(sizes)-1 in ``bins`` lists of about equal total size: the largest
    first, each to the lightest list so far."""
    out: list[list[int]] = [[] for _ in range(bins)]
    load = [0] * bins
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        lightest = load.index(min(load))
        out[lightest].append(i)
        load[lightest] += sizes[i]
    return out


class ThreadedOptimizer(Optimizer):
    """An optimiser whose step runs the per-parameter updates over the pool's threads."""

    def step(self) -> None:
        on_cpu = cpu.applies(*(p.data for p in self.params))
        if not (on_cpu and self.state) or cpu.num_threads() == 1:
            return super().step()
        self.steps += 1
        bins = balanced_bins([p.data.size for p in self.params], cpu.num_threads())

        def work(worker: int, chunk: Sequence[list[int]]) -> None:
            for indices in chunk:
                for i in indices:
                    self._update(i, self.params[i])

        cpu.parallel(work, bins)


class FastSGD(KernelSGD, ThreadedOptimizer):
    """SGD: the kernel on CuPy, parameters over threads on NumPy."""


class FastAdam(KernelAdam, ThreadedOptimizer):
    """Adam: the kernel on CuPy, parameters over threads on NumPy."""


class FastAdamW(KernelAdamW, ThreadedOptimizer):
    """AdamW: the kernel on CuPy, parameters over threads on NumPy."""
