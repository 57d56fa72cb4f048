"""Issue 8's bar as a user meets it: train on a folder with no flag beyond the data ones,
then predict new images of another size and get masks in the user's own values."""

import numpy as np
from helpers_cli import run_python
from PIL import Image

SMALL = [
    "--image-size",
    "32",
    "--base-channels",
    "4",
    "--depth",
    "2",
    "--batch-size",
    "4",
    "--epochs",
    "1",
    "--no-progress",
]


def blobs(rng, h, w):
    """A random image with a bright disc, and the disc's mask."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(4, 8)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = rng.integers(0, 100, (h, w)).astype(np.uint8)
    image[disc] += 120
    return image, disc


def test_grayscale_images_with_0_255_masks(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    for i in range(10):
        image, disc = blobs(rng, 40 + i, 36)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"{i}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(
            tmp_path / "data" / "masks" / f"{i}.png"
        )
    r = run_python(
        "-m",
        "minunet.train",
        "--data",
        "folder",
        "--data-dir",
        str(tmp_path / "data"),
        *SMALL,
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stderr
    assert "found 2 classes: 0 -> 0, 255 -> 1" in r.stdout
    new, _ = blobs(rng, 70, 51)
    Image.fromarray(new).save(tmp_path / "new.tif")
    r = run_python(
        "-m",
        "minunet.predict",
        "--checkpoint",
        str(tmp_path / "run" / "best.npz"),
        str(tmp_path / "new.tif"),
        "--out",
        str(tmp_path / "pred"),
    )
    assert r.returncode == 0, r.stderr
    mask = Image.open(tmp_path / "pred" / "new_mask.png")
    assert mask.mode == "L" and mask.size == (51, 70)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_rgb_images_with_palette_masks(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir()
        for i in range(8 if split == "train" else 3):
            image, disc = blobs(rng, 48, 48)
            rgb = np.stack([image, image // 2, 255 - image], axis=-1)
            Image.fromarray(rgb).save(root / split / "images" / f"{split}{i}.jpg")
            labels = disc.astype(np.uint8) * 2  # palette indices 0 and 2
            mask = Image.fromarray(labels, mode="P")
            mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
            mask.save(root / split / "masks" / f"{split}{i}.png")
    r = run_python(
        "-m",
        "minunet.train",
        "--data",
        "folder",
        "--data-dir",
        str(root),
        *SMALL,
        "--out",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stderr
    assert "found 2 classes" in r.stdout
    Image.fromarray(rng.integers(0, 255, (29, 61, 3), np.uint8)).save(tmp_path / "x.png")
    r = run_python(
        "-m",
        "minunet.predict",
        "--checkpoint",
        str(tmp_path / "run" / "best.npz"),
        str(tmp_path / "x.png"),
        "--out",
        str(tmp_path / "pred"),
    )
    assert r.returncode == 0, r.stderr
    mask = np.asarray(Image.open(tmp_path / "pred" / "x_mask.png"))
    assert mask.shape == (29, 61) and set(np.unique(mask)) <= {0, 2}
