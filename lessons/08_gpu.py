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
# # Lesson 08: the same code on a GPU
#
# Lesson 00 promised that every layer is written once, against `xp`. This lesson cashes
# that in: move a U-Net and a batch to CuPy, and the *same* forward and backward run on
# an NVIDIA GPU. Where there is no CuPy or no GPU, the cells say so and carry on.

# %%
import os
import time
from pathlib import Path

import numpy as np

from minunet.accel.cuda.emulator import CXX, emulate
from minunet.accel.cuda.im2col import COL2IM, IM2COL, col2im_kernel, im2col_kernel
from minunet.core.backend import BackendError, get_backend, gpu_available, to_device, to_numpy
from minunet.core.im2col import col2im, im2col
from minunet.model import UNet
from minunet.nn.losses import SoftmaxCrossEntropy

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
HAVE_GPU = gpu_available()
try:
    get_backend("cupy")
except BackendError as exc:
    print(f"No GPU backend here. minunet says:\n  {exc}")
    print("\nThe GPU cells below will describe what they would do instead of running.")
else:
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    print(f"CuPy {cp.__version__} on {props['name'].decode()}")

# %% [markdown]
# ## What "the same code on CuPy" means
#
# CuPy arrays live in GPU memory. Every NumPy-style call on them (`xp.matmul`, slicing,
# `+=`, `xp.exp`, `.sum(axis=...)`) launches one or more **CUDA kernels**: small programs
# run by thousands of GPU threads at once. For minunet's layers that means:
#
# - **matrix products** (`W2 @ cols` in Conv2d, the 2x2 transposed convolution) go to
#   cuBLAS, NVIDIA's tuned matrix library: this is where the GPU's arithmetic
#   throughput pays off, and where nearly all the FLOPs are;
# - **everything else** (slices, `+=`, `xp.exp`, `.sum(axis=...)`) is one kernel per
#   call. That is correct, but wasteful where one idea takes many calls: im2col is a
#   padded copy plus `kh*kw` slice copies (10 launches for a 3x3 kernel), BatchNorm a dozen
#   passes over memory. Those do little arithmetic per byte, so their speed is set by
#   memory bandwidth and by how many passes they make.
#
# So minunet replaces the wasteful ones with short CUDA kernels of its own: im2col and
# col2im (one launch each), max-pool forward and backward, BatchNorm with its ReLU (three
# launches each way, where the array code takes a dozen full passes and some twenty tiny
# launches), softmax cross-entropy (one), and the optimiser update (one per parameter).
# They live in `minunet/accel/cuda/`, one module per family, each beside the fast class
# that runs it (a subclass of the reference layer, loss or optimiser in `minunet/nn`,
# which stays plain array code); `minunet.accel.accelerate` gives an object its fast
# class, and the `UNet` does that to itself. `MINUNET_CUDA_KERNELS=0` switches the
# kernels off, to compare.
#
# CuPy 14 dropped its cuDNN bindings, so none of this calls cuDNN: every convolution is
# minunet's own im2col + cuBLAS. Two costs do not exist on the CPU. Each kernel launch
# costs the CPU a few microseconds, and a U-Net step launches hundreds, so small
# networks are limited by launch overhead rather than by the GPU. And reading a number
# back (`float(loss)`) makes the CPU wait for the GPU to finish; minunet's loss returns
# a 0-d device array for that reason, and the training loop decides when to read it.
#
# ## The check: the GPU computes what the CPU computes
#
# Same weights (`model.to(cp)` copies parameters, gradients and buffers), same input.
# In float64 the two must agree to rounding; in float32 to about 1e-4 relative, since
# cuBLAS sums in a different order than OpenBLAS.

# %%
size = 32 if SMALL else 64
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, size, size)).astype(np.float64)
y = rng.integers(0, 3, (2, size, size))

cpu_model = UNet(3, 3, base_channels=8, depth=3, dtype=np.float64, seed=0)
loss_fn = SoftmaxCrossEntropy()
cpu_loss = float(loss_fn(cpu_model.forward(x), y))
cpu_model.zero_grad()
cpu_dx = cpu_model.backward(loss_fn.backward())
print(f"NumPy: loss {cpu_loss:.6f}")

if HAVE_GPU:
    gpu_model = UNet(3, 3, base_channels=8, depth=3, dtype=np.float64, seed=0).to(cp)
    xg, yg = to_device(x, cp), to_device(y, cp)
    gpu_loss = float(loss_fn(gpu_model.forward(xg), yg))
    gpu_model.zero_grad()
    gpu_dx = gpu_model.backward(loss_fn.backward())
    print(f"CuPy:  loss {gpu_loss:.6f}")
    np.testing.assert_allclose(gpu_loss, cpu_loss, rtol=1e-10)
    np.testing.assert_allclose(to_numpy(gpu_dx), cpu_dx, rtol=1e-7, atol=1e-12)
    cpu_grads = dict(cpu_model.named_parameters())
    for name, p in gpu_model.named_parameters():
        np.testing.assert_allclose(to_numpy(p.grad), cpu_grads[name].grad, rtol=1e-7, atol=1e-10)
    print("every gradient agrees between NumPy and CuPy")
