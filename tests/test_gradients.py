"""Every layer's backward against central differences, in float64, on drawn shapes.

Each test draws the batch, channels, spatial size, kernel, stride and padding, builds the
layer in float64 and asks ``minunet.core.gradcheck`` for the worst relative error of the input
and parameter gradients. Central differences in float64 are good to ~1e-9 here, so
1e-6 is tight: a wrong term in a backward formula shows up as O(1).
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minunet.core.gradcheck import check_layer, fd_rounding, max_relative_error, numerical_gradient
from minunet.nn import (
    BatchNorm2d,
    Concat,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    MaxPool2d,
    ReLU,
)
from minunet.nn.losses import SoftmaxCrossEntropy

TOL = 1e-6
seeds = st.integers(0, 2**31)


def assert_gradients_ok(errors: dict[str, float]) -> None:
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"gradient check failed (max relative error > {TOL}): {bad}"


@given(
    n=st.integers(1, 2),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    k=st.integers(1, 3),
    s=st.integers(1, 2),
    p=st.integers(0, 2),
    d=st.integers(1, 2),
    extra=st.integers(0, 3),
    bias=st.booleans(),
    seed=seeds,
)
def test_conv2d_gradients(n, cin, cout, k, s, p, d, extra, bias, seed):
    rng = np.random.default_rng(seed)
    size = max(1, d * (k - 1) + 1 - 2 * p) + extra
    layer = Conv2d(cin, cout, k, s, p, bias=bias, dilation=d, dtype=np.float64, rng=rng)
    if bias:
        layer.params["bias"].data[:] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, size, size + 1))
    assert_gradients_ok(check_layer(layer, x, seed=seed))


@given(
    n=st.integers(1, 2),
    cin=st.integers(1, 3),
    cout=st.integers(1, 3),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    op=st.integers(0, 2),
    h=st.integers(1, 4),
    bias=st.booleans(),
    seed=seeds,
)
def test_conv_transpose2d_gradients(n, cin, cout, k, s, p, op, h, bias, seed):
    assume(op < s and (h - 1) * s - 2 * p + k + op >= 1)
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(cin, cout, k, s, p, op, bias=bias, dtype=np.float64, rng=rng)
    x = rng.standard_normal((n, cin, h, h + 1))
    assert_gradients_ok(check_layer(layer, x, seed=seed))


@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    extra=st.integers(0, 4),
    seed=seeds,
)
def test_maxpool2d_gradients(n, c, k, s, extra, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, k + extra, k + extra + 1)
    # A permutation of well-separated values: no ties, and no eps-step changes a winner.
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64) * 0.1
    assert_gradients_ok(check_layer(MaxPool2d(k, s), x, seed=seed))


@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 5), seed=seeds)
def test_relu_gradients(n, c, h, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, h))
    x += np.sign(x) * 1e-3  # keep away from the kink at 0, where eps-steps cross it
    assert_gradients_ok(check_layer(ReLU(), x, seed=seed))


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(1, 4),
    train=st.booleans(),
    relu=st.booleans(),
    seed=seeds,
)
def test_batchnorm2d_gradients(n, c, h, train, relu, seed):
    # With two values per channel the training output is +-1 whatever x is: the true
    # gradient is ~eps-sized and the check would measure rounding only.
    assume(not train or n * h * h >= 4)
    rng = np.random.default_rng(seed)
    layer = BatchNorm2d(c, relu=relu, dtype=np.float64)
    layer.params["weight"].data[:] = rng.standard_normal(c)
    layer.params["bias"].data[:] = rng.standard_normal(c)
    layer.buffers["running_mean"][:] = rng.standard_normal(c)
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2.0, c)
    layer.train(train)
    x = rng.standard_normal((n, c, h, h)) * 2 + 1
    if relu:  # keep the values before the ReLU away from its kink, where eps-steps cross it
        layer.relu = False
        assume(np.abs(layer.forward(x)).min() > 1e-3)
        layer.relu = True
    assert_gradients_ok(check_layer(layer, x, seed=seed))


@given(
    n=st.integers(1, 2),
    cs=st.integers(1, 3),
    cu=st.integers(1, 3),
    h=st.integers(1, 4),
    crop=st.integers(0, 4),
    seed=seeds,
)
def test_concat_gradients(n, cs, cu, h, crop, seed):
    rng = np.random.default_rng(seed)
    skip = rng.standard_normal((n, cs, h + crop, h + crop + 1))
    up = rng.standard_normal((n, cu, h, h + 1))
    assert_gradients_ok(check_layer(Concat(), skip, up, seed=seed))


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 5),
    p=st.sampled_from([0.1, 0.5, 0.9]),
    seed=seeds,
)
def test_dropout_gradients(n, c, h, p, seed):
    """Dropout draws a new mask per call, so check backward against the mask it used: the
    layer is linear, out = x * m, so the exact gradient is dout * m = out / x * dout."""
    rng = np.random.default_rng(seed)
    layer = Dropout(p, seed=seed)
    x = rng.uniform(0.5, 1.5, (n, c, h, h))
    out = layer.forward(x)
    mask = out / x
    assert set(np.unique(np.round(mask, 12))) <= {0.0, round(1 / (1 - p), 12)}
    dout = rng.standard_normal(x.shape)
    np.testing.assert_allclose(layer.backward(dout), dout * mask, rtol=1e-12)


@given(
    n=st.integers(1, 2),
    k=st.integers(2, 4),
    h=st.integers(1, 4),
    weighted=st.booleans(),
    pixel=st.booleans(),
    ignore=st.booleans(),
    seed=seeds,
)
def test_softmax_cross_entropy_gradients(n, k, h, weighted, pixel, ignore, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k, h, h + 1)) * 3
    target = rng.integers(0, k, (n, h, h + 1))
    if ignore:
        target[rng.random(target.shape) < 0.3] = 255
        target.flat[0] = 0  # keep at least one pixel counted
    cw = rng.uniform(0.2, 3.0, k) if weighted else None
    pw = rng.uniform(0.5, 5.0, target.shape) if pixel else None
    loss = SoftmaxCrossEntropy(cw, ignore_index=255 if ignore else None)
    loss.forward(logits, target, pw)
    analytic = loss.backward()
    numeric = numerical_gradient(lambda: loss.forward(logits, target, pw), logits)
    # L is a weighted mean of terms logsumexp - logit, each below 2 max|logit| + log k: a
    # saturated softmax has a tiny gradient, next to which that rounding is not small.
    noise = fd_rounding(2 * np.abs(logits).max() + np.log(k))
    assert max_relative_error(analytic, numeric, noise) < TOL


def test_gradcheck_catches_a_wrong_backward():
    """The checker itself must fail loudly when a backward is off by a little."""

    class Broken(ReLU):
        def backward(self, dout):
            return super().backward(dout) * 1.001

    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)) + 0.5
    errors = check_layer(Broken(), x)
    assert errors["input0"] > 1e-4


@pytest.mark.parametrize("layer", [ReLU(), MaxPool2d(2), Concat()])
def test_layers_without_parameters_have_none(layer):
    assert layer.parameters() == []
