"""The U-Net: the paper's numbers, sizes, state dicts, and an end-to-end gradient check."""

from functools import cache
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet.core.gradcheck import max_relative_error, numerical_gradient
from minunet.errors import MinunetError
from minunet.model import UNet, geometry
from minunet.model.summary import trace
from minunet.nn.losses import SoftmaxCrossEntropy


def test_paper_configuration():
    """Ronneberger et al. 2015: 23 conv layers, 572 -> 388, 31,030,658 parameters."""
    net = UNet(1, 2, base_channels=64, depth=4, padding="valid", batchnorm=False)
    rows = trace(net, 572, 572)
    assert sum(r[1] in ("Conv2d", "ConvTranspose2d") for r in rows) == 23
    assert net.output_size(572) == 388
    assert rows[-1][2] == (1, 2, 388, 388)
    assert net.num_parameters() == 31_030_658
    assert "31,030,658 parameters" in net.summary(572)


def test_paper_configuration_matches_a_real_forward_on_a_small_valid_input():
    net = UNet(1, 2, base_channels=2, depth=2, padding="valid", batchnorm=False)
    size = 44  # 44-4=40 /2=20-4=16 /2=8-4=4 -> 8-4=4 -> 8-4=4
    assert net.output_size(size) == 4
    out = net.forward(np.zeros((1, 1, size, size), np.float32))
    assert out.shape == (1, 2, 4, 4)
    assert trace(net, size, size)[-1][2] == out.shape


