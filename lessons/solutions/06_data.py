"""Solutions to lesson 06's exercises."""

import numpy as np


def my_bilinear(image, y, x):
    """The four neighbours of (y, x), weighted by the opposite rectangle's area."""
    h, w = image.shape
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - y0, x - x0
    total = 0.0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = min(max(y0 + dy, 0), h - 1), min(max(x0 + dx, 0), w - 1)
            total += wy * wx * image[yi, xi]
    return total
