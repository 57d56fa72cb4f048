# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 09 (optional): a fast convolution for a small CPU
#
# Lesson 01 turned a convolution into im2col and one matrix product. That code is
# correct, short, and what minunet runs on the GPU. On NumPy, though, `Conv2d` usually
# takes a different road, `minunet/accel/cpu.py`, which computes exactly the same sums in a
# different order and memory layout. Nothing in this lesson changes the maths; it is
# about *where the numbers sit in memory* and *which core moves them*.
#
# The plan:
#
# 1. why the textbook im2col convolution is slow on a small CPU;
# 2. columns of **flattened padded rows** that copy only the horizontal kernel taps,
#    derived in a dozen lines of NumPy and checked against `im2col` and `Conv2d`;
# 3. **blocks of image rows** spread over **two threads**, and minunet's
#    `cpu.conv2d_forward` / `cpu.conv2d_backward` checked against the im2col path;
# 4. the input gradient as a convolution with the **flipped kernel**;
# 5. a small timing on this machine.
#
# Notation as in lesson 01: `x (N, C, H, W)`, weight `w (K, C, kh, kw)`, bias `b (K,)`,
# output `(N, K, Ho, Wo)`, `P = Ho * Wo`. Everything here is stride 1, the only stride
# the U-Net's 3x3 convolutions use.

# %%
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from minunet.accel import cpu
from minunet.accel.conv import FastConv2d as Conv2d  # Conv2d with its fast paths
from minunet.core.im2col import col2im, im2col

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
rng = np.random.default_rng(0)
print(f"fast path switched on: {cpu.ENABLED} (MINUNET_FAST_CPU=0 switches it off)")
print(f"worker threads: {cpu.num_threads()} (MINUNET_THREADS, else the usable cores)")

# %% [markdown]
# ## 1. Why im2col is slow on a small CPU
#
# A CPU does arithmetic far faster than it can fetch numbers from main memory. It keeps
# recently used data in small, fast **caches** (L1, L2, L3); a computation is fast when
# the data it works on stays there. Take a realistic layer, the first block of a base-32
# U-Net on a batch of 8 images of 128x128 (the layer the benchmarks time), and compare
# the sizes of its input, of its im2col column matrix, and of this machine's caches.


