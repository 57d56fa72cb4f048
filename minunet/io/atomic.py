"""Atomic file writes: a crash, Ctrl-C or full disk mid-write never leaves a half-written file.

The data goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target. ``os.replace`` is atomic on POSIX and Windows, so a reader sees either
the old file or the new one, never a mixture. A write that fails (no space left, an I/O
error) removes the temporary file and raises one ``RunFailure`` line saying the previous
file is intact.

The file gets the permissions any other new file would (0666 less the user's umask), not
the 0600 that ``tempfile.mkstemp`` gives its temporary files: a checkpoint written on a
shared machine stays readable by the group when the umask says so.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from minunet.errors import RunFailure


def current_umask() -> int:
    """The process's umask. POSIX can only read it by setting it, so it is set to the
    common 022 and restored at once (a file another thread creates in between gets 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    If the body raises (or the process is interrupted), the temporary file is removed
    and ``path`` keeps its previous content. An OSError (disk full, I/O error) becomes
    a RunFailure that says so.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing written"
            reason = exc.strerror or str(exc)
            raise RunFailure(f"could not write {path}: {reason}; {kept}") from exc
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``write(f)`` on a temporary file and rename it to ``path`` when it returns."""
    with atomic_open(path, mode) as f:
        write(f)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to ``path`` atomically (uncompressed: checkpoints are mostly float noise)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
