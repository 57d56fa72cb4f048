"""python -m minunet.train: train a U-Net (see --help)."""

from __future__ import annotations

import argparse
import sys

from minunet.cli import positive_int, run_cli
from minunet.core.backend import BACKENDS
from minunet.data.sources import SOURCES, DataOptions
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
    p = argparse.ArgumentParser(
        prog="python -m minunet.train",
        description="Train a U-Net for semantic segmentation with hand-written backprop.",
        epilog=EXAMPLES,
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
        type=positive_int,
        default=128,
        help="resize images to this square size (default 128)",
    )
    g.add_argument(
        "--crop",
        type=positive_int,
        help="folder/isbi2012: train on random "
        "N x N crops at native resolution instead of resizing",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share held out for validation (default 0.1)",
    )
    g.add_argument("--train-size", type=positive_int, default=400, help="synthetic: images")
    g.add_argument("--val-size", type=positive_int, default=64, help="synthetic: val images")
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
    g.add_argument("--num-classes", type=positive_int, help="folder: expected class count")
    g.add_argument(
        "--border-weights",
        action="store_true",
        help="folder/isbi2012: the U-Net paper's border weight map in the loss",
    )
    g.add_argument(
        "--class-weights",
        default="none",
        help="none | auto (median frequency) | w0,w1,... (default none)",
    )

    g = p.add_argument_group("model")
    g.add_argument("--base-channels", type=positive_int, default=32)
    g.add_argument("--depth", type=positive_int, default=4, help="number of poolings (default 4)")
    g.add_argument("--padding", choices=("same", "valid"), default="same")
    g.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--dropout", type=float, default=0.0, help="after the bottleneck")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=10)
    g.add_argument("--batch-size", type=positive_int, default=8)
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
    g.add_argument("--log-every", type=positive_int, default=10, help="steps between logs")
    g.add_argument("--max-steps", type=positive_int, help="stop after this many steps")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train(config_from_args(args))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
