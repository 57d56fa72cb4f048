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

Masks: the pixel value is the class.

* index masks (mode ``L``, ``P``: the palette index, 16-bit ``I;16``, or RGB with R = G = B):
  the distinct values over all masks, sorted, become classes 0..K-1 (``0 -> 0, 255 -> 1``
  for a 0/255 binary mask; 0/1 masks map to themselves).
* colour-coded RGB masks need ``ROOT/classes.json``: ``{"road": [128, 64, 128], ...}``;
  class i is the i-th entry. ``mask_values`` then holds the colours packed as
  ``r * 65536 + g * 256 + b``.
* ``classes.json`` may instead map names to index values (``{"membrane": 0, "cell": 255}``):
  it then names the classes and fixes their order.
* ``ignore_index=V``: raw value V is no class; its pixels get label 255 and the data's
  ``ignore_index`` is 255 (the loss and the metrics skip them).
* ``num_classes=K``: more than K distinct values is an error; when every value is below K,
  values are class indices as they are (identity, even if some class never occurs).

The mapping is printed as one line (``found 2 classes: 0 -> 0, 255 -> 1``) and stored in
``mask_values`` / ``class_names``.

``image_size=N`` resizes everything to N x N (images bilinear, masks nearest) and returns
``SegmentationData``. ``image_size=None`` keeps the native sizes and returns
``NativeSizeData`` (lists of arrays) for training on random crops with ``CropLoader``.

The decoded (and resized) arrays are cached in one ``.npz`` keyed by the file listing,
sizes, modification times and options, so the second run starts at once; a changed file
or option makes a new key, a corrupt cache file is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from minunet.data.dataset import NativeSizeData, SegmentationData
from minunet.data.imageio import open_image, resize_image, resize_mask
from minunet.data.weightmap import IGNORE_LABEL, border_weight_map
from minunet.errors import DataError
from minunet.io.atomic import save_npz_atomic

IMAGES, MASKS = "images", "masks"
CLASSES_FILE = "classes.json"
CACHE_DIR = ".minunet-cache"
CACHE_VERSION = 1  # bump when the cached arrays' meaning changes
JUNK_FILES = {"thumbs.db", "desktop.ini"}
# Modes whose pixels are one intensity; anything else is converted to RGB first.
GRAY_MODES = {"1", "L", "LA", "I", "F"}
MAX_CLASSES = 255  # labels are uint8 and 255 is reserved for ignored pixels
# Salts of CropLoader's random streams: crop order/positions and augmentation.
_CROP_STREAM, _AUGMENT_STREAM = 2, 1


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
    known = _pillow_extensions()
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


def _pillow_extensions() -> set[str]:
    Image.init()  # registers every plugin, so TIFF, GIF, BMP, ... are all known
    return {ext.lower() for ext in Image.registered_extensions()}


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


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image to (H, W, 1) uint8 if it is grayscale, else (H, W, 3) uint8.

    Grayscale: a single-channel mode, or RGB with R = G = B everywhere. 16-bit and 32-bit
    integer images are scaled by ``v / 257`` (clipped to 0..65535 first); float images
    in [0, 1] are scaled by 255, other float images clipped to 0..255. Alpha is dropped.
    """
    return image_array(open_image(path))


def image_array(im: Image.Image) -> np.ndarray:
    """``read_image`` for an opened Pillow image (e.g. one page of a multi-page TIFF)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        raw = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        return ((raw * 255 + 32767) // 65535).astype(np.uint8)[..., None]
    if mode == "F":
        raw = np.asarray(im, dtype=np.float64)
        raw = raw * 255.0 if raw.size and raw.max() <= 1.0 else raw
        return np.clip(np.round(raw), 0, 255).astype(np.uint8)[..., None]
    if mode in GRAY_MODES:
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., :1])
    return rgb


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (...) uint32 ``r * 65536 + g * 256 + b``."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def read_mask_values(path: str | os.PathLike, colour: bool = False) -> np.ndarray:
    """The raw value of every pixel of a mask file, before any class mapping.

    colour=False: (H, W) integer values (the palette index for mode P, the gray level for
    L, 0/255 for 1-bit, the 16-bit value for I;16; RGB only when R = G = B).
    colour=True: (H, W) uint32 packed colours (see ``pack_rgb``), whatever the mode.
    """
    im = open_image(path)
    if colour:
        return pack_rgb(np.asarray(im.convert("RGB")))
    if im.mode in ("P", "L") or im.mode.startswith("I;16"):
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    if im.mode in ("LA", "PA"):
        return np.asarray(im)[..., 0]
    if im.mode in ("I", "F"):
        raw = np.asarray(im)
        if im.mode == "F" and not np.array_equal(raw, np.round(raw)):
            raise DataError(
                f"{path}: mask has fractional values; save masks as integer class images"
            )
        return raw.astype(np.int64)
    rgb = np.asarray(im.convert("RGB"))
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return rgb[..., 0]
    raise DataError(
        f"{path}: colour-coded RGB mask but no {CLASSES_FILE}; write ROOT/{CLASSES_FILE} "
        'mapping each class name to its colour, e.g. {"background": [0, 0, 0], '
        '"road": [128, 64, 128]}, or save masks as class-index images'
    )


