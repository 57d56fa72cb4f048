"""The table of fast implementations, ``accelerate``, the switches, and synchronised BatchNorm.

The fast implementations' numbers are checked against the references elsewhere
(tests/test_fast_paths.py, tests/test_cuda_*.py); here: that every fast path is in the
one table, that ``accelerate`` hands out exactly what the table says, and that each
switch selects the path it claims.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minunet.accel import IMPLEMENTATIONS, accelerate, fast_paths, reference_class
from minunet.accel.batchnorm import ThreadedBatchNorm2d
from minunet.accel.conv import BlockedConvCache, FastConv2d
from minunet.accel.cuda import KERNELS
from minunet.accel.cuda import kernel as cuda
from minunet.accel.cuda.batchnorm import KernelBatchNorm2d, KernelSyncBatchNorm2d
from minunet.accel.cuda.emulator import CXX, emulate
from minunet.accel.cuda.optim import KernelAdam, KernelAdamW, KernelSGD
from minunet.accel.cuda.pool import KernelMaxPool2d
from minunet.accel.optim import ThreadedOptimizer
from minunet.accel.pool import ThreadedMaxPool2d
from minunet.model import UNet
from minunet.nn import BatchNorm2d, Conv2d, MaxPool2d, ReLU
from minunet.nn.conv import Im2colCache
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import make_optimizer
from minunet.nn.sync_batchnorm import SyncBatchNorm2d, use_sync_batchnorm

REPO = Path(__file__).resolve().parent.parent
FAST_MODULES = [
    "minunet.accel.conv",
    "minunet.accel.batchnorm",
    "minunet.accel.pool",
    "minunet.accel.optim",
    "minunet.accel.cuda.pool",
    "minunet.accel.cuda.batchnorm",
    "minunet.accel.cuda.loss",
    "minunet.accel.cuda.optim",
]
KERNEL_MODULES = [
    f"minunet.accel.cuda.{m}" for m in ("im2col", "pool", "batchnorm", "loss", "optim")
]
needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")


def test_every_fast_class_is_in_the_table_against_the_class_it_replaces():
    # every class defined in a fast module that derives from a reference class (minunet.nn)
    found = {
        cls
        for name in FAST_MODULES
        for _, cls in inspect.getmembers(importlib.import_module(name), inspect.isclass)
        if cls.__module__ == name
        and any(c.__module__.startswith("minunet.nn.") for c in cls.__mro__[1:])
    }
    # ... is in the table, or is one part of a class in the table (a device's half of it:
    # FastBatchNorm2d is KernelBatchNorm2d for CuPy and ThreadedBatchNorm2d for NumPy)
    listed = set(IMPLEMENTATIONS.values())
    parts = {c for fast in listed for c in fast.__mro__[1:] if c in found} - listed
    assert len(listed) == 9 and listed <= found and found == listed | parts
    assert parts == {
        KernelBatchNorm2d, ThreadedBatchNorm2d, KernelMaxPool2d, ThreadedMaxPool2d,
        KernelSGD, KernelAdam, KernelAdamW, ThreadedOptimizer,
    }  # fmt: skip
    for reference, fast in IMPLEMENTATIONS.items():
        assert reference.__module__.startswith("minunet.nn."), reference
        assert fast.__module__.startswith("minunet.accel."), fast
        assert issubclass(fast, reference), (fast, reference)
        assert reference_class(object.__new__(fast)) is reference


def test_every_kernel_is_listed_once_by_minunet_accel_cuda():
    defined = [
        value
        for name in KERNEL_MODULES
        for value in vars(importlib.import_module(name)).values()
        if isinstance(value, cuda.Kernel)
    ]
    assert len(KERNELS) == len(set(map(id, KERNELS))) == len(defined)
    assert {id(k) for k in defined} == {id(k) for k in KERNELS}


def test_the_kernel_list_is_complete_from_one_import():
    """No kernel waits for its layer's module to be imported somewhere else first."""
    code = "import minunet.accel.cuda as c; print(' '.join(sorted(k.name for k in c.KERNELS)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == sorted(
        "im2col col2im maxpool_forward maxpool_backward channel_sums batchnorm_statistics "
        "batchnorm_forward batchnorm_partial_sums batchnorm_gradients batchnorm_dx "
        "softmax_cross_entropy sgd_update adam_update".split()
    )


def leaves(layer):
    children = layer.children()
    return [layer] if not children else [x for c in children.values() for x in leaves(c)]


def test_a_unet_has_every_layer_accelerated():
    net = UNet(3, 3, base_channels=4, depth=2)
    kinds = set()
    for layer in leaves(net):
        reference = reference_class(layer)
        assert type(layer) is IMPLEMENTATIONS.get(reference, reference), layer
        kinds.add(reference)
    assert {Conv2d, MaxPool2d, BatchNorm2d} <= kinds


def test_minunet_accel_0_keeps_every_reference(monkeypatch):
    monkeypatch.setenv("MINUNET_ACCEL", "0")
    net = UNet(3, 3, base_channels=4, depth=2)
    assert all(type(layer).__module__.startswith("minunet.nn.") for layer in leaves(net))
    opt = accelerate(make_optimizer("adam", net.parameters(), 1e-3))
    assert type(opt).__module__ == "minunet.nn.optim"


