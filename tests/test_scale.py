"""Prediction at the scale the model learned, evaluation at native size, the collapse
warning and the learning curves (issue 16)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minunet.data.sources import DataOptions, load_native_val
from minunet.infer import evaluate as evaluate_cli
from minunet.infer import predict as predict_cli
from minunet.infer.scale import (
    InputScale,
    predict_logits_at_scale,
    resolve_scale,
    scale_flag,
    scale_from_meta,
)
from minunet.io.checkpoint import load_checkpoint, load_model, save_checkpoint
from minunet.nn.metrics import confusion_matrix, metrics_from_confusion
from minunet.train import TrainConfig, train
from minunet.train.loop import collapse_warning

S = 32  # the training side; the folder's images are 2S x 2S


def write_folder(root: Path, count: int, side: int, seed: int, skew: bool = False) -> Path:
    """ROOT/images + ROOT/masks: gray images with a bright disc (class 1) and a dark
    square (class 2) on class 0. ``skew``: tiny objects, 99% of the pixels class 0."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = np.mgrid[:side, :side]
    for i in range(count):
        image = rng.integers(60, 120, (side, side)).astype(np.uint8)
        mask = np.zeros((side, side), np.uint8)
        r = 2 if skew else side // 6
        cy, cx = rng.integers(r + 1, side - r - 1, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image[disc] += 100
        mask[disc] = 1
        y0, x0 = rng.integers(0, side - r - 1, 2)
        square = (slice(y0, y0 + r), slice(x0, x0 + r))
        image[square] //= 3
        mask[square] = 2
        Image.fromarray(image).save(root / "images" / f"s{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i:02d}.png")
    return root


def folder_config(root: Path, out: Path, **kw) -> TrainConfig:
    data = DataOptions(data="folder", data_dir=str(root), image_size=S, val_fraction=0.25)
    cfg = TrainConfig(
        data=data,
        epochs=1,
        batch_size=4,
        base_channels=4,
        depth=2,
        out=str(out),
        progress=False,
        lr=3e-3,
    )
    return replace(cfg, **kw)


@pytest.fixture(scope="module")
def resized_run(tmp_path_factory):
    """One epoch at S on a folder of 2S x 2S images; (the run folder, its options, the
    epoch's metrics.jsonl record)."""
    base = tmp_path_factory.mktemp("scale")
    root = write_folder(base / "data", 12, 2 * S, seed=0)
    cfg = folder_config(root, base / "run")
    train(cfg, log=lambda *_: None)
    record = json.loads((base / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    return base / "run", cfg, record


def test_the_checkpoint_records_the_scale_and_reads_it_back(resized_run):
    run, _, _ = resized_run
    ck = load_checkpoint(run / "best.npz")
    assert ck.meta["data"]["input"] == {"mode": "resized", "size": S}
    assert scale_from_meta(ck.meta) == InputScale("resized", size=S)
    crop_meta = {"data": {"input": {"mode": "native", "crop": 48}}}
    assert scale_from_meta(crop_meta) == InputScale("native", crop=48)


def test_an_old_checkpoint_without_the_record_gets_the_documented_default(resized_run, tmp_path):
    run, _, _ = resized_run
    ck = load_checkpoint(run / "best.npz")
    old = json.loads(json.dumps(ck.meta))
    del old["data"]["input"]
    assert scale_from_meta(old) == InputScale("resized", size=S)  # config has no crop
    cropped = {**old, "config": {**old["config"], "crop": 40}}
    assert scale_from_meta(cropped) == InputScale("native", crop=40)
    assert scale_from_meta({"data": {"image_size": None}}) == InputScale("native")
    # and it still loads and predicts, at the default scale
    save_checkpoint(tmp_path / "old.npz", ck.model_state, old)
    image = tmp_path / "im.png"
    Image.fromarray(np.full((2 * S, 2 * S), 90, np.uint8)).save(image)
    assert (
        predict_cli.main(
            ["--checkpoint", str(tmp_path / "old.npz"), str(image), "--out", str(tmp_path / "p")]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "p" / "im_mask.png")).shape == (2 * S, 2 * S)


def test_the_scale_flag(resized_run):
    run, _, _ = resized_run
    meta = load_checkpoint(run / "best.npz").meta
    assert resolve_scale("auto", meta) == InputScale("resized", size=S)
    assert resolve_scale("native", meta) == InputScale("native")
    assert resolve_scale(48, meta) == InputScale("resized", size=48)
    assert scale_flag("48") == 48 and scale_flag("native") == "native"
    for bad in ("0", "-3", "big"):
        with pytest.raises(Exception, match="auto, native or a positive"):
            scale_flag(bad)


def held_out_score(run: Path, cfg: TrainConfig, tmp_path: Path, extra: list[str]) -> float:
    """mIoU of ``python -m minunet.predict`` on the held-out images, counted from the
    mask PNGs it writes against the native masks."""
    val = load_native_val(cfg.data)
    paths = [Path(cfg.data.data_dir) / "images" / f"{name}.png" for name in val.names]
    out = tmp_path / "pred"
    args = ["--checkpoint", str(run / "best.npz"), *map(str, paths), "--out", str(out), *extra]
    assert predict_cli.main(args) == 0
    conf = np.zeros((3, 3), np.int64)
    for name, mask in zip(val.names, val.masks, strict=True):
        pred = np.asarray(Image.open(out / f"{name}_mask.png"))  # values 0, 1, 2 = classes
        conf += confusion_matrix(pred, mask, 3, None)
    return metrics_from_confusion(conf, list(val.class_names))["miou"]


def test_predict_scores_what_the_training_validation_reported(resized_run, tmp_path):
    """Trained at S on 2S x 2S images: predict (the net on the image resized to S, the
    logits resized back to 2S) scores exactly what the training loop's validation did."""
    run, cfg, record = resized_run
    assert held_out_score(run, cfg, tmp_path, []) == record["val_miou"]
    # The net run at native size (what predict used to do) is another model's score.
    assert held_out_score(run, cfg, tmp_path / "n", ["--scale", "native"]) != record["val_miou"]


def test_evaluate_at_native_size_matches_a_brute_force_count(resized_run, tmp_path):
    run, cfg, record = resized_run
    assert evaluate_cli.main(["--checkpoint", str(run / "best.npz"), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["scored_at"] == "native" and report["metrics"]["miou"] == record["val_miou"]
    # Brute force: the pixels counted one class at a time over all images together.
    ck, model = load_model(run / "best.npz")
    val = load_native_val(cfg.data)
    scale = scale_from_meta(ck.meta)
    preds = [
        predict_logits_at_scale(model, im, np, *ck.normalization, scale).argmax(0)
        for im in val.images
    ]
    truth = np.concatenate([m.ravel() for m in val.masks])
    guess = np.concatenate([p.ravel() for p in preds])
    assert truth.size == len(val.images) * (2 * S) ** 2  # native size, every pixel
    m = report["metrics"]
    ious = []
    for c, name in enumerate(val.class_names):
        tp = int(np.sum((guess == c) & (truth == c)))
        fp = int(np.sum((guess == c) & (truth != c)))
        fn = int(np.sum((guess != c) & (truth == c)))
        iou = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
        assert m["iou"][name] == pytest.approx(iou, rel=1e-12)
        assert m["dice"][name] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)
        ious.append(iou)
    assert m["pixel_accuracy"] == pytest.approx(np.mean(guess == truth), rel=1e-12)
    assert m["miou"] == pytest.approx(np.nanmean(ious), rel=1e-12)


def test_val_loss_is_logged_and_curves_are_drawn(resized_run):
    run, _, record = resized_run
    assert record["val_loss"] > 0 and np.isfinite(record["val_loss"])
    assert (run / "curves.png").stat().st_size > 0


def test_a_collapsed_run_says_so_once(tmp_path):
    """Tiny objects (99% background) and a huge learning rate: the net answers background
    everywhere (as it does at lr 1.0 with this seed); at lr 3e-2 it does not, and says
    nothing."""
    root = write_folder(tmp_path / "data", 8, S, seed=1, skew=True)
    logs: list[str] = []
    train(folder_config(root, tmp_path / "run", epochs=2, lr=1.0), log=logs.append)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(r["val_collapsed"] for r in records)
    said = [line for line in logs if "the predicted masks are all" in line]
    assert len(said) == 1 and "--class-weights" in said[0] and "--lr" in said[0]
    assert "--border-weights" in said[0]
    assert [("warning" in r) for r in records] == [True, False]  # once in metrics.jsonl
    logs.clear()
    train(folder_config(root, tmp_path / "calm", epochs=2, lr=3e-2), log=logs.append)
    records = [json.loads(line) for line in (tmp_path / "calm" / "metrics.jsonl").open()]
    assert not any(r["val_collapsed"] for r in records)
    assert not any("the predicted masks are all" in line for line in logs)


def test_the_collapse_rule():
    base = {"classes_present": ["a", "b", "c"]}
    assert collapse_warning({**base, "classes_predicted": ["a"]}).startswith(
        "the predicted masks are all a:"
    )
    assert collapse_warning({**base, "classes_predicted": ["a", "c"]}) is not None
    assert collapse_warning({**base, "classes_predicted": ["a", "b", "c"]}) is None
    two = {"classes_present": ["a", "b"], "classes_predicted": ["a", "b"]}
    assert collapse_warning(two) is None  # a binary task predicting both classes
    assert collapse_warning({**two, "classes_predicted": ["b"]}) is not None


def test_curves_show_both_losses_per_class_iou_and_whole_epochs(monkeypatch, tmp_path):
    from minunet.train import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "val_miou": 0.1 * e,
            "val_iou": {"pet": 0.1 * e, "background": 0.2 * e, "outline": 0.05 * e},
        }
        for e in (1, 2, 3)
    ]
    plots.plot_curves(history, tmp_path / "curves.png")
    loss_ax, iou_ax = figures[0].axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["training", "validation"]
    np.testing.assert_array_equal(
        loss_ax.get_lines()[1].get_ydata(), [h["val_loss"] for h in history]
    )
    labels = [line.get_label() for line in iou_ax.get_lines()]
    assert labels == ["mean", "pet", "background", "outline"]
    figures[0].canvas.draw()
    ticks = [t for t in loss_ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_the_native_validation_split_is_the_resized_one_at_native_size(tmp_path):
    from test_pets_score import write_pets_layout

    from minunet.data.imageio import resize_mask
    from minunet.data.sources import load_splits

    sizes = {"Abyssinian_1": (21, 30), "Bengal_7": (16, 24), "beagle_3": (27, 13), "pug_2": (9, 11)}
    write_pets_layout(tmp_path / "pets", "trainval", sizes, seed=4)
    for source, root in (("pets", tmp_path / "pets"), ("folder", None)):
        if root is None:
            root = write_folder(tmp_path / "folder", 6, 40, seed=2)
        opts = DataOptions(data=source, data_dir=str(root), image_size=8, val_fraction=0.5)
        opts = replace(opts, download=False, progress=False)
        _, val = load_splits(opts)
        native = load_native_val(opts)
        assert native.names == val.names and len(val) >= 2
        for name, small, mask in zip(val.names, val.masks, native.masks, strict=True):
            assert mask.shape == sizes.get(name, (40, 40))
            np.testing.assert_array_equal(resize_mask(mask, (8, 8)), small)
    assert load_native_val(DataOptions(data="synthetic", image_size=8)) is None