# --------------------------------------------------------------------------- classes


@dataclass
class _ClassSpec:
    """What ``classes.json`` says: names, and either colours or index values (or nothing)."""

    names: list[str] | None = None
    values: list[int] | None = None  # raw values (packed colours when colour is True)
    colour: bool = False


def _read_classes_json(root: Path) -> _ClassSpec:
    path = root / CLASSES_FILE
    if not path.is_file():
        return _ClassSpec()
    fix = 'write {"name": [r, g, b], ...} for colour masks or {"name": value, ...}'
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read this JSON ({exc}); {fix}") from None
    if not isinstance(spec, dict) or not spec:
        raise DataError(f"{path}: expected a non-empty object; {fix}")
    items = list(spec.items())
    if all(isinstance(v, int) and not isinstance(v, bool) for _, v in items):
        return _ClassSpec([str(k) for k, _ in items], [int(v) for _, v in items], False)
    if all(
        isinstance(v, list) and len(v) == 3 and all(isinstance(c, int) and 0 <= c < 256 for c in v)
        for _, v in items
    ):
        colours = pack_rgb(np.array([v for _, v in items], dtype=np.uint8)).tolist()
        return _ClassSpec([str(k) for k, _ in items], [int(c) for c in colours], True)
    raise DataError(f"{path}: every entry must be a colour [r, g, b] or an integer; {fix}")


def _describe(value: int, colour: bool) -> str:
    if colour:
        return f"({value >> 16}, {(value >> 8) & 255}, {value & 255})"
    return str(value)


def _class_mapping(
    found: np.ndarray,
    spec: _ClassSpec,
    ignore_index: int | None,
    num_classes: int | None,
    root: Path,
    where: dict[int, str],
) -> tuple[list[int], list[str]]:
    """Decide the raw value of each class and the class names.

    found: sorted distinct raw values over all masks. where: a file holding each value,
    for error messages. Returns ``(mask_values, class_names)``.
    """
    found = [int(v) for v in found if ignore_index is None or int(v) != ignore_index]
    if spec.values is not None:
        declared = [v for v in spec.values if ignore_index is None or v != ignore_index]
        names = [n for n, v in zip(spec.names, spec.values, strict=True) if v in declared]
        unknown = [v for v in found if v not in set(declared)]
        if unknown:
            what = "colours" if spec.colour else "values"
            shown = ", ".join(f"{_describe(v, spec.colour)} in {where[v]}" for v in unknown[:5])
            raise DataError(
                f"masks contain {len(unknown)} {what} not in {root / CLASSES_FILE} "
                f"({shown}); add them to {CLASSES_FILE}, fix the masks, or pass "
                "--ignore-index for a 'void' value"
            )
        values = declared
    elif num_classes is not None and found and found[-1] < num_classes and found[0] >= 0:
        values = list(range(num_classes))  # the values already are class indices
        names = [f"class {i}" for i in values]
    else:
        values = found
        names = [f"class {i}" for i in range(len(values))]
    if num_classes is not None and len(values) > num_classes:
        raise DataError(
            f"masks under {root} hold {len(values)} distinct values "
            f"({', '.join(map(str, values[:8]))}{', ...' if len(values) > 8 else ''}) but "
            f"{num_classes} classes were declared; raise --num-classes, pass --ignore-index "
            "for a 'void' value, or fix masks saved lossily (JPEG masks blur class values)"
        )
    if len(values) > MAX_CLASSES:
        raise DataError(
            f"masks under {root} hold {len(values)} distinct values, more than "
            f"{MAX_CLASSES} classes; masks saved as JPEG get blurred values: save them as PNG"
        )
    if not values:
        raise DataError(f"masks under {root} hold no class value at all (only ignored pixels)")
    if num_classes is not None and len(names) < num_classes:
        names += [f"class {i}" for i in range(len(names), num_classes)]
        values += [-1] * (num_classes - len(values))  # classes no mask uses
    return values, names


