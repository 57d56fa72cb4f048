"""benchmarks/step_kernel_time.py: what it counts per step, and its table."""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import step_kernel_time  # noqa: E402


def test_per_step_counts_the_timed_steps_only_and_sees_fresh_pages():
    """Warm-up steps are not counted, and a step that writes fresh memory of its own
    (an anonymous mmap, whatever glibc's settings) shows its page faults."""
    calls = []
    size = 64 << 20  # 64 MiB: 16384 pages of 4 KiB, or 32 of 2 MiB at least

    def step():
        calls.append(1)
        with mmap.mmap(-1, size) as fresh:
            pages = np.frombuffer(fresh, dtype=np.uint8)
            pages[::4096] = 1  # one write per 4 KiB page: each one faults in
            del pages  # the mmap cannot close while a view of it is alive

    got = step_kernel_time.per_step(step, steps=3, warmup=2)
    assert len(calls) == 5
    assert set(got) == {"wall", "user", "system", "faults"}
    assert got["wall"] > 0 and got["user"] >= 0 and got["system"] >= 0
    assert got["faults"] >= 32  # each step faulted its 64 MiB in, in pages of 2 MiB or less

    quiet = step_kernel_time.per_step(lambda: None, steps=3, warmup=0)
    assert quiet["faults"] < got["faults"]


def test_main_prints_a_row_per_contender(capsys):
    pytest.importorskip("torch", reason="the benchmark times PyTorch beside minunet")
    step_kernel_time.main(["--base", "4", "--depth", "1", "--batch", "2", "--size", "16",
                           "--steps", "1", "--warmup", "1"])  # fmt: skip
    out = capsys.readouterr().out
    rows = [line.split("  ")[0].strip() for line in out.splitlines() if line[:1].isalpha()]
    assert rows[0] == "contender"
    assert rows[1:] == ["minunet", "torch", "torch channels-last"]
    assert "glibc: " in out


def test_bad_step_counts_are_refused(capsys):
    with pytest.raises(SystemExit):
        step_kernel_time.main(["--steps", "0"])
    assert "--steps must be at least 1" in capsys.readouterr().err
