"""benchmarks/step_allocations.py counts what it says: one step's NumPy allocations, and
the decoder's joins copying (the row before the up-convolutions wrote into the joins'
buffers) allocate exactly the up-convolutions' outputs more."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch", reason="the benchmark builds step.py's contenders")
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import step  # noqa: E402
import step_allocations  # noqa: E402

COUNTER = step_allocations.AllocationCounter()  # one per process: it is never freed


@pytest.fixture(autouse=True, scope="module")
def counting_handler():
    """Installed for this module's tests only: the rest of the suite allocates as usual."""
    COUNTER.install_everywhere()
    yield
    COUNTER.uninstall_everywhere()


def test_a_counted_block_sees_its_arrays_and_only_those():
    assert np._core.multiarray.get_handler_name() == "minunet_counting"
    with COUNTER.counting() as counts:
        np.empty((1000, 250), np.float32)
    assert sum(counts.values()) == 1000 * 250 * 4
    assert list(counts) == ["(outside minunet)"]
    np.empty(1000)  # after the block: not counted
    assert sum(counts.values()) == 1000 * 250 * 4


@pytest.mark.parametrize("threads", ["2", "3"])
def test_the_joins_copying_allocate_the_up_convolutions_outputs_more(threads, monkeypatch):
    """Exactly: the counts see every thread (with MINUNET_THREADS=3 a 3-thread pool, then
    2 threads a step, on a pool grown for 3: every worker may take blocks)."""
    monkeypatch.setenv("MINUNET_THREADS", threads)
    COUNTER.install_everywhere()  # the pool may have grown for 3 threads
    dev = common.setup("numpy", False)
    batch, size = 2, 32
    model, contenders = step.build(dev, 4, 2, batch, size, join_rows=True)
    now = step_allocations.count_step(contenders["minunet"], COUNTER)
    before = step_allocations.count_step(contenders["minunet, joins copying"], COUNTER)
    ups = 0
    for level, up in zip(reversed(range(model.depth)), model.upconvs, strict=True):
        side = size >> level
        ups += batch * up.out_channels * side * side * 4  # float32
    assert sum(before.values()) - sum(now.values()) == ups
    room = [site for site in now if "concat.py" in site and "(room)" in site]
    assert len(room) == 1 and before[room[0]] == 0  # the joins' buffers: room now, forward before


def test_the_script_runs_and_exits_cleanly():
    """The handler outlives every array it allocated: the process ends with status 0."""
    command = [sys.executable, str(ROOT / "benchmarks" / "step_allocations.py")]
    result = subprocess.run(
        [*command, "--base", "4", "--depth", "1", "--size", "16", "--batch", "2", "--top", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "joins concatenating (before)" in result.stdout


def test_uninstalling_puts_numpys_handler_back():
    COUNTER.uninstall_everywhere()
    try:
        assert np._core.multiarray.get_handler_name() == "default_allocator"
        with COUNTER.counting() as counts:
            np.empty(1000)
        assert not counts
    finally:
        COUNTER.install_everywhere()
