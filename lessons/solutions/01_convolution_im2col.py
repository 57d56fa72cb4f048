"""Solutions to lesson 01's exercises."""

import numpy as np


def my_conv_output_size(size, k, stride, padding, dilation):
    """The last window starts at most size + 2p - (d(k - 1) + 1); count the starts."""
    span = dilation * (k - 1) + 1
    return (size + 2 * padding - span) // stride + 1


def my_im2col(x, k, stride, padding):
    """x (N, C, H, W) -> (N, C*k*k, Ho*Wo), one loop per output pixel (clear, slow)."""
    n, c, h, w = x.shape
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    xp = np.pad(x, [(0, 0), (0, 0), (padding, padding), (padding, padding)])
    cols = np.empty((n, c * k * k, ho * wo), dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            cols[:, :, i * wo + j] = patch.reshape(n, -1)
    return cols