# %%
def cache_sizes():
    """{"L1": bytes, "L2": bytes, "L3": bytes} of the data caches of CPU 0, read from
    Linux's /sys; empty where that is not readable (macOS, Windows, some containers)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    sizes = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()  # e.g. "1024K"
        except OSError:
            continue
        if kind != "Instruction":
            sizes[f"L{level}"] = int(size[:-1]) * units.get(size[-1], 1)
    return sizes


MiB = 2**20
n, c, k_out, side, kh, kw = 8, 32, 32, 128, 3, 3  # K = k_out output channels
itemsize = np.dtype(np.float32).itemsize
input_bytes = n * c * side * side * itemsize
cols_bytes = n * (c * kh * kw) * (side * side) * itemsize  # (N, C*kh*kw, P), padding 1

# The same ratio on a real (tiny) im2col: every input value is copied kh*kw times.
x_tiny = np.zeros((1, 4, 10, 10), np.float32)
assert im2col(x_tiny, kh, kw, 1, 1).nbytes == kh * kw * x_tiny.nbytes

print(f"layer: x ({n}, {c}, {side}, {side}) float32, 3x3 kernel, padding 1, {k_out} outputs")
print(f"  input          {input_bytes / MiB:6.0f} MiB")
print(f"  im2col columns {cols_bytes / MiB:6.0f} MiB  ({cols_bytes // input_bytes}x the input)")
caches = cache_sizes()
for name, size in caches.items():
    shown = f"{size / MiB:.0f} MiB" if size >= MiB else f"{size / 2**10:.0f} KiB"
    print(f"  {name} cache of this CPU: {shown}")
if not caches:
    print("  (this system does not say how large its caches are)")

# %% [markdown]
# The columns are many times larger than even the last-level cache. So im2col writes
# them out to main memory, and the matrix product then reads them all back: both run at
# the speed of memory, not of arithmetic. Two more costs come on top:
#
# - **The copies run on one core.** NumPy's slice copies (`cols[...] = x_pad[...]`) are
#   single-threaded; only the matrix product, handed to OpenBLAS, uses every core. On a
#   2-core machine the copying part of the work gets half the machine.
# - **The columns are kept for the backward pass.** `Conv2d`'s im2col path stores `cols`
#   until `backward` (lesson 02 needs them for `dw`), so a network holds one such
#   matrix per convolution from its forward pass until its backward pass.
#
# On a GPU, memory is fast and thousands of threads do the copying, so none of this
# hurts much. On a small CPU it does, and `minunet/accel/cpu.py` attacks each point in turn.
#
# ## 2. Flattened rows: copy only the horizontal taps
#
# Pad one image `(C, H, W)` with `p` zeros on every side, to `(C, Hp, Wp)`, and look at
# each channel's padded rows laid end to end, one long line of `Hp * Wp` numbers (which
# is how they already lie in memory). Pixel `(r, w)` sits at position `r * Wp + w` of
# its line. Two things then happen.
#
# **Every kernel tap is a shift.** Moving the kernel one pixel right is moving one
# position along the line; moving it one row down is moving `Wp` positions. So tap
# `(a, b)` of output position `j` reads position `j + a * Wp + b`: the whole image's
# values for one tap are one contiguous stretch of the line, a slice, not a gather.
#
# **The vertical taps are free.** Copy the line once per *horizontal* tap `b`, shifted by
# `b`, and stack the copies (all channels of each):
#
# $$\text{hcols}[(b, c),\; j] = \text{line}_c[j + b], \qquad j = 0 \ldots H_p W_p - 1,$$
#
# a matrix of shape `(kw*C, Hp * Wp)`. Kernel row `a` needs the same values `a * Wp`
# positions further on: columns `a*Wp` to `a*Wp + Ho*Wp - 1` of `hcols`, one contiguous
# slice, a *view*, no copy at all. With `w_a` the weights of kernel row `a` laid out as
# a `(K, kw*C)` matrix (columns in the same `(b, c)` order as hcols' rows), the
# convolution is `kh` products summed:
#
# $$\text{out}_{(K,\; H_o W_p)} = \sum_{a=0}^{k_h - 1} w_a\;
#   \text{hcols}[:,\; a W_p : a W_p + H_o W_p] + b,
#   \qquad w_a[k, (b, c)] = w[k, c, a, b].$$
#
# Output position `j = oh * Wp + ow` is output pixel `(oh, ow)` for `ow < Wo`. The last
# `kw - 1` positions of each row are not pixels: their taps run off the end of one padded
# row into the start of the next. They are computed, a few percent of the work, and
# dropped. In exchange the columns hold each input value `kw` times instead of `kh * kw`
# times (3x less copying for a 3x3 kernel), every copy moves whole lines, and the result
# is already channels first, `(K, pixels)`, as the output wants it. Here it is for one
# image.


# %%
def conv_flat_rows(x, weight, bias, padding):
    """Stride-1 convolution of one image by shifted rows. x (C, H, W) -> (K, Ho, Wo)."""
    k, c, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))  # (C, Hp, Wp)
    _, hp, wp = xp.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    # Each channel's padded rows as one line, with kw-1 zeros after it for the last taps.
    line = np.pad(xp.reshape(c, hp * wp), ((0, 0), (0, kw - 1)))
    # Horizontal taps only: hcols[(b, c), j] = line[c, j + b], kw shifted copies.
    hcols = np.concatenate([line[:, b : b + hp * wp] for b in range(kw)])  # (kw*C, Hp*Wp)
    # w_a for each kernel row a: (K, kw*C), columns ordered (b, c) like hcols' rows.
    wmats = weight.transpose(2, 0, 3, 1).reshape(kh, k, kw * c)
    p = ho * wp  # output positions, the kw-1 dropped ones of every row included
    out = sum(wmats[a] @ hcols[:, a * wp : a * wp + p] for a in range(kh)) + bias[:, None]
    return out.reshape(k, ho, wp)[:, :, :wo]  # drop the positions that straddle two rows


# %% [markdown]
# Checked against lesson 01's im2col product, and against minunet's `Conv2d` with the
# same weights, for several kernel sizes and paddings, in float64 so that only
# rounding (around 1e-14) can differ. Each line also says which road `Conv2d` took
# (its `_cache` records it) and how many numbers each kind of column matrix holds.

# %%
c_in, c_out, h, w = 9, 5, 7, 10
for ksize, padding in [(3, 1), (3, 0), (5, 2), (2, 1), (1, 0)]:
    x = rng.standard_normal((c_in, h, w))
    weight = rng.standard_normal((c_out, c_in, ksize, ksize))
    bias = rng.standard_normal(c_out)
    mine = conv_flat_rows(x, weight, bias, padding)

    cols = im2col(x[None], ksize, ksize, 1, padding)[0]  # (C*kh*kw, P), lesson 01
    reference = (weight.reshape(c_out, -1) @ cols + bias[:, None]).reshape(mine.shape)
    np.testing.assert_allclose(mine, reference, rtol=1e-10, atol=1e-10)

    conv = Conv2d(c_in, c_out, ksize, padding=padding, dtype=np.float64)
    conv.params["weight"].data[...] = weight
    conv.params["bias"].data[...] = bias
    np.testing.assert_allclose(mine, conv.forward(x[None])[0], rtol=1e-10, atol=1e-10)

    hp, wp = h + 2 * padding, w + 2 * padding
    print(
        f"{ksize}x{ksize} kernel, p={padding}: out {mine.shape}, == im2col and Conv2d"
        f" ({type(conv._cache).__name__}); columns: im2col {cols.size},"
        f" horizontal taps only {ksize * c_in * hp * wp}"
    )

# %% [markdown]
# ## 3. Blocks of image rows, and two threads
#
# Horizontal-tap columns for the whole batch would still be far larger than the caches
# (a third of the im2col figure above). So `cpu.py` never builds them for the whole
# batch. It cuts each image's output into **blocks of whole output rows**; for one block
# it copies the few input rows that block sees into a small zero-padded slab, builds the
# slab's horizontal-tap columns (`kw` shifted copies of its lines), runs the `kh`
# products, writes the result into the NCHW output without the dropped positions, and
# moves on to the next block *reusing the same buffers*, which stay warm in the cache.
#
# How many rows per block? Enough for about `cpu.BLOCK_BYTES` of columns, since every
# block costs some twenty NumPy calls of fixed overhead (the module docstring reports
# blocks of 128 KB running 4x slower than 2 MB ones on its 2-core test machine). But at
# least `cpu.MIN_BLOCK_PIXELS` output pixels, because a matrix product with very few
# rows does not reach OpenBLAS's full speed. If that leaves fewer blocks than threads
# (a batch of 1, as prediction runs), smaller blocks, so that no core sits idle. Then
# the rows are shared out evenly, so that 8 rows become two blocks of 4 rather than 7
# and 1. Here is that rule worked out for the layer of section 1, and for one image of
# it, and compared with the library's own block lists.

# %%
print(
    f"cpu.BLOCK_BYTES = {cpu.BLOCK_BYTES / MiB:g} MiB, cpu.MIN_BLOCK_PIXELS = {cpu.MIN_BLOCK_PIXELS}"
)
ho = wo = side  # padding 1 keeps the size
wp = side + 2  # padding 1: each padded row is 2 positions longer than the image's
row_bytes = wp * kw * c * itemsize  # the columns of one output row: Wp positions, kw*C values


def row_blocks(images, ho, wo, row_bytes, threads):
    """The blocks (image, first row, end row) for a batch of ``images``, by the rule above."""
    rows = max(1, cpu.BLOCK_BYTES // row_bytes, -(-cpu.MIN_BLOCK_PIXELS // wo))  # -(-a//b): ceil
    rows = min(ho, rows)
    if images * -(-ho // rows) < threads:  # fewer blocks than threads: smaller ones
        rows = max(1, -(-ho // -(-threads // images)))
    blocks_per_image = -(-ho // rows)
    rows = -(-ho // blocks_per_image)  # the same number of blocks, of (nearly) equal size
    return [(i, r, min(r + rows, ho)) for i in range(images) for r in range(0, ho, rows)]


blocks = row_blocks(n, ho, wo, row_bytes, cpu.num_threads())
assert blocks == cpu._row_blocks(n, ho, wo, row_bytes)  # the library's (internal) rule
rows, blocks_per_image = blocks[0][2] - blocks[0][1], len(blocks) // n
# One image of the U-Net's 32-pixel, 128-channel layer, on 2 threads: its 32 rows fit in
# one block, so they are cut in two, one block per thread.
deep_row_bytes = 32 * kw * 128 * itemsize
saved_threads = os.environ.get("MINUNET_THREADS")
os.environ["MINUNET_THREADS"] = "2"
try:
    one = cpu._row_blocks(1, 32, 32, deep_row_bytes)
finally:
    if saved_threads is None:
        del os.environ["MINUNET_THREADS"]
    else:
        os.environ["MINUNET_THREADS"] = saved_threads
assert one == row_blocks(1, 32, 32, deep_row_bytes, 2) == [(0, 0, 16), (0, 16, 32)]
print(f"{n} images of {side} px: {len(blocks)} blocks; one 32-px image on 2 threads: {one}")

block_cols = (rows + kh - 1) * wp * kw * c * itemsize  # a block also sees kh-1 extra rows
print(f"{rows} output rows per block, {blocks_per_image} blocks per image, {len(blocks)} in all")
print(f"columns of one block: {block_cols / MiB:.2f} MiB (im2col: {cols_bytes / MiB:.0f} MiB)")

# %% [markdown]
# A block's columns are a MiB or two: small enough to stay in the caches while they
# are used, where the whole batch's im2col columns went out to main memory and back.
#
# **Small images are the exception.** In the U-Net's deepest layers the images are 8x8
# and the channels number in the hundreds. A block of rows there has a few dozen output
# pixels, so each product is a few dozen columns wide, while the weights it multiplies
# are megabytes (512 -> 512 channels: 9.4 MB) that every such product reads again; and
# with rows of 8 pixels, 2 of every 10 positions would be dropped ones. At
# `cpu.SMALL_PIXELS` output pixels or fewer, a block is therefore a few *whole images*
# with *full* columns, channels last this time (one row per output pixel, the pixels of
# all the block's images one after another, so no position is dropped): kh*kw*C values
# per pixel in the order (a, b, c), and one product of (images*Ho*Wo, kh*kw*C) @
# (kh*kw*C, K) per block. The weights are laid
# out to match, `cpu.tap_major(weight)` (K, kh*kw, C). Below, those columns for two
# small images are checked against lesson 01's im2col, reordered.

# %%
xs = rng.standard_normal((2, 8, 6, 5))
print(
    f"cpu.SMALL_PIXELS = {cpu.SMALL_PIXELS}; a 6x5 output is small: {cpu.small_images(xs, 3, 3, 1)}"
)
full = cpu.image_columns(xs, 0, 2, 3, 3, 1)  # (2*6*5, 9*8), rows (n, y, x), columns (a, b, c)
ref = im2col(xs, 3, 3, 1, 1)  # (N, C*9, P), rows (c, a, b)
ref = ref.reshape(2, 8, 9, 30).transpose(0, 3, 2, 1).reshape(60, 72)  # -> (N*P, (a, b, c))
np.testing.assert_array_equal(full, ref)
wt = rng.standard_normal((4, 8, 3, 3))
np.testing.assert_array_equal(
    cpu.tap_major(wt).reshape(4, 72), wt.transpose(0, 2, 3, 1).reshape(4, 72)
)
print(f"image columns {full.shape} == im2col reordered; tap_major(weight) orders (a, b, c) too")

# %% [markdown]
# **Two threads.** Python threads normally take turns (the GIL), but NumPy lets go of
# the GIL while it copies arrays and while OpenBLAS multiplies matrices, so two threads
# that spend their time in those calls really do run on two cores at once.
# `cpu.parallel(fn, items)` splits the block list into one contiguous chunk per thread,
# hands all chunks but the first to a small thread pool, and runs the first chunk in the
# calling thread. Meanwhile it holds OpenBLAS to one thread (through threadpoolctl,
# where it is installed), so that the two workers do not each start two BLAS threads
# and fight over two cores. The module docstring reports a forward 1.56-1.59x faster
# on 2 threads than on 1 on its 2-core machine: the products scale, the memory-bound
# copies hardly do. Which blocks each worker gets:

# %%
chunks = {}


def record(worker, chunk):
    chunks[worker] = (chunk[0], chunk[-1], len(chunk))


cpu.parallel(record, blocks)
for worker, (first, last, count) in sorted(chunks.items()):
    print(f"worker {worker}: {count} blocks, from {first} to {last}  (image, first row, end row)")

# %% [markdown]
# The backward pass is cut the same way. From `cpu.ROW_GRAD_CHANNELS` input channels
# on (fewer are the RGB case at the end of section 4), the weight gradient of kernel row
# `a` is a sum over blocks of `hcols_block[:, a*Wo : a*Wo + P] @ dout_block^T (P, K)`,
# `P = rows*Wo`.
# Its columns are built a little differently from the forward's: each padded row is cut
# to the output's width `Wo` (each tap's copy takes the `Wo` columns it contributes,
# with the zero padding written in), so there are no dropped positions and `dout_block`
# is used as it lies in `dout`, with no copy (cut at `Wp`, `dout_block` would have to be
# widened to `Wp` positions a row with zeros at the dropped ones). Each worker adds its
# blocks into a partial sum of its own, so no two threads ever write to the same
# array, and the partial sums are added at the end. The columns are rebuilt block by
# block instead of being kept from the forward pass: the fast `Conv2d` keeps only its
# input `x` for `backward`, not 9x that.
#
# Now the check. The im2col path computes the forward and lesson 02's three gradients
# (`dw = sum_n dout[n] @ cols[n]^T`, `db`, `dx = col2im(w2^T dout)`); the fast path must
# give the same numbers. Blocks and threads only change the *order* of the work, so the
# answer must not depend on them: we run it with the library's block size and with one
# output row per block, on 1 and on 3 threads (more threads than cores is allowed, only
# slower). The context manager below sets `cpu`'s block size and `MINUNET_THREADS` for
# one check and puts them back afterwards.


# %%
@contextmanager
def fast_path_settings(block_bytes, min_block_pixels, threads, small_pixels=0):
    """Temporarily set the block size, the small-image threshold (0: blocks of rows, as
    this section describes) and the number of threads of minunet.accel.cpu."""
    saved = (
        cpu.BLOCK_BYTES,
        cpu.MIN_BLOCK_PIXELS,
        cpu.SMALL_PIXELS,
        os.environ.get("MINUNET_THREADS"),
    )
    cpu.BLOCK_BYTES, cpu.MIN_BLOCK_PIXELS = block_bytes, min_block_pixels
    cpu.SMALL_PIXELS = small_pixels
    os.environ["MINUNET_THREADS"] = str(threads)
    try:
        yield
    finally:
        cpu.BLOCK_BYTES, cpu.MIN_BLOCK_PIXELS, cpu.SMALL_PIXELS = saved[:3]
        if saved[3] is None:
            del os.environ["MINUNET_THREADS"]
        else:
            os.environ["MINUNET_THREADS"] = saved[3]


# At least cpu.ROW_GRAD_CHANNELS input channels: fewer take another weight gradient
# (one product per output row, the RGB case at the end of section 4).
nb, cb, kb, hb, wb = (2, 12, 6, 9, 11) if SMALL else (3, 16, 12, 24, 20)
assert cb >= cpu.ROW_GRAD_CHANNELS
x = rng.standard_normal((nb, cb, hb, wb))
weight = rng.standard_normal((kb, cb, 3, 3))
bias = rng.standard_normal(kb)
dout = rng.standard_normal((nb, kb, hb, wb))  # padding 1: the output is as large as x

# The reference: im2col, one product per image, and lesson 02's backward.
cols = im2col(x, 3, 3, 1, 1)  # (N, C*9, P)
w2 = weight.reshape(kb, -1)  # (K, C*9)
d = dout.reshape(nb, kb, -1)  # (N, K, P)
out_ref = (w2 @ cols + bias[:, None]).reshape(dout.shape)
dw_ref = np.einsum("nkp,nrp->kr", d, cols).reshape(weight.shape)
db_ref = d.sum(axis=(0, 2))
dx_ref = col2im(w2.T @ d, x.shape, 3, 3, 1, 1)

for block_bytes, min_pixels, threads in [
    (cpu.BLOCK_BYTES, cpu.MIN_BLOCK_PIXELS, 1),
    (1, 1, 1),  # one output row per block
    (1, 1, 3),
]:
    with fast_path_settings(block_bytes, min_pixels, threads):
        out = cpu.conv2d_forward(x, weight, bias, padding=1)
        dx, dw, db = cpu.conv2d_backward(x, weight, dout, padding=1, need_bias=True)
        used = cpu._row_blocks(nb, hb, wb, wb * 3 * cb * x.itemsize)
    for got, want in [(out, out_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)]:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    rows_per_block = used[0][2] - used[0][1]
    print(
        f"{len(used):3d} blocks of {rows_per_block:2d} rows, {threads} thread(s):"
        " out, dx, dw, db == the im2col path (float64, 1e-10)"
    )
# ... and blocks of whole images, as small images get them
with fast_path_settings(cpu.BLOCK_BYTES, cpu.MIN_BLOCK_PIXELS, 2, small_pixels=hb * wb):
    out = cpu.conv2d_forward(x, weight, bias, padding=1)
    dx, dw, db = cpu.conv2d_backward(x, weight, dout, padding=1, need_bias=True)
for name, got, want in [
    ("out", out, out_ref),
    ("dx", dx, dx_ref),
    ("dw", dw, dw_ref),
    ("db", db, db_ref),
]:
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=f"whole images: {name}")
print("blocks of whole images, 2 threads: out, dx, dw, db == the im2col path (float64, 1e-10)")

# %% [markdown]
# ### Few channels: one product per output row
#
# The flattened rows cost something that does not shrink with the channels. A block's
# `kh` products are summed, `kh - 1` passes over a `(K, P)` array, and the sum is then
# copied into the output without its dropped positions. Next to products of `2 * kw * C`
# multiply-adds per output value these passes are cheap at 256 channels, and a large part
# of the time at 16 or 32. Where a layer has few channels (`cpu.row_taps_apply`), `cpu.py`
# lays the block out differently so that they disappear.
#
# Copy the block's input rows once per horizontal tap `b`, as before, but keep **each
# row's channels side by side**: `X[r, b, c, w] = x_pad[c, r, w + b]`, an array
# `(rows, kw, C, Wo)`. In memory, one step of `c` is `Wo` numbers, one of `b` is `C * Wo`,
# and the next row is `kw * C * Wo`: every one a multiple of `Wo`. So the `kh * kw * C`
# rows of output row `r`'s im2col matrix, taken in the order `(a, b, c)`, are equally
# spaced, `Wo` numbers apart: row `(a, b, c)` starts at `((r + a) * kw * C + b * C + c) *
# Wo = r * kw * C * Wo + ((a * kw + b) * C + c) * Wo`. A matrix with equally spaced rows is
# one that BLAS reads in place (`np.lib.stride_tricks.as_strided` makes the view), so
#
# $$\text{out}[:, r, :]_{(K,\; W_o)} = W_{(K,\; k_h k_w C)}\; X_r{}_{(k_h k_w C,\; W_o)},
#   \qquad W[k, (a, b, c)] = w[k, c, a, b],$$
#
# one product per output row, with nothing to sum and nothing to drop. `out[:, r, :]` is
# itself a matrix with equally spaced rows (`Ho * Wo` apart in the NCHW output), so BLAS
# writes the result where it belongs, and one `np.matmul` over the stack of a block's
# views does the whole block. The price: each product is only `Wo` columns wide, too
# narrow for BLAS at 16 pixels. Here it is for one image, checked against im2col's
# matrices, against the library's views (`cpu._row_taps`) and against section 2.


# %%
def conv_row_products(x, weight, bias, padding):
    """Stride-1 convolution of one image, one product per output row. x (C, H, W) -> (K, Ho, Wo)."""
    k, c, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))  # (C, Hp, Wp)
    hp, wp = xp.shape[1:]
    ho, wo = hp - kh + 1, wp - kw + 1
    # X[r, b, c, w] = xp[c, r, w + b]: kw shifted copies, each row's channels side by side
    taps = np.stack([xp[:, :, b : b + wo] for b in range(kw)], axis=1)  # (C, kw, Hp, Wo)
    taps = taps.transpose(2, 1, 0, 3).copy()  # (Hp, kw, C, Wo), contiguous
    step = taps.strides[-1]
    rows = np.lib.stride_tricks.as_strided(  # rows[r] = output row r's (kh*kw*C, Wo) matrix
        taps, shape=(ho, kh * kw * c, wo), strides=(kw * c * wo * step, wo * step, step)
    )
    wmat = weight.transpose(0, 2, 3, 1).reshape(k, kh * kw * c)  # columns (a, b, c)
    out = np.empty((k, ho, wo))
    np.matmul(wmat, rows, out=out.transpose(1, 0, 2))  # out[:, r] = wmat @ rows[r]
    return out + bias[:, None, None], rows


c_in, c_out, h, w = 6, 4, 7, 9
for ksize, padding in [(3, 1), (3, 0), (5, 2), (2, 1), (1, 0)]:
    x = rng.standard_normal((c_in, h, w))
    weight = rng.standard_normal((c_out, c_in, ksize, ksize))
    bias = rng.standard_normal(c_out)
    mine, rows = conv_row_products(x, weight, bias, padding)
    ho, wo = mine.shape[1:]
    # im2col's matrix (C*kh*kw, Ho*Wo), rows (c, a, b), reordered to (a, b, c), one output row at a time
    cols = im2col(x[None], ksize, ksize, 1, padding)[0]
    cols = cols.reshape(c_in, ksize, ksize, ho, wo).transpose(3, 1, 2, 0, 4)
    np.testing.assert_array_equal(rows, cols.reshape(ho, ksize * ksize * c_in, wo))
    np.testing.assert_array_equal(rows, cpu._row_taps(x[None], 0, 0, ho, ksize, ksize, padding))
    np.testing.assert_allclose(
        mine, conv_flat_rows(x, weight, bias, padding), rtol=1e-10, atol=1e-10
    )
    print(
        f"{ksize}x{ksize} kernel, p={padding}: row views == im2col's == cpu._row_taps; out == flattened rows"
    )

# %% [markdown]
# And the library's forward and input gradient by this road, against the im2col reference
# of section 3 (`cpu.ROW_TAPS_WIDTH` set to 0 so that these small images take it), with
# blocks of every size and on 1 and 3 threads:

# %%
print(
    f"the rule: at most cpu.ROW_TAPS_CHANNELS = {cpu.ROW_TAPS_CHANNELS} channels, rows of at least"
    f" cpu.ROW_TAPS_WIDTH = {cpu.ROW_TAPS_WIDTH} pixels"
)
x = rng.standard_normal((nb, cb, hb, wb))
weight = rng.standard_normal((kb, cb, 3, 3))
dout = rng.standard_normal((nb, kb, hb, wb))
cols = im2col(x, 3, 3, 1, 1)
w2 = weight.reshape(kb, -1)
out_ref = (w2 @ cols).reshape(dout.shape)
dx_ref = col2im(w2.T @ dout.reshape(nb, kb, -1), x.shape, 3, 3, 1, 1)
saved = cpu.ROW_TAPS_WIDTH, cpu.ROW_TAPS_BYTES
for row_bytes, threads in [(saved[1], 1), (1, 1), (1, 3)]:  # 1 byte: one output row per block
    cpu.ROW_TAPS_WIDTH, cpu.ROW_TAPS_BYTES = 0, row_bytes
    try:
        assert cpu.row_taps_apply(x, 3, 1) and cpu.row_taps_apply(dout, 3, 1)
        with fast_path_settings(cpu.BLOCK_BYTES, 1, threads):
            out = cpu.conv2d_forward(x, weight, None, padding=1)
            dx, _, _ = cpu.conv2d_backward(x, weight, dout, padding=1, need_bias=False)
    finally:
        cpu.ROW_TAPS_WIDTH, cpu.ROW_TAPS_BYTES = saved
    np.testing.assert_allclose(out, out_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    print(
        f"blocks of {row_bytes} bytes of row taps, {threads} thread(s): out, dx == the im2col path"
    )

# %% [markdown]
# ## 4. The input gradient is a convolution with the flipped kernel
#
# Lesson 02 computed `dx` with col2im: every column entry is *added* back onto the input
# pixel it was copied from. That is a scatter: neighbouring patches overlap, so two
# blocks handled by two threads would add into the same pixels at once (a race). For
# stride 1 there is a better way to see `dx`.
#
# Write the forward with the padded input: $\text{out}[k, y, z] = \sum_{c,i,j}
# w[k,c,i,j]\, x_{\text{pad}}[c, y+i, z+j]$. Input pixel $(u, v)$ of $x_{\text{pad}}$
# is read by output $(u-i, v-j)$ through tap $(i, j)$, so
#
# $$dx_{\text{pad}}[c, u, v] = \sum_{k,i,j} w[k,c,i,j]\; \text{dout}[k,\, u-i,\, v-j],$$
#
# with `dout` taken as zero outside its `Ho x Wo`. Count the taps backwards,
# $i = k_h-1-i'$ and $j = k_w-1-j'$, and pad `dout` with $k_h-1$ zeros on every side:
#
# $$dx_{\text{pad}}[c, u, v] = \sum_{k,i',j'} V[c,k,i',j']\;
#   \text{dout}_{\text{pad}}[k,\, u+i',\, v+j'], \qquad
#   V[c,k,i',j'] = w[k,c,k_h-1-i',k_w-1-j'].$$
#
# That is an ordinary stride-1 convolution (lesson 01's formula) of the padded `dout`
# with the kernel `V`: `w` **flipped** in both spatial axes, with its **two channel axes
# swapped** (it maps `K` channels back to `C`). Finally `dx` is `dx_pad` without its
# border of width `p`; dropping `p` of the `kh-1` padding rows gives the same thing, so
#
# $$dx = \operatorname{conv}\big(\text{dout},\; V,\; \text{padding} = k_h - 1 - p\big)$$
#
# (for a square kernel, `kh = kw`; `k` is reserved for an output channel).
#
# Three consequences:
#
# - it is a **gather**: each `dx` pixel is computed by its own dot products, so blocks
#   and threads never write the same pixel;
# - it **reuses the fast forward**: `cpu.conv2d_backward` calls `cpu.conv2d_forward` on
#   `dout` with `weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)`;
# - it needs `p <= kh - 1` (a padding cannot be negative) and stride 1 (with stride `s`,
#   `dout` would first need `s - 1` zeros between its pixels). These are two of the
#   conditions under which `Conv2d` takes the fast path.
#
# The check, with the library's own pieces: a `Conv2d` from `K` to `C` channels with
# padding `kh-1-p`, loaded with the flipped kernel, must turn `dout` into exactly the
# input gradient that `Conv2d.backward` of the original layer returns, and into lesson
# 02's col2im formula. Our flattened-rows function from section 2 must agree as well.

# %%
for ksize, padding in [(3, 1), (3, 0), (5, 2), (5, 0), (2, 1), (1, 0)]:
    conv = Conv2d(cb, kb, ksize, padding=padding, bias=False, dtype=np.float64, rng=rng)
    out = conv.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = conv.backward(dout)

    weight = conv.params["weight"].data
    flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # V: (C, K, kh, kw)
    backwards = Conv2d(kb, cb, ksize, padding=ksize - 1 - padding, bias=False, dtype=np.float64)
    backwards.params["weight"].data[...] = flipped
    np.testing.assert_allclose(backwards.forward(dout), dx, rtol=1e-10, atol=1e-10)

    cols = im2col(x, ksize, ksize, 1, padding)
    dcols = weight.reshape(kb, -1).T @ dout.reshape(nb, kb, -1)
    dx_col2im = col2im(dcols, x.shape, ksize, ksize, 1, padding)
    np.testing.assert_allclose(dx, dx_col2im, rtol=1e-10, atol=1e-10)

    no_bias = np.zeros(cb)
    for i in range(nb):
        mine = conv_flat_rows(dout[i], flipped, no_bias, ksize - 1 - padding)
        np.testing.assert_allclose(mine, dx[i], rtol=1e-10, atol=1e-10)
    print(
        f"{ksize}x{ksize} kernel, p={padding}: conv(dout, flipped kernel, padding {ksize - 1 - padding})"
        " == Conv2d.backward == col2im == flattened rows by hand"
    )

# %% [markdown]
# ## When `Conv2d` takes the fast path
#
# `cpu.fast_conv_ok` decides, from the input and the layer's geometry: NumPy float32 or
# float64, stride 1, dilation 1 and padding at most `kh - 1` (section 4). Anything else
# (CuPy arrays, strides, float16) goes through im2col. The 3 channels of an RGB image
# take the fast path too, with one change inside: the weight gradient. Its blocked
# products would be `(kw*C, P) @ (P, K)` with `kw * C = 9` rows and thousands of pixels,
# a shape BLAS runs slowly, so below `cpu.ROW_GRAD_CHANNELS` input channels each output
# row gets its own product instead, `dout[i, :, r] (K, Wo) @ taps[r]^T (Wo, kh*kw*C)`,
# with the forward's row matrices read transposed (`cpu._row_taps_weight_grad`).

# %%
print(f"cpu.ROW_GRAD_CHANNELS = {cpu.ROW_GRAD_CHANNELS}")
x32 = np.zeros((1, 32, 16, 16), np.float32)
cases = [
    ("32 channels, 3x3, stride 1, padding 1", x32, 1, 1, 1, 3, True),
    ("RGB input: 3 channels", x32[:, :3], 1, 1, 1, 3, True),
    ("stride 2", x32, 2, 1, 1, 3, False),
    ("dilation 2", x32, 1, 2, 1, 3, False),
    ("padding 3 > kh - 1", x32, 1, 1, 3, 3, False),
    ("float16", x32.astype(np.float16), 1, 1, 1, 3, False),
]
for name, xx, stride, dilation, padding, ksize, expected in cases:
    ok = cpu.fast_conv_ok(xx, stride, dilation, padding, ksize)
    assert ok == (expected and cpu.ENABLED), name
    print(f"{name:40s} -> {'fast path' if ok else 'im2col path'}")

# The RGB case, checked as the blocks were: the forward and both gradients against the
# im2col path, in float64. 40 columns, so that the forward takes its row products too.
x3 = rng.standard_normal((2, 3, 10, 40))
w3 = rng.standard_normal((5, 3, 3, 3))
d3 = rng.standard_normal((2, 5, 10, 40))
cols3 = im2col(x3, 3, 3, 1, 1)  # (N, 27, P)
out3 = cpu.conv2d_forward(x3, w3, None, padding=1)
dx3, dw3, _ = cpu.conv2d_backward(x3, w3, d3, padding=1, need_bias=False)
d3_flat = d3.reshape(2, 5, -1)
for name, got, want in [
    ("out", out3, (w3.reshape(5, -1) @ cols3).reshape(d3.shape)),
    ("dw", dw3, np.einsum("nkp,nrp->kr", d3_flat, cols3).reshape(w3.shape)),
    ("dx", dx3, col2im(w3.reshape(5, -1).T @ d3_flat, x3.shape, 3, 3, 1, 1)),
]:
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=f"RGB input: {name}")
print("RGB input, 3 -> 5 channels: out, dw (one product per row), dx == the im2col path")

# %% [markdown]
# ## 5. Timing, on this machine
#
# The same layer run three ways, forward and backward: with the fast paths switched
# off (the im2col path), and with the fast path on one thread and on all of them. One
# more row times `im2col` alone, the copying part of the im2col forward. Each figure is
# the median of a few calls after one warm-up call.
#
# The one-thread rows hold OpenBLAS to one thread, as `cpu.parallel` does inside each
# of its workers, so that they compare ways of computing on one core. Left to itself,
# OpenBLAS splits every product over all the cores, and when another program is using
# one of them, each product waits for it at the end: the docstring of
# `cpu.batched_matmul` reports layers running about 10x slower that way on a busy
# 2-core machine.
#
# These times belong to this machine at this moment, so the cell prints the load
# average (how many programs wanted a core, on average, over the last 1, 5 and 15
# minutes) before and after. With another program holding a core, the second thread
# has little to run on. In small mode the layer is tiny and the times mean little:
# there the fixed cost of each NumPy call outweighs the work, and the fast path's extra
# calls per block can make it the slower one. `benchmarks/RESULTS.md` has the careful
# measurements, interleaved with PyTorch on the same machine.


# %%
@contextmanager
def fast_paths(enabled):
    """Switch minunet's CPU fast paths on or off for a while (what MINUNET_FAST_CPU sets)."""
    saved = cpu.ENABLED
    cpu.ENABLED = enabled
    try:
        yield
    finally:
        cpu.ENABLED = saved


