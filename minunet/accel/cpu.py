"""CPU fast paths: a small thread pool and a cache-blocked convolution for NumPy.

Why this module exists. NumPy runs every elementwise operation on one core and hands a
matrix product to OpenBLAS, whose speed depends on the product's shape. A convolution
written as "im2col of the whole batch, then one big product" (``minunet.core.im2col``) is
correct and simple, but on a small CPU it loses twice: the column matrix (9x the input)
does not fit in any cache, so building it runs at memory speed, and the copies that build
it use a single core. This module does the same arithmetic in a different order:

* **Only the horizontal taps are copied.** Zero-pad a block of image rows and flatten each
  channel's rows into one line of Wp = W + 2p values a row: pixel (r, w) is then position
  r*Wp + w, moving the kernel right by b is a shift by b, and moving it down by a is a
  shift by a*Wp. So the columns hold the kw horizontal shifts of every channel (kw*C rows,
  each a contiguous copy of a whole line), and each vertical tap a is a contiguous slice
  of them: kh products (K, kw*C) @ (kw*C, P) summed, instead of one (K, kh*kw*C)
  product: 3x less copying for a 3x3 kernel. The kw-1 positions at the end of each row
  straddle two input rows; their outputs are computed and dropped.
* **Channels first, nothing transposed.** Both the copies above and the products' results
  are in NCHW order (each channel's rows in runs), so a block's result goes into the
  output as runs of Wo values; the weight gradient reads the output gradient's block as
  a transposed matrix, in place. (An earlier version built channels-last columns; its
  transposing copies made it slower: benchmarks/RESULTS.md, 2026-12-01, 22:30-23:50 UTC.)
* **Few channels: one product per output row.** The kh products' sum and the copy out
  cost about 1/C of the products' arithmetic, a large share at 16 or 32 channels. There
  (``row_taps_apply``) the forward and the input gradient lay a block's rows out with each
  row's channels side by side, (rows, kw, C, Wo) for the kw horizontal taps: an output
  row's whole (kh*kw*C, Wo) im2col matrix is then a strided view (every step of its
  (a, b, c) index is Wo values), so each output row is one product, which BLAS writes
  straight into the NCHW output (``_row_products``). Its products are Wo columns wide,
  too narrow at 16 pixels.
* **Blocks of image rows.** Each block's columns (a few MB) are built, multiplied and
  dropped; the next block reuses the buffers. Blocks are large (megabytes, not a cache's
  kilobytes) because each one costs some twenty NumPy calls, and the threads wait on each
  other's GIL between calls.
* **Small images in blocks of whole images.** At 8x8 pixels and below (the deepest
  layers: hundreds of channels, megabytes of weights) a block of rows is a product of a
  few dozen pixels that reads all the weights again, and a fifth of its columns would
  be dropped ones. There a block is several whole images with full channels-last columns
  (kh*kw*C values per pixel), one (pixels, kh*kw*C) @ (kh*kw*C, K) product each.
* **One block per thread, single-threaded BLAS.** Two Python threads each build and
  multiply their own blocks (NumPy releases the GIL inside copies and matrix products);
  OpenBLAS is held to one thread meanwhile so that the two workers do not fight over the
  cores. The products scale with the threads; the copies (memory-bound) hardly do.
* **Weights tap-major.** (K, C, kh, kw) becomes (K, kh*kw, C), a copy of runs of C
  values, which each product reads in place as a strided matrix; the input gradient's
  flipped kernel and the weight gradient go through the same layout.
* **The backward reuses the forward.** For stride 1, the input gradient of a convolution
  is a convolution of the (padded) output gradient with the kernel flipped and its two
  channel axes swapped: a gather, so blocks never write to the same pixel. The weight
  gradient rebuilds each block's columns instead of keeping them all in memory.

``FastConv2d`` (``minunet.accel.conv``) calls these only for NumPy float arrays with
stride 1 and dilation 1 (``fast_conv_ok``); anything else goes through the im2col
formulation, with ``batched_matmul`` for its products. The reference ``Conv2d`` is what
the tests compare both against (``tests/test_fast_paths.py``). Figures for these choices
are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

# MINUNET_FAST_CPU=0 switches the CPU fast paths off (MINUNET_ACCEL=0: every fast path);
# tests use ``minunet.accel.fast_paths(cpu=False)``.
ENABLED = os.environ.get("MINUNET_FAST_CPU", "1") != "0"

# Below this many input channels (an RGB input), the weight gradient takes one product
# per output row (``_row_taps_weight_grad``) instead of the blocked path's kh products per
# block of rows: those are (kw*C, P) @ (P, K) with kw*C a handful and P thousands of
# pixels, a shape on which OpenBLAS is slow. At 128 px, batch 8, to 16 output channels,
# rows took 0.21 of the blocks' time at 3 channels, 0.45 at 8, 0.93 at 12 and 1.50 at 16;
# to 32, 0.25 at 3, 1.01 at 8, 1.16 at 12 (benchmarks/few_channels.py, RESULTS.md,
# 2026-12-02 23:11 UTC). Until then these layers took the im2col path, which made the
# U-Net's first layer 2.8x slower (8.6 ms against 3.0).
ROW_GRAD_CHANNELS = 12

# Bytes of columns built per block (see the module docstring: fewer, larger blocks won).
BLOCK_BYTES = 2 << 20
# Bytes of row taps per block in the forward and the input gradient (``_row_products``).
ROW_TAPS_BYTES = 1 << 20
# Where ``_row_products`` replaces ``_blocked_products`` (``row_taps_apply``): the blocked
# path's sums of its kh products and its copy out cost about 1/C of its arithmetic, so it
# loses at few channels; a row's product has only Wo columns, too few at 16 pixels.
ROW_TAPS_CHANNELS = 32
ROW_TAPS_WIDTH = 32
# ... but at least this many output pixels per block: a product with only a few dozen rows
# runs well below OpenBLAS's single-core speed (the U-Net's 8x8, 512-channel layers).
MIN_BLOCK_PIXELS = 128
# Images of at most this many output pixels (8x8) are blocked by whole images, with
# full columns: one product per block of several images. Blocked by rows, the deepest
# layers' products had a few dozen pixels each against megabytes of weights that every
# one of them read again; at 16x16 the rows won once they were channels first
# (benchmarks/RESULTS.md).
SMALL_PIXELS = 64
# Columns per block of whole images, at most: the weight gradient keeps one block per
# thread at once, so this sets the step's extra memory (16 MB took some 60 MB more at the
# step's peak than 8 MB: benchmarks/step_memory.py, RESULTS.md).
IMAGE_BLOCK_BYTES = 8 << 20


# Bytes of one channel group's input (N * group * H * W values) for the layers that split
# by channel (BatchNorm, the max-pool): about one core's L2 cache on the test machine,
# so a group stays there from one pass to the next (minunet.accel.batchnorm).
GROUP_BYTES = 1 << 20


FLOATS = (np.float32, np.float64)  # the dtypes the fast paths compute in


def applies(*arrays: Any) -> bool:
    """True when the CPU fast paths are on and every array is a plain NumPy array: not a
    CuPy array, nor a subclass of NumPy's (the tests' CuPy stand-in), which must take the
    device's road. Every CPU fast path asks this first."""
    return ENABLED and all(type(a) is np.ndarray for a in arrays)


