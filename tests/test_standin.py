"""``--backend cupy`` end to end on the strict CuPy stand-in (tests/cupy_standin.py), and
the stand-in itself: what it refuses, what it counts, and that it offers nothing the real
CuPy lacks.

The commands run in this process with the stand-in installed as ``cupy`` (the ``standin``
fixture), through the same ``main`` functions ``python -m minunet.<command>`` calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import cupy_standin
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image
from test_cupy_parity import compare
from test_own_data_cli import blobs

from minunet.accel.cuda.emulator import CXX
from minunet.cli import run_cli
from minunet.core.backend import gpu_available, to_numpy
from minunet.core.im2col import conv_output_size
from minunet.infer import evaluate, predict
from minunet.nn import Conv2d, ConvTranspose2d, ReLU
from minunet.train import __main__ as train_cli
from minunet.train import loop

TINY = "--data synthetic --image-size 32 --base-channels 4 --depth 2 --train-size 16"
TINY += " --val-size 8 --batch-size 4 --no-progress --seed 3"


@pytest.fixture(params=["kernels", "generic"])
def standin(request):
    """The stand-in as ``cupy``, with the layers' hand-written kernels (emulated) or not."""
    if request.param == "kernels" and CXX is None:
        pytest.skip("the stand-in runs kernels on the CPU emulator: no C++ compiler on PATH")
    with cupy_standin.install(kernels=request.param == "kernels") as cp:
        yield cp


def run(main, args: str) -> None:
    assert run_cli(main, args.split()) == 0


# --- the commands with --backend cupy ---------------------------------------------------


def test_train_predict_evaluate_with_backend_cupy(standin, tmp_path, capsys):
    """Train on "cupy" and on NumPy from one seed; then predict and evaluate both ways.

    The two runs cannot agree to the bit (the augmentation comes from each backend's own
    generator: see minunet/data/loader.py), so the runs are compared through their
    artefacts, and the checkpoint trained on "cupy" must predict and evaluate alike on
    both backends: same masks, same confusion matrix.
    """
    out = tmp_path / "run"
    run(train_cli.main, f"{TINY} --epochs 2 --backend cupy --out {out}")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) and 0 <= h["val_miou"] <= 1 for h in history)
    assert (out / "best.npz").exists() and (out / "predictions.png").exists()
    assert "backend cupy" in capsys.readouterr().out

    image = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 45, 3), np.uint8)).save(image)
    masks, reports = {}, {}
    for backend in ("cupy", "numpy"):
        where = tmp_path / backend
        ck = f"--checkpoint {out / 'best.npz'} --backend {backend}"
        run(predict.main, f"{ck} {image} --out {where}")
        run(predict.main, f"{ck} {image} --tile 16 --out {where}/tiled")
        run(evaluate.main, f"{ck} --val-size 8 --out {where}")
        masks[backend] = [
            np.asarray(Image.open(where / sub / "odd_mask.png")) for sub in (".", "tiled")
        ]
        reports[backend] = json.loads((where / "metrics.json").read_text())
    for got, want in zip(masks["cupy"], masks["numpy"], strict=True):
        assert got.shape == (37, 45)
        np.testing.assert_array_equal(got, want)
    assert reports["cupy"]["confusion"] == reports["numpy"]["confusion"]


def test_resume_with_backend_cupy(standin, tmp_path):
    """Stopped after 3 steps and resumed: the run finishes and counts every step."""
    out = tmp_path / "run"
    run(train_cli.main, f"{TINY} --epochs 2 --backend cupy --out {out} --max-steps 3")
    run(train_cli.main, f"{TINY} --epochs 2 --backend cupy --out {out} --resume")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [4, 8]


