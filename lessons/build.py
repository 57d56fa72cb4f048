"""Regenerate the executed notebooks (``NN_*.ipynb``) from their jupytext sources.

    python lessons/build.py                 # every lesson, full size
    python lessons/build.py 03 07           # only the lessons whose names start so
    MINUNET_LESSON_SMALL=1 python lessons/build.py   # the small sizes CI runs

Each ``NN_*.py`` (jupytext percent format) is read as a notebook, executed top to bottom by
nbclient in a kernel of this interpreter, with the lessons folder as working directory, and
written beside it as ``NN_*.ipynb`` with its outputs and figures. Needs jupytext, nbclient
and ipykernel (``pip install -e '.[lessons]'``); not nbconvert.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import jupytext
import nbclient

LESSONS = Path(__file__).resolve().parent
REPO = LESSONS.parent


def build(source: Path) -> float:
    """Execute one lesson source and write its .ipynb; returns the seconds it took."""
    notebook = jupytext.read(source)
    for i, cell in enumerate(notebook.cells):
        cell.id = f"cell-{i:03d}"  # stable ids: a rebuild changes only what really changed
    start = time.perf_counter()
    nbclient.NotebookClient(
        notebook,
        timeout=1800,
        kernel_name="python3",  # ipykernel's native kernel: this interpreter
        resources={"metadata": {"path": str(LESSONS)}},
        record_timing=False,  # no timestamps in the cells: smaller diffs
    ).execute()
    jupytext.write(notebook, source.with_suffix(".ipynb"))
    return time.perf_counter() - start


def main(prefixes: list[str]) -> None:
    # The kernel inherits the environment: make the checkout importable without installing.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    sources = sorted(p for p in LESSONS.glob("*.py") if re.match(r"\d\d_", p.name))
    if prefixes:
        sources = [p for p in sources if any(p.name.startswith(x) for x in prefixes)]
    for source in sources:
        seconds = build(source)
        size = source.with_suffix(".ipynb").stat().st_size
        print(f"{source.name}: {seconds:.1f} s, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
