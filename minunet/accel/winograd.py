"""Winograd convolutions for 3x3, stride-1 layers on NumPy: fewer multiplications, same sums.

A 3x3 convolution computes each output pixel with 9 multiplications per channel pair. The
Winograd (Toom-Cook) algorithm F(m x m, 3 x 3) computes an m x m tile of outputs from the
(m+2) x (m+2) input tile that covers it with (m+2)^2 multiplications instead of 9 m^2:
16 instead of 36 for m = 2, 36 instead of 144 for m = 4. In one dimension, for a row d of
n = m + 2 inputs and a filter g of 3 taps, the m outputs y_i = sum_k g_k d_{i+k} are

    y = A^T [ (G g) * (B^T d) ]            (* elementwise, n products)

and in two dimensions the same matrices nest: Y = A^T [ (G g G^T) * (B^T d B) ] A. The
elementwise product, summed over input channels, is where the work is, and for a whole
layer it becomes n^2 ordinary matrix products, one per position (xi, eta) of the tile:

    M[xi, eta] = V[xi, eta] @ U[xi, eta]      (tiles, C) @ (C, K)

with V = B^T d B the transformed input tiles and U = G g G^T the transformed filters. The
transforms are additions and multiplications by small constants, cheap next to the
products when C and K are large (the U-Net's deep layers). Each is computed as one matrix
on the flattened tiles (``nested``: flat(B^T d B) = (B^T (x) B^T) flat(d), a Kronecker
product), so a whole image's tiles go through it in one product.

The matrices are built here from their interpolation points (``toom_cook``), not typed in:
the points 0, 1, -1 (and infinity) give F(2, 3), and 0, 1, -1, 2, -2 give F(4, 3). The
entries of F(4, 3)'s matrices are larger (up to 8 and 1/24), so its float32 result carries
more rounding than a direct convolution's: ``benchmarks/RESULTS.md`` gives the measured
error, and ``tests/test_winograd.py`` checks both against the im2col reference.

Backward, for the same layer:
* dx is a stride-1 convolution of dout with the kernel flipped and its channel axes
  swapped (padding 2 - p), so it is ``conv2d_forward`` again;
* dW: Y is linear in U, so dU[xi, eta] = V[xi, eta]^T (C, tiles) @ dM[xi, eta] (tiles, K)
  with dM = A dY A^T the output-gradient tiles taken back through the output transform,
  and dW = G^T dU G. The same n^2 products, with the roles exchanged.

Arrays are channels-last inside (a tile's channels are contiguous, so each product reads
rows of C values) and NCHW at the edges, like ``minunet.accel.cpu``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np

from minunet.accel import cpu
from minunet.accel.cpu import parallel

KERNEL = 3  # F(m x m, 3 x 3): the only kernel size the U-Net's convolutions use

# On by default; MINUNET_WINOGRAD=0 switches it off (MINUNET_FAST_CPU=0 and MINUNET_ACCEL=0
# switch it off with the other CPU fast paths). Where ``tile_for``'s rule picks F(4x4) in a
# base-32 U-Net, it took 27-44% less time than the blocked path (benchmarks/winograd_rule.py,
# benchmarks/RESULTS.md, 2026-12-02 05:15 UTC).
ENABLED = os.environ.get("MINUNET_WINOGRAD", "1") != "0"

# The rule (``tile_for``): per tile size m, largest first, (least channel intensity, least
# tiles). A layer's n^2 products are (T, C) @ (C, K) each, T = the batch's m x m output
# tiles; its transforms touch T * (C + K) values per position and run at memory speed. So
# Winograd pays where
# * h = C*K / (C + K), the products' multiply-adds per transformed value, is large: the
#   transforms are then small next to the products they save (at 64 channels in and out,
#   h = 32, the blocked path won everywhere; at 128 and 128, h = 64, F(4x4) was faster
#   or level), and
# * T is large: each product reads all of U's C*K values once, and the filter
#   transforms cost C*K*n^2*9 whatever the batch (at 8 px a batch of 8 has 32 4x4 tiles:
#   F(4x4) lost to F(2x2) there, whose 2x2 tiles are 128).
# F(2x2) saves fewer products (16 for 36 against 36 for 144), so it needs more channels:
# at 8 px, 256 -> 256 (h = 128) the blocked path won and 256 -> 512 (h = 171) F(2x2) did.
# Measured with benchmarks/winograd_rule.py at batch 8 (every 3x3 convolution of base-16
# and base-32 U-Nets: the rule picked the fastest path on 19 of 26, on the others one
# within 18% of it, which earlier runs had ordered the other way or level) and batch 2
# (RESULTS.md, 2026-12-02 05:15 UTC).
RULE = ((4, 64, 128), (2, 160, 128))  # (m, least h, least T)

# F(4x4, 3x3)'s float32 error: its larger transform entries (up to 8 and 1/24) round more.
# Measured on the U-Net's layers (winograd_rule.py --error): at most 1.5e-5 of an output's
# largest value, where the blocked path's is 5e-7 and F(2x2)'s 9e-7; float32 itself
# carries 6e-8 per operation and bfloat16, which networks train in, 4e-3. Acceptable.

# The finite interpolation points of each tile size (infinity is always the last point).
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 2, -2)}


@cache
def toom_cook(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matrices (A^T (m, n), G (n, 3), B^T (n, n)) of F(m, 3), n = m + 2, in float64.

    Evaluating the filter polynomial g(z) = g0 + g1 z + g2 z^2 at each point p_j (and its
    leading coefficient for the point at infinity) is G, scaled by 1 / prod_{l != j}(p_j - p_l)
    so that the inverse transform A^T is a plain Vandermonde matrix; B^T is then the one
    matrix that makes A^T [(G g) * (B^T d)] the correlation of d with g, solved for from that
    identity (its entries come out as small integers).
    """
    points = np.array(POINTS[m], dtype=np.float64)
    n = m + KERNEL - 1
    at = np.zeros((m, n))
    at[:, : n - 1] = points[None, :] ** np.arange(m)[:, None]
    at[m - 1, n - 1] = 1.0
    g = np.zeros((n, KERNEL))
    for j, p in enumerate(points):
        scale = np.prod([p - q for q in points if q != p])
        g[j] = p ** np.arange(KERNEL) / scale
    g[n - 1, KERNEL - 1] = 1.0
    # The identity, for every output i, tap k and input l: sum_j AT[i,j] G[j,k] BT[j,l] = [l == i+k].
    # Linear in BT: one row per (i, k, l), unknowns BT[j, l'] (only l' == l contributes).
    rows, rhs = [], []
    for i in range(m):
        for k in range(KERNEL):
            for l in range(n):
                row = np.zeros((n, n))
                row[:, l] = at[i] * g[:, k]
                rows.append(row.ravel())
                rhs.append(1.0 if l == i + k else 0.0)
    bt, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    bt = np.round(bt.reshape(n, n), 9) + 0.0  # exact small integers, less lstsq's rounding
    return at, g, bt


