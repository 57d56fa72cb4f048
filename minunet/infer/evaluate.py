"""python -m minunet.evaluate: metrics of a checkpoint on a data split.

Prints pixel accuracy, per-class IoU and Dice and mean IoU, writes the confusion matrix
as a plot (and its counts as JSON) into --out. For Oxford-IIIT Pets the split is the
official test list; for the synthetic data it is the fixed validation split; for a
folder, the validation split.

The metrics are dataset-level and counted at each image's native size: ONE confusion
matrix over every pixel of every image (not a mean of per-image scores), the way
``benchmarks/pets_score.py`` counts them. The network runs at the scale it learned
(``minunet.infer.scale``; ``--scale`` overrides it): a resized model on each image resized
to its training size, the logits resized back to the native size before the argmax.
``--image-size N`` instead scores the data resized to N x N (masks by nearest neighbour),
the network run on it as it is. Synthetic and pets-tfds data exist only at their
training size, which is their native size here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from minunet.cli import (
    EXIT_CODES,
    Parser,
    check_input_dir,
    check_input_file,
    check_output_dir,
    check_size,
    parse_args,
)
from minunet.core.backend import BACKENDS, get_backend
from minunet.data.sources import SOURCES, DataOptions, load_splits
from minunet.errors import MinunetError
from minunet.infer.predict import SCALE_HELP
from minunet.infer.scale import (
    NATIVE,
    InputScale,
    predict_classes_at_scale,
    resolve_scale,
    scale_flag,
)
from minunet.io.atomic import atomic_write
from minunet.io.checkpoint import load_model
from minunet.nn.metrics import confusion_matrix, format_metrics, metrics_from_confusion
from minunet.train.plots import plot_confusion


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m minunet.evaluate",
        description="Evaluate a minunet checkpoint: metrics table and confusion matrix.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", choices=SOURCES, help="data source (default: the checkpoint's)")
    p.add_argument("--data-dir")
    p.add_argument(
        "--image-size",
        type=int,
        help="score the data resized to this size, the net run on it as it is (default: "
        "score at native size, the net at its training scale)",
    )
    p.add_argument(
        "--native", action="store_true", help="run the net at native resolution: --scale native"
    )
    p.add_argument("--val-fraction", type=float, help="default: the training's")
    p.add_argument("--val-size", type=int, default=64, help="synthetic: images")
    p.add_argument("--seed", type=int, default=None, help="default: the training seed")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--out", default="evaluation", help="folder for confusion.png/.json")
    p.add_argument("--backend", choices=BACKENDS, default="numpy")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--scale", type=scale_flag, default="auto", help=SCALE_HELP)
    return p


def check_paths(args: argparse.Namespace) -> None:
    """--checkpoint is a readable file and --out writable (--data-dir: see main)."""
    check_input_file("--checkpoint", args.checkpoint)
    check_output_dir("--out", args.out)


def evaluation_plan(args: argparse.Namespace, meta: dict) -> tuple[int | None, InputScale]:
    """(the size the data is loaded at, None for native; the scale the net runs at)."""
    meta_size = meta.get("data", {}).get("image_size") or 128
    if args.image_size:  # score the resized data, the net run on it as it is
        if args.scale != "auto" or args.native:
            raise MinunetError(
                "--image-size scores data resized to that size with the network run on it "
                "as it is; drop --scale/--native, or drop --image-size to score at native size"
            )
        return args.image_size, InputScale(NATIVE)
    scale = resolve_scale(NATIVE if args.native else args.scale, meta)
    source = args.data or meta.get("data", {}).get("source", "synthetic")
    if source in ("synthetic", "pets-tfds"):  # no other size to load them at
        return meta_size, scale
    return None, scale


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv, check_paths)
    xp = get_backend(args.backend)
    ck, model = load_model(args.checkpoint, xp)
    if args.image_size is not None and not args.native:  # the checkpoint's network decides
        check_size("--image-size", args.image_size, model.depth, model.padding)
    meta_data = ck.meta.get("data", {})
    train_cfg = ck.meta.get("config", {}).get("data", {})
    source = args.data or meta_data.get("source", "synthetic")
    if args.data_dir is not None:  # the data must be there, or pets downloads into it
        must_exist = source in ("folder", "isbi2012")
        (check_input_dir if must_exist else check_output_dir)("--data-dir", args.data_dir)
    size, scale = evaluation_plan(args, ck.meta)
    opts = DataOptions(
        data=source,
        data_dir=args.data_dir or train_cfg.get("data_dir"),
        image_size=size,
        seed=args.seed if args.seed is not None else train_cfg.get("seed", 0),
        val_fraction=(
            train_cfg.get("val_fraction", 0.1) if args.val_fraction is None else args.val_fraction
        ),
        val_size=args.val_size,
        mask_suffix=train_cfg.get("mask_suffix", ""),
        ignore_index=train_cfg.get("ignore_index"),
        limit=args.limit,
    )
    data, _ = load_splits(opts, split="test")
    if args.limit:
        data = data.subset(list(range(min(args.limit, len(data)))))
    if data.num_classes != model.num_classes:
        raise MinunetError(
            f"the data has {data.num_classes} classes but the checkpoint's model "
            f"predicts {model.num_classes}"
        )
    mean, std = ck.normalization
    preds = predict_classes_at_scale(model, data.images, xp, mean, std, scale, args.batch_size)
    k = model.num_classes
    ignore = data.ignore_index
    # The class maps are already on the host (one read each): count them there, rather
    # than sending every map and mask back to the device for a matrix read once more.
    conf = np.zeros((k, k), dtype=np.int64)
    for pred, mask in zip(preds, data.masks, strict=True):
        conf += confusion_matrix(np.asarray(pred), np.asarray(mask), k, ignore)
    names = list(data.class_names)
    m = metrics_from_confusion(conf, names)
    where = "native size" if size is None else f"{size}x{size}"
    print(f"{source}: {len(data)} images, scored at {where}; the network saw {scale.describe()}")
    print(format_metrics(m))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(conf, names, out / "confusion.png")
    report = {
        "metrics": m,
        "confusion": conf.tolist(),
        "class_names": names,
        "checkpoint": str(args.checkpoint),
        "images": len(data),
        "scored_at": "native" if size is None else size,
        "scale": scale.record(),
    }
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"wrote {out / 'confusion.png'} and {out / 'metrics.json'}")
    return 0