def median_ms(fn, calls):
    """Median wall time of fn() in milliseconds, after one untimed warm-up call."""
    fn()  # allocates the buffers, starts the thread pool
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


tn, tc, tside = (1, 8, 16) if SMALL else (n, c, side)
calls = 2 if SMALL else 5
xt = rng.standard_normal((tn, tc, tside, tside), dtype=np.float32)
layer = Conv2d(tc, tc, 3, padding=1)
dt = rng.standard_normal((tn, tc, tside, tside), dtype=np.float32)


def step():
    layer.forward(xt)
    layer.backward(dt)


def load_average():
    """The 1, 5 and 15 minute load averages, where the system reports them."""
    if not hasattr(os, "getloadavg"):  # Windows
        return "not reported here"
    return "(1/5/15 min) " + " ".join(f"{v:.2f}" for v in os.getloadavg())


one_blas_thread = cpu.single_threaded_blas  # the helper cpu.parallel uses
threads = cpu.num_threads()
print(f"Conv2d 3x3 {tc}->{tc}, x ({tn}, {tc}, {tside}, {tside}) float32, median of {calls} calls")
print(f"load average {load_average()}")
timings = []  # (what, forward only or forward + backward, ms)
with fast_paths(False), one_blas_thread():
    timings.append(("im2col path, 1 thread", "fwd + bwd", median_ms(step, calls)))
    copies_ms = median_ms(lambda: im2col(xt, 3, 3, 1, 1), calls)
    timings.append(("  of which im2col alone", "fwd", copies_ms))
