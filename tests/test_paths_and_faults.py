"""Paths checked before any work (exit code 2), and faults during a run (exit code 1):
a full disk leaves the previous file and says so, files get the user's umask, and
nothing is left half-written."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest
from PIL import Image
from test_train import tiny_config

from minunet import cli
from minunet.errors import CheckpointError, RunFailure
from minunet.infer import evaluate, predict
from minunet.io import atomic, export
from minunet.io.atomic import atomic_write
from minunet.io.checkpoint import load_checkpoint, save_checkpoint
from minunet.model import UNet
from minunet.train import __main__ as train_cli
from minunet.train import train, tune


def _no_work(*args, **kwargs):
    raise AssertionError("the command started working before it checked its paths")


def _one_error_line(capsys, main, argv, code=2) -> str:
    assert cli.run_cli(main, argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.fixture
def files(tmp_path):
    """A small checkpoint, an image, a plain file and a folder."""
    net = UNet(3, 3, base_channels=4, depth=2)
    ckpt = tmp_path / "c.npz"
    save_checkpoint(ckpt, net.state_dict(), {"model": net.config})
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder")
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"ckpt": str(ckpt), "image": str(image), "file": str(plain), "dir": str(folder)}


@pytest.fixture
def no_work(monkeypatch):
    for module, step in ((train_cli, "train"), (tune, "import_optuna")):
        monkeypatch.setattr(module, step, _no_work)
    for module in (predict, evaluate, export):
        monkeypatch.setattr(module, "load_model", _no_work)


# (command's main, its arguments, words of its error line); {F}: a plain file, {D}: a
# folder, {C}: a checkpoint, {I}: an image
PATH_CASES = {
    "train --out file": (train_cli.main, ["--out", "{F}"], "--out {F}: is a file, not a folder"),
    "predict --out file": (
        predict.main,
        ["--checkpoint", "{C}", "{I}", "--out", "{F}"],
        "--out {F}: is a file, not a folder",
    ),
    "evaluate --out file": (
        evaluate.main,
        ["--checkpoint", "{C}", "--out", "{F}"],
        "--out {F}: is a file, not a folder",
    ),
    "tune --out file": (tune.main, ["--out", "{F}", "--lr", "1e-3,1e-2"], "--out {F}: is a file"),
    "export --to a folder": (
        export.main,
        ["--checkpoint", "{C}", "--to", "torch", "{D}"],
        "--to {D}: is a folder",
    ),
    "export --out a folder": (
        export.main,
        ["--from", "torch", "{F}", "--config-from", "{C}", "--out", "{D}"],
        "--out {D}: is a folder",
    ),
    "predict --checkpoint folder": (
        predict.main,
        ["--checkpoint", "{D}", "{I}"],
        "--checkpoint {D}: is a folder, not a file",
    ),
    "evaluate --checkpoint folder": (
        evaluate.main,
        ["--checkpoint", "{D}"],
        "--checkpoint {D}: is a folder, not a file",
    ),
    "export --checkpoint folder": (
        export.main,
        ["--checkpoint", "{D}", "--to", "onnx", "m.onnx"],
        "--checkpoint {D}: is a folder",
    ),
    "predict image missing": (
        predict.main,
        ["--checkpoint", "{C}", "{D}/none.png"],
        "IMAGE {D}/none.png: no such file",
    ),
    "export --from missing": (
        export.main,
        ["--from", "torch", "{D}/none.pt", "--config-from", "{C}", "--out", "o.npz"],
        "--from {D}/none.pt: no such file",
    ),
    "train --data-dir missing": (
        train_cli.main,
        ["--data", "folder", "--data-dir", "{D}/none"],
        "--data-dir {D}/none: no such folder",
    ),
    "train --data-dir file": (
        train_cli.main,
        ["--data", "isbi2012", "--data-dir", "{F}"],
        "--data-dir {F}: is a file, not a folder",
    ),
    "train --data folder without --data-dir": (
        train_cli.main,
        ["--data", "folder"],
        "--data folder needs --data-dir",
    ),
    "train pets --no-download missing": (
        train_cli.main,
        ["--data", "pets", "--no-download", "--data-dir", "{D}/none"],
        "--data-dir {D}/none: no such folder",
    ),
    "train --out under a file": (
        train_cli.main,
        ["--out", "{F}/run"],
        "is a file, so no folder can be made there",
    ),
    "train --resume without last.npz": (
        train_cli.main,
        ["--out", "{D}", "--resume"],
        "--resume: no {D}/last.npz to resume from",
    ),
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_a_bad_path_is_one_line_before_any_work(case, files, no_work, capsys, tmp_path):
    main, argv, words = PATH_CASES[case]
    names = {"F": files["file"], "D": files["dir"], "C": files["ckpt"], "I": files["image"]}
    before = sorted(p.name for p in tmp_path.rglob("*"))
    err = _one_error_line(capsys, main, [a.format(**names) for a in argv])
    assert words.format(**names) in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing made


def test_a_folder_that_is_not_writable(files, no_work, capsys, monkeypatch):
    """Simulated: the tests may run as root, for whom every folder is writable."""
    real_access = os.access
    target = os.path.realpath(files["dir"])

    def access(path, mode):
        if os.path.realpath(path) == target and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(cli.os, "access", access)
    err = _one_error_line(capsys, train_cli.main, ["--out", files["dir"] + "/run"])
    assert "is not writable (permission denied)" in err
    err = _one_error_line(
        capsys, predict.main, ["--checkpoint", files["ckpt"], files["image"], "--out", files["dir"]]
    )
    assert f"--out {files['dir']}: {target} is not writable" in err


def test_an_unreadable_input(files, no_work, capsys, monkeypatch):
    real_access = os.access
    unreadable = {os.path.realpath(files["ckpt"]), os.path.realpath(files["dir"])}

    def access(path, mode):
        return False if os.path.realpath(path) in unreadable else real_access(path, mode)

    monkeypatch.setattr(cli.os, "access", access)
    err = _one_error_line(capsys, evaluate.main, ["--checkpoint", files["ckpt"]])
    assert "not readable (permission denied)" in err
    err = _one_error_line(capsys, train_cli.main, ["--data", "folder", "--data-dir", files["dir"]])
    assert f"--data-dir {files['dir']}: not readable" in err


@pytest.mark.skipif(
    os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere"
)
def test_a_read_only_folder_for_real(tmp_path, no_work, capsys):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    try:
        err = _one_error_line(capsys, train_cli.main, ["--out", str(folder / "run")])
        assert "is not writable" in err
    finally:
        folder.chmod(0o700)


def test_load_checkpoint_names_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


# -- faults while writing --------------------------------------------------------------------


def _disk_full(f, *args, **kwargs):
    f.write(b"the first bytes of a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_previous_file_and_says_so(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"the good old content\n")
    with pytest.raises(RunFailure) as info:
        atomic_write(path, _disk_full)
    assert str(info.value) == (
        f"could not write {path}: No space left on device; the previous metrics.jsonl is intact"
    )
    assert path.read_bytes() == b"the good old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary left


def test_a_full_disk_on_a_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RunFailure, match="nothing written"):
        atomic_write(tmp_path / "new.json", _disk_full)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_a_checkpoint_is_saved(tmp_path, monkeypatch):
    net = UNet(3, 3, base_channels=4, depth=2, seed=0)
    path = tmp_path / "last.npz"
    save_checkpoint(path, net.state_dict(), {"model": net.config, "train": {"epoch": 1}})
    before = path.read_bytes()
    monkeypatch.setattr(atomic.np, "savez", _disk_full)
    other = UNet(3, 3, base_channels=4, depth=2, seed=1)
    with pytest.raises(RunFailure, match="the previous last.npz is intact"):
        save_checkpoint(path, other.state_dict(), {"model": other.config, "train": {"epoch": 2}})
    assert path.read_bytes() == before
    assert load_checkpoint(path).meta["train"] == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]


def test_a_full_disk_during_training_exits_1_with_the_last_good_state(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1), log=lambda *_: None)
    good = (out / "last.npz").read_bytes()
    monkeypatch.setattr(atomic.np, "savez", _disk_full)
    argv = [
        *("--data", "synthetic", "--image-size", "32", "--base-channels", "4", "--depth", "2"),
        *("--train-size", "16", "--val-size", "8", "--batch-size", "4", "--lr", "3e-3"),
        *("--epochs", "2", "--no-progress", "--resume", "--out", str(out)),
    ]
    assert cli.run_cli(train_cli.main, argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "is intact" in err
    assert (out / "last.npz").read_bytes() == good
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not (out / ".lock").exists()  # the crash released the run's lock


def test_a_diverging_loss_exits_1(tmp_path, capsys):
    argv = [
        *("--data", "synthetic", "--image-size", "32", "--base-channels", "4", "--depth", "2"),
        *("--train-size", "16", "--val-size", "8", "--batch-size", "4", "--epochs", "1"),
        *("--lr", "1e38", "--optimizer", "sgd", "--log-every", "1", "--no-progress"),
        *("--out", str(tmp_path / "run")),
    ]
    assert cli.run_cli(train_cli.main, argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the loss became non-finite" in err
    assert not (tmp_path / "run" / ".lock").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_files_get_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", lambda f: f.write(b"{}"))
        net = UNet(3, 3, base_channels=4, depth=2)
        save_checkpoint(tmp_path / "b.npz", net.state_dict(), {"model": net.config})
    finally:
        os.umask(previous)
    for name in ("a.json", "b.npz"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))
