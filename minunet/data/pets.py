"""The Oxford-IIIT Pet data set (Parkhi et al., 2012) as ``SegmentationData``.

7,349 photos of cats and dogs, each with a trimap: 1 = pet, 2 = background, 3 = the uncertain
outline between them. As in the original notebook, the class of a pixel is its trimap value
minus 1 (``PETS_CLASS_NAMES``: pet, background, outline). The splits are the official lists,
``annotations/trainval.txt`` (3,680 images) and ``annotations/test.txt`` (3,669 images).

Where the data comes from, in the order ``find_or_fetch_pets`` tries:

1. a folder that already holds the extracted layout (``images/``, ``annotations/``);
2. a folder holding the two official archives, downloaded by the user (they are verified
   against their SHA-256 and extracted beside themselves);
3. otherwise the archives are downloaded (resumably) into the cache folder and extracted there.

Decoding 3,680 JPEGs takes a while, so ``load_pets`` keeps the resized arrays in one ``.npz``
per (split, size). The cache is keyed by a fingerprint of the list file and of each listed
file's size and modification time, so an edited or replaced image rebuilds it, and a truncated
cache (a killed run) is detected and rebuilt too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from minunet.data.cache import (
    cache_folder,
    default_cache_dir,
    is_writable,
    load_cache,
    save_cache,
)
from minunet.data.dataset import PETS_CLASS_NAMES, NativeSizeData, SegmentationData
from minunet.data.download import download as download_file
from minunet.data.download import extract_tar, verify_sha256
from minunet.data.imageio import open_image, read_rgb, resize_image, resize_mask
from minunet.data.splits import holdout
from minunet.errors import DataError


@dataclass(frozen=True)
class PetsArchive:
    """One official archive: its file name, size in bytes, SHA-256, and the folder it holds."""

    name: str
    size: int
    sha256: str
    folder: str


PETS_ARCHIVES: tuple[PetsArchive, ...] = (
    PetsArchive(
        "images.tar.gz",
        791_918_971,
        "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
        "images",
    ),
    PetsArchive(
        "annotations.tar.gz",
        19_173_078,
        "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91",
        "annotations",
    ),
)
DEFAULT_BASE_URL = "https://thor.robots.ox.ac.uk/~vgg/data/pets"
OLD_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data"  # an older mirror, same files

ENV_PETS_URL = "MINUNET_PETS_URL"  # the base URL the two archives are fetched from

PETS_SPLITS = ("trainval", "test")
PETS_MASK_VALUES = [1, 2, 3]  # the trimap values of classes 0, 1, 2
ROOT_NAME = "oxford-iiit-pet"  # the folder name inside the cache (and torchvision's, too)


def is_pets_root(folder: Path) -> bool:
    """Whether ``folder`` holds the extracted official layout."""
    annotations = folder / "annotations"
    return (
        (folder / "images").is_dir()
        and (annotations / "trimaps").is_dir()
        and all((annotations / f"{split}.txt").is_file() for split in PETS_SPLITS)
    )


# ------------------------------------------------------------------------------- finding


def find_or_fetch_pets(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """The folder holding the extracted data set (``images/`` and ``annotations/``).

    data_dir: an extracted root, or a folder holding ``images.tar.gz`` and
              ``annotations.tar.gz``, or a folder to download them into. None means
              ``$MINUNET_DATA/oxford-iiit-pet``.
    download: fetch missing archives from ``base_url`` (default ``$MINUNET_PETS_URL``, else
              ``DEFAULT_BASE_URL``). With False, missing data is a DataError.
    verify:   check each archive's SHA-256 before extracting it (turn off only for a mirror
              that repackaged the files).
    """
    if data_dir is None:
        folder = default_cache_dir() / ROOT_NAME
    else:
        folder = Path(data_dir).expanduser()
    for candidate in (folder, folder / ROOT_NAME):
        if is_pets_root(candidate):
            return candidate
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: is a file; pass the folder that holds images/ and annotations/")

    base = (base_url or os.environ.get(ENV_PETS_URL) or DEFAULT_BASE_URL).rstrip("/")
    missing = [a.name for a in PETS_ARCHIVES if not (folder / a.name).is_file()]
    if missing and not download:
        raise DataError(
            f"{folder}: no Oxford-IIIT Pets data here (need images/ and annotations/, or "
            f"{' and '.join(a.name for a in PETS_ARCHIVES)}); download {', '.join(missing)} "
            f"from {base}/ into it, or allow downloading"
        )
    # Extract (and download) beside the user's folder when we may write there, else in the cache.
    work = folder if is_writable(folder) else default_cache_dir() / ROOT_NAME
    if work != folder and is_pets_root(work):
        return work

    for archive in PETS_ARCHIVES:
        if (work / archive.folder).is_dir() and (
            archive.folder != "annotations" or (work / "annotations" / "trainval.txt").is_file()
        ):
            continue  # extracted by an earlier run (extract_tar renames only complete folders)
        supplied = folder / archive.name
        if supplied.is_file():
            path = supplied
            if verify:
                verify_sha256(
                    path,
                    archive.sha256,
                    fix="delete it and download it again, or if a mirror repackaged it on "
                    "purpose, disable the check (--no-verify / verify=False)",
                )
        else:
            path = download_archive(archive, work, base, verify=verify, progress=progress)
        extract_tar(path, work)

    if not is_pets_root(work):
        raise DataError(
            f"{work}: the archives did not give images/ and annotations/ (trainval.txt, "
            "test.txt, trimaps/); they are not the official ones: delete them and download again"
        )
    return work


def download_archive(
    archive: PetsArchive, folder: Path, base_url: str, *, verify: bool = True, progress: bool = True
) -> Path:
    """Download one official archive into ``folder`` (resuming a ``.part``), verified."""
    return download_file(
        f"{base_url}/{archive.name}",
        folder / archive.name,
        sha256=archive.sha256 if verify else None,
        size=archive.size if verify else None,  # a mirror's repackaged file may differ in size
        progress=progress,
    )


# ------------------------------------------------------------------------- preprocessing


def preprocess_pet(
    image: np.ndarray, trimap: np.ndarray, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize one photo and its trimap to a square and turn trimap values into classes.

    image:   (H, W, 3) uint8 RGB
    trimap:  (H, W) or (H, W, 1) uint8, values 1 (pet), 2 (background), 3 (outline)
    returns: image (S, S, 3) uint8 resized bilinearly with antialiasing, and
             mask (S, S) uint8 classes 0, 1, 2 resized by nearest neighbour, S = image_size

    Both data sources (the archives here, TFDS in pets_tfds.py) call this, so they give the
    same arrays for the same files.
    """
    if trimap.ndim == 3:
        trimap = trimap[..., 0]
    size = (image_size, image_size)
    return resize_image(image, size), resize_mask(trimap, size) - np.uint8(1)


