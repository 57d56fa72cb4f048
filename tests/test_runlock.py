"""One run per output folder: the lock is exclusive, released however the run ends, and a
stale one (its process gone) is taken over with a warning."""

from __future__ import annotations

import gc
import json
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers_cli import CHILD_ENV, run_python, start_python
from test_train import TINY

from minunet.errors import RunLocked
from minunet.io.runlock import LOCK_NAME, RunLock, pid_alive

# A child that takes the lock of argv[1], says so, then does what argv[2] says.
HOLDER = """
import os, sys, time
from minunet.io.runlock import RunLock
lock = RunLock(sys.argv[1])
print("held", flush=True)
if sys.argv[2] == "crash":
    raise RuntimeError("a crash while holding the lock")
if sys.argv[2] == "exit":
    sys.exit(0)
time.sleep(120)
"""


def _write_lock(folder, pid, host=None):
    holder = {"pid": pid, "host": host or socket.gethostname(), "started": time.time()}
    (folder / LOCK_NAME).write_text(json.dumps(holder))
    return holder


@pytest.fixture
def sleeper():
    """A live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def test_the_lock_file_names_its_holder_and_goes_when_released(tmp_path):
    lock = RunLock(tmp_path)
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == lock.owner["pid"] and holder["host"] == socket.gethostname()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_dropping_the_lock_releases_it(tmp_path):
    lock = RunLock(tmp_path)
    del lock
    gc.collect()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_holder_is_refused_with_one_clear_line(tmp_path, sleeper):
    holder = _write_lock(tmp_path, sleeper.pid)
    with pytest.raises(RunLocked) as info:
        RunLock(tmp_path)
    message = str(info.value)
    assert f"--out {tmp_path} is in use by another run, pid {sleeper.pid} on" in message
    assert "choose another --out" in message and "\n" not in message
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == holder  # left alone


def test_a_lock_from_another_host_is_refused(tmp_path):
    _write_lock(tmp_path, _dead_pid(), host="another-machine")
    with pytest.raises(RunLocked, match="on another-machine"):
        RunLock(tmp_path)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = _dead_pid()
    _write_lock(tmp_path, dead)
    said = []
    lock = RunLock(tmp_path, log=said.append)
    assert len(said) == 1 and f"taking over the lock of pid {dead}" in said[0]
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == lock.owner["pid"]
    lock.release()


def test_a_second_run_in_the_same_process_takes_its_own_lock_quietly(tmp_path):
    first = RunLock(tmp_path)  # e.g. kept alive by a traceback after a failed train()
    said = []
    second = RunLock(tmp_path, log=said.append)
    assert said == []
    first.release()  # the first one's release must not remove the second's lock
    assert (tmp_path / LOCK_NAME).exists()
    second.release()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("how", ["crash", "exit"])
def test_a_crash_or_exit_releases_the_lock(tmp_path, how):
    r = run_python("-c", HOLDER, str(tmp_path), how)
    assert "held" in r.stdout, r.stderr
    assert (r.returncode != 0) == (how == "crash")
    assert not (tmp_path / LOCK_NAME).exists()


def test_ctrl_c_releases_the_lock_and_sigkill_leaves_a_stale_one(tmp_path):
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = start_python("-c", HOLDER, str(tmp_path), "sleep")
        assert proc.stdout.readline().strip() == "held"
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert not (tmp_path / LOCK_NAME).exists()
    assert (tmp_path / LOCK_NAME).exists()  # SIGKILL: no chance to clean up
    said = []
    RunLock(tmp_path, log=said.append).release()
    assert "no longer running" in said[0]


RACER = """
import os, sys, time
from minunet.errors import RunLocked
from minunet.io.runlock import RunLock
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    lock = RunLock(sys.argv[1])
except RunLocked:
    print("refused")
else:
    print("got")
    time.sleep(3)  # hold it while the others try
"""


def test_of_runs_started_at_once_exactly_one_gets_the_lock(tmp_path):
    folder, go = tmp_path / "run", tmp_path / "go"
    folder.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(folder), str(go)],
            stdout=subprocess.PIPE,
            text=True,
            env=CHILD_ENV,
        )
        for _ in range(6)
    ]
    time.sleep(2)  # let them all start and wait
    go.touch()
    said = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert said == ["got"] + ["refused"] * 5


def test_train_refuses_an_out_in_use_before_writing_anything(tmp_path, sleeper):
    out = tmp_path / "run"
    out.mkdir()
    _write_lock(out, sleeper.pid)
    r = run_python("-m", "minunet.train", *TINY, "--epochs", "1", "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "is in use by another run" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # no config.json
