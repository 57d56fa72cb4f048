"""Every numeric flag of every command is checked before any work: one line naming the
flag, the value and the accepted range, exit code 2, no traceback.

The tables below are read off the parsers themselves: a numeric flag added to any command
without a row in ``minunet.cli.FLAG_RANGES`` and in ``BAD`` fails the first two tests.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from helpers_cli import run_python
from PIL import Image

from minunet import cli
from minunet.errors import MinunetError, RunFailure
from minunet.infer import evaluate, predict
from minunet.io import export
from minunet.io.checkpoint import save_checkpoint
from minunet.model import UNet
from minunet.train import __main__ as train_cli
from minunet.train import tune


class WorkStarted(AssertionError):
    """Raised by the stand-ins of the commands' first real step: a check came too late."""


def _no_work(*args, **kwargs):
    raise WorkStarted("the command started working before it checked its flags")


# command -> (module with main, its parser, the arguments it requires, its first step)
COMMANDS = {
    "train": (train_cli, train_cli.build_parser, [], "train"),
    "predict": (predict, predict.build_parser, ["--checkpoint", "c.npz", "x.png"], "load_model"),
    "evaluate": (evaluate, evaluate.build_parser, ["--checkpoint", "c.npz"], "load_model"),
    "tune": (tune, tune.build_parser, ["--lr", "1e-3,1e-2"], "import_optuna"),
    "export": (export, export.build_parser, [], "load_model"),
}

# Values outside each flag's range (as typed), shared by every command that has the flag.
BAD = {
    "--image-size": ["0", "-32"],
    "--crop": ["0"],
    "--val-fraction": ["0", "1", "1.5", "nan"],
    "--train-size": ["0"],
    "--val-size": ["0"],
    "--ignore-index": ["-1"],
    "--num-classes": ["1"],
    "--limit": ["0"],
    "--base-channels": ["0"],
    "--depth": ["0", "17"],
    "--dropout": ["-0.1", "1"],
    "--epochs": ["0", "-2"],
    "--batch-size": ["0"],
    "--lr": ["0", "-0.1", "inf", "nan"],
    "--weight-decay": ["-0.0001"],
    "--momentum": ["-0.1", "1"],
    "--warmup-epochs": ["-1"],
    "--step-size-epochs": ["-1"],
    "--gamma": ["0", "1.5"],
    "--clip-grad": ["0", "-1"],
    "--scale-min": ["0", "1.1"],
    "--jitter": ["-0.1"],
    "--elastic": ["-1"],
    "--seed": ["-1", "-1000000"],
    "--log-every": ["0"],
    "--max-steps": ["0"],
    "--tile": ["0"],
    "--trials": ["0"],
    "--timeout": ["0", "-5"],
    "--tpe-startup": ["-1"],
    "--prune-startup": ["-1"],
    "--prune-warmup": ["-1"],
}

# The edges each range includes: accepted.
EDGES = {
    "--val-fraction": [0.5, 1e-9],
    "--dropout": [0.0, 0.999],
    "--momentum": [0.0],
    "--gamma": [1.0],
    "--scale-min": [1.0],
    "--depth": [1, 16],
    "--seed": [0],
    "--weight-decay": [0.0],
    "--warmup-epochs": [0.0],
    "--jitter": [0.0],
    "--elastic": [0.0],
    "--tpe-startup": [0],
    "--num-classes": [2],
}


def _numeric(command: str) -> dict[str, argparse.Action]:
    return cli.numeric_flags(COMMANDS[command][1]())


def test_every_numeric_flag_of_every_command_has_a_range():
    missing = {c: sorted(set(_numeric(c)) - set(cli.FLAG_RANGES)) for c in COMMANDS}
    assert not any(missing.values()), f"numeric flags without a FLAG_RANGES row: {missing}"
    used = {flag for c in COMMANDS for flag in _numeric(c)}
    assert set(cli.FLAG_RANGES) == used, "FLAG_RANGES rows no command has"


def test_every_numeric_flag_has_rows_in_this_test():
    missing = {c: sorted(set(_numeric(c)) - set(BAD)) for c in COMMANDS}
    assert not any(missing.values()), f"add bad values to BAD for: {missing}"
    assert set(cli.FLAG_RANGES) == set(BAD)


CASES = [
    (command, flag, value)
    for command in COMMANDS
    for flag in sorted(_numeric(command))
    for value in BAD[flag]
]


