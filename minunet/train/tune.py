"""python -m minunet.tune: a hyper-parameter search over ``python -m minunet.train`` runs.

A search space is written with train's own flags, so a tune command reads like a train
command with ranges where the numbers were:

    python -m minunet.tune --trials 20 --epochs 8 --image-size 64 \\
        --lr 1e-4:3e-2:log --batch-size 8,16 --base-channels 16,32 \\
        --dropout 0:0.3 --optimizer adam,sgd

``LO:HI`` is a range (an int range when the flag takes whole numbers and both bounds are
whole), ``LO:HI:log`` the same sampled on a log scale, ``A,B,C`` a list to choose from.
Every other flag goes to train unchanged. Optuna (an optional extra: ``pip install
'minunet[tune]'``) proposes each trial with its TPE sampler and stops unpromising trials
early with the median pruner, fed the validation metric after every epoch through
train's ``on_epoch`` callback.

Why Optuna's journal file as the default storage: it is one append-only file in ``--out``
that several processes can share safely (SQLite is not safe with parallel writers), so
re-running the same command continues the study and a second worker started with the
same arguments joins it. ``--storage URL`` (e.g. PostgreSQL) shares a study between
machines.

What a search leaves in ``--out``: ``study.journal`` (unless ``--storage``), one train
run folder per trial (``trial_0000``, ...: metrics, checkpoints, plots), ``trials.txt``
(the table printed at the end), ``best.json`` (the best trial's params and the train
flags that reproduce it) and Optuna's plots as PNGs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from minunet.cli import (
    EXIT_CODES,
    FLAG_RANGES,
    Parser,
    check_output_dir,
    check_ranges,
    check_value,
    flag_actions,
    parse_args,
)
from minunet.errors import MinunetError, UsageError
from minunet.io.atomic import atomic_write
from minunet.train.__main__ import build_parser as build_train_parser
from minunet.train.__main__ import check_combinations, check_data_dir, config_from_args
from minunet.train.loop import NonFiniteLoss, TrainConfig, train

if TYPE_CHECKING:
    import optuna

NEEDS_OPTUNA = "python -m minunet.tune needs optuna: pip install 'minunet[tune]'"
SPACE_SYNTAX = "LO:HI, LO:HI:log or a comma list A,B,C"

# The per-epoch metrics a search can optimise, with the direction that is better.
METRICS = {
    "val_miou": "maximize",
    "val_pixel_accuracy": "maximize",
    "train_loss": "minimize",
}

EXAMPLES = """search space (train's flags, with these values instead of one number):
  LO:HI        a range: --dropout 0:0.3 (whole numbers for an int flag: --depth 3:5)
  LO:HI:log    a range sampled on a log scale: --lr 1e-4:3e-2:log
  A,B,C        a list to choose from: --batch-size 8,16 --optimizer adam,sgd
every other flag of python -m minunet.train is passed to each trial as is.

examples:
  python -m minunet.tune --out runs/tune --trials 20 --epochs 8 --image-size 64 \\
      --lr 1e-4:3e-2:log --batch-size 8,16 --base-channels 16,32 --dropout 0:0.3
  (the same command again, in another terminal: a second worker joins the study)
  python -m minunet.tune --storage postgresql://user:pass@host/db --study-name pets ...
"""


# -- the search space ------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched train flag: a float or int range, or a list of choices."""

    flag: str  # as train spells it, e.g. "--batch-size"
    name: str  # train's dest, e.g. "batch_size": the Optuna param name
    spec: str  # the text as given, e.g. "8,16"
    kind: str  # "float" | "int" | "categorical"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


def _searchable(action: argparse.Action) -> bool:
    """Train flags that take one number or one of fixed choices can be searched; free
    text flags (paths, URLs, ``--class-weights 1,2,3``) keep their ``:`` and ``,``."""
    if action.nargs is not None or not action.option_strings:  # switches have nargs=0
        return False
    return action.choices is not None or action.type in (int, float)


def _convert(flag: str, action: argparse.Action, text: str) -> Any:
    """One value through the flag's own type, choices and range, or one line naming it."""
    try:
        value = action.type(text) if action.type is not None else text
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise UsageError(f"{flag}: {text!r} is not a valid value ({exc})") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise UsageError(f"{flag}: {text!r} is not one of {choices}")
    if flag in FLAG_RANGES:
        check_value(flag, value)
    return value


def parse_dimension(flag: str, text: str, action: argparse.Action) -> Dimension | None:
    """``text`` as a search dimension of ``flag``; None when it is one plain value."""
    if ":" not in text and "," not in text:
        return None
    bad = MinunetError(f"{flag} {text!r}: expected {SPACE_SYNTAX}")
    if "," in text:
        if ":" in text:
            raise bad
        parts = [p.strip() for p in text.split(",")]
        if any(not p for p in parts):
            raise bad
        values = tuple(_convert(flag, action, p) for p in parts)
        if len(set(values)) != len(values):
            raise MinunetError(f"{flag} {text!r}: the list repeats a value")
        return Dimension(flag, action.dest, text, "categorical", choices=values)
    if action.choices is not None:
        raise MinunetError(f"{flag} {text!r}: choose from a comma list, e.g. A,B")
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise bad
    log = len(parts) == 3
    integer = action.type is int
    if integer:
        try:
            low, high = int(parts[0]), int(parts[1])
        except ValueError:
            raise MinunetError(f"{flag} {text!r}: {flag} takes whole numbers, e.g. 2:6") from None
    else:
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise bad from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise bad
    for end in (low, high):  # the flag's own range holds both ends, so all between
        _convert(flag, action, str(end))
    if low >= high:
        raise MinunetError(f"{flag} {text!r}: the range needs LO < HI")
    if log and low <= 0:
        raise MinunetError(f"{flag} {text!r}: a log range needs LO > 0")
    return Dimension(flag, action.dest, text, "int" if integer else "float", low, high, log)


def split_search_space(
    argv: Sequence[str], parser: argparse.ArgumentParser
) -> tuple[list[Dimension], list[str]]:
    """Take the searched flags out of ``argv``; the rest are train's fixed flags."""
    actions = flag_actions(parser)
    dims: list[Dimension] = []
    fixed: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        flag, eq, value = token.partition("=")
        action = _resolve(flag, actions) if token.startswith("--") else None
        if action is None or not _searchable(action):
            fixed.append(token)
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                fixed.append(token)  # train's parser says what is missing
                break
            value = argv[i + 1]
        name = max(action.option_strings, key=len)
        dim = parse_dimension(name, value, action)
        if dim is None:
            fixed += [token] if eq else [token, value]
        elif any(d.name == dim.name for d in dims):
            raise MinunetError(f"{name} is given twice")
        else:
            dims.append(dim)
        i += 1 if eq else 2
    return dims, fixed


# At most this many corners of the search space are checked before the search starts.
MAX_CORNERS = 256


def check_corners(train_args: argparse.Namespace, dims: list[Dimension]) -> None:
    """train's checks of several flags (a warm-up within the run, a size the network
    accepts...) at the corners of the space: every choice, both ends of each range. A
    value inside a range that fails (an --image-size range crosses sizes that do not fit)
    is reported by its trial, which then ends the search with the same one line."""
    ends = [d.choices if d.kind == "categorical" else (d.low, d.high) for d in dims]
    for corner in itertools.islice(itertools.product(*ends), MAX_CORNERS):
        values = {
            d.name: int(v) if d.kind == "int" else v for d, v in zip(dims, corner, strict=True)
        }
        check_combinations(argparse.Namespace(**{**vars(train_args), **values}))


def _resolve(flag: str, actions: dict[str, argparse.Action]) -> argparse.Action | None:
    """The action of ``flag`` or of the one flag it abbreviates, as argparse allows."""
    if flag in actions:
        return actions[flag]
    matches = {id(a): a for f, a in actions.items() if f.startswith(flag)}
    return next(iter(matches.values())) if len(matches) == 1 else None


# -- the command line ------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Tune's own flags; everything it does not know goes to train's parser."""
    p = Parser(
        prog="python -m minunet.tune",
        description="Search train's hyper-parameters with Optuna (TPE + median pruning).",
        epilog=EXAMPLES + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an abbreviation must not steal a train flag (--tr...)
    )
    p.add_argument("--out", default="runs/tune", help="search folder (default runs/tune)")
    p.add_argument("--trials", type=int, default=20, help="trials this worker runs (default 20)")
    p.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    p.add_argument(
        "--metric",
        choices=tuple(METRICS),
        default="val_miou",
        help="optimised: val_* maximised, train_loss minimised (default val_miou)",
    )
    p.add_argument(
        "--storage",
        help="database URL shared by workers on many machines, e.g. "
        "postgresql://user:pass@host/db (default: OUT/study.journal)",
    )
    p.add_argument("--study-name", help="default: the name of the --out folder")
    p.add_argument(
        "--tpe-startup", type=int, default=10, help="random trials before TPE (default 10)"
    )
    p.add_argument(
        "--prune",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="median pruning after each epoch (default on)",
    )
    p.add_argument(
        "--prune-startup",
        type=int,
        default=5,
        help="finished trials before any pruning (default 5)",
    )
    p.add_argument(
        "--prune-warmup",
        type=int,
        default=1,
        help="epochs a trial always runs before it may be pruned (default 1)",
    )
    return p


@dataclass
class Setup:
    """A parsed tune command: the search, its space, and train's fixed flags."""

    out: Path
    study_name: str
    storage: str | None
    metric: str
    trials: int
    timeout: float | None
    dims: list[Dimension]
    fixed: list[str]  # train flags common to every trial (no --out)
    base: TrainConfig  # the fixed flags parsed, for the seed and the epoch count
    tpe_startup: int
    prune: bool
    prune_startup: int
    prune_warmup: int


def parse_setup(argv: Sequence[str]) -> Setup:
    parser = build_parser()
    args, rest = parser.parse_known_args(list(argv))
    check_ranges(parser, args)
    check_output_dir("--out", args.out)
    train_parser = build_train_parser()
    dims, fixed = split_search_space(rest, train_parser)
    if not dims:
        raise MinunetError(
            f"nothing to search: give at least one train flag a range or a list ({SPACE_SYNTAX})"
        )
    # train's own checks, up front: each fixed flag, then the checks of several flags for
    # the corners of the space (every choice, both ends of a range) with the fixed flags.
    train_args = parse_args(train_parser, fixed, check_data_dir)
    check_corners(train_args, dims)
    base = config_from_args(train_args)
    if base.resume:
        raise MinunetError("--resume is not for tune: re-run the same command to continue")
    out = Path(args.out)
    return Setup(
        out=out,
        study_name=args.study_name or out.resolve().name,
        storage=args.storage,
        metric=args.metric,
        trials=args.trials,
        timeout=args.timeout,
        dims=dims,
        fixed=fixed,
        base=base,
        tpe_startup=args.tpe_startup,
        prune=args.prune,
        prune_startup=args.prune_startup,
        prune_warmup=args.prune_warmup,
    )


# -- Optuna ----------------------------------------------------------------------------


def import_optuna() -> Any:
    """Optuna is an optional extra: import it only when a search runs."""
    try:
        import optuna
    except ImportError:
        raise MinunetError(NEEDS_OPTUNA) from None
    return optuna


def open_storage(optuna: Any, setup: Setup) -> Any:
    if setup.storage is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        setup.out.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(setup.out / "study.journal")))
    try:
        return optuna.storages.RDBStorage(setup.storage)
    except Exception as exc:  # bad URL, missing driver, no server: all one line for the user
        raise MinunetError(f"--storage {setup.storage}: {type(exc).__name__}: {exc}") from None