with fast_paths(True), one_blas_thread():
    with fast_path_settings(cpu.BLOCK_BYTES, cpu.MIN_BLOCK_PIXELS, 1):
        timings.append(("fast path, 1 thread", "fwd + bwd", median_ms(step, calls)))
if threads > 1:
    with fast_paths(True):
        timings.append((f"fast path, {threads} threads", "fwd + bwd", median_ms(step, calls)))
for name, what, ms in timings:
    print(f"  {name:28s} {what:9s} {ms:8.2f} ms")
print(f"load average {load_average()}")
if threads > 1:
    one, many = timings[2][2], timings[3][2]
    print(f"fast path, {threads} threads vs 1: {one / many:.2f}x the speed (above 1: faster)")

# %% [markdown]
# Read that last ratio together with the load averages. On a busy machine (a load near
# or above the number of cores before the cell ran) the second thread often finds no
# free core, and a ratio near 1 then says the machine was busy, not that the second
# thread does not help. The run stored here was made on a quiet 2-core machine (the load
# averages show it). Run the cell yourself; the careful figures are below.

# %% [markdown]
# What was measured carefully, for this very layer (3x3, 32 to 32 channels, input
# 8x32x128x128, forward and backward, float32), in the quiet-machine run of
# `benchmarks/RESULTS.md` (2026-11-28, a 2-core AMD EPYC, nothing else running):
# minunet 61.3 ms against PyTorch's 44.7 ms, 1.44x PyTorch's time; with the fast paths
# switched off minunet took 3.53x PyTorch's time, so the fast path made this layer about
# 2.5x faster. The gain shrinks as the channels grow and the images shrink (the same
# table: 64 channels at 64x64, 2.68x down to 1.39x; 256 channels at 16x16, 1.67x down
# to 1.31x), because there the products dominate and the copies matter less. Times on
# your machine will differ; compare ratios measured on one machine, never absolute
# times across machines.

