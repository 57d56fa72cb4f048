"""Every check in the lessons can fail: break the code it checks, and the lesson stops there.

A lesson's ``assert`` is only worth something if some plausible mistake makes it fail.
The tables in ``tests/lesson_mutations_*.py`` (every module of that name defining
``MUTATIONS``) list such mistakes, one per row:

    dict(lesson="02", path="minunet/core/im2col.py", find="...", replace="...",
         check="...")

``lesson`` is the lesson's two-digit number, the prefix of its source (``"02"`` for
``lessons/02_*.py``; one convention for every table, not the full stem); ``path`` the file to
break, relative to the repository root (library code, or for a check of a lesson's own
by-hand derivation, the lesson itself); ``find`` an exact snippet of it, which must occur
exactly once (so a moved or edited target fails loudly instead of silently mutating
nothing); ``replace`` what it becomes; ``check`` a piece of the source of the lesson
statement that must raise (or a tuple of such pieces, any one of which may raise: for a
check that moves from one statement to another as the library changes). An optional
``note`` says more (for instance that the row breaks an accelerated path rather than the
reference code), and an optional ``needs`` names what the check runs only with:
``"torch"`` (PyTorch installed), ``"gpu"`` (CuPy and a GPU) or ``"pets"`` (the real Pets
sample named by ``MINUNET_PETS_SAMPLE``); without it the row is skipped, saying why.

For each row the harness copies ``minunet/`` and ``lessons/`` into a temporary folder,
applies that one mutation there, runs the lesson as the plain script it is (a jupytext
percent-format file is valid Python: the ``# %%`` markers are comments) in small mode,
and asserts that it stops with an AssertionError raised by the statement containing
``check``. The same harness first runs each lesson unmutated, which must succeed: so a
mutation's failure is the mutation's doing.

The fast test below checks the tables themselves (keys, targets, snippets, checks); the
runs are marked ``slow``.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LESSONS = REPO / "lessons"
RUN_TIMEOUT_S = 300  # one small lesson run; they take seconds
KEYS = {"lesson", "path", "find", "replace", "check"}
OPTIONAL_KEYS = {"note", "needs"}


def load_mutations() -> list[tuple[str, dict]]:
    """(id, row) for every row of every tests/lesson_mutations_*.py that has MUTATIONS."""
    rows = []
    for module_path in sorted(Path(__file__).parent.glob("lesson_mutations_*.py")):
        spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        table = getattr(module, "MUTATIONS", None)
        if table is None:
            continue
        for i, row in enumerate(table):
            rows.append((f"{row.get('lesson', '?')}-{module_path.stem[17:]}-{i:02d}", row))
    return rows


MUTATIONS = load_mutations()


def lesson_source(prefix: str) -> Path:
    if not re.fullmatch(r"\d\d", prefix):
        raise LookupError(f"lesson {prefix!r}: give the two-digit number (e.g. '02')")
    matches = [p for p in LESSONS.glob(f"{prefix}_*.py") if re.match(r"\d\d_", p.name)]
    if len(matches) != 1:
        raise LookupError(f"lesson {prefix!r}: {len(matches)} sources match lessons/{prefix}_*.py")
    return matches[0]


def test_mutation_tables_are_well_formed() -> None:
    """Every row names a lesson, a file with its snippet exactly once, and a real check."""
    assert MUTATIONS, "no mutation tables found (tests/lesson_mutations_*.py with MUTATIONS)"
    problems = []
    for ident, row in MUTATIONS:
        keys = set(row)
        if not KEYS <= keys or keys - KEYS - OPTIONAL_KEYS:
            problems.append(f"{ident}: keys {sorted(keys)}, expected {sorted(KEYS)} (+ optional)")
            continue
        try:
            source = lesson_source(row["lesson"])
        except LookupError as exc:
            problems.append(f"{ident}: {exc}")
            continue
        target = REPO / row["path"]
        if not target.is_file():
            problems.append(f"{ident}: {row['path']} does not exist")
            continue
        count = target.read_text(encoding="utf-8").count(row["find"])
        if count != 1:
            problems.append(
                f"{ident}: snippet occurs {count} times in {row['path']}: {row['find']!r}"
            )
        if row["find"] == row["replace"]:
            problems.append(f"{ident}: the replacement changes nothing")
        text = source.read_text(encoding="utf-8")
        if row["path"] == f"lessons/{source.name}":  # the lesson itself is mutated
            text = text.replace(row["find"], row["replace"])
        for check in _checks(row):
            if check not in text:
                problems.append(f"{ident}: check {check!r} is not in {source.name}")
        if row.get("needs") not in (None, *NEEDS):
            problems.append(f"{ident}: needs {row['needs']!r}, not one of {sorted(NEEDS)}")
    assert not problems, "\n".join(problems)


def _checks(row: dict) -> tuple[str, ...]:
    return (row["check"],) if isinstance(row["check"], str) else tuple(row["check"])


def _have_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def _have_gpu() -> bool:
    from minunet.core.backend import gpu_available

    return gpu_available()


NEEDS = {
    "torch": (_have_torch, "PyTorch is not installed"),
    "gpu": (_have_gpu, "no CuPy or no visible GPU"),
    "pets": (lambda: bool(os.environ.get("MINUNET_PETS_SAMPLE")), "MINUNET_PETS_SAMPLE is not set"),
}


def _copy_tree(dest: Path) -> None:
    skip = shutil.ignore_patterns("__pycache__", "*.ipynb", ".ipynb_checkpoints")
    shutil.copytree(REPO / "minunet", dest / "minunet", ignore=skip)
    shutil.copytree(LESSONS, dest / "lessons", ignore=skip)


def _run(root: Path, source_name: str) -> subprocess.CompletedProcess:
    """Run lessons/<source_name> of the tree at ``root`` as a script, small, headless."""
    env = dict(os.environ)
    env.update(MINUNET_LESSON_SMALL="1", MPLBACKEND="Agg", PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, str(root / "lessons" / source_name)],
        cwd=root / "lessons",
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def _failing_statement(stderr: str, lesson_file: Path) -> str | None:
    """Source of the lesson's innermost statement in the traceback, or None."""
    lines = re.findall(rf'File "{re.escape(str(lesson_file))}", line (\d+)', stderr)
    if not lines:
        return None
    line = int(lines[-1])
    text = lesson_file.read_text(encoding="utf-8")
    best = None
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.stmt) and node.lineno <= line <= node.end_lineno:
            compound = isinstance(node, ast.For | ast.While | ast.If | ast.With | ast.Try)
            if not compound and (best is None or node.lineno >= best.lineno):
                best = node
    return ast.get_source_segment(text, best) if best is not None else None


