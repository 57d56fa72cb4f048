"""Optimisers and learning-rate schedules.

Each optimiser updates ``Parameter.data`` in place from ``Parameter.grad``. Their state
(momentum buffers, Adam's moments, the step count) is exposed by ``state_dict`` so that a
checkpoint can resume a run exactly.

    SGD (momentum mu, PyTorch's form):  v = mu * v + g;   p -= lr * v      (Nesterov: g + mu * v)
    Adam:   m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2;   p -= lr * m_hat / (sqrt(v_hat) + eps)
    AdamW:  Adam, with weight decay applied to p directly (p -= lr * wd * p), not through g

For SGD and Adam, weight decay is the classic L2 term added to the gradient (g += wd * p),
as in PyTorch.

On the GPU each line of an ``_update`` below is one CuPy kernel launch and one full pass
over the parameter (with a temporary array in between): SGD is 2 to 8 of them, Adam 13 to
15, for every parameter at every step. CuPy arrays therefore take one hand-written kernel
per parameter instead (``SGD_UPDATE``, ``ADAM_UPDATE``): one thread per element reads p,
g and the buffers once, does the same arithmetic in the same order, and writes p and the
buffers once. The NumPy code stays as the reference the kernels are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from minunet.accel.cuda import kernel as cuda
from minunet.core.backend import get_array_module, to_device, to_numpy
from minunet.nn.base import Parameter

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


class Optimizer:
    """Shared bookkeeping: parameters, learning rate, step count, per-parameter state."""

    def __init__(self, params: Sequence[Parameter], lr: float, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.steps = 0
        self.state: dict[str, list[Any]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def step(self) -> None:
        self.steps += 1
        for i, p in enumerate(self.params):
            self._update(i, p)

    def _update(self, i: int, p: Parameter) -> None:
        raise NotImplementedError

    def _buffers(self, name: str) -> list[Any]:
        """One zero-initialised buffer per parameter, created on first use."""
        if name not in self.state:
            self.state[name] = [get_array_module(p.data).zeros_like(p.data) for p in self.params]
        return self.state[name]

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"steps": np.asarray(self.steps, dtype=np.int64)}
        for name, bufs in self.state.items():
            for i, b in enumerate(bufs):
                out[f"{name}.{i}"] = to_numpy(b).copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.steps = int(state["steps"])
        names = {k.rsplit(".", 1)[0] for k in state if k != "steps"}
        for name in names:
            bufs = []
            for i, p in enumerate(self.params):
                arr = np.asarray(state[f"{name}.{i}"])
                if arr.shape != p.data.shape:
                    raise ValueError(
                        f"optimiser state {name}.{i} has shape {arr.shape}, expected {p.data.shape}"
                    )
                bufs.append(to_device(arr.astype(p.data.dtype), get_array_module(p.data)))
            self.state[name] = bufs


class SGD(Optimizer):
    def __init__(
        self,
        params: Sequence[Parameter],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = momentum, nesterov

    def _update(self, i: int, p: Parameter) -> None:
        if cuda.enabled_for(p.data):
            v = self._buffers("momentum")[i] if self.momentum else None
            sgd_update_kernel(
                p.data, p.grad, v, self.lr, self.momentum, self.weight_decay, self.nesterov
            )
            return
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        if self.momentum:
            v = self._buffers("momentum")[i]
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        p.data -= self.lr * g


class Adam(Optimizer):
    decoupled = False

    def __init__(
        self,
        params: Sequence[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = betas
        self.eps = eps

    def _update(self, i: int, p: Parameter) -> None:
        m, v = self._buffers("exp_avg")[i], self._buffers("exp_avg_sq")[i]
        if cuda.enabled_for(p.data):
            adam_update_kernel(
                p.data,
                p.grad,
                m,
                v,
                self.steps,
                self.lr,
                self.beta1,
                self.beta2,
                self.eps,
                self.weight_decay,
                self.decoupled,
            )
            return
        g = p.grad
        if self.weight_decay and self.decoupled:
            p.data *= 1 - self.lr * self.weight_decay
        elif self.weight_decay:
            g = g + self.weight_decay * p.data
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        # Bias corrections folded into the step size, as PyTorch does.
        c1 = 1 - self.beta1**self.steps
        c2 = 1 - self.beta2**self.steps
        p.data -= (self.lr / c1) * m / (get_array_module(v).sqrt(v / c2) + self.eps)


class AdamW(Adam):
    decoupled = True

    def __init__(
        self,
        params: Sequence[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)


# --- The same two updates as CUDA kernels (CuPy arrays) --------------------------------
#
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
//   m = m * b1 + one_minus_b1 * g
//   v = v * b2 + one_minus_b2 * g * g
//   p = p - step_size * m / (sqrt(v / c2) + eps)      step_size = lr / c1
// shrink, one_minus_b1, one_minus_b2 and step_size come computed by the host in double and
// rounded to T once, as NumPy rounds a Python float that meets a T array: 1 - b1 computed in
// float from an already rounded b1 would be a different number.
extern "C" __global__ void adam_update(T* __restrict__ p, const T* __restrict__ grad,
                                       T* __restrict__ m, T* __restrict__ v, long long n,
                                       T step_size, T b1, T one_minus_b1, T b2, T one_minus_b2,
                                       T c2, T eps, T wd, T shrink, int decoupled) {
    for_each(i, n) {
        T w = p[i];
        T g = grad[i];
        if (wd != 0 && decoupled) w = w * shrink;
        else if (wd != 0) g = g + wd * w;
        T mi = m[i] * b1 + one_minus_b1 * g;
        T vi = v[i] * b2 + one_minus_b2 * g * g;
        m[i] = mi;
        v[i] = vi;
        p[i] = w - step_size * mi / (sqrt(vi / c2) + eps);
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
    m: Any,
    v: Any,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """``Adam._update`` (AdamW's if ``decoupled``) in one kernel launch: p, m, v in place.

    ``step`` counts from 1, like ``Optimizer.steps`` after its increment.
    """
    # The Python-float arithmetic of Adam._update, done here in double as it is there.
    c1 = 1 - beta1**step
    c2 = 1 - beta2**step
    scalars = (lr / c1, beta1, 1 - beta1, beta2, 1 - beta2, c2, eps)
    decay = (weight_decay, 1 - lr * weight_decay, int(decoupled))
    ADAM_UPDATE(p.size, p.dtype, p, g, m, v, p.size, *scalars, *decay)


def make_optimizer(
    name: str,
    params: Sequence[Parameter],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> Optimizer:
    """Build an optimiser by name: ``sgd``, ``adam`` or ``adamw``."""
    if name == "sgd":
        return SGD(params, lr, momentum, weight_decay, nesterov)
    if name == "adam":
        return Adam(params, lr, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def clip_grad_norm(params: Sequence[Parameter], max_norm: float) -> Any:
    """Scale all gradients so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping as a 0-d backend array (no host synchronisation).
    """
    xp = get_array_module(params[0].grad)
    total = xp.sqrt(sum((p.grad.astype(xp.float32) ** 2).sum() for p in params))
    scale = xp.minimum(1.0, max_norm / (total + 1e-6))
    for p in params:
        p.grad *= scale.astype(p.grad.dtype)
    return total


def learning_rate(
    step: int,
    total_steps: int,
    base_lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    step_size: int = 0,
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> float:
    """The learning rate at ``step`` (0-based) of ``total_steps``.

    Linear warm-up from base_lr/warmup to base_lr over ``warmup_steps``, then:
    ``constant``; ``cosine`` decay to ``min_lr`` at the last step; or ``step``, multiplying
    by ``gamma`` every ``step_size`` steps.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps - 1)
        t = min(1.0, (step - warmup_steps) / span)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))
    if schedule == "step" and step_size > 0:
        return base_lr * gamma ** ((step - warmup_steps) // step_size)
    return base_lr
