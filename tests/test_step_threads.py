"""benchmarks/step_threads.py: each thread's CPU time and sleeps in a step, both libraries."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch", reason="the benchmark's setup configures PyTorch's threads")
if not Path("/proc/self/task").is_dir():
    pytest.skip("step_threads.py reads /proc (Linux only)", allow_module_level=True)
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_threads  # noqa: E402


def test_a_sleep_is_counted_as_a_voluntary_switch_of_its_thread():
    me = threading.get_native_id()
    before = step_threads.thread_switches()[me]
    time.sleep(0.01)  # the thread blocks: the kernel counts a voluntary switch
    assert step_threads.thread_switches()[me] >= before + 1


def test_measure_sums_the_kept_threads_cpu_and_sleeps():
    def step() -> None:
        time.sleep(0.005)  # a sleep: one switch, no CPU
        sum(range(200_000))  # CPU

    wall, rows = step_threads.measure(step, 3, lambda name, used: name == "MainThread")
    assert [r[0] for r in rows] == ["MainThread", "cores busy"]
    main, total = rows
    assert main[2:] == total[2:]  # one thread kept: the sum is that thread
    assert float(main[4]) >= 1 and wall >= 0.005


def test_a_tiny_run_prints_both_libraries_tables(capsys, monkeypatch):
    monkeypatch.setattr(step_threads, "PAUSE_S", 0.0)
    args = ["--base", "2", "--depth", "1", "--batch", "1", "--size", "16", "--steps", "1"]
    step_threads.main([*args, "--winograd", "--torch"])
    out = capsys.readouterr().out
    assert "# PyTorch's step (NCHW" in out
    lines = out.splitlines()
    ends = [i for i, line in enumerate(lines) if line.startswith("cores busy")]
    assert len(ends) == 2  # one table per library
    for end in ends:
        start = max(i for i in range(end) if lines[i].startswith("---")) + 1
        threads = [lines[i].split() for i in range(start, end)]
        total = lines[end].split()  # "cores", "busy", CPU ms, % of wall, sleeps
        assert len(total) == 5
        # the last row sums the threads' CPU ms and sleeps (each rounded on its own)
        assert abs(float(total[2]) - sum(float(t[-3]) for t in threads)) <= len(threads)
        assert abs(float(total[4]) - sum(float(t[-1]) for t in threads)) <= len(threads)


def test_torch_and_predict_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        step_threads.main(["--torch", "--predict"])
    assert "drop --predict" in capsys.readouterr().err
