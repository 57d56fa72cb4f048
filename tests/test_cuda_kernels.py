"""The hand-written CUDA kernels, checked without a GPU.

Each kernel is compiled twice on every run: with the C++ compiler, and executed thread by
thread on NumPy arrays against the NumPy reference it replaces (``cuda_emulator``), and
with NVRTC for compute_90, CUDA's own compiler. ``test_cupy_parity.py`` runs the same
comparisons on a real GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_emulator import CXX, NVRTC, emulate, nvrtc_compile
from hypothesis import given
from hypothesis import strategies as st

import minunet.layers  # noqa: F401  (defines kernels: registers them in cuda.KERNELS)
import minunet.losses  # noqa: F401
import minunet.optim  # noqa: F401
from minunet import cuda
from minunet.im2col import col2im, col2im_kernel, conv_output_size, im2col, im2col_kernel

needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")


@pytest.mark.skipif(NVRTC is None, reason="NVRTC not installed: pip install nvidia-cuda-nvrtc")
@pytest.mark.parametrize("kernel", cuda.KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_kernel_compiles_for_the_gpu_with_nvrtc(kernel, ctype):
    nvrtc_compile(kernel, ctype)


def test_kernel_argument_checks():
    x = np.zeros((1, 1, 4, 4))
    cols = np.zeros((1, 9, 4), dtype=np.float32)
    args = (4, 4, 3, 3, 2, 2, 1, 0, 1)
    from minunet.im2col import IM2COL

    with pytest.raises(TypeError, match="takes 12 arguments"):
        IM2COL(cols.size, x.dtype, x, cols)
    with pytest.raises(TypeError, match="cols must be a C-contiguous float64 array"):
        IM2COL(cols.size, x.dtype, x, cols, cols.size, *args)
    with pytest.raises(TypeError, match="runs on CuPy arrays"):
        IM2COL(cols.size, x.dtype, x, cols.astype(np.float64), cols.size, *args)


geometry = st.tuples(
    st.integers(1, 2),  # n
    st.integers(1, 3),  # c
    st.integers(1, 7),  # h
    st.integers(1, 7),  # w
    st.integers(1, 3),  # kh
    st.integers(1, 3),  # kw
    st.integers(1, 3),  # stride
    st.integers(0, 2),  # padding
    st.integers(1, 2),  # dilation
    st.sampled_from([np.float32, np.float64]),
)


@needs_cxx
@given(geometry)
def test_im2col_and_col2im_kernels_equal_the_numpy_reference(g):
    n, c, h, w, kh, kw, s, p, d, dtype = g
    ho, wo = conv_output_size(h, kh, s, p, d), conv_output_size(w, kw, s, p, d)
    if ho < 1 or wo < 1:
        return
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    cols = rng.standard_normal((n, c * kh * kw, ho * wo)).astype(dtype)
    with emulate():
        got_cols = im2col_kernel(x, kh, kw, s, p, d)
        got_x = col2im_kernel(cols, x.shape, kh, kw, s, p, d)
    # Same copies, same additions in the same order: equal to the last bit.
    np.testing.assert_array_equal(got_cols, im2col(x, kh, kw, s, p, d))
    np.testing.assert_array_equal(got_x, col2im(cols, x.shape, kh, kw, s, p, d))
