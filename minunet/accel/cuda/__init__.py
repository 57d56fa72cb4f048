"""Hand-written CUDA kernels for CuPy arrays, one module per family, each with the layer
(or loss, or optimiser) class that uses them.

    kernel     how a kernel is written, compiled and launched (``Kernel``, ``ENABLED``)
    emulator   runs the kernels on the CPU for the tests; compiles them with NVRTC
    im2col     IM2COL, COL2IM                     (FastConv2d, FastConvTranspose2d)
    pool       MAXPOOL_FORWARD, MAXPOOL_BACKWARD  KernelMaxPool2d
    batchnorm  six BatchNorm(+ReLU) kernels       KernelBatchNorm2d, KernelSyncBatchNorm2d
    loss       SOFTMAX_CROSS_ENTROPY              KernelSoftmaxCrossEntropy
    optim      SGD_UPDATE, ADAM_UPDATE            KernelSGD, KernelAdam, KernelAdamW

``KERNELS`` lists every kernel, for the compile tests.
"""

from __future__ import annotations

from minunet.accel.cuda import batchnorm, im2col, loss, optim, pool
from minunet.accel.cuda.kernel import Kernel

KERNELS: tuple[Kernel, ...] = (
    *im2col.KERNELS,
    *pool.KERNELS,
    *batchnorm.KERNELS,
    *loss.KERNELS,
    *optim.KERNELS,
)