def test_crop_training_of_a_valid_net_with_backend_cupy(standin, tmp_path):
    """The other road through the loop: native-size folder data, random crops, a
    valid-padding net with border weights, validation and prediction tile by tile."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(8):
        image, disc = blobs(rng, 50 + i, 46)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"{i}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(
            tmp_path / "data" / "masks" / f"{i}.png"
        )
    out = tmp_path / "run"
    data = f"--data folder --data-dir {tmp_path / 'data'} --crop 44 --padding valid"
    net = "--border-weights --base-channels 4 --depth 2 --batch-size 4 --no-progress"
    run(train_cli.main, f"{data} {net} --epochs 1 --backend cupy --out {out}")
    record = json.loads((out / "metrics.jsonl").read_text())
    assert np.isfinite(record["train_loss"]) and 0 <= record["val_miou"] <= 1
    new, _ = blobs(rng, 70, 51)
    Image.fromarray(new).save(tmp_path / "new.png")
    masks = []
    for backend in ("cupy", "numpy"):
        ck = f"--checkpoint {out / 'best.npz'} --backend {backend}"
        run(predict.main, f"{ck} {tmp_path / 'new.png'} --out {tmp_path / backend}")
        masks.append(np.asarray(Image.open(tmp_path / backend / "new_mask.png")))
    assert masks[0].shape == (70, 51)
    np.testing.assert_array_equal(masks[0], masks[1])


# --- host transfers per training step ------------------------------------------------------


# Every option that adds work to a step: dropout's masks, the clipped gradient norm, the
# class-weighted loss, the elastic warp and the synchronised BatchNorm statistics.
EVERY_OPTION = dict(dropout=0.3, clip_grad=1.0, class_weights="auto", elastic=2.0, sync_bn=True)


@pytest.mark.parametrize(
    "log_every,options", [(1, {}), (3, {}), (4, EVERY_OPTION)], ids=["log1", "log3", "all"]
)
def test_a_training_step_reads_nothing_back_and_the_loop_one_number_per_log(
    standin, tmp_path, monkeypatch, log_every, options
):
    """The loop's promise (minunet/train/loop.py): nothing crosses the bus inside a step,
    and one number is read back per ``log_every`` steps and at the epoch's last step."""
    per_step = []
    step = loop._train_step

    def counted_step(*args, **kwargs):
        before = (cupy_standin.transfers.d2h, cupy_standin.transfers.h2d)
        loss = step(*args, **kwargs)
        after = (cupy_standin.transfers.d2h, cupy_standin.transfers.h2d)
        per_step.append((after[0] - before[0], after[1] - before[1]))
        return loss

    # Host reads per pass over an epoch: those made by its tally's reads (at the log
    # intervals, inside the pass, and the end-of-pass read the loop makes for the epoch's
    # record), and anything else read inside the pass, which must be nothing.
    tally_reads: dict[int, int] = {}
    read = loop._Tally.read

    def counted_read(self):
        before = cupy_standin.transfers.d2h
        totals = read(self)
        tally_reads[id(self)] = tally_reads.get(id(self), 0) + cupy_standin.transfers.d2h - before
        return totals

    outside_reads = []
    epoch = loop._train_epoch

    def counted_epoch(*args, **kwargs):
        before_all = cupy_standin.transfers.d2h
        before_tally = sum(tally_reads.values())
        done = epoch(*args, **kwargs)
        by_tally = sum(tally_reads.values()) - before_tally
        outside_reads.append(cupy_standin.transfers.d2h - before_all - by_tally)
        return done

    monkeypatch.setattr(loop, "_train_step", counted_step)
    monkeypatch.setattr(loop, "_train_epoch", counted_epoch)
    monkeypatch.setattr(loop._Tally, "read", counted_read)
    # 16 images in batches of 2: 8 steps in each of the 2 epochs.
    cfg = loop.TrainConfig(
        data=loop.DataOptions(image_size=16, train_size=16, val_size=4),
        epochs=2,
        batch_size=2,
        base_channels=4,
        depth=2,
        backend="cupy",
        out=str(tmp_path),
        progress=False,
        log_every=log_every,
        **options,
    )
    loop.train(cfg, log=lambda *_: None)
    assert per_step == [(0, 0)] * 16
    steps_per_epoch = 8
    logged = steps_per_epoch // log_every + (steps_per_epoch % log_every != 0)
    assert outside_reads == [0, 0]
    assert list(tally_reads.values()) == [logged, logged]


# --- the stand-in catches what a GPU would refuse ------------------------------------------