def open_study(optuna: Any, setup: Setup, storage: Any) -> tuple[Any, bool]:
    """Create the study, or join it if it exists. Returns (study, joined)."""
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=setup.prune_startup,
            # Optuna prunes from step == n_warmup_steps on; steps are 1-based epochs here.
            n_warmup_steps=setup.prune_warmup + 1,
        )
        if setup.prune
        else optuna.pruners.NopPruner()
    )
    space = {d.name: d.spec for d in setup.dims}
    direction = METRICS[setup.metric]
    try:
        study = optuna.create_study(
            storage=storage, study_name=setup.study_name, direction=direction, pruner=pruner
        )
        study.set_user_attr("space", space)
        study.set_user_attr("metric", setup.metric)
        study.set_user_attr("train_args", setup.fixed)
        joined = False
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=setup.study_name, storage=storage, pruner=pruner)
        joined = True
    # A joining worker must search the same space for the same goal, or TPE would mix
    # incomparable trials. (The creator may not have written the attrs yet: skip then.)
    theirs = study.user_attrs
    if theirs.get("metric", setup.metric) != setup.metric or study.direction.name.lower() != (
        direction
    ):
        raise MinunetError(
            f"study {setup.study_name!r} optimises {theirs.get('metric')}, not "
            f"{setup.metric}: use its --metric, or another --out / --study-name"
        )
    if theirs.get("space", space) != space:
        raise MinunetError(
            f"study {setup.study_name!r} searches {_space_text(theirs['space'])}, not "
            f"{_space_text(space)}: use the same flags, or another --out / --study-name"
        )
    if theirs.get("train_args", setup.fixed) != setup.fixed:
        # Allowed (a GPU worker may add --backend cupy), but trials may not compare.
        print(
            "note: this worker's train flags differ from the study's first worker: "
            f"{shlex.join(setup.fixed)} vs {shlex.join(theirs['train_args'])}",
            file=sys.stderr,
        )
    # Seeding: the worker that creates the study uses --seed, so a single-worker search
    # is reproducible. A joining worker must not replay that seed: its random start-up
    # trials would repeat the first worker's exactly. It draws fresh entropy instead.
    seed = None if joined else setup.base.seed
    study.sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=setup.tpe_startup, constant_liar=True
    )
    return study, joined


