"""Overlap-tile prediction equals whole-image prediction for small convolutional nets."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.infer.inference import predict_logits
from minunet.infer.tiling import predict_tiled
from minunet.model import UNet, geometry

RNG = np.random.default_rng(0)
CHANNELS, HIDDEN, CLASSES = 2, 4, 3
KERNELS = [
    RNG.standard_normal((HIDDEN, CHANNELS, 3, 3)).astype(np.float32),
    RNG.standard_normal((HIDDEN, HIDDEN, 3, 3)).astype(np.float32),
    RNG.standard_normal((CLASSES, HIDDEN, 3, 3)).astype(np.float32),
]


def conv3x3(x: np.ndarray, k: np.ndarray, same: bool) -> np.ndarray:
    """(B, C, H, W) * (K, C, 3, 3): a cross-correlation, 'valid' or zero-padded 'same'."""
    if same:
        x = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))
    return np.einsum("bchwij,kcij->bkhw", windows, k, optimize=True).astype(np.float32)


def tiny_net(same: bool, calls: list | None = None):
    """Three 3x3 convs with a ReLU between: receptive-field radius 3, shrink 3 if valid."""

    def forward(x: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(x.shape)
        for i, k in enumerate(KERNELS):
            x = conv3x3(x, k, same)
            if i < len(KERNELS) - 1:
                x = np.maximum(x, 0.0)
        return x

    return forward


@pytest.mark.parametrize("size", [(23, 30), (5, 7), (40, 41)])
def test_valid_net_tiled_equals_whole_mirror_padded(size):
    image = RNG.standard_normal((CHANNELS, *size)).astype(np.float32)
    forward = tiny_net(same=False)
    whole = forward(np.pad(image, [(0, 0), (3, 3), (3, 3)], mode="symmetric")[None])[0]
    calls: list = []
    tiled = predict_tiled(
        tiny_net(False, calls), image, 14, num_classes=CLASSES, depth=0, border=3, batch=3
    )
    assert tiled.shape == (CLASSES, *size) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
    assert max(c[0] for c in calls) <= 3 and {c[2:] for c in calls} == {(14, 14)}


@pytest.mark.parametrize("size", [(24, 36), (22, 30), (8, 12)])
def test_same_net_tiled_equals_whole(size):
    image = RNG.standard_normal((CHANNELS, *size)).astype(np.float32)
    forward = tiny_net(same=True)
    # The reference: the image padded (mirrored) at the bottom/right to a multiple of 4.
    h, w = size
    pads = [(0, 0), (0, -h % 4), (0, -w % 4)]
    whole = forward(np.pad(image, pads, mode="symmetric")[None])[0][:, :h, :w]
    tiled = predict_tiled(forward, image, 12, num_classes=CLASSES, depth=2, margin=3, batch=2)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
    classes = predict_tiled(
        forward, image, 12, num_classes=CLASSES, depth=2, margin=3, output="classes"
    )
    np.testing.assert_array_equal(classes, whole.argmax(axis=0))


def test_same_net_without_margin_differs_at_the_seams():
    image = RNG.standard_normal((CHANNELS, 32, 32)).astype(np.float32)
    forward = tiny_net(same=True)
    whole = forward(image[None])[0]
    seamed = predict_tiled(forward, image, 8, num_classes=CLASSES, depth=2, margin=0)
    assert np.abs(seamed - whole).max() > 1e-3  # zero padding inside the image shows


def test_size_rules():
    assert geometry.output_size(572, 4, "valid") == 388  # the paper's network
    assert geometry.output_size(570, 4, "valid") is None  # an odd size before some pooling
    assert geometry.output_size(20, 4, "valid") is None  # too small
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 16"):
        predict_tiled(tiny_net(True), np.zeros((2, 32, 32), np.float32), 40, num_classes=3, depth=4)
    with pytest.raises(ValueError, match="expected"):
        predict_tiled(
            tiny_net(False),
            np.zeros((2, 32, 32), np.float32),
            16,
            num_classes=3,
            depth=0,
            border=2,
        )


@pytest.mark.parametrize("size", [(37, 45), (150, 203)])
def test_same_unet_tiled_and_untiled_agree_everywhere_borders_included(size):
    """--tile and whole-image prediction pad the border by one rule, so they agree on every
    pixel, the bottom and right padding included. Tiles of 96 keep 96 // 8 = 12 px margins,
    more than this depth-1 net's receptive-field radius (9 px: two 3x3 convs, a 2x2 pool,
    two convs at half resolution, the 2x2 up-convolution, two convs), so no seam shows;
    (37, 45) is one tile, (150, 203) two by three."""
    net = UNet(3, 3, base_channels=2, depth=1, padding="same", dtype=np.float64, seed=2)
    rng = np.random.default_rng(5)
    for p in net.parameters():  # make the border matter: non-trivial weights and biases
        p.data += rng.standard_normal(p.data.shape) * 0.3
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    whole = predict_logits(net, image, np, 0.5, 0.25)
    tiled = predict_logits(net, image, np, 0.5, 0.25, tile=96)
    assert tiled.shape == whole.shape == (3, *size)
    # The tiled logits are stored as float32: the float64 result rounded once, a relative
    # error of at most 2**-24 (6e-8); everything else is float64 (1e-15 relative).
    np.testing.assert_allclose(tiled, whole, rtol=2**-24 + 1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "depth, size, tile",
    # (size + 2 * border) is itself an accepted side, so the whole padded image runs in one
    # pass to compare with. Tile outputs 12 (depth 3) and 20 (depth 4) are 4 more than a
    # multiple of 2**depth: off the pooling grid, were the tiles to step by their output.
    [(3, (36, 44), 100), (4, (36, 52), 204)],
)
def test_valid_unet_tiled_equals_whole_image_pass_at_depth_3_and_4(depth, size, tile):
    border = geometry.border(depth, "valid")
    padded_side = [s + 2 * border for s in size]
    assert all(geometry.output_size(s, depth, "valid") for s in padded_side)
    assert (tile - 2 * border) % 2**depth == 4
    net = UNet(2, 3, base_channels=2, depth=depth, padding="valid", dtype=np.float64, seed=4)
    rng = np.random.default_rng(depth)
    for p in net.parameters():  # non-trivial weights, so a misaligned pooling grid shows
        p.data += rng.standard_normal(p.data.shape) * 0.3
    net.eval()
    image = rng.standard_normal((2, *size)).astype(np.float32)
    padded = np.pad(image, [(0, 0), (border, border), (border, border)], "symmetric")
    whole = net.infer(padded[None].astype(np.float64))
    calls: list = []

    def forward(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return net.infer(x.astype(np.float64))

    tiled = predict_tiled(forward, image, tile, num_classes=3, depth=depth, border=border)
    assert len(calls) > 1 and {c[2:] for c in calls} == {(tile, tile)}  # really tiled
    # float64 throughout (GEMM order differences ~1e-15 relative); the tiled result is
    # stored as float32, one rounding: at most 2**-24 relative.
    np.testing.assert_allclose(tiled, whole[0], rtol=2**-24 + 1e-12, atol=1e-12)


def test_valid_tile_too_small_to_step_on_the_pooling_grid():
    border = geometry.border(3, "valid")
    smallest = geometry.input_size(3, "valid")  # output 4 < 2**3
    with pytest.raises(ValueError, match="at least"):
        predict_tiled(
            tiny_net(False),
            np.zeros((2, 32, 32), np.float32),
            smallest,
            num_classes=3,
            depth=3,
            border=border,
        )