def num_threads() -> int:
    """Worker threads for the fast paths: ``MINUNET_THREADS`` or the usable cores."""
    env = os.environ.get("MINUNET_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


class _Worker:
    """One pool thread. It sleeps on its own lock until ``parallel`` hands it a chunk (sets
    ``job``, releases ``start``) and releases ``done`` when the chunk is finished.

    Two plain locks per hand-off, and nothing else: ``concurrent.futures`` (which this
    replaced) builds a future, a queue item and a condition per call. A no-op call took
    109 us there (with threadpoolctl's limit) and 62 us for the two locks alone, in a loop
    of my own; a base-16 step makes some 150 (benchmarks/RESULTS.md, 2026-12-03 14:50 UTC).
    """

    def __init__(self, index: int) -> None:
        self.start, self.done = threading.Lock(), threading.Lock()
        self.start.acquire()
        self.done.acquire()
        self.job: tuple[Callable[[int, Sequence[Any]], None], int, Sequence[Any]] | None = None
        self.error: BaseException | None = None
        # daemon: a worker asleep on its lock must not keep the interpreter from exiting
        threading.Thread(target=self._serve, name=f"minunet_{index}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            self.start.acquire()
            fn, worker, chunk = self.job
            try:
                fn(worker, chunk)
            except BaseException as exc:  # handed to the caller, which re-raises it
                self.error = exc
            self.job = None
            self.done.release()

    def hand(
        self, fn: Callable[[int, Sequence[Any]], None], worker: int, chunk: Sequence[Any]
    ) -> None:
        self.job = (fn, worker, chunk)
        self.start.release()

    def wait(self) -> BaseException | None:
        """Block until the chunk handed over is done; its exception, if it raised one."""
        self.done.acquire()
        error, self.error = self.error, None
        return error


_workers: list[_Worker] = []  # grown on demand; the calling thread is always one more
_workers_busy = threading.Lock()  # held by the one parallel() call that uses the workers


def on_every_worker(fn: Callable[[], None]) -> None:
    """Run ``fn()`` once in each worker thread the pool has started (not in the caller),
    waiting for all of them: for tools that set something per thread, such as NumPy's
    allocation handler in ``benchmarks/step_allocations.py``. Re-raises a worker's error."""
    with _workers_busy:
        for worker in _workers:
            worker.hand(lambda _worker, _chunk: fn(), 0, ())
        errors = [worker.wait() for worker in _workers]
    for error in errors:
        if error is not None:
            raise error


def _forget_workers() -> None:
    """In a forked child the workers' threads are gone: start afresh there."""
    global _workers, _workers_busy
    _workers, _workers_busy = [], threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)

_blas: Any = None  # threadpoolctl's BLAS controllers, found once, or False where it is missing


def _blas_libraries() -> list[Any]:
    """threadpoolctl's controller of each BLAS library loaded (OpenBLAS, MKL), found once."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas = ThreadpoolController().select(user_api="blas").lib_controllers
        except ImportError:
            _blas = False
    return _blas or []


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """A context that holds OpenBLAS (or MKL) to one thread, or does nothing.

    The fast paths' products run inside it: in ``parallel``'s workers, and on their own
    (Winograd's filter transforms). After a product that OpenBLAS splits over its own
    threads, those threads keep spinning, waiting for more work, on the cores the pool's
    workers need: with the filter transforms outside it, an OpenBLAS thread took 544 ms of
    CPU in a 1005 ms training step (``benchmarks/step_threads.py``, benchmarks/RESULTS.md).
    (``parallel`` with a single item still lets BLAS use every core for that product.)

    Uses threadpoolctl (a dependency of minunet), whose libraries' set_num_threads it
    calls directly: its own ``limit`` context took 14 us a call, this 4. Should it be
    missing, the workers still run and BLAS oversubscribes the cores: correct, but slower
    (``benchmarks/step.py --reference`` times a step both ways). The thread count is the
    process's: two threads entering and leaving this at once can restore each other's.
    """
    libraries = _blas_libraries()
    saved = [lib.get_num_threads() for lib in libraries]
    for lib in libraries:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, threads in zip(libraries, saved, strict=True):
            lib.set_num_threads(threads)


def even_split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) as ``parts`` (at most n) contiguous ranges whose lengths differ by at most 1."""
    parts = max(1, min(n, parts))
    return [(n * j // parts, n * (j + 1) // parts) for j in range(parts)]


def channel_groups(x: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) channel ranges of about GROUP_BYTES of x (N, C, H, W) each."""
    n, c, h, w = x.shape
    per = max(1, GROUP_BYTES // max(1, n * h * w * x.itemsize))
    return [(c0, min(c0 + per, c)) for c0 in range(0, c, per)]


def parallel(fn: Callable[[int, Sequence[Any]], None], items: Sequence[Any]) -> None:
    """Split ``items`` into one contiguous chunk per thread and run ``fn(worker, chunk)``.

    The calling thread takes chunk 0 itself. Chunks (not single items) go to the pool, so
    the pool's overhead is paid once per thread, not once per block. ``worker`` (0, 1, ...)
    lets ``fn`` keep results of its own (partial sums) without locks.
    """
    if num_threads() == 1:
        # One worker asked for (MINUNET_THREADS=1, or one core): the blocks' products are
        # small, and OpenBLAS splitting each over its own threads is what the pool avoids:
        # with another program busy on a core, its threads wait for each other.
        with single_threaded_blas():
            fn(0, items)
        return
    threads = min(num_threads(), len(items))
    if threads <= 1:  # a single item: BLAS may use the cores for it
        fn(0, items)
        return
    chunks = [items[lo:hi] for lo, hi in even_split(len(items), threads)]
    errors: list[BaseException | None] = []
    with single_threaded_blas():
        if not _workers_busy.acquire(blocking=False):
            # The workers are another call's (a second thread's model, or this call
            # nested in a worker's chunk): run every chunk here, one after the other.
            for t, chunk in enumerate(chunks):
                fn(t, chunk)
            return
        try:
            while len(_workers) < threads - 1:
                _workers.append(_Worker(len(_workers)))
            workers = _workers[: threads - 1]
            for t, worker in enumerate(workers, start=1):
                worker.hand(fn, t, chunks[t])
            try:
                fn(0, chunks[0])
            finally:  # the workers may still be using what fn's caller owns: wait for them
                errors = [worker.wait() for worker in workers]
        finally:
            _workers_busy.release()
    for error in errors:
        if error is not None:
            raise error  # a worker's exception, re-raised in the caller


# -- per-thread scratch buffers -------------------------------------------------------------
_buffers: dict[tuple, np.ndarray] = {}


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A reusable uninitialised buffer owned by the calling thread (allocating MBs per
    block costs page faults every time; reusing keeps it warm in cache). Keyed by thread,
    so two models running in two threads never share one."""
    key = (threading.get_ident(), name, np.dtype(dtype).str)
    buf = _buffers.get(key)
    size = math.prod(shape)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        _buffers[key] = buf
    return buf[:size].reshape(shape)


# -- the blocked convolution ----------------------------------------------------------------
def fast_conv_ok(x: Any, stride: int, dilation: int, padding: int, kernel: int) -> bool:
    """True when ``conv2d_forward`` / ``conv2d_backward`` below apply."""
    return (
        applies(x)
        and x.dtype in FLOATS
        and stride == 1
        and dilation == 1
        and padding <= kernel - 1  # so the input gradient's padding k-1-p is >= 0
    )


def _row_blocks(
    n: int, ho: int, row_pixels: int, row_bytes: int, budget: int | None = None
) -> list[tuple[int, int, int]]:
    """(image, first row, end row) blocks of about ``budget`` bytes (BLOCK_BYTES unless
    given) of columns each, at row_bytes per output row, and at least one block per
    thread where the images have the rows for it (a batch of 1: one block would leave a
    core idle, or, with BLAS threading that one product, spinning BLAS threads on the
    cores the next layer needs)."""
    budget = BLOCK_BYTES if budget is None else budget
    rows = max(1, budget // max(1, row_bytes), -(-MIN_BLOCK_PIXELS // row_pixels))
    rows = min(ho, rows)
    if n * -(-ho // rows) < num_threads():
        rows = max(1, -(-ho // -(-num_threads() // n)))  # ceil(ho / blocks per image)
    rows = -(-ho // -(-ho // rows))  # equal blocks: 8 rows as 4 + 4, not 7 + 1
    return [(i, r, min(r + rows, ho)) for i in range(n) for r in range(0, ho, rows)]


def _row_columns(x: np.ndarray, i: int, r0: int, r1: int, kh: int, kw: int, pad: int) -> np.ndarray:
    """Columns of the horizontal taps for output rows [r0, r1) of image i, channels first.

    Returns cols (kw*C, L), rows ordered (b, c), L = (rows+kh-1)*Wp, Wp = W + 2*pad: the
    input rows these outputs see, zero-padded and flattened, so that pixel (r, w) of the
    block's padded input is column r*Wp + w, and cols[b*C + c, j] = that flattening's
    value at column j + b (horizontal tap b is a shift by b).

    The vertical taps cost nothing to build: moving the kernel down one row is moving Wp
    columns further, so for kernel row a the (kw*C, rows*Wp) matrix is the contiguous
    slice cols[:, a*Wp : a*Wp + rows*Wp]. That is kh times less copying than full
    im2col. Output column j = r*Wp + w is output pixel (r0 + r, w) for w < Wo; the kw-1
    columns at w >= Wo of every row straddle two input rows and are dropped. Every copy
    here moves runs of W or more values, each channel's rows as they lie in x: nothing
    is transposed.
    """
    _, c, h, w = x.shape
    wp = w + 2 * pad
    rows_in = r1 - r0 + kh - 1
    length = rows_in * wp
    flat = scratch("slab", (c, length + kw - 1), x.dtype)  # kw-1 more: the last row's taps
    slab = flat[:, :length].reshape(c, rows_in, wp)
    top = r0 - pad  # input row that slab row 0 holds (may be negative: padding)
    lo, hi = max(top, 0), min(top + rows_in, h)
    # Zero only the padding: rows above/below the image, columns left/right, the tail.
    slab[:, : lo - top] = 0
    slab[:, hi - top :] = 0
    slab[:, :, :pad] = 0
    slab[:, :, pad + w :] = 0
    flat[:, length:] = 0
    slab[:, lo - top : hi - top, pad : pad + w] = x[i, :, lo:hi]
    cols = scratch("cols", (kw, c, length), x.dtype)
    for b in range(kw):
        cols[b] = flat[:, b : b + length]
    return cols.reshape(kw * c, length)


def horizontal_taps(padded: np.ndarray, wo: int, kw: int) -> np.ndarray:
    """A read-only view v (..., Wo, kw, C) of a channels-last padded (..., Wo+kw-1, C)
    with v[..., w, b, c] = padded[..., w + b, c]: the kw horizontal taps of every output
    column, without a copy.

    For one pixel w the kw taps' kw*C values are one contiguous run of ``padded`` (the
    pixels w .. w+kw-1 lie side by side), so copying v copies runs of kw*C values, where
    one slice per tap (cols[..., b, :] = padded[..., b : b + Wo, :]) copied runs of C."""
    *outer, _, c = padded.shape
    step = padded.strides[-2]  # one pixel to the right, and one tap to the right: the same
    return np.lib.stride_tricks.as_strided(
        padded,
        shape=(*outer, wo, kw, c),
        strides=(*padded.strides[:-2], step, step, padded.strides[-1]),
        writeable=False,
    )


def tap_major(weight: np.ndarray) -> np.ndarray:
    """weight (K, C, kh, kw) -> taps (K, kh*kw, C): channels last for each kernel tap.

    The blocked products want each vertical tap a as a (K, kw*C) matrix with columns
    ordered (b, c): that is taps[:, a*kw:(a+1)*kw].reshape(K, kw*C), a strided view that
    BLAS reads in place, no copy; the small images' products read all of it,
    taps.reshape(K, kh*kw*C).T, as a transposed matrix. Building taps moves runs of C
    values; putting K last instead (weight.transpose(2, 3, 1, 0)) copies one value at a
    time, which the deep layers' megabytes of weights made a visible part of their time.
    """
    k, c, kh, kw = weight.shape
    return np.ascontiguousarray(weight.reshape(k, c, kh * kw).transpose(0, 2, 1))


def conv2d_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: int
) -> np.ndarray:
    """Stride-1 convolution, blocked over image rows and threads.

    x (N, C, H, W), weight (K, C, kh, kw), bias (K,) or None -> out (N, K, Ho, Wo)

    Per block of output rows: out_block (K, P) = sum over vertical offsets a of
    W_a (K, kw*C) @ cols[:, a*Wp : a*Wp + P] (kw*C, P), P = rows*Wp (``_row_columns``);
    for small images, whole images with channels-last columns (``_image_products``).
    """
    k, c, kh, kw = weight.shape
    taps = tap_major(weight)  # (K, kh*kw, C)
    if small_images(x, kh, kw, padding):
        return _image_products(x, taps.reshape(k, kh * kw * c).T, kh, kw, bias, padding)
    if row_taps_apply(x, kw, padding):
        return _row_products(x, taps.reshape(k, kh * kw * c), kh, kw, bias, padding)
    mats = [taps[:, a * kw : (a + 1) * kw].reshape(k, kw * c) for a in range(kh)]
    return _blocked_products(x, mats, kh, kw, bias, padding)


def row_taps_apply(x: np.ndarray, kw: int, padding: int) -> bool:
    """True where the blocks of rows take ``_row_products`` (one product per output row)
    rather than ``_blocked_products`` (kh products per block, summed): for x (N, C, H, W)
    of at most ROW_TAPS_CHANNELS channels, with output rows of at least ROW_TAPS_WIDTH
    pixels."""
    wo = x.shape[3] + 2 * padding - kw + 1
    return x.shape[1] <= ROW_TAPS_CHANNELS and wo >= ROW_TAPS_WIDTH


def small_images(x: np.ndarray, kh: int, kw: int, padding: int) -> bool:
    """True for images of at most SMALL_PIXELS output pixels (the U-Net's deep layers):
    their blocks are whole images, with full columns (``_image_products``)."""
    ho, wo = x.shape[2] + 2 * padding - kh + 1, x.shape[3] + 2 * padding - kw + 1
    return ho * wo <= SMALL_PIXELS


def _image_blocks(n: int, image_bytes: int) -> list[tuple[int, int]]:
    """(first image, end image) blocks of at most IMAGE_BLOCK_BYTES of columns each, the
    same number of them for every thread, so that ``parallel`` gives each thread an equal
    share of the batch (8 images in blocks of at most 3 are 2+2+2+2, not 3+3+2, which
    left one thread 5 images and the other 3)."""
    threads = num_threads()
    cap = max(1, IMAGE_BLOCK_BYTES // max(1, image_bytes))
    images_per_thread = -(-n // threads)  # ceiling divisions
    per_thread = -(-images_per_thread // cap)  # blocks per thread
    return even_split(n, threads * per_thread)


def image_columns(
    x: np.ndarray,
    i0: int,
    i1: int,
    kh: int,
    kw: int,
    padding: int,
    r0: int = 0,
    r1: int | None = None,
) -> np.ndarray:
    """Channels-last im2col of images [i0, i1): x (N, C, H, W) -> (B*R*Wo, kh*kw*C) with
    B = i1 - i0, each row one output pixel's patch ordered (a, b, c), as ``tap_major``
    orders the weights; the output rows [r0, r1) only (R = r1 - r0; all rows by default)."""
    _, c, h, w = x.shape
    nb = i1 - i0
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    r1 = ho if r1 is None else r1
    padded = scratch("padded", (nb, h + 2 * padding, w + 2 * padding, c), x.dtype)
    padded[:, :padding] = 0
    padded[:, padding + h :] = 0
    padded[:, :, :padding] = 0
    padded[:, :, padding + w :] = 0
    padded[:, padding : padding + h, padding : padding + w] = x[i0:i1].transpose(0, 2, 3, 1)
    cols = scratch("image_cols", (nb, r1 - r0, wo, kh, kw, c), x.dtype)
    for a in range(kh):
        cols[:, :, :, a] = horizontal_taps(padded[:, a + r0 : a + r1], wo, kw)
    return cols.reshape(nb * (r1 - r0) * wo, kh * kw * c)


def _image_products(
    x: np.ndarray, mat: np.ndarray, kh: int, kw: int, bias: np.ndarray | None, padding: int
) -> np.ndarray:
    """x (N, C, H, W) and mat (kh*kw*C, K), rows ordered (a, b, c) -> out (N, K, Ho, Wo).

    Per block of B whole images, one (B*Ho*Wo, kh*kw*C) @ (kh*kw*C, K) product. With
    fewer images than threads (a batch of 1, as prediction runs), each image's output
    rows are shared out instead: one product per thread, each with single-threaded BLAS.
    (Left to OpenBLAS, one product would use every core, and its threads would then spin
    on them while the next layer's workers wait: ``benchmarks/step_threads.py``.)"""
    n, c, h, w = x.shape
    k = mat.shape[1]
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    out = np.empty((n, k, ho, wo), dtype=x.dtype)
    if n >= num_threads():
        items = [(i0, i1, 0, ho) for i0, i1 in _image_blocks(n, ho * wo * kh * kw * c * x.itemsize)]
    else:
        parts = -(-num_threads() // n)  # row ranges per image
        items = [(i, i + 1, r0, r1) for i in range(n) for r0, r1 in even_split(ho, parts)]

    def work(worker: int, chunk: Sequence[tuple[int, int, int, int]]) -> None:
        for i0, i1, r0, r1 in chunk:
            cols = image_columns(x, i0, i1, kh, kw, padding, r0, r1)
            res = scratch("res", (cols.shape[0], k), x.dtype)
            np.matmul(cols, mat, out=res)
            if bias is not None:
                res += bias
            out[i0:i1, :, r0:r1] = res.reshape(i1 - i0, r1 - r0, wo, k).transpose(0, 3, 1, 2)

    parallel(work, items)
    return out


def _shifted_rows(x: np.ndarray, i: int, r0: int, pad: int, taps: np.ndarray) -> None:
    """Fill taps (kw, C, R, Wo), any strides, with the kw horizontal taps of R input rows of
    image i from row r0 - pad on: taps[b, c, r, w] = x[i, c, r0 - pad + r, w + b - pad], 0
    outside the image (the padding). The one copy behind ``_row_taps`` and
    ``_output_width_columns``, which hand it their buffers in their own layouts."""
    kw, _, rows_in, wo = taps.shape
    h, w = x.shape[2:]
    top = r0 - pad  # input row that taps' row 0 holds (negative: padding)
    lo, hi = max(top, 0), min(top + rows_in, h)
    taps[:, :, : lo - top] = 0  # rows above and below the image
    taps[:, :, hi - top :] = 0
    inside = taps[:, :, lo - top : hi - top]  # (kw, C, rows, Wo)
    for b in range(kw):
        # output column w reads input column w + b - pad: columns [w_lo, w_hi) are inside
        w_lo, w_hi = max(0, pad - b), min(wo, w + pad - b)
        w_hi = max(w_hi, w_lo)
        inside[b, :, :, :w_lo] = 0
        inside[b, :, :, w_hi:] = 0
        inside[b, :, :, w_lo:w_hi] = x[i, :, lo:hi, w_lo + b - pad : w_hi + b - pad]


def _row_taps(x: np.ndarray, i: int, r0: int, r1: int, kh: int, kw: int, pad: int) -> np.ndarray:
    """The kw horizontal taps of the input rows that output rows [r0, r1) of image i see,
    each row's channels side by side: X (rows + kh - 1, kw, C, Wo) with

        X[r, b, c, w] = x[i, c, r0 - pad + r, w + b - pad]   (0 outside the image).

    Returned as the view taps (rows, kh*kw*C, Wo) that ``_row_products`` multiplies:
    taps[r, (a*kw + b)*C + c, w] = X[r + a, b, c, w], the im2col matrix of output row
    r0 + r, its (a, b, c) ordered as ``tap_major`` orders the weights. In X, one step of
    c is Wo values, one of b is C*Wo, one of a (the next row) is kw*C*Wo: each a
    multiple of Wo, so the whole (a, b, c) index is a single stride of Wo values and an
    output row's kh*kw*C columns are one strided matrix, not a copy. Only the kw
    horizontal shifts are copied (kw copies of the rows, each a run of up to W values).
    """
    _, c, _, w = x.shape
    wo = w + 2 * pad - kw + 1
    taps = scratch("row_taps", (r1 - r0 + kh - 1, kw, c, wo), x.dtype)
    _shifted_rows(x, i, r0, pad, taps.transpose(1, 2, 0, 3))  # filled as (kw, C, rows, Wo)
    step = taps.strides[-1]
    return np.lib.stride_tricks.as_strided(
        taps,
        shape=(r1 - r0, kh * kw * c, wo),
        strides=(kw * c * wo * step, wo * step, step),
        writeable=False,
    )


def _row_products(
    x: np.ndarray, mat: np.ndarray, kh: int, kw: int, bias: np.ndarray | None, padding: int
) -> np.ndarray:
    """The forward's blocks: x (N, C, H, W) and mat (K, kh*kw*C), columns ordered (a, b, c)
    -> out (N, K, Ho, Wo).

    Per block of output rows, one batched product: for each row r of the block,
    out[i, :, r] (K, Wo) = mat (K, kh*kw*C) @ taps[r] (kh*kw*C, Wo) (``_row_taps``),
    written by BLAS straight into the NCHW output (a (K, Wo) matrix of it is rows of Wo
    values, Ho*Wo apart): no sum over the vertical taps, no dropped columns, no copy out.
    """
    n, c, h, w = x.shape
    k = mat.shape[0]
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    out = np.empty((n, k, ho, wo), dtype=x.dtype)
    blocks = _row_blocks(n, ho, wo, kw * c * wo * x.itemsize, ROW_TAPS_BYTES)

    def work(worker: int, chunk: Sequence[tuple[int, int, int]]) -> None:
        for i, r0, r1 in chunk:
            rows = out[i, :, r0:r1].transpose(1, 0, 2)  # (rows, K, Wo), a view of out
            np.matmul(mat, _row_taps(x, i, r0, r1, kh, kw, padding), out=rows)
            if bias is not None:
                rows += bias[:, None]

    parallel(work, blocks)
    return out


def _blocked_products(
    x: np.ndarray,
    mats: Sequence[np.ndarray],
    kh: int,
    kw: int,
    bias: np.ndarray | None,
    padding: int,
) -> np.ndarray:
    """The forward's blocks: x (N, C, H, W) and one (K, kw*C) matrix per vertical tap a,
    columns ordered (b, c) -> out (N, K, Ho, Wo)."""
    n, c, h, w = x.shape
    k = mats[0].shape[0]
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    wp = w + 2 * padding
    out = np.empty((n, k, ho, wo), dtype=x.dtype)
    blocks = _row_blocks(n, ho, wo, wp * kw * c * x.itemsize)

    def work(worker: int, chunk: Sequence[tuple[int, int, int]]) -> None:
        for i, r0, r1 in chunk:
            p = (r1 - r0) * wp  # the block's output columns, the dropped ones included
            cols = _row_columns(x, i, r0, r1, kh, kw, padding)
            # (K, kw*C) @ (kw*C, P) per kernel row: the result is channels first, each
            # channel's rows in a run, so it goes into the NCHW output without a transpose.
            res = scratch("res", (k, p), x.dtype)
            part = scratch("part", (k, p), x.dtype)
            np.matmul(mats[0], cols[:, :p], out=res)
            for a in range(1, kh):
                np.matmul(mats[a], cols[:, a * wp : a * wp + p], out=part)
                res += part
            valid = res.reshape(k, r1 - r0, wp)[:, :, :wo]  # drop the straddling columns
            if bias is None:
                out[i, :, r0:r1] = valid
            else:
                np.add(valid, bias[:, None, None], out=out[i, :, r0:r1])

    parallel(work, blocks)
    return out


def conv2d_backward(
    x: np.ndarray,
    weight: np.ndarray,
    dout: np.ndarray,
    padding: int,
    need_bias: bool,
    need_input: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of ``conv2d_forward``: (dx (N, C, H, W), dW (K, C, kh, kw), db (K,)); db is
    None without ``need_bias``, dx None without ``need_input``.

    dW_a^T = sum over blocks of cols[:, a*Wo : a*Wo + P] (kw*C, P) @ dout_block (P, K), each
    worker summing its own blocks (no shared writes), the per-worker sums added at the end
    (``_rows_weight_grad``); below ROW_GRAD_CHANNELS input channels, one product per
    output row instead (``_row_taps_weight_grad``); for small images, dout (K, B*Ho*Wo) @
    the images' full columns, dW's columns shared out between the workers
    (``_image_weight_grad``).
    dx = the forward's blocks over dout, with W flipped in space and C and K swapped, and
    padding k-1-p.
    """
    n, c, h, w = x.shape
    k, _, kh, kw = weight.shape
    ho, wo = dout.shape[2:]
    db = dout.sum(axis=(0, 2, 3)) if need_bias else None
    small = small_images(x, kh, kw, padding)
    if small:
        dw_taps = _image_weight_grad(x, dout, kh, kw, padding)  # (K, kh*kw*C)
    elif c < ROW_GRAD_CHANNELS:
        dw_taps = _row_taps_weight_grad(x, dout, kh, kw, padding)
    else:
        dw_taps = _rows_weight_grad(x, dout, kh, kw, padding)
    # (K, kh*kw, C) -> (K, C, kh, kw): runs of C values again
    dw_taps = dw_taps.reshape(k, kh * kw, c)
    dw = np.ascontiguousarray(dw_taps.transpose(0, 2, 1)).reshape(k, c, kh, kw)
    if not need_input:
        return None, dw, db
    # The flipped kernel's tap a as a (kw*K, C) matrix, rows (b, k): tap (kh-1-a, kw-1-b)
    # of the forward, its C and K swapped. Tap-major, this is a copy of runs of C values.
    flipped = np.ascontiguousarray(tap_major(weight)[:, ::-1].transpose(1, 0, 2))  # (kh*kw, K, C)
    dout = np.ascontiguousarray(dout)
    if small:
        dx = _image_products(dout, flipped.reshape(kh * kw * k, c), kh, kw, None, kh - 1 - padding)
    elif row_taps_apply(dout, kw, kh - 1 - padding):
        mat = flipped.reshape(kh * kw * k, c).T  # (C, kh*kw*K), columns (a, b, k): a view
        dx = _row_products(dout, mat, kh, kw, None, kh - 1 - padding)
    else:
        mats = [m.T for m in flipped.reshape(kh, kw * k, c)]  # (C, kw*K) each, a view
        dx = _blocked_products(dout, mats, kh, kw, None, kh - 1 - padding)
    return dx, dw, db


def _output_width_columns(
    x: np.ndarray, i: int, r0: int, r1: int, kh: int, kw: int, pad: int
) -> np.ndarray:
    """``_row_columns`` cut to the output's width: the columns of the horizontal taps for
    output rows [r0, r1) of image i, each input row Wo values long instead of Wp.

    Returns cols (kw*C, L), rows ordered (b, c), L = (rows + kh - 1) * Wo, with
    cols[b*C + c, r*Wo + w] = x[i, c, r0 - pad + r, w + b - pad] (0 outside the image).
    Kernel row a's (kw*C, rows*Wo) matrix is again the contiguous slice
    cols[:, a*Wo : a*Wo + rows*Wo], and now its column r*Wo + w is exactly output pixel
    (r0 + r, w): no straddling positions, so the output gradient's block (K, rows*Wo) is
    used as it lies. The price is that each tap's copy moves runs of up to W values
    (with the padding written in) where ``_row_columns`` moves whole lines.
    """
    _, c, _, w = x.shape
    wo = w + 2 * pad - kw + 1
    rows_in = r1 - r0 + kh - 1
    cols = scratch("width_cols", (kw, c, rows_in, wo), x.dtype)
    _shifted_rows(x, i, r0, pad, cols)
    return cols.reshape(kw * c, rows_in * wo)


def _rows_weight_grad(
    x: np.ndarray, dout: np.ndarray, kh: int, kw: int, padding: int
) -> np.ndarray:
    """dW in the tap-major layout (K, kh*kw*C), from blocks of rows: each worker sums its
    blocks' products into a partial sum of its own, and the partial sums are added.

    Per block, dW_a^T (kw*C, K) += cols[:, a*Wo : a*Wo + P] (kw*C, P) @ d^T (P, K), P =
    rows*Wo, with cols ``_output_width_columns`` and d (K, P) the block's output gradient
    as it lies in dout (channels first, each channel's rows one run): BLAS reads d^T as a
    transposed matrix in place, and nothing of dout is copied. (This made a transposing
    copy of the block to channels last, NumPy's slowest kind of copy, and later a copy
    widened to Wp with zeros at the dropped positions; without each the base-16 training
    step took less time: benchmarks/RESULTS.md, 2026-12-02 06:35 UTC and 15:45 UTC.)
    """
    n, c, _, w = x.shape
    k, ho, wo = dout.shape[1:]
    parts = np.zeros((num_threads(), kh, kw * c, k), dtype=x.dtype)

    def work(worker: int, chunk: Sequence[tuple[int, int, int]]) -> None:
        for i, r0, r1 in chunk:
            p = (r1 - r0) * wo
            cols = _output_width_columns(x, i, r0, r1, kh, kw, padding)
            d = dout[i, :, r0:r1].reshape(k, p)  # a view where dout's rows are contiguous
            for a in range(kh):
                parts[worker, a] += cols[:, a * wo : a * wo + p] @ d.T

    parallel(work, _row_blocks(n, ho, wo, wo * kw * c * x.itemsize))
    # (kh, kw*C, K) -> (K, kh*kw*C), columns ordered (a, b, c): a transposed view, which
    # conv2d_backward's one copy to (K, C, kh, kw) reads as it is
    return parts.sum(axis=0).reshape(kh * kw * c, k).T


def _row_taps_weight_grad(
    x: np.ndarray, dout: np.ndarray, kh: int, kw: int, padding: int
) -> np.ndarray:
    """dW in the tap-major layout (K, kh*kw*C), one product per output row: for inputs of
    few channels (below ROW_GRAD_CHANNELS).

    The forward's row products (``_row_products``) turned around: for output row r of
    image i, with taps[r] (kh*kw*C, Wo) that row's im2col matrix from ``_row_taps``,

        dW (K, kh*kw*C) += dout[i, :, r] (K, Wo) @ taps[r]^T (Wo, kh*kw*C)

    one batched product per block of rows (both operands strided views, read in place),
    its rows' results summed into the worker's partial sum; the partial sums are added at
    the end. Each product has all kh*kw*C taps and only Wo pixels: the shape OpenBLAS runs
    well, where the blocked weight gradient's had a handful of rows and thousands of pixels.
    """
    n, c = x.shape[:2]
    k, ho, wo = dout.shape[1:]
    width = kh * kw * c
    parts = np.zeros((num_threads(), k, width), dtype=x.dtype)

    def work(worker: int, chunk: Sequence[tuple[int, int, int]]) -> None:
        for i, r0, r1 in chunk:
            taps = _row_taps(x, i, r0, r1, kh, kw, padding)  # (rows, kh*kw*C, Wo)
            rows = dout[i, :, r0:r1].transpose(1, 0, 2)  # (rows, K, Wo), a view of dout
            res = scratch("row_weight_grad", (r1 - r0, k, width), x.dtype)
            np.matmul(rows, taps.transpose(0, 2, 1), out=res)
            parts[worker] += res.sum(axis=0)

    parallel(work, _row_blocks(n, ho, wo, kw * c * wo * x.itemsize, ROW_TAPS_BYTES))
    return parts.sum(axis=0)


def _image_weight_grad(
    x: np.ndarray, dout: np.ndarray, kh: int, kw: int, padding: int
) -> np.ndarray:
    """dW in the tap-major layout (K, kh*kw*C), for small images.

    Per chunk of images (the whole batch, unless its columns pass IMAGE_BLOCK_BYTES per
    thread), the chunk's columns (B*Ho*Wo, kh*kw*C) are built once, the images shared out
    between the threads; then dW's columns are shared out instead, each thread multiplying
    the whole chunk's output gradient (K, B*Ho*Wo) by its slice of the columns. Each
    product then has all the chunk's pixels, and no two threads write the same entry of
    dW: no partial sums of the whole (megabytes of) dW to add up.
    """
    n, c = x.shape[:2]
    k, ho, wo = dout.shape[1:]
    pixels, width, threads = ho * wo, kh * kw * c, num_threads()
    dw = np.zeros((k, width), dtype=x.dtype)
    per = max(1, IMAGE_BLOCK_BYTES * threads // (pixels * width * x.itemsize))
    chunks = even_split(n, -(-n // per))  # equal chunks: 8 images as 4 + 4, not 6 + 2
    slices = even_split(width, threads)  # dW's columns, one range per thread

    def add_chunk(i0: int, i1: int) -> None:  # images [i0, i1)
        cols = scratch("weight_grad_cols", ((i1 - i0) * pixels, width), x.dtype)
        d = scratch("weight_grad_dout", (k, i1 - i0, pixels), x.dtype)

        def build(worker: int, images: Sequence[int]) -> None:
            for i in images:
                cols[(i - i0) * pixels : (i - i0 + 1) * pixels] = image_columns(
                    x, i, i + 1, kh, kw, padding
                )
                d[:, i - i0] = dout[i].reshape(k, pixels)

        def multiply(worker: int, chunk: Sequence[tuple[int, int]]) -> None:
            for b0, b1 in chunk:
                dw[:, b0:b1] += d.reshape(k, -1) @ cols[:, b0:b1]

        parallel(build, range(i0, i1))
        parallel(multiply, slices)

    for i0, i1 in chunks:
        add_chunk(i0, i1)
    return dw


# -- products with a batch axis -------------------------------------------------------------
def batched_matmul(a: Any, b: Any) -> Any:
    """``a @ b`` with a batch axis: a (N, M, K) or (M, K), b (N, K, P) or (K, P) -> (N, M, P).

    On NumPy the batch is split over the pool's threads, one image's product per call with
    single-threaded BLAS, as the blocked convolution does. Left to itself, OpenBLAS splits
    every one of these small products over its own two threads, which wait for each other
    at the end of each product: when another process holds a core, that wait is a
    scheduler time slice, and layers made of such products (the U-Net's ConvTranspose2d)
    slow down many times over. Other arrays (CuPy) get a plain ``a @ b``.
    """
    if not applies(a, b):
        return a @ b
    if max(a.ndim, b.ndim) != 3 or min(a.ndim, b.ndim) < 2:
        return a @ b
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, p = a.shape[-2], b.shape[-1]
    out = np.empty((*batch, m, p), dtype=np.result_type(a, b))
    # Fewer images than threads (a batch of 1): each image's product is split along its
    # larger side, rows of a or columns of b, so that every thread has a part and BLAS
    # stays single-threaded (see single_threaded_blas: OpenBLAS's own threads would spin
    # on after the product, on the cores the next layer's workers need).
    parts = -(-num_threads() // batch[0]) if batch[0] < num_threads() else 1
    along_rows = m >= p
    items = [
        (i, lo, hi) for i in range(batch[0]) for lo, hi in even_split(m if along_rows else p, parts)
    ]

    def work(worker: int, chunk: Sequence[tuple[int, int, int]]) -> None:
        for i, lo, hi in chunk:
            ai = a[i] if a.ndim == 3 else a
            bi = b[i] if b.ndim == 3 else b
            if along_rows:
                np.matmul(ai[lo:hi], bi, out=out[i, lo:hi])
            else:
                np.matmul(ai, bi[:, lo:hi], out=out[i, :, lo:hi])

    parallel(work, items)
    return out