def _to_labels(raw: np.ndarray, values: list[int], ignore_index: int | None) -> np.ndarray:
    """Raw mask values -> (H, W) uint8 labels: index into ``values``, 255 where ignored."""
    # A sorted lookup table: raw value -> its class; classes no mask uses (-1) are left out.
    table_labels = np.array([i for i, v in enumerate(values) if v >= 0], dtype=np.int64)
    table_values = np.array(values, dtype=np.int64)[table_labels]
    order = np.argsort(table_values)
    table_values, table_labels = table_values[order], table_labels[order]
    raw64 = raw.astype(np.int64)
    pos = np.clip(np.searchsorted(table_values, raw64), 0, max(len(table_values) - 1, 0))
    labels = table_labels[pos].astype(np.uint8)
    if ignore_index is not None:
        labels[raw64 == ignore_index] = IGNORE_LABEL
    return labels


# --------------------------------------------------------------------------- cache


def cache_folder(root: Path) -> Path:
    """``ROOT/.minunet-cache`` when writable, else ``$MINUNET_DATA`` or ``~/.cache/minunet``."""
    local = root / CACHE_DIR
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    fallback = os.environ.get("MINUNET_DATA") or Path.home() / ".cache" / "minunet"
    return Path(fallback) / "folder-cache"


def fingerprint(items: list[Any]) -> str:
    """A short stable hash of JSON-able ``items``: a cache file's key, so changed inputs
    (files' sizes and times, options) name a new file instead of reusing a stale one."""
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:20]


def _stat(path: Path, root: Path) -> list[Any]:
    st = path.stat()
    return [str(path.relative_to(root)), st.st_size, st.st_mtime_ns]