def test_a_planted_host_conversion_in_a_layer_is_caught(standin, monkeypatch):
    """A layer that calls np.asarray on its device input fails on the stand-in, as on a GPU
    (where it would fail too), instead of passing silently on NumPy."""
    layer = Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0)).to(standin)
    x = standin.asarray(np.ones((1, 2, 5, 5), dtype=np.float32))
    layer.forward(x)  # the layer as written runs
    forward = type(layer).forward

    def planted(self, x, *args, **kwargs):
        return forward(self, np.asarray(x), *args, **kwargs)

    monkeypatch.setattr(type(layer), "forward", planted)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        layer.forward(x)


def test_the_stand_in_refuses_what_cupy_refuses(standin):
    cp = standin
    x = cp.asarray(np.arange(6.0).reshape(2, 3))
    host = np.ones(3)
    implicit = "Implicit conversion to a NumPy array is not allowed"
    for convert in (np.asarray, np.array, np.ascontiguousarray, x.__array__):
        with pytest.raises(TypeError, match=implicit):
            convert(x)
    with pytest.raises(TypeError, match="Unsupported type"):
        x + host
    with pytest.raises(TypeError, match="Unsupported type"):
        host * x
    with pytest.raises(TypeError, match="Unsupported type"):
        np.concatenate([x, host[None]])
    with pytest.raises(TypeError, match="Unsupported type"):
        x[0] = host
    with pytest.raises(TypeError, match="float"):
        float(x)
    with pytest.raises(TypeError, match="tolist"):
        x.tolist()
    with pytest.raises(AttributeError, match="ctypes"):
        x.ctypes  # noqa: B018
    with pytest.raises(TypeError, match="no implementation found"):
        np.histogram(x)  # a NumPy function the stand-in (like CuPy here) does not offer
    # What CuPy gives as device arrays, the stand-in does too: never a host scalar.
    for value in (x.sum(), x[0, 1], x.max(axis=None), np.sum(x), x.argmax(), next(iter(x[0]))):
        assert type(value) is cp.ndarray and value.shape == ()
    assert type(x * np.float32(2)) is cp.ndarray  # a NumPy scalar is fine, as in CuPy


def test_the_stand_in_counts_every_transfer(standin):
    cp, t = standin, cupy_standin.transfers
    t.reset()
    x = cp.asarray(np.arange(4.0))
    y = cp.asarray(x)  # already on the device: no copy
    assert (t.h2d, t.d2h) == (1, 0) and y is not None
    cp.asnumpy(x)
    x.get()
    to_numpy(x)
    assert t.d2h == 3
    float(x.sum())
    int(x[0])
    bool(x[1] > 0)
    x[2].item()
    f"{x.mean():.2f}"
    assert t.d2h == 8
    x[np.array([0, 1])]  # a host index is uploaded
    x.set(np.zeros(4))
    assert t.h2d == 3
    x[x > 1]  # a boolean mask: CuPy reads the count back
    assert t.d2h == 9


def test_the_stand_in_records_device_calls_and_sees_one_gpu(standin):
    from minunet.core.backend import get_backend

    assert get_backend("cupy") is standin
    assert "runtime.getDeviceCount" in cupy_standin.calls
    standin.cuda.get_current_stream().synchronize()
    standin.get_default_memory_pool().free_all_blocks()
    assert cupy_standin.calls[-4:] == [
        "get_current_stream",
        "Stream.synchronize",
        "get_default_memory_pool",
        "MemoryPool.free_all_blocks",
    ]


def test_outside_the_block_cupy_is_not_the_stand_in():
    import sys

    with cupy_standin.install():
        assert gpu_available() and np.asarray is not cupy_standin._np_asarray
    assert sys.modules.get("cupy") is not cupy_standin
    assert np.asarray is cupy_standin._np_asarray  # NumPy's own conversions are back
    assert not gpu_available()


# --- the stand-in offers only what the real CuPy has ---------------------------------------


