"""Training end to end: it learns, it resumes exactly, it stops cleanly, and the commands
give one-line errors."""

import json
import signal
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest
from helpers_cli import TINY_TRAIN_FLAGS, run_python, start_python
from PIL import Image

from minunet.data.sources import DataOptions
from minunet.errors import MinunetError
from minunet.io.checkpoint import load_checkpoint
from minunet.model import UNet
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import make_optimizer
from minunet.train import TrainConfig, train
from minunet.train.loop import NonFiniteLoss

TINY = TINY_TRAIN_FLAGS


def tiny_config(out, **kw) -> TrainConfig:
    data = DataOptions(data="synthetic", image_size=32, train_size=16, val_size=8)
    cfg = TrainConfig(
        data=data,
        epochs=2,
        batch_size=4,
        base_channels=4,
        depth=2,
        out=str(out),
        progress=False,
        lr=3e-3,
    )
    return replace(cfg, **kw)


def test_a_tiny_batch_is_overfit():
    from minunet.data.synthetic import make_toy_pets

    data = make_toy_pets(4, 32, seed=3)
    x = ((data.images / 255.0 - 0.5) / 0.25).astype(np.float32).transpose(0, 3, 1, 2)
    y = data.masks.astype(np.int64)
    net = UNet(3, 3, base_channels=8, depth=2, seed=0)
    loss_fn = SoftmaxCrossEntropy()
    opt = make_optimizer("adam", net.parameters(), 1e-2)
    for _ in range(150):
        loss = loss_fn.forward(net.forward(x), y)
        net.zero_grad()
        net.backward(loss_fn.backward())
        opt.step()
    assert float(loss) < 0.15, f"could not overfit 4 images: loss {float(loss):.3f}"


@pytest.mark.parametrize("tile", [None, 2, 4])
def test_resume_after_a_stop_is_bit_for_bit(tmp_path, tile, monkeypatch):
    """Stop mid-epoch (as Ctrl-C does), resume, and end with exactly the uninterrupted run:
    with the default paths (the tiny net's layers are too small for Winograd), and with
    every 3x3 convolution forced onto Winograd F(2x2) or F(4x4)."""
    from minunet.accel import winograd

    tiles = []  # the tile sizes the Winograd forward ran with
    forward = winograd.conv2d_forward

    def counted(*args):
        tiles.append(args[-1])
        return forward(*args)

    monkeypatch.setattr(winograd, "conv2d_forward", counted)
    paths = nullcontext() if tile is None else winograd.forced(tile)
    whole = tmp_path / "whole"
    parts = tmp_path / "parts"
    with paths:
        train(tiny_config(whole, dropout=0.2), log=lambda *_: None)
        train(tiny_config(parts, dropout=0.2, max_steps=3), log=lambda *_: None)  # 4 steps/epoch
        assert load_checkpoint(parts / "last.npz").meta["train"]["batch"] == 3
        train(tiny_config(parts, dropout=0.2, resume=True), log=lambda *_: None)
    assert set(tiles) == (set() if tile is None else {tile})
    a, b = load_checkpoint(whole / "last.npz"), load_checkpoint(parts / "last.npz")
    for k, v in a.model_state.items():
        np.testing.assert_array_equal(v, b.model_state[k], err_msg=k)
    for k, v in a.optim_state.items():
        np.testing.assert_array_equal(v, b.optim_state[k], err_msg=k)
    assert _records(parts) == _records(whole)  # the epoch that was cut in two included


