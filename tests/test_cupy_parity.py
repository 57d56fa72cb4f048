"""The same layers on CuPy and NumPy give the same numbers.

Each test takes the ``cp`` fixture (tests/conftest.py): real CuPy on a GPU (marked
``gpu``, skipped elsewhere), and the strict stand-in (tests/cupy_standin.py) with the
hand-written kernels emulated and switched off, so the CuPy code paths run on every CI
machine. float64 must agree to rounding (1e-10); float32 loosely (1e-4 relative), since
the GPU sums in a different order. Every forward and every gradient is compared, for the
reference layer on CuPy (its array code) and for its accelerated class (the CUDA kernels,
where the variant has them on), against the reference on NumPy; then a whole U-Net
training step and a short training run.
"""

import numpy as np
import pytest

from minunet.accel import accelerate
from minunet.core.backend import to_numpy
from minunet.model import UNet
from minunet.nn import BatchNorm2d, Concat, Conv2d, ConvTranspose2d, Dropout, MaxPool2d, ReLU
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.sync_batchnorm import use_sync_batchnorm

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


def one_rank_sync(layer):
    """Synchronised BatchNorm's code path with a one-rank "allreduce" (a copy)."""
    return use_sync_batchnorm(layer, lambda a: a.copy())


def compare(cp, make_layer, inputs, dtype, fast):
    """Run forward/backward of two copies of a layer, the reference on NumPy and (with
    ``fast``, accelerated) on ``cp``; compare everything."""
    rng = np.random.default_rng(0)
    host, dev = make_layer(), make_layer()
    if fast:
        accelerate(dev)
    dev.load_state_dict(host.state_dict())
    dev.to(cp)
    xs = [x.astype(dtype) for x in inputs]
    out_h = host.forward(*xs)
    out_d = dev.forward(*[cp.asarray(x) for x in xs])
    np.testing.assert_allclose(to_numpy(out_d), out_h, **TOL[dtype])
    dout = rng.standard_normal(out_h.shape).astype(dtype)
    g_h = host.backward(dout)
    g_d = dev.backward(cp.asarray(dout))
    g_h, g_d = (g_h, g_d) if isinstance(g_h, tuple) else ((g_h,), (g_d,))
    for a, b in zip(g_h, g_d, strict=True):
        np.testing.assert_allclose(to_numpy(b), a, **TOL[dtype])
    for (name, p), (_, q) in zip(host.named_parameters(), dev.named_parameters(), strict=True):
        np.testing.assert_allclose(to_numpy(q.grad), p.grad, err_msg=name, **TOL[dtype])


@pytest.mark.parametrize("fast", [False, True], ids=["reference", "accelerated"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "name,make,shapes",
    [
        (
            "conv3x3",
            lambda d: Conv2d(4, 6, 3, padding=1, dtype=d, rng=np.random.default_rng(1)),
            [(2, 4, 9, 8)],
        ),
        (
            "conv_s2",
            lambda d: Conv2d(3, 5, 3, 2, 1, dtype=d, rng=np.random.default_rng(1)),
            [(2, 3, 9, 8)],
        ),
        (
            "conv1x1",
            lambda d: Conv2d(4, 3, 1, dtype=d, rng=np.random.default_rng(1)),
            [(2, 4, 5, 5)],
        ),
        (
            "upconv",
            lambda d: ConvTranspose2d(6, 3, 2, 2, dtype=d, rng=np.random.default_rng(1)),
            [(2, 6, 5, 4)],
        ),
        (
            "upconv3",
            lambda d: ConvTranspose2d(3, 2, 3, 2, 1, 1, dtype=d, rng=np.random.default_rng(1)),
            [(2, 3, 5, 4)],
        ),
        ("pool", lambda d: MaxPool2d(2), [(2, 3, 8, 6)]),
        ("pool3", lambda d: MaxPool2d(3, 2), [(2, 3, 9, 7)]),
        ("relu", lambda d: ReLU(), [(2, 3, 4, 4)]),
        ("bn", lambda d: BatchNorm2d(3, dtype=d), [(4, 3, 5, 5)]),
        ("bn_relu", lambda d: BatchNorm2d(3, relu=True, dtype=d), [(4, 3, 5, 5)]),
        ("bn_relu_eval", lambda d: BatchNorm2d(3, relu=True, dtype=d).eval(), [(4, 3, 5, 5)]),
        ("bn_sync", lambda d: one_rank_sync(BatchNorm2d(3, relu=True, dtype=d)), [(4, 3, 5, 5)]),
        ("concat", lambda d: Concat(), [(2, 3, 8, 8), (2, 2, 6, 6)]),
        ("dropout_eval", lambda d: Dropout(0.5).eval(), [(2, 3, 4, 4)]),
    ],
)
def test_layer_parity(cp, name, make, shapes, dtype, fast):
    rng = np.random.default_rng(2)
    inputs = [rng.permutation(int(np.prod(s))).reshape(s) / np.prod(s) for s in shapes]
    compare(cp, lambda: make(dtype), inputs, dtype, fast)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_parity(cp, dtype):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 3, 8, 8)).astype(dtype)
    target = rng.integers(0, 3, (2, 8, 8))
    target[0, 0] = 255
    a, b = SoftmaxCrossEntropy(ignore_index=255), accelerate(SoftmaxCrossEntropy(ignore_index=255))
    la = a.forward(logits, target)
    lb = b.forward(cp.asarray(logits), cp.asarray(target))
    np.testing.assert_allclose(float(lb), float(la), **TOL[dtype])
    np.testing.assert_allclose(to_numpy(b.backward()), a.backward(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_unet_step_parity(cp, dtype):
    rng = np.random.default_rng(4)
    host = UNet(3, 3, base_channels=4, depth=2, dtype=dtype, seed=5)
    dev = UNet(3, 3, base_channels=4, depth=2, dtype=dtype, seed=5).to(cp)
    x = rng.standard_normal((2, 3, 16, 16)).astype(dtype)
    y = rng.integers(0, 3, (2, 16, 16))
    lh, ld = SoftmaxCrossEntropy(), accelerate(SoftmaxCrossEntropy())
    lh.forward(host.forward(x), y)
    ld.forward(dev.forward(cp.asarray(x)), cp.asarray(y))
    dx_h = host.backward(lh.backward())
    dx_d = dev.backward(ld.backward())
    tol = TOL[dtype] if dtype == np.float64 else dict(rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(to_numpy(dx_d), dx_h, **tol)
    for (name, p), (_, q) in zip(host.named_parameters(), dev.named_parameters(), strict=True):
        np.testing.assert_allclose(to_numpy(q.grad), p.grad, err_msg=name, **tol)


def test_training_runs_on_cupy(cp, tmp_path):
    from minunet.data.sources import DataOptions
    from minunet.train import TrainConfig, train

    cfg = TrainConfig(
        data=DataOptions(image_size=32, train_size=16, val_size=8),
        epochs=1,
        batch_size=4,
        base_channels=4,
        depth=2,
        backend="cupy",
        out=str(tmp_path),
        progress=False,
    )
    metrics = train(cfg, log=lambda *_: None)
    assert 0.0 <= metrics["miou"] <= 1.0