BASELINE_LESSONS = sorted({row["lesson"] for _, row in MUTATIONS})


@pytest.mark.slow
@pytest.mark.parametrize("prefix", BASELINE_LESSONS)
def test_lesson_runs_as_a_script_unmutated(prefix: str, tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    source = lesson_source(prefix)
    result = _run(tmp_path, source.name)
    assert result.returncode == 0, f"{source.name} fails unmutated:\n{result.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("row", [row for _, row in MUTATIONS], ids=[i for i, _ in MUTATIONS])
def test_mutation_makes_its_check_fail(row: dict, tmp_path: Path) -> None:
    if row.get("needs"):
        available, reason = NEEDS[row["needs"]]
        if not available():
            pytest.skip(f"the lesson runs this check only where it can: {reason}")
    _copy_tree(tmp_path)
    target = tmp_path / row["path"]
    text = target.read_text(encoding="utf-8")
    assert text.count(row["find"]) == 1, f"snippet not exactly once in {row['path']}"
    target.write_text(text.replace(row["find"], row["replace"]), encoding="utf-8")
    source = lesson_source(row["lesson"])
    result = _run(tmp_path, source.name)
    what = f"{row['path']}: {row['find']!r} -> {row['replace']!r}"
    assert result.returncode != 0, f"{source.name} still passes with {what}"
    # np.testing's messages run over several lines: look for the exception's own line.
    after = result.stderr.rsplit("Traceback (most recent call last):", 1)[-1]
    assert re.search(r"^AssertionError\b", after, re.MULTILINE), (
        f"{source.name} failed, but not with an AssertionError, with {what}:\n"
        f"{result.stderr[-3000:]}"
    )
    statement = _failing_statement(result.stderr, tmp_path / "lessons" / source.name)
    assert statement is not None and any(check in statement for check in _checks(row)), (
        f"{source.name} failed in another statement than the check {row['check']!r} with"
        f" {what}:\n{statement}\n{result.stderr[-2000:]}"
    )
