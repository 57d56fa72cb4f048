"""Data-parallel training on two MPI ranks (CPU), against one process doing it by hand."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_cli import TINY_TRAIN_FLAGS, run_python

from minunet.model import UNet
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import SGD

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'minunet[mpi]')")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip(
        "no mpiexec found (pip install 'minunet[mpi]' brings MPICH's)", allow_module_level=True
    )
WORKER = Path(__file__).with_name("mpi_worker.py")


def mpirun(*args, timeout=180):
    return run_python(*args, launcher=[MPIEXEC, "-n", "2"], timeout=timeout)


def reference_step(shards):
    """One process: the same step, BatchNorm over ``shards`` separately (per-rank) or not."""
    sys.path.insert(0, str(WORKER.parent))
    from mpi_worker import batch

    net = UNet(3, 3, base_channels=4, depth=2, dtype=np.float64, seed=0)
    x, y = batch()
    grads = [np.zeros_like(p.data) for p in net.parameters()]
    size = len(x) // shards
    for s in range(shards):
        loss = SoftmaxCrossEntropy()
        loss.forward(net.forward(x[s * size : (s + 1) * size]), y[s * size : (s + 1) * size])
        net.zero_grad()
        net.backward(loss.backward())
        for g, p in zip(grads, net.parameters(), strict=True):
            g += p.grad / shards
    for g, p in zip(grads, net.parameters(), strict=True):
        p.grad[...] = g
    SGD(net.parameters(), lr=0.1, momentum=0.0).step()
    return {
        k: v
        for k, v in net.state_dict().items()
        if "running" not in k and "calls" not in k and "num_batches" not in k
    }


def compare(path, expected):
    got = np.load(path)
    for k, v in expected.items():
        err = np.abs(got[k] - v).max() / max(np.abs(v).max(), 1e-30)
        assert err < 1e-6, f"{k}: relative error {err:.2e}"


def test_sync_bn_step_equals_one_process_on_the_whole_batch(tmp_path):
    r = mpirun(str(WORKER), "step", str(tmp_path / "w.npz"), "--sync-bn")
    assert r.returncode == 0, r.stderr
    compare(tmp_path / "w.npz", reference_step(shards=1))


def test_per_rank_bn_step_equals_per_shard_bn_by_hand(tmp_path):
    r = mpirun(str(WORKER), "step", str(tmp_path / "w.npz"))
    assert r.returncode == 0, r.stderr
    compare(tmp_path / "w.npz", reference_step(shards=2))
    # and it really differs from the whole-batch statistics
    with pytest.raises(AssertionError):
        compare(tmp_path / "w.npz", reference_step(shards=1))


def test_a_failing_rank_ends_the_job(tmp_path):
    r = mpirun(str(WORKER), "fail", timeout=60)
    assert r.returncode != 0
    assert "rank 1 failed on purpose" in r.stderr, (r.returncode, r.stdout, r.stderr)


TINY_RUN = ["-m", "minunet.train", *TINY_TRAIN_FLAGS, "--sync-bn"]


def test_training_command_on_two_ranks(tmp_path):
    out = tmp_path / "run"
    r = mpirun(*TINY_RUN, "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("training on") == 1  # rank 0 alone logs...
    assert "2 processes" in r.stdout
    assert (out / "best.npz").exists() and (out / "metrics.jsonl").exists()  # ...and writes
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_log_the_numbers_one_process_logs(tmp_path):
    """The same run (same global batch of 4, same seed, BatchNorm over the global batch) as
    one process and as two ranks: metrics.jsonl must agree, train_loss being the mean over
    the global batch (not rank 0's half), lr the same, img/s a rate of global images.

    What may differ is float32 rounding: the ranks sum their halves' losses and BatchNorm
    statistics in another order, about 1e-7 relative per sum, carried through eight Adam
    steps; 1e-5 leaves a wide margin over that (we see ~1e-7) and is far below the 1-2%
    by which rank 0's half of a batch differs from the whole batch.

    Without class weights: with them (the default, ``sqrt``) each rank divides its loss by
    its own half's weight sum, as data-parallel training usually does, and the mean of the
    two halves' weighted means is not the whole batch's weighted mean (README, several
    processes).
    """
    args = [*TINY_RUN, "--epochs", "2", "--seed", "3", "--class-weights", "none"]
    r = run_python(*args, "--out", str(tmp_path / "one"))
    assert r.returncode == 0, r.stderr
    r = mpirun(*args, "--out", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a.pop("images_per_s") > 0 and b.pop("images_per_s") > 0
        assert (a["epoch"], a["step"], a["lr"]) == (b["epoch"], b["step"], b["lr"])
        for key in ("train_loss", "val_miou", "val_pixel_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
        for key in ("val_iou", "val_dice"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
