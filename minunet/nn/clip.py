"""Gradient clipping by the global norm (``--clip-grad``), as ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minunet.core.backend import get_array_module
from minunet.nn.base import Parameter


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