def _space_text(space: dict[str, str]) -> str:
    return " ".join(f"{name}={spec}" for name, spec in space.items())


class EpochReporter:
    """train's ``on_epoch``: report the metric to Optuna, and stop the run if pruned."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.values: list[float] = []
        self.pruned_at: int | None = None

    def __call__(self, epoch: int, record: dict[str, Any]) -> bool:
        value = float(record[self.metric])
        self.values.append(value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            return True  # train saves this epoch and returns
        return False


TrainFn = Callable[..., Any]


class TrialInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a trial's training: train saved the run and returned
    ``interrupted: True``. Raised as a KeyboardInterrupt so that Optuna marks the trial
    failed and ends the search, as a Ctrl-C anywhere else would."""

    def __init__(self, number: int, run_dir: Path) -> None:
        super().__init__(f"trial {number} interrupted")
        self.number = number
        self.run_dir = run_dir


class Objective:
    """One trial: suggest the flags, run train in ``OUT/trial_NNNN``, return the metric."""

    def __init__(self, setup: Setup, train_fn: TrainFn = train) -> None:
        self.setup = setup
        self.train_fn = train_fn
        self.parser = build_train_parser()

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        setup = self.setup
        params = {d.name: d.suggest(trial) for d in setup.dims}
        args = list(setup.fixed)
        for d in setup.dims:
            args += [d.flag, _flag_value(params[d.name])]
        run_dir = setup.out / f"trial_{trial.number:04d}"
        trial.set_user_attr("train_args", args)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial_args = [*args, "--out", str(run_dir)]
        cfg = config_from_args(parse_args(self.parser, trial_args, check_combinations))
        shown = " ".join(f"{k}={_short(v)}" for k, v in params.items())
        print(f"trial {trial.number}: {shown}", flush=True)

        reporter = EpochReporter(trial, setup.metric)
        try:
            result = self.train_fn(
                cfg,
                log=lambda msg: print(f"  [trial {trial.number}] {msg}", flush=True),
                on_epoch=reporter,
            )
        except NonFiniteLoss as exc:
            trial.set_user_attr("error", str(exc).split(";")[0])
            raise
        trial.set_user_attr("epochs", len(reporter.values))
        if result.get("interrupted"):
            # train returns quietly after a Ctrl-C (it saved the run) and says so in its
            # result: counting the epochs instead would miss a Ctrl-C under --max-steps.
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "interrupted (Ctrl-C)")
            raise TrialInterrupted(trial.number, run_dir)
        if reporter.pruned_at is not None:
            trial.set_user_attr("pruned_at", reporter.pruned_at)
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at}")
        if not reporter.values:
            trial.set_user_attr("error", "no epoch finished (--max-steps below one epoch?)")
            raise MinunetError(f"trial {trial.number}: no epoch finished; raise --max-steps")
        # The best epoch, like train's best.npz: the checkpoint a user would keep.
        better = max if METRICS[setup.metric] == "maximize" else min
        return better(reporter.values)