def test_same_padding_keeps_size_and_rejects_bad_sizes():
    net = UNet(3, 3, base_channels=4, depth=3)
    assert net.forward(np.zeros((2, 3, 16, 24), np.float32)).shape == (2, 3, 16, 24)
    with pytest.raises(MinunetError, match="multiple of 8.*nearest valid sizes: 16 or 24"):
        net.forward(np.zeros((1, 3, 20, 16), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net.forward(np.zeros((1, 1, 16, 16), np.float32))


@pytest.mark.parametrize("padding,batchnorm,size", [("same", True, 8), ("valid", False, 20)])
def test_end_to_end_gradient_check(padding, batchnorm, size):
    """The whole network's backward (through every layer and the loss) in float64."""
    net = UNet(
        2,
        3,
        base_channels=2,
        depth=1,
        padding=padding,
        batchnorm=batchnorm,
        dtype=np.float64,
        seed=1,
    )
    rng = np.random.default_rng(0)
    for p in net.parameters():  # non-trivial biases and BN affine parameters
        p.data += rng.standard_normal(p.data.shape) * 0.1
    x = rng.standard_normal((2, 2, size, size))
    out_side = net.output_size(size)
    target = rng.integers(0, 3, (2, out_side, out_side))
    loss = SoftmaxCrossEntropy()

    def f():
        return loss.forward(net.forward(x), target)

    f()
    net.zero_grad()
    dx = net.backward(loss.backward())
    assert max_relative_error(dx, numerical_gradient(f, x)) < 1e-6
    for name, p in net.named_parameters():
        err = max_relative_error(p.grad, numerical_gradient(f, p.data))
        assert err < 1e-6, f"{name}: {err}"


def test_state_dict_round_trip_and_clear_errors():
    a = UNet(3, 3, base_channels=4, depth=2, seed=1)
    b = UNet(3, 3, base_channels=4, depth=2, seed=2)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    a.forward(x)  # moves BatchNorm running statistics
    state = a.state_dict()
    assert "encoder.0.conv1.weight" in state and "encoder.0.bn1.running_var" in state
    b.load_state_dict(state)
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    with pytest.raises(ValueError, match="missing keys.*head.bias"):
        b.load_state_dict({k: v for k, v in state.items() if k != "head.bias"})
    bad = dict(state, **{"head.weight": np.zeros((5, 4, 1, 1))})
    with pytest.raises(ValueError, match=r"shape mismatch.*head.weight"):
        b.load_state_dict(bad)


def test_parameter_names_and_count_for_the_default_net():
    net = UNet()
    names = [n for n, _ in net.named_parameters()]
    assert names[0] == "encoder.0.conv1.weight"
    assert "upconvs.0.weight" in names and names[-1] == "head.bias"
    assert net.num_parameters() == sum(p.data.size for p in net.parameters())


def test_infer_keeps_no_caches_and_matches_eval_forward():
    net = UNet(3, 3, base_channels=4, depth=2, seed=3)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    net.forward(x)  # move the running statistics
    expected = net.forward(x, train=False)
    assert not net.training
    net.train()
    np.testing.assert_array_equal(net.infer(x), expected)
    assert net.training  # the mode is restored
    cached = [
        f"{type(layer).__name__}.{k}"
        for layer in _all_layers(net)
        for k, v in vars(layer).items()
        if k.startswith("_cache") and v is not None
    ]
    assert cached == []  # nothing left behind for a backward that will not come
    np.testing.assert_array_equal(net.predict(x), expected.argmax(axis=1))


def _all_layers(layer):
    yield layer
    for child in layer.children().values():
        yield from _all_layers(child)


@cache
def _small_net(depth: int, padding: str) -> UNet:
    return UNet(1, 2, base_channels=1, depth=depth, padding=padding, batchnorm=False)


def _real_output_side(net: UNet, side: int) -> int | None:
    """The side the layers themselves produce, with the size check switched off (None when
    a layer refuses the input)."""
    with mock.patch.object(geometry, "check_input_size", lambda *args: 0):
        try:
            return net.forward(np.zeros((1, 1, side, side), np.float32)).shape[2]
        except ValueError:  # a conv or pool window larger than its input
            return None


@settings(max_examples=80, deadline=None)
@given(
    depth=st.integers(1, 3),
    padding=st.sampled_from(geometry.PADDINGS),
    k=st.integers(0, 3),
    offset=st.integers(-24, 8),
)
def test_geometry_is_the_size_rule_of_the_real_forward(depth, padding, k, offset):
    """A side the geometry accepts gives the predicted output in a real forward pass, and is
    one of the evenly spaced accepted sides; a side it rejects makes the layers fail or lose
    pixels (a pool drops a row), and the error names the nearest accepted sides. Sides are
    drawn around the accepted ones (and below the smallest), where a wrong rule would show."""
    side = max(1, geometry.input_size(depth, padding, k) + offset)
    net = _small_net(depth, padding)
    out = geometry.output_size(side, depth, padding)
    border = geometry.border(depth, padding)
    first, step = geometry.input_size(depth, padding), 2**depth
    accepted = side >= first and (side - first) % step == 0
    assert (out is not None) == accepted
    if accepted:
        assert out == side - 2 * border == net.output_size(side)
        assert net.forward(np.zeros((1, 1, side, side), np.float32)).shape == (1, 2, out, out)
        assert geometry.nearest_input_sizes(side, depth, padding) == (side, side)
        return
    assert _real_output_side(net, side) != side - 2 * border
    below, above = geometry.nearest_input_sizes(side, depth, padding)
    if below is None:
        assert side < above == first
    else:
        assert below < side < above == below + step
    for near in (below, above):
        if near is not None:
            assert geometry.output_size(near, depth, padding) is not None
    with pytest.raises(MinunetError, match=f"does not fit.*{above}"):
        net.output_size(side)


def test_accepted_sides_are_exactly_the_ones_the_walk_through_the_layers_accepts():
    """The closed forms (input_size, border, nearest_input_sizes) against output_size's
    step-by-step walk, for every side up to 400."""
    for padding in geometry.PADDINGS:
        for depth in (1, 2, 3, 4, 5):
            walked = [s for s in range(1, 401) if geometry.output_size(s, depth, padding)]
            formula = [geometry.input_size(depth, padding, k) for k in range(len(walked) + 1)]
            assert walked == [s for s in formula if s <= 400], (padding, depth)
            border = geometry.border(depth, padding)
            assert all(geometry.output_size(s, depth, padding) == s - 2 * border for s in walked)
            for s in range(1, 401):
                below, above = geometry.nearest_input_sizes(s, depth, padding)
                assert above == min(a for a in formula + [10**9] if a >= s)
                assert below == max((a for a in walked if a <= s), default=None)
    assert geometry.border(4, "valid") == 92 and geometry.input_size(4, "valid") == 188


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_skip_crops_are_the_same_for_every_valid_side(depth):
    """The ONNX export writes the valid net's skip crops as constants: they must not depend
    on the input side (and are 0 for same padding)."""
    sides = [geometry.input_size(depth, "valid", k) for k in range(5)]
    crops = {geometry.trace(s, depth, "valid").crops for s in sides}
    assert len(crops) == 1 and min(crops.pop()) > 0
    assert set(geometry.trace(geometry.input_size(depth, "same", 3), depth, "same").crops) == {0}