# %% [markdown]
# ## 6. The other layers on both cores, and which kernels OpenBLAS runs
#
# Once the convolutions use both cores, the layers that NumPy runs on one core show up:
# BatchNorm with its ReLU (about seven full-size passes each way), the max-pool and
# the optimiser's update. Their work splits even more simply than a convolution's.
# Every channel of a BatchNorm or a max-pool is independent (its mean, variance and
# gradient sums run over (N, H, W) only), so `minunet.accel.batchnorm` and
# `minunet.accel.pool` run *the reference's own passes* on groups of channels of about a
# MB each, the groups shared out over the same pool of threads (`cpu.parallel`). Every
# parameter's update is independent too, so `minunet.accel.optim` deals the parameters
# out to the threads in bins of about equal size, and each thread runs the reference's
# `_update` on its own: the same code, so the same numbers to the bit.
#
# The check below runs a BatchNorm2d with its ReLU both ways in float64, with groups of
# one channel on two threads, and an Adam step both ways.

# %%
from minunet.accel import accelerate  # noqa: E402
from minunet.nn import BatchNorm2d, Parameter  # noqa: E402
from minunet.nn.optim import Adam  # noqa: E402

bn_ref = BatchNorm2d(6, relu=True, dtype=np.float64)
bn_ref.params["weight"].data[...] = rng.standard_normal(6)
bn_fast = accelerate(BatchNorm2d(6, relu=True, dtype=np.float64))
bn_fast.params["weight"].data[...] = bn_ref.params["weight"].data
xb = 2 + rng.standard_normal((3, 6, 7, 5))
db_out = rng.standard_normal(xb.shape)
saved_group = cpu.GROUP_BYTES
cpu.GROUP_BYTES = 1  # one channel per group: 6 groups over the threads
try:
    with fast_path_settings(cpu.BLOCK_BYTES, cpu.MIN_BLOCK_PIXELS, 2):
        out_fast, dx_fast = bn_fast.forward(xb), bn_fast.backward(db_out)
