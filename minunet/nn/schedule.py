"""Learning-rate schedules: a linear warm-up, then constant, cosine or step decay."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "step")


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