def _flag_value(value: Any) -> str:
    # repr keeps every digit of a float, so best.json's flags reproduce the trial exactly
    return repr(value) if isinstance(value, float) else str(value)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _announce(study: Any, trial: Any) -> None:
    """Optuna callback: one line per finished trial (Optuna's own log is silenced)."""
    state = trial.state.name
    metric = study.user_attrs.get("metric", "value")
    if state == "COMPLETE":
        print(f"trial {trial.number} complete: {metric} {trial.value:.4f}", flush=True)
    elif state == "PRUNED":
        print(
            f"trial {trial.number} pruned after epoch {trial.user_attrs.get('pruned_at')}",
            flush=True,
        )
    elif state == "FAIL":
        reason = trial.user_attrs.get("error", "failed")
        print(f"trial {trial.number} failed: {reason}", flush=True)


# -- the summary -----------------------------------------------------------------------


def trial_table(study: Any, metric: str) -> str:
    """Every trial of the study, from every worker, as an aligned text table."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    best = _best_trial(study)
    workers = {t.user_attrs.get("worker") for t in trials}
    header = ["trial", "state", metric, "epochs", *names]
    if len(workers) > 1:
        header.append("worker")
    rows = [header]
    for t in trials:
        if t.state.name == "COMPLETE":
            value, state = f"{t.value:.4f}", "complete"
        elif t.state.name == "PRUNED":
            last = t.intermediate_values.get(t.user_attrs.get("pruned_at"))
            value = f"({last:.4f})" if last is not None else "-"
            state = f"pruned@{t.user_attrs.get('pruned_at', '?')}"
        elif t.user_attrs.get("interrupted"):
            value, state = "-", "interrupted"  # failed by Ctrl-C, not by its flags
        else:
            value, state = "-", t.state.name.lower()
        mark = "*" if best is not None and t.number == best.number else ""
        row = [f"{t.number}{mark}", state, value, str(t.user_attrs.get("epochs", "-"))]
        row += [_short(t.params[n]) if n in t.params else "-" for n in names]
        if len(workers) > 1:
            row.append(str(t.user_attrs.get("worker", "-")))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if best is not None:
        lines.append(
            f"* best: trial {best.number}, {metric} {best.value:.4f}"
            " (pruned values in brackets: last reported epoch)"
        )
    return "\n".join(lines) + "\n"


def _best_trial(study: Any) -> Any:
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not done:
        return None
    return study.best_trial


def write_best(study: Any, setup: Setup) -> dict[str, Any] | None:
    """best.json: the best trial's params and the train flags that reproduce it."""
    best = _best_trial(study)
    if best is None:
        return None
    args = best.user_attrs.get("train_args", [])
    summary = {
        "study": study.study_name,
        "metric": setup.metric,
        "direction": METRICS[setup.metric],
        "value": best.value,
        "trial": best.number,
        "params": best.params,
        "run_dir": best.user_attrs.get("run_dir"),
        "train_args": args,
        "command": shlex.join(["python", "-m", "minunet.train", *args]),
    }
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write(setup.out / "best.json", lambda f: f.write(text.encode()))
    return summary


