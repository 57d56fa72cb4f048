"""Fetching and unpacking data archives robustly, with the standard library only.

Real data sets come as large archives over slow or flaky links, so this module:

- downloads over HTTP(S) with ``urllib`` into ``NAME.part``, showing a tqdm progress bar;
- retries a dropped connection with exponential backoff, resuming the ``.part`` file with an
  HTTP ``Range`` request (and starting over when the server ignores ``Range``);
- checks the SHA-256 of the finished file, and only then renames it to its final name, so a
  file under the final name is always complete and verified;
- extracts a tar archive (gzip or not: mode ``"r:*"`` sniffs the compression, because some
  mirrors serve an uncompressed tar under a ``.tar.gz`` name) into a temporary folder, refusing
  members that would escape it, and renames the result into place only when it is complete.

Every failure a user can fix is a one-line ``DataError`` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from minunet.errors import DataError

CHUNK_BYTES = 1 << 20  # 1 MiB reads: large enough to be fast, small enough for a smooth bar
USER_AGENT = "minunet-downloader/1 (+https://github.com/)"


# tarfile.FilterError exists where the "data" extraction filter does (Python >= 3.11.4).
_FILTER_ERRORS: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(tarfile, "FilterError", None),) if e is not None
)


class _RetryableError(Exception):
    """A transient transfer failure (dropped connection, short body, 5xx): try again."""


def sha256_of(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in chunks (archives do not fit comfortably in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str, *, fix: str) -> None:
    """Raise a one-line DataError if the file's SHA-256 is not ``expected``.

    ``fix`` is the advice appended to the message (it differs for a file we downloaded and
    removed, and for a file the user supplied, which we never delete).
    """
    got = sha256_of(path)
    if got != expected.lower():
        raise DataError(f"{path}: SHA-256 mismatch (expected {expected}, got {got}); {fix}")


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest + ".part"`` if a previous try left one.

    sha256:  expected hex digest; checked before the file gets its final name. None skips it.
    size:    expected size in bytes, used for the progress bar and to recognise a complete
             ``.part`` when the server answers 416 (range not satisfiable).
    retries: how many times a dropped connection or server error is retried; waits
             ``backoff * 2**attempt`` seconds in between.

    Returns ``dest``. An existing ``dest`` is trusted and returned as is (verify it with
    ``verify_sha256`` if it did not come from this function).
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, size=size, timeout=timeout, progress=progress)
            break
        except _RetryableError as exc:
            if attempt == retries:
                raise DataError(
                    f"{url}: download failed after {retries + 1} tries ({exc}); check the "
                    f"network and run again (the partial file {part} is kept and resumed)"
                ) from None
            time.sleep(backoff * 2**attempt)

    if size is not None and part.stat().st_size != size:
        got = part.stat().st_size
        part.unlink()
        raise DataError(
            f"{dest}: downloaded {got} bytes from {url}, expected {size}; the partial file was "
            "removed, run again (or check the URL)"
        )
    if sha256 is not None:
        try:
            verify_sha256(
                part,
                sha256,
                fix=(
                    f"the file from {url} was removed; run again, or if this mirror serves a "
                    "different build on purpose, disable the check (--no-verify / verify=False)"
                ),
            )
        except DataError as exc:
            # Never keep a file that failed verification, neither as .part (it would be
            # "resumed" into the same bad file) nor under the final name.
            part.unlink()
            raise DataError(str(exc).replace(str(part), str(dest))) from None
    os.replace(part, dest)
    return dest


def _fetch_into(url: str, part: Path, *, size: int | None, timeout: float, progress: bool) -> None:
    """One HTTP attempt: append to ``part`` from its current size, or restart it.

    Raises _RetryableError for failures worth another try, DataError for the others.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and size is not None and have == size:
            return  # the .part is already whole: a previous try stopped just before renaming
        if exc.code == 416:
            part.unlink()  # our .part does not fit the remote file: start over
            raise _RetryableError(f"HTTP 416 for a {have}-byte partial file") from None
        if exc.code >= 500 or exc.code == 429:
            raise _RetryableError(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(
            f"{url}: HTTP {exc.code} {exc.reason}; check the URL (or set MINUNET_PETS_URL "
            "to a working mirror)"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _RetryableError(f"cannot connect: {reason}") from None

    with response:
        if have and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != have:
                part.unlink()
                raise _RetryableError(f"server resumed at byte {start}, not {have}")
            mode = "ab"
        else:
            # 200 to a Range request: the server ignored it and sends the whole file again.
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = size if size is not None else (have + expected if expected is not None else None)
        received = 0
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise _RetryableError(f"connection dropped: {exc!r}") from None
        # urllib returns b"" rather than raising when the peer closes early: check the count.
        if expected is not None and received < expected:
            raise _RetryableError(f"connection dropped after {have + received} bytes")


def _content_range_start(header: str) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL``, or None if unparsable."""
    try:
        unit, _, rest = header.partition(" ")
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------- extraction


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a tar member that could write outside the extraction folder."""
    name = member.name.replace("\\", "/")
    refuse = None
    if posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):  # /x or a drive, C:x
        refuse = "an absolute path"
    elif ".." in name.split("/"):
        refuse = "a '..' path"
    elif member.issym() or member.islnk():
        # A symlink's target is read from the member's folder, a hard link's from the archive
        # root; either way, once normalised, it must stay inside.
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if posixpath.isabs(member.linkname) or target == ".." or target.startswith("../"):
            refuse = f"a link to {member.linkname!r} outside the archive"
    elif not (member.isfile() or member.isdir()):
        refuse = "a device or FIFO"
    if refuse:
        raise DataError(
            f"{archive}: refusing to extract member {member.name!r} ({refuse}); the archive "
            "is not the official one: delete it and download it again"
        )


def _check_complete(tar: tarfile.TarFile, archive: Path) -> None:
    """Raise if the archive stopped before its end-of-archive marker.

    tarfile ends its member list quietly at a truncated header, so a tar cut at a member
    boundary would extract a subset without complaint. A whole archive ends with a zero block
    (which tarfile has just read: ``tar.offset`` is where that block starts) followed only by
    zero padding. Reading the rest also makes gzip check its CRC and length.
    """
    consumed = tar.fileobj.tell() - tar.offset
    complete = consumed == tarfile.BLOCKSIZE
    for chunk in iter(lambda: tar.fileobj.read(CHUNK_BYTES), b""):
        complete = complete and not chunk.strip(b"\0")
    if not complete:
        raise DataError(
            f"{archive}: archive is truncated or corrupt (it ends before its end-of-archive "
            "marker); delete it and download it again"
        )


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Safely extract ``archive`` (tar, tar.gz, tar.bz2, tar.xz) so its contents land in ``dest``.

    Members go to a temporary folder inside ``dest`` first; each top-level entry is renamed into
    ``dest`` only after the whole archive extracted cleanly, so an interrupted or failed
    extraction never leaves a folder that looks valid. An existing entry of the same name is
    replaced. Returns the top-level names that were placed in ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:

                def checked():
                    for member in tar:
                        _check_member(member, archive)
                        yield member

                if hasattr(tarfile, "data_filter"):
                    # Python >= 3.11.4 / 3.10.12: also drops setuid bits and odd permissions.
                    tar.extractall(tmp, members=checked(), filter="data")
                else:  # pragma: no cover - older Pythons rely on _check_member alone
                    tar.extractall(tmp, members=checked())
                _check_complete(tar, archive)
        except _FILTER_ERRORS as exc:  # the "data" filter's own refusals (after ours)
            raise DataError(
                f"{archive}: refusing to extract ({exc}); the archive is not the official one: "
                "delete it and download it again"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, FileNotFoundError) and not archive.exists():
                raise DataError(f"{archive}: file not found") from None
            raise DataError(
                f"{archive}: archive is truncated or corrupt ({type(exc).__name__}: {exc}); "
                "delete it and download it again"
            ) from None
        names = sorted(os.listdir(tmp))
        for entry in names:
            target = dest / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp / entry, target)
        return names
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
