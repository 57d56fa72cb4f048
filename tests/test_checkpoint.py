"""Checkpoints: round trip, atomic writes, and refusal of bad or unsafe files."""

import json
import pickle

import numpy as np
import pytest

from minunet.errors import CheckpointError
from minunet.io import atomic
from minunet.io.checkpoint import build_model, load_checkpoint, save_checkpoint
from minunet.model import UNet


def small_net(seed=0):
    return UNet(3, 3, base_channels=4, depth=2, seed=seed)


def save(path, net, **meta):
    save_checkpoint(path, net.state_dict(), {"model": net.config, **meta})


def test_round_trip(tmp_path):
    net = small_net()
    save(tmp_path / "a.npz", net, data={"class_names": ["pet", "background", "outline"]})
    ck = load_checkpoint(tmp_path / "a.npz")
    assert ck.meta["format_version"] == 1
    assert ck.meta["data"]["class_names"][0] == "pet"
    net2 = build_model(ck)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(net.eval().forward(x), net2.forward(x))


def test_failed_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    save(path, small_net(0), train={"epoch": 1})
    before = path.read_bytes()

    def explode(f, **arrays):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        save(path, small_net(1), train={"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # no temp file left


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "a.npz"
    save(path, small_net())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "a.npz"
    net = small_net()
    arrays = {"model/" + k: v for k, v in net.state_dict().items()}
    arrays["meta"] = np.frombuffer(
        json.dumps({"format_version": 99, "model": net.config}).encode(), np.uint8
    )
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="version 99 is newer"):
        load_checkpoint(path)


def test_other_architecture_is_refused(tmp_path):
    path = tmp_path / "a.npz"
    net = small_net()
    meta = {"model": dict(net.config, base_channels=8)}
    save_checkpoint(path, net.state_dict(), meta)
    with pytest.raises(CheckpointError, match="do not fit"):
        build_model(load_checkpoint(path))


class Payload:
    """Unpickling this would touch a file: the side effect a malicious file would have."""

    def __reduce__(self):
        return (open, (str(Payload.marker), "w"))


def test_pickled_objects_are_refused_without_running(tmp_path):
    path = tmp_path / "evil.npz"
    Payload.marker = tmp_path / "pwned"
    net = small_net()
    arrays = {"model/" + k: v for k, v in net.state_dict().items()}
    arrays["model/head.bias"] = np.array([Payload()], dtype=object)
    arrays["meta"] = np.frombuffer(
        json.dumps({"format_version": 1, "model": net.config}).encode(), np.uint8
    )
    np.savez(path, **arrays)
    assert pickle.dumps  # the object really is pickled inside the file
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    assert not Payload.marker.exists()


def test_missing_file_and_non_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.npz")
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minunet checkpoint"):
        load_checkpoint(tmp_path / "x.npz")
