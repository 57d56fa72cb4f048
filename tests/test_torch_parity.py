"""Each layer against PyTorch: same forward, same gradients, in float64.

PyTorch is a test reference only (never a dependency of minunet). CI installs the CPU
wheel so these run there; on a machine without torch they skip with the reason shown.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minunet.nn import BatchNorm2d, Concat, Conv2d, ConvTranspose2d, Dropout, MaxPool2d, ReLU
from minunet.nn.losses import SoftmaxCrossEntropy

torch = pytest.importorskip("torch", reason="PyTorch (the reference) is not installed")
F = torch.nn.functional
seeds = st.integers(0, 2**31)
RTOL, ATOL = 1e-10, 1e-12


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def close(ours, theirs):
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=RTOL, atol=ATOL)


@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    p=st.integers(0, 2),
    d=st.integers(1, 2),
    extra=st.integers(0, 6),
    seed=seeds,
)
def test_conv2d_matches_torch(n, cin, cout, k, s, p, d, extra, seed):
    rng = np.random.default_rng(seed)
    size = max(1, d * (k - 1) + 1 - 2 * p) + extra
    layer = Conv2d(cin, cout, k, s, p, dilation=d, dtype=np.float64, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, size, size + 2))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)

    xt, wt, bt = (
        t(x, True),
        t(layer.params["weight"].data, True),
        t(layer.params["bias"].data, True),
    )
    ot = F.conv2d(xt, wt, bt, stride=s, padding=p, dilation=d)
    ot.backward(t(dout))
    close(out, ot)
    close(dx, xt.grad)
    close(layer.params["weight"].grad, wt.grad)
    close(layer.params["bias"].grad, bt.grad)


@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 4),
    cout=st.integers(1, 4),
    k=st.integers(1, 4),
    s=st.integers(1, 3),
    p=st.integers(0, 2),
    op=st.integers(0, 2),
    d=st.integers(1, 2),
    h=st.integers(1, 5),
    seed=seeds,
)
def test_conv_transpose2d_matches_torch(n, cin, cout, k, s, p, op, d, h, seed):
    assume(op < s and (h - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1)
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(cin, cout, k, s, p, op, dilation=d, dtype=np.float64, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(cout)
    x = rng.standard_normal((n, cin, h, h + 1))
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)

    xt, wt, bt = (
        t(x, True),
        t(layer.params["weight"].data, True),
        t(layer.params["bias"].data, True),
    )
    ot = F.conv_transpose2d(xt, wt, bt, stride=s, padding=p, output_padding=op, dilation=d)
    ot.backward(t(dout))
    close(out, ot)
    close(dx, xt.grad)
    close(layer.params["weight"].grad, wt.grad)
    close(layer.params["bias"].grad, bt.grad)


@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    k=st.integers(1, 4),
    s=st.integers(1, 4),
    h=st.integers(0, 7),
    seed=seeds,
)
def test_maxpool2d_matches_torch(n, c, k, s, h, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c, k + h, k + h + 3)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64)  # no ties
    layer = MaxPool2d(k, s)
    out = layer.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    xt = t(x, True)
    ot = F.max_pool2d(xt, k, s)
    ot.backward(t(dout))
    close(out, ot)
    close(dx, xt.grad)


@given(
    n=st.integers(1, 4),
    c=st.integers(1, 4),
    h=st.integers(1, 6),
    steps=st.integers(1, 3),
    momentum=st.sampled_from([0.1, 0.01, 0.5]),
    seed=seeds,
)
def test_batchnorm2d_matches_torch(n, c, h, steps, momentum, seed):
    """Training steps (outputs, gradients, running statistics), then one eval forward."""
    assume(n * h * h > 1)
    rng = np.random.default_rng(seed)
    layer = BatchNorm2d(c, momentum=momentum, dtype=np.float64)
    ref = torch.nn.BatchNorm2d(c, momentum=momentum).double()
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    layer.params["weight"].data[:], layer.params["bias"].data[:] = gamma, beta
    with torch.no_grad():
        ref.weight[:], ref.bias[:] = t(gamma), t(beta)
    for _ in range(steps):
        x = rng.standard_normal((n, c, h, h)) * 3 + 1
        layer.zero_grad()
        ref.zero_grad()
        out = layer.forward(x)
        dout = rng.standard_normal(out.shape)
        dx = layer.backward(dout)
        xt = t(x, True)
        ot = ref(xt)
        ot.backward(t(dout))
        close(out, ot)
        close(dx, xt.grad)
        close(layer.params["weight"].grad, ref.weight.grad)
        close(layer.params["bias"].grad, ref.bias.grad)
    close(layer.buffers["running_mean"], ref.running_mean)
    close(layer.buffers["running_var"], ref.running_var)
    assert int(layer.buffers["num_batches_tracked"]) == int(ref.num_batches_tracked)
    layer.eval()
    ref.eval()
    x = rng.standard_normal((n, c, h, h))
    close(layer.forward(x), ref(t(x)))


@given(
    n=st.integers(1, 3),
    k=st.integers(2, 5),
    h=st.integers(1, 5),
    weighted=st.booleans(),
    ignore=st.booleans(),
    seed=seeds,
)
def test_softmax_cross_entropy_matches_torch(n, k, h, weighted, ignore, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k, h, h + 1)) * 4
    target = rng.integers(0, k, (n, h, h + 1))
    if ignore:
        target[rng.random(target.shape) < 0.3] = 255
        target.flat[0] = 1
    cw = rng.uniform(0.2, 3.0, k) if weighted else None
    loss = SoftmaxCrossEntropy(cw, ignore_index=255 if ignore else None)
    value = loss.forward(logits, target)
    dlogits = loss.backward()
    lt = t(logits, True)
    ref = F.cross_entropy(
        lt,
        torch.tensor(target),
        weight=None if cw is None else t(cw),
        ignore_index=255 if ignore else -100,
    )
    ref.backward()
    close(value, ref)
    close(dlogits, lt.grad)


def test_relu_and_concat_match_torch():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 4))
    close(ReLU().forward(x), F.relu(t(x)))
    skip, up = rng.standard_normal((2, 2, 9, 8)), rng.standard_normal((2, 3, 5, 4))
    # torchvision's / the paper's centre crop: offsets (9-5)//2 and (8-4)//2
    expected = torch.cat([t(skip)[:, :, 2:7, 2:6], t(up)], dim=1)
    close(Concat().forward(skip, up), expected)


def test_dropout_eval_is_identity_and_train_scales():
    x = np.ones((4, 8, 16, 16))
    layer = Dropout(0.25, seed=3)
    out = layer.forward(x)
    assert set(np.unique(out)) == {0.0, 1 / 0.75}
    assert abs((out == 0).mean() - 0.25) < 0.03
    layer.eval()
    assert layer.forward(x) is x