else:
    print("CuPy:  skipped (no GPU here); on a GPU machine this cell compares every gradient.")

# %% [markdown]
# ## A CUDA kernel, read top to bottom
#
# Here is minunet's im2col kernel, exactly as the GPU compiles it. `T` is the element type
# (`float` or `double`, set by a `typedef` in front). `for_each(e, total)` is a
# *grid-stride loop*: the GPU starts a grid of threads, thread number `t` takes work
# items `t`, `t + (threads in the grid)`, and so on, so any grid size covers every item.
# One work item is one entry of the column matrix: the kernel turns the flat index `e`
# back into `(n, c, i, j, oh, ow)` and copies the one input pixel that entry needs, or 0
# where the patch hangs over the padding (no padded copy of the input is ever made).

# %%
print(IM2COL.text)

# %% [markdown]
# col2im goes the other way, and here the GPU asks for care. The obvious kernel, one
# thread per column entry adding its value onto its input pixel, has many threads adding
# to the same pixel at once (a 3x3 kernel's patches overlap), a *race*: the additions
# must be atomic or some are lost. minunet's col2im is a **gather** instead: one thread
# per *input* pixel finds the (at most `kh*kw`) column entries that copied it and adds
# them up. Every thread writes one pixel of its own, so nothing races:

# %%
print(COL2IM.text)

# %% [markdown]
# ## Running a CUDA kernel without a GPU
#
# Every minunet kernel follows that rule: one thread computes one output and never talks
# to another thread (no shared memory, no atomics). Such a kernel can also be run on the
# CPU, one thread after another, and gives the GPU's answer. `minunet.accel.cuda.emulator` does
# just that: it compiles the kernel's source with the C++ compiler, with the CUDA built-ins
# (`blockIdx`, `threadIdx`, ...) as ordinary variables, and calls it once per thread. The
# test suite runs every kernel this way against the NumPy code on every CI run. Here, the
# kernels against lesson 01's im2col and col2im:

# %%
xs = rng.standard_normal((2, 3, 6, 7))
if CXX is None:
    print("no C++ compiler here (g++ or c++): the emulator cannot run")
else:
    with emulate():
        cols_kernel = im2col_kernel(xs, 3, 3, stride=2, padding=1)
        back_kernel = col2im_kernel(cols_kernel, xs.shape, 3, 3, stride=2, padding=1)
    np.testing.assert_array_equal(cols_kernel, im2col(xs, 3, 3, 2, 1))
    np.testing.assert_array_equal(back_kernel, col2im(cols_kernel, xs.shape, 3, 3, 2, 1))
    print("the CUDA im2col and col2im, run on the CPU, equal the NumPy ones to the last bit")

# %% [markdown]
# That was float64, the precision of the checks. Training runs the float32 kernels, so
# they are compared too. im2col only copies, so it must be exact in any precision. Each
# col2im output is a sum of at most `kh*kw = 9` column entries, and the kernel may add
# them in another order than NumPy: both are then only as good as float32 summation.
# The classical bound for a sum of `n` terms added one by one in floating point is
#
# $$\Big|\widehat{\textstyle\sum_i a_i} - \textstyle\sum_i a_i\Big|
#   \le (n - 1)\,\varepsilon\, \textstyle\sum_i |a_i| \;(+ O(\varepsilon^2)),
#   \qquad \varepsilon = 2^{-24} \text{ (float32's unit roundoff)},$$
#
# so with `n = kh*kw` and `sum |a_i|` = col2im of `|cols|` (computed in float64), every
# pixel gets its own tolerance. Both the emulated kernel and NumPy's float32 col2im must
# stay within it of the float64 sum of the same float32 numbers.

# %%
if CXX is None:
    print("no C++ compiler here (g++ or c++): the emulator cannot run")
