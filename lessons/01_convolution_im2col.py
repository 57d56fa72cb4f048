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
# # Lesson 01: convolution as im2col and one matrix multiply
#
# A U-Net is mostly 3x3 convolutions: they hold nearly all its parameters and, by the
# count at the end of this lesson, about 96% of its arithmetic. This lesson writes a
# convolution three ways and checks that they agree:
#
# 1. the definition, as loops;
# 2. **im2col**: copy every patch the kernel sees into a column of a matrix, then do the
#    whole convolution as *one* matrix multiply;
# 3. minunet's reference `Conv2d`, which is (2) written without a loop over pixels.
#
# Notation used in every lesson: input `x (N, C, H, W)` (`W` is always a *width*), weight
# `w (K, C, kh, kw)` with `K` output channels, bias `b (K,)`, output `(N, K, Ho, Wo)`,
# and `P = Ho * Wo` output pixels.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.accel import accelerate, cpu
from minunet.core.im2col import conv_output_size, im2col
from minunet.data.loader import normalize
from minunet.data.synthetic import make_toy_pets
from minunet.model import UNet
from minunet.model.summary import trace
from minunet.nn import Conv2d

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)

# %% [markdown]
# ## The definition
#
# What deep-learning libraries call convolution is, strictly, *cross-correlation*: the
# kernel is not flipped. Output channel `k` at pixel `(oh, ow)` is the dot product of
# kernel `w[k]` with the `(C, kh, kw)` patch of the (zero-padded) input whose top-left
# corner is at `(oh * s, ow * s)`:
#
# $$\text{out}[n, k, o_h, o_w] = b[k] + \sum_{c, i, j} w[k, c, i, j]\;
#   x_{\text{pad}}[n, c,\; o_h s + i,\; o_w s + j]$$
#
# With padding `p` and stride `s`, the output side is `Ho = (H + 2p - kh) // s + 1`.
# (With dilation `d` the taps spread out to `i*d`; the U-Net never uses it.)


# %%
def conv2d_loops(x, weight, bias, stride=1, padding=0):
    """The definition, one output number at a time. x (N, C, H, W) -> (N, K, Ho, Wo)."""
    n, c, height, width = x.shape
    k, _, kh, kw = weight.shape
    ho = (height + 2 * padding - kh) // stride + 1
    wo = (width + 2 * padding - kw) // stride + 1
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.zeros((n, k, ho, wo), dtype=x.dtype)
    for b in range(n):
        for oc in range(k):
            for oh in range(ho):
                for ow in range(wo):
                    patch = x_pad[
                        b, :, oh * stride : oh * stride + kh, ow * stride : ow * stride + kw
                    ]
                    out[b, oc, oh, ow] = np.sum(weight[oc] * patch) + bias[oc]
    return out


x = rng.standard_normal((2, 3, 7, 6))
weight = rng.standard_normal((4, 3, 3, 3))
bias = rng.standard_normal(4)
out_loops = conv2d_loops(x, weight, bias, stride=1, padding=1)
print("x", x.shape, "-> out", out_loops.shape)

# %% [markdown]
# Six nested loops (four written, two hidden in `np.sum`) and
# `N * K * Ho * Wo * C * kh * kw` multiply-adds. Correct, but Python runs the loops one
# iteration at a time: hopeless for a 128x128 image with 64 channels.
#
# ## im2col: patches into columns
#
# Look at the loop body again: each output number is a dot product between the
# *flattened* kernel `w[k].reshape(-1)` (length `C*kh*kw`) and the *flattened* patch. If
# we copy every patch, flattened, into a column of one matrix
#
# $$\text{cols}[n] \in \mathbb{R}^{(C \cdot k_h \cdot k_w) \times P},$$
#
# and flatten the weights into `w2 = w.reshape(K, C*kh*kw)`, then **all** the dot
# products are one matrix product:
#
# $$\text{out}[n] = w_2 \,\text{cols}[n] + b \qquad (K \times C k_h k_w)(C k_h k_w \times P) = (K \times P).$$
#
# A matrix multiply is the most optimised routine there is (BLAS on the CPU, cuBLAS on
# the GPU), so this turns a slow loop into fast library code, at the price of memory:
# each input pixel is copied into up to `kh*kw` = 9 columns.
#
# Here is im2col written the obvious way, one output pixel (one column) at a time. The
# row order inside a column is `(c, i, j)`, the same order as `w[k].reshape(-1)`, so no
# transpose is ever needed.