def _load_cache(path: Path, keys: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if the file is missing, unreadable or incomplete."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not all(k in npz.files for k in keys):
                return None
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None  # corrupt: rebuilt and overwritten by the caller


def _save_cache(path: Path, arrays: dict[str, np.ndarray], prefix: str | None) -> None:
    """Write atomically; with ``prefix``, remove older caches of the same folder (stale keys)."""
    try:
        save_npz_atomic(path, arrays)
        for old in path.parent.glob(f"{prefix}*.npz") if prefix else []:
            if old != path and not old.name.startswith(path.stem):
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a cache that cannot be written only costs time


# --------------------------------------------------------------------------- loading


def as_native(data: SegmentationData) -> NativeSizeData:
    """View equal-size ``SegmentationData`` as ``NativeSizeData`` (no copy), for ``CropLoader``."""
    return NativeSizeData(
        images=list(data.images),
        masks=list(data.masks),
        class_names=list(data.class_names),
        mask_values=list(data.mask_values),
        ignore_index=data.ignore_index,
        weights=None if data.weights is None else list(data.weights),
        names=list(data.names),
    )


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
    ``ROOT/images`` layout (ignored for an explicit ``ROOT/train`` + ``ROOT/val``).
    border_weights: also compute the U-Net paper's weight map per sample (``weights``),
    with ``foreground_classes`` as objects (default: every class but 0), ``w0``, ``sigma``.
    log: where the one-line class summary goes (None for silence).
    See the module docstring for layouts, formats and the class mapping.
    """
    root = Path(root)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    layout, pairs = _list_pairs(root, mask_suffix)
    spec = _read_classes_json(root)

    listing = [[p.name, p.split, *_stat(p.image, root), *_stat(p.mask, root)] for p in pairs]
    if (root / CLASSES_FILE).is_file():
        listing.append(_stat(root / CLASSES_FILE, root))
    options = [CACHE_VERSION, layout, image_size, mask_suffix, ignore_index, num_classes]
    cache_dir = cache_folder(root) if cache else root / CACHE_DIR
    prefix = f"folder-{fingerprint([str(root.resolve())])}-"
    key = fingerprint([listing, options])
    cache_path = cache_dir / f"{prefix}{key}.npz"

    arrays = _load_cache(cache_path, ["mask_values", "class_names"]) if cache else None
    if arrays is None:
        arrays = _decode_all(root, pairs, spec, image_size, ignore_index, num_classes)
        if cache:
            _save_cache(cache_path, arrays, prefix)
    mask_values = [int(v) for v in arrays["mask_values"]]
    class_names = [str(n) for n in arrays["class_names"]]
    count = len(pairs)
    images = _unpack(arrays, "image", count, image_size)
    masks = _unpack(arrays, "mask", count, image_size)
    if log is not None:
        log(_summary(mask_values, class_names, spec.colour, ignore_index))

    weights = None
    if border_weights:
        stem = cache_dir / f"{prefix}{key}" if cache else None
        weights = border_weights_cached(
            masks, len(class_names), foreground_classes, w0, sigma, cache_stem=stem
        )

    split = np.array([p.split for p in pairs], dtype=np.int64)
    if layout == "holdout":
        split = holdout_split(count, val_fraction, seed)
    stored_ignore = IGNORE_LABEL if ignore_index is not None else None
    names = [p.name for p in pairs]

    def make(index: np.ndarray) -> SegmentationData | NativeSizeData:
        w = None if weights is None else [weights[i] for i in index]
        meta = dict(
            class_names=list(class_names),
            mask_values=list(mask_values),
            ignore_index=stored_ignore,
            names=[names[i] for i in index],
        )
        if image_size is None:
            return NativeSizeData(
                [images[i] for i in index], [masks[i] for i in index], weights=w, **meta
            )
        channels = images[0].shape[2] if images else 1
        empty = (0, image_size, image_size)
        return SegmentationData(
            images=np.stack([images[i] for i in index])
            if len(index)
            else np.zeros((*empty, channels), np.uint8),
            masks=np.stack([masks[i] for i in index]) if len(index) else np.zeros(empty, np.uint8),
            weights=None if w is None else (np.stack(w) if w else np.zeros(empty, np.float32)),
            **meta,
        )

    return make(np.flatnonzero(split == 0)), make(np.flatnonzero(split == 1))


def border_weights_cached(
    masks: list[np.ndarray],
    num_classes: int,
    foreground_classes: list[int] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    cache_stem: Path | None = None,
) -> list[np.ndarray]:
    """The border weight map of every mask, read from / written to a cache beside the data.

    masks: list of (H_i, W_i) uint8 labels. foreground_classes: the object classes
    (default: every class but 0). ``w_c`` is median-frequency balancing over all ``masks``.
    cache_stem: the data's cache path without ``.npz`` (the weights go to
    ``<stem>-w<options>.npz``), or None for no cache. Returns (H_i, W_i) float32 maps.
    """
    foreground = list(range(1, num_classes)) if foreground_classes is None else foreground_classes
    foreground = [int(c) for c in foreground]
    names = [f"weight_{i}" for i in range(len(masks))]
    path = None
    if cache_stem is not None:
        options = fingerprint([CACHE_VERSION, foreground, float(w0), float(sigma)])
        path = cache_stem.parent / f"{cache_stem.name}-w{options}.npz"
        cached = _load_cache(path, names)
        shapes_match = cached is not None and all(
            cached[n].shape == m.shape for n, m in zip(names, masks, strict=True)
        )
        if shapes_match:
            return [cached[n] for n in names]
    balance = class_weights_from_masks(masks, num_classes)
    weights = [border_weight_map(m, foreground, w0, sigma, class_weights=balance) for m in masks]
    if path is not None:
        _save_cache(path, dict(zip(names, weights, strict=True)), None)
    return weights


def holdout_split(count: int, val_fraction: float, seed: int) -> np.ndarray:
    """0/1 split flags: a seeded random ``val_fraction`` of the samples (at least one) is 1."""
    split = np.zeros(count, dtype=np.int64)
    if val_fraction > 0 and count >= 2:
        n_val = min(max(1, round(count * val_fraction)), count - 1)
        split[np.random.default_rng(seed).permutation(count)[:n_val]] = 1
    return split


def _decode_all(
    root: Path,
    pairs: list[_Pair],
    spec: _ClassSpec,
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
    values, names = _class_mapping(
        np.array(sorted(distinct)), spec, ignore_index, num_classes, root, where
    )
    masks = [_to_labels(raw, values, ignore_index) for raw in raw_masks]
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


def _summary(values: list[int], names: list[str], colour: bool, ignore: int | None) -> str:
    """One line: ``found 2 classes: 0 -> 0, 255 -> 1``, with names when they are given."""
    parts = []
    for i, (v, n) in enumerate(zip(values, names, strict=True)):
        label = "(unused)" if v < 0 else _describe(v, colour)
        parts.append(f"{label} -> {i}" + ("" if n == f"class {i}" else f" ({n})"))
    tail = "" if ignore is None else f"; {ignore} ignored (label {IGNORE_LABEL})"
    return f"found {len(values)} classes: {', '.join(parts)}{tail}"


# --------------------------------------------------------------------------- class weights


def class_weights_from_masks(masks: list[np.ndarray] | np.ndarray, num_classes: int) -> np.ndarray:
    """Median-frequency balancing: ``median(freq) / freq[k]``; absent classes get 0.

    masks: (N, H, W) array or list of (H_i, W_i) uint8 labels (255 = ignored, not counted).
    Returns (num_classes,) float32.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for m in masks:
        counts += np.bincount(m[m != IGNORE_LABEL].ravel(), minlength=num_classes)[:num_classes]
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    if present.any():
        freq = counts[present] / counts[present].sum()
        weights[present] = np.median(freq) / freq
    return weights.astype(np.float32)


