"""One entry point from a ``--data`` name to the training, validation and test splits.

``train``, ``evaluate`` and ``tune`` all go through ``load_splits``, so every command
accepts the same sources with the same flags:

    synthetic   the offline toy pets (no download)
    pets        Oxford-IIIT Pets from the official archives (or an extracted folder)
    pets-tfds   Oxford-IIIT Pets through tensorflow-datasets, as in the original notebook
    folder      your own images and masks
    isbi2012    the U-Net paper's EM stack (train-volume.tif, train-labels.tif)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from minunet.data.splits import holdout
from minunet.errors import DataError

SOURCES = ("synthetic", "pets", "pets-tfds", "folder", "isbi2012")


@dataclass
class DataOptions:
    """The data flags shared by train, evaluate and tune."""

    data: str = "synthetic"
    data_dir: str | None = None
    image_size: int | None = 128
    seed: int = 0
    val_fraction: float = 0.05
    train_size: int = 400  # synthetic only
    val_size: int = 64  # synthetic only
    download: bool = True  # pets only
    verify: bool = True  # pets only
    base_url: str | None = None  # pets only
    mask_suffix: str = ""  # folder only
    ignore_index: int | None = None  # folder only
    num_classes: int | None = None  # folder only
    border_weights: bool = False  # folder / isbi2012
    limit: int | None = None  # pets test at native size: the first N images only
    progress: bool = True  # progress bars while downloading and decoding


def load_splits(opts: DataOptions, split: str = "train") -> tuple[Any, Any]:
    """``split="train"``: (training, validation). ``split="test"``: (test, None).

    Returns ``SegmentationData``, or the native-size ``NativeSizeData`` when
    ``image_size`` is None (folder and isbi2012; pets for its test split).
    """
    if opts.data not in SOURCES:
        raise DataError(f"unknown data source {opts.data!r}: choose one of {', '.join(SOURCES)}")
    size = opts.image_size
    native_pets_test = opts.data == "pets" and split == "test" and size is None
    if opts.data in ("synthetic", "pets", "pets-tfds") and size is None and not native_pets_test:
        raise DataError(f"--data {opts.data} needs --image-size (--crop is for folder/isbi2012)")
    if opts.data == "synthetic":
        from minunet.data.synthetic import synthetic_splits

        train, val = synthetic_splits(opts.train_size, opts.val_size, size, opts.seed)
        return (val, None) if split == "test" else (train, val)
    if opts.data == "pets":
        from minunet.data.pets import load_pets, pets_splits

        fetch = dict(
            download=opts.download,
            verify=opts.verify,
            base_url=opts.base_url,
            progress=opts.progress,
        )
        if native_pets_test:  # full-resolution evaluation
            from minunet.data.pets import load_pets_native

            return load_pets_native(opts.data_dir, "test", opts.limit, **fetch), None
        if split == "test":
            return load_pets(opts.data_dir, size, "test", **fetch), None
        return pets_splits(opts.data_dir, size, opts.val_fraction, opts.seed, **fetch)
    if opts.data == "pets-tfds":
        from minunet.data.pets_tfds import load_pets_tfds

        if split == "test":
            return load_pets_tfds(size, "test", opts.data_dir), None
        pool = load_pets_tfds(size, "train", opts.data_dir)
        train_index, val_index = holdout(len(pool), opts.val_fraction, opts.seed)
        return pool.subset(train_index), pool.subset(val_index)
    if opts.data_dir is None:
        raise DataError(f"--data {opts.data} needs --data-dir pointing at the data folder")
    # The options both loaders below take: the validation split and the border weights.
    split_options = dict(
        val_fraction=opts.val_fraction, seed=opts.seed, border_weights=opts.border_weights
    )
    if opts.data == "folder":
        from minunet.data.folder import load_folder

        train, val = load_folder(
            opts.data_dir,
            size,
            mask_suffix=opts.mask_suffix,
            ignore_index=opts.ignore_index,
            num_classes=opts.num_classes,
            **split_options,
        )
    else:
        from minunet.data.isbi import load_isbi2012

        train, val = load_isbi2012(opts.data_dir, size, **split_options)
    if split == "test":
        return val, None
    return train, val


def load_native_val(opts: DataOptions) -> Any:
    """The validation split of ``load_splits(opts)``, the same samples in the same order,
    at native resolution (``NativeSizeData``), for scoring a net trained on resized
    images against the masks as the user has them.

    None where the resized split is all there is: synthetic data is drawn at
    ``image_size`` (its native size), and pets-tfds is read resized. Also None when
    ``image_size`` is None (the split is native already).
    """
    if opts.image_size is None or opts.data in ("synthetic", "pets-tfds"):
        return None
    if opts.data == "pets":
        from minunet.data.pets import pets_val_native

        return pets_val_native(
            opts.data_dir,
            opts.val_fraction,
            opts.seed,
            download=opts.download,
            verify=opts.verify,
            base_url=opts.base_url,
            progress=opts.progress,
        )
    if opts.data == "folder":
        from minunet.data.folder import load_folder

        return load_folder(
            opts.data_dir,
            None,
            val_fraction=opts.val_fraction,
            seed=opts.seed,
            mask_suffix=opts.mask_suffix,
            ignore_index=opts.ignore_index,
            num_classes=opts.num_classes,
            log=None,
        )[1]
    from minunet.data.isbi import load_isbi2012

    return load_isbi2012(opts.data_dir, None, val_fraction=opts.val_fraction, seed=opts.seed)[1]
