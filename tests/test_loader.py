"""DeviceLoader: coverage, reproducibility per (seed, epoch), rank shards, normalisation;
whole images and native-size crops; a mid-epoch resume that builds no skipped batch."""

import numpy as np
import pytest

from minunet.data.augment import AugmentConfig
from minunet.data.dataset import NativeSizeData, SegmentationData
from minunet.data.loader import DeviceLoader, normalize
from minunet.errors import DataError, MinunetError

N, H, W = 22, 6, 5
RNG = np.random.default_rng(0)


def _data(with_weights: bool = True) -> SegmentationData:
    """Sample i is recognisable: every pixel of image i holds i, its mask holds i % 3."""
    images = np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None, None], (N, H, W, 3))
    masks = np.broadcast_to((np.arange(N) % 3).astype(np.uint8)[:, None, None], (N, H, W))
    weights = np.broadcast_to(np.arange(N, dtype=np.float32)[:, None, None], (N, H, W))
    return SegmentationData(
        images=images.copy(),
        masks=masks.copy(),
        class_names=["a", "b", "c"],
        weights=weights.copy() if with_weights else None,
    )


def _ids(batch) -> np.ndarray:
    """Sample index of each batch entry, read back from the normalised pixel values."""
    u8 = (batch.x[:, 0, 0, 0] * 0.25 + 0.5) * 255
    return np.rint(u8).astype(int)


def test_every_sample_once_per_epoch_and_batch_contents():
    loader = DeviceLoader(_data(), np, 4, drop_last=False)
    assert len(loader) == 6
    seen = []
    for batch in loader.epoch(0):
        ids = _ids(batch)
        seen.extend(ids)
        assert batch.x.shape[1:] == (3, H, W) and batch.x.dtype == np.float32
        assert batch.x.flags.c_contiguous
        assert batch.y.dtype == np.int32 and batch.y.shape == (len(ids), H, W)
        np.testing.assert_array_equal(batch.y[:, 0, 0], ids % 3)
        np.testing.assert_array_equal(batch.w[:, 0, 0], ids)
    assert sorted(seen) == list(range(N))


def test_drop_last_gives_full_batches():
    loader = DeviceLoader(_data(), np, 4)
    assert len(loader) == 5
    batches = list(loader.epoch(3))
    assert len(batches) == 5 and all(len(b.x) == 4 for b in batches)
    ids = np.concatenate([_ids(b) for b in batches])
    assert len(set(ids)) == 20
    np.testing.assert_array_equal(ids, loader.order(3))


def test_order_reproducible_per_seed_and_epoch():
    a = DeviceLoader(_data(), np, 4, seed=5)
    b = DeviceLoader(_data(), np, 4, seed=5)
    np.testing.assert_array_equal(a.order(2), b.order(2))
    assert not np.array_equal(a.order(2), a.order(3))
    assert not np.array_equal(a.order(2), DeviceLoader(_data(), np, 4, seed=6).order(2))
    # Iterating counts epochs: the second pass is epoch 1, and set_epoch resumes.
    first = [_ids(x) for x in a]
    second = [_ids(x) for x in a]
    np.testing.assert_array_equal(np.concatenate(first), a.order(0))
    np.testing.assert_array_equal(np.concatenate(second), a.order(1))
    b.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([_ids(x) for x in b]), a.order(1))


def _pets_like(n=12, size=16):
    rng = np.random.default_rng(0)
    return SegmentationData(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        masks=rng.choice(np.array([0, 1, 2, 255], np.uint8), (n, size, size)),
        class_names=["pet", "background", "outline"],
        ignore_index=255,
        weights=rng.random((n, size, size), dtype=np.float32),
    )


def test_augmented_epoch_reproducible_and_labels_exact():
    config = AugmentConfig(scale=(0.6, 1.0), jitter=0.2)
    data = _pets_like()
    a = DeviceLoader(data, np, 4, augment=config, seed=1)
    b = DeviceLoader(data, np, 4, augment=config, seed=1)
    # Epoch 1 straight away (as a resumed run would) equals epoch 1 after epoch 0.
    list(a.epoch(0))
    for x, y in zip(a.epoch(1), b.epoch(1), strict=True):
        for p, q in zip(x, y, strict=True):
            np.testing.assert_array_equal(p, q)
    batches = list(a.epoch(2))
    labels = np.concatenate([bt.y.ravel() for bt in batches])
    assert set(np.unique(labels)) <= {0, 1, 2, 255}
    assert any(not np.array_equal(p.x, q.x) for p, q in zip(batches, a.epoch(3), strict=True))


