"""The hand-written CUDA kernels, checked without a GPU.

Each kernel is compiled twice on every run: by the C++ compiler, to execute it thread by
thread on NumPy arrays against the NumPy code it replaces (``minunet.accel.cuda.emulator``),
and by NVRTC for compute_90, CUDA's own compiler. ``test_cupy_parity.py`` and the CuPy
tests of ``test_cuda_*.py`` (the ``cp`` and ``cp_kernels`` fixtures) run the same
comparisons through the layers on CuPy arrays: on a real GPU, and on the strict CuPy
stand-in (tests/cupy_standin.py), whose ``RawKernel`` runs each launch on the emulator.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minunet.accel import accelerate, fast_paths
from minunet.accel.cuda import KERNELS
from minunet.accel.cuda import kernel as cuda
from minunet.accel.cuda.emulator import CXX, NVRTC, emulate, nvrtc_compile
from minunet.accel.cuda.im2col import IM2COL, col2im_kernel, im2col_kernel
from minunet.core.gradcheck import check_layer
from minunet.core.im2col import col2im, conv_output_size, im2col
from minunet.model import UNet
from minunet.nn import BatchNorm2d
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import Adam
from minunet.nn.sync_batchnorm import use_sync_batchnorm

needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")


@pytest.mark.skipif(NVRTC is None, reason="NVRTC not installed: pip install nvidia-cuda-nvrtc")
@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_kernel_compiles_for_the_gpu_with_nvrtc(kernel, ctype):
    nvrtc_compile(kernel, ctype)


def test_kernel_argument_checks():
    x = np.zeros((1, 1, 4, 4))
    cols = np.zeros((1, 9, 4), dtype=np.float32)
    args = (4, 4, 3, 3, 2, 2, 1, 0, 1)
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
    assume(ho >= 1 and wo >= 1)  # the kernel does not fit the padded input
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    cols = rng.standard_normal((n, c * kh * kw, ho * wo)).astype(dtype)
    with emulate():
        got_cols = im2col_kernel(x, kh, kw, s, p, d)
        got_x = col2im_kernel(cols, x.shape, kh, kw, s, p, d)
    # Same copies, same additions in the same order: equal to the last bit.
    np.testing.assert_array_equal(got_cols, im2col(x, kh, kw, s, p, d))
    np.testing.assert_array_equal(got_x, col2im(cols, x.shape, kh, kw, s, p, d))


def _batchnorm_run(layer, x, dout):
    out = layer.forward(x)
    for p in layer.parameters():
        p.grad[...] = 0
    dx = layer.backward(dout)
    grads = {name: p.grad.copy() for name, p in layer.named_parameters()}
    return out, dx, grads, {k: np.asarray(v).copy() for k, v in layer.buffers.items()}


def _batchnorm_error_bounds(x, dout, gamma, beta, train, relu, out):
    """First-order rounding-error bounds, elementwise, of what the BatchNorm test compares.

    Both routes compute the same formulas in a different order, so each may be off by
    the rounding of its inputs times their condition numbers (eps: the dtype's):
      rstd = 1/sqrt(var + 1e-5): var is a sum of m terms, which rounds by up to m eps
        times the terms' size: E[x^2] = mean^2 + var for the float64 sums of x^2 (the
        kernel turns its shifted sums back into them), var for NumPy's two-pass variance
        in the dtype. A small variance amplifies that (with few values per channel), so
        rel = m (eps64 (mean^2 + var) + eps var) / (2 (var + 1e-5)) + eps
      xhat = (x - mean) rstd:  eps (|x| + |mean|) rstd + |xhat| rel
      dx = scale (dout - mean(dout) - xhat mean(dout xhat)): cancelling terms, each
        rounding by eps times its size, plus what xhat's and scale's errors carry.
    (Measured over 5,500 random draws: the largest errors are 0.1 to 1 times these bounds.)
    """
    eps, eps64 = np.finfo(x.dtype).eps, np.finfo(np.float64).eps
    m, ax = x.shape[0] * x.shape[2] * x.shape[3], (0, 2, 3)
    x64, g, b = x.astype(np.float64), gamma[:, None, None], beta[:, None, None]
    if train:
        mean, var = x64.mean(axis=ax), x64.var(axis=ax)
        e_var = m * (eps64 * (mean**2 + var) + eps * var)
    else:  # the running statistics: running_mean 0, running_var 1.5
        mean, var, e_var = np.zeros(x.shape[1]), np.full(x.shape[1], 1.5), 0.0
    rel = (0.5 * e_var / (var + 1e-5) + eps)[:, None, None]
    rstd = (1 / np.sqrt(var + 1e-5))[:, None, None]
    xhat = (x64 - mean[:, None, None]) * rstd
    e_xhat = eps * (np.abs(x64) + np.abs(mean)[:, None, None]) * rstd + np.abs(xhat) * rel
    d = np.abs(dout * (out > 0)) if relu else np.abs(dout.astype(np.float64))
    e = {
        "out": np.abs(g) * e_xhat + eps * (np.abs(g * xhat) + np.abs(b)),
        "bias": m * eps * d.sum(axis=ax),
        "weight": (d * e_xhat).sum(axis=ax) + m * eps * (d * np.abs(xhat)).sum(axis=ax),
        "running_mean": eps * (np.abs(mean) + 1),
        "running_var": 0.1 * m / max(m - 1, 1) * e_var + 3 * eps,
        "num_batches_tracked": 0,
    }
    scale = np.abs(g) * rstd
    if train:  # bounds of |mean(dout)| and |mean(dout xhat)|, and of the latter's error
        mg, mgx = (d.sum(axis=ax) / m)[:, None, None], ((d * np.abs(xhat)).sum(axis=ax) / m)
        mgx, e_mgx = mgx[:, None, None], (e["weight"] / m)[:, None, None]
        terms = d + mg + np.abs(xhat) * mgx  # the terms that cancel
        e["dx"] = scale * (eps * terms + e_xhat * mgx + np.abs(xhat) * e_mgx + terms * rel)
    else:
        e["dx"] = scale * d * 2 * rel
    return e


@needs_cxx
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(1, 5),
    train=st.booleans(),
    relu=st.booleans(),
    sync=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_batchnorm_kernels_match_the_numpy_layer(n, c, h, train, relu, sync, dtype, seed):
    """Forward, dx, dgamma, dbeta and the running statistics, through the four kernels.

    The kernels sum in float64 with a per-channel shift, NumPy in the array's dtype around
    the mean: they agree to the rounding bounds of ``_batchnorm_error_bounds``.
    """
    assume(not train or n * h * h >= 2)  # training needs two values per channel
    rng = np.random.default_rng(seed)
    # A mean far from 0 (x ~ 5 + 2 N(0, 1)) tests the shifted sums of the statistics.
    x = (rng.standard_normal((n, c, h, h)) * 2 + 5).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    results = []
    for route in (False, True):  # the NumPy layer, then the same layer through the kernels
        layer = accelerate(BatchNorm2d(c, relu=relu, dtype=dtype))
        layer.params["weight"].data[:] = gamma
        layer.params["bias"].data[:] = beta
        layer.buffers["running_var"][:] = 1.5
        layer.train(train)
        if sync:  # a one-rank "allreduce": the synchronised path's arithmetic, alone
            use_sync_batchnorm(layer, lambda a: a.copy())
        with emulate(route_numpy=route):
            results.append(_batchnorm_run(layer, x, dout))
    (out0, dx0, g0, b0), (out1, dx1, g1, b1) = results
    # 4x the first-order rounding bounds: the constants the bounds leave out.
    bounds = _batchnorm_error_bounds(x, dout, gamma, beta, train, relu, out0)
    pairs = {"out": (out1, out0), "dx": (dx1, dx0)}
    pairs.update({name: (g1[name], g0[name]) for name in g0})
    pairs.update({name: (b1[name], b0[name]) for name in b0})
    for name, (got, want) in pairs.items():
        excess = np.abs(np.asarray(got, np.float64) - want) - 4 * bounds[name]
        assert np.all(excess <= 0), f"{name}: off by {np.max(excess):.3g} beyond its bound"
    for name in b0:
        assert b1[name].dtype == b0[name].dtype, name


@needs_cxx
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm_kernels_pass_a_gradient_check(relu):
    rng = np.random.default_rng(3)
    layer = accelerate(BatchNorm2d(3, relu=relu, dtype=np.float64))
    layer.params["weight"].data[:] = rng.standard_normal(3)
    layer.params["bias"].data[:] = rng.standard_normal(3)
    x = rng.standard_normal((2, 3, 4, 5)) * 2 + 1
    with emulate(route_numpy=True):
        errors = check_layer(layer, x, seed=3)
    assert max(errors.values()) < 1e-6, errors


@needs_cxx
@pytest.mark.parametrize("batchnorm", [True, False])
def test_a_unet_training_step_through_every_kernel_matches_numpy(batchnorm):
    """Loss, every gradient and the updated weights of one step, emulated kernels vs NumPy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16))
    target = rng.integers(0, 3, (2, 16, 16))
    results = []
    for route in (False, True):
        net = UNet(3, 3, base_channels=4, depth=2, batchnorm=batchnorm, dtype=np.float64, seed=1)
        opt = accelerate(Adam(net.parameters(), lr=1e-2))
        loss_fn = accelerate(SoftmaxCrossEntropy(class_weights=[1.0, 2.0, 0.5]))
        # fast_paths(cpu=False): the convolutions too go through im2col
        with emulate(route_numpy=route), fast_paths(cpu=False):
            loss = loss_fn.forward(net.forward(x, train=True), target)
            net.backward(loss_fn.backward())
            grads = [p.grad.copy() for p in net.parameters()]
            opt.step()
        results.append((float(loss), grads, [p.data.copy() for p in net.parameters()]))
    (l0, g0, w0), (l1, g1, w1) = results
    assert abs(l1 - l0) < 1e-12 * abs(l0)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def test_a_cupy_launch_compiles_once_per_dtype_and_passes_c_typed_arguments(monkeypatch):
    """The path only a GPU takes, run against a stand-in for CuPy's RawKernel."""
    log = []

    class RawKernel:
        def __init__(self, code, name):
            log.append(("compile", name, code.splitlines()[0]))

        def __call__(self, grid, block, args):
            log.append(("launch", grid, block, [type(a).__name__ for a in args]))

    class Flags:
        c_contiguous = True

    class FakeArray:  # looks like a CuPy array to get_array_module
        __module__ = "cupy"

        def __init__(self, dtype):
            self.dtype, self.flags = np.dtype(dtype), Flags()

    fake_cupy = type(sys)("cupy")
    fake_cupy.RawKernel = RawKernel
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    kernel = cuda.Kernel(
        'extern "C" __global__ void scale(const T* x, T* y, long long n, T a, int flag) {}'
    )
    for dtype in (np.float32, np.float32, np.float64):
        kernel(1000, dtype, FakeArray(dtype), FakeArray(dtype), 1000, 2.0, True)
    with pytest.raises(TypeError, match="y must be a C-contiguous float64"):
        kernel(10, np.float64, FakeArray(np.float64), FakeArray(np.float32), 10, 1.0, 0)
    assert [entry[0] for entry in log] == ["compile", "launch", "launch", "compile", "launch"]
    assert log[0][2] == "typedef float T;" and log[3][2] == "typedef double T;"
    assert log[1][1:] == ((4,), (256,), ["FakeArray", "FakeArray", "int64", "float32", "int32"])
    assert log[4][3][3] == "float64"
