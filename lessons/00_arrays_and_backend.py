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
# # Lesson 00: arrays, layouts and the NumPy/CuPy backend
#
# Everything in minunet is an array and a few operations on it. Before any convolution,
# this lesson settles three things the rest of the course leans on:
#
# 1. **what a batch of images is** as an array, and why the network wants it as
#    `(N, C, H, W)` while files give us `(N, H, W, C)`;
# 2. **views and copies**: which operations are free and which move memory;
# 3. **the backend**: how one piece of code runs on NumPy (CPU) and CuPy (GPU).
#
# Each lesson runs in two sizes. `MINUNET_LESSON_SMALL=1` shrinks everything so the
# test suite can execute every lesson in seconds; without it you get the full-size
# figures.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.core.backend import get_array_module, get_backend, gpu_available, to_device, to_numpy
from minunet.data.loader import DEFAULT_MEAN, DEFAULT_STD, normalize
from minunet.data.synthetic import make_toy_pets

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 72
IMAGE_SIZE = 32 if SMALL else 96

# %% [markdown]
# ## A batch of images
#
# minunet ships a synthetic stand-in for the Oxford-IIIT Pets data set: "toy pets",
# animal-like silhouettes on cluttered backgrounds, with the same three classes as the
# real trimaps (0 pet, 1 background, 2 outline). It needs no download, so we use it
# from the first lesson on. (Lesson 06 is all about the data.)

# %%
data = make_toy_pets(4, image_size=IMAGE_SIZE, seed=0)
print("images", data.images.shape, data.images.dtype)  # (N, H, W, C) uint8
print("masks ", data.masks.shape, data.masks.dtype)  # (N, H, W) class indices
print("classes", data.class_names)

fig, axes = plt.subplots(2, 4, figsize=(8, 4))
for i in range(4):
    axes[0, i].imshow(data.images[i])
    axes[1, i].imshow(data.masks[i], cmap="viridis", vmin=0, vmax=2)
    axes[0, i].set_title(data.names[i], fontsize=8)
for ax in axes.flat:
    ax.axis("off")
axes[0, 0].set_ylabel("image")
fig.suptitle("toy pets: images (top) and masks (bottom: pet, background, outline)")
plt.show()

# %% [markdown]
# ## Layouts: NHWC on disk, NCHW in the network
#
# An image file decodes to height x width x channels, so a stack of them is
# `(N, H, W, C)`, "channels last" (NHWC). The layers of minunet, like PyTorch's, want
# `(N, C, H, W)`, "channels first" (NCHW): each channel is then one contiguous `H x W`
# plane, and a convolution's weight `(C_out, C_in, kh, kw)` lines up with it.
#
# Going from one to the other is a `transpose`. A transpose copies nothing: it returns
# a **view** of the same memory with the *strides* (bytes to step along each axis)
# permuted. Look at the strides:

# %%
nhwc = data.images
nchw_view = nhwc.transpose(0, 3, 1, 2)
print("NHWC shape", nhwc.shape, "strides", nhwc.strides)
print("NCHW view  ", nchw_view.shape, "strides", nchw_view.strides)
print("same memory?", np.shares_memory(nhwc, nchw_view))
print("C-contiguous?", nchw_view.flags["C_CONTIGUOUS"])

# %% [markdown]
# What "channels last" and "channels first" mean in memory is easiest to see on a tiny
# image: 2 rows, 3 columns, 3 colours, 18 numbers. Memory is one long line of numbers.
# NHWC stores each pixel's three colours side by side (R G B, R G B, ...); NCHW stores
# the whole red plane, then the green one, then the blue one. The strips below are the
# actual order of `ascontiguousarray` of each layout, read back with `ravel()`.