@pytest.mark.parametrize("augment", [None, AugmentConfig(scale=(0.6, 1.0), jitter=0.2)])
def test_rank_shards_are_disjoint_and_cover_the_global_batch(augment):
    data = _pets_like()
    whole = DeviceLoader(data, np, 6, augment=augment, seed=4)
    ranks = [
        DeviceLoader(data, np, 6, augment=augment, seed=4, rank=r, world_size=3) for r in range(3)
    ]
    assert all(len(r) == len(whole) == 2 for r in ranks)
    for step, global_batch in enumerate(whole.epoch(7)):
        shards = [list(r.epoch(7))[step] for r in ranks]
        index = [r.batch_indices(7)[step] for r in ranks]
        assert all(len(i) == 2 for i in index)
        assert len(set(np.concatenate(index))) == 6
        np.testing.assert_array_equal(np.concatenate(index), whole.batch_indices(7)[step])
        # The union of the shards is the global batch, augmentation included.
        for field in range(3):
            np.testing.assert_array_equal(
                np.concatenate([s[field] for s in shards]), global_batch[field]
            )


def test_uneven_last_batch_in_eval_mode_with_ranks():
    data = _data()
    ranks = [DeviceLoader.for_eval(data, np, 8, rank=r, world_size=4) for r in range(4)]
    per_rank = [[_ids(b) for b in r.epoch(0)] for r in ranks]
    assert all(len(p) == 3 for p in per_rank)  # same number of steps on every rank
    seen = np.concatenate([np.concatenate(p) for p in per_rank])
    assert sorted(seen) == list(range(N))
    # Last global batch holds 6 samples over 4 ranks: shares of 1 or 2, in order.
    last = np.concatenate([p[2] for p in per_rank])
    np.testing.assert_array_equal(last, np.arange(16, 22))


def test_eval_mode_keeps_data_order_and_every_sample():
    loader = DeviceLoader.for_eval(_data(), np, 5)
    assert len(loader) == 5
    for _ in range(2):  # the same order every epoch
        ids = np.concatenate([_ids(b) for b in loader])
        np.testing.assert_array_equal(ids, np.arange(N))


def test_no_weights_gives_none():
    batch = next(iter(DeviceLoader(_data(with_weights=False), np, 4)))
    assert batch.w is None


def test_normalize_values_and_layout():
    images = np.zeros((2, 3, 4, 3), np.uint8)
    images[..., 0], images[..., 1], images[..., 2] = 0, 255, 51
    out = normalize(images)
    assert out.shape == (2, 3, 3, 4) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(out[:, 0], (0 - 0.5) / 0.25)
    np.testing.assert_allclose(out[:, 1], (1 - 0.5) / 0.25)
    np.testing.assert_allclose(out[:, 2], (0.2 - 0.5) / 0.25, rtol=1e-6)
    per_channel = normalize(images, mean=(0.0, 0.5, 0.2), std=(1.0, 0.5, 0.1))
    np.testing.assert_allclose(per_channel[:, :, 0, 0], [[0.0, 1.0, 0.0]] * 2, atol=1e-6)
    # Float input in [0, 1] gives the same result as its uint8 original.
    np.testing.assert_allclose(normalize(images.astype(np.float32) / 255), out, atol=1e-6)


def test_loader_normalises_like_normalize():
    data = _pets_like()
    loader = DeviceLoader.for_eval(data, np, 4, mean=(0.4, 0.5, 0.6), std=0.3)
    batch = next(iter(loader))
    expected = normalize(data.images[:4], mean=(0.4, 0.5, 0.6), std=0.3)
    np.testing.assert_allclose(batch.x, expected, atol=1e-6)


def test_invalid_arguments():
    with pytest.raises(MinunetError, match="divisible"):
        DeviceLoader(_data(), np, 6, world_size=4)
    with pytest.raises(MinunetError):
        DeviceLoader(_data(), np, 4, rank=2, world_size=2)
    with pytest.raises(DataError):
        DeviceLoader(_data(), np, 64)


# ------------------------------------------------------------------------ crops


def native(sizes, channels=3) -> NativeSizeData:
    images = [RNG.integers(0, 256, (h, w, channels), dtype=np.uint8) for h, w in sizes]
    masks = [(np.arange(h * w).reshape(h, w) % 2).astype(np.uint8) for h, w in sizes]
    return NativeSizeData(images, masks, ["a", "b"])


def test_crop_mode_shapes_determinism_and_padding():
    data = native([(40, 50), (8, 9), (33, 33), (64, 20), (16, 16)])
    loader = DeviceLoader(data, np, 2, crop=16, seed=3, mean=0.0, std=1.0 / 255)
    assert len(loader) == 2 and loader.ignore_index == 255
    batches = list(loader.epoch(0))
    x, y, w = batches[0]
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.float32
    assert y.shape == (2, 16, 16) and y.dtype == np.int32 and w is None
    again = list(loader.epoch(0))
    assert all(np.array_equal(a.x, b.x) for a, b in zip(batches, again, strict=True))
    other = list(loader.epoch(1))
    assert not all(np.array_equal(a.x, b.x) for a, b in zip(batches, other, strict=True))
    # A crop is a window of its image (mean 0, std 1/255: x is the pixel value); the
    # padding of the small image mirrors it, and its mask padding is ignored.
    small = DeviceLoader(data.subset([1]), np, 1, crop=16, mean=0.0, std=1.0 / 255)
    xs, ys, _ = next(small.epoch(0))
    assert (ys[0, 8:, :] == 255).all() and (ys[0, :8, :9] != 255).all()
    np.testing.assert_allclose(xs[0, :, :8, :9], data.images[1].transpose(2, 0, 1), atol=1e-3)
    np.testing.assert_allclose(
        xs[0, :, 8:16, :9], data.images[1][::-1].transpose(2, 0, 1), atol=1e-3
    )
    # Two ranks split each global batch between them, as whole images do.
    whole = next(DeviceLoader(data, np, 2, crop=16, seed=3).epoch(0))
    r1 = next(DeviceLoader(data, np, 2, crop=16, seed=3, rank=1, world_size=2).epoch(0))
    assert np.array_equal(r1.x[0], whole.x[1])


