"""Atomic file writes: a crash or Ctrl-C mid-write never leaves a half-written file.

The data goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target. ``os.replace`` is atomic on POSIX and Windows, so a reader sees either
the old file or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    If the body raises (or the process is interrupted), the temporary file is removed
    and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``write(f)`` on a temporary file and rename it to ``path`` when it returns."""
    with atomic_open(path, mode) as f:
        write(f)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to ``path`` atomically (uncompressed: checkpoints are mostly float noise)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