else:
    x32 = rng.standard_normal((2, 8, 9, 7)).astype(np.float32)
    unit_roundoff = np.finfo(np.float32).eps / 2  # 2**-24
    for stride, padding in [(1, 1), (2, 1)]:
        with emulate():
            cols32 = im2col_kernel(x32, 3, 3, stride=stride, padding=padding)
        np.testing.assert_array_equal(cols32, im2col(x32, 3, 3, stride, padding))  # copies
        # col2im of im2col(x) would add up copies of one value (exact for 1, 2 or 4
        # copies): random columns, like the gradients col2im really receives, instead.
        cols32 = rng.standard_normal(cols32.shape).astype(np.float32)
        with emulate():
            back32 = col2im_kernel(cols32, x32.shape, 3, 3, stride=stride, padding=padding)
        exact = col2im(cols32.astype(np.float64), x32.shape, 3, 3, stride, padding)
        abs_sum = col2im(np.abs(cols32.astype(np.float64)), x32.shape, 3, 3, stride, padding)
        bound = (9 - 1) * unit_roundoff * abs_sum  # per pixel: (n - 1) eps sum |a_i|, n = 9
        numpy32 = col2im(cols32, x32.shape, 3, 3, stride, padding)
        for name, got in [("kernel", back32), ("NumPy", numpy32)]:
            assert got.dtype == np.float32
            excess = np.abs(got - exact) - bound
            assert excess.max() <= 0, f"{name} col2im float32 beyond its rounding bound"
        print(
            f"float32, stride {stride}: im2col kernel == NumPy exactly; col2im kernel within"
            f" (kh*kw - 1) eps sum|a| of the exact sum (worst error {np.abs(back32 - exact).max():.1e},"
            f" largest bound {bound.max():.1e})"
        )

# %% [markdown]
# ## Timing a training step, honestly
#
# GPU calls return before the GPU has finished: they only *queue* kernels. A timer
# around them measures the queueing. To time the work, synchronise
# (`cp.cuda.Device().synchronize()`) before reading the clock, and run a warm-up step
# first (the first call compiles kernels and sets up cuBLAS).


# %%
def time_steps(model, x, y, xp, steps):
    def step():
        loss = loss_fn(model.forward(x), y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        return loss

    step()  # warm-up
    if xp is not np:
        xp.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if xp is not np:
        xp.cuda.Device().synchronize()
    return (time.perf_counter() - start) / steps


side, batch, base = (32, 2, 8) if SMALL else (128, 8, 32)
steps = 1 if SMALL else 3
xb = rng.standard_normal((batch, 3, side, side)).astype(np.float32)
yb = rng.integers(0, 3, (batch, side, side))
cpu_time = time_steps(UNet(3, 3, base_channels=base, depth=4), xb, yb, np, steps)
print(f"NumPy: {cpu_time * 1000:.0f} ms per step (base {base}, batch {batch}, {side}x{side})")
if HAVE_GPU:
    gpu_time = time_steps(
        UNet(3, 3, base_channels=base, depth=4).to(cp), to_device(xb, cp), to_device(yb, cp), cp, 5
    )
    print(f"CuPy:  {gpu_time * 1000:.1f} ms per step, {cpu_time / gpu_time:.0f}x faster")
else:
    print("CuPy:  not measured (no GPU here).")

# %% [markdown]
# ## Where the measured numbers live
#
# Timings depend on the machine, so minunet keeps its measurements in one file,
# `benchmarks/RESULTS.md`, each table naming the CPU or GPU it was measured on and
# comparing with PyTorch on the same machine. The scripts that produce it are in
# `benchmarks/`. Compare ratios, not absolute times, across machines.

# %%
results = Path("../benchmarks/RESULTS.md")
if results.is_file():
    print(f"{results} exists; its first lines:\n")
    print("\n".join(results.read_text(encoding="utf-8").splitlines()[:20]))
else:
    print(f"{results} is not in this checkout yet; the benchmark scripts are in ../benchmarks/.")

# %% [markdown]
# ## What to remember
#
# - `model.to(cp)` and `to_device(x, cp)`: the rest of the code is unchanged.
# - On the GPU, matmuls go to cuBLAS; slices, elementwise maths and reductions become
#   CUDA kernels; per-launch overhead and host reads are the new costs.
# - Where one idea takes many array calls, a short kernel of our own does it in one pass.
#   Written as a gather (one thread, one output), it never races, and it runs on a CPU too.
# - Time GPU code only after synchronising, and after a warm-up.
#
# That is the whole course: from arrays to a trained U-Net, every backward pass derived
# and checked against the library that trains it.
#
# Next (optional): [lesson 09](09_fast_numpy.ipynb) goes back to the CPU and shows how
# minunet's convolutions are made fast there, without changing their maths.

# %% [markdown]
# ## Exercises
#
# Fill in the stub, then run the cell: `report` checks your version and says "passed"
# or what is still wrong. Solution: [solutions/08_gpu.py](solutions/08_gpu.py).
#
# 1. `my_col2im_source_row(h, i, stride, pad, dil, ho)`: the heart of the `COL2IM`
#    kernel's gather. Tap `i` of output row `oh` reads input row `oh*stride - pad + i*dil`;
#    given an input row `h` and a tap `i`, return the output row that read it, or `None`
#    if none did. The check compares with im2col's own indexing for several geometries.

# %%
from exercises import check_my_col2im_source_row, report  # noqa: E402


def my_col2im_source_row(h, i, stride, pad, dil, ho):
    """The output row oh whose tap i read input row h, or None."""
    ...  # TODO


report(check_my_col2im_source_row, my_col2im_source_row)
