"""Fast implementations of the reference operations in ``minunet.nn``, and the one table
that says which replaces which.

Each fast implementation is a subclass of the reference class it replaces. It does the
reference's arithmetic with faster pieces where they apply (checked per call, from the
arrays it meets: NumPy or CuPy, dtype, geometry) and calls the reference otherwise, and a
test compares the two (tests/test_fast_paths.py, tests/test_cuda_*.py).

    cpu         the blocked convolution (shifted rows) and threaded batched products (NumPy)
    winograd    Winograd F(2x2, 3x3) and F(4x4, 3x3) for the deep 3x3 layers (NumPy), and
                the measured rule that picks them per layer (``winograd.tile_for``)
    batchnorm   FastBatchNorm2d: channel groups over the threads (NumPy), the kernels (CuPy)
    pool        FastMaxPool2d: the same for the 2x2 max-pool
    optim       FastSGD, FastAdam, FastAdamW: parameters over the threads (NumPy), kernels (CuPy)
    conv        FastConv2d, FastConvTranspose2d: those, and the im2col kernels on CuPy
    cuda/       hand-written CUDA kernels, one module per family, with their layer classes

``accelerate(obj)`` gives a layer (and every layer inside it), a loss or an optimiser its
fast implementation from ``IMPLEMENTATIONS``, in place; ``UNet`` calls it on itself. The
switches, read from the environment:

    MINUNET_ACCEL=0          accelerate() changes nothing: every operation is the reference
    MINUNET_FAST_CPU=0       the CPU fast paths are off (the CUDA kernels stay on)
    MINUNET_WINOGRAD=0       the Winograd convolutions are off (the other CPU fast paths stay on)
    MINUNET_CUDA_KERNELS=0   the CUDA kernels are off (the CPU fast paths stay on)

``fast_paths(cpu=..., cuda=...)`` sets the last two for a block of code (tests, benchmarks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from minunet.accel import cpu as _cpu
from minunet.accel.batchnorm import FastBatchNorm2d
from minunet.accel.conv import FastConv2d, FastConvTranspose2d
from minunet.accel.cuda import kernel as _kernel
from minunet.accel.cuda.batchnorm import KernelSyncBatchNorm2d
from minunet.accel.cuda.loss import KernelSoftmaxCrossEntropy
from minunet.accel.optim import FastAdam, FastAdamW, FastSGD
from minunet.accel.pool import FastMaxPool2d
from minunet.nn import BatchNorm2d, Conv2d, ConvTranspose2d, Layer, MaxPool2d
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import SGD, Adam, AdamW
from minunet.nn.sync_batchnorm import SyncBatchNorm2d

# reference class -> its fast implementation (what ``accelerate`` gives each object)
IMPLEMENTATIONS: dict[type, type] = {
    Conv2d: FastConv2d,  # blocked conv, threaded products (NumPy); im2col kernels (CuPy)
    ConvTranspose2d: FastConvTranspose2d,  # threaded products (NumPy); im2col kernels (CuPy)
    MaxPool2d: FastMaxPool2d,  # channel groups over threads; MAXPOOL_FORWARD, MAXPOOL_BACKWARD
    BatchNorm2d: FastBatchNorm2d,  # channel groups over threads; the six BatchNorm(+ReLU) kernels
    SyncBatchNorm2d: KernelSyncBatchNorm2d,  # the same kernels' partial sums, allreduced
    SoftmaxCrossEntropy: KernelSoftmaxCrossEntropy,  # SOFTMAX_CROSS_ENTROPY
    SGD: FastSGD,  # parameters over threads; SGD_UPDATE
    Adam: FastAdam,  # parameters over threads; ADAM_UPDATE
    AdamW: FastAdamW,  # parameters over threads; ADAM_UPDATE, decoupled weight decay
}

Accelerable = TypeVar("Accelerable")


def enabled() -> bool:
    """False when ``MINUNET_ACCEL=0``: ``accelerate`` then leaves every object as it is."""
    return os.environ.get("MINUNET_ACCEL", "1") != "0"


def accelerate(obj: Accelerable) -> Accelerable:
    """Give ``obj`` its registered fast implementation, in place, and return it.

    ``obj`` is a layer (its sub-layers are accelerated too), a loss or an optimiser. Its
    class becomes the one ``IMPLEMENTATIONS`` lists for its class, a subclass with the same
    state, so parameters, buffers and references to it stay as they are. Objects of other
    classes (already accelerated ones included) are left alone, and so is everything when
    ``MINUNET_ACCEL=0``.
    """
    if not enabled():
        return obj
    fast = IMPLEMENTATIONS.get(type(obj))
    if fast is not None:
        obj.__class__ = fast
    if isinstance(obj, Layer):
        for child in obj.children().values():
            accelerate(child)
    return obj


def reference_class(obj: object) -> type:
    """The reference class of ``obj``: the class its accelerated class replaces, or its own
    class (``reference_class(FastConv2d(...)) is Conv2d``, ``reference_class(ReLU()) is ReLU``)."""
    return next((c for c in type(obj).__mro__ if c in IMPLEMENTATIONS), type(obj))


@contextmanager
def fast_paths(cpu: bool | None = None, cuda: bool | None = None) -> Iterator[None]:
    """Within the block, switch the CPU fast paths (``cpu``) and the CUDA kernels (``cuda``)
    on or off, as ``MINUNET_FAST_CPU`` and ``MINUNET_CUDA_KERNELS`` do; None keeps a
    switch as it is. Both are restored afterwards."""
    saved = _cpu.ENABLED, _kernel.ENABLED
    if cpu is not None:
        _cpu.ENABLED = cpu
    if cuda is not None:
        _kernel.ENABLED = cuda
    try:
        yield
    finally:
        _cpu.ENABLED, _kernel.ENABLED = saved


__all__ = ["IMPLEMENTATIONS", "accelerate", "enabled", "fast_paths", "reference_class"]
