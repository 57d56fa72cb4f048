"""The decoder's join without the up-convolution's copy: ``Concat.room`` hands out the up
part of the concatenation's buffer, ``ConvTranspose2d.forward(x, out=room)`` writes into it,
and ``Concat.forward`` then copies only the skip. Every result must equal the plain
``concatenate`` of the two maps, reference and fast layers alike, and the U-Net must
really take the road (its up-convolutions' outputs are views of the joins)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet.accel import accelerate
from minunet.model import UNet
from minunet.nn import Concat, ConvTranspose2d
from minunet.nn.concat import centre_crop_box


def joined_by_room(cat: Concat, up_layer: ConvTranspose2d, skip, x):
    """The decoder's way: the up-convolution writes into the join's room."""
    room = cat.room(skip, (up_layer.out_channels, *up_layer.output_shape(*x.shape[2:])))
    up = up_layer.forward(x, out=room)
    assert up is room  # written in place, the view itself returned
    return cat.forward(skip, up), room


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    cin=st.integers(1, 5),
    cout=st.integers(1, 4),
    cskip=st.integers(1, 4),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    pad=st.integers(0, 1),
    crop=st.integers(0, 3),
    bias=st.booleans(),
    fast=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_up_convolution_into_the_room_equals_concatenate(
    n, cin, cout, cskip, k, stride, pad, crop, bias, fast, seed
):
    """Every geometry (kernel == stride takes the interleaving copies, the others col2im),
    with and without bias, reference and fast layers, a skip map larger than the decoder's
    (the "valid" U-Net's crop): forward equals concatenate(crop(skip), up), and the up
    part of the result is the up-convolution's own output, not a copy of it."""
    rng = np.random.default_rng(seed)
    layer = ConvTranspose2d(cin, cout, k, stride, pad, bias=bias, dtype=np.float64, rng=rng)
    if bias:
        layer.params["bias"].data[...] = rng.standard_normal(cout)
    if fast:
        layer = accelerate(layer)
    x = rng.standard_normal((n, cin, 4, 5))
    ho, wo = layer.output_shape(4, 5)
    if ho < 1 or wo < 1:
        return
    skip = rng.standard_normal((n, cskip, ho + 2 * crop, wo + crop))
    expected_up = copy.deepcopy(layer).forward(x)
    rows, cols = centre_crop_box(skip.shape[2:], (ho, wo))
    expected = np.concatenate([skip[:, :, rows, cols], expected_up], axis=1)

    got, room = joined_by_room(Concat(), layer, skip, x)
    np.testing.assert_array_equal(got, expected)
    assert got.flags.c_contiguous
    assert room.base is got or room.base is got.base  # the up map lies inside the join


def test_the_room_serves_one_forward_only():
    """A join handed another array than its room concatenates as before, and a room is
    good for the next forward only: a second forward with it copies, so two joins never
    share one buffer."""
    rng = np.random.default_rng(0)
    skip, up = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 2, 4, 4))
    expected = np.concatenate([skip, up], axis=1)
    cat = Concat()
    room = cat.room(skip, up.shape)
    room[...] = up
    first = cat.forward(skip, up)  # not the room: a fresh array
    np.testing.assert_array_equal(first, expected)
    assert not np.shares_memory(first, room)
    room = cat.room(skip, up.shape)
    room[...] = up
    second = cat.forward(skip, room)
    assert np.shares_memory(second, room)
    third = cat.forward(skip, room)  # the room was used: a copy now
    assert not np.shares_memory(third, second)
    np.testing.assert_array_equal(second, expected)
    np.testing.assert_array_equal(third, expected)


def test_out_of_the_wrong_shape_or_dtype_is_refused():
    layer = ConvTranspose2d(4, 3, 2, stride=2)
    x = np.zeros((2, 4, 5, 5), np.float32)
    for out in (np.zeros((2, 3, 10, 9), np.float32), np.zeros((2, 3, 10, 10), np.float64)):
        with pytest.raises(ValueError, match="out must be"):
            layer.forward(x, out=out)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("accel", ["1", "0"])
def test_unet_joins_without_copying_the_up_convolutions_maps(padding, accel, monkeypatch):
    """In the U-Net, every up-convolution's output is a view of its join's buffer (so the
    join copied only the skip), and forward and backward agree with a U-Net whose joins
    concatenate (the room switched off) to the bit."""
    monkeypatch.setenv("MINUNET_ACCEL", accel)
    rng = np.random.default_rng(1)
    model = UNet(3, 3, base_channels=4, depth=2, padding=padding, dtype=np.float64, seed=2)
    side = 16 if padding == "same" else 44
    x = rng.standard_normal((2, 3, side, side))
    plain = copy.deepcopy(model)
    for cat in plain.concats:
        cat.room = lambda skip, up_shape: None  # the up-convolutions allocate, as before
    joins = []

    def recording(cat):
        forward = cat.forward

        def wrapped(skip, up):
            out = forward(skip, up)
            joins.append(np.shares_memory(out, up))
            return out

        return wrapped

    for cat in [*model.concats, *plain.concats]:
        cat.forward = recording(cat)
    logits = model.forward(x, train=True)
    assert joins == [True, True]
    plain_logits = plain.forward(x, train=True)
    assert joins[2:] == [False, False]
    np.testing.assert_array_equal(logits, plain_logits)
    dlogits = rng.standard_normal(logits.shape)
    np.testing.assert_array_equal(model.backward(dlogits), plain.backward(dlogits))
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)


def test_the_summary_counts_the_joins_up_part_once():
    """The up map lives inside the join's buffer: the summary counts it in the
    up-convolution's row only, and the join's row holds the skip's part."""
    from minunet.model.summary import trace

    model = UNet(3, 3, base_channels=4, depth=2, seed=0)
    rows = {name: row for name, *row in trace(model, 16, 16, batch=2)}
    for i in range(2):
        _, up_out, _, _, up_acts = rows[f"upconvs.{i}"]
        _, cat_out, _, _, cat_acts = rows[f"concats.{i}"]
        assert up_acts == int(np.prod(up_out))
        assert cat_acts + up_acts == int(np.prod(cat_out))
