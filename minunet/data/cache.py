"""The decoded-data cache: one ``.npz`` of arrays per (data set, options), beside the data.

Decoding thousands of JPEGs takes longer than a second run should wait, so a source
(pets, folder, isbi2012) keeps its decoded arrays here. Each cache file carries two
entries besides the arrays:

* ``_format``: ``CACHE_FORMAT``, the layout and meaning of the arrays. A file written by a
  minunet with another format (or by one from before formats existed) is not read; it is
  rebuilt and overwritten.
* ``_key``: the source's fingerprint of the files and options it was made from (their
  names, sizes and modification times), so an edited image makes the file stale.

A missing, truncated, corrupt, stale or other-format file reads as "no cache" and the
data is decoded again. Writes are atomic (``save_npz_atomic``): a full disk or a killed
run leaves the previous good file, or none, never half a file; a failed write is reported
in one line and costs only time, never the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from minunet.errors import RunFailure
from minunet.io.atomic import save_npz_atomic

CACHE_FORMAT = 2  # bump when the cached arrays' layout or meaning changes
CACHE_DIR = ".minunet-cache"  # inside the data folder, when it is writable
ENV_DATA_DIR = "MINUNET_DATA"  # the cache folder otherwise (default ~/.cache/minunet)
_FORMAT, _KEY = "_format", "_key"  # the two bookkeeping entries of every cache file


def default_cache_dir() -> Path:
    """``$MINUNET_DATA``, or ``~/.cache/minunet``."""
    return Path(os.environ.get(ENV_DATA_DIR) or "~/.cache/minunet").expanduser()


def is_writable(folder: Path) -> bool:
    """Whether we may write in ``folder`` (or create it).

    The write bits are checked as well as ``os.access``: root passes ``os.access``
    everywhere, and a folder someone made read-only (a shared data set) must not get a
    cache written into it.
    """
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def cache_folder(root: Path, kind: str) -> Path:
    """Where the caches of data folder ``root`` go.

    ``ROOT/.minunet-cache`` when ``root`` is writable, else (a read-only shared copy)
    ``$MINUNET_DATA/<kind>-cache/<tag>``, the tag derived from the root's absolute path.
    """
    if is_writable(root):
        return root / CACHE_DIR
    tag = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return default_cache_dir() / f"{kind}-cache" / tag


def fingerprint(items: list[Any]) -> str:
    """A short stable hash of JSON-able ``items``: a cache file's key, so changed inputs
    (files' sizes and times, options) give a new key instead of reusing a stale file."""
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:20]


def file_stat(path: Path, root: Path) -> list[Any]:
    """``[path relative to root, size, mtime_ns]``: how a file enters a fingerprint."""
    st = path.stat()
    return [str(path.relative_to(root)), st.st_size, st.st_mtime_ns]


def load_cache(path: Path, key: str, required: list[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays (bookkeeping entries removed), or None if the file is missing,
    unreadable, of another ``CACHE_FORMAT``, made from other inputs (``key``), or lacks
    one of the ``required`` arrays. The caller then decodes and calls ``save_cache``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _FORMAT not in npz.files or int(npz[_FORMAT]) != CACHE_FORMAT:
                return None  # written by another minunet: rebuilt
            if _KEY not in npz.files or str(npz[_KEY]) != key:
                return None  # stale: made from other files or options
            if not all(name in npz.files for name in required):
                return None
            return {name: npz[name] for name in npz.files if name not in (_FORMAT, _KEY)}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None  # truncated or corrupt (a killed run): rebuilt and overwritten


def save_cache(path: Path, arrays: dict[str, np.ndarray], key: str) -> bool:
    """Write ``arrays`` to ``path`` atomically, with the format and ``key``. Returns
    whether it was written; a failure (a full disk, a read-only folder) is one warning
    line, and the previous file at ``path`` (if any) stays as it was."""
    entries = {**arrays, _FORMAT: np.array(CACHE_FORMAT), _KEY: np.array(key)}
    try:
        save_npz_atomic(path, entries)
    except (OSError, RunFailure) as exc:  # atomic writes report an OSError as a RunFailure
        cause = exc.__cause__ if isinstance(exc, RunFailure) else exc
        reason = getattr(cause, "strerror", None) or exc
        kept = "the previous file is kept" if path.is_file() else "nothing was left behind"
        warnings.warn(
            f"{path}: cannot write the data cache ({reason}); {kept}, and the "
            "next run decodes the data again: free disk space or set $MINUNET_DATA to a "
            "writable folder",
            stacklevel=2,
        )
        return False
    return True


def remove_stale(path: Path, prefix: str) -> None:
    """Delete the other ``<prefix>*.npz`` files beside ``path`` (caches of older keys) and
    the files derived from them (``<their stem>-*.npz``), keeping ``path``'s own family."""
    for old in path.parent.glob(f"{prefix}*.npz"):
        if not old.name.startswith(path.stem):
            try:
                old.unlink(missing_ok=True)
            except OSError:  # left for the next run: a stale file is never read
                pass