finally:
    cpu.GROUP_BYTES = saved_group
out_ref, dx_ref_bn = bn_ref.forward(xb), bn_ref.backward(db_out)
np.testing.assert_allclose(out_fast, out_ref, rtol=1e-12, atol=1e-12)
np.testing.assert_allclose(dx_fast, dx_ref_bn, rtol=1e-12, atol=1e-12)
for name in ("weight", "bias"):
    np.testing.assert_allclose(bn_fast.params[name].grad, bn_ref.params[name].grad, rtol=1e-12)
print(f"{type(bn_fast).__name__} in 6 channel groups on 2 threads == BatchNorm2d (float64, 1e-12)")

start = [rng.standard_normal((64, 9)), rng.standard_normal(5), rng.standard_normal((3, 3))]
finals = []
for fast in (False, True):
    params = [Parameter(a.copy()) for a in start]
    opt = accelerate(Adam(params, 1e-2)) if fast else Adam(params, 1e-2)
    with fast_path_settings(cpu.BLOCK_BYTES, cpu.MIN_BLOCK_PIXELS, 2):
        for _ in range(3):  # the first step creates the moments; the next two are threaded
            for p, a in zip(params, start, strict=True):
                p.grad[...] = np.cos(a + p.data)
            opt.step()
    finals.append([p.data for p in params])
