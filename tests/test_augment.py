"""Batched augmentation on the backend: samplers, flip, crop, jitter, exact labels."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minunet.data.augment import (
    AugmentConfig,
    apply_augment,
    augment_batch,
    colour_jitter,
    crop_grid,
    draw_augment_params,
    flip_horizontal,
    sample_bilinear,
    sample_nearest,
)


def _batch(seed=0, n=4, h=10, w=12, c=3):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    masks = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), (n, h, w))
    weights = rng.random((n, h, w), dtype=np.float32)
    return images, masks, weights


def _bilinear_reference(images, gy, gx, fill):
    """A pixel-by-pixel loop: the definition the vectorised sampler must match."""
    n, h, w = images.shape[:3]
    out = np.zeros(gy.shape + images.shape[3:])

    def read(b, y, x):
        if 0 <= y < h and 0 <= x < w:
            return images[b, y, x].astype(np.float64)
        if fill is None:
            return images[b, min(max(y, 0), h - 1), min(max(x, 0), w - 1)].astype(np.float64)
        return np.full(images.shape[3:], fill, dtype=np.float64)

    for b in range(gy.shape[0]):
        for i in range(gy.shape[1]):
            for j in range(gy.shape[2]):
                y, x = float(gy[b, i, j]), float(gx[b, i, j])
                y0, x0 = int(np.floor(y)), int(np.floor(x))
                fy, fx = y - y0, x - x0
                out[b, i, j] = (
                    (1 - fy) * (1 - fx) * read(b, y0, x0)
                    + (1 - fy) * fx * read(b, y0, x0 + 1)
                    + fy * (1 - fx) * read(b, y0 + 1, x0)
                    + fy * fx * read(b, y0 + 1, x0 + 1)
                )
    return out


@pytest.mark.parametrize("fill", [None, 7.0])
@pytest.mark.parametrize("channels", [None, 3])
def test_sample_bilinear_matches_loop(fill, channels):
    rng = np.random.default_rng(1)
    shape = (2, 5, 6) if channels is None else (2, 5, 6, channels)
    images = rng.random(shape)
    gy = rng.uniform(-2, 7, (2, 4, 3))
    gx = rng.uniform(-2, 8, (2, 4, 3))
    got = sample_bilinear(images, gy, gx, fill=fill)
    assert got.dtype == np.float64 and got.shape == (2, 4, 3) + shape[3:]
    np.testing.assert_allclose(got, _bilinear_reference(images, gy, gx, fill), atol=1e-12)


def test_sample_nearest_matches_loop_and_keeps_labels():
    rng = np.random.default_rng(2)
    labels = rng.choice(np.array([0, 3, 255], dtype=np.uint8), (2, 5, 6))
    gy = rng.uniform(-2, 7, (2, 4, 3))
    gx = rng.uniform(-2, 8, (2, 4, 3))
    got = sample_nearest(labels, gy, gx, fill=9)
    assert got.dtype == np.uint8
    for b in range(2):
        for i in range(4):
            for j in range(3):
                y, x = int(np.floor(gy[b, i, j] + 0.5)), int(np.floor(gx[b, i, j] + 0.5))
                want = labels[b, y, x] if 0 <= y < 5 and 0 <= x < 6 else 9
                assert got[b, i, j] == want
    clamped = sample_nearest(labels, gy, gx)
    assert set(np.unique(clamped)) <= {0, 3, 255}


def test_identity_grid_reproduces_the_image():
    images, masks, _ = _batch()
    gy = np.arange(10, dtype=np.float32)[None, :, None].repeat(4, axis=0)
    gx = np.arange(12, dtype=np.float32)[None, None, :]
    np.testing.assert_array_equal(sample_bilinear(images, gy, gx), images.astype(np.float32))
    np.testing.assert_array_equal(sample_nearest(masks, gy, gx), masks)


def test_flip_twice_is_identity_and_flips_only_flagged():
    images, masks, _ = _batch()
    flags = np.array([True, False, True, False])
    once = flip_horizontal(images, flags)
    np.testing.assert_array_equal(once[0], images[0, :, ::-1])
    np.testing.assert_array_equal(once[1], images[1])
    np.testing.assert_array_equal(flip_horizontal(once, flags), images)
    np.testing.assert_array_equal(flip_horizontal(flip_horizontal(masks, flags), flags), masks)


def test_flip_only_augmentation_is_an_exact_mirror():
    images, masks, weights = _batch()
    config = AugmentConfig(flip=True, scale=(1.0, 1.0), jitter=0.0)
    out = augment_batch(images, masks, weights, config, np.random.default_rng(5))
    flags = draw_augment_params(4, config, np.random.default_rng(5)).flip
    np.testing.assert_array_equal(out[0], flip_horizontal(images, flags))
    np.testing.assert_array_equal(out[1], flip_horizontal(masks, flags))
    np.testing.assert_array_equal(out[2], flip_horizontal(weights, flags))


def test_scale_one_crop_is_identity():
    images, masks, weights = _batch()
    config = AugmentConfig(flip=False, scale=(1.0, 1.0), jitter=0.0)
    out = augment_batch(images, masks, weights, config, np.random.default_rng(0))
    np.testing.assert_array_equal(out[0], images)
    np.testing.assert_array_equal(out[1], masks)
    np.testing.assert_array_equal(out[2], weights)
    # The crop grid of scale 1 is the identity grid itself.
    params = draw_augment_params(4, config, np.random.default_rng(0))
    gy, gx = crop_grid(params, 10, 12)
    np.testing.assert_allclose(
        np.broadcast_to(gy, (4, 10, 12)), np.arange(10)[None, :, None] + 0 * gx
    )
    np.testing.assert_allclose(
        np.broadcast_to(gx, (4, 10, 12)), np.arange(12)[None, None, :] + 0 * gy
    )


def test_disabled_returns_inputs():
    images, masks, weights = _batch()
    out = augment_batch(images, masks, weights, AugmentConfig(enabled=False), None)
    assert out[0] is images and out[1] is masks and out[2] is weights


def test_crop_keeps_labels_exact_and_zooms():
    images, masks, weights = _batch(n=8)
    config = AugmentConfig(flip=True, scale=(0.5, 0.8), jitter=0.0)
    out_images, out_masks, out_weights = augment_batch(
        images, masks, weights, config, np.random.default_rng(3)
    )
    assert set(np.unique(out_masks)) <= {0, 1, 2, 255}
    assert np.isin(out_weights, weights).all()  # nearest: only original weight values
    assert out_images.dtype == np.uint8 and out_images.shape == images.shape
    assert not np.array_equal(out_masks, masks)


def test_crop_of_a_smooth_ramp_is_a_zoom():
    # A horizontal ramp image: the crop of scale s maps it to another ramp of slope s.
    w = 16
    ramp = np.broadcast_to(np.arange(w, dtype=np.float64)[None, None, :, None], (3, 8, w, 1))
    config = AugmentConfig(flip=False, scale=(0.5, 0.9), jitter=0.0)
    params = draw_augment_params(3, config, np.random.default_rng(4))
    out, _, _ = apply_augment(ramp, np.zeros((3, 8, w), np.uint8), None, params, config)
    slopes = np.diff(out[:, 0, :, 0], axis=1)
    np.testing.assert_allclose(
        slopes, np.broadcast_to(params.scale[:, None], slopes.shape), rtol=1e-5
    )


def test_jitter_keeps_range_and_zero_jitter_is_identity():
    rng = np.random.default_rng(0)
    x = rng.random((6, 5, 5, 3), dtype=np.float32)
    strong = draw_augment_params(6, AugmentConfig(jitter=0.9), rng)
    out = colour_jitter(x, strong)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.dtype == np.float32
    none = draw_augment_params(6, AugmentConfig(jitter=0.0), rng)
    np.testing.assert_allclose(colour_jitter(x, none), x, atol=1e-6)
    images, masks, _ = _batch()
    u8, _, _ = augment_batch(images, masks, None, AugmentConfig(jitter=0.5), rng)
    assert u8.dtype == np.uint8


def test_grayscale_images_are_supported():
    images, masks, _ = _batch(c=1)
    out, out_masks, _ = augment_batch(
        images, masks, None, AugmentConfig(jitter=0.3), np.random.default_rng(0)
    )
    assert out.shape == images.shape and out_masks.shape == masks.shape


def test_same_rng_seed_same_augmentation_and_slicing():
    images, masks, weights = _batch(n=6)
    config = AugmentConfig(scale=(0.6, 1.0), jitter=0.2)
    a = augment_batch(images, masks, weights, config, np.random.default_rng(11))
    b = augment_batch(images, masks, weights, config, np.random.default_rng(11))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # Parameters drawn for the whole batch, applied to a slice: the same samples result.
    params = draw_augment_params(6, config, np.random.default_rng(11))
    part = apply_augment(images[2:5], masks[2:5], weights[2:5], params[2:5], config)
    for x, y in zip(a, part, strict=True):
        np.testing.assert_array_equal(x[2:5], y)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        AugmentConfig(scale=(0.0, 1.0))
    with pytest.raises(ValueError):
        AugmentConfig(scale=(0.9, 0.5))
    with pytest.raises(ValueError):
        AugmentConfig(jitter=1.5)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=st.sampled_from([1, 3]),
    lo=st.floats(0.3, 1.0),
    flip=st.booleans(),
    jitter=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
    float_input=st.booleans(),
)
def test_shapes_and_dtypes_property(n, h, w, c, lo, flip, jitter, seed, float_input):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    if float_input:
        images = images.astype(np.float32) / 255
    masks = rng.choice(np.array([0, 1, 255], dtype=np.uint8), (n, h, w))
    weights = rng.random((n, h, w), dtype=np.float32)
    config = AugmentConfig(flip=flip, scale=(lo, 1.0), jitter=jitter)
    out_images, out_masks, out_weights = augment_batch(images, masks, weights, config, rng)
    assert out_images.shape == images.shape and out_images.dtype == images.dtype
    assert out_masks.shape == masks.shape and out_masks.dtype == masks.dtype
    assert out_weights.shape == weights.shape and out_weights.dtype == weights.dtype
    assert set(np.unique(out_masks)) <= {0, 1, 255}
    if float_input:
        assert out_images.min() >= 0.0 and out_images.max() <= 1.0


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    ho=st.integers(1, 5),
    wo=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_sampler_output_shape_and_convexity_property(n, h, w, ho, wo, seed):
    rng = np.random.default_rng(seed)
    images = rng.random((n, h, w, 2), dtype=np.float32)
    gy = rng.uniform(-1, h, (n, ho, 1)).astype(np.float32)  # separable grids broadcast
    gx = rng.uniform(-1, w, (n, 1, wo)).astype(np.float32)
    out = sample_bilinear(images, gy, gx)
    assert out.shape == (n, ho, wo, 2) and out.dtype == np.float32
    # Bilinear weights are convex: every output lies within its image's value range.
    lo = images.min(axis=(1, 2, 3))[:, None, None, None]
    hi = images.max(axis=(1, 2, 3))[:, None, None, None]
    assert np.all(out >= lo - 1e-6) and np.all(out <= hi + 1e-6)
    assert sample_nearest(images, gy, gx).shape == (n, ho, wo, 2)


def test_cupy_samplers_and_augmentation_match_numpy(cp):
    """On real CuPy (a GPU) and on the strict stand-in (the ``cp`` fixture)."""

    rng = np.random.default_rng(6)
    images = rng.random((3, 7, 9, 3), dtype=np.float32)
    labels = rng.choice(np.array([0, 1, 255], np.uint8), (3, 7, 9))
    gy = rng.uniform(-1, 7, (3, 5, 4)).astype(np.float32)
    gx = rng.uniform(-1, 9, (3, 5, 4)).astype(np.float32)
    dev = [cp.asarray(a) for a in (images, labels, gy, gx)]
    np.testing.assert_allclose(
        cp.asnumpy(sample_bilinear(dev[0], dev[2], dev[3], fill=0.5)),
        sample_bilinear(images, gy, gx, fill=0.5),
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        cp.asnumpy(sample_nearest(dev[1], dev[2], dev[3])), sample_nearest(labels, gy, gx)
    )
    # Same parameters on both backends give the same augmented batch.
    config = AugmentConfig(scale=(0.6, 1.0), jitter=0.3)
    params = draw_augment_params(3, config, np.random.default_rng(0))
    params_dev = type(params)(**{k: cp.asarray(v) for k, v in vars(params).items()})
    host = apply_augment(images, labels, None, params, config)
    gpu = apply_augment(dev[0], dev[1], None, params_dev, config)
    np.testing.assert_allclose(cp.asnumpy(gpu[0]), host[0], atol=1e-5)
    np.testing.assert_array_equal(cp.asnumpy(gpu[1]), host[1])
