"""python -m minunet.tune: the search-space syntax, the Optuna study, pruning, workers.

The parsing tests need no Optuna. The search tests run real Optuna studies: a fake
``train`` (instant, scripted metrics) drives pruning and failures deterministically, and
a tiny synthetic config runs real training, with a second worker process joining it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers_cli import run_python

from minunet.cli import run_cli
from minunet.train import tune
from minunet.train.__main__ import build_parser as build_train_parser
from minunet.train.loop import NonFiniteLoss

TINY = (
    "--data synthetic --image-size 32 --base-channels 4 --depth 2 --train-size 16 "
    "--val-size 8 --epochs 2 --no-progress"
).split()


def _split(*argv: str) -> tuple[list[tune.Dimension], list[str]]:
    return tune.split_search_space(list(argv), build_train_parser())


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI, expect exit 2, return its one-line error."""
    assert run_cli(tune.main, list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# -- the search-space syntax (no Optuna needed) ----------------------------------------


def test_ranges_lists_and_fixed_values():
    dims, fixed = _split(
        "--lr", "1e-4:3e-2:log", "--batch-size", "8,16", "--dropout=0:0.3",
        "--optimizer", "adam,sgd", "--depth", "2:4", "--epochs", "3",
    )  # fmt: skip
    by = {d.name: d for d in dims}
    assert by["lr"] == tune.Dimension("--lr", "lr", "1e-4:3e-2:log", "float", 1e-4, 3e-2, True)
    assert by["batch_size"].kind == "categorical" and by["batch_size"].choices == (8, 16)
    assert by["dropout"].kind == "float" and (by["dropout"].low, by["dropout"].high) == (0, 0.3)
    assert by["optimizer"].choices == ("adam", "sgd")
    assert by["depth"].kind == "int" and not by["depth"].log
    assert fixed == ["--epochs", "3"]


def test_flag_actions_maps_every_option_string_of_train():
    actions = tune.flag_actions(build_train_parser())
    assert actions["--lr"].dest == "lr" and actions["--lr"].type is float
    assert actions["-h"] is actions["--help"]
    assert all(flag.startswith("-") for flag in actions)


def test_float_flag_with_whole_bounds_is_a_float_range():
    (dim,), _ = _split("--weight-decay", "0:1")
    assert dim.kind == "float"


def test_free_text_flags_keep_their_colons_and_commas():
    argv = ["--class-weights", "1,2,3", "--data-dir", "C:/data,v2", "--no-augment"]
    dims, fixed = _split(*argv)
    assert dims == [] and fixed == argv


def test_abbreviated_flag_is_resolved():
    (dim,), _ = _split("--base-ch", "16,32")
    assert dim.flag == "--base-channels" and dim.name == "base_channels"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--lr", "1e-4:"], ["--lr", "expected LO:HI, LO:HI:log or a comma list"]),
        (["--lr", "1e-4:1e-2:lin"], ["--lr", "expected LO:HI"]),
        (["--lr", "a:b"], ["--lr", "expected LO:HI"]),
        (["--weight-decay", "0:1:log"], ["--weight-decay", "LO > 0"]),
        (["--lr", "0:1"], ["--lr must be > 0, got 0"]),
        (["--dropout", "0.1:1"], ["--dropout must be in [0, 1), got 1"]),
        (["--lr", "0.1:0.01"], ["--lr", "LO < HI"]),
        (["--lr", "1e-3,x"], ["--lr", "'x' is not a valid value"]),
        (["--batch-size", "8,"], ["--batch-size", "expected LO:HI"]),
        (["--batch-size", "8,8"], ["--batch-size", "repeats"]),
        (["--batch-size", "4.5:8"], ["--batch-size", "whole numbers"]),
        (["--batch-size", "0:8"], ["--batch-size must be >= 1, got 0"]),
        (["--batch-size", "8,0"], ["--batch-size must be >= 1, got 0"]),
        (["--warmup-epochs", "0,5", "--epochs", "3"], ["--warmup-epochs must be <= --epochs"]),
        (["--depth", "3,4", "--image-size", "40"], ["--image-size 40", "depth 4"]),
        (["--optimizer", "adam,rmsprop"], ["--optimizer", "'rmsprop' is not one of"]),
        (["--optimizer", "adam:sgd"], ["--optimizer", "comma list"]),
        (["--lr", "1e-3:1e-2", "--lr", "1e-3,1e-2"], ["--lr is given twice"]),
        (["--epochs", "2"], ["nothing to search"]),
        (["--lr", "1e-3,1e-2", "--resume"], ["--resume"]),
    ],
)
def test_bad_search_space_is_one_line_naming_the_flag(capsys, argv, words):
    err = _error(capsys, *argv)
    for word in words:
        assert word in err, err


def test_missing_optuna_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    err = _error(capsys, "--out", str(tmp_path), "--lr", "1e-3,1e-2")
    assert err == "error: " + tune.NEEDS_OPTUNA


# -- Optuna ----------------------------------------------------------------------------


@pytest.fixture
def optuna():
    """Optuna, or a skip that says why (CI installs the tune extra, so these run there)."""
    return pytest.importorskip("optuna", reason="needs the tune extra: pip install 'minunet[tune]'")


def test_epoch_reporter_prunes_below_the_median(optuna):
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0),
    )
    for value in (0.8, 0.9):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, intermediate_values={1: value, 2: value}, params={}, distributions={}
            )
        )
    good = tune.EpochReporter(study.ask(), "val_miou")
    assert good(1, {"val_miou": 0.95}) is False and good.pruned_at is None
    bad = tune.EpochReporter(study.ask(), "val_miou")
    assert bad(1, {"val_miou": 0.5}) is True and bad.pruned_at == 1


