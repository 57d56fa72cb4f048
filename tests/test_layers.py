"""Layer forwards against loop references, shape formulas, modes and input errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minunet.nn import BatchNorm2d, Concat, Conv2d, ConvTranspose2d, MaxPool2d


def conv_loops(x, w, b, s, p):
    """Cross-correlation, one output pixel at a time (the definition)."""
    n, c, h, wd = x.shape
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            patch = xp[:, :, oh * s : oh * s + k, ow * s : ow * s + k]  # (N, C, k, k)
            out[:, :, oh, ow] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return out


def conv_transpose_loops(x, w, b, s, p, op):
    """Scatter every input pixel times the kernel into the output (the definition)."""
    n, c, h, wd = x.shape
    k, cout = w.shape[2], w.shape[1]
    ho, wo = (h - 1) * s - 2 * p + k + op, (wd - 1) * s - 2 * p + k + op
    big = np.zeros((n, cout, ho + 2 * p + k, wo + 2 * p + k))
    for i in range(h):
        for j in range(wd):
            big[:, :, i * s : i * s + k, j * s : j * s + k] += np.einsum(
                "nc,cokl->nokl", x[:, :, i, j], w
            )
    return big[:, :, p : p + ho, p : p + wo] + b[:, None, None]


@given(k=st.integers(1, 3), s=st.integers(1, 2), p=st.integers(0, 1), seed=st.integers(0, 99))
def test_conv2d_forward_matches_loops(k, s, p, seed):
    rng = np.random.default_rng(seed)
    layer = Conv2d(2, 3, k, s, p, dtype=np.float64, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(3)
    x = rng.standard_normal((2, 2, 6, 5))
    ref = conv_loops(x, layer.params["weight"].data, layer.params["bias"].data, s, p)
    np.testing.assert_allclose(layer.forward(x), ref, rtol=1e-12, atol=1e-12)


@given(
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    p=st.integers(0, 1),
    op=st.integers(0, 2),
    seed=st.integers(0, 99),
)
def test_conv_transpose2d_forward_matches_loops(k, s, p, op, seed):
    if op >= s:
        return
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(2, 3, k, s, p, op, dtype=np.float64, rng=rng)
    layer.params["bias"].data[:] = rng.standard_normal(3)
    x = rng.standard_normal((2, 2, 3, 4))
    w, b = layer.params["weight"].data, layer.params["bias"].data
    np.testing.assert_allclose(
        layer.forward(x), conv_transpose_loops(x, w, b, s, p, op), rtol=1e-12, atol=1e-12
    )


def test_maxpool_forward_matches_loops():
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 9))
    out = MaxPool2d(3, 2).forward(x)
    ref = np.zeros((2, 3, 3, 4))
    for i in range(3):
        for j in range(4):
            ref[:, :, i, j] = x[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(2, 3))
    np.testing.assert_array_equal(out, ref)


def test_output_shapes():
    assert Conv2d(1, 64, 3).forward(np.zeros((1, 1, 572, 572), np.float32)).shape == (
        1,
        64,
        570,
        570,
    )
    assert MaxPool2d(2).forward(np.zeros((1, 2, 568, 568))).shape == (1, 2, 284, 284)
    up = ConvTranspose2d(8, 4, 2, stride=2)
    assert up.forward(np.zeros((2, 8, 28, 28), np.float32)).shape == (2, 4, 56, 56)
    assert Concat().forward(np.zeros((1, 2, 64, 64)), np.zeros((1, 2, 56, 56))).shape == (
        1,
        4,
        56,
        56,
    )


def test_batchnorm_train_uses_batch_statistics_and_eval_uses_running_ones():
    rng = np.random.default_rng(0)
    bn = BatchNorm2d(3, dtype=np.float64)
    x = rng.standard_normal((8, 3, 4, 4)) * 5 + 2
    out = bn.forward(x)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    for _ in range(200):  # running statistics converge to the data's statistics
        bn.forward(x)
    np.testing.assert_allclose(bn.buffers["running_mean"], x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(bn.buffers["running_var"], x.var(axis=(0, 2, 3), ddof=1), rtol=1e-6)
    bn.eval()
    rm, rv = bn.buffers["running_mean"], bn.buffers["running_var"]
    expected = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + bn.eps)
    np.testing.assert_allclose(bn.forward(x), expected, rtol=1e-12)
    # eval mode does not touch the running statistics
    before = bn.buffers["running_mean"].copy()
    bn.forward(x * 10)
    np.testing.assert_array_equal(bn.buffers["running_mean"], before)


@pytest.mark.parametrize(
    "layer,x,match",
    [
        (Conv2d(3, 4, 3), np.zeros((3, 8, 8), np.float32), r"4-D input of shape \(N, 3, H, W\)"),
        (Conv2d(3, 4, 3), np.zeros((1, 2, 8, 8), np.float32), r"3 input channels"),
        (Conv2d(3, 4, 3), np.zeros((1, 3, 8, 8), np.float64), r"dtype float32 \(N, 3, H, W\)"),
        (ConvTranspose2d(3, 4, 2, 2), np.zeros((1, 5, 8, 8), np.float32), r"\(N, 3, H, W\)"),
        (BatchNorm2d(3), np.zeros((1, 4, 8, 8), np.float32), r"\(N, 3, H, W\)"),
        (MaxPool2d(2), np.zeros((8, 8)), r"4-D input \(N, C, H, W\)"),
        (Conv2d(3, 4, 5), np.zeros((1, 3, 4, 4), np.float32), r"smaller than the kernel"),
    ],
)
def test_bad_input_raises_one_clear_value_error(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer.forward(x)


def test_bad_layer_arguments():
    # One shared check, each layer named in its own message.
    with pytest.raises(ValueError, match="^Conv2d needs positive channels.*in=0"):
        Conv2d(0, 4, 3)
    with pytest.raises(ValueError, match="^ConvTranspose2d needs positive.*p=-1"):
        ConvTranspose2d(2, 2, 2, stride=2, padding=-1)
    with pytest.raises(ValueError, match="output_padding"):
        ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
