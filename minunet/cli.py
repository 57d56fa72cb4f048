"""What every command-line tool shares: one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable

from minunet.core.backend import BackendError
from minunet.errors import MinunetError


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; print expected failures as ``error: ...`` on stderr and exit 2."""
    try:
        return main(argv)
    except (MinunetError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value
