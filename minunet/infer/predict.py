"""python -m minunet.predict: segment images with a trained checkpoint.

For every IMAGE it writes, into --out:
  NAME_mask.png     one channel, the image's native size, pixel value = the class's value in
                    the training masks (e.g. 1/2/3 for Pets trimaps, 0/255 for binary masks)
  NAME_overlay.png  the class colours blended over the image

The network runs at the scale it learned (``minunet.infer.scale``, from the checkpoint's
record): a model trained on images resized to S x S predicts on the image resized to
S x S, and its logits are resized back to the native size before the argmax; a model
trained on native-resolution crops predicts at native resolution, padded to what the
network accepts and cropped back (same padding), or overlap-tiled (valid padding, or
--tile). --scale native|N overrides the record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from minunet.cli import (
    EXIT_CODES,
    Parser,
    check_input_file,
    check_output_dir,
    check_size,
    parse_args,
)
from minunet.core.backend import BACKENDS, get_backend
from minunet.data.imageio import open_image
from minunet.errors import MinunetError
from minunet.infer.scale import predict_logits_at_scale, resolve_scale, scale_flag
from minunet.io.atomic import atomic_write
from minunet.io.checkpoint import load_model
from minunet.train.plots import overlay


def read_input(path: Path, channels: int) -> np.ndarray:
    """(H, W, channels) uint8: RGB for 3-channel models, luminance for 1-channel ones."""
    im = open_image(path)
    if channels == 1:
        if im.mode in ("I;16", "I;16B", "I"):
            a = np.asarray(im, dtype=np.float64) / 257.0  # 16-bit, scaled as in training
            return np.clip(a + 0.5, 0, 255).astype(np.uint8)[..., None]
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None]
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def save_png(path: Path, array: np.ndarray) -> None:
    def write(f):
        Image.fromarray(array).save(f, format="PNG")

    atomic_write(path, write)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m minunet.predict",
        description="Predict segmentation masks for images with a minunet checkpoint.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to segment")
    p.add_argument("--checkpoint", required=True, help="a checkpoint (best.npz or last.npz)")
    p.add_argument("--out", default="predictions", help="output folder (default predictions)")
    p.add_argument("--backend", choices=BACKENDS, default="numpy")
    p.add_argument(
        "--tile",
        type=int,
        help="predict in overlapping tiles of this side (bounded memory for large images)",
    )
    p.add_argument("--scale", type=scale_flag, default="auto", help=SCALE_HELP)
    return p


SCALE_HELP = (
    "the scale the network sees each image at: auto (default) as it trained, from the "
    "checkpoint (resized to its --image-size S, logits resized back to the native size; "
    "or native resolution for a --crop model); native: the image as it is; N: resized "
    "to N x N, logits resized back. Masks are always written at the native size"
)


def check_paths(args: argparse.Namespace) -> None:
    """Every IMAGE and --checkpoint are readable files; --out can be written."""
    check_input_file("--checkpoint", args.checkpoint)
    for name in args.images:
        check_input_file("IMAGE", name)
    check_output_dir("--out", args.out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv, check_paths)
    xp = get_backend(args.backend)
    ck, model = load_model(args.checkpoint, xp)
    if args.tile is not None:  # tiles must fit the checkpoint's network
        check_size("--tile", args.tile, model.depth, model.padding)
    data = ck.meta.get("data", {})
    mean, std = ck.normalization
    values = np.asarray(data.get("mask_values") or range(model.num_classes))
    if values.max() > 255:
        raise MinunetError("the checkpoint's mask values do not fit an 8-bit PNG")
    scale = resolve_scale(args.scale, ck.meta)
    print(f"the network sees each image {scale.describe()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        path = Path(name)
        image = read_input(path, model.in_channels)
        logits = predict_logits_at_scale(model, image, xp, mean, std, scale, tile=args.tile)
        classes = logits.argmax(axis=0)
        save_png(out / f"{path.stem}_mask.png", values[classes].astype(np.uint8))
        save_png(out / f"{path.stem}_overlay.png", overlay(image, classes))
        print(f"{path} -> {out / (path.stem + '_mask.png')} ({image.shape[1]}x{image.shape[0]})")
    return 0
