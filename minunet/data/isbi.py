"""The U-Net paper's own data: the ISBI 2012 EM segmentation challenge.

Thirty 512 x 512 grayscale slices of a Drosophila ventral nerve cord, imaged by serial
section transmission electron microscopy, with labels 255 for cell interior and 0 for
membrane. The challenge distributes them as two multi-page TIFF files, which Pillow
reads page by page (``ImageSequence``):

    ROOT/train-volume.tif   30 pages, the images
    ROOT/train-labels.tif   30 pages, the labels (0 membrane, 255 cell)

There is no stable public download URL (the files are published through the challenge
site and mirrors that come and go), so minunet does not download them: the user places
the two files in ROOT. Classes: 0 -> membrane, 1 -> cell (``mask_values`` [0, 255]).
The challenge's test volume has no public labels, so validation is a seeded hold-out of
the 30 training slices.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from minunet.data.cache import cache_folder, fingerprint
from minunet.data.dataset import SegmentationData
from minunet.data.imageio import image_array, resize_image, resize_mask
from minunet.data.splits import holdout
from minunet.data.weightmap import border_weights_cached
from minunet.errors import DataError

VOLUME_FILE = "train-volume.tif"
LABELS_FILE = "train-labels.tif"
CLASS_NAMES = ["membrane", "cell"]
MASK_VALUES = [0, 255]
WHERE = (
    "the ISBI 2012 EM segmentation challenge (https://imagej.net/events/isbi-2012-segmentation-"
    "challenge) publishes them; minunet cannot download them"
)


def read_pages(path: str | os.PathLike) -> list[np.ndarray]:
    """Every page of a multi-page TIFF as (H, W, 1) uint8 (``imageio.read_image`` rules)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found; {WHERE}")
    # open_image decodes one page and closes the file; the pages need it open.
    try:
        with Image.open(path) as im:
            return [image_array(page.copy()) for page in ImageSequence.Iterator(im)]
    except (UnidentifiedImageError, OSError, ValueError, EOFError, SyntaxError) as exc:
        raise DataError(
            f"{path}: cannot read every page of this TIFF ({exc}); download it again"
        ) from None


def read_label_pages(path: str | os.PathLike) -> list[np.ndarray]:
    """Every page of the label TIFF as (H, W) uint8 class labels (0 membrane, 1 cell)."""
    labels = []
    for i, page in enumerate(read_pages(path)):
        values = page[..., 0]
        odd = np.setdiff1d(np.unique(values), MASK_VALUES)
        if odd.size:
            raise DataError(
                f"{path}: page {i} has label values {odd[:5].tolist()} besides 0 (membrane) "
                "and 255 (cell); use the challenge's original train-labels.tif"
            )
        labels.append((values == 255).astype(np.uint8))
    return labels


def load_isbi2012(
    root: str | os.PathLike,
    image_size: int | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    border_weights: bool = False,
    w0: float = 10.0,
    sigma: float = 5.0,
    log: Callable[[str], None] | None = print,
) -> tuple[SegmentationData, SegmentationData]:
    """The 30 labelled ISBI 2012 slices as ``(train, val)``.

    image_size: N to resize to N x N (images bilinear, labels nearest), or None for the
    native 512 x 512. Images (N_s, H, W, 1) uint8, masks (N_s, H, W) with 0 membrane,
    1 cell. val_fraction / seed: the seeded hold-out (``splits.holdout``).
    border_weights: add the paper's weight map (cells as objects, ``w0``, ``sigma``),
    cached beside the files. For crop training, load at native size and give a split to
    ``DeviceLoader(..., crop=N)``.
    """
    root = Path(root)
    volume, labels = root / VOLUME_FILE, root / LABELS_FILE
    missing = [p.name for p in (volume, labels) if not p.is_file()]
    if missing:
        raise DataError(f"{root}: {' and '.join(missing)} not found; {WHERE}: put them in {root}")
    images, masks = read_pages(volume), read_label_pages(labels)
    if len(images) != len(masks) or any(
        im.shape[:2] != m.shape for im, m in zip(images, masks, strict=False)
    ):
        raise DataError(
            f"{volume} has {len(images)} pages of {images[0].shape[:2]} but {labels} has "
            f"{len(masks)} of {masks[0].shape}; both must come from the same challenge download"
        )
    if image_size is not None:
        size = (image_size, image_size)
        images = [resize_image(im, size) for im in images]
        masks = [resize_mask(m, size) for m in masks]
    if log is not None:
        log(f"found 2 classes: 0 -> 0 ({CLASS_NAMES[0]}), 255 -> 1 ({CLASS_NAMES[1]})")

    weights = None
    if border_weights:
        stats = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in (volume, labels)]
        stem = cache_folder(root, "isbi2012") / f"isbi2012-{fingerprint([stats, image_size])}"
        weights = border_weights_cached(masks, 2, [1], w0, sigma, cache_stem=stem)

    train_index, val_index = holdout(len(images), val_fraction, seed)
    pool = SegmentationData(
        images=np.stack(images),
        masks=np.stack(masks),
        class_names=list(CLASS_NAMES),
        mask_values=list(MASK_VALUES),
        weights=None if weights is None else np.stack(weights),
        names=[f"slice{i:02d}" for i in range(len(images))],
    )
    return pool.subset(train_index), pool.subset(val_index)
