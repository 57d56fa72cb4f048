"""Softmax cross-entropy over every pixel, with its gradient.

For logits z (N, K, H, W) and labels y (N, H, W), per pixel i:

    log p_i = z_i - logsumexp(z_i)            (stable: subtract max_k z_ik first)
    loss    = sum_i w_i * (-log p_i[y_i]) / sum_i w_i

with w_i = class_weight[y_i] * pixel_weight_i (each 1 when not given) and w_i = 0 where
y_i == ignore_index. With no weights this is the plain mean over pixels, PyTorch's
``cross_entropy(reduction="mean")``; with class weights it is PyTorch's weighted mean.
The gradient is the classic one-liner

    dz_i = w_i * (softmax(z_i) - onehot(y_i)) / sum_i w_i

The loss is returned as a 0-d backend array: reading it into a Python float would make
the CPU wait for the GPU, so the training loop decides when to do that.

Fast path: ``KernelSoftmaxCrossEntropy``, one GPU kernel per pixel for the loss and the
gradient on CuPy arrays (listed in ``minunet.accel.IMPLEMENTATIONS``;
``minunet.accel.accelerate`` gives it to a loss). ``MINUNET_ACCEL=0`` turns it off
(``MINUNET_CUDA_KERNELS=0``: every GPU kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minunet.core.backend import get_array_module


@dataclass
class CrossEntropyCache:
    """What the backward needs: softmax (N, K, H, W), the labels with ignored pixels set to
    class 0 (N, H, W), the pixel weights w_i (N, H, W) and their sum (0-d)."""

    probs: Any
    target: Any
    weights: Any
    total: Any


class SoftmaxCrossEntropy:
    """logits (N, K, H, W), target (N, H, W) int -> scalar loss; backward() -> dlogits."""

    def __init__(
        self, class_weights: Any = None, ignore_index: int | None = None, check_targets: bool = True
    ) -> None:
        self.class_weights = class_weights  # (K,) or None
        self.ignore_index = ignore_index
        # Checking the label range reads a flag back from the device; the training loop,
        # whose labels were checked once when the data was loaded, turns it off.
        self.check_targets = check_targets
        self._cache: Any = None

    def check(self, logits: Any, target: Any) -> None:
        """Raise a clear ValueError for wrong shapes, or (with check_targets) labels."""
        if logits.ndim != 4 or target.shape != (logits.shape[0],) + logits.shape[2:]:
            raise ValueError(
                "SoftmaxCrossEntropy expects logits (N, K, H, W) and target (N, H, W); got "
                f"{tuple(logits.shape)} and {tuple(target.shape)}"
            )
        if self.check_targets:
            self._check_labels(target, logits.shape[1])

    def forward(self, logits: Any, target: Any, pixel_weights: Any = None) -> Any:
        self.check(logits, target)
        xp = get_array_module(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = xp.exp(shifted)
        sum_exp = exp.sum(axis=1, keepdims=True)
        log_probs = shifted - xp.log(sum_exp)  # (N, K, H, W)
        probs = exp / sum_exp

        valid = xp.ones(target.shape, dtype=bool)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
        safe_target = xp.where(valid, target, 0).astype(xp.int64)  # any class; weight 0

        weights = valid.astype(logits.dtype)  # (N, H, W)
        if self.class_weights is not None:
            cw = xp.asarray(self.class_weights, dtype=logits.dtype)
            weights = weights * cw[safe_target]
        if pixel_weights is not None:
            weights = weights * pixel_weights.astype(logits.dtype, copy=False)
        total = xp.maximum(weights.sum(), xp.finfo(logits.dtype).tiny)

        picked = xp.take_along_axis(log_probs, safe_target[:, None], axis=1)[:, 0]  # (N,H,W)
        loss = -(weights * picked).sum() / total
        self._cache = CrossEntropyCache(probs, safe_target, weights, total)
        return loss

    def __call__(self, logits: Any, target: Any, pixel_weights: Any = None) -> Any:
        return self.forward(logits, target, pixel_weights)

    def _check_labels(self, target: Any, k: int) -> None:
        """Raise unless every label lies in [0, k) or equals ignore_index (this reads one
        flag back from the device, which is why the training loop turns it off)."""
        bad = (target < 0) | (target >= k)
        if self.ignore_index is not None:
            bad &= target != self.ignore_index
        if bool(bad.any()):
            raise ValueError(
                f"SoftmaxCrossEntropy: target values must lie in [0, {k}) or "
                f"equal ignore_index ({self.ignore_index})"
            )

    def backward(self) -> Any:
        """dL/dlogits, (N, K, H, W)."""
        c = self._cache
        xp = get_array_module(c.probs)
        classes = xp.arange(c.probs.shape[1])[None, :, None, None]
        onehot = classes == c.target[:, None]  # (N, K, H, W) bool
        return (c.probs - onehot) * (c.weights / c.total)[:, None]
