"""Solutions to lesson 11's exercises."""

import numpy as np


def my_prior_baseline(labels, k):
    """The entropy of the label frequencies: the loss of predicting them everywhere."""
    prior = np.bincount(labels.reshape(-1), minlength=k) / labels.size
    prior = prior[prior > 0]  # 0 * log 0 = 0
    return float(-(prior * np.log(prior)).sum())


def my_dead_channels(activations):
    """(N, C, H, W) ReLU outputs -> (C,) bool: zero at every pixel of every image."""
    return ~(activations > 0).any(axis=(0, 2, 3))


# With every non-negative label "valid", 255 is used as a class index: an index error
# (or, with more classes, a leak). Without ignore_index the line is never reached.
answer_ignore_mutation = {"ignored_get_no_gradient"}