def write_plots(study: Any, setup: Setup) -> list[Path]:
    """Optuna's matplotlib plots as PNGs in OUT (the ones the study has data for)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state.name == "COMPLETE" for t in trials)
    plots: dict[str, Callable[[Any], Any]] = {}
    if complete >= 1:
        plots["optimization_history.png"] = ovm.plot_optimization_history
        plots["parallel_coordinate.png"] = ovm.plot_parallel_coordinate
    if complete >= 2 and len(setup.dims) > 1:
        # PED-ANOVA is Optuna 5's default; naming it keeps Optuna 4 off fANOVA's sklearn.
        from optuna.importance import PedAnovaImportanceEvaluator

        plots["param_importances.png"] = lambda s: ovm.plot_param_importances(
            s, evaluator=PedAnovaImportanceEvaluator()
        )
    if any(t.intermediate_values for t in trials):
        plots["intermediate_values.png"] = ovm.plot_intermediate_values  # shows pruning
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks these "experimental"
                ax = plot(study)
        except Exception as exc:  # a plot is a bonus: never lose the table over one
            print(f"warning: could not draw {name}: {exc}", file=sys.stderr)
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        path = setup.out / name
        atomic_write(
            path, lambda f, fig=fig: fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
        )
        plt.close(fig)
        written.append(path)
    return written


def summarize(study: Any, setup: Setup) -> None:
    table = trial_table(study, setup.metric)
    print(table, end="")
    atomic_write(setup.out / "trials.txt", lambda f: f.write(table.encode()))
    summary = write_best(study, setup)
    plots = write_plots(study, setup)
    if summary is None:
        print("no trial completed yet: no best.json")
    else:
        print(f"best flags: {shlex.join(summary['train_args'])}")
        print(
            f"wrote {setup.out / 'best.json'}, {setup.out / 'trials.txt'}"
            + "".join(f", {p.name}" for p in plots)
        )


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None, *, train_fn: TrainFn = train) -> int:
    setup = parse_setup(sys.argv[1:] if argv is None else argv)
    optuna = import_optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial: ours
    study, joined = open_study(optuna, setup, open_storage(optuna, setup))
    where = setup.storage or str(setup.out / "study.journal")
    done = len(study.get_trials(deepcopy=False))
    print(
        f"{'joined' if joined else 'created'} study {setup.study_name!r} in {where}"
        f" ({done} trials so far); this worker runs {setup.trials}"
        f"{f' or stops after {setup.timeout:g} s' if setup.timeout else ''}",
        flush=True,
    )
    start = time.perf_counter()
    try:
        study.optimize(
            Objective(setup, train_fn),
            n_trials=setup.trials,
            timeout=setup.timeout,
            catch=(NonFiniteLoss,),  # a diverging lr is a result, not the end of the search
            callbacks=[_announce],
        )
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrialInterrupted):
            print(
                f"interrupted: trial {exc.number} stopped and is marked failed (its run is "
                f"saved in {exc.run_dir}); the search ends here, run the same command to "
                "continue it with new trials",
                file=sys.stderr,
            )
        else:  # a second Ctrl-C, or one outside train: Optuna marks a running trial failed
            print("interrupted: the trial that was running is marked failed", file=sys.stderr)
        summarize(study, setup)
        raise
    print(f"this worker finished in {time.perf_counter() - start:.0f} s")
    summarize(study, setup)
    return 0
