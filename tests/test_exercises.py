"""The lessons' exercises: every solution passes its check, every stub fails it.

Each lesson ends with a "## Exercises" section of stubs, each followed by
``report(check_x, x)``; the checks live in ``lessons/exercises.py`` (``EXERCISES`` maps a
lesson's number to the names its checks take) and the solutions in
``lessons/solutions/NN_*.py``. Here every check runs against its solution (it must pass:
the exercise can be done, and the check accepts a right answer) and against the stub
taken from the lesson's own source (it must fail: the check is not vacuous).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
LESSONS = REPO / "lessons"
sys.path.insert(0, str(LESSONS))  # the lessons import their checks as ``exercises``

import exercises  # noqa: E402

SOURCES = {p.name[:2]: p for p in sorted(LESSONS.glob("*.py")) if re.match(r"\d\d_", p.name)}
CASES = [(nn, name, check) for nn, items in exercises.EXERCISES.items() for name, check in items]
IDS = [f"{nn}-{name}" for nn, name, _ in CASES]
MARKER = "# ## Exercises\n"


def exercise_section(nn: str) -> str:
    """The text of lesson ``nn`` from its "## Exercises" heading to the end."""
    text = SOURCES[nn].read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"{SOURCES[nn].name}: one '## Exercises' heading expected"
    return text[text.index(MARKER) :]


def solution(nn: str) -> ModuleType:
    (path,) = (LESSONS / "solutions").glob(f"{nn}_*.py")
    assert path.stem == SOURCES[nn].stem, f"{path.name} should be named like its lesson"
    spec = importlib.util.spec_from_file_location(f"solution_{nn}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stubs(nn: str) -> dict:
    """Run the lesson's exercise section as written (the cells are plain Python) and
    return its namespace: the stubs, exactly as a reader finds them."""
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(exercise_section(nn), str(SOURCES[nn]), "exec"), namespace)
    namespace["__printed__"] = printed.getvalue()
    return namespace


def test_every_lesson_has_exercises_at_its_end() -> None:
    assert set(SOURCES) == set(exercises.EXERCISES), "a lesson without exercises, or vice versa"
    for nn, items in exercises.EXERCISES.items():
        section = exercise_section(nn)
        assert "\n# ## " not in section[len(MARKER) :], f"lesson {nn}: Exercises is not last"
        assert 1 <= len(items) <= 3, f"lesson {nn}: one to three exercises"
        for name, check in items:
            call = f"report({check.__name__}, {name})"
            assert call in section, f"lesson {nn} does not run {call}"


@pytest.mark.parametrize(("nn", "name", "check"), CASES, ids=IDS)
def test_solution_passes(nn: str, name: str, check) -> None:
    check(getattr(solution(nn), name))


@pytest.mark.parametrize(("nn", "name", "check"), CASES, ids=IDS)
def test_stub_fails(nn: str, name: str, check) -> None:
    namespace = stubs(nn)
    with pytest.raises(Exception):  # noqa: B017 - a stub may fail in any way
        check(namespace[name])
    # And the lesson, run as is, reports it as not done rather than stopping.
    assert f"[ not yet ] {name}" in namespace["__printed__"]


def test_report_says_not_yet_without_raising(capsys: pytest.CaptureFixture) -> None:
    def check(candidate) -> None:
        assert candidate == 2, "expected 2"

    assert exercises.report(check, 1) is False
    assert "[ not yet ] check: AssertionError: expected 2" in capsys.readouterr().out
    assert exercises.report(check, 2) is True


def test_mutant_needs_exactly_one_occurrence() -> None:
    with pytest.raises(AssertionError, match="occurs 0 times"):
        exercises.mutant("minunet.core.im2col", "no such text", "")
    with pytest.raises(AssertionError, match="occurs [2-9]"):
        exercises.mutant("minunet.core.im2col", "def ", "def ")


def test_a_mutation_answer_is_judged_by_running_the_mutant() -> None:
    """The right set passes; a subset, a superset and an unknown name do not."""
    right = solution("02").answer_col2im_mutation
    exercises.check_answer_col2im_mutation(right)
    for wrong in (set(), right | {"one_by_one"}, {"nonsense"}, "adjoint_k3_s1"):
        with pytest.raises(AssertionError):
            exercises.check_answer_col2im_mutation(wrong)
