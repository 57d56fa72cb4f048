r"""An independent scorer of a minunet checkpoint on the Oxford-IIIT Pets test list.

    python benchmarks/pets_score.py --checkpoint runs/pets-sample/best.npz
    python benchmarks/pets_score.py --checkpoint runs/pets-sample/best.npz --native
    python benchmarks/pets_score.py --checkpoint CKPT --data-dir DIR --size 128 --limit 120

    # a small checkpoint to try it on (one epoch at 64 px, base 8), then both modes:
    python -m minunet.train --data pets --data-dir "$MINUNET_PETS_SAMPLE" --no-download \
        --image-size 64 --base-channels 8 --depth 3 --epochs 1 --batch-size 8 --seed 7 \
        --out runs/pets64 --no-progress
    python benchmarks/pets_score.py --checkpoint runs/pets64/best.npz
    python benchmarks/pets_score.py --checkpoint runs/pets64/best.npz --native

It judges ``python -m minunet.evaluate`` and ``minunet.infer``, so it uses neither: only the
model itself (``model.forward``), the image decoder and resize the training data went
through, and the normalisation of the training batches. The metrics, the upsampling and
the padding are written here, in NumPy.

Default mode, the protocol of the PyTorch reference the sample is compared with: every
test image (RGB) is resized to S x S exactly as training resized it, normalised as
training did, run through the model in eval mode; its logits (K, S, S) are upsampled
bilinearly (half-pixel centres, PyTorch's ``align_corners=False``) to the image's own
(H, W), and the argmax is scored against the trimap at native resolution (class = trimap
value - 1). ``--native`` instead runs the model on the image at its own size, mirror-padded
on the bottom and right to a multiple of 2**depth, and crops the logits back. Either way
ONE confusion matrix is accumulated over every pixel of every image, and printed as JSON
with the mean IoU, pixel accuracy, per-class IoU and Dice.

The data folder (official layout: images/, annotations/test.txt, annotations/trimaps/) is
``--data-dir``, else ``$MINUNET_PETS_SAMPLE``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from minunet.data.imageio import open_image, read_rgb, resize_image  # noqa: E402
from minunet.data.loader import normalize  # noqa: E402
from minunet.data.pets import read_split_names  # noqa: E402
from minunet.errors import MinunetError  # noqa: E402
from minunet.io.checkpoint import load_model  # noqa: E402

ENV_DATA = "MINUNET_PETS_SAMPLE"
DEFAULT_LIMIT = 120  # the first 120 test images: the protocol of benchmarks/pets_sample.sh


# ------------------------------------------------------------------------- upsampling


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each of ``n_out`` output samples reads along an axis of ``n_in`` samples.

    Half-pixel centres: output sample j sits at input coordinate (j + 0.5) * n_in / n_out
    - 0.5. As in PyTorch, a coordinate left of the first centre is clamped to 0 (the
    border is extended), and the right neighbour of the last sample is the last sample.
    Returns (lo, hi, frac), each (n_out,): value = (1 - frac) * v[lo] + frac * v[hi].
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def upsample_bilinear(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (K, h, w) maps to (K, H, W), ``size = (H, W)``, half-pixel centres.

    The semantics of ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` without antialiasing (tests/test_pets_score.py checks it against
    PyTorch). Bilinear is separable: interpolate the rows, then the columns. The dtype of
    ``logits`` is kept.
    """
    k, h, w = logits.shape
    rows_lo, rows_hi, fy = _linear_taps(h, size[0])
    cols_lo, cols_hi, fx = _linear_taps(w, size[1])
    fy = fy.astype(logits.dtype)[None, :, None]  # (1, H, 1)
    fx = fx.astype(logits.dtype)[None, None, :]  # (1, 1, W)
    rows = logits[:, rows_lo, :] * (1 - fy) + logits[:, rows_hi, :] * fy  # (K, H, w)
    return rows[:, :, cols_lo] * (1 - fx) + rows[:, :, cols_hi] * fx  # (K, H, W)


# ----------------------------------------------------------------------------- metrics


