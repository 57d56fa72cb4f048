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
products when C and K are large (the U-Net's deep layers), if they stay in the cache:
the layer's tiles go through in blocks (``tile_blocks``), each block's input transform,
products and output transform done before the next block starts. Each 2-D transform is
two 1-D ones, B^T d B as B^T along every tile's columns, then along its rows: one product
of the small (n, n) matrix with all the block's tiles for each, 2 n^3 multiply-adds per
tile where the Kronecker form (``nested``: flat(B^T d B) = (B^T (x) B^T) flat(d), which
the small filter transform uses) takes n^4.

The matrices are built here from their interpolation points (``toom_cook``), not typed in:
the points 0, 1, -1 (and infinity) give F(2, 3), and 0, 1, -1, 2, -2 give F(4, 3). The
entries of F(4, 3)'s matrices are larger (up to 8 and 1/24), so its float32 result carries
more rounding than a direct convolution's: ``benchmarks/RESULTS.md`` gives the measured
error, and ``tests/test_winograd.py`` checks both against the im2col reference.

Backward, for the same layer:
* dx is a stride-1 convolution of dout with the kernel flipped and its channel axes
  swapped (padding 2 - p), so it is ``conv2d_forward`` again;
* dW: Y is linear in U, so dU[xi, eta] = dM[xi, eta] (K, tiles) @ V[xi, eta] (tiles, C)
  with dM = A dY A^T the output-gradient tiles taken back through the output transform,
  and dW = G^T dU G. The same n^2 products, with the roles exchanged.

Inside, V is channels last (a tile's C values contiguous) and M and dM channels first
(a channel's tiles contiguous): V's layout makes the gather of the tiles a copy of runs
of C values, M's makes the output's pixels runs of tiles, each product reading V in
place as a transposed matrix where it needs to. NCHW at the edges, as in
``minunet.accel.cpu``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

import numpy as np

from minunet.accel import cpu

KERNEL = 3  # F(m x m, 3 x 3): the only kernel size the U-Net's convolutions use

# On by default; MINUNET_WINOGRAD=0 switches it off (MINUNET_FAST_CPU=0 and MINUNET_ACCEL=0
# switch it off with the other CPU fast paths). Of the 8 layers of a base-32 U-Net to which
# ``tile_for``'s rule gives F(4x4), 7 took 18-34% less time than on the blocked path, and
# 64 -> 64 at 64 px 21% more, where two runs before had it 11-29% less
# (benchmarks/winograd_rule.py, benchmarks/RESULTS.md, 2026-12-02 17:30-18:05 UTC).
ENABLED = os.environ.get("MINUNET_WINOGRAD", "1") != "0"

# The rule (``tile_for``): entries (m, least channel intensity, least tiles), the first
# that a layer reaches gives its tile size m. A layer's n^2 products are (K, C) @ (C, T)
# each, T = the batch's m x m output tiles; its transforms touch T * (C + K) values per
# position, a few operations each. So Winograd pays where
# * h = C*K / (C + K), the products' multiply-adds per transformed value, is large: the
#   transforms are then small next to the products they save (at 64 channels in and out,
#   h = 32, F(4x4) was faster than the blocked path at 64 px and level at 32 px; at
#   h = 21, 64 -> 32 and 32 -> 64, the blocked path won or was level; at h = 16,
#   32 -> 32, F(4x4) won at 128 px, 8192 tiles, and lost at 64 px, 2048: the base-32
#   step took 0.953 and 0.959 of its time with that entry as without), and
# * T is large: each product reads all of U's C*K values once, and the filter
#   transforms cost C*K*n^2*9 whatever the batch (at 8 px a batch of 8 has 32 4x4 tiles:
#   F(4x4) lost to F(2x2) there, whose 2x2 tiles are 128).
# F(2x2) saves fewer products (16 for 36 against 36 for 144), so it needs more channels:
# at 8 px, 512 -> 512 (h = 256) and 256 -> 512 (h = 171) F(2x2) won; 256 -> 256 (h = 128)
# and 128 -> 256 (h = 85) took 4% and 4% less time with it than on the blocked path in
# one run, 7% and 19% less in another (so F(2x2) from h = 80, not 160 as before; the
# base-16 step took 0.970 and 0.994 of its time with it). Measured with
# benchmarks/winograd_rule.py at batch 8 (every 3x3 convolution of base-16 and base-32
# U-Nets, RESULTS.md, 2026-12-02 17:30-17:45 and 22:52 UTC; the thresholds of h were 64
# and 160 until the blocks of tiles made the transforms cheaper; the 32 -> 32 entry and
# the step: benchmarks/conv_before_after.py --module winograd --step, 18:46 and 23:17).
RULE = ((4, 32, 128), (4, 16, 8192), (2, 80, 128))  # (m, least h, least T)

# F(4x4, 3x3)'s float32 error: its larger transform entries (up to 8 and 1/24) round more.
# Measured on the U-Net's layers (winograd_rule.py --error, RESULTS.md, 2026-12-02 17:12 UTC
# section): at most 1.4e-5 of an output's largest value (1.5e-5 with the earlier Kronecker
# transforms), where the blocked path's is 9e-7 and F(2x2)'s 1.1e-6; float32 itself
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
    same for G g G^T and A^T M A. The filter transform (``filter_tiles``) is applied this
    way: one product for all the filters, 9 values each. For the input and output tiles
    the 1-D matrices, applied along the columns and then the rows of a block's tiles (two
    products), take n / 2 times fewer multiply-adds (``block_input_tiles``); lesson 13
    checks all three matrices."""
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


# Bytes of transformed input tiles V (n^2 * T * C values) per block of the forward, and
# at least this many tiles per block. A block's tiles go through the input transform,
# the n^2 products and the output transform while they are in the cache, where the
# whole-layer arrays (tens of MB at 64 channels) made each transform a pass through
# memory (benchmarks/RESULTS.md, the 2026-12-02 17:12 UTC section). The products want many tiles (a
# (K, C) @ (C, T) product with T of a few dozen runs far below BLAS's speed), the cache
# few: the deep layers (hundreds of channels) get more bytes than the budget.
BLOCK_BYTES = 1 << 20
MIN_TILES = 64

# A block's arrays take turns in three scratch buffers per thread (``cpu.scratch``): each
# step writes into a buffer whose contents the steps after it no longer read, so the
# buffers are three, not one per step (which held 139 MB in a base-32 step, where the
# blocked path's own buffers were 25 MB: benchmarks/RESULTS.md, 2026-12-02 17:12 UTC).
# In order: the input rows S1, channels last S2, tiles S1, B^T along b S2, along a S1
# (= V); the products S3; A^T along eta S2, along xi S1, whole tiles S2 (only where the
# last tiles reach past the image). dW: dout's rows S1, its tiles S2, A along v S1, along
# u S3 (= dM, kept while V is built in S1 and S2), a later block's products S2.
S1, S2, S3 = "winograd_1", "winograd_2", "winograd_3"


def tile_blocks(
    n_img: int, th: int, tw: int, c: int, k: int, m: int, itemsize: int
) -> list[tuple[int, int, int, int]]:
    """(first image, end image, first tile row, end tile row) blocks of about BLOCK_BYTES
    of V (n^2 * T * C values) each, and at least MIN_TILES and K tiles: bands of tile rows
    of one image where an image has more tiles than that, else several whole images, and
    at least one block per thread. Every block reads all of U (n^2 * K * C values, MBs in
    the deep layers): with T >= K tiles, V is at least as large, so that U's reading is a
    small part of the block's work."""
    n = m + KERNEL - 1
    tiles = max(BLOCK_BYTES // (n * n * c * itemsize), MIN_TILES, k)
    threads = cpu.num_threads()
    if th * tw <= tiles:  # whole images, the same number of blocks for every thread
        per = min(max(1, tiles // (th * tw)), -(-n_img // threads))
        return [(i0, i1, 0, th) for i0, i1 in cpu.even_split(n_img, -(-n_img // per))]
    rows = max(1, tiles // tw)
    rows = -(-th // -(-th // rows))  # equal bands: 8 tile rows as 4 + 4, not 7 + 1
    return [(i, i + 1, t0, min(t0 + rows, th)) for i in range(n_img) for t0 in range(0, th, rows)]


def block_input_tiles(
    x: np.ndarray, padding: int, m: int, block: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """V = B^T d B for the tiles of one block (of ``tile_blocks``; None: the whole batch):
    x (N, C, H, W) -> V (n^2, T, C), channels last, T = images * tile rows * tile
    columns, a scratch buffer of the calling thread.

    Tile (ty, tx) starts at padded input pixel (m*ty, m*tx) (neighbouring tiles overlap by
    2 pixels); the padded input is zero beyond the image. The block's input rows go
    channels last (each tile's C values a run), every tile's n x n pixels are gathered
    into d[a, b] (T, C), and B^T is applied along b, then along a: two products of the
    small (n, n) B^T with all the block's tiles at once.
    """
    n_img, c, h, w = x.shape
    n = m + KERNEL - 1
    _, _, th, tw = _tiles_shape(h, w, padding, m)
    i0, i1, t0, t1 = (0, n_img, 0, th) if block is None else block
    bt = toom_cook(m)[2].astype(x.dtype)
    nb, tb = i1 - i0, t1 - t0
    t = nb * tb * tw
    rows_in, wp = m * tb + KERNEL - 1, m * tw + KERNEL - 1
    top = m * t0 - padding  # the input row that band row 0 holds (negative: padding)
    lo, hi = max(top, 0), min(top + rows_in, h)
    # The rows as they lie (runs of W), then channels last from that cached copy: read
    # straight from x, at x's channel stride (H*W values, often a power of two), the
    # transposing copy thrashed the cache.
    rows = cpu.scratch(S1, (nb, c, hi - lo, w + 1), x.dtype)[..., :w]
    rows[...] = x[i0:i1, :, lo:hi]
    band = cpu.scratch(S2, (nb, rows_in, wp, c), x.dtype)
    band[:, : lo - top] = 0  # zero only the padding around the image
    band[:, hi - top :] = 0
    band[:, :, :padding] = 0
    band[:, :, padding + w :] = 0
    band[:, lo - top : hi - top, padding : padding + w] = rows.transpose(0, 2, 3, 1)
    s = band.strides  # d[a, b, image, ty, tx, c] = band[image, m*ty + a, m*tx + b, c]
    tiles = np.lib.stride_tricks.as_strided(
        band, (n, n, nb, tb, tw, c), (s[1], s[2], s[0], m * s[1], m * s[2], s[3]), writeable=False
    )
    d = cpu.scratch(S1, (n, n, t * c), x.dtype)  # rows is done with
    d.reshape(tiles.shape)[...] = tiles
    z = cpu.scratch(S2, (n, n, t * c), x.dtype)  # band is
    np.matmul(bt, d, out=z)  # along b: z[a, eta] = sum_b BT[eta, b] d[a, b]
    v = cpu.scratch(S1, (n * n, t, c), x.dtype)  # d is
    np.matmul(bt, z.reshape(n, n * t * c), out=v.reshape(n, n * t * c))  # along a
    return v


def conv2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: int, m: int = 2
) -> np.ndarray:
    """Stride-1 3x3 convolution by Winograd F(m x m, 3 x 3).

    x (N, C, H, W), weight (K, C, 3, 3), bias (K,) or None -> out (N, K, Ho, Wo)

    Per block of tiles (``tile_blocks``): V (n^2, T, C) (``block_input_tiles``), the n^2
    products M[xi, eta] (K, T) = U[xi, eta] (K, C) @ V[xi, eta]^T (C, T), channels first
    (BLAS reads V transposed in place), and Y = A^T M A, A^T applied along eta then xi,
    laid out as Y[u] (K, T*m), its last axis (tile, v): Y[u][:, (t, v)] is output pixel
    (m*ty + u, m*tx + v) of tile t, so a tile row's pixels are already in order and go
    into the block's rows of the NCHW output as runs.
    """
    n_img, _, h, w = x.shape
    k, c = weight.shape[:2]
    n = m + KERNEL - 1
    at = toom_cook(m)[0].astype(x.dtype)
    u_all = filter_tiles(weight, m).reshape(n * n, k, c)
    ho, wo, th, tw = _tiles_shape(h, w, padding, m)
    out = np.empty((n_img, k, ho, wo), dtype=x.dtype)

    def work(worker: int, blocks: Sequence[tuple[int, int, int, int]]) -> None:
        for block in blocks:
            i0, i1, t0, t1 = block
            nb, tb = i1 - i0, t1 - t0
            v = block_input_tiles(x, padding, m, block)
            t = v.shape[1]  # nb * tb * tw tiles
            prod = cpu.scratch(S3, (n * n, k, t), x.dtype)
            np.matmul(u_all, v.transpose(0, 2, 1), out=prod)
            # A^T along eta with v last: y1[xi, (k, t), v] = sum_eta M[xi, eta, (k, t)]
            # AT[v, eta], M read transposed in place. With v last, a tile row's pixels
            # (tx, v) are one run of tw*m values once u is applied.
            y1 = cpu.scratch(S2, (n, k * t, m), x.dtype)
            np.matmul(prod.reshape(n, n, k * t).transpose(0, 2, 1), at.T, out=y1)
            y = cpu.scratch(S1, (m, k, nb, tb, tw * m), x.dtype)  # v is done with
            np.matmul(at, y1.reshape(n, k * t * m), out=y.reshape(m, k * t * m))  # along xi
            # y[u, k, image, ty, (tx, v)] is pixel (m*ty + u, m*tx + v): one copy, in runs
            # of tw*m values, into the block's rows, through a buffer where the last tiles
            # reach past the image. (With v first, this was m*m copies, one per (u, v),
            # each writing every m-th value: the base-16 step took 3% more time,
            # benchmarks/RESULTS.md, 2026-12-03.)
            rows = y.transpose(2, 1, 3, 0, 4)  # (images, K, tile rows, u, (tx, v))
            r0, r1 = m * t0, min(m * t1, ho)
            dst = out[i0:i1, :, r0:r1]
            if (r1 - r0, wo) == (m * tb, m * tw):
                dst.reshape(nb, k, tb, m, wo)[...] = rows
            else:
                full = cpu.scratch(S2, (nb, k, tb, m, tw * m), x.dtype)  # y1 is done with
                full[...] = rows
                dst[...] = full.reshape(nb, k, tb * m, tw * m)[:, :, : r1 - r0, :wo]
            if bias is not None:
                dst += bias[:, None, None]

    cpu.parallel(work, tile_blocks(n_img, th, tw, c, k, m, x.itemsize))
    return out


def block_output_gradient_tiles(
    dout: np.ndarray, m: int, block: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """dM = A dY A^T for the m x m output tiles of one block (of ``tile_blocks``; None: the
    whole batch): dout (N, K, Ho, Wo) -> dM (n^2, K, T), channels first, a scratch buffer
    of the calling thread.

    The transpose of the forward's output transform (Y = A^T M A), applied along each
    tile's columns v, then its rows u, to dout cut into the forward's tiles (zero where
    the last tiles reach past the image).
    """
    n_img, k, ho, wo = dout.shape
    n = m + KERNEL - 1
    th, tw = -(-ho // m), -(-wo // m)
    i0, i1, t0, t1 = (0, n_img, 0, th) if block is None else block
    at = toom_cook(m)[0].astype(dout.dtype)
    nb, tb = i1 - i0, t1 - t0
    t = nb * tb * tw
    r0, r1 = m * t0, min(m * t1, ho)
    rows = cpu.scratch(S1, (nb, k, m * tb, m * tw), dout.dtype)
    rows[:, :, r1 - r0 :] = 0  # where the last tiles reach past the image
    rows[:, :, :, wo:] = 0
    rows[:, :, : r1 - r0, :wo] = dout[i0:i1, :, r0:r1]
    s = rows.strides  # dy[u, v, k, image, ty, tx] = rows[image, k, m*ty + u, m*tx + v]
    tiles = np.lib.stride_tricks.as_strided(
        rows, (m, m, k, nb, tb, tw), (s[2], s[3], s[1], s[0], m * s[2], m * s[3]), writeable=False
    )
    dy = cpu.scratch(S2, (m, m, k * t), dout.dtype)
    dy.reshape(tiles.shape)[...] = tiles
    half = cpu.scratch(S1, (m, n, k * t), dout.dtype)  # rows is done with
    np.matmul(at.T, dy, out=half)  # along v: half[u, eta] = sum_v AT[v, eta] dy[u, v]
    dm = cpu.scratch(S3, (n * n, k, t), dout.dtype)  # not S1 or S2: V is built there next
    np.matmul(at.T, half.reshape(m, n * k * t), out=dm.reshape(n, n * k * t))  # along u
    return dm


def filter_tile_gradient(x: np.ndarray, dout: np.ndarray, padding: int, m: int) -> np.ndarray:
    """dU (n, n, K, C) = sum over tiles of dM[xi, eta] (K, T) @ V[xi, eta] (T, C), block by
    block (``block_output_gradient_tiles``, ``block_input_tiles``), each worker adding its
    blocks into a partial sum of its own (its first block's products are that partial sum);
    the partial sums are added at the end."""
    n_img, c, h, w = x.shape
    k = dout.shape[1]
    n = m + KERNEL - 1
    _, _, th, tw = _tiles_shape(h, w, padding, m)
    parts: list[np.ndarray] = []  # one per worker that ran (list.append is atomic)

    def work(worker: int, chunk: Sequence[tuple[int, int, int, int]]) -> None:
        part = None
        for block in chunk:
            dm = block_output_gradient_tiles(dout, m, block)
            v = block_input_tiles(x, padding, m, block)
            if part is None:
                part = np.matmul(dm, v)
            else:
                du = cpu.scratch(S2, (n * n, k, c), x.dtype)  # V is in S1, dM in S3
                np.matmul(dm, v, out=du)
                part += du
        if part is not None:
            parts.append(part)

    cpu.parallel(work, tile_blocks(n_img, th, tw, c, k, m, x.itemsize))
    total = parts[0]
    for part in parts[1:]:
        total += part
    return total.reshape(n, n, k, c)


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
    # dU[xi, eta] = dM[xi, eta] (K, T) @ V[xi, eta] (T, C), then dW = G^T dU G.
    dw = filter_gradient(filter_tile_gradient(x, dout, padding, m), m)
    db = dout.sum(axis=(0, 2, 3)) if need_bias else None
    if not need_input:
        return None, dw, db
    flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, K, 3, 3)
    dx = conv2d_forward(np.ascontiguousarray(dout), flipped, None, KERNEL - 1 - padding, m)
    return dx, dw, db