for a, b in zip(*finals, strict=True):
    np.testing.assert_array_equal(a, b)
print(f"{type(opt).__name__}: 3 steps over the threads == Adam's, to the bit")

# %% [markdown]
# **Which kernels OpenBLAS runs.** Every product above ends in OpenBLAS, NumPy's BLAS,
# which picks a set of hand-written kernels for the CPU when it loads, unless the
# environment variable `OPENBLAS_CORETYPE` names one. A set written for an older CPU
# still runs on a newer one, just slower: on the 2-core AMD EPYC where these lessons were
# written, the machine's environment pins `OPENBLAS_CORETYPE=Haswell` (256-bit AVX2),
# where OpenBLAS left to itself picks `SkylakeX` (AVX-512), and the products run about
# twice as fast (`benchmarks/RESULTS.md`; the benchmarks print the kernels in their
# header). threadpoolctl, which `cpu.parallel` uses to hold OpenBLAS to one thread per
# worker, also says which kernels it loaded:

# %%
from threadpoolctl import threadpool_info  # noqa: E402

blas = [lib for lib in threadpool_info() if lib.get("internal_api") == "openblas"]
for lib in blas:
    print(
        f"OpenBLAS {lib.get('version')}: {lib.get('architecture')} kernels, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
if not blas:
    print("NumPy's BLAS here is not OpenBLAS")

# %% [markdown]
# ## What to remember
#
# - The fast path computes the same sums as im2col, in a different order; it is checked
#   against the im2col path to 1e-10 in float64, whatever the block size and thread
#   count.
# - On a small CPU a convolution's cost is moving memory, not arithmetic: im2col's
#   columns are 9x the input, far beyond the caches, and NumPy copies them on one core.
# - In a padded image flattened row after row, every kernel tap is a shift: copy the
#   `kw` horizontal shifts, and each kernel row `a` is a free slice
#   `hcols[:, a*Wp : a*Wp + P]`: each value copied `kw` times instead of `kh*kw`, `kh`
#   products summed, the `kw-1` positions a row that straddle two rows dropped.
# - With few channels, lay each row's channels side by side instead: an output row's
#   whole im2col matrix is then one strided view, so each output row is one product,
#   written straight into the output, with nothing summed or dropped.
# - Work in blocks of output rows with a couple of MiB of columns each, reusing the
#   buffers; split the blocks over threads, each with single-threaded BLAS (NumPy releases
#   the GIL in copies and products); keep per-thread partial sums instead of shared writes.
# - For stride 1, `dx` is the convolution of `dout` (padding `kh-1-p`) with the kernel
#   flipped and its channel axes swapped: a gather, safe to split, and the same fast code.
# - BatchNorm, the max-pool and the optimiser split even more simply: channel groups,
#   or parameters, each running the reference's own code on the pool's threads.
# - Check which kernels OpenBLAS runs: an older set than the CPU's costs up to half the
#   products' speed.
# - `MINUNET_FAST_CPU=0` switches the fast paths off; `MINUNET_THREADS` sets the threads.
#   The deep layers (many channels in and out, enough tiles) take Winograd F(4x4, 3x3)
#   or F(2x2, 3x3) instead (`minunet/accel/winograd.py`: 36 multiplications per 4x4
#   output tile instead of 144, or 16 per 2x2 tile instead of 36), where
#   `winograd.tile_for`'s measured rule says it pays; `MINUNET_WINOGRAD=0` switches it
#   off. The optional [lesson 13](13_winograd.ipynb) derives it.
#
# Next: [lesson 10](10_init_and_optimisers.ipynb), how the weights start and how the
# optimisers move them. Or back to [the reading order](README.md).

# %% [markdown]
# ## Exercises
#
# Fill in the stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solution:
# [solutions/09_fast_numpy.py](solutions/09_fast_numpy.py).
#
# 1. `my_flipped_kernel(weight)`: the kernel that turns the input gradient into a plain
#    convolution: for a stride-1 `Conv2d` with padding `p`, a `Conv2d` with padding
#    `k - 1 - p` and your kernel, applied to `dout`, must equal `Conv2d.backward(dout)`.

# %%
from exercises import check_my_flipped_kernel, report  # noqa: E402


def my_flipped_kernel(weight):
    """(K, C, k, k) -> (C, K, k, k)."""
    ...  # TODO


report(check_my_flipped_kernel, my_flipped_kernel)