def _records(out):
    """metrics.jsonl without the clock's numbers; every images_per_s must be a real rate."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r.pop("images_per_s") > 0 for r in records)
    return records


def _ctrl_c_after_step(monkeypatch, step):
    """Press Ctrl-C (a real SIGINT to this process) right after training step ``step``."""
    import minunet.train.loop as loop

    real_step, done = loop._train_step, []

    def step_then_maybe_ctrl_c(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        done.append(1)
        if len(done) == step:
            signal.raise_signal(signal.SIGINT)
        return loss

    monkeypatch.setattr(loop, "_train_step", step_then_maybe_ctrl_c)


def test_ctrl_c_on_an_epochs_last_step_resumes_to_the_uninterrupted_log(tmp_path, monkeypatch):
    """Ctrl-C on the last step of epoch 1 (4 steps an epoch) stops before its validation;
    the resumed run validates and logs epoch 1 with that epoch's loss, not an empty one."""
    whole = tmp_path / "whole"
    train(tiny_config(whole), log=lambda *_: None)
    parts = tmp_path / "parts"
    with monkeypatch.context() as patch:
        _ctrl_c_after_step(patch, 4)
        result = train(tiny_config(parts), log=lambda *_: None)
    assert result["interrupted"] and not (parts / "metrics.jsonl").exists()
    assert load_checkpoint(parts / "last.npz").meta["train"]["batch"] == 4
    train(tiny_config(parts, resume=True), log=lambda *_: None)
    assert _records(parts) == _records(whole)


def test_run_folder_contents(tmp_path):
    metrics = train(tiny_config(tmp_path, epochs=1), log=lambda *_: None)
    for name in (
        "config.json",
        "metrics.jsonl",
        "last.npz",
        "best.npz",
        "curves.png",
        "predictions.png",
    ):
        assert (tmp_path / name).exists(), name
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["val_miou"] == pytest.approx(metrics["miou"])
    ck = load_checkpoint(tmp_path / "best.npz")
    assert ck.meta["data"]["class_names"] == ["pet", "background", "outline"]
    assert ck.optim_state == {}
    assert load_checkpoint(tmp_path / "last.npz").optim_state


@pytest.mark.parametrize("log_every,max_steps", [(1, None), (100, 3)])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, log_every, max_steps):
    """Noticed at a log read (every step) or at the end of the pass (a --max-steps stop
    before any log read): the same error either way, and nothing saved."""
    train(tiny_config(tmp_path, epochs=1), log=lambda *_: None)
    good = (tmp_path / "last.npz").read_bytes()
    message = r"non-finite at step \d+; stopped without saving\. last\.npz holds the last good"
    with pytest.raises(NonFiniteLoss, match=message):
        train(
            tiny_config(
                tmp_path,
                epochs=1,
                lr=1e38,
                optimizer="sgd",
                log_every=log_every,
                max_steps=max_steps,
            ),
            log=lambda *_: None,
        )
    assert (tmp_path / "last.npz").read_bytes() == good


@pytest.mark.parametrize(
    "settings,message",
    [
        (
            {"data": DataOptions(data="synthetic", image_size=30)},
            "--image-size 30: .*multiple of 4",
        ),
        ({"padding": "valid"}, "train it with --crop N"),
        ({"padding": "valid", "crop": 46}, "--crop 46: .*valid.*nearest valid sizes: 44 or 48"),
        ({"padding": "full"}, "--padding must be one of same, valid"),
    ],
)
def test_the_configuration_is_checked_before_any_data_is_loaded(
    tmp_path, monkeypatch, settings, message
):
    import minunet.train.loop as loop

    def no_loading(*args):
        raise AssertionError("the data was loaded before the configuration was checked")

    monkeypatch.setattr(loop, "_load_data", no_loading)
    monkeypatch.setattr(loop, "_start_backend", no_loading)
    with pytest.raises(MinunetError, match=message):
        train(tiny_config(tmp_path, **settings), log=lambda *_: None)


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "minunet.train", *TINY, "--epochs", "50", "--out", str(out)]
    proc = start_python(*args)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped at step" in stdout
    assert "Traceback" not in stderr
    ck = load_checkpoint(out / "last.npz")
    assert ck.meta["train"]["step"] > 0