# %%
tiny = np.arange(18).reshape(2, 3, 3)  # (H, W, C): value = 9 * row + 3 * column + channel
orders = {
    "NHWC (channels last)": np.ascontiguousarray(tiny).ravel(),
    "NCHW (channels first)": np.ascontiguousarray(tiny.transpose(2, 0, 1)).ravel(),
}
colours = ["#f4a6a6", "#a6e3a6", "#a6c8f4"]  # red, green, blue channels
fig, axes = plt.subplots(2, 1, figsize=(11, 2.4))
for ax, (name, flat) in zip(axes, orders.items(), strict=True):
    for pos, value in enumerate(flat):
        row, col, ch = value // 9, value // 3 % 3, value % 3
        ax.add_patch(plt.Rectangle((pos, 0), 1, 1, fc=colours[ch], ec="k"))
        ax.text(pos + 0.5, 0.5, f"{'RGB'[ch]}\n{row},{col}", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, 18)
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}: {flat.tolist()}", fontsize=9, loc="left")
    ax.axis("off")
fig.suptitle(
    "one 2x3 RGB image in memory (address increases to the right; labels: channel, row,col)", y=1.05
)
plt.show()
# Channels last: neighbours in memory are the colours of one pixel. Channels first: the
# pixels of one colour plane, row after row; the next channel starts H * W numbers later.
assert orders["NHWC (channels last)"].tolist() == list(range(18))
assert orders["NCHW (channels first)"][:6].tolist() == [0, 3, 6, 9, 12, 15]  # the red plane

# %% [markdown]
# Back to the batch. The view is correct but not contiguous: stepping along the last axis `W` jumps 3
# bytes (over the other two colour channels) instead of 1. Matrix multiplies and most
# elementwise kernels are fastest on contiguous memory, so at some point we pay for one
# real copy. `np.ascontiguousarray` is that copy; it is a *decision*, and minunet makes
# it exactly once per batch, in the loader, where it also converts to float32.
#
# ## Normalisation, by hand and by the library
#
# The network's input is `x = (u8 / 255 - mean) / std` per channel, in NCHW float32.
# minunet uses fixed constants (mean 0.5, std 0.25: `[0, 1]` maps to `[-2, 2]`), not
# the data set's statistics, so a trained model needs nothing but these two numbers at
# prediction time. Here is the recipe written out, and the library's `normalize` must
# agree with it.

# %%
x_by_hand = (nhwc.astype(np.float32) / 255.0 - DEFAULT_MEAN) / DEFAULT_STD  # (N, H, W, C)
x_by_hand = np.ascontiguousarray(x_by_hand.transpose(0, 3, 1, 2))  # (N, C, H, W)

x_lib = normalize(nhwc)
print("library:", x_lib.shape, x_lib.dtype, "contiguous:", x_lib.flags["C_CONTIGUOUS"])
np.testing.assert_allclose(x_lib, x_by_hand, rtol=1e-6, atol=1e-6)
assert x_lib.flags["C_CONTIGUOUS"] and x_lib.dtype == np.float32
print("normalize == (u8/255 - 0.5)/0.25, channels first: OK")
print(f"value range [{x_lib.min():.2f}, {x_lib.max():.2f}]")

# %% [markdown]
# ## Broadcasting: the bias of a convolution
#
# A convolution's bias has one number per output channel, shape `(C,)`, and must be
# added to every pixel of that channel in every image of `(N, C, H, W)`. Broadcasting
# does that without materialising an `(N, C, H, W)` copy of the bias: `b[:, None, None]`
# has shape `(C, 1, 1)`, and NumPy aligns shapes from the right, so
# `(N, C, H, W) + (C, 1, 1)` adds `b[c]` to plane `c`. You will see `[:, None, None]`
# in almost every layer.

# %%
b = np.array([10.0, 20.0, 30.0], dtype=np.float32)
shifted = x_lib + b[:, None, None]
for c in range(3):
    assert np.allclose(shifted[:, c] - x_lib[:, c], b[c])
print("(N, C, H, W) + (C, 1, 1): channel c shifted by b[c] in every image and pixel")