def confusion(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts, C[t, p] = pixels of true class t predicted as p.

    truth, pred: integer arrays of one shape with values in [0, K). One bincount of the
    pair index t * K + p counts every pair at once.
    """
    pair = truth.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(pair, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    """num / den per class; None where den is 0 (a class neither present nor predicted)."""
    return [float(n / d) if d > 0 else None for n, d in zip(num, den, strict=True)]


def scores(conf: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU and Dice, and their mean IoU, from C (K, K).

    With tp = C[k, k], fp = column k minus tp, fn = row k minus tp:
    IoU_k = tp / (tp + fp + fn), Dice_k = 2 tp / (2 tp + fp + fn); the mean IoU averages
    the classes whose IoU is defined.
    """
    tp = np.diag(conf).astype(np.float64)
    fp = conf.sum(axis=0) - tp
    fn = conf.sum(axis=1) - tp
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    defined = [v for v in iou if v is not None]
    return {
        "miou": float(np.mean(defined)) if defined else None,
        "pixel_accuracy": float(tp.sum() / conf.sum()) if conf.sum() else None,
        "iou": dict(zip(class_names, iou, strict=True)),
        "dice": dict(zip(class_names, dice, strict=True)),
    }


# -------------------------------------------------------------------------- prediction


def read_trimap_classes(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The classes (H, W) of a trimap PNG: value - 1 (0 pet, 1 background, 2 outline)."""
    trimap = np.asarray(open_image(path), dtype=np.uint8)
    if trimap.ndim == 3:  # saved as RGB by some tool: the channels are equal
        trimap = trimap[..., 0]
    if trimap.shape != shape:
        raise MinunetError(f"{path}: trimap is {trimap.shape} but its image is {shape}")
    if trimap.min() < 1 or trimap.max() > 3:
        raise MinunetError(f"{path}: trimap values outside 1, 2, 3: {np.unique(trimap)[:8]}")
    return trimap - np.uint8(1)


def _logits(model: Any, image: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Eval-mode logits (K, h, w) of one (h, w, 3) uint8 image."""
    x = normalize(image[None], mean, std).astype(model.dtype)  # (1, 3, h, w)
    return np.asarray(model.forward(x, train=False, keep_cache=False))[0]


def resized_logits(model: Any, image: np.ndarray, size: int, mean: Any, std: Any) -> np.ndarray:
    """Logits (K, H, W) of an (H, W, 3) image: model at size x size, upsampled back."""
    small = resize_image(image, (size, size))  # what the training data went through
    logits = _logits(model, small, mean, std)  # (K, S, S)
    return upsample_bilinear(logits, image.shape[:2])


def predict_resized(model: Any, image: np.ndarray, size: int, mean: Any, std: Any) -> np.ndarray:
    """Classes (H, W) of an (H, W, 3) image, the model run at size x size."""
    return resized_logits(model, image, size, mean, std).argmax(axis=0)


def predict_native(model: Any, image: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Classes (H, W) of an (H, W, 3) image, the model run at native resolution.

    The sides are mirror-padded on the bottom and right ("symmetric": the edge pixel is
    repeated, so any pad length works) up to multiples of 2**depth, which a same-padding
    U-Net of that depth needs; the logits of the padding are cut off before the argmax.
    """
    h, w = image.shape[:2]
    m = 2**model.depth
    padded = np.pad(image, [(0, -h % m), (0, -w % m), (0, 0)], mode="symmetric")
    return _logits(model, padded, mean, std)[:, :h, :w].argmax(axis=0)


def score(
    model: Any,
    root: Path,
    *,
    size: int | None,
    limit: int,
    mean: Any,
    std: Any,
) -> tuple[np.ndarray, int]:
    """The confusion matrix (K, K) over every native pixel of the first ``limit`` images of
    ``root/annotations/test.txt``, and the number of images. ``size`` None: native mode."""
    k = model.num_classes
    conf = np.zeros((k, k), dtype=np.int64)
    names = read_split_names(root / "annotations" / "test.txt")[:limit]
    for name in names:
        image = read_rgb(root / "images" / f"{name}.jpg")
        truth = read_trimap_classes(
            root / "annotations" / "trimaps" / f"{name}.png", image.shape[:2]
        )
        if size is None:
            pred = predict_native(model, image, mean, std)
        else:
            pred = predict_resized(model, image, size, mean, std)
        conf += confusion(truth, pred, k)
    return conf, len(names)


# --------------------------------------------------------------------------------- CLI


def data_folder(arg: str | None, split: str = "test") -> Path:
    """``--data-dir``, else $MINUNET_PETS_SAMPLE: a folder with images/ and the list of
    ``split``; a one-line exit when neither is given or the folder is not one."""
    value = arg or os.environ.get(ENV_DATA)
    if not value:
        raise SystemExit(
            f"no data folder: pass --data-dir DIR or set {ENV_DATA} to the Pets sample "
            "(the folder holding images/ and annotations/)"
        )
    root = Path(value).expanduser()
    if not (root / "annotations" / f"{split}.txt").is_file() or not (root / "images").is_dir():
        raise SystemExit(
            f"{root}: not an Oxford-IIIT Pets folder (needs images/ and annotations/"
            f"{split}.txt); pass --data-dir DIR or set {ENV_DATA}"
        )
    return root


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a minunet .npz (best.npz of a run)")
    p.add_argument("--data-dir", help=f"the Pets folder (default: ${ENV_DATA})")
    p.add_argument("--size", type=int, help="training image size (default: the checkpoint's)")
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="first N test images")
    p.add_argument("--native", action="store_true", help="run at native resolution instead")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    root = data_folder(args.data_dir)
    if args.limit < 1:
        raise SystemExit(f"--limit must be at least 1, got {args.limit}")
    try:
        ckpt, model = load_model(args.checkpoint)
        if model.padding != "same":
            raise MinunetError(
                f"{args.checkpoint}: a {model.padding}-padding model; this scorer needs "
                "padding='same' (its output has the input's size)"
            )
        data_meta = ckpt.meta.get("data", {})
        size = None
        if not args.native:
            size = args.size or data_meta.get("image_size")
            if not size:
                raise MinunetError(
                    f"{args.checkpoint}: no training image size saved; pass --size S"
                )
            model.output_size(size)  # a size the model cannot take: one line, now
        names = list(
            data_meta.get("class_names") or [f"class {c}" for c in range(model.num_classes)]
        )
        if len(names) != model.num_classes:
            raise MinunetError(
                f"{args.checkpoint}: {len(names)} class names for {model.num_classes} classes"
            )
        mean, std = ckpt.normalization
        conf, images = score(model, root, size=size, limit=args.limit, mean=mean, std=std)
    except MinunetError as exc:
        raise SystemExit(str(exc)) from None
    report = {
        "checkpoint": str(args.checkpoint),
        "mode": "native" if args.native else f"resized to {size}, logits upsampled to native",
        "size": size,
        "images": images,
        **scores(conf, names),
        "confusion": conf.tolist(),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
