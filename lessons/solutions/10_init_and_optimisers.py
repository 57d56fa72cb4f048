"""Solutions to lesson 10's exercises."""

import numpy as np


def my_adam(p, g, m, v, t, lr, b1, b2, eps):
    """One Adam step (t counts from 1); returns the new (p, m, v)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def my_nesterov(p, g, v, lr, mu):
    """One Nesterov step in PyTorch's form; returns the new (p, v)."""
    v = mu * v + g
    return p - lr * (g + mu * v), v


# Without the correction Adam's first step is lr * (1 - b1) * g / |g|: a tenth of lr.
# AdamW's decay happens before the moments and does not use c1; SGD has no c1 at all.
answer_bias_correction_mutation = {"first_step_is_lr_sign"}
