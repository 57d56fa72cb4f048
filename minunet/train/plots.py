"""Figures a run writes: learning curves, predicted masks, confusion matrices, overlays.

Matplotlib is used with the Agg backend (files only), so plotting works on machines and
CI runners without a display. Every figure is written atomically.
"""

from __future__ import annotations

import io
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from minunet.io.atomic import atomic_write  # noqa: E402

# One colour per class (pet, background, outline first, as in Oxford-IIIT Pets).
PALETTE = np.array(
    [
        [230, 159, 0],
        [40, 40, 60],
        [240, 240, 240],
        [86, 180, 233],
        [0, 158, 115],
        [204, 121, 167],
        [213, 94, 0],
        [0, 114, 178],
        [240, 228, 66],
        [120, 120, 120],
    ],
    dtype=np.uint8,
)
IGNORE_COLOUR = np.array([255, 0, 255], dtype=np.uint8)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class map (H, W) -> RGB (H, W, 3) uint8; labels beyond the palette cycle, ignore is magenta."""
    mask = np.asarray(mask)
    rgb = PALETTE[np.mod(mask, len(PALETTE))]
    rgb[mask == 255] = IGNORE_COLOUR
    return rgb


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend the class colours over an RGB or grayscale (H, W, C) uint8 image."""
    image = np.asarray(image)
    if image.ndim == 2 or image.shape[2] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask).astype(np.float32)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_curves(history: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """curves.png from the records of metrics.jsonl, what a user reads first: the training
    and validation losses side by side (diverging: over-fitting), then the validation mean
    IoU with each class's IoU (one flat at 0: a class the net never predicts)."""
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="training")
    val_loss = [h.get("val_loss") for h in history]
    if any(v is not None for v in val_loss):  # records from before val_loss have none
        ax1.plot(epochs, [np.nan if v is None else v for v in val_loss], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.plot(epochs, [h["val_miou"] for h in history], "o-", color="black", lw=2, label="mean")
    names = list(history[-1].get("val_iou", {})) if history else []
    for k, name in enumerate(names):
        ious = [h.get("val_iou", {}).get(name, np.nan) for h in history]
        # Matplotlib's cycle, not the mask palette: its outline white is invisible here.
        ax2.plot(epochs, ious, ".--", color=f"C{k % 10}", label=name)
    ax2.set(xlabel="epoch", ylabel="IoU", title="validation IoU", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_predictions(
    images: np.ndarray,
    truths: np.ndarray,
    preds: np.ndarray,
    path: str | os.PathLike,
    class_names: list[str],
) -> None:
    """Rows of image | ground truth | prediction. images (N, H, W, C) uint8, masks (N, H, W)."""
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        img = images[i] if images[i].shape[-1] == 3 else images[i][..., 0]
        for ax, shown, title in zip(
            axes[i],
            (img, colorize(truths[i]), colorize(preds[i])),
            ("image", "truth", "prediction"),
            strict=True,
        ):
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=PALETTE[k % len(PALETTE)] / 255)
        for k in range(len(class_names))
    ]
    fig.legend(handles, class_names, loc="lower center", ncol=len(class_names), frameon=False)
    save_figure(fig, path)


def plot_confusion(conf: np.ndarray, class_names: list[str], path: str | os.PathLike) -> None:
    """Row-normalised confusion matrix (true class down, predicted across)."""
    conf = np.asarray(conf, dtype=np.float64)
    rows = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.2 * k + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for t in range(k):
        for p in range(k):
            ax.text(
                p,
                t,
                f"{norm[t, p]:.2f}",
                ha="center",
                va="center",
                color="white" if norm[t, p] > 0.5 else "black",
            )
    ax.set_xticks(range(k), class_names, rotation=30)
    ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    save_figure(fig, path)
