"""benchmarks/pets_score.py, the independent Pets scorer: its confusion matrix against a
brute-force count, its upsampling against PyTorch, and the whole command on three tiny
generated images in the official layout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from minunet.data.loader import normalize
from minunet.io.checkpoint import save_checkpoint
from minunet.model import UNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import pets_score  # noqa: E402

CLASS_NAMES = ["pet", "background", "outline"]
TEST_SIZES = {"Abyssinian_1": (21, 30), "Bengal_7": (16, 24), "beagle_3": (27, 13)}  # (H, W)
MODEL = dict(in_channels=3, num_classes=3, base_channels=2, depth=2)
TRAIN_SIZE = 8  # the "training" image size saved in the checkpoint


def write_pets_layout(root: Path, split: str, sizes: dict[str, tuple[int, int]], seed: int) -> None:
    """Photos (smooth colour blocks, JPEG) and trimaps (values 1, 2, 3: a pet box ringed by
    the outline on background) in the official layout, listed in ``split``.txt. A missing
    list of the other split gets the same names, so the folder has both, as the release does."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    for name, (h, w) in sizes.items():
        blocks = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
        rgb = np.asarray(Image.fromarray(blocks).resize((w, h), Image.Resampling.BILINEAR))
        Image.fromarray(rgb).save(root / "images" / f"{name}.jpg", quality=95)
        trimap = np.full((h, w), 2, np.uint8)
        trimap[h // 5 : h - h // 5, w // 5 : w - w // 5] = 3
        trimap[h // 5 + 2 : h - h // 5 - 2, w // 5 + 2 : w - w // 5 - 2] = 1
        Image.fromarray(trimap, mode="L").save(root / "annotations" / "trimaps" / f"{name}.png")
    lines = "".join(f"{name} {i + 1} 1 {i + 1}\n" for i, name in enumerate(sizes))
    (root / "annotations" / f"{split}.txt").write_text(lines)
    for other in ("trainval", "test"):
        other_list = root / "annotations" / f"{other}.txt"
        if not other_list.exists():
            other_list.write_text(lines)


@pytest.fixture
def pets_root(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    write_pets_layout(root, "test", TEST_SIZES, seed=3)
    return root


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """An untrained tiny U-Net; BatchNorm's running statistics made non-trivial, so eval
    mode (running statistics, not the batch's) is what the scores depend on."""
    model = UNet(**MODEL, seed=1)
    rng = np.random.default_rng(2)
    state = model.state_dict()
    for key in state:
        if key.endswith("running_mean"):
            state[key] = rng.normal(0, 0.3, state[key].shape).astype(np.float32)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, state[key].shape).astype(np.float32)
    meta = {
        "model": model.config,
        "data": {
            "class_names": CLASS_NAMES,
            "image_size": TRAIN_SIZE,
            "normalization": {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
        },
    }
    path = tmp_path / "tiny.npz"
    save_checkpoint(path, state, meta)
    return path


def brute_force_confusion(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    conf = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(truth.ravel().tolist(), pred.ravel().tolist(), strict=True):
        conf[t, p] += 1
    return conf


def trimap_classes(root: Path, name: str) -> np.ndarray:
    """Read directly with Pillow, not through the scorer: value - 1."""
    return np.asarray(Image.open(root / "annotations" / "trimaps" / f"{name}.png")).astype(int) - 1


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    pets_score.main(argv)
    return json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- pieces


@given(
    k=st.integers(2, 5),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    seed=st.integers(0, 2**31),
)
def test_confusion_matches_a_brute_force_count(k, h, w, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, (h, w))
    pred = rng.integers(0, k, (h, w))
    np.testing.assert_array_equal(
        pets_score.confusion(truth, pred, k), brute_force_confusion(truth, pred, k)
    )


def test_scores_from_a_confusion_matrix_by_hand():
    # rows: truth, columns: prediction; class 2 never occurs and is never predicted.
    conf = np.array([[6, 2, 0], [1, 3, 0], [0, 0, 0]])
    s = pets_score.scores(conf, CLASS_NAMES)
    # pet: tp 6, fp 1, fn 2; background: tp 3, fp 2, fn 1
    assert s["iou"] == {"pet": 6 / 9, "background": 3 / 6, "outline": None}
    assert s["dice"] == {"pet": 12 / 15, "background": 6 / 9, "outline": None}
    assert s["miou"] == pytest.approx((6 / 9 + 3 / 6) / 2, rel=1e-15)
    assert s["pixel_accuracy"] == pytest.approx(9 / 12, rel=1e-15)


@given(
    k=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    out_h=st.integers(1, 40),
    out_w=st.integers(1, 40),
    seed=st.integers(0, 2**31),
)
def test_upsampling_matches_torch_interpolate(k, h, w, out_h, out_w, seed):
    torch = pytest.importorskip("torch", reason="PyTorch (the reference) is not installed")
    logits = np.random.default_rng(seed).standard_normal((k, h, w))  # float64
    ours = pets_score.upsample_bilinear(logits, (out_h, out_w))
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(logits)[None], size=(out_h, out_w), mode="bilinear", align_corners=False
    )[0].numpy()
    assert ours.dtype == np.float64 and ours.shape == (k, out_h, out_w)
    # float64, each output a convex combination of 4 inputs of size ~1 computed in a
    # different order: rounding differences of a few ulp (1e-16), far below 1e-12.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ the command


def test_resized_mode_counts_every_native_pixel_once(pets_root, checkpoint, capsys):
    report = run_json(["--checkpoint", str(checkpoint), "--data-dir", str(pets_root)], capsys)
    assert report["images"] == 3 and report["size"] == TRAIN_SIZE  # from the checkpoint
    _, model = pets_score.load_model(checkpoint)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    expected = np.zeros((3, 3), dtype=np.int64)
    for name, (h, w) in TEST_SIZES.items():
        image = np.asarray(Image.open(pets_root / "images" / f"{name}.jpg").convert("RGB"))
        pred = pets_score.predict_resized(model, image, TRAIN_SIZE, mean, std)
        assert pred.shape == (h, w)
        expected += brute_force_confusion(trimap_classes(pets_root, name), pred, 3)
    np.testing.assert_array_equal(report["confusion"], expected)
    assert np.sum(report["confusion"]) == sum(h * w for h, w in TEST_SIZES.values())
    assert report["miou"] == pets_score.scores(expected, CLASS_NAMES)["miou"]


def test_resized_logits_match_the_same_net_in_torch(pets_root, checkpoint):
    """The whole resized pipeline against PyTorch: the same weights in TorchUNet, the same
    resized and normalised input, F.interpolate for the upsampling."""
    torch = pytest.importorskip("torch", reason="PyTorch (the reference) is not installed")
    from minunet.io.interop.torch_unet import TorchUNet, to_torch_state_dict

    ckpt, model = pets_score.load_model(checkpoint)
    net = TorchUNet(**ckpt.model_config)
    net.load_state_dict(to_torch_state_dict(ckpt.model_state))
    net.eval()
    mean, std = ckpt.normalization
    for name in TEST_SIZES:
        image = np.asarray(Image.open(pets_root / "images" / f"{name}.jpg").convert("RGB"))
        ours = pets_score.resized_logits(model, image, TRAIN_SIZE, mean, std)
        small = np.asarray(
            Image.fromarray(image).resize((TRAIN_SIZE, TRAIN_SIZE), Image.Resampling.BILINEAR)
        )
        with torch.no_grad():
            logits = net(torch.from_numpy(normalize(small[None], mean, std)))
            theirs = torch.nn.functional.interpolate(
                logits, size=image.shape[:2], mode="bilinear", align_corners=False
            )[0].numpy()
        # float32 on both sides through ~20 layers of different summation orders: the
        # tolerance of the float32 CuPy/NumPy parity tests (tests/test_cupy_parity.py).
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_native_mode_pads_and_crops_back(pets_root, checkpoint, capsys):
    report = run_json(
        ["--checkpoint", str(checkpoint), "--data-dir", str(pets_root), "--native"], capsys
    )
    assert report["mode"] == "native" and report["images"] == 3
    assert np.sum(report["confusion"]) == sum(h * w for h, w in TEST_SIZES.values())
    ckpt, model = pets_score.load_model(checkpoint)
    mean, std = ckpt.normalization
    image = np.asarray(Image.open(pets_root / "images" / "Bengal_7.jpg").convert("RGB"))
    assert image.shape[:2] == (16, 24)  # multiples of 2**depth = 4: no padding needed
    x = normalize(image[None], mean, std)
    direct = np.asarray(model.forward(x, train=False)).argmax(axis=1)[0]
    np.testing.assert_array_equal(pets_score.predict_native(model, image, mean, std), direct)
    odd = image[:15, :21]  # padded to 16 x 24 inside, cropped back to 15 x 21
    assert pets_score.predict_native(model, odd, mean, std).shape == (15, 21)


def test_limit_takes_the_first_names_of_the_list(pets_root, checkpoint, capsys):
    argv = ["--checkpoint", str(checkpoint), "--data-dir", str(pets_root), "--limit", "2"]
    report = run_json(argv, capsys)
    h0, w0 = TEST_SIZES["Abyssinian_1"]
    h1, w1 = TEST_SIZES["Bengal_7"]
    assert report["images"] == 2 and np.sum(report["confusion"]) == h0 * w0 + h1 * w1


def test_data_folder_from_the_environment(pets_root, checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("MINUNET_PETS_SAMPLE", str(pets_root))
    assert run_json(["--checkpoint", str(checkpoint)], capsys)["images"] == 3


@pytest.mark.parametrize(
    "argv, env, message",
    [
        ([], None, "pass --data-dir DIR or set MINUNET_PETS_SAMPLE"),
        (["--data-dir", "{tmp}/nowhere"], None, "not an Oxford-IIIT Pets folder"),
        ([], "{tmp}/nowhere", "not an Oxford-IIIT Pets folder"),
        (["--data-dir", "{root}", "--size", "10"], None, "does not fit"),
        (["--data-dir", "{root}", "--limit", "0"], None, "--limit must be at least 1"),
    ],
)
def test_bad_input_is_one_line(argv, env, message, pets_root, checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("MINUNET_PETS_SAMPLE", raising=False)
    if env:
        monkeypatch.setenv("MINUNET_PETS_SAMPLE", env.format(tmp=tmp_path))
    argv = [a.format(tmp=tmp_path, root=pets_root) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        pets_score.main(["--checkpoint", str(checkpoint), *argv])
    text = str(exit_info.value)
    assert message in text and "\n" not in text


def test_a_checkpoint_without_its_image_size_needs_size(pets_root, tmp_path, capsys):
    model = UNet(**MODEL)
    path = tmp_path / "bare.npz"
    save_checkpoint(path, model.state_dict(), {"model": model.config})
    with pytest.raises(SystemExit, match="pass --size S"):
        pets_score.main(["--checkpoint", str(path), "--data-dir", str(pets_root)])
    argv = ["--checkpoint", str(path), "--data-dir", str(pets_root), "--size", "12"]
    report = run_json(argv, capsys)
    assert report["size"] == 12 and list(report["iou"]) == ["class 0", "class 1", "class 2"]


@pytest.mark.parametrize("native", [False, True])
def test_evaluate_and_the_independent_scorer_count_the_same_pixels(
    native, pets_root, checkpoint, tmp_path, capsys
):
    """``python -m minunet.evaluate`` at its defaults (the net at the checkpoint's training
    size, logits resized back, ONE confusion matrix at native size) and with --scale native
    give this scorer's confusion matrix exactly. One image per batch, as the scorer runs
    them: a batched GEMM may sum in another order and flip an exact near-tie."""
    from minunet.infer import evaluate

    scorer = run_json(
        ["--checkpoint", str(checkpoint), "--data-dir", str(pets_root)]
        + (["--native"] if native else []),
        capsys,
    )
    argv = ["--checkpoint", str(checkpoint), "--data", "pets", "--data-dir", str(pets_root)]
    argv += ["--batch-size", "1", "--out", str(tmp_path / "ev")]
    assert evaluate.main(argv + (["--scale", "native"] if native else [])) == 0
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert report["images"] == len(TEST_SIZES) and report["scored_at"] == "native"
    assert report["confusion"] == scorer["confusion"]
    assert report["metrics"]["miou"] == pytest.approx(scorer["miou"], rel=1e-12)
