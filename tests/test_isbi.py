"""ISBI 2012: multi-page TIFF reading, the class mapping, missing files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minunet.data.isbi import load_isbi2012, read_pages
from minunet.errors import DataError

PAGES, SIZE = 6, 24


def write_stack(path, pages: list[np.ndarray]) -> None:
    first, *rest = [Image.fromarray(p) for p in pages]
    first.save(path, save_all=True, append_images=rest)


def fake_isbi(root, labels=None):
    rng = np.random.default_rng(0)
    volume = [rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8) for _ in range(PAGES)]
    if labels is None:
        labels = []
        for i in range(PAGES):
            lab = np.full((SIZE, SIZE), 255, np.uint8)
            lab[:, 10 + i % 3] = 0  # a membrane line between two cells
            lab[8, :] = 0
            labels.append(lab)
    write_stack(root / "train-volume.tif", volume)
    write_stack(root / "train-labels.tif", labels)
    return volume, labels


def test_multi_page_tiff_read(tmp_path):
    volume, _ = fake_isbi(tmp_path)
    pages = read_pages(tmp_path / "train-volume.tif")
    assert len(pages) == PAGES
    assert all(np.array_equal(p[..., 0], v) for p, v in zip(pages, volume, strict=True))


def test_load_classes_split_and_resize(tmp_path, capsys):
    _, labels = fake_isbi(tmp_path)
    train, val = load_isbi2012(tmp_path, val_fraction=0.34, seed=0)
    assert (len(train), len(val)) == (4, 2)
    assert train.images.shape == (4, SIZE, SIZE, 1)
    assert train.class_names == ["membrane", "cell"] and train.mask_values == [0, 255]
    i = int(train.names[0].removeprefix("slice"))
    assert np.array_equal(train.masks[0], labels[i] == 255)  # 255 -> 1 (cell), 0 -> 0
    assert "0 -> 0 (membrane), 255 -> 1 (cell)" in capsys.readouterr().out
    small, _ = load_isbi2012(tmp_path, 16, val_fraction=0.0, log=None)
    assert small.images.shape == (PAGES, 16, 16, 1) and small.masks.shape == (PAGES, 16, 16)


def test_border_weights_are_highest_on_the_membrane(tmp_path):
    fake_isbi(tmp_path)
    train, _ = load_isbi2012(tmp_path, val_fraction=0.0, border_weights=True, log=None)
    w = train.weights[0]
    assert w.shape == (SIZE, SIZE) and w.dtype == np.float32
    membrane = train.masks[0] == 0
    assert w[membrane].min() > w[~membrane].max()
    assert list((tmp_path / ".minunet-cache").glob("isbi2012-*.npz"))


def test_missing_files_say_where_the_data_is(tmp_path):
    with pytest.raises(DataError, match="train-volume.tif and train-labels.tif not found.*ISBI"):
        load_isbi2012(tmp_path)


def test_odd_label_values(tmp_path):
    labels = [np.full((SIZE, SIZE), 128, np.uint8)] * PAGES
    fake_isbi(tmp_path, labels)
    with pytest.raises(DataError, match=r"label values \[128\]"):
        load_isbi2012(tmp_path, log=None)


def test_page_counts_differ(tmp_path):
    _, labels = fake_isbi(tmp_path)
    write_stack(tmp_path / "train-labels.tif", labels[:3])
    with pytest.raises(DataError, match="6 pages .* 3 of"):
        load_isbi2012(tmp_path, log=None)


def test_valid_padding_trains_on_crops_and_validates_whole_slices(tmp_path):
    """The paper's setting: a valid-padding net trained on crops, scored on whole slices
    (24 px, which the net cannot take as they are: validation tiles them)."""
    from minunet.data.sources import DataOptions
    from minunet.train import TrainConfig, train

    fake_isbi(tmp_path)
    cfg = TrainConfig(
        data=DataOptions(data="isbi2012", data_dir=str(tmp_path), val_fraction=0.34),
        crop=44,
        padding="valid",
        depth=2,
        base_channels=4,
        epochs=1,
        batch_size=2,
        out=str(tmp_path / "run"),
        progress=False,
    )
    metrics = train(cfg, log=lambda *_: None)
    assert 0.0 <= metrics["miou"] <= 1.0
    assert (tmp_path / "run" / "best.npz").is_file()