# %%
def im2col_loops(x, kh, kw, stride=1, padding=0):
    """Copy each (C, kh, kw) patch into a column. x (N, C, H, W) -> (N, C*kh*kw, Ho*Wo)."""
    n, c, height, width = x.shape
    ho = (height + 2 * padding - kh) // stride + 1
    wo = (width + 2 * padding - kw) // stride + 1
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((n, c * kh * kw, ho * wo), dtype=x.dtype)
    for oh in range(ho):
        for ow in range(wo):
            patch = x_pad[:, :, oh * stride : oh * stride + kh, ow * stride : ow * stride + kw]
            cols[:, :, oh * wo + ow] = patch.reshape(n, -1)  # column p = oh * Wo + ow
    return cols


cols = im2col_loops(x, 3, 3, padding=1)
w2 = weight.reshape(4, -1)  # (K, C*kh*kw) = (4, 27)
out_matmul = (w2 @ cols + bias[:, None]).reshape(2, 4, 7, 6)  # (N, K, P) -> (N, K, Ho, Wo)
print("cols", cols.shape, " w2", w2.shape, " out", out_matmul.shape)
np.testing.assert_allclose(out_matmul, out_loops, rtol=1e-12, atol=1e-12)
print("im2col + one matmul == the six loops: OK")

# %% [markdown]
# ## A picture of the unrolled patches
#
# To see what im2col does, take one channel of a 5x5 image whose pixels are numbered
# 0..24, a 3x3 kernel, no padding. There are 3x3 = 9 output pixels, so 9 columns, each
# holding the 9 pixels of one patch. Every interior pixel shows up in several columns:
# that duplication is the memory price, and (lesson 02) the reason its backward pass
# has to *add*.

# %%
tiny = np.arange(25.0).reshape(1, 1, 5, 5)
tiny_cols = im2col_loops(tiny, 3, 3)[0]  # (9, 9): rows (i, j), columns p

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 4), gridspec_kw={"width_ratios": [1, 1.4]})
ax0.imshow(tiny[0, 0], cmap="tab20c")
for r in range(5):
    for c in range(5):
        ax0.text(c, r, int(tiny[0, 0, r, c]), ha="center", va="center", fontsize=9)
ax0.add_patch(plt.Rectangle((0.5, 0.5), 3, 3, fill=False, lw=2.5, ec="crimson"))
ax0.set_title("5x5 input; the patch of output pixel (1, 1)")
ax0.set_xticks([])
ax0.set_yticks([])
ax1.imshow(tiny_cols, cmap="tab20c", vmin=0, vmax=24)
for r in range(9):
    for c in range(9):
        ax1.text(c, r, int(tiny_cols[r, c]), ha="center", va="center", fontsize=8)
ax1.add_patch(plt.Rectangle((3.5, -0.5), 1, 9, fill=False, lw=2.5, ec="crimson"))
ax1.set_xlabel("column p = oh * Wo + ow (one output pixel)")
ax1.set_ylabel("row (i, j) inside the patch")
ax1.set_title("im2col: 9 patches as 9 columns")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Without the loop over pixels: one strided slice per kernel offset
#
# `im2col_loops` still loops over the `Ho * Wo` output pixels, thousands of Python
# iterations. minunet turns the loop inside out. Fix a kernel offset `(i, j)`: the entry
# at offset `(i, j)` of *every* patch is
#
# $$\text{cols}[n, c, i, j, o_h, o_w] = x_{\text{pad}}[n, c,\; i + o_h s,\; j + o_w s],$$
#
# and as `(oh, ow)` run over the output, that is the strided slice
# `x_pad[:, :, i : i + s*Ho : s, j : j + s*Wo : s]`. So im2col is just `kh * kw` slice
# copies (9 for a 3x3 kernel), each moving a whole `(N, C, Ho, Wo)` block, whatever the
# image size. Here it is, then the library's own `im2col`.


# %%
def im2col_offsets(x, kh, kw, stride=1, padding=0):
    """The same columns, built with one strided slice per kernel offset (kh*kw copies)."""
    n, c, height, width = x.shape
    ho = (height + 2 * padding - kh) // stride + 1
    wo = (width + 2 * padding - kw) // stride + 1
    x_pad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x_pad[
                :, :, i : i + stride * ho : stride, j : j + stride * wo : stride
            ]
    return cols.reshape(n, c * kh * kw, ho * wo)


for stride, padding in [(1, 0), (1, 1), (2, 1), (2, 0)]:
    reference = im2col_loops(x, 3, 3, stride, padding)
    # The library's output size, (H + 2p - k) // s + 1, must give the loops' column count.
    ho, wo = conv_output_size(7, 3, stride, padding), conv_output_size(6, 3, stride, padding)
    assert ho * wo == reference.shape[2], "conv_output_size"
    np.testing.assert_array_equal(im2col_offsets(x, 3, 3, stride, padding), reference)
    np.testing.assert_array_equal(im2col(x, 3, 3, stride, padding), reference)