def test_cli_train_predict_evaluate(tmp_path):
    out = tmp_path / "run"
    r = run_python("-m", "minunet.train", *TINY, "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "val mIoU" in r.stdout
    image = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 45, 3), np.uint8)).save(image)
    r = run_python(
        "-m",
        "minunet.predict",
        "--checkpoint",
        str(out / "best.npz"),
        str(image),
        "--out",
        str(tmp_path / "pred"),
    )
    assert r.returncode == 0, r.stderr
    mask = np.asarray(Image.open(tmp_path / "pred" / "odd_mask.png"))
    assert mask.shape == (37, 45) and set(np.unique(mask)) <= {1, 2, 3}  # trimap values
    assert (tmp_path / "pred" / "odd_overlay.png").exists()
    r = run_python(
        "-m",
        "minunet.evaluate",
        "--checkpoint",
        str(out / "best.npz"),
        "--out",
        str(tmp_path / "ev"),
        "--val-size",
        "8",
    )
    assert r.returncode == 0, r.stderr
    assert "mean IoU" in r.stdout and (tmp_path / "ev" / "confusion.png").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["-m", "minunet.train", "--epochs", "zero"], "--epochs: invalid int value: 'zero'"),
        (["-m", "minunet.train", *TINY, "--backend", "cupy"], "backend 'cupy'"),
        (["-m", "minunet.train", *TINY, "--data", "folder"], "needs --data-dir"),
        (["-m", "minunet.train", *TINY, "--tf32"], "--tf32 is a GPU setting"),
        (["-m", "minunet.train", *TINY, "--image-size", "30"], "multiple of 4"),
        (["-m", "minunet.train", *TINY, "--resume", "--out", "/nonexistent/run"], "--resume"),
        (["-m", "minunet.predict", "--checkpoint", "missing.npz", "x.png"], "missing.npz: no such"),
        (["-m", "minunet.evaluate", "--checkpoint", "missing.npz"], "missing.npz: no such file"),
    ],
)
def test_errors_are_one_line(args, message, tmp_path):
    r = run_python(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_predict_refuses_an_unreadable_image(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, epochs=1), log=lambda *_: None)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    r = run_python("-m", "minunet.predict", "--checkpoint", str(out / "best.npz"), str(bad))
    assert r.returncode == 2 and "cannot decode" in r.stderr and "Traceback" not in r.stderr


class _TwoRanks:
    """Rank ``rank`` of two, the other rank's numbers given: allreduce_sum adds them."""

    size = 2

    def __init__(self, rank, other):
        self.rank, self.other = rank, np.asarray(other, dtype=np.float64)
        self.is_main = rank == 0

    def allreduce_sum(self, array):
        return array + self.other


def test_the_logged_totals_are_over_every_rank():
    """Each rank counts its own share; a read sums them: the loss is the mean of every
    rank's losses, images are the global batch's, the first non-finite step is the
    earliest of any rank, and a resumed epoch's totals count once (on rank 0)."""
    from minunet.train.loop import _Tally, _Totals

    # the other rank: losses summing to 6.0 over 2 steps, 4 images, first bad at step 2
    other = [6.0, 2, 4, 0, 3]
    tally = _Tally(np, _TwoRanks(0, other), start=_Totals(10.0, 4, 8, 1.0, 0.5))
    for step, loss in ((3, 1.0), (4, 3.0)):
        tally.add(np.asarray(loss, np.float32), step, images=2, lr=0.25)
    totals = tally.read()
    assert (totals.loss_sum, totals.losses, totals.images) == (20.0, 8, 16)
    assert totals.loss == 2.5 and totals.lr == 0.25 and totals.first_bad == 2
    assert totals.seconds >= 1.0 and totals.images_per_s == 16 / totals.seconds
    assert tally.read() is totals  # no step since: no second allreduce
    other_rank = _Tally(np, _TwoRanks(1, [0.0, 0, 0, 0, 0]), start=_Totals(10.0, 4, 8, 1.0, 0.5))
    assert other_rank.read().loss_sum == 0.0 and other_rank.read().lr == 0.5