def tile_for(
    x: Any, out_channels: int, kernel: int, stride: int, dilation: int, padding: int
) -> int:
    """The Winograd tile size m to use for this convolution, or 0 for the blocked path.

    x (N, C, H, W). Winograd applies to NumPy float arrays, 3x3 kernels, stride 1, dilation 1
    and padding at most 2 (so the input gradient's padding 2 - p is >= 0); among those, the
    first m of ``RULE`` whose thresholds the layer reaches (``FORCED``, when set, instead).
    """
    ok = (
        ENABLED
        and cpu.applies(x)
        and x.dtype in cpu.FLOATS
        and (kernel, stride, dilation) == (KERNEL, 1, 1)
        and padding <= KERNEL - 1
    )
    if not ok:
        return 0
    if FORCED is not None:
        return FORCED
    n, c, h, w = x.shape
    k = out_channels
    intensity = c * k / (c + k)
    for m, least_intensity, least_tiles in RULE:
        _, _, th, tw = _tiles_shape(h, w, padding, m)
        if intensity >= least_intensity and n * th * tw >= least_tiles:
            return m
    return 0


# Set by ``forced``: the tile size every applicable convolution takes (0: the blocked path).
FORCED: int | None = None


@contextmanager
def forced(m: int) -> Iterator[None]:
    """Every convolution Winograd applies to takes tile size m inside the block (0: the
    blocked path), whatever the rule says: what the benchmarks compare the paths with."""
    global FORCED
    if m not in (0, *POINTS):
        raise ValueError(
            f"no Winograd tile size {m}: use 0 (the blocked path) or one of {sorted(POINTS)}"
        )
    saved, FORCED = FORCED, m
    try:
        with enabled(True):
            yield
    finally:
        FORCED = saved


@contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Winograd switched on or off (``ENABLED``) inside the block, as it was after it."""
    global ENABLED
    saved, ENABLED = ENABLED, on
    try:
        yield
    finally:
        ENABLED = saved


def nested(m: int, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 2-D transforms as matrices on flattened tiles: (A^T (x) A^T (m^2, n^2),
    G (x) G (n^2, 9), B^T (x) B^T (n^2, n^2)), Kronecker products of ``toom_cook(m)``'s.

    Flatten a tile row by row and the nested transform becomes one matrix: for any P, X, Q,
    flat(P X Q) = (P (x) Q^T) flat(X), so flat(B^T d B) = (B^T (x) B^T) flat(d), and the
    same for G g G^T and A^T M A. Applied to a whole layer's tiles at once, each transform
    is then one matrix product, (n^2, n^2) @ (n^2, tiles * C): a single pass over the
    tiles, where the 1-D matrices applied row by row and column by column took one pass
    per row of them, and NumPy's passes over megabytes of tiles were what the transforms'
    time was made of (benchmarks/RESULTS.md)."""
    at, g, bt = toom_cook(m)
    return (
        np.kron(at, at).astype(dtype),
        np.kron(g, g).astype(dtype),
        np.kron(bt, bt).astype(dtype),
    )


