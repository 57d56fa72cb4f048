"""Train on your own data: a folder of images and masks, read into ``SegmentationData``.

Two layouts are understood (``ROOT`` is the folder the user names):

* ``ROOT/images/`` + ``ROOT/masks/``: one pool; a seeded random ``val_fraction`` of it is
  held out for validation.
* ``ROOT/train/{images,masks}`` + ``ROOT/val/{images,masks}``: an explicit split, used
  whenever ``ROOT/train`` exists.

An image and its mask are paired by exact file stem: ``images/NAME.jpg`` goes with
``masks/NAME<mask_suffix>.<any extension>`` (``mask_suffix="_mask"`` for the Carvana-style
``NAME_mask.gif``). Never by prefix, so ``1.png`` never pairs with ``11.png``. Hidden and
system files (``.DS_Store``, ``._NAME`` from macOS, ``Thumbs.db``, ``desktop.ini``) and
files Pillow has no decoder for (a ``README.txt``) are skipped.

Images: anything Pillow reads (PNG, JPEG, TIFF, BMP, GIF), grayscale, RGB or RGBA (alpha
dropped). 16-bit images are scaled to 8 bits over the full 16-bit range (``v / 257``, so
65535 -> 255), the same for every image, so a model sees the same intensities in training
and prediction; 12-bit data stored in 16-bit files therefore looks dark but is only
shifted by the normalisation. The input has 1 channel when every image is grayscale
(single-channel, or RGB with R = G = B), else 3 (grayscale images repeated).

Masks: the pixel value is the class (index masks: mode ``L``, ``P``: the palette index,
16-bit ``I;16``, or RGB with R = G = B; colour-coded RGB masks with ``ROOT/classes.json``).
How values become classes, with ``classes.json``, ``ignore_index`` and ``num_classes``, is
``minunet.data.masks``. With ``ignore_index`` the data's ``ignore_index`` is 255 (the loss
and the metrics skip those pixels).

The mapping is printed as one line (``found 2 classes: 0 -> 0, 255 -> 1``) and stored in
``mask_values`` / ``class_names``.

``image_size=N`` resizes everything to N x N (images bilinear, masks nearest) and returns
``SegmentationData``. ``image_size=None`` keeps the native sizes and returns
``NativeSizeData`` (lists of arrays) for training on random crops
(``DeviceLoader(..., crop=N)``). The hold-out is ``minunet.data.splits.holdout``.

The decoded (and resized) arrays are cached (``minunet.data.cache``) in one ``.npz``
keyed by the file listing, sizes, modification times and options, so the second run
starts at once; a changed file or option makes a new key, a corrupt cache file or one
from another minunet version is rebuilt.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minunet.data.cache import (
    cache_folder,
    file_stat,
    fingerprint,
    load_cache,
    remove_stale,
    save_cache,
)
from minunet.data.dataset import IGNORE_LABEL, NativeSizeData, SegmentationData
from minunet.data.imageio import (
    decodable_extensions,
    read_image,
    read_mask_values,
    resize_image,
    resize_mask,
)
from minunet.data.masks import (
    CLASSES_FILE,
    ClassSpec,
    class_mapping,
    mapping_summary,
    read_classes_json,
    to_labels,
)
from minunet.data.splits import holdout
from minunet.data.weightmap import border_weights_cached
from minunet.errors import DataError

IMAGES, MASKS = "images", "masks"
JUNK_FILES = {"thumbs.db", "desktop.ini"}


# --------------------------------------------------------------------------- containers


@dataclass
class _Pair:
    name: str  # the image's file stem
    image: Path
    mask: Path
    split: int  # 0 train, 1 val, -1 not yet split (hold-out layout)


# --------------------------------------------------------------------------- listing


def _is_junk(name: str) -> bool:
    """Hidden files, macOS resource forks (``._NAME``) and Windows thumbnails."""
    return name.startswith(".") or name.lower() in JUNK_FILES


def _image_files(folder: Path) -> dict[str, Path]:
    """Stem -> path of every decodable-looking file in ``folder`` (sorted, junk skipped)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; {_layout_hint()}")
    known = decodable_extensions()
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if _is_junk(path.name) or not path.is_file() or path.suffix.lower() not in known:
            continue
        if path.stem in files:
            raise DataError(
                f"{files[path.stem]} and {path} have the same name stem, so the pairing of "
                "images and masks is ambiguous; rename or remove one of them"
            )
        files[path.stem] = path
    if not files:
        raise DataError(f"{folder}: no image files in this folder; {_layout_hint()}")
    return files


