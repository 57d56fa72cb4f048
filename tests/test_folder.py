"""The folder loader: every layout, image and mask format, each error, the cache, crops."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minunet.data.class_weights import class_weights
from minunet.data.dataset import NativeSizeData, SegmentationData
from minunet.data.folder import load_folder
from minunet.data.imageio import read_image
from minunet.errors import DataError

RNG = np.random.default_rng(0)


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kwargs) if mode else Image.fromarray(array).save(
        path, **kwargs
    )
    return path


def rgb(h: int = 12, w: int = 10) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def gray(h: int = 12, w: int = 10) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def binary(h: int = 12, w: int = 10, high: int = 255) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 3 :, w // 2 :] = high
    return m


def make_pool(root: Path, n: int = 5, *, high: int = 255, image=rgb, ext: str = ".png") -> Path:
    for i in range(n):
        save(root / "images" / f"{i}{ext}", image())
        save(root / "masks" / f"{i}.png", binary(high=high))
    return root


def quiet(*args, **kwargs):
    return load_folder(*args, log=None, **kwargs)


# --------------------------------------------------------------------------- layouts


def test_holdout_layout_binary_0_255(tmp_path, capsys):
    make_pool(tmp_path, n=10)
    train, val = load_folder(tmp_path, 8, val_fraction=0.2, seed=1)
    assert isinstance(train, SegmentationData)
    assert (len(train), len(val)) == (8, 2)
    assert train.images.shape == (8, 8, 8, 3) and train.masks.shape == (8, 8, 8)
    assert set(np.unique(train.masks)) == {0, 1}
    assert train.mask_values == [0, 255] and train.class_names == ["class 0", "class 1"]
    assert sorted(train.names + val.names) == [str(i) for i in range(10)]
    assert "found 2 classes: 0 -> 0, 255 -> 1" in capsys.readouterr().out
    # The same seed gives the same hold-out; another seed another one.
    assert quiet(tmp_path, 8, val_fraction=0.2, seed=1)[1].names == val.names
    others = {tuple(quiet(tmp_path, 8, val_fraction=0.2, seed=s)[1].names) for s in range(6)}
    assert len(others) > 1


def test_explicit_split_layout_wins(tmp_path):
    make_pool(tmp_path / "train", n=3)
    make_pool(tmp_path / "val", n=2)
    make_pool(tmp_path, n=4)  # ROOT/images is ignored once ROOT/train exists
    train, val = quiet(tmp_path, 6, val_fraction=0.5)
    assert (len(train), len(val)) == (3, 2)


def test_train_without_val_is_an_error(tmp_path):
    make_pool(tmp_path / "train", n=2)
    with pytest.raises(DataError, match="val"):
        quiet(tmp_path, 6)


def test_binary_0_1_and_16_bit_tiff_grayscale(tmp_path):
    for i in range(3):
        image16 = (RNG.integers(0, 65536, (12, 10))).astype(np.uint16)
        save(tmp_path / "images" / f"s{i}.tif", image16)
        save(tmp_path / "masks" / f"s{i}.png", binary(high=1))
    train, val = quiet(tmp_path, None, val_fraction=0.0)
    assert isinstance(train, NativeSizeData) and len(val) == 0
    assert train.in_channels == 1 and train.mask_values == [0, 1]
    raw = np.asarray(Image.open(tmp_path / "images" / "s0.tif")).astype(np.int64)
    expected = ((raw * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(train.images[train.names.index("s0")][..., 0], expected)
    assert np.array_equal(train.masks[0], binary(high=1))


def test_palette_masks_gif_mask_suffix_and_jpeg_images(tmp_path):
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    for name in ("a", "b"):
        save(tmp_path / "images" / f"{name}.jpg", rgb())
        m = Image.fromarray((np.arange(120).reshape(12, 10) % 3).astype(np.uint8), mode="P")
        m.putpalette(palette)
        (tmp_path / "masks").mkdir(exist_ok=True)
        m.save(tmp_path / "masks" / f"{name}_mask.gif")
    train, _ = quiet(tmp_path, None, val_fraction=0.0, mask_suffix="_mask")
    assert train.mask_values == [0, 1, 2]  # the palette index is the class
    assert np.array_equal(train.masks[0], np.arange(120).reshape(12, 10) % 3)


def test_rgb_masks_with_classes_json(tmp_path):
    colours = {"void": [0, 0, 0], "road": [128, 64, 128], "car": [0, 0, 142]}
    (tmp_path / "classes.json").write_text(json.dumps(colours))
    m = np.zeros((12, 10, 3), np.uint8)
    m[4:, :] = colours["car"]
    m[:2, :] = colours["road"]
    save(tmp_path / "images" / "x.png", rgb())
    save(tmp_path / "masks" / "x.png", m)
    train, _ = quiet(tmp_path, None, val_fraction=0.0)
    assert train.class_names == ["void", "road", "car"]
    assert train.mask_values == [0, 128 * 65536 + 64 * 256 + 128, 142]
    assert set(np.unique(train.masks[0])) == {0, 1, 2}
    assert (train.masks[0][4:] == 2).all() and (train.masks[0][:2] == 1).all()


def test_colour_not_in_classes_json(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"bg": [0, 0, 0], "fg": [255, 0, 0]}))
    m = np.zeros((12, 10, 3), np.uint8)
    m[0, 0] = (0, 255, 0)
    save(tmp_path / "images" / "x.png", rgb())
    save(tmp_path / "masks" / "x.png", m)
    with pytest.raises(DataError, match=r"colours not in .*classes.json.*\(0, 255, 0\) in x.png"):
        quiet(tmp_path, None)


def test_rgb_mask_without_classes_json(tmp_path):
    save(tmp_path / "images" / "x.png", rgb())
    save(tmp_path / "masks" / "x.png", rgb())
    with pytest.raises(DataError, match="no classes.json"):
        quiet(tmp_path, None)


def test_classes_json_names_index_masks(tmp_path):
    make_pool(tmp_path, n=2)
    (tmp_path / "classes.json").write_text(json.dumps({"background": 0, "object": 255}))
    train, _ = quiet(tmp_path, 8, val_fraction=0.0)
    assert train.class_names == ["background", "object"] and train.mask_values == [0, 255]


def test_rgba_and_grayscale_mix_gives_three_channels(tmp_path):
    rgba = np.dstack([rgb(), np.full((12, 10), 100, np.uint8)])
    save(tmp_path / "images" / "a.png", rgba)
    save(tmp_path / "images" / "b.bmp", gray())
    for n in "ab":
        save(tmp_path / "masks" / f"{n}.png", binary())
    train, _ = quiet(tmp_path, None, val_fraction=0.0)
    assert train.in_channels == 3
    b = train.images[train.names.index("b")]
    assert np.array_equal(b[..., 0], b[..., 2])  # grayscale repeated into RGB
    assert np.array_equal(train.images[train.names.index("a")], rgba[..., :3])


def test_all_grayscale_gives_one_channel(tmp_path):
    make_pool(tmp_path, n=3, image=gray)
    save(tmp_path / "images" / "3.png", np.repeat(gray()[..., None], 3, axis=2))  # R = G = B
    save(tmp_path / "masks" / "3.png", binary())
    train, _ = quiet(tmp_path, 8, val_fraction=0.0)
    assert train.in_channels == 1


def test_exact_stem_matching_and_junk_files(tmp_path):
    save(tmp_path / "images" / "1.png", rgb())
    save(tmp_path / "images" / "11.png", rgb())
    save(tmp_path / "masks" / "1.png", binary())
    save(tmp_path / "masks" / "11.png", binary())
    for junk in ("._1.png", ".DS_Store", "Thumbs.db", ".hidden.png"):
        (tmp_path / "images" / junk).write_bytes(b"\x00junk")
        (tmp_path / "masks" / junk).write_bytes(b"\x00junk")
    (tmp_path / "images" / "README.txt").write_text("not an image")
    train, _ = quiet(tmp_path, 8, val_fraction=0.0)
    assert sorted(train.names) == ["1", "11"]


def test_prefix_is_not_a_match(tmp_path):
    save(tmp_path / "images" / "1.png", rgb())
    save(tmp_path / "masks" / "11.png", binary())
    with pytest.raises(DataError, match=r"1 images in .*have no mask.*\(1.png\)"):
        quiet(tmp_path, 8)


def test_masks_without_images_lists_count_and_first_five(tmp_path):
    make_pool(tmp_path, n=1)
    for i in range(7):
        save(tmp_path / "masks" / f"extra{i}.png", binary())
    with pytest.raises(DataError) as err:
        quiet(tmp_path, 8)
    message = str(err.value)
    assert "7 masks" in message and "extra4.png" in message and "extra5.png" not in message
    assert "(2 more)" in message and "\n" not in message


def test_mask_size_differs(tmp_path):
    save(tmp_path / "images" / "a.png", rgb(12, 10))
    save(tmp_path / "masks" / "a.png", binary(10, 12))
    with pytest.raises(DataError, match=r"mask .*a.png is 12x10 but image .*a.png is 10x12"):
        quiet(tmp_path, 8)


def test_more_values_than_declared_classes(tmp_path):
    save(tmp_path / "images" / "a.png", rgb())
    save(tmp_path / "masks" / "a.png", (np.arange(120).reshape(12, 10) % 5).astype(np.uint8))
    with pytest.raises(DataError, match="5 distinct values.*3 classes were declared"):
        quiet(tmp_path, 8, num_classes=3)


def test_num_classes_keeps_index_values(tmp_path):
    make_pool(tmp_path, n=2, high=2)  # values 0 and 2 only, 3 classes declared
    train, _ = quiet(tmp_path, 8, num_classes=3, val_fraction=0.0)
    assert train.num_classes == 3 and set(np.unique(train.masks)) == {0, 2}


def test_ignore_index(tmp_path):
    for i in range(2):
        m = binary(high=1)
        m[0, :] = 255  # a 'void' border
        save(tmp_path / "images" / f"{i}.png", rgb())
        save(tmp_path / "masks" / f"{i}.png", m)
    train, _ = quiet(tmp_path, None, ignore_index=255, val_fraction=0.0)
    assert train.ignore_index == 255 and train.mask_values == [0, 1]
    assert (train.masks[0][0] == 255).all() and set(np.unique(train.masks[0][1:])) == {0, 1}


@pytest.mark.parametrize("where", ["missing", "empty", "no images dir"])
def test_missing_or_empty_folder(tmp_path, where):
    if where == "empty":
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
    elif where == "no images dir":
        (tmp_path / "other").mkdir()
    root = tmp_path / "nope" if where == "missing" else tmp_path
    with pytest.raises(DataError, match="expected ROOT/images/ \\+ ROOT/masks/"):
        quiet(root, 8)


def test_unreadable_file(tmp_path):
    make_pool(tmp_path, n=2)
    (tmp_path / "images" / "1.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"1.png: cannot decode this image"):
        quiet(tmp_path, 8, cache=False)


def test_every_error_is_one_line(tmp_path):
    save(tmp_path / "images" / "a.png", rgb())
    with pytest.raises(DataError) as err:
        quiet(tmp_path, 8)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- cache


def test_cache_is_used_then_invalidated_and_rebuilt(tmp_path):
    make_pool(tmp_path, n=3)
    first, _ = quiet(tmp_path, 8, val_fraction=0.0)
    caches = list((tmp_path / ".minunet-cache").glob("*.npz"))
    assert len(caches) == 1
    # A cache hit: same arrays without decoding (a corrupted image would fail otherwise).
    again, _ = quiet(tmp_path, 8, val_fraction=0.0)
    assert np.array_equal(first.images, again.images)
    # A corrupt cache file is rebuilt.
    caches[0].write_bytes(b"garbage")
    rebuilt, _ = quiet(tmp_path, 8, val_fraction=0.0)
    assert np.array_equal(first.images, rebuilt.images)
    # A changed mask is a new key; the stale cache is removed.
    path = tmp_path / "masks" / "0.png"
    save(path, np.zeros((12, 10), np.uint8))
    os.utime(path, ns=(1, 1))
    changed, _ = quiet(tmp_path, 8, val_fraction=0.0)
    assert changed.masks[changed.names.index("0")].max() == 0
    assert len(list((tmp_path / ".minunet-cache").glob("*.npz"))) == 1


def test_cache_falls_back_when_root_is_not_writable(tmp_path, monkeypatch):
    import minunet.data.cache as cache

    root = make_pool(tmp_path / "data", n=2)
    monkeypatch.setenv("MINUNET_DATA", str(tmp_path / "elsewhere"))
    # Tests may run as root, who can write anywhere: pretend the data folder is read-only.
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    quiet(root, 8)
    assert list((tmp_path / "elsewhere").rglob("*.npz"))


def test_native_size_cache_and_border_weights(tmp_path):
    for i, (h, w) in enumerate([(20, 16), (14, 30)]):
        m = np.zeros((h, w), np.uint8)
        m[2:6, 2:6] = 1
        m[2:6, 8:12] = 1  # two objects 2 px apart
        save(tmp_path / "images" / f"{i}.png", gray(h, w))
        save(tmp_path / "masks" / f"{i}.png", m)
    train, _ = quiet(tmp_path, None, val_fraction=0.0, border_weights=True)
    assert [m.shape for m in train.masks] == [(20, 16), (14, 30)]
    assert [w.shape for w in train.weights] == [(20, 16), (14, 30)]
    assert train.weights[0][4, 7] > 5  # the gap between the objects
    again, _ = quiet(tmp_path, None, val_fraction=0.0, border_weights=True)
    assert len(list((tmp_path / ".minunet-cache").glob("*-w*.npz"))) == 1
    sized, _ = quiet(tmp_path, 16, val_fraction=0.0, border_weights=True)
    assert sized.weights.shape == (2, 16, 16) and sized.weights.dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(train.weights, again.weights, strict=True))


# --------------------------------------------------------------------------- weights, decoding


def test_class_weights():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :1] = 1  # 4 of 16 pixels are class 1
    data = SegmentationData(np.zeros((1, 4, 4, 1), np.uint8), masks, ["a", "b", "c"])
    w = class_weights(data)
    assert w[2] == 0  # absent
    np.testing.assert_allclose(w[:2] * [12 / 16, 4 / 16], [0.5, 0.5])  # median 0.5 / freq
    np.testing.assert_allclose(class_weights(data, "1,2.5,0"), [1, 2.5, 0])
    with pytest.raises(DataError, match="3 comma-separated"):
        class_weights(data, "1,2")


def test_read_image_16_bit_scaling(tmp_path):
    path = save(tmp_path / "x.tif", np.array([[0, 257, 65535]], np.uint16))
    assert read_image(path)[..., 0].tolist() == [[0, 1, 255]]
