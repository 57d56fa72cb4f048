"""Segmentation metrics from a confusion matrix, computed on the backend.

One confusion matrix C (K x K), C[t, p] = number of pixels of true class t predicted as
p, holds everything; it is accumulated batch by batch on the device (a bincount of
t*K + p) and read back once per evaluation.

    pixel accuracy = trace(C) / sum(C)
    IoU_k  = C[k,k] / (row_k + col_k - C[k,k])       (intersection over union)
    Dice_k = 2 C[k,k] / (row_k + col_k)
    mean IoU = mean of IoU_k over classes that occur (in truth or prediction)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minunet.core.backend import get_array_module, to_numpy


def confusion_matrix(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = None
) -> Any:
    """(K, K) int64 counts on the backend of ``pred``. pred, target: (N, H, W) ints."""
    xp = get_array_module(pred)
    t = target.reshape(-1).astype(xp.int64)
    p = pred.reshape(-1).astype(xp.int64)
    # Pixels not counted (the ignore label, any label outside 0..K-1) go to a spare last
    # bin. Not a boolean mask nor bincount: on CuPy both read a number back to size
    # their output, which would stall the GPU once per batch.
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    k2 = num_classes * num_classes
    counts = xp.zeros(k2 + 1, dtype=xp.int64)
    xp.add.at(counts, xp.where(keep, t * num_classes + p, k2), 1)
    return counts[:k2].reshape(num_classes, num_classes)


def metrics_from_confusion(
    conf: Any, class_names: list[str] | None = None, foreground: int | None = 0
) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU and Dice, mean IoU, and foreground (pet) IoU.

    Returns plain Python floats and lists (reads the matrix back to the host once).
    ``foreground`` is the class index reported as ``fg_iou`` (0 = pet for Oxford Pets).
    """
    c = to_numpy(conf).astype(np.float64)
    k = c.shape[0]
    tp = np.diag(c)
    rows, cols = c.sum(axis=1), c.sum(axis=0)
    union = rows + cols - tp
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / union, np.nan)
        dice = np.where(rows + cols > 0, 2 * tp / (rows + cols), np.nan)
    names = class_names or [f"class {i}" for i in range(k)]
    total = c.sum()
    out: dict[str, Any] = {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "iou": {n: float(v) for n, v in zip(names, iou, strict=True)},
        "dice": {n: float(v) for n, v in zip(names, dice, strict=True)},
    }
    if foreground is not None and foreground < k:
        out["fg_iou"] = float(iou[foreground])
    return out


def format_metrics(m: dict[str, Any]) -> str:
    """A small text table of the metrics."""
    lines = [f"pixel accuracy {m['pixel_accuracy']:.4f}   mean IoU {m['miou']:.4f}"]
    lines.append(f"{'class':<16}{'IoU':>8}{'Dice':>8}")
    for name in m["iou"]:
        lines.append(f"{name:<16}{m['iou'][name]:>8.4f}{m['dice'][name]:>8.4f}")
    return "\n".join(lines)
