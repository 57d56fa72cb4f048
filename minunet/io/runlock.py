"""One training run per output folder at a time: ``OUT/.lock``.

Two runs writing the same ``last.npz``, ``best.npz`` and ``metrics.jsonl`` would each
overwrite the other's files with a mixture of two runs. A run therefore takes the lock
file first, created with ``O_CREAT | O_EXCL``: the file system lets exactly one process
create it, so of two runs started at once one gets it and the other is refused with a
line naming the holder. The file holds that holder's pid, host and start time (JSON).

Released when the run ends, whichever way: the lock object removes the file when it is
dropped (at the end of ``train``, as its local variable goes away, a crash's included)
and at the latest when the process exits (Ctrl-C too). A run that could not clean up
(killed with SIGKILL, a machine that went down) leaves a stale lock: the next run on the
same host sees that its pid is no longer alive and takes it over with a warning. A lock
from another host cannot be checked that way; the refusal says how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from minunet.errors import RunLocked

LOCK_NAME = ".lock"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:  # Windows: no such process, or no right to ask
        return False
    return True


class RunLock:
    """The lock of ``folder``, held from construction until ``release`` (or until the
    object is dropped, or the process exits)."""

    def __init__(self, folder: str | os.PathLike, log: Any = None) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self._take(log or (lambda msg: print(msg, file=sys.stderr)))
        # Removes the file when this object goes away or, at the latest, at exit.
        self._finalizer = weakref.finalize(self, _remove_if_ours, self.path, self.owner)

    def release(self) -> None:
        self._finalizer()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _take(self, log: Any) -> None:
        for _ in range(2):  # a second try after taking over a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _read(self.path)
                if not self._stale(holder):
                    raise RunLocked(_refusal(self.path, holder)) from None
                if holder is None or holder.get("pid") != os.getpid():
                    log(
                        f"warning: {self.path}: taking over the lock of {_who(holder)}, "
                        "which is no longer running (it stopped without cleaning up)"
                    )
                _discard(self.path, holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return
        raise RunLocked(f"{self.path}: another run took this folder's lock just now")

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        """True for a lock this process may take: its holder is dead, or is this very
        process (a second run in the same process, after the first one ended)."""
        if holder is None:  # unreadable: a holder that died while writing it, or garbage
            return _older_than(self.path, seconds=10)
        if holder.get("host") != self.owner["host"]:
            return False  # its pid means nothing here
        pid = holder.get("pid")
        return not isinstance(pid, int) or pid == os.getpid() or not pid_alive(pid)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return True


def _discard(path: Path, holder: dict[str, Any] | None) -> None:
    """Remove a stale lock. Renaming it away first is atomic, so when two runs take over
    the same stale lock only one removes it; the other's O_EXCL then decides."""
    grave = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
    try:
        os.replace(path, grave)
    except FileNotFoundError:
        return  # the other run got there first
    if _read(grave) != holder:  # not the lock we judged stale: put it back
        os.replace(grave, path)
        return
    os.unlink(grave)


def _remove_if_ours(path: Path, owner: dict[str, Any]) -> None:
    if _read(path) == owner:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _who(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown run"
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {started})"


def _refusal(path: Path, holder: dict[str, Any] | None) -> str:
    return (
        f"--out {path.parent} is in use by another run, {_who(holder)}: wait for it to "
        f"finish or choose another --out (if no run uses it, remove {path})"
    )
