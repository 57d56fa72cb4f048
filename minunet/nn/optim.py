"""Optimisers: SGD, Adam and AdamW (learning-rate schedules: ``minunet.nn.schedule``).

Each optimiser updates ``Parameter.data`` in place from ``Parameter.grad``. What they share
(the step count, per-parameter state, and saving that state so a checkpoint resumes a run
exactly) is ``minunet.nn.optimizer_base.Optimizer``; gradient clipping: ``minunet.nn.clip``.

    SGD (momentum mu, PyTorch's form):  v = mu * v + g;   p -= lr * v      (Nesterov: g + mu * v)
    Adam:   m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2;   p -= lr * m_hat / (sqrt(v_hat) + eps)
            (m and v, the gradient's first and second moments, are kept as exp_avg, exp_avg_sq)
    AdamW:  Adam, with weight decay applied to p directly (p -= lr * wd * p), not through g

For SGD and Adam, weight decay is the classic L2 term added to the gradient (g += wd * p),
as in PyTorch.

Fast paths: ``KernelSGD``, ``KernelAdam`` and ``KernelAdamW``, one GPU kernel per parameter
and step on CuPy arrays (listed in ``minunet.accel.IMPLEMENTATIONS``;
``minunet.accel.accelerate`` gives them to an optimiser). ``MINUNET_ACCEL=0`` turns them
off (``MINUNET_CUDA_KERNELS=0``: every GPU kernel).
"""

from __future__ import annotations

from collections.abc import Sequence

from minunet.core.backend import get_array_module
from minunet.nn.base import Parameter
from minunet.nn.clip import clip_grad_norm
from minunet.nn.optimizer_base import Optimizer
from minunet.nn.schedule import SCHEDULES, learning_rate

OPTIMIZERS = ("sgd", "adam", "adamw")
# Optimizer, clip_grad_norm, SCHEDULES and learning_rate are re-exported: the training loop
# and the lessons import them from here, with the optimisers.
__all__ = ["OPTIMIZERS", "SCHEDULES", "SGD", "Adam", "AdamW", "Optimizer", "clip_grad_norm"]
__all__ += ["learning_rate", "make_optimizer"]


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
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        if self.momentum:
            v = self._buffers("momentum")[i]
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        p.data -= self.lr * g


class Adam(Optimizer):
    decoupled = False
    default_weight_decay = 0.0  # what weight_decay=None means: PyTorch's default for the class

    def __init__(
        self,
        params: Sequence[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
    ) -> None:
        wd = self.default_weight_decay if weight_decay is None else weight_decay
        super().__init__(params, lr, wd)
        self.beta1, self.beta2 = betas
        self.eps = eps

    def _update(self, i: int, p: Parameter) -> None:
        # exp_avg and exp_avg_sq: Adam's first and second moments of the gradient
        exp_avg, exp_avg_sq = self._buffers("exp_avg")[i], self._buffers("exp_avg_sq")[i]
        g = p.grad
        if self.weight_decay and self.decoupled:
            p.data *= 1 - self.lr * self.weight_decay
        elif self.weight_decay:
            g = g + self.weight_decay * p.data
        exp_avg *= self.beta1
        exp_avg += (1 - self.beta1) * g
        exp_avg_sq *= self.beta2
        exp_avg_sq += (1 - self.beta2) * g * g
        # Bias corrections folded into the step size, as PyTorch does.
        c1 = 1 - self.beta1**self.steps
        c2 = 1 - self.beta2**self.steps
        xp = get_array_module(exp_avg_sq)
        p.data -= (self.lr / c1) * exp_avg / (xp.sqrt(exp_avg_sq / c2) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay, by default PyTorch's 1e-2."""

    decoupled = True
    default_weight_decay = 1e-2


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