@pytest.mark.parametrize("command, flag, value", CASES, ids=[" ".join(c) for c in CASES])
def test_a_bad_value_is_one_line_before_any_work(command, flag, value, capsys, monkeypatch):
    module, _, required, first_step = COMMANDS[command]
    monkeypatch.setattr(module, first_step, _no_work)
    code = cli.run_cli(module.main, [*required, f"{flag}={value}"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    accepted = cli.FLAG_RANGES[flag].text
    number = float(value)
    shown = value if not np.isfinite(number) or "." not in value else f"{number:g}"
    assert lines[0].startswith(f"error: {flag} must be "), lines[0]
    assert accepted in lines[0] and lines[0].endswith(f"got {shown}"), lines[0]


@pytest.mark.parametrize("flag", sorted(EDGES))
def test_the_edges_of_each_range_are_accepted(flag):
    for value in EDGES[flag]:
        cli.check_value(flag, value)


def test_a_value_that_is_no_number_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "train", _no_work)
    assert cli.run_cli(train_cli.main, ["--epochs", "ten"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: argument --epochs: invalid int value: 'ten' (see python -m minunet.train --help)\n"
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--warmup-epochs", "3", "--epochs", "2"],
            "--warmup-epochs must be <= --epochs (2), got 3",
        ),
        (["--schedule", "step"], "--schedule step needs --step-size-epochs >= 1"),
        (["--padding", "valid"], "--padding valid shrinks the output"),
        (["--image-size", "100"], "--image-size 100: input side 100 does not fit"),
        (["--image-size", "40", "--depth", "4"], "nearest valid sizes: 32 or 48"),
        (["--depth", "8", "--image-size", "128"], "--image-size 128: input side 128"),
        (
            ["--crop", "570", "--padding", "valid", "--data", "folder", "--data-dir", "."],
            "--crop 570",
        ),
        (["--class-weights", "1,-1,1"], "--class-weights must be >= 0 and not all 0"),
        (["--class-weights", "0,0,0"], "--class-weights must be >= 0 and not all 0"),
        (["--class-weights", "a,b"], "--class-weights must be sqrt, auto, none or comma-separated"),
        (
            ["--class-weights", "nan,1"],
            "--class-weights must be sqrt, auto, none or comma-separated",
        ),
        (["--class-weights", "1,2", "--num-classes", "3"], "one weight per class (3: from"),
        (["--class-weights", "1,2"], "one weight per class (3: pet, background, outline)"),
        (["--data", "isbi2012", "--data-dir", ".", "--class-weights", "1,2,3"], "(2: membrane"),
        (["--crop", "64"], "--crop is for --data folder or isbi2012, not synthetic"),
    ],
)
def test_flags_that_must_fit_together(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "train", _no_work)
    assert cli.run_cli(train_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_sizes_that_fit_are_accepted(monkeypatch):
    for argv in (
        ["--image-size", "48", "--depth", "4"],
        ["--crop", "572", "--padding", "valid", "--data", "folder", "--data-dir", "."],
        ["--warmup-epochs", "2", "--epochs", "2", "--class-weights", "1,0,2.5"],
    ):
        cli.parse_args(train_cli.build_parser(), argv, train_cli.check_combinations)


def test_batch_size_must_split_among_the_mpi_ranks(capsys, monkeypatch):
    monkeypatch.setattr(train_cli, "train", _no_work)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "3")
    assert cli.run_cli(train_cli.main, ["--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size must be a multiple of the 3 MPI processes" in err and "got 8" in err
    args = ["--batch-size", "9"]
    cli.parse_args(train_cli.build_parser(), args, train_cli.check_combinations)
    args = ["--batch-size", "8", "--no-distributed"]  # one process after all
    cli.parse_args(train_cli.build_parser(), args, train_cli.check_combinations)


@pytest.fixture
def depth2_checkpoint(tmp_path):
    net = UNet(3, 3, base_channels=4, depth=2)
    path = tmp_path / "c.npz"
    save_checkpoint(path, net.state_dict(), {"model": net.config})
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    return path, image


def test_predict_tile_must_fit_the_checkpoints_network(depth2_checkpoint, tmp_path, capsys):
    ckpt, image = depth2_checkpoint
    out = tmp_path / "pred"
    argv = ["--checkpoint", str(ckpt), "--tile", "30", "--out", str(out), str(image)]
    assert cli.run_cli(predict.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tile 30: input side 30 does not fit") and "depth 2" in err
    assert not out.exists()  # refused before anything was written


def test_evaluate_image_size_must_fit_the_checkpoints_network(
    depth2_checkpoint, tmp_path, capsys, monkeypatch
):
    ckpt, _ = depth2_checkpoint
    monkeypatch.setattr(evaluate, "load_splits", _no_work)
    argv = ["--checkpoint", str(ckpt), "--image-size", "30", "--out", str(tmp_path / "ev")]
    assert cli.run_cli(evaluate.main, argv) == 2
    assert "--image-size 30: input side 30 does not fit" in capsys.readouterr().err


def test_tune_checks_trial_values_with_trains_ranges(capsys, monkeypatch):
    monkeypatch.setattr(tune, "import_optuna", _no_work)
    assert cli.run_cli(tune.main, ["--momentum", "0.5:1"]) == 2
    assert capsys.readouterr().err == "error: --momentum must be in [0, 1), got 1\n"


@pytest.mark.parametrize(
    "error, code",
    [
        (MinunetError("bad input"), 2),
        (RunFailure("disk full"), 1),
        (OSError(28, "No space left on device", "runs/x/last.npz"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_exit_codes(error, code, capsys):
    def main(argv):
        raise error

    assert cli.run_cli(main, []) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_help_documents_the_exit_codes(command):
    assert cli.EXIT_CODES in COMMANDS[command][1]().format_help()


@pytest.mark.parametrize(
    "module, argv, line",
    [
        ("minunet.train", ["--lr", "-0.1"], "error: --lr must be > 0, got -0.1"),
        (
            "minunet.predict",
            ["--tile", "0", "--checkpoint", "c", "x"],
            "error: --tile must be >= 1, got 0",
        ),
        (
            "minunet.evaluate",
            ["--checkpoint", "c", "--val-fraction", "1"],
            "error: --val-fraction must be in (0, 1), got 1",
        ),
        (
            "minunet.tune",
            ["--trials", "0", "--lr", "1e-3,1e-2"],
            "error: --trials must be >= 1, got 0",
        ),
    ],
)
def test_as_a_user_runs_it(module, argv, line, tmp_path):
    r = run_python("-m", module, *argv, cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, line + "\n")
    assert list(tmp_path.iterdir()) == []  # nothing written
