"""The TFDS Pets loader: shapes, classes, and equality with the archive loader.

TFDS is optional (``pip install 'minunet[tfds]'``); the tests that need it skip without it.
No download happens: ``tfds.testing.mock_data`` replaces the data set, either with its own
random examples or with examples we build from known files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minunet.data import cache, pets
from minunet.data.pets_tfds import TFDS_NAME, load_pets_tfds
from minunet.errors import DataError

SIZE = 32
NAMES = ["Abyssinian_1", "Bengal_7", "beagle_3", "pug_12"]


def _tfds():
    return pytest.importorskip(
        "tensorflow_datasets", reason="tensorflow-datasets is not installed (minunet[tfds])"
    )


def test_without_tfds_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DataError, match=r"pip install 'minunet\[tfds\]'"):
        load_pets_tfds(SIZE)


@pytest.fixture
def pairs(tmp_path) -> tuple[Path, list[dict]]:
    """An extracted-layout folder and the TFDS examples of the same photos and trimaps.

    The photos are written losslessly (PNG under the .jpg name, as some release files are) so
    both loaders start from exactly the same pixels.
    """
    rng = np.random.default_rng(1)
    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    examples = []
    for name in NAMES:
        h, w = (int(v) for v in rng.integers(20, 60, size=2))
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        trimap = rng.integers(1, 4, size=(h, w), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", format="PNG")
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"{name}.png")
        examples.append(
            {
                "image": image,
                "label": 0,
                "species": 0,
                "file_name": f"{name}.jpg",
                "segmentation_mask": trimap[..., None],
                "head_bbox": np.zeros(4, np.float32),
            }
        )
    listing = "".join(f"{n} 1 1 1\n" for n in NAMES)
    (root / "annotations" / "trainval.txt").write_text(listing)
    (root / "annotations" / "test.txt").write_text(listing)
    return root, examples


def test_tfds_and_archive_loaders_give_identical_arrays(pairs, tmp_path, monkeypatch):
    tfds = _tfds()
    import tensorflow as tf

    root, examples = pairs

    def as_dataset(self, *args, **kwargs):
        signature = self.info.features.get_tensor_spec()
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=str(tmp_path / "tfds")):
        from_tfds = load_pets_tfds(SIZE, split="train")
    monkeypatch.setenv(cache.ENV_DATA_DIR, str(tmp_path / "cache"))
    from_files = pets.load_pets(root, SIZE, "trainval", download=False, progress=False)

    assert from_tfds.names == from_files.names == NAMES
    assert from_tfds.images.shape == (len(NAMES), SIZE, SIZE, 3)
    assert from_tfds.masks.shape == (len(NAMES), SIZE, SIZE)
    assert from_tfds.class_names == from_files.class_names
    assert from_tfds.mask_values == from_files.mask_values == [1, 2, 3]
    np.testing.assert_array_equal(from_tfds.images, from_files.images)
    np.testing.assert_array_equal(from_tfds.masks, from_files.masks)
    assert set(np.unique(from_tfds.masks)) == {0, 1, 2}


def test_stock_mock_data_with_invalid_masks_is_a_one_line_error(tmp_path):
    tfds = _tfds()
    # The stock mock draws mask values from 0..255, which no real trimap has.
    with tfds.testing.mock_data(num_examples=2, data_dir=str(tmp_path / "tfds")):
        with pytest.raises(DataError) as info:
            load_pets_tfds(SIZE, split="test")
    assert "\n" not in str(info.value) and TFDS_NAME in str(info.value)


def test_stock_mock_data_gives_square_rgb_images(tmp_path):
    tfds = _tfds()
    # With max_value=3 the random masks hold 0..3: clip them as a real trimap would be.
    with tfds.testing.mock_data(num_examples=3, max_value=3, data_dir=str(tmp_path / "tfds")):
        dataset = tfds.load(TFDS_NAME, split="train")
        raw = next(iter(tfds.as_numpy(dataset)))
    assert raw["image"].ndim == 3 and raw["image"].shape[-1] == 3
    assert raw["segmentation_mask"].shape[-1] == 1
    image, mask = pets.preprocess_pet(raw["image"], np.clip(raw["segmentation_mask"], 1, 3), SIZE)
    assert image.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
    assert mask.max() <= 2