def class_weights(data: SegmentationData | NativeSizeData, mode: str = "auto") -> np.ndarray:
    """Per-class loss weights. Returns (num_classes,) float32.

    mode: ``"auto"`` for median-frequency balancing over ``data``'s labelled pixels,
    ``"none"`` for all ones, or explicit weights ``"w0,w1,..."`` (one per class).
    """
    k = data.num_classes
    if mode == "auto":
        return class_weights_from_masks(data.masks, k)
    if mode == "none":
        return np.ones(k, dtype=np.float32)
    try:
        weights = np.array([float(w) for w in mode.split(",")], dtype=np.float32)
    except ValueError:
        weights = None
    if weights is None or len(weights) != k or not np.all(np.isfinite(weights)):
        raise DataError(
            f"--class-weights {mode!r}: expected 'auto', 'none' or {k} comma-separated "
            f"numbers (one per class: {', '.join(data.class_names)})"
        )
    if (weights < 0).any():
        raise DataError(f"--class-weights {mode!r}: weights must not be negative")
    return weights


# --------------------------------------------------------------------------- crops


def _pad_to(array: np.ndarray, height: int, width: int, value: int | None) -> np.ndarray:
    """Pad (H, W, ...) at the bottom and right up to at least (height, width).

    value None: mirror the image ('symmetric': the edge pixel is repeated, then the image
    is read backwards, which works even for a 1-pixel image). Otherwise a constant.
    """
    ph, pw = max(height - array.shape[0], 0), max(width - array.shape[1], 0)
    if ph == 0 and pw == 0:
        return array
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    if value is None:
        return np.pad(array, pad, mode="symmetric")
    return np.pad(array, pad, mode="constant", constant_values=value)


