"""What every command-line tool shares: every flag and path checked before any work, and
every failure as one line with an exit code that says which kind it was.

The numeric flags of all five commands are checked against one table, ``FLAG_RANGES``
(flag -> accepted range); ``test_cli_flags.py`` fails if a numeric flag has no row. The
checks that need several flags at once (a warm-up no longer than the run, an image size
the network accepts) are each command's own, run by ``parse_args`` after the table's.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minunet.core.backend import BackendError
from minunet.errors import MinunetError, RunFailure, UsageError

EXIT_CODES = """exit codes:
  0    done
  1    failed while running: disk full, an I/O error, a diverging loss (files written
       before it are intact; the same command may work another time)
  2    usage error: a flag's value, a path or an input file that cannot work (the one
       error line names it and what is accepted)
  130  interrupted (Ctrl-C); what was saved is intact
"""


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; print an expected failure as ``error: ...`` on stderr, no traceback,
    and return its exit code (``EXIT_CODES``)."""
    try:
        return main(argv)
    except (MinunetError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # an I/O failure no check could foresee (a disk that fails)
        print(f"error: {_os_error_text(exc)}", file=sys.stderr)
        return RunFailure.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _os_error_text(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


class Parser(argparse.ArgumentParser):
    """argparse whose own errors (an unknown flag, a value that is not a number) are one
    UsageError line too, instead of the usage text and ``prog: error: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of ``parser`` (``--lr``, ``-h``, ...) mapped to its action.

    The action's ``option_strings``, ``dest``, ``type``, ``choices`` and ``nargs`` are
    public, documented attributes, but argparse has no public way to list a parser's
    actions: ``add_argument`` returns each one and the parser keeps them in the private
    list ``_actions``. This is the one place minunet reads argparse's internals. The list
    has had that name and meaning from argparse's first release through CPython 3.14 (and
    tools such as argcomplete read it too); ``test_tune.py`` fails here first if it moves.
    """
    return {flag: action for action in parser._actions for flag in action.option_strings}


def numeric_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The flags of ``parser`` that take one int or float: each needs a FLAG_RANGES row."""
    return {
        max(a.option_strings, key=len): a
        for a in flag_actions(parser).values()
        if a.type in (int, float) and a.nargs is None
    }


# -- the table of accepted ranges ------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """An accepted range: the test, and how the error line writes it (``> 0``)."""

    accepts: Callable[[float], bool]
    text: str


def above(low: float) -> Range:
    return Range(lambda v: v > low, f"> {low:g}")


def at_least(low: float) -> Range:
    return Range(lambda v: v >= low, f">= {low:g}")


def within(low: float, high: float, brackets: str = "[]") -> Range:
    """``low``..``high``; ``brackets`` says which ends are included: "[]", "[)", "(]", "()"."""
    closed_low, closed_high = brackets[0] == "[", brackets[1] == "]"

    def accepts(v: float) -> bool:
        return (v >= low if closed_low else v > low) and (v <= high if closed_high else v < high)

    return Range(accepts, f"in {brackets[0]}{low:g}, {high:g}{brackets[1]}")


# Every numeric flag of train, predict, evaluate and tune (export has none), by name: a
# flag means the same thing in every command that has it.
FLAG_RANGES: dict[str, Range] = {
    # data
    "--image-size": at_least(1),  # and a size the network accepts: check_train_sizes
    "--crop": at_least(1),  # likewise
    "--val-fraction": within(0, 1, "()"),  # a share of the images on each side
    "--train-size": at_least(1),
    "--val-size": at_least(1),
    "--ignore-index": at_least(0),  # a raw mask value
    "--num-classes": at_least(2),  # one class is no segmentation (the UNet's own rule)
    "--limit": at_least(1),
    # model
    "--base-channels": at_least(1),
    # 16 poolings need inputs of 65536 px or more: a larger depth is a typo (and the size
    # rule's search for the nearest fitting size takes 2**depth steps).
    "--depth": within(1, 16),
    "--dropout": within(0, 1, "[)"),  # a probability of dropping; 1 would drop everything
    # optimisation
    "--epochs": at_least(1),
    "--batch-size": at_least(1),  # and a multiple of the MPI ranks: check_world_size
    "--lr": above(0),
    "--weight-decay": at_least(0),
    "--momentum": within(0, 1, "[)"),  # 1 never forgets a gradient: no convergence
    "--warmup-epochs": at_least(0),  # and no longer than the run
    "--step-size-epochs": at_least(0),  # >= 1 with --schedule step
    "--gamma": within(0, 1, "(]"),  # a decay factor
    "--clip-grad": above(0),
    "--scale-min": within(0, 1, "(]"),  # a side of the random crop, relative to the image
    "--jitter": at_least(0),
    "--elastic": at_least(0),  # a standard deviation (0: off)
    # run
    "--seed": at_least(0),  # NumPy's generators take no negative seeds
    "--log-every": at_least(1),
    "--max-steps": at_least(1),
    # predict
    "--tile": at_least(1),  # and a size the checkpoint's network accepts
    # tune
    "--trials": at_least(1),
    "--timeout": above(0),
    "--tpe-startup": at_least(0),
    "--prune-startup": at_least(0),
    "--prune-warmup": at_least(0),
}


def check_value(flag: str, value: Any) -> None:
    """Raise one UsageError line if ``value`` is outside ``flag``'s FLAG_RANGES row."""
    accepted = FLAG_RANGES[flag]
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number {accepted.text}, got {value}")
    if not accepted.accepts(value):
        shown = f"{value:g}" if isinstance(value, float) else value
        raise UsageError(f"{flag} must be {accepted.text}, got {shown}")


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *checks: Callable[[argparse.Namespace], None],
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then every numeric flag against FLAG_RANGES, then each
    of ``checks`` (the command's checks of several flags and of its paths)."""
    args = parser.parse_args(argv)
    check_ranges(parser, args)
    for check in checks:
        check(args)
    return args


def check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag, action in numeric_flags(parser).items():
        value = getattr(args, action.dest, None)
        if value is not None:  # None: an optional flag not given
            check_value(flag, value)


# -- several flags at once ---------------------------------------------------------------


def check_size(flag: str, size: int, depth: int, padding: str) -> None:
    """``size`` must be an input side a U-Net of ``depth`` and ``padding`` accepts (the
    model's own rule, ``minunet.model.geometry``)."""
    from minunet.model.geometry import check_input_size

    try:
        check_input_size(size, depth, padding)
    except MinunetError as exc:
        raise UsageError(f"{flag} {size}: {exc}") from None


def mpi_world_size() -> int:
    """The number of processes an MPI launcher started (1 when none did), from the
    variables the launchers set, so that flags are checked before MPI starts."""
    from minunet.train.distributed import MPI_SIZE_VARIABLES

    for name in MPI_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


# -- paths -----------------------------------------------------------------------------------


def check_input_file(flag: str, path: str | os.PathLike) -> None:
    """An existing, readable file (not a folder)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, not a file")
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{flag} {path}: not readable (permission denied)")


def check_input_dir(flag: str, path: str | os.PathLike) -> None:
    """An existing folder whose files can be listed and read."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such folder")
    if not p.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: not readable (permission denied)")


def check_output_dir(flag: str, path: str | os.PathLike) -> None:
    """A folder that exists and is writable, or that can be created (its nearest existing
    parent is a writable folder). Nothing is created here."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder; choose another {flag}")
    _check_writable(flag, path, p)


def check_output_file(flag: str, path: str | os.PathLike) -> None:
    """A file that can be written: not a folder, in a folder that is (or can be) written."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give the path of the file to write")
    _check_writable(flag, path, p.parent)


def _check_writable(flag: str, shown: str | os.PathLike, folder: Path) -> None:
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {shown}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {shown}: {existing} is not writable (permission denied)")
