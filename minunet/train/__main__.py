"""python -m minunet.train: train a U-Net (see --help)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from minunet.cli import (
    EXIT_CODES,
    Parser,
    check_input_dir,
    check_output_dir,
    check_size,
    mpi_world_size,
    parse_args,
    run_cli,
)
from minunet.core.backend import BACKENDS
from minunet.data.sources import SOURCES, DataOptions
from minunet.errors import UsageError
from minunet.nn.optim import OPTIMIZERS, SCHEDULES
from minunet.train.loop import TrainConfig, train

EXAMPLES = """examples:
  python -m minunet.train --data synthetic --epochs 8 --image-size 64 --base-channels 16
  python -m minunet.train --data pets --data-dir ~/data/pets --backend cupy --epochs 30
  python -m minunet.train --data folder --data-dir my_data --image-size 256
  python -m minunet.train --out runs/unet --resume
  mpiexec -n 4 python -m minunet.train --backend cupy --batch-size 64 --sync-bn

"""


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m minunet.train",
        description="Train a U-Net for semantic segmentation with hand-written backprop.",
        epilog=EXAMPLES + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        choices=SOURCES,
        default="synthetic",
        help="data source (default: synthetic, offline)",
    )
    g.add_argument(
        "--data-dir",
        help="dataset folder (pets: archives or extracted; folder/isbi2012: the data root)",
    )
    g.add_argument(
        "--image-size",
        type=int,
        default=128,
        help="resize images to this square size (default 128)",
    )
    g.add_argument(
        "--crop",
        type=int,
        help="folder/isbi2012: train on random "
        "N x N crops at native resolution instead of resizing",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="share held out for validation: it picks best.npz and draws the curves (default 0.05)",
    )
    g.add_argument("--train-size", type=int, default=400, help="synthetic: images")
    g.add_argument("--val-size", type=int, default=64, help="synthetic: val images")
    g.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="pets: never download; fail if the data is not in --data-dir",
    )
    g.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="pets: skip the sha256 check (for mirrors with repacked archives)",
    )
    g.add_argument("--base-url", help="pets: download from this URL (env MINUNET_PETS_URL)")
    g.add_argument("--mask-suffix", default="", help="folder: mask name = image stem + SUFFIX")
    g.add_argument("--ignore-index", type=int, help="folder: mask value to ignore (e.g. 255)")
    g.add_argument("--num-classes", type=int, help="folder: expected class count")
    g.add_argument(
        "--border-weights",
        action="store_true",
        help="folder/isbi2012: the U-Net paper's border weight map in the loss",
    )
    g.add_argument(
        "--class-weights",
        default="sqrt",
        help="sqrt (the square root of median-frequency weights) | auto (median frequency) "
        "| none | w0,w1,... (default sqrt)",
    )

    g = p.add_argument_group("model")
    g.add_argument("--base-channels", type=int, default=32)
    g.add_argument("--depth", type=int, default=4, help="number of poolings (default 4)")
    g.add_argument("--padding", choices=("same", "valid"), default="same")
    g.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--dropout", type=float, default=0.0, help="after the bottleneck")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--schedule", choices=SCHEDULES, default="cosine")
    g.add_argument("--warmup-epochs", type=float, default=0.0)
    g.add_argument("--step-size-epochs", type=int, default=0, help="step schedule period")
    g.add_argument("--gamma", type=float, default=0.1, help="step schedule factor")
    g.add_argument("--clip-grad", type=float, help="clip the global gradient norm")
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flips, random resized crops, colour jitter (default on)",
    )
    g.add_argument("--scale-min", type=float, default=0.7, help="smallest random crop side")
    g.add_argument("--jitter", type=float, default=0.1, help="colour jitter strength")
    g.add_argument(
        "--elastic",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="elastic deformation, grid displacement std in px (paper: 10)",
    )

    g = p.add_argument_group("run")
    g.add_argument("--backend", choices=BACKENDS, default="numpy")
    g.add_argument("--tf32", action="store_true", help="cupy: TF32 matrix multiplies")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="runs/unet", help="output folder (default runs/unet)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.npz")
    g.add_argument("--log-every", type=int, default=10, help="steps between logs")
    g.add_argument("--max-steps", type=int, help="stop after this many steps")
    g.add_argument("--no-progress", dest="progress", action="store_false")

    g = p.add_argument_group("several processes (launch with mpiexec -n N)")
    g.add_argument(
        "--distributed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="data-parallel over MPI ranks (default: on when mpiexec started us)",
    )
    g.add_argument(
        "--comm",
        choices=("nccl", "mpi"),
        default="nccl",
        help="cupy: gradients over NCCL (default) or MPI; numpy always uses MPI",
    )
    g.add_argument(
        "--sync-bn",
        action="store_true",
        help="BatchNorm statistics over the global batch, not each rank's share",
    )
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    data = DataOptions(
        data=args.data,
        data_dir=args.data_dir,
        image_size=args.image_size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        train_size=args.train_size,
        val_size=args.val_size,
        download=args.download,
        verify=args.verify,
        base_url=args.base_url,
        mask_suffix=args.mask_suffix,
        ignore_index=args.ignore_index,
        num_classes=args.num_classes,
        progress=args.progress,
        border_weights=args.border_weights,
    )
    keys = set(TrainConfig.__dataclass_fields__) - {"data"}
    return TrainConfig(data=data, **{k: getattr(args, k) for k in keys if hasattr(args, k)})


def check_combinations(args: argparse.Namespace) -> None:
    """The checks of several flags at once (each flag alone passed FLAG_RANGES)."""
    if args.warmup_epochs > args.epochs:
        raise UsageError(
            f"--warmup-epochs must be <= --epochs ({args.epochs}), got {args.warmup_epochs:g}"
        )
    if args.schedule == "step" and args.step_size_epochs < 1:
        raise UsageError(
            "--schedule step needs --step-size-epochs >= 1 (epochs between decays), "
            f"got {args.step_size_epochs}"
        )
    if args.padding == "valid" and args.crop is None:
        raise UsageError(
            "--padding valid shrinks the output; train it with --crop N "
            "(folder/isbi2012 data) or use --padding same"
        )
    if args.crop is not None:  # the network sees crops; images keep their native size
        if args.data not in ("folder", "isbi2012"):
            raise UsageError(f"--crop is for --data folder or isbi2012, not {args.data}")
        check_size("--crop", args.crop, args.depth, args.padding)
    else:
        check_size("--image-size", args.image_size, args.depth, args.padding)
    check_class_weights(args.class_weights, class_count(args))
    ranks = mpi_world_size() if args.distributed is not False else 1
    if args.batch_size % ranks:
        raise UsageError(
            f"--batch-size must be a multiple of the {ranks} MPI processes (it is the "
            f"global batch, split among them), got {args.batch_size}"
        )


def class_count(args: argparse.Namespace) -> tuple[int, str] | None:
    """The number of classes before any data is read, and where it comes from: fixed by
    the source, or given by --num-classes (a folder's is known once it is read)."""
    if args.num_classes is not None:
        return args.num_classes, "from --num-classes"
    if args.data == "isbi2012":
        from minunet.data.isbi import CLASS_NAMES

        return len(CLASS_NAMES), ", ".join(CLASS_NAMES)
    if args.data in ("synthetic", "pets", "pets-tfds"):
        from minunet.data.dataset import PETS_CLASS_NAMES

        return len(PETS_CLASS_NAMES), ", ".join(PETS_CLASS_NAMES)
    return None


def check_class_weights(text: str, classes: tuple[int, str] | None) -> None:
    """--class-weights: sqrt, auto, none, or one finite weight >= 0 per class, not all 0.
    (The count of a folder's classes without --num-classes is checked once it is read.)"""
    if text in ("none", "auto", "sqrt"):
        return
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if not weights or not all(math.isfinite(w) for w in weights):
        raise UsageError(
            f"--class-weights must be sqrt, auto, none or comma-separated numbers w0,w1,..., "
            f"got {text!r}"
        )
    if min(weights) < 0 or max(weights) == 0:
        raise UsageError(f"--class-weights must be >= 0 and not all 0, got {text!r}")
    if classes is not None and len(weights) != classes[0]:
        raise UsageError(
            f"--class-weights must have one weight per class ({classes[0]}: {classes[1]}), "
            f"got {len(weights)}"
        )


def check_paths(args: argparse.Namespace) -> None:
    """--out can be written (and holds last.npz with --resume); then check_data_dir."""
    check_output_dir("--out", args.out)
    last = Path(args.out) / "last.npz"
    if args.resume and not last.is_file():
        raise UsageError(f"--resume: no {last} to resume from; drop --resume to start a new run")
    check_data_dir(args)


def check_data_dir(args: argparse.Namespace) -> None:
    """--data-dir: an existing folder where the data must already be there, else a
    folder that pets may download into (or pets-tfds cache in)."""
    must_exist = args.data in ("folder", "isbi2012") or (args.data == "pets" and not args.download)
    if args.data_dir is None:
        if args.data in ("folder", "isbi2012"):
            raise UsageError(f"--data {args.data} needs --data-dir, the folder of the data")
    elif must_exist:
        check_input_dir("--data-dir", args.data_dir)
    else:
        check_output_dir("--data-dir", args.data_dir)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv, check_combinations, check_paths)
    train(config_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