def test_crop_mode_augments_weights_with_the_labels():
    data = native([(30, 30), (20, 25)])
    data.weights = [m.astype(np.float32) + 1 for m in data.masks]  # weight = label + 1
    loader = DeviceLoader(data, np, 2, crop=16, augment=AugmentConfig(scale=(0.5, 1.0)))
    x, y, w = next(loader.epoch(0))
    assert x.shape == (2, 3, 16, 16) and w.shape == (2, 16, 16)
    assert np.array_equal(w, y + 1)  # resampled with the same nearest-neighbour grid


def test_cupy_loader_matches_numpy(cp):
    """On real CuPy (a GPU) and on the strict stand-in (the ``cp`` fixture)."""
    data = _pets_like()
    augmented = AugmentConfig(scale=(0.6, 1.0), jitter=0.2)
    for augment, crop in [(None, None), (None, 5), (augmented, None), (augmented, 5)]:
        host = DeviceLoader(data, np, 4, augment=augment, seed=2, crop=crop)
        dev = DeviceLoader(data, cp, 4, augment=augment, seed=2, crop=crop)
        # Same order and crops on both backends (drawn on the host); augmentation differs.
        np.testing.assert_array_equal(host.order(1), dev.order(1))
        for a, b in zip(host.epoch(1), dev.epoch(1), strict=True):
            assert isinstance(b.x, cp.ndarray) and b.x.dtype == cp.float32
            if augment is None:
                np.testing.assert_allclose(a.x, cp.asnumpy(b.x), atol=1e-6)
                np.testing.assert_array_equal(a.y, cp.asnumpy(b.y))
                np.testing.assert_array_equal(a.w, cp.asnumpy(b.w))
            else:
                assert set(np.unique(cp.asnumpy(b.y))) <= {0, 1, 2, 255}


# ------------------------------------------------------------ unified modes, resume


def _square() -> SegmentationData:
    """``_data`` cut to 5 x 5 samples, so a 5 x 5 crop is the whole sample."""
    data = _data()
    return SegmentationData(
        images=data.images[:, :W].copy(),
        masks=data.masks[:, :W].copy(),
        weights=data.weights[:, :W].copy(),
        class_names=data.class_names,
    )


def test_crop_mode_with_the_sample_size_gives_whole_samples():
    data = _square()
    native = NativeSizeData(
        list(data.images), list(data.masks), data.class_names, weights=list(data.weights)
    )
    whole = DeviceLoader(data, np, 4, seed=2)
    for crops in (
        DeviceLoader(data, np, 4, seed=2, crop=W),
        DeviceLoader(native, np, 4, seed=2, crop=W),
    ):
        assert len(crops) == len(whole) == 5 and crops.ignore_index is None
        assert not np.array_equal(crops.order(0), whole.order(0))  # each mode its own stream
        for batch, index in zip(crops.epoch(0), crops.batch_indices(0), strict=True):
            np.testing.assert_array_equal(batch.x, normalize(data.images[index]))
            np.testing.assert_array_equal(batch.y, data.masks[index])
            np.testing.assert_array_equal(batch.w, data.weights[index])
    with pytest.raises(DataError, match="--crop N"):
        DeviceLoader(native, np, 4)


@pytest.mark.parametrize("crop", [None, 4])
def test_resume_inside_an_epoch_builds_no_skipped_batch(crop, monkeypatch):
    """epoch(e, start=k) gives batches k.. of epoch e bit for bit, and builds only those:
    no gather or crop, augmentation, normalisation or elastic warp for the skipped ones."""
    import minunet.data.loader as loader_module

    augment = AugmentConfig(scale=(0.6, 1.0), jitter=0.2)
    loader = DeviceLoader(_square(), np, 4, crop=crop, augment=augment, elastic=2.0, seed=3)
    full = list(loader.epoch(1))
    calls = {"crops": 0, "apply_augment": 0, "_normalize_with": 0, "elastic_deform": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    for name in ("apply_augment", "_normalize_with", "elastic_deform"):
        monkeypatch.setattr(loader_module, name, counted(name, getattr(loader_module, name)))
    monkeypatch.setattr(loader, "_crops", counted("crops", loader._crops))
    resumed = list(loader.epoch(1, start=2))
    built = len(full) - 2
    assert calls == {
        "crops": built if crop else 0,
        "apply_augment": built,
        "_normalize_with": built,
        "elastic_deform": built,
    }
    assert len(resumed) == built
    for a, b in zip(full[2:], resumed, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.w, b.w)
    assert list(loader.epoch(1, start=len(loader))) == []