def _real_cupy():
    """The installed cupy package (it imports without a GPU), or a skip saying why not."""
    try:
        import cupy
    except ImportError as exc:
        pytest.skip(f"the real cupy is not importable here ({exc}): pip install cupy-cuda13x")
    if cupy is cupy_standin:
        pytest.fail("the stand-in is still installed as cupy")
    return cupy


def test_the_stand_in_namespace_is_a_subset_of_cupy():
    from types import ModuleType

    cp = _real_cupy()

    def offered(name: str, value: object) -> bool:
        """A public name the stand-in defines or re-exports (not one it imports)."""
        if name.startswith("_") or name in cupy_standin.STANDIN_ONLY:
            return False
        if isinstance(value, ModuleType):
            return value.__name__.startswith("cupy.")
        return name in cupy_standin.TYPES or getattr(value, "__module__", None) in {
            "cupy_standin",
            "cupy",
        }

    own = {n for n, v in vars(cupy_standin).items() if offered(n, v)}
    assert set(cupy_standin.FUNCTIONS) | {"asarray", "asnumpy", "ndarray", "random"} <= own
    assert sorted(n for n in own if not hasattr(cp, n)) == []
    methods = cupy_standin.GENERATOR_METHODS.split()
    assert sorted(n for n in methods if not hasattr(cp.random.Generator, n)) == []
    for sub in ("random", "linalg", "cuda", "cuda.runtime"):
        mine, theirs = cupy_standin, cp
        for part in sub.split("."):
            mine, theirs = getattr(mine, part), getattr(theirs, part)
        public = [n for n in vars(mine) if not n.startswith("_")]
        assert sorted(n for n in public if not hasattr(theirs, n)) == [], sub
    # Array methods: the stand-in refuses every one NumPy has and CuPy lacks.
    numpy_only = {n for n in dir(np.ndarray) if not n.startswith("_")} - set(dir(cp.ndarray))
    assert numpy_only <= set(cupy_standin.NOT_IN_CUPY)
    for name in ("get", "set"):
        assert hasattr(cp.ndarray, name)


def test_the_real_cupy_without_a_driver_is_no_gpu():
    """With the real cupy importable but no GPU (this machine), the backend says so."""
    _real_cupy()
    if Path("/dev/nvidia0").exists():
        pytest.skip("a GPU device node exists here")
    assert not gpu_available()


def test_relu_on_the_stand_in_keeps_its_type(standin):
    """A sanity check of the fixture itself: a layer's output is a stand-in array."""
    out = ReLU().forward(standin.asarray(np.array([-1.0, 2.0])))
    assert type(out) is standin.ndarray
    np.testing.assert_array_equal(to_numpy(out), [0.0, 2.0])


def test_every_cupy_call_the_library_makes_fits_the_real_signatures(tmp_path):
    """Train (every option on), predict and evaluate on the stand-in, recording how each
    cupy function was called; then bind each call to the real CuPy's signature, so a
    keyword that NumPy takes and CuPy does not (``cupy.clip(..., dtype=)``) fails here.
    Ufuncs have no Python signature to bind to (CuPy's match NumPy's)."""
    import inspect

    cp = _real_cupy()
    out = tmp_path / "run"
    options = " --dropout 0.3 --clip-grad 1 --class-weights auto --elastic 2 --sync-bn"
    seen = set()
    for kernels in (True, False):
        with cupy_standin.install(kernels=kernels):
            run(train_cli.main, f"{TINY} --epochs 1 --backend cupy --out {out}{options}")
            ck = f"--checkpoint {out / 'best.npz'} --backend cupy"
            image = tmp_path / "odd.png"
            Image.fromarray(np.zeros((21, 19, 3), np.uint8)).save(image)
            run(predict.main, f"{ck} {image} --tile 16 --out {tmp_path / 'pred'}")
            run(evaluate.main, f"{ck} --val-size 4 --out {tmp_path / 'ev'}")
            seen |= cupy_standin.used
    assert len(seen) > 10, seen  # the recording works
    unfit = []
    for name, positional, keywords in sorted(seen):
        target = cp
        for part in name.split("."):
            target = getattr(target, part)
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # a ufunc
            continue
        try:
            signature.bind(*[None] * positional, **dict.fromkeys(keywords))
        except TypeError as exc:
            unfit.append(f"cupy.{name}({positional} positional, {keywords}): {exc}")
    assert unfit == []


