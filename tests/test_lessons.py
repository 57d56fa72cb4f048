"""Execute every lesson notebook top to bottom, small, on the CPU.

The lessons are jupytext percent-format sources (``lessons/NN_*.py``). Each is read as a
notebook and run by nbclient in a kernel of this interpreter, with
``MINUNET_LESSON_SMALL=1`` so the sizes shrink to what CI affords. A lesson fails the test
on any error, including the ``assert``s that compare its derivations with the library.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LESSONS = REPO / "lessons"
SOURCES = sorted(p for p in LESSONS.glob("*.py") if re.match(r"\d\d_", p.name))
CELL_TIMEOUT_S = 600  # one cell; the small lessons take seconds


def test_every_lesson_is_listed() -> None:
    """The lessons exist, and each source has an executed notebook beside it."""
    assert SOURCES, f"no lesson sources found in {LESSONS}"
    missing = [p.name for p in SOURCES if not p.with_suffix(".ipynb").is_file()]
    assert not missing, f"lesson sources without an executed .ipynb: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_lesson_runs(source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jupytext = pytest.importorskip(
        "jupytext", reason="the lesson test needs jupytext: pip install -e '.[lessons]'"
    )
    nbclient = pytest.importorskip(
        "nbclient", reason="the lesson test needs nbclient: pip install -e '.[lessons]'"
    )
    pytest.importorskip(
        "ipykernel", reason="the lesson test needs ipykernel: pip install -e '.[lessons]'"
    )
    # The kernel inherits this environment: small sizes, the checkout importable even
    # when minunet is not installed, and a plotting backend that needs no display.
    monkeypatch.setenv("MINUNET_LESSON_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = jupytext.read(source)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",  # ipykernel's native kernel: this interpreter
        resources={"metadata": {"path": str(LESSONS)}},  # run where the reader would
    )
    client.execute()
