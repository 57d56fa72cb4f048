"""The optimiser kernels (``SGD_UPDATE``, ``ADAM_UPDATE`` in minunet/accel/cuda/optim.py)
against the NumPy optimisers they replace.

Without a GPU: each optimiser runs twice on the same parameters and gradients, once as
the reference NumPy code and once as its accelerated class (``KernelSGD``, ...) down its
kernel branch, with the kernels executed on NumPy arrays by the
CPU emulator (``minunet.accel.cuda.emulator``). ``kernel_path`` routes NumPy arrays down the
kernel branches as CuPy arrays go (``emulate(route_numpy=True)``), and counts the
launches so that a test cannot pass by quietly running the NumPy code twice. On CuPy (the ``cp_kernels``
fixture: a real GPU, marked ``gpu`` and skipped elsewhere, and the strict CuPy stand-in):
the same comparison between a CuPy optimiser and a NumPy one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from minunet.accel import accelerate
from minunet.accel.cuda import kernel as cuda
from minunet.accel.cuda.emulator import CXX, emulate
from minunet.core.backend import get_backend, to_device, to_numpy
from minunet.nn.base import Parameter
from minunet.nn.optim import SGD, Adam, AdamW
from minunet.nn.optimizer_base import Optimizer

needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")

# A conv weight, a bias, a single number and a larger block: 108 and 210 elements are more
# than the emulator's 96 threads, so their grid-stride loops take several turns.
SHAPES = [(4, 3, 3, 3), (5,), (1,), (2, 5, 7, 3)]
STEPS = 4

# The same operations in the same order round alike, so the results agree to the last bit
# on x86-64; the tolerance leaves room for a compiler that fuses a * b + c into one
# multiply-add (the GPU's NVRTC, or g++ on ARM). atol covers values that cancel to ~0.
TOL = {np.float64: dict(rtol=1e-13, atol=1e-15), np.float32: dict(rtol=1e-6, atol=1e-7)}
# On the GPU every step can fuse differently, and four steps compound it a little.
GPU_TOL = {np.float64: dict(rtol=1e-12, atol=1e-14), np.float32: dict(rtol=1e-5, atol=1e-6)}

SGD_CASES = {
    f"sgd-mu{mu}-{'nesterov' if nesterov else 'plain'}-wd{wd}": (
        lambda ps, mu=mu, wd=wd, nesterov=nesterov: SGD(ps, 0.1, mu, wd, nesterov)
    )
    for mu in (0.0, 0.9)
    for nesterov in (False, True)
    for wd in (0.0, 1e-2)
}
ADAM_CASES = {
    "adam": lambda ps: Adam(ps, 1e-2),
    "adam-wd1e-2": lambda ps: Adam(ps, 1e-2, weight_decay=1e-2),
    "adamw-wd0": lambda ps: AdamW(ps, 1e-2, weight_decay=0.0),
    "adamw-wd1e-1": lambda ps: AdamW(ps, 1e-2, weight_decay=0.1),
}
CASES = {**SGD_CASES, **ADAM_CASES}


def train(make_optimizer: Any, dtype: Any, xp: ModuleType = np, fast: bool = False) -> Optimizer:
    """STEPS optimiser steps on random parameters of SHAPES, with random gradients; with
    ``fast`` the optimiser is the accelerated one (``minunet.accel.accelerate``).

    The random numbers are drawn on the host from a fixed seed, so every call sees the
    same parameters and the same gradients whatever the backend.
    """
    rng = np.random.default_rng(0)
    params = [Parameter(to_device(rng.standard_normal(s).astype(dtype), xp)) for s in SHAPES]
    opt = make_optimizer(params)
    if fast:
        accelerate(opt)
    for _ in range(STEPS):
        for p in params:
            p.grad[...] = to_device(rng.standard_normal(p.shape).astype(dtype), xp)
        opt.step()
    return opt


def assert_same_optimizer(got: Optimizer, want: Optimizer, tol: dict[str, float]) -> None:
    """Equal parameters and equal state (momentum, Adam's moments, the step count)."""
    for i, (p, q) in enumerate(zip(got.params, want.params, strict=True)):
        np.testing.assert_allclose(to_numpy(p.data), q.data, err_msg=f"param {i}", **tol)
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for key, value in want_state.items():
        np.testing.assert_allclose(got_state[key], value, err_msg=key, **tol)


@contextmanager
def kernel_path() -> Iterator[list[str]]:
    """Within the block, optimisers on NumPy arrays take their CuPy branch: the kernels run
    on the CPU emulator. Yields the list of kernel launches, by kernel name."""
    launches: list[str] = []
    with emulate(route_numpy=True), pytest.MonkeyPatch.context() as patch:
        run_on_cpu = cuda.emulator
        assert run_on_cpu is not None

        def counting_emulator(kernel: cuda.Kernel, *args: Any) -> None:
            launches.append(kernel.name)
            run_on_cpu(kernel, *args)

        patch.setattr(cuda, "emulator", counting_emulator)
        yield launches


@needs_cxx
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_optimizer_kernels_equal_the_numpy_optimizers(case, dtype):
    want = train(CASES[case], dtype)
    with kernel_path() as launches:
        got = train(CASES[case], dtype, fast=True)
    # One launch per parameter per step, and nothing else.
    kernel = "sgd_update" if case in SGD_CASES else "adam_update"
    assert launches == [kernel] * (STEPS * len(SHAPES))
    assert_same_optimizer(got, want, TOL[dtype])


@needs_cxx
def test_sgd_without_momentum_keeps_no_buffer():
    with kernel_path() as launches:
        opt = train(CASES["sgd-mu0.0-plain-wd0.0"], np.float64, fast=True)
    assert launches  # the kernel path ran
    assert opt.state == {}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_cupy_optimizers_equal_the_numpy_optimizers(cp_kernels, case, dtype):
    if not cuda.ENABLED:
        pytest.skip("MINUNET_CUDA_KERNELS=0: the kernels are switched off")
    want = train(CASES[case], dtype)
    got = train(CASES[case], dtype, get_backend("cupy"), fast=True)  # cp_kernels installed it
    assert_same_optimizer(got, want, GPU_TOL[dtype])
