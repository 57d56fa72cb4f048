"""Solutions to lesson 02's exercises."""

import numpy as np


def my_col2im(cols, x_shape, k, stride, padding):
    """(N, C*k*k, Ho*Wo) -> (N, C, H, W): add each column back onto its patch."""
    n, c, h, w = x_shape
    ho = (h + 2 * padding - k) // stride + 1
    wo = (w + 2 * padding - k) // stride + 1
    canvas = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for i in range(ho):
        for j in range(wo):
            patch = cols[:, :, i * wo + j].reshape(n, c, k, k)
            canvas[:, :, i * stride : i * stride + k, j * stride : j * stride + k] += patch
    return canvas[:, :, padding : padding + h, padding : padding + w]


# With `=`, a pixel covered by several patches keeps only the last one's value. Patches
# overlap for k = 3, stride 1; they tile the image for k = s = 2, and a 1x1 convolution
# returns before the loop: only the first check sees the difference.
answer_col2im_mutation = {"adjoint_k3_s1"}