print("loop im2col == offset im2col == minunet.core.im2col.im2col, for 4 (stride, padding): OK")

# %% [markdown]
# ## The layer: minunet's `Conv2d`
#
# `Conv2d.forward` (`minunet.nn.conv`, the reference layer) is exactly the two lines above:
# `cols = im2col(x)`, then `out = w2 @ cols + b`. It keeps `cols` for the backward pass
# (lesson 02). Its weight has PyTorch's shape `(K, C, kh, kw)`. We load our weights into
# it and demand the same numbers as the definition, in float64 so that only rounding at
# the 1e-12 level can differ.
#
# On NumPy the same sums also have a faster road, the accelerated path of
# `minunet.accel.cpu` (lesson 09): horizontal-tap columns built block by block, keeping
# only `x` for the backward instead of `cols`. The reference `Conv2d` never takes it;
# its fast subclass `FastConv2d` (`minunet.accel.conv`) does, for stride-1, dilation-1
# convolutions, and `minunet.accel.accelerate(layer)`
# turns a layer into its fast class (the `UNet` does that to itself). The second check
# uses 16 input channels and compares four things with the loops: the im2col product
# written out, the reference `Conv2d`, the same layer accelerated (the printout names the
# road it took, from the kind of cache it kept for the backward), and
# `cpu.conv2d_forward` called directly.

# %%
for stride, padding in [(1, 1), (2, 0)]:
    conv = Conv2d(3, 4, 3, stride=stride, padding=padding, dtype=np.float64)
    conv.params["weight"].data[...] = weight
    conv.params["bias"].data[...] = bias
    out_lib = conv.forward(x)
    np.testing.assert_allclose(out_lib, conv2d_loops(x, weight, bias, stride, padding), atol=1e-12)
    print(f"stride {stride}, padding {padding}: Conv2d {out_lib.shape} == the definition")

x16 = rng.standard_normal((2, 16, 6, 5))
weight16 = rng.standard_normal((4, 16, 3, 3))
bias16 = rng.standard_normal(4)
loops16 = conv2d_loops(x16, weight16, bias16, stride=1, padding=1)
im2col16 = weight16.reshape(4, -1) @ im2col(x16, 3, 3, 1, 1) + bias16[:, None]  # (N, K, P)
np.testing.assert_allclose(im2col16.reshape(loops16.shape), loops16, atol=1e-12)
conv16 = Conv2d(16, 4, 3, padding=1, dtype=np.float64)
conv16.params["weight"].data[...] = weight16
conv16.params["bias"].data[...] = bias16
np.testing.assert_allclose(conv16.forward(x16), loops16, atol=1e-12)
reference_road = type(conv16._cache).__name__  # Im2colCache: the reference keeps cols
fast16 = accelerate(conv16)  # the same object, now a FastConv2d with the same weights
np.testing.assert_allclose(fast16.forward(x16), loops16, atol=1e-12)
np.testing.assert_allclose(
    cpu.conv2d_forward(x16, weight16, bias16, padding=1), loops16, atol=1e-12
)
print(
    f"16 input channels: im2col + matmul == Conv2d (cache {reference_road})"
    f" == {type(fast16).__name__} (cache {type(fast16._cache).__name__})"
    " == minunet.accel.cpu.conv2d_forward == the definition"
)

# %% [markdown]
# The U-Net uses `padding=1` ("same": the output is as large as the input) in minunet's
# default, and `padding=0` ("valid": each 3x3 convolution trims one pixel off every side)
# in the original paper. Lesson 04 follows both through the whole network.
#
# ## The same check against PyTorch, where it is installed
#
# PyTorch is not needed by minunet, but when it is there it is a good second opinion:
# the same weight layout, the same cross-correlation, the same output.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed here; the NumPy definition above is the reference.")
if torch is not None:
    reference = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), padding=1
    ).numpy()
    np.testing.assert_allclose(out_loops, reference, atol=1e-12)
    print("torch.nn.functional.conv2d agrees with the definition (and so with Conv2d)")

# %% [markdown]
# ## What a convolution does to an image
#
# A convolution with hand-picked weights is a classic image filter. Three kernels on a
# toy-pets image: a blur, and horizontal and vertical edge detectors (Sobel). A trained
# U-Net's first layer learns filters much like these, 32 of them or more.

# %%
size = 48 if SMALL else 128
image = make_toy_pets(1, image_size=size, seed=3).images
grey = normalize(image).mean(axis=1, keepdims=True)  # (1, 1, H, W)

