"""The decoded-data cache: a full disk keeps the last good cache, an old format is rebuilt."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from PIL import Image

from minunet.data import cache
from minunet.data.folder import load_folder


def make_pool(root, n=3):
    rng = np.random.default_rng(0)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(
            root / "images" / f"{i}.png"
        )
        Image.fromarray((np.arange(30).reshape(6, 5) % 2 * 255).astype(np.uint8)).save(
            root / "masks" / f"{i}.png"
        )
    return root


def quiet(root):
    return load_folder(root, 4, val_fraction=0.0, log=None)[0]


def savez_on_a_full_disk(file, **arrays):
    """np.savez as a full disk runs it: part of the file is written, then it fails."""
    file.write(b"PK\x03\x04 half a zip")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def full_disk(monkeypatch):
    monkeypatch.setattr(np, "savez", savez_on_a_full_disk)


def test_a_full_disk_keeps_the_previous_cache_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    assert cache.save_cache(path, {"a": np.arange(3)}, "k1")
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez", savez_on_a_full_disk)
    with pytest.warns(UserWarning, match="No space left on device.*previous file is kept"):
        assert not cache.save_cache(path, {"a": np.arange(5)}, "k1")
    assert path.read_bytes() == before  # untouched, and no temporary file left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
    monkeypatch.undo()
    np.testing.assert_array_equal(cache.load_cache(path, "k1", ["a"])["a"], np.arange(3))


def test_a_full_disk_while_loading_a_folder_costs_only_time(tmp_path, full_disk):
    root = make_pool(tmp_path / "data")
    with pytest.warns(UserWarning, match="cannot write the data cache.*nothing was left behind"):
        data = quiet(root)
    assert len(data) == 3 and data.images.shape == (3, 4, 4, 3)
    folder = root / cache.CACHE_DIR
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_failed_rewrite_keeps_the_stale_cache_files(tmp_path, monkeypatch):
    root = make_pool(tmp_path / "data")
    quiet(root)
    (old,) = (root / cache.CACHE_DIR).glob("*.npz")
    before = old.read_bytes()
    # A changed image is a new key; its cache cannot be written, so the old one stays.
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(root / "images" / "0.png")
    monkeypatch.setattr(np, "savez", savez_on_a_full_disk)
    with pytest.warns(UserWarning, match="No space left on device"):
        data = quiet(root)
    assert (data.images[data.names.index("0")] == 0).all()
    assert list((root / cache.CACHE_DIR).glob("*.npz")) == [old] and old.read_bytes() == before


@pytest.mark.parametrize("old_format", [None, cache.CACHE_FORMAT - 1])
def test_a_cache_of_an_older_minunet_is_rebuilt(tmp_path, old_format):
    root = make_pool(tmp_path / "data")
    first = quiet(root)
    (path,) = (root / cache.CACHE_DIR).glob("*.npz")
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    # The same key and names, but another format (or none: before formats existed) and
    # arrays that mean something else: they must not be read as they are.
    arrays["image"] = np.zeros_like(arrays["image"])
    if old_format is None:
        del arrays["_format"]
    else:
        arrays["_format"] = np.array(old_format)
    np.savez(path, **arrays)
    assert cache.load_cache(path, str(arrays["_key"]), ["image"]) is None
    again = quiet(root)
    np.testing.assert_array_equal(again.images, first.images)
    with np.load(path) as npz:  # rewritten in the current format
        assert int(npz["_format"]) == cache.CACHE_FORMAT
        np.testing.assert_array_equal(npz["image"], first.images)


def test_load_cache_refuses_other_keys_and_missing_arrays(tmp_path):
    path = tmp_path / "c.npz"
    cache.save_cache(path, {"a": np.arange(3)}, "k1")
    assert cache.load_cache(path, "k2", ["a"]) is None
    assert cache.load_cache(path, "k1", ["a", "b"]) is None
    assert set(cache.load_cache(path, "k1", ["a"])) == {"a"}
    path.write_bytes(path.read_bytes()[:40])  # truncated by a killed writer
    assert cache.load_cache(path, "k1", ["a"]) is None
    assert cache.load_cache(tmp_path / "absent.npz", "k1", []) is None
