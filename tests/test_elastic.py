"""Elastic deformation: identity at zero displacement, exact labels, smooth fields."""

from __future__ import annotations

import numpy as np

from minunet.data.elastic import cubic_upsample_matrix, elastic_deform, elastic_field


def batch(n=3, h=20, w=24, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    masks = rng.integers(0, 3, (n, h, w), dtype=np.uint8)
    masks[:, :2] = 255  # an ignore label must survive too
    weights = rng.random((n, h, w), dtype=np.float32)
    return images, masks, weights


def test_zero_displacement_is_the_identity():
    images, masks, weights = batch()
    field = np.zeros((3, 2, 20, 24), np.float32)
    out = elastic_deform(images, masks, weights, None, field=field)
    assert np.array_equal(out[0], images) and out[0].dtype == np.uint8
    assert np.array_equal(out[1], masks) and np.array_equal(out[2], weights)
    zero_sigma = elastic_deform(images, masks, None, np.random.default_rng(0), sigma=0.0)
    assert np.array_equal(zero_sigma[0], images) and zero_sigma[2] is None


def test_integer_shift_moves_everything_alike():
    images, masks, weights = batch()
    field = np.zeros((3, 2, 20, 24), np.float32)
    field[:, 1] = 2.0  # every output pixel reads two columns to the right
    x, y, w = elastic_deform(images.astype(np.float32), masks, weights, None, field=field)
    np.testing.assert_array_equal(x[:, :, :-2], images[:, :, 2:])
    np.testing.assert_array_equal(y[:, :, :-2], masks[:, :, 2:])
    np.testing.assert_array_equal(w[:, :, :-2], weights[:, :, 2:])


def test_random_warp_keeps_labels_and_is_seeded():
    images, masks, weights = batch()
    x, y, w = elastic_deform(images, masks, weights, np.random.default_rng(1))
    assert x.shape == images.shape and y.shape == masks.shape and w.shape == weights.shape
    assert set(np.unique(y)) <= set(np.unique(masks))  # nearest: no new label values
    assert set(np.unique(w)) <= set(np.unique(weights))
    assert not np.array_equal(y, masks)
    again = elastic_deform(images, masks, weights, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip((x, y, w), again, strict=True))
    # One field per sample: the same image in two slots is warped differently.
    twins = np.repeat(images[:1], 2, axis=0)
    warped, _, _ = elastic_deform(twins, masks[:2], None, np.random.default_rng(2))
    assert not np.array_equal(warped[0], warped[1])


def test_field_is_bicubic_through_the_nodes():
    m = cubic_upsample_matrix(9, 3)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)  # constants are kept
    np.testing.assert_allclose(m[[0, 4, 8]], np.eye(3), atol=1e-6)  # passes the nodes
    field = elastic_field(4, 64, 48, np.random.default_rng(0), sigma=10.0)
    assert field.shape == (4, 2, 64, 48) and field.dtype == np.float32
    # Smooth: neighbouring pixels move by almost the same amount.
    assert np.abs(np.diff(field, axis=2)).max() < 3.0
    assert 3.0 < field.std() < 20.0
