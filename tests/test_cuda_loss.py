"""The fused softmax cross-entropy kernel against the NumPy SoftmaxCrossEntropy.

The kernel (``minunet.accel.cuda.loss.SOFTMAX_CROSS_ENTROPY``) runs here on the CPU emulator
(``minunet.accel.cuda.emulator.emulate``) on NumPy arrays; NVRTC compiles it for the GPU in
``test_cuda_kernels.py``, which finds every kernel by itself. The tests that take
``cp_kernels`` or ``cp`` (tests/conftest.py) run the same comparison on CuPy arrays: on a
real GPU (marked ``gpu``, skipped without one) and on the strict CuPy stand-in.

Tolerances. Per pixel, the kernel does the NumPy code's arithmetic in the same order,
but its exp and log come from the C library (or CUDA), not from NumPy's own vectorised
versions, and the two may differ in the last bit or two. The sums over pixels then add
up those differences, so float64 agrees to ~1e-12 relative and float32 (eps 1.2e-7) to
~1e-5, with a good margin. One more thing: a gradient entry softmax - onehot where
softmax ~ 1 is a difference of nearly equal numbers, so it is only accurate *absolutely*,
to a few eps times its scale w_i / total. Gradients are therefore compared with an atol
of rtol times that scale.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minunet.accel import accelerate
from minunet.accel.cuda import kernel as cuda
from minunet.accel.cuda.emulator import CXX, emulate
from minunet.accel.cuda.loss import KernelCrossEntropyCache, softmax_cross_entropy_kernel
from minunet.core.backend import to_numpy
from minunet.nn.losses import SoftmaxCrossEntropy

needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")
RTOL = {np.float64: 1e-12, np.float32: 1e-5}


def make_case(seed, n, k, h, w, dtype, scale, weighted, pixel, ignore, ignored_fraction):
    """Random logits, labels and weights; ``scale`` 1000 gives logits around +-1000."""
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((n, k, h, w))).astype(dtype)
    target = rng.integers(0, k, (n, h, w))
    if ignore is not None:
        target[rng.random(target.shape) < ignored_fraction] = ignore
    cw = rng.uniform(0.2, 3.0, k) if weighted else None
    pw = rng.uniform(0.0, 5.0, (n, h, w)) if pixel else None  # float64 even for float32
    return logits, target, cw, pw


def gradient_atol(dtype, total, cw, pw):
    """rtol times the largest possible w_i / total: see the module docstring."""
    largest_w = (1.0 if cw is None else cw.max()) * (1.0 if pw is None else pw.max())
    return RTOL[dtype] * largest_w / float(total)


def reference(logits, target, cw, ignore, pw):
    """The NumPy SoftmaxCrossEntropy: (loss, dlogits)."""
    layer = SoftmaxCrossEntropy(cw, ignore_index=ignore)
    return layer.forward(logits, target, pw), layer.backward()


@needs_cxx
@given(
    n=st.integers(1, 2),
    k=st.integers(2, 5),
    h=st.integers(1, 9),  # up to 2*9*9 = 162 pixels: more than the emulator's 96 threads
    w=st.integers(1, 9),
    dtype=st.sampled_from([np.float32, np.float64]),
    scale=st.sampled_from([1.0, 10.0, 1000.0]),
    weighted=st.booleans(),
    pixel=st.booleans(),
    ignore=st.sampled_from([None, 255, -100]),
    ignored_fraction=st.sampled_from([0.3, 1.0]),  # 1.0: every pixel ignored, total = tiny
    target_dtype=st.sampled_from([np.int64, np.int32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernel_equals_the_numpy_loss_and_gradient(
    n, k, h, w, dtype, scale, weighted, pixel, ignore, ignored_fraction, target_dtype, seed
):
    logits, target, cw, pw = make_case(
        seed, n, k, h, w, dtype, scale, weighted, pixel, ignore, ignored_fraction
    )
    target = target.astype(target_dtype)
    want_loss, want_grad = reference(logits, target, cw, ignore, pw)
    with emulate():
        loss, grad, total = softmax_cross_entropy_kernel(logits, target, cw, ignore, pw)
    dlogits = grad * (1 / total)  # what SoftmaxCrossEntropy.backward does on this path

    assert np.isfinite(loss) and np.isfinite(dlogits).all()  # even at +-1000
    assert loss.dtype == dtype and dlogits.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL[dtype], atol=0)
    atol = gradient_atol(dtype, total, cw, pw)
    np.testing.assert_allclose(dlogits, want_grad, rtol=RTOL[dtype], atol=atol)


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_is_stable_for_huge_logits(dtype):
    """Logits of +-1000: exp(1000) overflows, but the kernel only takes exp(z - max z)."""
    logits = np.full((1, 3, 1, 2), -1000.0, dtype=dtype)
    logits[0, 0] = 1000.0  # class 0 wins by 2000 at both pixels
    target = np.array([[[0, 2]]])  # pixel 0 right, pixel 1 wrong by 2000
    with emulate():
        loss, grad, total = softmax_cross_entropy_kernel(logits, target)
    # -log p = 0 at pixel 0 and 2000 at pixel 1; mean 1000. softmax is exactly (1, 0, 0).
    assert float(loss) == 1000.0 and float(total) == 2.0
    expected = np.array([[[[0, 1]], [[0, 0]], [[0, -1]]]], dtype=dtype)  # (1, 3, 1, 2)
    np.testing.assert_array_equal(grad, expected)


@needs_cxx
def test_the_layer_kernel_path_on_the_emulator():
    """KernelSoftmaxCrossEntropy (label check, cache, backward) on NumPy.

    ``emulate(route_numpy=True)`` makes the layer send NumPy arrays to the emulated
    kernel as it would CuPy ones.
    """
    logits, target, cw, pw = make_case(1, 2, 4, 5, 6, np.float64, 3.0, True, True, 255, 0.3)
    want_loss, want_grad = reference(logits, target, cw, 255, pw)
    layer = accelerate(SoftmaxCrossEntropy(cw, ignore_index=255))
    with emulate(route_numpy=True):
        loss = layer.forward(logits, target, pw)
        assert isinstance(layer._cache, KernelCrossEntropyCache)
        dlogits = layer.backward()
        bad = target.copy()
        bad[0, 0, 0] = 4  # K = 4 classes: labels 0..3, or 255 for ignore
        with pytest.raises(ValueError, match="must lie in"):
            layer.forward(logits, bad, pw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(dlogits, want_grad, rtol=1e-12, atol=1e-15)


@needs_cxx
def test_an_unchecked_bad_label_gives_nan_not_a_stray_read():
    """With check_targets=False nothing stops label K; the kernel marks that pixel NaN."""
    logits = np.zeros((1, 3, 2, 2))
    target = np.array([[[0, 1], [3, 2]]])  # 3 is out of range for K = 3
    with emulate():
        loss, grad, _ = softmax_cross_entropy_kernel(logits, target)
    assert np.isnan(loss)
    assert np.isnan(grad[0, :, 1, 0]).all() and np.isfinite(grad[0, :, 0, :]).all()


def test_class_weights_of_the_wrong_length_are_refused():
    logits, target = np.zeros((1, 3, 2, 2)), np.zeros((1, 2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match=r"class_weights must have shape \(3,\)"):
        softmax_cross_entropy_kernel(logits, target, class_weights=np.ones(2))


# --- On CuPy arrays against NumPy: a real GPU (``gpu``), and the strict stand-in -------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "weighted,pixel,ignore,scale",
    [
        (False, False, None, 1.0),
        (True, False, 255, 3.0),
        (False, True, -100, 3.0),
        (True, True, 255, 1000.0),
    ],
)
def test_kernel_on_cupy_equals_numpy(cp_kernels, dtype, weighted, pixel, ignore, scale):
    cp = cp_kernels
    assert cuda.ENABLED, "MINUNET_CUDA_KERNELS=0: the kernel path is switched off"
    # 2 * 37 * 53 pixels: many blocks, and H*W not a multiple of the block size.
    logits, target, cw, pw = make_case(7, 2, 5, 37, 53, dtype, scale, weighted, pixel, ignore, 0.3)
    want_loss, want_grad = reference(logits, target, cw, ignore, pw)
    layer = accelerate(SoftmaxCrossEntropy(cw, ignore_index=ignore))
    pw_d = None if pw is None else cp.asarray(pw)
    loss = layer.forward(cp.asarray(logits), cp.asarray(target.astype(np.int32)), pw_d)
    assert isinstance(layer._cache, KernelCrossEntropyCache)
    assert isinstance(loss, cp.ndarray) and loss.shape == ()  # no read-back to the host
    dlogits = layer.backward()
    np.testing.assert_allclose(float(loss), want_loss, rtol=RTOL[dtype])
    atol = gradient_atol(dtype, float(layer._cache.total), cw, pw)
    np.testing.assert_allclose(to_numpy(dlogits), want_grad, rtol=RTOL[dtype], atol=atol)


def test_kernel_on_cupy_checks_labels(cp):
    logits = cp.zeros((1, 3, 2, 2))
    target = cp.asarray([[[0, 1], [3, 255]]])
    with pytest.raises(ValueError, match="must lie in"):
        accelerate(SoftmaxCrossEntropy(ignore_index=255)).forward(logits, target)
