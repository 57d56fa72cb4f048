"""Per-class loss weights: how much one pixel of each class counts in the loss.

Median-frequency balancing (Eigen & Fergus, 2015): with ``freq[k]`` the share of the
labelled pixels that belong to class k, class k gets ``median(freq) / freq[k]``, so the
median class weighs 1, rarer classes more and commoner ones less. Classes no pixel has
get 0 (there is nothing to weigh), and ignored pixels (label 255) are not counted. The
median is over the classes present. ``median_frequency_weights`` is the one place this
is computed: for ``--class-weights auto`` and for the ``w_c`` term of the border weight
map alike.

``--class-weights sqrt`` (the default) takes the square root of those weights: half the
correction on a log scale. Full median-frequency balancing over-corrects a rare class (the
Pets outline, 12% of the pixels, gets 2.4 and the net paints outline where there is none);
no weighting under-predicts it; the square root (1 / 0.71 / 1.56 on the Pets sample) scored
best of the three there (benchmarks/RESULTS.md), and on balanced classes every weight stays
near 1, so it does no harm elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from minunet.data.dataset import IGNORE_LABEL, NativeSizeData, SegmentationData
from minunet.errors import DataError


def median_frequency_weights(masks: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """``median(freq) / freq[k]`` over the labelled pixels of ``masks``; absent classes 0.

    masks: an (N, H, W) array or any iterable of (H_i, W_i) integer labels (255 ignored).
    Returns (num_classes,) float64.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for m in masks:
        m = np.asarray(m)
        counts += np.bincount(m[m != IGNORE_LABEL].ravel(), minlength=num_classes)[:num_classes]
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    if present.any():
        freq = counts[present] / counts[present].sum()
        weights[present] = np.median(freq) / freq
    return weights


def class_weights(data: SegmentationData | NativeSizeData, mode: str = "auto") -> np.ndarray:
    """The loss's class weights as ``--class-weights`` says. Returns (num_classes,) float32.

    mode: ``"auto"`` for median-frequency balancing over ``data``'s labelled pixels,
    ``"sqrt"`` for the square root of those weights, ``"none"`` for all ones, or explicit
    weights ``"w0,w1,..."`` (one per class).
    """
    k = data.num_classes
    if mode == "auto":
        return median_frequency_weights(data.masks, k).astype(np.float32)
    if mode == "sqrt":
        return np.sqrt(median_frequency_weights(data.masks, k)).astype(np.float32)
    if mode == "none":
        return np.ones(k, dtype=np.float32)
    try:
        weights = np.array([float(w) for w in mode.split(",")], dtype=np.float32)
    except ValueError:
        weights = None
    if weights is None or len(weights) != k or not np.all(np.isfinite(weights)):
        raise DataError(
            f"--class-weights {mode!r}: expected 'sqrt', 'auto', 'none' or {k} comma-separated "
            f"numbers (one per class: {', '.join(data.class_names)})"
        )
    if (weights < 0).any():
        raise DataError(f"--class-weights {mode!r}: weights must not be negative")
    return weights
