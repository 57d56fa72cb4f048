"""python -m minunet.evaluate: metrics of a checkpoint on a data split.

Prints pixel accuracy, per-class IoU and Dice and mean IoU, writes the confusion matrix
as a plot (and its counts as JSON) into --out. For Oxford-IIIT Pets the split is the
official test list; for the synthetic data it is the fixed validation split; for a
folder, the validation split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minunet.cli import (
    EXIT_CODES,
    Parser,
    check_input_dir,
    check_input_file,
    check_output_dir,
    check_size,
    parse_args,
)
from minunet.core.backend import BACKENDS, get_backend, to_device
from minunet.data.sources import SOURCES, DataOptions, load_splits
from minunet.errors import MinunetError
from minunet.infer.inference import predict_classes
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
        help="resize to this size (default: the training size); 0 is not allowed, use --native",
    )
    p.add_argument(
        "--native", action="store_true", help="folder/isbi2012: evaluate at native resolution"
    )
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-size", type=int, default=64, help="synthetic: images")
    p.add_argument("--seed", type=int, default=None, help="default: the training seed")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--out", default="evaluation", help="folder for confusion.png/.json")
    p.add_argument("--backend", choices=BACKENDS, default="numpy")
    p.add_argument("--batch-size", type=int, default=8)
    return p


def check_paths(args: argparse.Namespace) -> None:
    """--checkpoint is a readable file and --out writable (--data-dir: see main)."""
    check_input_file("--checkpoint", args.checkpoint)
    check_output_dir("--out", args.out)


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
    size = None if args.native else (args.image_size or meta_data.get("image_size") or 128)
    opts = DataOptions(
        data=source,
        data_dir=args.data_dir or train_cfg.get("data_dir"),
        image_size=size,
        seed=args.seed if args.seed is not None else train_cfg.get("seed", 0),
        val_fraction=args.val_fraction,
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
    preds = predict_classes(model, data.images, xp, mean, std, args.batch_size)
    k = model.num_classes
    ignore = data.ignore_index
    conf = xp.zeros((k, k), dtype=xp.int64)
    for pred, mask in zip(preds, data.masks, strict=True):
        conf += confusion_matrix(to_device(pred, xp), to_device(mask, xp), k, ignore)
    names = list(data.class_names)
    m = metrics_from_confusion(conf, names)
    print(f"{source}: {len(data)} images")
    print(format_metrics(m))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from minunet.core.backend import to_numpy

    c = to_numpy(conf)
    plot_confusion(c, names, out / "confusion.png")
    report = {
        "metrics": m,
        "confusion": c.tolist(),
        "class_names": names,
        "checkpoint": str(args.checkpoint),
        "images": len(data),
    }
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(report, indent=2).encode()))
    print(f"wrote {out / 'confusion.png'} and {out / 'metrics.json'}")
    return 0