# %% [markdown]
# ## Views you will meet again
#
# Slicing with steps is also a view. `x[:, :, ::2, ::2]` keeps every other row and
# column (a stride-2 subsampling) without copying; minunet's im2col (lesson 01) and max
# pooling (lesson 03) are built entirely from such strided slices. Writing into a view
# writes into the original array; that is how the library's `col2im` adds gradients
# back into place.

# %%
a = np.arange(16.0).reshape(1, 1, 4, 4)
every_other = a[:, :, ::2, ::2]
print(a[0, 0])
print("every other row and column:\n", every_other[0, 0])
print("a view:", np.shares_memory(a, every_other))
every_other += 100  # writes through to a
print("after += 100 on the view:\n", a[0, 0])

# %% [markdown]
# ## One code path for CPU and GPU: the backend
#
# CuPy implements NumPy's API on NVIDIA GPUs: `cupy.zeros`, `cupy.matmul`, slicing and
# broadcasting all behave the same, but the arrays live in GPU memory and every
# operation launches a GPU kernel. So minunet writes each layer **once**, against a
# module called `xp`, and asks the data which module it is:
#
# ```python
# xp = get_array_module(x)   # numpy for a NumPy array, cupy for a CuPy array
# out = xp.maximum(x, 0)     # runs wherever x lives
# ```
#
# `get_array_module` looks at the array's class instead of importing CuPy, so a
# CPU-only install never needs CuPy. Asking for the `cupy` backend where it cannot run
# is an error that says how to fix it, never a silent fall-back to the CPU.


# %%
def relu(x):
    """Works on NumPy and CuPy arrays alike: x (any shape) -> same shape."""
    xp = get_array_module(x)
    return xp.maximum(x, 0)


assert get_array_module(x_lib) is np
assert get_backend("numpy") is np
print("relu on NumPy:", relu(np.array([-1.0, 0.5, 2.0])))

if gpu_available():
    cp = get_backend("cupy")
    x_gpu = to_device(x_lib, cp)  # host -> device copy
    assert get_array_module(x_gpu) is cp
    np.testing.assert_allclose(to_numpy(relu(x_gpu)), relu(x_lib))
    print("CuPy is here: the same relu ran on the GPU and matched NumPy.")
else:
    print(
        "No CuPy or no visible GPU on this machine: everything in these lessons runs on "
        "NumPy. Lesson 08 shows the GPU path where one is available."
    )

# %% [markdown]
# ## What to remember
#
# - A batch is `(N, C, H, W)` float32 for the network, `(N, H, W, C)` uint8 on disk.
# - Transposes and strided slices are free views; `ascontiguousarray`/`astype` are
#   copies, made on purpose.
# - `(C,)[:, None, None]` broadcasts a per-channel number over a whole batch.
# - Layers are written against `xp = get_array_module(x)`, so the GPU is the same code.
#
# Next: [lesson 01](01_convolution_im2col.ipynb) turns a convolution into one matrix
# multiply.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/00_arrays_and_backend.py](solutions/00_arrays_and_backend.py).
#
# 1. `my_normalize(images)`: `(N, H, W, C)` uint8 to the network's `(N, C, H, W)` float32,
#    `(u8 / 255 - DEFAULT_MEAN) / DEFAULT_STD`, C-contiguous, like `normalize`.
# 2. `my_add_bias(out, bias)`: add a `(K,)` bias to every pixel of an `(N, K, H, W)`
#    batch, with broadcasting and no loop.

# %%
from exercises import check_my_add_bias, check_my_normalize, report  # noqa: E402


def my_normalize(images):
    """(N, H, W, C) uint8 -> (N, C, H, W) float32."""
    ...  # TODO


def my_add_bias(out, bias):
    """(N, K, H, W) + (K,) -> (N, K, H, W)."""
    ...  # TODO


report(check_my_normalize, my_normalize)
report(check_my_add_bias, my_add_bias)