class CropLoader:
    """Random N x N crops of native-size samples, batched on the backend.

    The interface of ``minunet.data.loader.DeviceLoader`` (same arguments plus ``crop``,
    ``len()``, ``epoch(e)``, ``set_epoch``, iteration), and the same batches:
    ``Batch(x, y, w)`` with x (B, C, N, N) float32 normalised by ``loader.normalize``,
    y (B, N, N) int32, w (B, N, N) float32 or None.

    Every epoch draws a new order and new crop positions, a pure function of
    ``(seed, epoch)``; with ``world_size`` W, ``batch_size`` is the global batch and rank r
    takes the same contiguous slice of it as in ``DeviceLoader``. Crops are cut on the
    host (the samples have different sizes, so they cannot be one device array) and one
    (B, N, N, C) uint8 batch is copied to the device; the augmentation then runs there.
    Samples smaller than N are mirror-padded, their masks padded with 255 (ignored) and
    their weights with 0: ``loader.ignore_index`` is then 255 and the loss must skip it.
    """

    def __init__(
        self,
        data: NativeSizeData,
        xp: ModuleType,
        batch_size: int,
        *,
        crop: int,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: Any = None,
        seed: int = 0,
        mean: Any = None,
        std: Any = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        from minunet.data.loader import DEFAULT_MEAN, DEFAULT_STD

        if batch_size < 1 or batch_size % world_size or not 0 <= rank < world_size:
            raise DataError(
                f"batch size {batch_size} must be a positive multiple of the {world_size} "
                f"processes (rank {rank})"
            )
        if len(data) == 0 or (drop_last and len(data) < batch_size):
            raise DataError(
                f"only {len(data)} samples, fewer than one batch of {batch_size}: "
                "lower the batch size or add data"
            )
        self.data, self.xp, self.batch_size, self.crop = data, xp, batch_size, crop
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.mean = DEFAULT_MEAN if mean is None else mean
        self.std = DEFAULT_STD if std is None else std
        self.rank, self.world_size = rank, world_size
        self.next_epoch = 0
        padded = any(min(m.shape) < crop for m in data.masks)
        self.ignore_index = IGNORE_LABEL if padded else data.ignore_index

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Any]:
        """This rank's ``Batch(x, y, w)`` of epoch ``epoch`` (shapes in the class doc)."""
        from minunet.data.augment import apply_augment, draw_augment_params
        from minunet.data.loader import Batch, normalize

        xp = self.xp
        n = len(self.data)
        rng = np.random.default_rng([self.seed, epoch, _CROP_STREAM])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        # Every crop position drawn up front, so all ranks agree whatever share they take.
        corner = rng.random((n, 2))
        aug_rng = None
        if self.augment is not None:
            state = np.random.SeedSequence([self.seed, epoch, _AUGMENT_STREAM]).generate_state(1)
            aug_rng = xp.random.default_rng(int(state[0]))
        for b in range(len(self)):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            lo = self.rank * len(batch) // self.world_size
            hi = (self.rank + 1) * len(batch) // self.world_size
            images, masks, weights = self._crops(batch[lo:hi], corner)
            images, masks = xp.asarray(images), xp.asarray(masks)
            weights = None if weights is None else xp.asarray(weights)
            if aug_rng is not None:
                params = draw_augment_params(len(batch), self.augment, aug_rng)[lo:hi]
                images = images.astype(np.float32) * np.float32(1 / 255)
                images, masks, weights = apply_augment(images, masks, weights, params, self.augment)
            x = normalize(images, self.mean, self.std)
            yield Batch(x=x, y=masks.astype(np.int32), w=weights)

    def _crops(
        self, index: np.ndarray, corner: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Host crops: images (B, N, N, C) uint8, masks (B, N, N) uint8, weights or None."""
        n, data = self.crop, self.data
        images, masks, weights = [], [], []
        for i in index.tolist():
            mask = _pad_to(data.masks[i], n, n, IGNORE_LABEL)
            # corner in [0, 1) scales to a top-left position in the free room, inclusive.
            top = int(corner[i, 0] * (mask.shape[0] - n + 1))
            left = int(corner[i, 1] * (mask.shape[1] - n + 1))
            window = (slice(top, top + n), slice(left, left + n))
            images.append(_pad_to(data.images[i], n, n, None)[window])
            masks.append(mask[window])
            if data.weights is not None:
                weights.append(_pad_to(data.weights[i], n, n, 0)[window].astype(np.float32))
        return np.stack(images), np.stack(masks), np.stack(weights) if weights else None

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter(loader)`` run ``epoch`` (e.g. when resuming a run)."""
        self.next_epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        epoch = self.next_epoch
        self.next_epoch += 1
        return self.epoch(epoch)