def test_the_stand_in_functions_take_only_what_cupy_takes():
    import inspect

    cp = _real_cupy()
    for name in ("asarray", "array", "asnumpy"):
        mine = inspect.signature(getattr(cupy_standin, name)).parameters
        theirs = inspect.signature(getattr(cp, name)).parameters
        assert set(mine) <= set(theirs), name


def test_validation_reads_the_confusion_matrix_back_once(standin, monkeypatch):
    """The loop's promise: validation counts go into a confusion matrix on the device,
    read back once per epoch, however many batches (here 3, the last one short)."""
    from minunet.data.sources import DataOptions, load_splits
    from minunet.model import UNet

    _, val = load_splits(DataOptions(image_size=16, train_size=4, val_size=7))
    model = UNet(3, 3, base_channels=4, depth=2, seed=0).to(standin)
    cfg = loop.TrainConfig(batch_size=3)
    seen = []  # the matrix the metrics are computed from
    metrics_from_confusion = loop.metrics_from_confusion
    monkeypatch.setattr(
        loop,
        "metrics_from_confusion",
        lambda conf, *a, **k: seen.append(conf) or metrics_from_confusion(conf, *a, **k),
    )
    cupy_standin.transfers.reset()
    metrics = loop.validate(
        model, val, standin, batch_size=cfg.batch_size, mean=0.5, std=0.25, ignore_index=255
    )
    assert cupy_standin.transfers.d2h == 1
    (conf,) = seen
    assert type(conf) is np.ndarray and conf.sum() == 7 * 16 * 16 - (val.masks == 255).sum()
    assert 0 <= metrics["miou"] <= 1


def test_the_confusion_matrix_of_a_batch_reads_nothing_back(standin):
    """On CuPy a boolean mask or bincount would read a number back per batch; the counts
    equal NumPy's, the ignore label and labels outside 0..K-1 left out."""
    from minunet.nn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (2, 5, 7))
    target = rng.choice([0, 1, 2, 3, 255, -100], (2, 5, 7))
    want = np.zeros((3, 3), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if 0 <= t < 3:
            want[t, p] += 1
    for ignore in (None, 255, 1):
        cupy_standin.transfers.reset()
        got = confusion_matrix(standin.asarray(pred), standin.asarray(target), 3, ignore)
        assert cupy_standin.transfers.d2h == 0
        expected = want.copy()
        if ignore == 1:
            expected[1] = 0
        np.testing.assert_array_equal(to_numpy(got), expected)
        np.testing.assert_array_equal(confusion_matrix(pred, target, 3, ignore), expected)


@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    out=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    k=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    kernels=st.booleans(),
)
def test_convolutions_on_the_stand_in_equal_numpy_for_drawn_geometries(
    n, c, out, h, w, k, stride, padding, dilation, kernels
):
    """Conv2d and ConvTranspose2d, forward and every gradient in float64, on "cupy"
    (kernels emulated or not) against NumPy: test_cupy_parity's comparison, over
    geometries drawn at random instead of a fixed few."""
    assume(conv_output_size(h, k, stride, padding, dilation) >= 1)
    assume(conv_output_size(w, k, stride, padding, dilation) >= 1)
    x = np.random.default_rng(n * h + w).standard_normal((n, c, h, w))
    geometry = (c, out, k, stride, padding)
    f64 = dict(dilation=dilation, dtype=np.float64, rng=np.random.default_rng(1))
    makers = [lambda: Conv2d(*geometry, **f64)]
    if min(ConvTranspose2d(*geometry, **f64).output_shape(h, w)) >= 1:
        makers.append(lambda: ConvTranspose2d(*geometry, **f64))
    with cupy_standin.install(kernels=kernels and CXX is not None) as cp:
        for make in makers:
            compare(cp, make, [x], np.float64, fast=False)  # the reference's array code
            compare(cp, make, [x], np.float64, fast=True)  # the accelerated class
