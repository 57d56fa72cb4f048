"""The U-Net: the paper's numbers, sizes, state dicts, and an end-to-end gradient check."""

import numpy as np
import pytest

from minunet.core.gradcheck import max_relative_error, numerical_gradient
from minunet.errors import MinunetError
from minunet.model import UNet
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