sobel = np.array([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
filters = np.stack([np.full((3, 3), 1 / 9), sobel, sobel.T])[:, None]  # (3, 1, 3, 3)
edges = Conv2d(1, 3, 3, padding=1, bias=False)
edges.params["weight"].data[...] = filters
responses = edges.forward(grey)  # (1, 3, H, W)

names = ["blur", "horizontal edges", "vertical edges"]
fig, axes = plt.subplots(1, 4, figsize=(11, 3))
axes[0].imshow(image[0])
axes[0].set_title("input")
for ax, r, name in zip(axes[1:], responses[0], names, strict=True):
    lim = np.abs(r).max()
    ax.imshow(r, cmap="gray" if name == "blur" else "RdBu", vmin=-lim, vmax=lim)
    ax.set_title(name)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Costs, in numbers
#
# For a 3x3 convolution the columns are 9x the size of its input, and the matrix product
# costs `2 * K * (C*9) * P` floating-point operations per image (a multiply-add counts
# two). A base-32 U-Net's first block at 128x128: `C=32, K=32, P=16384` gives ~0.3 GFLOP
# per image per convolution, and 144 MiB of float32 columns for a batch of 8.

# %%
c_in, k_out, side, batch = 32, 32, 128, 8
p = side * side
print(f"FLOPs per image: {2 * k_out * c_in * 9 * p / 1e9:.2f} GFLOP")
print(f"columns for a batch of {batch}: {batch * c_in * 9 * p * 4 / 2**20:.0f} MiB (float32)")

# %% [markdown]
# How much of a whole U-Net's arithmetic is in its 3x3 convolutions? `UNet.summary()`
# (lesson 04) lists every layer with its FLOPs, computed from the shape formulas; its
# rows come from `minunet.model.summary.trace`. Every `Conv2d` of a U-Net is 3x3 except
# the 1x1 `head`; we check that from each row's parameter count (`K*C*k*k + K`) rather
# than assume it, then add up the FLOPs of the paper's network (572x572 input).


# %%
def layer_at(model, name):
    """The sub-layer a summary row names, e.g. "encoder.0.conv1"."""
    for part in name.split("."):
        model = model.children()[part]
    return model


paper = UNet(1, 2, base_channels=64, depth=4, padding="valid", batchnorm=False)  # lesson 04
rows = trace(paper, 572, 572)  # (name, kind, out shape, params, FLOPs, activations)
total_flops = sum(row[4] for row in rows)
by_kind = {}
for name, kind, _, params, flops, _ in rows:
    if kind == "Conv2d":
        layer = layer_at(paper, name)
        k_out, c_in_, ksize = layer.out_channels, layer.in_channels, layer.kernel_size
        assert params == k_out * c_in_ * ksize * ksize + k_out
        kind = f"Conv2d {ksize}x{ksize}"
    by_kind[kind] = by_kind.get(kind, 0) + flops
for kind, flops in sorted(by_kind.items(), key=lambda item: -item[1]):
    print(f"{kind:<16} {flops / 1e9:7.1f} GFLOP  {100 * flops / total_flops:5.1f}%")
share_3x3 = by_kind["Conv2d 3x3"] / total_flops
assert 0.95 < share_3x3 < 0.97
print(f"3x3 convolutions: {100 * share_3x3:.1f}% of the {total_flops / 1e9:.0f} GFLOP forward pass")

# %% [markdown]
# ## What to remember
#
# - A convolution is a dot product of the flattened kernel with every flattened patch.
# - im2col puts the patches in columns: `cols (N, C*kh*kw, P)`, and the convolution is
#   `w.reshape(K, -1) @ cols + b[:, None]`.
# - minunet builds `cols` with `kh*kw` strided slices, never a loop over pixels.
# - In a U-Net, 3x3 convolutions do about 96% of the arithmetic (computed above).
#
# Next: [lesson 02](02_backprop_conv.ipynb) runs this backwards.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/01_convolution_im2col.py](solutions/01_convolution_im2col.py).
#
# 1. `my_conv_output_size(size, k, stride, padding, dilation)`: the output length along
#    one axis. Hint: a dilated kernel spans `dilation * (k - 1) + 1` pixels; count the
#    window starts that fit in the padded input.
# 2. `my_im2col(x, k, stride, padding)`: `(N, C, H, W)` to `(N, C*k*k, Ho*Wo)`, the
#    columns in minunet's order (channel, then kernel row, then kernel column; output
#    pixels row by row). A loop over output pixels is fine.

# %%
from exercises import check_my_conv_output_size, check_my_im2col, report  # noqa: E402


def my_conv_output_size(size, k, stride, padding, dilation):
    """Output length of a convolution along one axis."""
    ...  # TODO


def my_im2col(x, k, stride, padding):
    """x (N, C, H, W) -> cols (N, C*k*k, Ho*Wo)."""
    ...  # TODO


report(check_my_conv_output_size, my_conv_output_size)
report(check_my_im2col, my_im2col)
