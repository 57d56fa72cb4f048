"""Elastic deformation, the U-Net paper's key augmentation, on the backend and batched.

The paper (Sec. 3.1) draws random displacement vectors on a coarse 3 x 3 grid from a
Gaussian with 10 pixels standard deviation and interpolates them bicubically to every
pixel. The result is a smooth, different warp for every sample: tissue bends, cells
stretch, and the network learns invariance to exactly the deformations that biological
tissue shows, from very few annotated images.

Here the coarse displacements (N, 2, g, g) are upsampled with two small interpolation
matrices, ``field = M_h @ d @ M_w^T``: cubic convolution (Keys, a = -0.5) along each
axis, which is bicubic interpolation of the grid, through every node, and exact for a
constant displacement. The sampling grid ``identity + field`` then goes to the public
samplers of ``minunet.data.augment``: bilinear for images, nearest neighbour for masks and
weight maps, so labels stay exact. Positions falling outside the image read the border
pixel (clamping). Everything runs on the arrays' backend with an explicit Generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minunet.core.backend import get_array_module
from minunet.data.augment import sample_bilinear, sample_nearest

DEFAULT_SIGMA = 10.0  # pixels, the paper's standard deviation of the grid displacements
DEFAULT_GRID = 3  # the paper's coarse 3 x 3 grid
KEYS_A = -0.5  # cubic convolution parameter; -0.5 makes it third-order accurate


def _keys(x: np.ndarray) -> np.ndarray:
    """The cubic convolution kernel (Keys 1981) at offsets ``x`` (any shape)."""
    x = np.abs(x)
    a = KEYS_A
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def cubic_upsample_matrix(size: int, nodes: int) -> np.ndarray:
    """(size, nodes) float32 matrix M with ``M @ v`` the bicubic interpolation of ``v``.

    Node k sits at pixel ``k * (size - 1) / (nodes - 1)`` (first and last node on the
    first and last pixel). Taps beyond the ends reuse the end nodes (clamping), so every
    row sums to 1 and a constant is reproduced.
    """
    if nodes < 2:
        return np.ones((size, max(nodes, 1)), dtype=np.float32)
    u = np.arange(size) * (nodes - 1) / max(size - 1, 1)  # pixel position in node units
    base = np.floor(u).astype(np.int64)
    matrix = np.zeros((size, nodes), dtype=np.float64)
    rows = np.arange(size)
    for tap in range(-1, 3):
        k = base + tap
        np.add.at(matrix, (rows, np.clip(k, 0, nodes - 1)), _keys(u - k))
    return matrix.astype(np.float32)


def elastic_field(
    n: int,
    height: int,
    width: int,
    rng: Any,
    *,
    sigma: float = DEFAULT_SIGMA,
    grid: int = DEFAULT_GRID,
) -> Any:
    """Random smooth displacements, (N, 2, H, W) float32 on ``rng``'s backend.

    Channel 0 is the row displacement, channel 1 the column displacement, in pixels.
    rng: ``numpy.random.default_rng(...)`` or ``cupy.random.default_rng(...)``.
    """
    coarse = rng.standard_normal((n, 2, grid, grid), dtype=np.float32) * np.float32(sigma)
    xp = get_array_module(coarse)
    m_h = xp.asarray(cubic_upsample_matrix(height, grid))
    m_w = xp.asarray(cubic_upsample_matrix(width, grid))
    return m_h @ coarse @ m_w.T  # (H, g) @ (N, 2, g, g) @ (g, W) -> (N, 2, H, W)


def elastic_deform(
    images: Any,
    masks: Any,
    weights: Any | None,
    rng: Any,
    *,
    sigma: float = DEFAULT_SIGMA,
    grid: int = DEFAULT_GRID,
    field: Any | None = None,
) -> tuple[Any, Any, Any | None]:
    """Warp a batch of images, masks and weight maps by one random field per sample.

    images:  (N, H, W, C) uint8 (returned rounded, uint8) or float (returned float32)
    masks:   (N, H, W) integer labels; resampled nearest, so no new label appears
    weights: (N, H, W) per-pixel loss weights, or None; resampled nearest
    rng:     a Generator of the batch's backend
    sigma, grid: standard deviation (pixels) of the displacements on a grid x grid grid
    field:   (N, 2, H, W) displacements to use instead of drawing them (tests, replays)
    Returns (images, masks, weights) in the shapes given.
    """
    xp = get_array_module(images, masks)
    n, h, w = images.shape[:3]
    if field is None:
        field = elastic_field(n, h, w, rng, sigma=sigma, grid=grid)
    # Output pixel (i, j) reads the input at (i + dy, j + dx).
    grid_y = xp.arange(h, dtype=np.float32)[None, :, None] + field[:, 0]
    grid_x = xp.arange(w, dtype=np.float32)[None, None, :] + field[:, 1]
    is_u8 = images.dtype == np.uint8
    out = sample_bilinear(images.astype(np.float32) if is_u8 else images, grid_y, grid_x)
    if is_u8:
        out = xp.clip(xp.rint(out), 0, 255).astype(np.uint8)
    masks = sample_nearest(masks, grid_y, grid_x)
    if weights is not None:
        weights = sample_nearest(weights, grid_y, grid_x)
    return out, masks, weights