def _tiles_shape(h: int, w: int, padding: int, m: int) -> tuple[int, int, int, int]:
    """(Ho, Wo, tile rows, tile columns) of a stride-1 3x3 convolution with this padding."""
    ho, wo = h + 2 * padding - KERNEL + 1, w + 2 * padding - KERNEL + 1
    return ho, wo, -(-ho // m), -(-wo // m)


def input_tiles(x: np.ndarray, padding: int, m: int) -> np.ndarray:
    """V = B^T d B for every (m+2) x (m+2) input tile: x (N, C, H, W) -> V (n, n, N*th*tw, C).

    Tile (ty, tx) starts at padded input pixel (m*ty, m*tx); neighbouring tiles overlap by
    2 pixels. The padded input is zero beyond the image (the convolution's zero padding,
    and the right/bottom rows that complete the last tiles). Per image: the padded image
    channels last, its tiles' n^2 entries gathered (d[u, s] = the pixel at (u, s) of every
    tile, each tile's C values a run), and flat(V) = (B^T (x) B^T) @ flat(d).
    """
    bb = nested(m, x.dtype)[2]
    n_img, c, h, w = x.shape
    n = m + KERNEL - 1
    ho, wo, th, tw = _tiles_shape(h, w, padding, m)
    hp, wp = th * m + KERNEL - 1, tw * m + KERNEL - 1
    v = np.empty((n * n, n_img, th * tw * c), dtype=x.dtype)

    def work(worker: int, images: Sequence[int]) -> None:
        xp = cpu.scratch("winograd_padded", (hp, wp, c), x.dtype)  # channels-last
        xp[:padding] = 0  # zero only the ring around the image (the padding, and the
        xp[padding + h :] = 0  # rows and columns that complete the last tiles)
        xp[:, :padding] = 0
        xp[:, padding + w :] = 0
        d = cpu.scratch("winograd_tiles", (n, n, th, tw, c), x.dtype)
        for i in images:
            xp[padding : padding + h, padding : padding + w] = x[i].transpose(1, 2, 0)
            for u in range(n):
                for s in range(n):
                    d[u, s] = xp[u : u + m * th : m, s : s + m * tw : m]  # (th, tw, C)
            np.matmul(bb, d.reshape(n * n, th * tw * c), out=v[:, i])

    parallel(work, range(n_img))
    return v.reshape(n, n, n_img * th * tw, c)


def filter_tiles(weight: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T for every filter: weight (K, C, 3, 3) -> U (n, n, K, C).

    flat(U) = (G (x) G) (n^2, 9) @ the flattened filters (9, K*C), a transposed view that
    BLAS reads as it lies; ``cpu.batched_matmul`` shares its columns out over the pool."""
    k, c = weight.shape[:2]
    n = m + KERNEL - 1
    gg = nested(m, weight.dtype)[1]
    flat = weight.reshape(k * c, KERNEL * KERNEL).T
    return cpu.batched_matmul(gg[None], flat[None])[0].reshape(n, n, k, c)


def filter_gradient(du: np.ndarray, m: int) -> np.ndarray:
    """dW = G^T dU G, the transpose of ``filter_tiles``: dU (n, n, K, C) -> dW (K, C, 3, 3)."""
    n, _, k, c = du.shape
    gg = nested(m, du.dtype)[1]
    flat = du.reshape(n * n, k * c).T  # (K*C, n^2), a view; its rows shared out over the pool
    return cpu.batched_matmul(flat[None], gg[None])[0].reshape(k, c, KERNEL, KERNEL)


def _products(a: np.ndarray, b: np.ndarray, transpose_a: bool, transpose_b: bool) -> np.ndarray:
    """The n^2 matrix products op(a[xi, eta]) @ op(b[xi, eta]) (op: transpose or not), split
    over the pool's threads, each with single-threaded BLAS. a, b: (n, n, ., .)."""
    n = a.shape[0]
    rows = a.shape[3] if transpose_a else a.shape[2]
    cols = b.shape[2] if transpose_b else b.shape[3]
    out = np.empty((n, n, rows, cols), dtype=np.result_type(a, b))

    def work(worker: int, positions: Sequence[tuple[int, int]]) -> None:
        for xi, eta in positions:
            left = a[xi, eta].T if transpose_a else a[xi, eta]
            right = b[xi, eta].T if transpose_b else b[xi, eta]
            np.matmul(left, right, out=out[xi, eta])

    parallel(work, [(xi, eta) for xi in range(n) for eta in range(n)])
    return out


def conv2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: int, m: int = 2
) -> np.ndarray:
    """Stride-1 3x3 convolution by Winograd F(m x m, 3 x 3).

    x (N, C, H, W), weight (K, C, 3, 3), bias (K,) or None -> out (N, K, Ho, Wo)
    """
    n_img, _, h, w = x.shape
    k = weight.shape[0]
    n = m + KERNEL - 1
    aa = nested(m, x.dtype)[0]
    ho, wo, th, tw = _tiles_shape(h, w, padding, m)
    # M[xi, eta] = V[xi, eta] (T, C) @ U[xi, eta]^T (C, K), T = N*th*tw tiles
    prod = _products(input_tiles(x, padding, m), filter_tiles(weight, m), False, True)
    prod = prod.reshape(n * n, n_img, th * tw * k)
    out = np.empty((n_img, k, ho, wo), dtype=x.dtype)
    whole = (ho, wo) == (th * m, tw * m)  # no tile reaches past the image
    bias_k = None if bias is None else bias.reshape(k, 1, 1)

    def work(worker: int, images: Sequence[int]) -> None:
        y = cpu.scratch("winograd_out", (m * m, th * tw * k), x.dtype)
        if not whole:  # the image with its last tiles whole, to crop from
            full = cpu.scratch("winograd_image", (k, th, m, tw, m), x.dtype)
        for i in images:
            np.matmul(aa, prod[:, i], out=y)  # flat(Y) = (A^T (x) A^T) @ flat(M), per tile
            # y[u*m + v, (ty, tx, k)] is output pixel (m*ty + u, m*tx + v) of channel k:
            # back to NCHW one image at a time (a cache-sized transpose)
            tiles = y.reshape(m, m, th, tw, k).transpose(4, 2, 0, 3, 1)  # (K, th, m, tw, m)
            if whole:
                out[i].reshape(k, th, m, tw, m)[...] = tiles
            else:  # the last tiles cropped to the image
                full[...] = tiles
                out[i] = full.reshape(k, th * m, tw * m)[:, :ho, :wo]
            if bias_k is not None:
                out[i] += bias_k

    parallel(work, range(n_img))
    return out


def output_gradient_tiles(dout: np.ndarray, m: int) -> np.ndarray:
    """dM = A dY A^T for every m x m output tile: dout (N, K, Ho, Wo) -> (n, n, N*th*tw, K).

    The transpose of the forward's output transform (flat(Y) = (A^T (x) A^T) flat(M)), so
    flat(dM) = (A^T (x) A^T)^T @ flat(dY), applied to dout cut into the forward's tiles
    (zero where the last tiles reach past the image)."""
    aa = nested(m, dout.dtype)[0]
    n_img, k, ho, wo = dout.shape
    th, tw = -(-ho // m), -(-wo // m)
    n = m + KERNEL - 1
    dm = np.empty((n * n, n_img, th * tw * k), dtype=dout.dtype)
    whole = (ho, wo) == (th * m, tw * m)

    def work(worker: int, images: Sequence[int]) -> None:
        if not whole:
            padded = cpu.scratch("winograd_dout", (k, th * m, tw * m), dout.dtype)
            padded[:, ho:] = 0  # where the last tiles reach past the image
            padded[:, :, wo:] = 0
        tiles = cpu.scratch("winograd_dout_tiles", (m, m, th, tw, k), dout.dtype)
        for i in images:
            if whole:
                image = dout[i]
            else:
                padded[:, :ho, :wo] = dout[i]
                image = padded
            # tiles[u, v, ty, tx, k] = dY of pixel (m*ty + u, m*tx + v), channel k
            tiles[...] = image.reshape(k, th, m, tw, m).transpose(2, 4, 1, 3, 0)
            np.matmul(aa.T, tiles.reshape(m * m, th * tw * k), out=dm[:, i])

    parallel(work, range(n_img))
    return dm.reshape(n, n, n_img * th * tw, k)


def conv2d_backward(
    x: np.ndarray,
    weight: np.ndarray,
    dout: np.ndarray,
    padding: int,
    need_bias: bool,
    need_input: bool = True,
    m: int = 2,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of ``conv2d_forward``: (dx (N, C, H, W) or None, dW (K, C, 3, 3), db (K,) or None)."""
    # dU[xi, eta] = dM[xi, eta]^T (K, T) @ V[xi, eta] (T, C), then dW = G^T dU G.
    du = _products(output_gradient_tiles(dout, m), input_tiles(x, padding, m), True, False)
    dw = filter_gradient(du, m)
    db = dout.sum(axis=(0, 2, 3)) if need_bias else None
    if not need_input:
        return None, dw, db
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, K, 3, 3)
    dx = conv2d_forward(np.ascontiguousarray(dout), flipped, None, KERNEL - 1 - padding, m)
    return dx, dw, db
