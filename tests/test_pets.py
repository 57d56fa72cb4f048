"""Oxford-IIIT Pets: download, resume, verification, safe extraction, decoding, the cache.

No internet: a fixture builds a tiny archive pair in the official layout, with the release's
quirks (a PNG and an RGBA PNG named .jpg, a grayscale and a CMYK JPEG, AppleDouble ``._``
twins, stray ``.mat`` files, a ``#`` header in list.txt, an uncompressed tar named .tar.gz),
and serves it from a local HTTP server that can drop the connection mid-file and can ignore
``Range``. One test reads the real sample from the folder ``MINUNET_PETS_SAMPLE`` names, when set.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import shutil
import socket
import stat
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from helpers_cli import run_python
from PIL import Image

from minunet.data import cache, pets
from minunet.data.dataset import PETS_CLASS_NAMES
from minunet.data.download import download, extract_tar
from minunet.data.imageio import resize_image, resize_mask
from minunet.data.splits import holdout
from minunet.errors import DataError

# The real Pets sample (the official layout, a few hundred images) lives outside the
# repository: point MINUNET_PETS_SAMPLE at it (as benchmarks/fingerprint.sh does).
SAMPLE = Path(os.environ.get("MINUNET_PETS_SAMPLE", "")).expanduser()
SIZE = 24  # the test image size: small, and different from every source size

TRAINVAL = ["Abyssinian_1", "Abyssinian_2", "Bengal_1", "Bengal_2", "beagle_1"]
TEST = ["Abyssinian_3", "Bengal_3", "beagle_2"]
# How each image file is written; the release has every one of these under a .jpg name.
KIND = {"Abyssinian_2": "png", "Bengal_1": "rgba", "Bengal_2": "gray", "beagle_1": "cmyk"}


# ------------------------------------------------------------------------------ fixtures


@dataclass
class PetsFixture:
    extracted: Path  # the official extracted layout
    archives: Path  # images.tar.gz (gzip) and annotations.tar.gz (an uncompressed tar)
    infos: tuple[pets.PetsArchive, ...]  # their real sizes and SHA-256s
    rgb: dict[str, np.ndarray] = field(default_factory=dict)  # the pixels each file was made of
    trimaps: dict[str, np.ndarray] = field(default_factory=dict)


def _write_image(path: Path, rgb: np.ndarray, kind: str) -> None:
    im = Image.fromarray(rgb)
    if kind == "png":
        im.save(path, format="PNG")
    elif kind == "rgba":
        im.putalpha(128)
        im.save(path, format="PNG")
    elif kind == "gray":
        im.convert("L").save(path, format="JPEG", quality=95)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, format="JPEG", quality=95)
    else:
        im.save(path, format="JPEG", quality=95)


def _build_layout(root: Path, rng: np.random.Generator) -> PetsFixture:
    (root / "images").mkdir(parents=True)
    trimap_dir = root / "annotations" / "trimaps"
    trimap_dir.mkdir(parents=True)
    (root / "annotations" / "xmls").mkdir()
    fx = PetsFixture(extracted=root, archives=root.parent / "archives", infos=())
    for name in TRAINVAL + TEST:
        h, w = (int(v) for v in rng.integers(20, 48, size=2))
        # Smooth colour blocks so the JPEGs stay close to their source pixels.
        blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        rgb = np.asarray(Image.fromarray(blocks).resize((w, h), Image.Resampling.NEAREST))
        fx.rgb[name] = rgb
        _write_image(root / "images" / f"{name}.jpg", rgb, KIND.get(name, "jpeg"))
        trimap = np.full((h, w), 2, dtype=np.uint8)  # background
        trimap[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 3  # outline ring
        trimap[h // 4 + 2 : 3 * h // 4 - 2, w // 4 + 2 : 3 * w // 4 - 2] = 1  # pet
        fx.trimaps[name] = trimap
        Image.fromarray(trimap, mode="L").save(trimap_dir / f"{name}.png")
        (root / "annotations" / "xmls" / f"{name}.xml").write_text("<annotation/>")
    # The release's strays: .mat files among the images, AppleDouble twins that are not images.
    (root / "images" / "Abyssinian_100.mat").write_bytes(b"MATLAB 5.0 MAT-file\x00" * 4)
    (trimap_dir / "._Abyssinian_1.png").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")
    (root / "images" / "._Bengal_1.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X        ")

    def lines(names):
        return "".join(f"{n} {i + 1} {1 + (n[0].islower())} {i + 1}\n" for i, n in enumerate(names))

    (root / "annotations" / "trainval.txt").write_text(lines(TRAINVAL))
    (root / "annotations" / "test.txt").write_text(lines(TEST))
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
    (root / "annotations" / "list.txt").write_text(header + lines(TRAINVAL + TEST))
    return fx


def _tar_folder(src: Path, arcname: str, dest: Path, *, gzipped: bool) -> pets.PetsArchive:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(src, arcname=arcname)
    data = gzip.compress(buffer.getvalue(), mtime=0) if gzipped else buffer.getvalue()
    dest.write_bytes(data)
    return pets.PetsArchive(dest.name, len(data), hashlib.sha256(data).hexdigest(), arcname)


@pytest.fixture(scope="module")
def pets_data(tmp_path_factory) -> PetsFixture:
    base = tmp_path_factory.mktemp("pets")
    fx = _build_layout(base / "extracted", np.random.default_rng(0))
    fx.archives.mkdir()
    images = _tar_folder(
        fx.extracted / "images", "images", fx.archives / "images.tar.gz", gzipped=True
    )
    # Some mirrors serve an uncompressed tar under the .tar.gz name.
    annotations = _tar_folder(
        fx.extracted / "annotations",
        "annotations",
        fx.archives / "annotations.tar.gz",
        gzipped=False,
    )
    fx.infos = (images, annotations)
    return fx


@pytest.fixture
def fake_release(pets_data, monkeypatch, tmp_path) -> PetsFixture:
    """Point the module at the fixture's archives and keep every cache inside tmp_path."""
    monkeypatch.setattr(pets, "PETS_ARCHIVES", pets_data.infos)
    monkeypatch.setenv(cache.ENV_DATA_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(pets.ENV_PETS_URL, raising=False)
    return pets_data


@dataclass
class ServerState:
    root: Path
    honour_range: bool = True
    cuts_left: int = 0  # how many responses to cut short
    cut_after: int = 0  # bytes of body sent before a cut
    log: list[tuple[str, str | None, int]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server naming
        state: ServerState = self.server.state
        path = state.root / self.path.rsplit("/", 1)[-1]
        requested = self.headers.get("Range")
        if not path.is_file():
            state.log.append((self.path, requested, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if requested and state.honour_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                state.log.append((self.path, requested, 416))
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        state.log.append((self.path, requested, 206 if start else 200))
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cuts_left > 0:
            state.cuts_left -= 1
            self.wfile.write(body[: state.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # the peer sees the body end early
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # writes to a connection we cut on purpose fail; that is the point


@pytest.fixture
def server(pets_data):
    """A local HTTP server for the fixture archives; yields (base_url, state)."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState(root=pets_data.archives)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/pets", httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _copy_extracted(pets_data: PetsFixture, dest: Path) -> Path:
    return Path(shutil.copytree(pets_data.extracted, dest))


def _leftovers(folder: Path) -> list[str]:
    """Temporary or partial files a failed step might have left behind."""
    return [
        str(p)
        for p in folder.rglob("*")
        if p.name.startswith(".extract-") or p.suffix in (".part", ".tmp")
    ]


# ------------------------------------------------------------------------------ download


def test_download_extract_and_load_from_the_cache_dir(fake_release, server, tmp_path, monkeypatch):
    url, state = server
    monkeypatch.setenv(pets.ENV_PETS_URL, url)  # the base URL comes from the environment
    root = pets.find_or_fetch_pets(progress=False)
    assert root == tmp_path / "cache" / pets.ROOT_NAME
    assert pets.is_pets_root(root)
    assert sorted(p for p, _, _ in state.log) == ["/pets/annotations.tar.gz", "/pets/images.tar.gz"]
    assert _leftovers(root) == []
    assert pets.find_or_fetch_pets(progress=False) == root  # found, not fetched again
    assert len(state.log) == 2
    data = pets.load_pets(image_size=SIZE, split="test", progress=False)
    assert data.names == TEST


def test_resume_after_a_dropped_connection(fake_release, server, tmp_path):
    url, state = server
    archive = fake_release.infos[0]
    state.cuts_left, state.cut_after = 1, archive.size // 2
    dest = tmp_path / archive.name
    download(
        f"{url}/{archive.name}",
        dest,
        sha256=archive.sha256,
        size=archive.size,
        backoff=0,
        progress=False,
    )
    assert dest.read_bytes() == (fake_release.archives / archive.name).read_bytes()
    assert [(r, s) for _, r, s in state.log] == [(None, 200), (f"bytes={archive.size // 2}-", 206)]
    assert not dest.with_name(dest.name + ".part").exists()


def test_a_server_that_ignores_range_restarts_the_file(fake_release, server, tmp_path):
    url, state = server
    archive = fake_release.infos[0]
    state.honour_range, state.cuts_left, state.cut_after = False, 1, archive.size // 3
    dest = tmp_path / archive.name
    download(
        f"{url}/{archive.name}",
        dest,
        sha256=archive.sha256,
        size=archive.size,
        backoff=0,
        progress=False,
    )
    assert dest.read_bytes() == (fake_release.archives / archive.name).read_bytes()
    assert [s for _, _, s in state.log] == [200, 200]
    assert state.log[1][1] is not None  # it asked for a range and got the whole file


def test_a_partial_file_from_an_earlier_run_is_resumed(fake_release, server, tmp_path):
    url, state = server
    archive = fake_release.infos[1]
    original = (fake_release.archives / archive.name).read_bytes()
    (tmp_path / (archive.name + ".part")).write_bytes(original[:1000])
    dest = download(
        f"{url}/{archive.name}", tmp_path / archive.name, sha256=archive.sha256, progress=False
    )
    assert dest.read_bytes() == original
    assert state.log == [(f"/pets/{archive.name}", "bytes=1000-", 206)]


def test_checksum_mismatch_is_refused_and_not_kept(fake_release, server, tmp_path):
    url, _ = server
    archive = fake_release.infos[0]
    dest = tmp_path / archive.name
    with pytest.raises(DataError) as info:
        download(f"{url}/{archive.name}", dest, sha256="0" * 64, backoff=0, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(dest) in message and "0" * 64 in message and archive.sha256 in message
    assert "--no-verify" in message
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_a_user_archive_with_the_wrong_checksum_is_reported_not_deleted(
    fake_release, tmp_path, monkeypatch
):
    folder = Path(shutil.copytree(fake_release.archives, tmp_path / "mine"))
    wrong = tuple(pets.PetsArchive(a.name, a.size, "f" * 64, a.folder) for a in fake_release.infos)
    monkeypatch.setattr(pets, "PETS_ARCHIVES", wrong)
    with pytest.raises(DataError, match="SHA-256 mismatch.*--no-verify"):
        pets.find_or_fetch_pets(folder, download=False, progress=False)
    assert (folder / "images.tar.gz").is_file()
    # A mirror's repackaged archive is accepted with the check off.
    assert pets.find_or_fetch_pets(folder, download=False, verify=False) == folder


def test_http_not_found_is_a_clear_error(fake_release, server, tmp_path):
    url, state = server
    with pytest.raises(DataError, match=r"missing\.tar\.gz: HTTP 404.*MINUNET_PETS_URL"):
        download(f"{url}/missing.tar.gz", tmp_path / "x", backoff=0, progress=False)
    assert len(state.log) == 1  # a 404 is not retried


def test_archives_the_user_downloaded_are_extracted_in_place(fake_release, tmp_path):
    folder = Path(shutil.copytree(fake_release.archives, tmp_path / "downloads"))
    root = pets.find_or_fetch_pets(folder, download=False, progress=False)
    assert root == folder and pets.is_pets_root(root)
    assert (root / "annotations" / "trimaps" / "Bengal_3.png").is_file()
    assert _leftovers(root) == []


def test_no_data_and_no_download_is_a_one_line_error(fake_release, tmp_path):
    with pytest.raises(DataError) as info:
        pets.find_or_fetch_pets(tmp_path / "empty", download=False)
    message = str(info.value)
    assert "\n" not in message and "images.tar.gz" in message and "annotations.tar.gz" in message


def test_a_truncated_archive_is_a_clear_error_and_leaves_nothing(fake_release, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    images = (fake_release.archives / "images.tar.gz").read_bytes()
    (folder / "images.tar.gz").write_bytes(images[: len(images) // 2])
    shutil.copy(fake_release.archives / "annotations.tar.gz", folder)
    with pytest.raises(DataError, match="images.tar.gz: archive is truncated or corrupt"):
        pets.find_or_fetch_pets(folder, download=False, verify=False)
    assert not (folder / "images").exists()  # a half-extracted folder is never in place
    assert _leftovers(folder) == []


def test_a_truncated_uncompressed_tar_is_a_clear_error(fake_release, tmp_path):
    data = (fake_release.archives / "annotations.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        extract_tar(tmp_path / "cut.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out" / "annotations").exists()


def _malicious_tar(path: Path, member: tarfile.TarInfo) -> None:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("images/fine.jpg")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"abc"))
        tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = 4 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("../evil.txt"),
        _member("images/../../evil.txt"),
        _member("/tmp/minunet-evil.txt"),
        _member("images/link", tarfile.SYMTYPE, "../../evil.txt"),
        _member("images/abs", tarfile.SYMTYPE, "/etc/passwd"),
        _member("images/hard", tarfile.LNKTYPE, "../evil.txt"),
        _member("images/fifo", tarfile.FIFOTYPE),
    ],
    ids=lambda m: m.name,
)
def test_unsafe_tar_members_are_refused(tmp_path, member):
    archive = tmp_path / "bad.tar.gz"
    _malicious_tar(archive, member)
    dest = tmp_path / "out" / "deeper"
    with pytest.raises(DataError, match="refusing to extract"):
        extract_tar(archive, dest)
    assert list(dest.iterdir()) == []  # nothing placed, not even the harmless member
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not Path("/tmp/minunet-evil.txt").exists()


def test_a_link_inside_the_archive_is_allowed(tmp_path):
    archive = tmp_path / "ok.tar"
    _malicious_tar(archive, _member("images/alias.jpg", tarfile.SYMTYPE, "fine.jpg"))
    assert extract_tar(archive, tmp_path / "out") == ["images"]
    assert (tmp_path / "out" / "images" / "alias.jpg").read_bytes() == b"abc"


# ----------------------------------------------------------------------------- decoding


def test_splits_classes_and_odd_files(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    train = pets.load_pets(root, SIZE, "trainval", progress=False)
    test = pets.load_pets(root, SIZE, "test", progress=False)
    assert (len(train), len(test)) == (len(TRAINVAL), len(TEST))
    assert train.names == TRAINVAL and test.names == TEST  # no ._ twins, no .mat files
    assert train.images.shape == (len(TRAINVAL), SIZE, SIZE, 3) and train.images.dtype == np.uint8
    assert train.masks.shape == (len(TRAINVAL), SIZE, SIZE) and train.masks.dtype == np.uint8
    assert train.class_names == list(PETS_CLASS_NAMES) and train.mask_values == [1, 2, 3]

    for data in (train, test):
        for name, image, mask in zip(data.names, data.images, data.masks, strict=True):
            # Trimap value minus one: 1 pet -> 0, 2 background -> 1, 3 outline -> 2.
            np.testing.assert_array_equal(
                mask, resize_mask(fake_release.trimaps[name], (SIZE, SIZE)) - 1
            )
            expected = resize_image(fake_release.rgb[name], (SIZE, SIZE)).astype(int)
            kind = KIND.get(name, "jpeg")
            if kind in ("png", "rgba"):  # lossless: exact (the alpha channel is dropped)
                np.testing.assert_array_equal(image, expected)
            elif kind == "gray":
                assert (image[..., 0] == image[..., 1]).all() and (
                    image[..., 1] == image[..., 2]
                ).all()
            else:  # JPEG, CMYK JPEG: lossy, but the colours must survive
                assert np.abs(image.astype(int) - expected).mean() < 12, name
    assert set(np.unique(train.masks)) == {0, 1, 2}


def test_pets_splits_hold_out_is_seeded_and_disjoint(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    train, val = pets.pets_splits(root, SIZE, val_fraction=0.4, seed=3, progress=False)
    assert (len(train), len(val)) == (3, 2)
    assert sorted(train.names + val.names) == sorted(TRAINVAL)
    again_train, again_val = pets.pets_splits(root, SIZE, val_fraction=0.4, seed=3, progress=False)
    assert again_val.names == val.names
    np.testing.assert_array_equal(again_val.images, val.images)
    # The one hold-out rule of every source (minunet.data.splits), on the list's order.
    _, val_index = holdout(len(TRAINVAL), 0.4, 3)
    assert val.names == [TRAINVAL[i] for i in val_index]


# -------------------------------------------------------------------------------- cache


def test_the_second_load_reads_the_cache_without_decoding(fake_release, tmp_path, monkeypatch):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    first = pets.load_pets(root, SIZE, progress=False)
    assert pets.pets_cache_file(root, "trainval", SIZE).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(pets, "read_rgb", refuse)
    monkeypatch.setattr(pets, "_read_trimap", refuse)
    start = time.perf_counter()
    second = pets.load_pets(root, SIZE, progress=False)
    assert time.perf_counter() - start < 2.0
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.masks, first.masks)
    assert second.names == first.names
    with pytest.raises(AssertionError, match="decoded again"):
        pets.load_pets(root, SIZE + 1, progress=False)  # another size is another cache


def test_a_corrupt_cache_is_rebuilt(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    first = pets.load_pets(root, SIZE, progress=False)
    cache = pets.pets_cache_file(root, "trainval", SIZE)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a killed writer
    again = pets.load_pets(root, SIZE, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    with np.load(cache, allow_pickle=False) as z:  # rewritten whole
        assert z["images"].shape == first.images.shape


def test_a_cache_of_an_older_minunet_is_rebuilt(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    first = pets.load_pets(root, SIZE, progress=False)
    path = pets.pets_cache_file(root, "trainval", SIZE)
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["_format"] = np.array(cache.CACHE_FORMAT - 1)  # same key, other meaning
    arrays["masks"] = np.zeros_like(arrays["masks"])
    np.savez(path, **arrays)
    again = pets.load_pets(root, SIZE, progress=False)
    np.testing.assert_array_equal(again.masks, first.masks)
    with np.load(path) as npz:
        assert int(npz["_format"]) == cache.CACHE_FORMAT


def test_a_stale_cache_is_rebuilt(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    first = pets.load_pets(root, SIZE, progress=False)
    # Replace one photo: new pixels, new size and timestamp.
    path = root / "images" / "Bengal_2.jpg"
    Image.new("RGB", (30, 30), (255, 0, 0)).save(path, format="PNG")
    Image.fromarray(np.full((30, 30), 1, np.uint8)).save(root / "annotations/trimaps/Bengal_2.png")
    os.utime(path, ns=(0, 10**18))
    os.utime(root / "annotations/trimaps/Bengal_2.png", ns=(0, 10**18))
    again = pets.load_pets(root, SIZE, progress=False)
    i = again.names.index("Bengal_2")
    assert (again.images[i] == (255, 0, 0)).all() and (again.masks[i] == 0).all()
    assert not np.array_equal(again.images[i], first.images[i])


def test_a_missing_trimap_is_a_one_line_error_and_no_cache(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    (root / "annotations" / "trimaps" / "Bengal_1.png").unlink()
    with pytest.raises(DataError) as info:
        pets.load_pets(root, SIZE, progress=False)
    message = str(info.value)
    assert "\n" not in message and "Bengal_1.png" in message and "trainval.txt" in message
    assert not (root / cache.CACHE_DIR).exists() or list((root / cache.CACHE_DIR).iterdir()) == []


def test_an_unreadable_image_is_a_one_line_error_and_no_cache(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    (root / "images" / "beagle_1.jpg").write_bytes(b"not a JPEG at all")
    with pytest.raises(DataError) as info:
        pets.load_pets(root, SIZE, progress=False)
    assert "\n" not in str(info.value) and "beagle_1.jpg" in str(info.value)
    assert not (root / cache.CACHE_DIR).exists() or list((root / cache.CACHE_DIR).iterdir()) == []


def test_a_read_only_root_caches_in_the_cache_dir(fake_release, tmp_path):
    root = _copy_extracted(fake_release, tmp_path / "pets")
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")] if p.is_dir()}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        data = pets.load_pets(root, SIZE, progress=False)
        cached = pets.pets_cache_file(root, "trainval", SIZE)
        assert cached.is_file() and cached.is_relative_to(tmp_path / "cache")
        assert not (root / cache.CACHE_DIR).exists()
        assert len(data) == len(TRAINVAL)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


# --------------------------------------------------------------------------- real sample


@pytest.mark.skipif(
    not os.environ.get("MINUNET_PETS_SAMPLE") or not SAMPLE.is_dir(),
    reason="set MINUNET_PETS_SAMPLE to the real Pets sample to run this",
)
def test_the_real_pets_sample(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_DATA_DIR, str(tmp_path / "cache"))  # the sample may be read-only
    train = pets.load_pets(SAMPLE, 64, "trainval", download=False, progress=False)
    test = pets.load_pets(SAMPLE, 64, "test", download=False, progress=False)
    assert (len(train), len(test)) == (356, 335)
    assert not set(train.names) & set(test.names)
    for data in (train, test):
        assert data.images.shape[1:] == (64, 64, 3)
        assert set(np.unique(data.masks)) == {0, 1, 2}
        # Every image has some pet and some background.
        assert all((m == 0).any() and (m == 1).any() for m in data.masks)


def test_train_command_runs_an_epoch_on_the_fixture(pets_data, tmp_path):
    """``python -m minunet.train --data pets --data-dir FIXTURE``, as a user runs it."""
    root = _copy_extracted(pets_data, tmp_path / "pets")
    args = [
        "--data",
        "pets",
        "--data-dir",
        str(root),
        "--no-download",
        "--image-size",
        "32",
        "--base-channels",
        "4",
        "--depth",
        "2",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    ]
    r = run_python(
        "-m", "minunet.train", *args, extra_env={"MINUNET_DATA": str(tmp_path / "cache")}
    )
    assert r.returncode == 0, r.stderr
    assert "epoch 1/1" in r.stdout and (tmp_path / "run" / "best.npz").exists()