def test_accelerate_changes_the_class_only_and_only_once():
    layer = Conv2d(8, 4, 3, padding=1)
    state = layer.state_dict()
    assert accelerate(layer) is layer and type(layer) is FastConv2d
    accelerate(layer)  # already fast: left as it is
    assert type(layer) is FastConv2d
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, state[name])

    class MyConv(Conv2d):  # a user's subclass is not ours to replace
        pass

    mine, relu = MyConv(8, 4, 3), ReLU()
    assert type(accelerate(mine)) is MyConv and type(accelerate(relu)) is ReLU
    loss = accelerate(SoftmaxCrossEntropy())
    assert type(loss) is IMPLEMENTATIONS[SoftmaxCrossEntropy]
    for name, reference in (("sgd", "SGD"), ("adam", "Adam"), ("adamw", "AdamW")):
        opt = accelerate(make_optimizer(name, layer.parameters(), 1e-3))
        assert reference_class(opt).__name__ == reference and type(opt).__name__ != reference


def test_fast_paths_cpu_switch_selects_the_blocked_convolution_or_im2col():
    layer = accelerate(Conv2d(8, 4, 3, padding=1))
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6), dtype=np.float32)
    layer.forward(x)
    assert isinstance(layer._cache, BlockedConvCache)
    with fast_paths(cpu=False):
        layer.forward(x)
        assert isinstance(layer._cache, Im2colCache)
    layer.forward(x)  # restored
    assert isinstance(layer._cache, BlockedConvCache)


@needs_cxx
def test_fast_paths_cuda_switch_selects_the_kernels_or_the_reference():
    """Under the emulator, NumPy arrays take the kernel path as CuPy ones do; the launches
    are counted, so the reference running twice cannot pass for the kernels."""
    launches = []
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    pool = accelerate(MaxPool2d(2))
    want = MaxPool2d(2).forward(x)
    # The counting emulator is undone inside the emulate block, before emulate restores
    # cuda.emulator itself (the other order would leave it installed for later tests).
    with emulate(route_numpy=True), pytest.MonkeyPatch.context() as patch:
        run_on_cpu = cuda.emulator
        patch.setattr(cuda, "emulator", lambda k, *a: (launches.append(k.name), run_on_cpu(k, *a)))
        np.testing.assert_array_equal(pool.forward(x), want)
        assert launches == ["maxpool_forward"]
        with fast_paths(cuda=False):
            np.testing.assert_array_equal(pool.forward(x), want)
        assert launches == ["maxpool_forward"]  # no launch with the kernels off
    assert cuda.emulator is None


@pytest.mark.parametrize(
    "variable, module, attribute",
    [
        ("MINUNET_FAST_CPU", "minunet.accel.cpu", "ENABLED"),
        ("MINUNET_CUDA_KERNELS", "minunet.accel.cuda.kernel", "ENABLED"),
    ],
)
def test_environment_switches(variable, module, attribute):
    code = f"import {module} as m; print(m.{attribute})"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "PYTHONPATH": str(REPO), variable: value}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert done.stdout.strip() == expected, done.stderr


def test_use_sync_batchnorm_picks_the_synchronised_class_of_each_layer():
    plain, fast = BatchNorm2d(3), accelerate(BatchNorm2d(3))
    net = UNet(3, 3, base_channels=4, depth=1)
    allreduce = lambda a: a  # noqa: E731
    use_sync_batchnorm(plain, allreduce)
    use_sync_batchnorm(fast, allreduce)
    use_sync_batchnorm(net, allreduce)
    assert type(plain) is SyncBatchNorm2d and type(fast) is KernelSyncBatchNorm2d
    batchnorms = [layer for layer in leaves(net) if isinstance(layer, BatchNorm2d)]
    assert len(batchnorms) == 6 and all(type(b) is KernelSyncBatchNorm2d for b in batchnorms)
    assert all(b.allreduce is allreduce for b in batchnorms)
    assert KernelBatchNorm2d in type(fast).__mro__  # still the kernels' forward


@pytest.mark.parametrize("fast", [False, pytest.param(True, marks=needs_cxx)])
@pytest.mark.parametrize("relu", [False, True])
def test_sync_batchnorm_normalises_with_the_global_batch(fast, relu):
    """Two ranks holding the same half-batch x: the allreduce is then 2 * (this rank's
    sums), and each rank must compute what BatchNorm2d computes on [x, x]: the same
    output and dx for its half, the running statistics of 2m values, and half the
    parameter gradients (those stay local until the optimiser averages them).

    Tolerances: the synchronised statistics come from float64 sums of x and x^2, the
    plain ones from x - mean; in float64 they agree to ~1e-14 relative. With ``fast`` the
    synchronised layer runs its kernels on the emulator (KernelSyncBatchNorm2d)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5)) * 2 + 1
    dout = rng.standard_normal(x.shape)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    layers = []
    for _ in range(2):
        layer = BatchNorm2d(3, relu=relu, dtype=np.float64)
        layer.params["weight"].data[:], layer.params["bias"].data[:] = gamma, beta
        layers.append(layer)
    sync, whole = layers
    if fast:
        accelerate(sync)
    use_sync_batchnorm(sync, lambda a: 2 * a)
    with emulate(route_numpy=fast):
        out = sync.forward(x)
        dx = sync.backward(dout)
    want_out = whole.forward(np.concatenate([x, x]))
    want_dx = whole.backward(np.concatenate([dout, dout]))
    tol = dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out, want_out[:2], **tol)
    np.testing.assert_allclose(dx, want_dx[:2], **tol)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(sync.buffers[name], whole.buffers[name], **tol)
    for name, p in sync.params.items():
        np.testing.assert_allclose(2 * p.grad, whole.params[name].grad, err_msg=name, **tol)


def test_a_deep_copy_of_an_accelerated_model_stays_accelerated():
    net = UNet(3, 3, base_channels=4, depth=1)
    assert type(copy.deepcopy(net).head) is FastConv2d
