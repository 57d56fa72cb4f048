"""Softmax cross-entropy as one GPU kernel (``KernelSoftmaxCrossEntropy``).

Written with array operations (``minunet.nn.losses``), the loss makes about ten full-size
(N, K, H, W) temporaries (shifted, exp, probs, log_probs, onehot, ...), and on the GPU
each is a kernel launch and a trip through memory. ``SOFTMAX_CROSS_ENTROPY`` has one
thread per pixel loop over its K logits and write the pixel's weighted loss, its weight
w_i and the unscaled gradient w_i * (softmax - onehot), in one pass over the logits.
Only the two sums over pixels are left to CuPy, and the division by sum_i w_i waits for
``backward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minunet.accel.cuda import kernel as cuda
from minunet.core.backend import get_array_module
from minunet.nn.losses import SoftmaxCrossEntropy

SOFTMAX_CROSS_ENTROPY = cuda.Kernel(
    r"""
// One thread per pixel i = n*HW + s (s = h*W + w) of logits (N, K, H, W). Its K logits
// are z[k*HW] with z = logits + n*K*HW + s. With y = target[i] the thread writes
//   weight[i] = w = [y != ignore_index] * class_weight[y] * pixel_weight[i]
//   loss[i]   = w * (-log p_y),   log p_y = (z_y - m) - log(sum_k exp(z_k - m)), m = max z_k
//   grad[n*K*HW + k*HW + s] = w * (p_k - [k == y])   for every class k
// A factor whose has_* flag is 0 counts as 1 (its array is a 1-element dummy). An ignored
// pixel reads class 0 and gets w = 0. A label outside [0, K) that is not ignored (possible
// only with check_targets=False) would read outside the arrays: that pixel gets w = NaN
// instead, so the loss and the gradient show it.
extern "C" __global__ void softmax_cross_entropy(const T* __restrict__ logits,
                                                 const long long* __restrict__ target,
                                                 const T* __restrict__ class_weight,
                                                 const T* __restrict__ pixel_weight,
                                                 T* __restrict__ loss, T* __restrict__ weight,
                                                 T* __restrict__ grad, long long pixels,
                                                 int K, long long HW, int has_class_weight,
                                                 int has_pixel_weight, int has_ignore,
                                                 long long ignore_index) {
    for_each(i, pixels) {
        long long first = (i / HW) * K * HW + i % HW;  // element (n, 0, h, w)
        const T* z = logits + first;
        T* dz = grad + first;

        long long y = target[i];
        T w = 1;
        if (has_ignore && y == ignore_index) { w = 0; y = 0; }        // any class: weight 0
        else if (y < 0 || y >= K)            { w = (T)nan(""); y = 0; }
        if (has_class_weight) w *= class_weight[y];
        if (has_pixel_weight) w *= pixel_weight[i];

        T m = z[0];  // subtract the largest logit, so that exp never overflows
        for (int k = 1; k < K; ++k) if (z[k * HW] > m) m = z[k * HW];
        T sum = 0;
        for (int k = 0; k < K; ++k) sum += exp(z[k * HW] - m);

        loss[i] = w * -((z[y * HW] - m) - log(sum));
        weight[i] = w;
        for (int k = 0; k < K; ++k)
            dz[k * HW] = w * (exp(z[k * HW] - m) / sum - (T)(k == y));
    }
}
"""
)


def softmax_cross_entropy_kernel(
    logits: Any,
    target: Any,
    class_weights: Any = None,
    ignore_index: int | None = None,
    pixel_weights: Any = None,
) -> tuple[Any, Any, Any]:
    """The loss and its unscaled gradient in one kernel launch, plus two sums.

    logits (N, K, H, W), target (N, H, W) int, class_weights (K,) or None, pixel_weights
    broadcastable to (N, H, W) or None  ->  (loss, grad, total):

        loss   0-d, sum_i w_i * (-log p_i[y_i]) / total     (stays on the device)
        grad   (N, K, H, W), w_i * (softmax(z_i) - onehot(y_i)), *not* divided by total
        total  0-d, max(sum_i w_i, tiny)                     so dlogits = grad * (1 / total)

    Labels are not range-checked here (``KernelSoftmaxCrossEntropy.forward`` does that first,
    with ``SoftmaxCrossEntropy.check``).
    """
    xp = get_array_module(logits)
    n, k, h, w = logits.shape
    dtype = logits.dtype
    logits = xp.ascontiguousarray(logits)
    if target.dtype != xp.int64:  # the kernel reads labels as long long
        target = target.astype(xp.int64)
    target = xp.ascontiguousarray(target)
    dummy = xp.zeros(1, dtype=dtype)  # stands in for an absent weight array (never read)
    cw = dummy
    if class_weights is not None:
        cw = xp.ascontiguousarray(xp.asarray(class_weights, dtype=dtype))
        if cw.shape != (k,):
            raise ValueError(f"class_weights must have shape ({k},), got {tuple(cw.shape)}")
    pw = dummy
    if pixel_weights is not None:
        # A copy of shape (N, H, W) even when the caller's weights broadcast, e.g. (N, 1, 1).
        pw = xp.asarray(pixel_weights, dtype=dtype)
        pw = xp.ascontiguousarray(xp.broadcast_to(pw, target.shape))

    loss = xp.empty(target.shape, dtype=dtype)  # per pixel, (N, H, W)
    weight = xp.empty(target.shape, dtype=dtype)
    grad = xp.empty(logits.shape, dtype=dtype)
    SOFTMAX_CROSS_ENTROPY(
        target.size,
        dtype,
        logits,
        target,
        cw,
        pw,
        loss,
        weight,
        grad,
        target.size,
        k,
        h * w,
        int(class_weights is not None),
        int(pixel_weights is not None),
        int(ignore_index is not None),
        0 if ignore_index is None else ignore_index,
    )
    total = xp.maximum(weight.sum(), xp.finfo(dtype).tiny)
    return loss.sum() / total, grad, total


KERNELS = (SOFTMAX_CROSS_ENTROPY,)


@dataclass
class KernelCrossEntropyCache:
    """The kernel's unscaled gradient w_i * (softmax - onehot) (N, K, H, W) and sum_i w_i."""

    grad: Any
    total: Any


class KernelSoftmaxCrossEntropy(SoftmaxCrossEntropy):
    """SoftmaxCrossEntropy through the kernel above, for the logits it applies to (CuPy
    float32 and float64, ``MINUNET_CUDA_KERNELS`` not 0); the reference for all others."""

    def forward(self, logits: Any, target: Any, pixel_weights: Any = None) -> Any:
        if not cuda.enabled_for(logits):
            return super().forward(logits, target, pixel_weights)
        self.check(logits, target)
        loss, grad, total = softmax_cross_entropy_kernel(
            logits, target, self.class_weights, self.ignore_index, pixel_weights
        )
        self._cache = KernelCrossEntropyCache(grad, total)
        return loss

    def backward(self) -> Any:
        if not isinstance(self._cache, KernelCrossEntropyCache):
            return super().backward()
        return self._cache.grad * (1 / self._cache.total)