def _layout_hint() -> str:
    return (
        "expected ROOT/images/ + ROOT/masks/, or ROOT/train/{images,masks} + "
        "ROOT/val/{images,masks}"
    )


def _first_five(names: list[str]) -> str:
    more = f", ... ({len(names) - 5} more)" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def _pair_folder(split_dir: Path, mask_suffix: str, split: int) -> list[_Pair]:
    """Match ``split_dir/images/*`` with ``split_dir/masks/*`` by exact stem."""
    image_dir, mask_dir = split_dir / IMAGES, split_dir / MASKS
    images = _image_files(image_dir)
    masks = _image_files(mask_dir)
    wanted = {stem + mask_suffix: stem for stem in images}
    lonely_images = [images[s].name for s in images if s + mask_suffix not in masks]
    lonely_masks = [masks[s].name for s in masks if s not in wanted]
    example = f"{IMAGES}/NAME.png -> {MASKS}/NAME{mask_suffix}.png"
    if lonely_images:
        raise DataError(
            f"{len(lonely_images)} images in {image_dir} have no mask in {mask_dir} "
            f"({_first_five(lonely_images)}); masks are matched by exact file stem "
            f"({example}): add the masks, remove those images, or set --mask-suffix"
        )
    if lonely_masks:
        raise DataError(
            f"{len(lonely_masks)} masks in {mask_dir} have no image in {image_dir} "
            f"({_first_five(lonely_masks)}); masks are matched by exact file stem "
            f"({example}): add the images, remove those masks, or set --mask-suffix"
        )
    return [_Pair(s, images[s], masks[s + mask_suffix], split) for s in images]


def _list_pairs(root: Path, mask_suffix: str) -> tuple[str, list[_Pair]]:
    """The layout name and every (image, mask) pair under ``root``."""
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; {_layout_hint()}")
    if (root / "train").is_dir():
        if not (root / "val").is_dir():
            raise DataError(
                f"{root / 'train'} exists but {root / 'val'} does not: an explicit split "
                "needs both train/{images,masks} and val/{images,masks}; add val/ or move "
                "the files to ROOT/images and ROOT/masks for a random hold-out"
            )
        pairs = _pair_folder(root / "train", mask_suffix, 0)
        pairs += _pair_folder(root / "val", mask_suffix, 1)
        return "split", pairs
    if not (root / IMAGES).is_dir():
        raise DataError(f"{root}: no images/ or train/ folder here; {_layout_hint()}")
    return "holdout", _pair_folder(root, mask_suffix, -1)


# --------------------------------------------------------------------------- decoding


# --------------------------------------------------------------------------- loading