def _read_trimap(path: Path) -> np.ndarray:
    """A trimap PNG as (H, W) uint8 with values in {1, 2, 3}, or a one-line DataError."""
    trimap = np.asarray(open_image(path), dtype=np.uint8)
    if trimap.ndim == 3:  # saved as RGB by some tool: the channels are equal
        trimap = trimap[..., 0]
    if trimap.size and (trimap.min() < 1 or trimap.max() > 3):
        values = np.unique(trimap)[:8].tolist()
        raise DataError(
            f"{path}: trimap values {values} outside 1, 2, 3; replace it with the official file"
        )
    return trimap


def read_split_names(list_file: Path) -> list[str]:
    """The image names of an official list file (``NAME CLASS_ID SPECIES BREED_ID`` lines).

    Blank lines and ``#`` comments (``list.txt`` has a header) are skipped.
    """
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{list_file}: file not found; re-extract annotations.tar.gz") from None
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.split()[0])
    if not names:
        raise DataError(f"{list_file}: lists no images; re-extract annotations.tar.gz")
    return names


def _pair_paths(root: Path, name: str) -> tuple[Path, Path]:
    return root / "images" / f"{name}.jpg", root / "annotations" / "trimaps" / f"{name}.png"


def _read_pair(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Photo ``name`` as (H, W, 3) uint8 RGB and its trimap as (H, W) uint8 in {1, 2, 3}."""
    image_path, trimap_path = _pair_paths(root, name)
    image = read_rgb(image_path)  # PNG, GIF, CMYK, grayscale, alpha: all become RGB
    trimap = _read_trimap(trimap_path)
    if trimap.shape != image.shape[:2]:
        raise DataError(
            f"{trimap_path}: trimap is {trimap.shape[1]}x{trimap.shape[0]} but its image is "
            f"{image.shape[1]}x{image.shape[0]}; replace it with the official file"
        )
    return image, trimap


# --------------------------------------------------------------------------------- cache


def _fingerprint(root: Path, split: str, image_size: int, names: list[str]) -> str:
    """A key that changes when the list file or any listed file changes.

    Hashing 800 MB of images on every load would take longer than a second load should, so
    each file counts by its size and modification time (the files extracted from an archive
    carry the archive's timestamps, so re-extracting the same archive keeps the key).
    A missing listed file is reported here, before any decoding.
    """
    list_file = root / "annotations" / f"{split}.txt"
    digest = hashlib.sha256(f"pets {split} {image_size}\n".encode())
    digest.update(list_file.read_bytes())
    for name in names:
        for path in _pair_paths(root, name):
            try:
                st = path.stat()
            except FileNotFoundError:
                kind = "image" if path.suffix == ".jpg" else "trimap"
                raise DataError(
                    f"{path}: {kind} of {name!r} (listed in {list_file.name}) is missing; restore "
                    f"it from the official archive or delete that line from {list_file.name}"
                ) from None
            digest.update(f"{path.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def pets_cache_file(root: Path, split: str, image_size: int) -> Path:
    """Where the resized arrays of ``split`` at ``image_size`` are cached.

    In ``ROOT/.minunet-cache/`` when the root is writable, else (a read-only shared copy) in
    the cache folder (``cache.cache_folder``).
    """
    return cache_folder(root, "pets") / f"pets-{split}-{image_size}px.npz"


def _load_cached_split(
    path: Path, key: str, names: list[str], image_size: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (images, masks) of the listed ``names``, or None if there is no usable
    cache (see ``cache.load_cache``) or it holds other images or sizes."""
    cache = load_cache(path, key, ["images", "masks", "names"])
    if cache is None:
        return None
    images, masks = cache["images"], cache["masks"]
    if images.shape != (len(names), image_size, image_size, 3) or masks.shape != images.shape[:3]:
        return None
    if [str(n) for n in cache["names"]] != names:
        return None
    return images, masks


# ---------------------------------------------------------------------------------- load


def load_pets(
    data_dir: str | os.PathLike | None = None,
    image_size: int = 128,
    split: str = "trainval",
    **fetch_kwargs,
) -> SegmentationData:
    """One official split of Oxford-IIIT Pets, resized to ``image_size`` squares.

    data_dir:     see ``find_or_fetch_pets`` (which gets ``fetch_kwargs``: download,
                  base_url, verify, progress)
    split:        "trainval" (3,680 images) or "test" (3,669), exactly the official lists
    returns:      images (N, S, S, 3) uint8 RGB, masks (N, S, S) uint8 in {0 pet,
                  1 background, 2 outline}, names = the list's image names, S = image_size
    """
    if split not in PETS_SPLITS:
        raise ValueError(f"split must be one of {PETS_SPLITS}, got {split!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = find_or_fetch_pets(data_dir, **fetch_kwargs)
    names = read_split_names(root / "annotations" / f"{split}.txt")
    key = _fingerprint(root, split, image_size, names)
    cache_file = pets_cache_file(root, split, image_size)

    cached = _load_cached_split(cache_file, key, names, image_size)
    if cached is not None:
        images, masks = cached
    else:
        images, masks = _decode_all(root, names, image_size, fetch_kwargs.get("progress", True))
        # A failed write (a full disk) is reported there and costs speed, not data.
        save_cache(cache_file, {"images": images, "masks": masks, "names": np.array(names)}, key)

    return SegmentationData(
        images=images,
        masks=masks,
        class_names=list(PETS_CLASS_NAMES),
        mask_values=list(PETS_MASK_VALUES),
        names=list(names),
    )


def _decode_all(
    root: Path, names: list[str], image_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Decode, check and resize every listed pair: (N, S, S, 3) and (N, S, S) uint8."""
    images = np.empty((len(names), image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((len(names), image_size, image_size), dtype=np.uint8)
    for i, name in enumerate(tqdm(names, desc="decoding Pets", disable=not progress, leave=False)):
        images[i], masks[i] = preprocess_pet(*_read_pair(root, name), image_size)
    return images, masks


def load_pets_native(
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    limit: int | None = None,
    **fetch_kwargs,
) -> NativeSizeData:
    """The first ``limit`` images of an official split at their own sizes, not resized.

    For evaluation at full resolution (what a user of the model sees): images (H_i, W_i, 3)
    uint8 and masks (H_i, W_i) classes 0, 1, 2. Not cached: it is meant for a few hundred
    images at most.
    """
    root = find_or_fetch_pets(data_dir, **fetch_kwargs)
    names = read_split_names(root / "annotations" / f"{split}.txt")[:limit]
    return _decode_native(root, names)


def pets_val_native(
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    **fetch_kwargs,
) -> NativeSizeData:
    """The validation part of ``pets_splits`` (same images, same order) at native size,
    so that training can score its validation the way a user's prediction is scored."""
    root = find_or_fetch_pets(data_dir, **fetch_kwargs)
    names = read_split_names(root / "annotations" / "trainval.txt")
    _, val_index = holdout(len(names), val_fraction, seed)
    return _decode_native(root, [names[i] for i in val_index])


def _decode_native(root: Path, names: list[str]) -> NativeSizeData:
    """The listed pairs at their own sizes: (H_i, W_i, 3) images, (H_i, W_i) classes."""
    images, masks = [], []
    for name in names:
        image, trimap = _read_pair(root, name)
        images.append(image)
        masks.append(trimap - np.uint8(1))
    return NativeSizeData(
        images=images,
        masks=masks,
        class_names=list(PETS_CLASS_NAMES),
        mask_values=list(PETS_MASK_VALUES),
        names=names,
    )


def pets_splits(
    data_dir: str | os.PathLike | None = None,
    image_size: int = 128,
    val_fraction: float = 0.1,
    seed: int = 0,
    **fetch_kwargs,
) -> tuple[SegmentationData, SegmentationData]:
    """(train, validation) carved from the official trainval list.

    The validation set is the seeded hold-out of ``splits.holdout`` (the same seed gives the
    same hold-out on every machine); both parts keep the list order. The official test split
    stays untouched: load it with ``load_pets(split="test")``.
    """
    trainval = load_pets(data_dir, image_size, "trainval", **fetch_kwargs)
    train_index, val_index = holdout(len(trainval), val_fraction, seed)
    return trainval.subset(train_index), trainval.subset(val_index)
