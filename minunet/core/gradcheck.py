"""Gradient checking: compare a hand-written backward with central differences.

For a scalar function L of an array x, each partial derivative is estimated as

    dL/dx_i ~ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

whose error is O(eps^2). In float64 with eps = 1e-6 the estimate is good to ~1e-9
relative, so a backward pass that agrees to 1e-6 is right, and one that is wrong
disagrees by far more. Use small arrays: it costs two forward passes per element.

To check a layer, take L = sum(forward(x) * R) for a fixed random R: then dL/dout = R,
and the layer's backward(R) must equal the numerical dL/dx (and likewise for every
parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module, to_numpy


def numerical_gradient(f: Callable[[], Any], x: Any, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to ``x``.

    ``x`` is perturbed in place, one element at a time, and restored. Returns a NumPy
    array shaped like ``x``.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: writing it perturbs x
    if flat.base is None and x.size > 1 and not np.shares_memory(flat, x):
        raise ValueError("numerical_gradient needs a contiguous array it can perturb in place")
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i].item()
        flat[i] = old + eps
        plus = float(f())
        flat[i] = old - eps
        minus = float(f())
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return grad


def max_relative_error(a: Any, b: Any, noise: float = 0.0) -> float:
    """max_i |a_i - b_i| / max(max_i |a_i|, max_i |b_i|): the worst error relative to the
    scale of the gradient (0 when both are all zero).

    ``noise``: an absolute error that rounding alone can cause (``fd_rounding``); only
    the part of the error beyond it counts. Without it, a gradient that is tiny because
    its terms cancel would be judged by the central difference's rounding.
    """
    a = to_numpy(a).astype(np.float64)
    b = to_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    if scale == 0.0:
        return 0.0
    return float(max(np.abs(a - b).max() - noise, 0.0) / scale)


def fd_rounding(magnitude: float, eps: float = 1e-6) -> float:
    """How far rounding alone can move a central difference of a float64 scalar L.

    L(x + eps) and L(x - eps) are each off by about eps64 * ``magnitude`` (the size of
    the terms summed into L, e.g. sum |out * R|), and their difference is divided by
    2 eps: the estimate is off by up to eps64 * magnitude / eps, whatever the gradient.
    """
    return float(np.finfo(np.float64).eps * magnitude / eps)


def check_layer(
    layer: Any,
    *inputs: Any,
    eps: float = 1e-6,
    seed: int = 0,
    extra_forward: Callable[..., Any] | None = None,
) -> dict[str, float]:
    """Gradient-check ``layer`` at ``inputs``: every input and every parameter.

    Runs forward once to get the output shape, draws a fixed random R, and checks that
    backward(R) matches the numerical gradient of sum(forward(*inputs) * R).
    Returns {name: max relative error}, names ``input0``, ``input1``, ... and parameter
    names. Use float64 layers and inputs.
    """
    forward = extra_forward or layer.forward
    out = forward(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    xp = get_array_module(outs[0])
    # A stream of its own, so R is never equal to an input drawn from the same seed
    # (for BatchNorm, R == x makes the true gradient nearly vanish, a useless check).
    rng = np.random.default_rng((seed, 0x5EED))
    rs = [xp.asarray(rng.standard_normal(o.shape)) for o in outs]

    def loss() -> float:
        res = forward(*inputs)
        res = res if isinstance(res, tuple) else (res,)
        return float(sum((o * r).sum() for o, r in zip(res, rs, strict=True)))

    # analytic gradients
    forward(*inputs)
    for p in layer.parameters() if hasattr(layer, "parameters") else []:
        p.grad[...] = 0
    grads = layer.backward(*rs)
    grads = grads if isinstance(grads, tuple) else (grads,)

    # L = sum(out * R): its terms set the central differences' rounding floor.
    magnitude = sum(float(abs(o * r).sum()) for o, r in zip(outs, rs, strict=True))
    noise = fd_rounding(magnitude, eps)
    errors = {}
    for i, (x, g) in enumerate(zip(inputs, grads, strict=True)):
        errors[f"input{i}"] = max_relative_error(g, numerical_gradient(loss, x, eps), noise)
    named = layer.named_parameters() if hasattr(layer, "named_parameters") else []
    for name, p in named:
        num = numerical_gradient(loss, p.data, eps)
        errors[name] = max_relative_error(p.grad, num, noise)
    return errors
