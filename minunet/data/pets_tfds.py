"""Oxford-IIIT Pets through TensorFlow Datasets, as the seed notebook loaded it.

The notebook did ``dataset, info = tfds.load('oxford_iiit_pet:4.*.*', with_info=True)``. This
loader does the same (one split at a time), then hands every example to the SAME
preprocessing as the archive loader (``pets.preprocess_pet``: resize with imageio.py,
trimap minus 1), so both sources give identical arrays for identical files.

TFDS calls the official ``trainval`` list "train" (3,680 images) and ``test`` "test" (3,669).
TensorFlow is large and optional: it is imported only when this loader runs
(``pip install 'minunet[tfds]'``).
"""

from __future__ import annotations

import os

import numpy as np

from minunet.data.dataset import PETS_CLASS_NAMES, SegmentationData
from minunet.data.pets import PETS_MASK_VALUES, preprocess_pet
from minunet.errors import DataError

TFDS_NAME = "oxford_iiit_pet:4.*.*"


def load_pets_tfds(
    image_size: int = 128, split: str = "train", data_dir: str | os.PathLike | None = None
) -> SegmentationData:
    """One TFDS split of Oxford-IIIT Pets, resized to ``image_size`` squares.

    split:    a TFDS split string: "train" (= official trainval), "test", or a slice such as
              "train[:10%]"
    data_dir: TFDS's data folder (None: TFDS's default, ``~/tensorflow_datasets``)
    returns:  images (N, S, S, 3) uint8 RGB, masks (N, S, S) uint8 in {0 pet, 1 background,
              2 outline}, names = the file stems, S = image_size
    """
    # TensorFlow prints pages of start-up logs; keep warnings and errors only.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "pets-tfds needs tensorflow-datasets: pip install 'minunet[tfds]'"
        ) from None

    try:
        dataset, _info = tfds.load(
            TFDS_NAME,
            split=split,
            with_info=True,
            data_dir=None if data_dir is None else os.fspath(data_dir),
        )
    except Exception as exc:  # TFDS raises many kinds (network, disk, unknown split)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"tfds could not load {TFDS_NAME} split {split!r} ({reason}); check the network "
            "and the split name, or use the archive loader (--data pets)"
        ) from exc

    images, masks, names = [], [], []
    for example in tfds.as_numpy(dataset):
        name = example["file_name"].decode("utf-8", "replace").removesuffix(".jpg")
        trimap = example["segmentation_mask"]  # (H, W, 1) uint8, values 1, 2, 3
        if trimap.size and (trimap.min() < 1 or trimap.max() > 3):
            raise DataError(
                f"tfds {TFDS_NAME} example {name!r}: mask values outside 1, 2, 3; delete the "
                "TFDS copy (data_dir) and let it download again"
            )
        image = example["image"]  # (H, W, 3) uint8
        if image.shape[-1] == 1:  # as Pillow's convert("RGB") does for grayscale
            image = np.repeat(image, 3, axis=-1)
        image, mask = preprocess_pet(image, trimap, image_size)
        images.append(image)
        masks.append(mask)
        names.append(name)
    if not images:
        raise DataError(f"tfds {TFDS_NAME} split {split!r} is empty; check the split name")

    return SegmentationData(
        images=np.stack(images),
        masks=np.stack(masks),
        class_names=list(PETS_CLASS_NAMES),
        mask_values=list(PETS_MASK_VALUES),
        names=names,
    )
