"""How fast NumPy's BLAS multiplies the matrices minunet's convolutions give it.

    python benchmarks/blas.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/blas.py   # OpenBLAS's own pick

Every convolution of minunet ends in float32 matrix products (``minunet.accel.cpu``), so
their speed bounds the layer's. This times a large square-ish product and the products
of the U-Net's 3x3 layers (base 32, batch 8, 128 px): one block of rows, (pixels, kw*C) @
(kw*C, K), for the 8x8 and 16x16 layers a block of whole images, (pixels, 9C) @ (9C, K),
and for two few-channel layers one output row's product, (Wo, 9C) @ (9C, K),
each on one BLAS thread (as inside minunet's worker threads) and on all of them, and
prints GFLOP/s. The header names the kernels OpenBLAS loaded: run it with and without the
environment's ``OPENBLAS_CORETYPE`` to see what that choice costs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import blas_kernels, load_line  # noqa: E402

# (what, rows, inner, columns): (P, kw*C) @ (kw*C, K) for a row block, (P, 9C) @ (9C, K)
# for whole images
SHAPES = [
    ("large product", 4096, 4096, 1024),
    ("3x3 32->32 at 128 px, row block", 4096, 96, 32),
    ("3x3 64->32 at 128 px, row block", 2432, 192, 32),
    ("3x3 64->64 at 64 px, row block", 2048, 192, 64),
    ("3x3 128->128 at 32 px, row block", 1024, 384, 128),
    ("3x3 256->256 at 16 px, 4 images", 1024, 2304, 256),
    ("3x3 512->512 at 8 px, 4 images", 256, 4608, 512),
    ("3x3 16->16 at 128 px, a row", 128, 144, 16),
    ("3x3 32->32 at 64 px, a row", 64, 288, 32),
]


def gflops(a: np.ndarray, b: np.ndarray, repeats: int = 9) -> float:
    """Median GFLOP/s of a @ b into a preallocated output, after one warm-up call."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / sorted(times)[repeats // 2] / 1e9


def main() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    threads = max(
        lib.get("num_threads", 1) for lib in threadpool_info() if lib["user_api"] == "blas"
    )
    rng = np.random.default_rng(0)
    print(f"# float32 products, numpy {np.__version__}, {blas_kernels()}, {threads} BLAS threads")
    print(load_line())
    print(f"{'product':34s} {'shape':>22s}  1 thread GFLOP/s  {threads} threads GFLOP/s")
    for what, m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        with threadpool_limits(limits=1, user_api="blas"):
            one = gflops(a, b)
        print(f"{what:34s} {f'({m}x{k}) @ ({k}x{n})':>22s}  {one:16.0f}  {gflops(a, b):16.0f}")
    print(load_line())


if __name__ == "__main__":
    main()
