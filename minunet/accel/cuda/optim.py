"""The SGD and Adam updates as GPU kernels, one launch per parameter and step.

On the GPU each line of a reference ``_update`` (``minunet.nn.optim``) is one CuPy kernel
launch and one full pass over the parameter (with a temporary array in between): SGD is 2
to 8 of them, Adam 13 to 15, for every parameter at every step. ``SGD_UPDATE`` and
``ADAM_UPDATE`` have one thread per element read p, g and the buffers once, do the same
arithmetic in the same order, and write p and the buffers once.
"""

from __future__ import annotations

from typing import Any

from minunet.accel.cuda import kernel as cuda
from minunet.core.backend import get_array_module
from minunet.nn.base import Parameter
from minunet.nn.optim import SGD, Adam, AdamW

# Each kernel repeats its ``_update`` operation for operation, in the same order, with the
# same scalars, so that it rounds like NumPy: on the tests' CPU emulator (g++ on x86-64) the
# results agree to the last bit. On the GPU, NVRTC may contract a product and a sum
# (a * b + c) into one fused multiply-add, rounded once instead of twice (so may g++ on a
# CPU with FMA, such as ARM), so results can differ in the last bit or two: the tests
# compare with a tight tolerance rather than bit for bit.

SGD_UPDATE = cuda.Kernel(
    r"""
// One thread per element i of the parameter, in place. SGD._update, line by line:
//   g = grad + wd * p              L2 weight decay, when wd != 0
//   v = v * mu + g                 momentum buffer, when mu != 0 (else v is never touched)
//   g = nesterov ? g + mu * v : v
//   p = p - lr * g
extern "C" __global__ void sgd_update(T* __restrict__ p, const T* __restrict__ grad,
                                      T* __restrict__ v, long long n, T lr, T mu, T wd,
                                      int nesterov) {
    for_each(i, n) {
        T g = grad[i];
        if (wd != 0) g = g + wd * p[i];
        if (mu != 0) {
            T vi = v[i] * mu + g;
            v[i] = vi;
            g = nesterov ? g + mu * vi : vi;
        }
        p[i] = p[i] - lr * g;
    }
}
"""
)

ADAM_UPDATE = cuda.Kernel(
    r"""
// One thread per element i of the parameter, in place. Adam._update, line by line:
//   p = p * shrink                 AdamW (decoupled, wd != 0): shrink = 1 - lr * wd
//   g = grad + wd * p              Adam (L2, wd != 0)
//   exp_avg    = exp_avg * b1 + one_minus_b1 * g          (first moment)
//   exp_avg_sq = exp_avg_sq * b2 + one_minus_b2 * g * g   (second moment)
//   p = p - step_size * exp_avg / (sqrt(exp_avg_sq / c2) + eps)      step_size = lr / c1
// shrink, one_minus_b1, one_minus_b2 and step_size come computed by the host in double and
// rounded to T once, as NumPy rounds a Python float that meets a T array: 1 - b1 computed in
// float from an already rounded b1 would be a different number.
extern "C" __global__ void adam_update(T* __restrict__ p, const T* __restrict__ grad,
                                       T* __restrict__ exp_avg, T* __restrict__ exp_avg_sq,
                                       long long n,
                                       T step_size, T b1, T one_minus_b1, T b2, T one_minus_b2,
                                       T c2, T eps, T wd, T shrink, int decoupled) {
    for_each(i, n) {
        T w = p[i];
        T g = grad[i];
        if (wd != 0 && decoupled) w = w * shrink;
        else if (wd != 0) g = g + wd * w;
        T a = exp_avg[i] * b1 + one_minus_b1 * g;
        T s = exp_avg_sq[i] * b2 + one_minus_b2 * g * g;
        exp_avg[i] = a;
        exp_avg_sq[i] = s;
        p[i] = w - step_size * a / (sqrt(s / c2) + eps);
    }
}
"""
)


def sgd_update_kernel(
    p: Any, g: Any, v: Any, lr: float, momentum: float, weight_decay: float, nesterov: bool
) -> None:
    """``SGD._update`` in one kernel launch: p (and the momentum buffer v) in place from g.

    ``v`` is None when momentum is 0: there is no buffer, and the kernel never reads it.
    """
    if v is None:  # the kernel still needs an array of type T in v's place
        v = get_array_module(p).empty(0, dtype=p.dtype)
    SGD_UPDATE(p.size, p.dtype, p, g, v, p.size, lr, momentum, weight_decay, int(nesterov))


def adam_update_kernel(
    p: Any,
    g: Any,
    exp_avg: Any,
    exp_avg_sq: Any,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """``Adam._update`` (AdamW's if ``decoupled``) in one kernel launch: p and the two
    moments exp_avg, exp_avg_sq in place.

    ``step`` counts from 1, like ``Optimizer.steps`` after its increment.
    """
    # The Python-float arithmetic of Adam._update, done here in double as it is there.
    c1 = 1 - beta1**step
    c2 = 1 - beta2**step
    scalars = (lr / c1, beta1, 1 - beta1, beta2, 1 - beta2, c2, eps)
    decay = (weight_decay, 1 - lr * weight_decay, int(decoupled))
    ADAM_UPDATE(p.size, p.dtype, p, g, exp_avg, exp_avg_sq, p.size, *scalars, *decay)


KERNELS = (SGD_UPDATE, ADAM_UPDATE)


class KernelSGD(SGD):
    """SGD through ``SGD_UPDATE`` for the parameters it applies to (CuPy float32 and
    float64, ``MINUNET_CUDA_KERNELS`` not 0); the reference update for all others."""

    def _update(self, i: int, p: Parameter) -> None:
        if not cuda.enabled_for(p.data):
            return super()._update(i, p)
        v = self._buffers("momentum")[i] if self.momentum else None
        sgd_update_kernel(
            p.data, p.grad, v, self.lr, self.momentum, self.weight_decay, self.nesterov
        )


class KernelAdam(Adam):
    """Adam (and, through ``decoupled``, AdamW) through ``ADAM_UPDATE`` for the parameters
    it applies to; the reference update for all others."""

    def _update(self, i: int, p: Parameter) -> None:
        if not cuda.enabled_for(p.data):
            return super()._update(i, p)
        exp_avg, exp_avg_sq = self._buffers("exp_avg")[i], self._buffers("exp_avg_sq")[i]
        adam_update_kernel(
            p.data, p.grad, exp_avg, exp_avg_sq, self.steps, self.lr, self.beta1, self.beta2,
            self.eps, self.weight_decay, self.decoupled,
        )  # fmt: skip


class KernelAdamW(KernelAdam, AdamW):
    """AdamW through ``ADAM_UPDATE``: KernelAdam's update with AdamW's decoupled decay."""