def load_folder(
    root: str | os.PathLike,
    image_size: int | None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    mask_suffix: str = "",
    ignore_index: int | None = None,
    num_classes: int | None = None,
    border_weights: bool = False,
    foreground_classes: list[int] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    cache: bool = True,
    log: Callable[[str], None] | None = print,
) -> tuple[SegmentationData, SegmentationData] | tuple[NativeSizeData, NativeSizeData]:
    """Read a folder of images and masks; return ``(train, val)``.

    image_size: N to resize every sample to N x N -> two ``SegmentationData``
    ((N_s, N, N, C) images, (N_s, N, N) masks); None to keep native sizes -> two
    ``NativeSizeData``. val_fraction and seed choose the hold-out of the
    ``ROOT/images`` layout (``splits.holdout``; ignored for an explicit ``ROOT/train`` +
    ``ROOT/val``).
    border_weights: also compute the U-Net paper's weight map per sample (``weights``),
    with ``foreground_classes`` as objects (default: every class but 0), ``w0``, ``sigma``.
    log: where the one-line class summary goes (None for silence).
    See the module docstring for layouts, formats and the class mapping.
    """
    root = Path(root)
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    layout, pairs = _list_pairs(root, mask_suffix)
    spec = read_classes_json(root)

    listing = [
        [p.name, p.split, *file_stat(p.image, root), *file_stat(p.mask, root)] for p in pairs
    ]
    if (root / CLASSES_FILE).is_file():
        listing.append(file_stat(root / CLASSES_FILE, root))
    options = [layout, image_size, mask_suffix, ignore_index, num_classes]
    prefix = f"folder-{fingerprint([str(root.resolve())])}-"
    key = fingerprint([listing, options])
    cache_stem = cache_folder(root, "folder") / f"{prefix}{key}" if cache else None

    arrays = None
    if cache_stem is not None:
        arrays = load_cache(cache_stem.with_suffix(".npz"), key, ["mask_values", "class_names"])
    if arrays is None:
        arrays = _decode_all(root, pairs, spec, image_size, ignore_index, num_classes)
        if cache_stem is not None and save_cache(cache_stem.with_suffix(".npz"), arrays, key):
            remove_stale(cache_stem.with_suffix(".npz"), prefix)
    mask_values = [int(v) for v in arrays["mask_values"]]
    class_names = [str(n) for n in arrays["class_names"]]
    count = len(pairs)
    images = _unpack(arrays, "image", count, image_size)
    masks = _unpack(arrays, "mask", count, image_size)
    if log is not None:
        log(mapping_summary(mask_values, class_names, spec.colour, ignore_index))

    weights = None
    if border_weights:
        weights = border_weights_cached(
            masks, len(class_names), foreground_classes, w0, sigma, cache_stem=cache_stem
        )
    if layout == "holdout":
        train_index, val_index = holdout(len(pairs), val_fraction, seed)
    else:
        train_index, val_index = (np.flatnonzero([p.split == s for p in pairs]) for s in (0, 1))
    meta = dict(
        class_names=class_names,
        mask_values=mask_values,
        ignore_index=IGNORE_LABEL if ignore_index is not None else None,
        names=[p.name for p in pairs],
    )
    if image_size is None:
        pool = NativeSizeData(images, masks, weights=weights, **meta)
    else:
        stacked = None if weights is None else np.stack(weights)
        pool = SegmentationData(np.stack(images), np.stack(masks), weights=stacked, **meta)
    return pool.subset(train_index), pool.subset(val_index)


def _decode_all(
    root: Path,
    pairs: list[_Pair],
    spec: ClassSpec,
    image_size: int | None,
    ignore_index: int | None,
    num_classes: int | None,
) -> dict[str, np.ndarray]:
    """Read, check, resize and map every pair. Returns the arrays the cache stores."""
    size = None if image_size is None else (image_size, image_size)
    images, raw_masks = [], []
    distinct: set[int] = set()
    where: dict[int, str] = {}  # one file per value, for error messages
    for pair in pairs:
        image = read_image(pair.image)
        raw = read_mask_values(pair.mask, colour=spec.colour)
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"mask {pair.mask} is {raw.shape[1]}x{raw.shape[0]} but image {pair.image} "
                f"is {image.shape[1]}x{image.shape[0]} (width x height); a mask must have its "
                "image's size: re-export it at that size"
            )
        for v in np.unique(raw).tolist():
            if v not in distinct:
                distinct.add(v)
                where[v] = pair.mask.name
        if size is not None:
            image, raw = resize_image(image, size), resize_mask(raw, size)
        images.append(image)
        raw_masks.append(raw)
    values, names = class_mapping(
        np.array(sorted(distinct)), spec, ignore_index, num_classes, root, where
    )
    masks = [to_labels(raw, values, ignore_index) for raw in raw_masks]
    # 1 input channel only when every image is grayscale; otherwise repeat gray to RGB.
    if any(im.shape[2] == 3 for im in images):
        images = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im for im in images]
    arrays = {
        "mask_values": np.array(values, dtype=np.int64),
        "class_names": np.array(names, dtype=str),
    }
    arrays.update(_pack(images, "image", image_size))
    arrays.update(_pack(masks, "mask", image_size))
    return arrays


def _pack(items: list[np.ndarray], name: str, image_size: int | None) -> dict[str, np.ndarray]:
    """Equal-size arrays stacked under ``name``; native sizes one key per sample."""
    if image_size is not None and items:
        return {name: np.stack(items)}
    return {f"{name}_{i}": a for i, a in enumerate(items)}


def _unpack(
    arrays: dict[str, np.ndarray], name: str, count: int, image_size: int | None
) -> list[np.ndarray]:
    if image_size is not None and name in arrays:
        return list(arrays[name])
    return [arrays[f"{name}_{i}"] for i in range(count)]
