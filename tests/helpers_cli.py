"""Run minunet's commands in a child process, as a user would, for the end-to-end tests.

The test files import this as ``from helpers_cli import ...``: tests/ has no
``__init__.py``, so pytest's default import mode ("prepend") puts tests/ on ``sys.path``
before it imports a test file there. (The ``helpers_`` prefix keeps pytest from
collecting it as a test file.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

# One BLAS thread per child: the tests often run beside each other on few cores, and
# unbuffered output, so a child killed by a timeout or a signal still shows its last lines.
CHILD_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# The flags of a training run small enough for a test: 16 synthetic 32 px images, a base-4,
# depth-2 net, batches of 4 (add --epochs, --out and whatever the test is about).
TINY_TRAIN_FLAGS = [
    "--data",
    "synthetic",
    "--image-size",
    "32",
    "--base-channels",
    "4",
    "--depth",
    "2",
    "--train-size",
    "16",
    "--val-size",
    "8",
    "--batch-size",
    "4",
    "--no-progress",
]

# Long enough for a tiny training run on a busy 2-core machine; a hung child fails the test.
TIMEOUT_S = 300


def run_python(
    *args: str,
    launcher: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
    **kw: Any,
) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a child process with ``CHILD_ENV``; its output captured as text.

    ``launcher`` goes in front of the interpreter (e.g. ``["mpiexec", "-n", "2"]``),
    ``extra_env`` adds to or overrides ``CHILD_ENV``, and further keywords (``cwd=...``)
    go to ``subprocess.run``.
    """
    return subprocess.run(
        [*launcher, sys.executable, *args],
        capture_output=True,
        text=True,
        env={**CHILD_ENV, **(extra_env or {})},
        timeout=timeout,
        **kw,
    )


def start_python(*args: str, **kw: Any) -> subprocess.Popen[str]:
    """``python *args`` started in the background with ``CHILD_ENV`` (for a test that
    signals it, e.g. Ctrl-C); read its output with ``communicate``."""
    return subprocess.Popen(
        [sys.executable, *args],
        env=CHILD_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
