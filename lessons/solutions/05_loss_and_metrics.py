"""Solutions to lesson 05's exercises."""

import numpy as np


def my_iou(conf):
    """Per class: true positives / (row + column - true positives)."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    return tp / (conf.sum(axis=0) + conf.sum(axis=1) - tp)


def my_weighted_ce(z, y, class_weights):
    """sum_i w_{y_i} (-log p_{i, y_i}) / sum_i w_{y_i}."""
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -np.take_along_axis(log_p, y[:, None], axis=1)[:, 0]
    w = class_weights[y]
    return (w * nll).sum() / w.sum()
