"""MaxPool2d's CUDA kernels against the NumPy layer they replace.

On the CPU emulator (``minunet.accel.cuda.emulator``) the kernel wrappers run on NumPy arrays and must
give exactly the NumPy layer's output, argmax and gradient: the same comparisons, the
same tie rule (the first maximum in row-major window order wins) and the same additions
in the same order. Inputs are small integers, so most windows hold ties. The tests
that take ``cp`` or ``cp_kernels`` run the layer (``KernelMaxPool2d``) on CuPy, which dispatches to the
kernels, and compare it with the NumPy layer: on a real GPU (marked ``gpu``, skipped
without one) and on the strict CuPy stand-in (tests/cupy_standin.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minunet.accel import accelerate
from minunet.accel.cuda.emulator import CXX, emulate
from minunet.accel.cuda.pool import KernelMaxPool2d, maxpool_backward_kernel, maxpool_forward_kernel
from minunet.core.backend import to_numpy
from minunet.nn import MaxPool2d

needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")


def tied_input(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Integer values from -2..2: a 2x2 window has a tie more often than not."""
    return rng.integers(-2, 3, shape).astype(dtype)


def numpy_reference(x: np.ndarray, dout_seed: int, k: int, s: int):
    """(out, argmax, dout, dx) from the NumPy layer: the reference."""
    layer = MaxPool2d(k, s)
    out = layer.forward(x)
    argmax = layer._cache.argmax
    dout = np.random.default_rng(dout_seed).standard_normal(out.shape).astype(x.dtype)
    return out, argmax, dout, layer.backward(dout)


geometry = st.tuples(
    st.integers(1, 3),  # n
    st.integers(1, 3),  # c
    st.integers(1, 3),  # k
    st.integers(1, 3),  # stride
    st.integers(0, 5),  # h - k: the input is at least one window tall
    st.integers(0, 5),  # w - k
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),  # seed
)


@needs_cxx
@given(geometry)
def test_maxpool_kernels_equal_the_numpy_layer(g):
    n, c, k, s, dh, dw, dtype, seed = g
    rng = np.random.default_rng(seed)
    x = tied_input(rng, (n, c, k + dh, k + dw), dtype)
    want_out, want_argmax, dout, want_dx = numpy_reference(x, seed + 1, k, s)
    with emulate():
        out, argmax = maxpool_forward_kernel(x, k, s)
        dx = maxpool_backward_kernel(dout, want_argmax, x.shape, k, s)
    # Same comparisons and the same additions in the same order: equal to the last bit
    # (up to the sign of zero: the NumPy tiling path writes dout * 0, which can be -0.0).
    assert out.dtype == want_out.dtype and argmax.dtype == np.uint8 and dx.dtype == x.dtype
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(argmax, want_argmax)
    np.testing.assert_array_equal(dx, want_dx)


@needs_cxx
def test_maxpool_kernels_on_a_strided_view_and_a_flat_input():
    """A non-contiguous input is copied first; a constant input is one big tie (offset 0)."""
    rng = np.random.default_rng(0)
    wide = tied_input(rng, (2, 3, 7, 12), np.float32)
    view = wide[:, :, :, ::2]  # (2, 3, 7, 6), not C-contiguous
    flat = np.full((1, 2, 6, 6), 1.5)
    with emulate():
        for x, k, s in [(view, 3, 2), (view, 2, 2), (flat, 3, 1)]:
            want_out, want_argmax, dout, want_dx = numpy_reference(x, 1, k, s)
            out, argmax = maxpool_forward_kernel(x, k, s)
            np.testing.assert_array_equal(out, want_out)
            np.testing.assert_array_equal(argmax, want_argmax)
            np.testing.assert_array_equal(
                maxpool_backward_kernel(dout, argmax, x.shape, k, s), want_dx
            )
    assert not want_argmax.any()  # the flat input: every window's first pixel wins


# --- On CuPy (a real GPU, and the strict stand-in): the layer, kernels and generic ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "k,s,shape",
    [
        (2, 2, (2, 3, 8, 6)),  # the U-Net's pool: windows tile the input
        (2, 2, (2, 3, 9, 7)),  # last row and column in no window: gradient 0
        (3, 2, (2, 3, 9, 7)),  # overlapping windows: gradients add
        (2, 1, (1, 2, 6, 5)),
        (3, 3, (1, 2, 11, 10)),
        (1, 2, (1, 2, 5, 5)),
        (2, 2, (4, 16, 64, 62)),  # many blocks: every grid-stride turn
    ],
)
def test_maxpool_on_cupy_equals_the_numpy_layer(cp, k, s, shape, dtype):
    rng = np.random.default_rng(3)
    x = tied_input(rng, shape, dtype)
    want_out, want_argmax, dout, want_dx = numpy_reference(x, 4, k, s)
    layer = accelerate(MaxPool2d(k, s))
    assert isinstance(layer, KernelMaxPool2d)
    out = layer.forward(cp.asarray(x))
    dx = layer.backward(cp.asarray(dout))
    assert out.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(to_numpy(out), want_out)
    np.testing.assert_array_equal(to_numpy(layer._cache.argmax), want_argmax)
    np.testing.assert_array_equal(to_numpy(dx), want_dx)


def test_maxpool_kernel_wrappers_on_cupy_equal_the_numpy_layer(cp_kernels):
    """The wrappers themselves on CuPy, including a non-contiguous input."""
    cp = cp_kernels
    rng = np.random.default_rng(5)
    wide = tied_input(rng, (2, 3, 9, 14), np.float32)
    x = wide[:, :, :, ::2]
    want_out, want_argmax, dout, want_dx = numpy_reference(x, 6, 3, 2)
    out, argmax = maxpool_forward_kernel(cp.asarray(wide)[:, :, :, ::2], 3, 2)
    dx = maxpool_backward_kernel(cp.asarray(dout), argmax, x.shape, 3, 2)
    np.testing.assert_array_equal(to_numpy(out), want_out)
    np.testing.assert_array_equal(to_numpy(argmax), want_argmax)
    np.testing.assert_array_equal(to_numpy(dx), want_dx)