def _scripted_train(calls: list[tuple[int, int]]):
    """A stand-in for train: trial 0 scores 0.9 per epoch, trial 2 diverges, the rest
    score 0.1 (below the median: pruned). Records (trial, epochs run)."""

    def fake(cfg, log=print, on_epoch=None):
        number = int(Path(cfg.out).name.split("_")[1])
        if number == 2:
            raise NonFiniteLoss("the loss became non-finite at step 3; stopped")
        epochs = 0
        for epoch in range(1, cfg.epochs + 1):
            epochs = epoch
            if on_epoch(epoch, {"epoch": epoch, "val_miou": 0.9 if number == 0 else 0.1}):
                break
        calls.append((number, epochs))
        return {}

    return fake


def test_pruning_and_failures_with_a_scripted_train(optuna, tmp_path, capsys):
    calls: list[tuple[int, int]] = []
    argv = [
        "--out", str(tmp_path), "--trials", "4", "--epochs", "5", "--lr", "1e-3:1e-1:log",
        "--batch-size", "4,8", "--prune-startup", "1", "--prune-warmup", "0",
    ]  # fmt: skip
    assert tune.main(argv, train_fn=_scripted_train(calls)) == 0
    out = capsys.readouterr().out
    # trial 0 runs all 5 epochs; 1 and 3 are stopped after their first (0.1 < 0.9)
    assert calls == [(0, 5), (1, 1), (3, 1)]
    assert "trial 1 pruned after epoch 1" in out and "trial 2 failed: the loss" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isdigit()}
    assert rows["0*"][1:4] == ["complete", "0.9000", "5"]
    assert rows["1"][1:4] == ["pruned@1", "(0.1000)", "1"]
    assert rows["2"][1] == "fail"
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["trial"] == 0 and best["value"] == 0.9
    assert set(best["params"]) == {"lr", "batch_size"}
    assert best["train_args"][:2] == ["--epochs", "5"] and "--lr" in best["train_args"]
    assert (tmp_path / "intermediate_values.png").stat().st_size > 0


@pytest.mark.parametrize("interrupted", [True, False])
def test_train_saying_interrupted_ends_the_search(optuna, tmp_path, capsys, interrupted):
    """Tune trusts train's ``interrupted`` key, not the epoch count: under --max-steps an
    interrupted run and a short finished run both stop after epoch 1 of 5."""

    def fake(cfg, log=print, on_epoch=None):
        on_epoch(1, {"epoch": 1, "val_miou": 0.5})
        return {"miou": 0.5, "interrupted": interrupted}

    argv = ["--out", str(tmp_path), "--trials", "3", "--epochs", "5", "--max-steps", "100",
            "--lr", "1e-3,1e-2", "--no-prune"]  # fmt: skip
    code = run_cli(lambda a: tune.main(a, train_fn=fake), argv)
    out, err = capsys.readouterr()
    trials = optuna.load_study(
        study_name=tmp_path.name, storage=tune.open_storage(optuna, tune.parse_setup(argv))
    ).trials
    if not interrupted:
        assert code == 0 and [t.state.name for t in trials] == ["COMPLETE"] * 3
        return
    assert code == 130  # the search stopped at the first trial
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["interrupted"] is True
    assert "interrupted: trial 0 stopped and is marked failed" in err
    assert str(tmp_path / "trial_0000") in err
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:1].isdigit()}
    assert rows["0"][1:4] == ["interrupted", "-", "1"]


def test_a_joining_worker_must_search_the_same_space(optuna, tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--trials", "1", "--epochs", "1"]
    assert tune.main([*argv, "--lr", "1e-3,1e-2"], train_fn=_scripted_train([])) == 0
    err = _error(capsys, *argv, "--lr", "1e-3:1e-2")
    assert "searches lr=1e-3,1e-2, not lr=1e-3:1e-2" in err


def test_database_storage_url(optuna, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    argv = ["--out", str(tmp_path / "o"), "--storage", url, "--study-name", "s", "--epochs", "1"]
    assert (
        tune.main([*argv, "--trials", "2", "--lr", "1e-3,1e-2"], train_fn=_scripted_train([])) == 0
    )
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 2
    assert "--storage" in _error(capsys, *argv, "--storage", "nonsense://", "--lr", "1e-3,1e-2")


def test_two_workers_share_one_study_with_real_training(optuna, tmp_path, capsys):
    out = tmp_path / "search"
    argv = [*TINY, "--out", str(out), "--trials", "4", "--seed", "3",
            "--lr", "1e-3:3e-2:log", "--batch-size", "4,8", "--optimizer", "adam,sgd"]  # fmt: skip
    assert tune.main(argv) == 0
    printed = capsys.readouterr().out
    assert "created study 'search'" in printed and "trial  state     val_miou" in printed
    best = json.loads((out / "best.json").read_text())
    assert 0 <= best["value"] <= 1 and set(best["params"]) == {"lr", "batch_size", "optimizer"}
    assert (out / f"trial_{best['trial']:04d}" / "best.npz").exists()
    assert (out / "trials.txt").read_text() in printed
    for name in ("optimization_history", "parallel_coordinate", "param_importances"):
        assert (out / f"{name}.png").stat().st_size > 0

    # A second worker with the same arguments, in its own process, joins the study.
    done = run_python("-m", "minunet.tune", *argv, extra_env={"MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "joined study 'search'" in done.stdout and "(4 trials so far)" in done.stdout

    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    trials = optuna.load_study(study_name="search", storage=storage).trials
    assert len(trials) == 8 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert sorted(p.name for p in out.glob("trial_*")) == [f"trial_{i:04d}" for i in range(8)]
    # the joiner does not replay the first worker's seeded random start-up trials
    assert [t.params for t in trials[4:]] != [t.params for t in trials[:4]]
