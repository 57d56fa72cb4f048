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
# # Lesson 03: max pooling down, transposed convolution up
#
# A U-Net halves its resolution four times on the way down and doubles it four times on
# the way up. Two layers do that:
#
# - **MaxPool2d(2)**: keep the largest of every 2x2 block, `(N, C, H, W) -> (N, C, H/2, W/2)`;
# - **ConvTranspose2d(k=2, s=2)**: a learned upsampling,
#   `(N, C_in, H, W) -> (N, C_out, 2H, 2W)`.
#
# For each: the forward in plain NumPy, the backward derived, and both checked against
# minunet, then gradient-checked. At the end, why a transposed convolution whose kernel
# is not a multiple of its stride paints a checkerboard.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.core.gradcheck import check_layer
from minunet.nn import Conv2d, ConvTranspose2d, MaxPool2d

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)

# %% [markdown]
# ## Max pooling, forward: a reshape and a max
#
# For the U-Net's non-overlapping 2x2 windows there is a neat NumPy formulation: split
# each spatial axis into (blocks, 2) with a reshape (free: a view), and take the max over
# the two "2" axes:
#
# `x.reshape(N, C, H/2, 2, W/2, 2).max(axis=(3, 5))`.

# %%
x = rng.standard_normal((2, 3, 6, 8))
n, c, h, w = x.shape
blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)  # (N, C, H/2, 2, W/2, 2)
out_hand = blocks.max(axis=(3, 5))  # (N, C, H/2, W/2)

pool = MaxPool2d(2)
out_lib = pool.forward(x)
np.testing.assert_array_equal(out_lib, out_hand)
print("x", x.shape, "-> pooled", out_lib.shape, ": MaxPool2d == reshape + max")

# %% [markdown]
# ## Max pooling, backward: route the gradient to the winner
#
# In each window, `out = x_winner`: the output depends on the winning input with
# derivative 1 and on the other three with derivative 0 (nudging a loser slightly does
# not change the max). So
#
# $$dx[\text{winner}] = d\text{out}, \qquad dx[\text{others}] = 0.$$
#
# The forward must remember *where* the winner was. minunet stores, per output pixel,
# the winning offset `i*k + j` as a `uint8` (a quarter of a float32). The backward
# writes `dout` back to that offset. Ties (two equal maxima, common after a ReLU turns
# many values to exactly 0) go to the first offset in row-major order, like `argmax`.
#
# Here is the backward by hand with the same reshape: flatten each window's 4 values,
# take `argmax`, scatter `dout` to it.


# %%
def maxpool2x2_backward_by_hand(x, dout):
    """dx for a 2x2, stride-2 max pool. x (N, C, H, W), dout (N, C, H/2, W/2)."""
    n, c, h, w = x.shape
    # (N, C, H/2, W/2, 4): the 4 values of each window, in row-major order (i, j).
    windows = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    winner = windows.argmax(axis=-1)  # first maximum on ties
    routed = np.zeros_like(windows)
    np.put_along_axis(routed, winner[..., None], dout[..., None], axis=-1)
    routed = routed.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return routed.reshape(n, c, h, w)


dout = rng.standard_normal(out_lib.shape)
np.testing.assert_array_equal(pool.backward(dout), maxpool2x2_backward_by_hand(x, dout))

# Ties: a window of zeros after a ReLU. The first position, (0, 0), takes the gradient.
ties = np.zeros((1, 1, 2, 2))
pool.forward(ties)
np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1)))[0, 0], [[1, 0], [0, 0]])
np.testing.assert_array_equal(
    maxpool2x2_backward_by_hand(ties, np.ones((1, 1, 1, 1)))[0, 0], [[1, 0], [0, 0]]
)
print("MaxPool2d.backward == route dout to the (first) winner")

# %% [markdown]
# A picture: four windows, the winners highlighted, and where the gradient lands.

# %%
demo = rng.integers(0, 10, (1, 1, 4, 4)).astype(float)
pool.forward(demo)
routed = pool.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
for ax, img, title in [(axes[0], demo, "input (winners in bold)"), (axes[1], routed, "dx")]:
    ax.imshow(img[0, 0], cmap="Blues")
    for (r, q), v in np.ndenumerate(img[0, 0]):
        bold = routed[0, 0, r, q] != 0
        ax.text(q, r, f"{v:g}", ha="center", va="center", fontweight="bold" if bold else "normal")
    for t in (1.5,):
        ax.axhline(t, color="k")
        ax.axvline(t, color="k")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("max pool backward: dout = [[1, 2], [3, 4]] goes to each window's winner", y=1.02)
plt.show()

# %% [markdown]
# Gradient check (random float64 inputs have no ties, so the max is differentiable):

# %%
errors = check_layer(MaxPool2d(2), rng.standard_normal((2, 2, 6, 6)))
print(errors)
assert max(errors.values()) < 1e-6, "MaxPool2d(2) gradient check"
errors = check_layer(MaxPool2d(3, stride=2), rng.standard_normal((1, 2, 7, 7)))  # overlapping
print("overlapping 3x3, stride 2:", errors)
assert max(errors.values()) < 1e-6, "overlapping MaxPool2d gradient check"

# %% [markdown]
# ## Transposed convolution: a convolution run backwards
#
# Lesson 02 found that a convolution's input gradient is `col2im(w2^T @ dout)`: it takes
# a small map (the output's gradient) and produces a larger one (the input's). Use that
# computation as a *forward* pass, with its own learned weights, and you have a
# **transposed convolution**: every input pixel scatters a copy of the kernel, scaled by
# its value, into a `k x k` patch of the output, and overlapping patches add.
#
# $$y[n, o, h s + i, w s + j] \mathrel{+}= \sum_{c} x[n, c, h, w]\, w[c, o, i, j]$$
#
# Weight shape `(C_in, C_out, k, k)` (PyTorch's layout). Output side
# `Ho = (H - 1) s + k` (without padding). Here is the definition as loops:


# %%
def conv_transpose_loops(x, weight, bias, stride):
    """Scatter each input pixel's weighted kernel. x (N, C_in, H, W) -> (N, C_out, Ho, Wo)."""
    n, cin, h, w = x.shape
    _, cout, k, _ = weight.shape
    ho, wo = (h - 1) * stride + k, (w - 1) * stride + k
    y = np.zeros((n, cout, ho, wo))
    for b in range(n):
        for ci in range(cin):
            for r in range(h):
                for q in range(w):
                    y[b, :, r * stride : r * stride + k, q * stride : q * stride + k] += (
                        x[b, ci, r, q] * weight[ci]
                    )
    return y + bias[:, None, None]


x = rng.standard_normal((2, 4, 3, 5))
for k, s in [(2, 2), (3, 2), (3, 1)]:
    up = ConvTranspose2d(4, 3, k, stride=s, dtype=np.float64, rng=rng)
    up.params["bias"].data[...] = rng.standard_normal(3)
    y_lib = up.forward(x)
    y_hand = conv_transpose_loops(x, up.params["weight"].data, up.params["bias"].data, s)
    np.testing.assert_allclose(y_lib, y_hand, atol=1e-12)
    print(f"k={k}, s={s}: {x.shape} -> {y_lib.shape}, ConvTranspose2d == the loops")

# %% [markdown]
# A picture of the scatter: a 2x2 input, one channel, a 3x3 kernel, stride 2. Each input
# pixel stamps its value times the kernel into its own 3x3 patch of the 5x5 output, the
# patches two pixels apart; where two patches overlap (the middle row and column) the
# stamps add. The last panel is the layer's output, which must be the sum of the four.

# %%
stamp_x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
stamp_w = np.arange(1.0, 10.0).reshape(1, 1, 3, 3) / 10  # (C_in, C_out, 3, 3)
stamper = ConvTranspose2d(1, 1, 3, stride=2, bias=False, dtype=np.float64)
stamper.params["weight"].data[...] = stamp_w
fig, axes = plt.subplots(1, 5, figsize=(13, 2.9))
stamps = np.zeros((5, 5))
for ax, (r, q) in zip(axes[:4], np.ndindex(2, 2), strict=True):
    one = np.zeros((5, 5))
    one[2 * r : 2 * r + 3, 2 * q : 2 * q + 3] = stamp_x[0, 0, r, q] * stamp_w[0, 0]
    stamps += one
    ax.imshow(one, cmap="Blues", vmin=0, vmax=2)
    ax.add_patch(plt.Rectangle((2 * q - 0.5, 2 * r - 0.5), 3, 3, fill=False, ec="crimson", lw=2))
    ax.set_title(f"stamp of x[{r}, {q}] = {stamp_x[0, 0, r, q]:g}", fontsize=9)
np.testing.assert_allclose(stamper.forward(stamp_x)[0, 0], stamps, atol=1e-12)
axes[4].imshow(stamps, cmap="Blues", vmin=0, vmax=2)
for (r, q), v in np.ndenumerate(stamps):
    axes[4].text(
        q, r, f"{v:.1f}", ha="center", va="center", fontsize=8, color="w" if v > 1 else "k"
    )
axes[4].set_title("layer output: their sum", fontsize=9)
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
plt.show()

# %% [markdown]
# ### It really is the transpose of a convolution
#
# Take a `Conv2d` and a `ConvTranspose2d` sharing one weight array (Conv2d reads it as
# `(C_out, C_in, k, k)`, so the transposed layer's `(C_in, C_out, k, k)` is the same
# array with the roles of the channels swapped). Then for any `u` and `v`:
#
# $$\langle \text{conv}(u),\ v\rangle = \langle u,\ \text{conv\_transpose}(v)\rangle .$$
#
# (Biases off, since they are not part of the linear map.)

# %%
shared = rng.standard_normal((5, 2, 3, 3))  # Conv2d: 2 -> 5 channels; transposed: 5 -> 2
conv = Conv2d(2, 5, 3, stride=2, bias=False, dtype=np.float64)
convt = ConvTranspose2d(5, 2, 3, stride=2, bias=False, dtype=np.float64)
conv.params["weight"].data[...] = shared
convt.params["weight"].data[...] = shared
u = rng.standard_normal((1, 2, 9, 9))
v = rng.standard_normal(conv.forward(u).shape)  # (1, 5, 4, 4)
lhs, rhs = np.sum(conv.forward(u) * v), np.sum(u * convt.forward(v))
print(f"<conv(u), v> = {lhs:.12f}\n<u, convT(v)> = {rhs:.12f}")
assert abs(lhs - rhs) < 1e-9 * abs(lhs)

# %% [markdown]
# So its backward needs no new maths: the transpose of "conv transpose" is a
# convolution. minunet's `backward` is Conv2d's forward, `dcols = im2col(dy)`,
# `dx = w2 @ dcols`, and `dw = sum_n x[n] dcols[n]^T`.
#
# ### The U-Net's case: k = s = 2, a matrix multiply and a reshape
#
# With a 2x2 kernel and stride 2 the patches tile the output without overlap: input
# pixel `(h, w)` owns output block `(2h : 2h+2, 2w : 2w+2)`. No additions, so the layer
# is one product with `w (C_in, C_out*4)` followed by a rearrangement, which `einsum`
# writes in one line:

# %%
up = ConvTranspose2d(4, 3, 2, stride=2, dtype=np.float64, rng=rng)
weight = up.params["weight"].data  # (C_in, C_out, 2, 2)
# y[n, o, 2h + i, 2w + j] = sum_c x[n, c, h, w] w[c, o, i, j]
y = np.einsum("nchw,coij->nohiwj", x, weight).reshape(2, 3, 2 * 3, 2 * 5)
np.testing.assert_allclose(up.forward(x), y, atol=1e-12)
print("k=2, s=2: ConvTranspose2d == einsum + reshape (no overlaps, no additions)")

for k, s in [(2, 2), (3, 2)]:
    errors = check_layer(
        ConvTranspose2d(3, 2, k, stride=s, dtype=np.float64, rng=rng),
        rng.standard_normal((2, 3, 3, 4)),
    )
    print(f"gradient check k={k}, s={s}:", {k_: f"{v:.1e}" for k_, v in errors.items()})
    assert max(errors.values()) < 1e-6, "ConvTranspose2d gradient check"

# %% [markdown]
# ## The checkerboard
#
# When the kernel size is not a multiple of the stride, the scattered patches overlap
# *unevenly*: some output pixels receive contributions from more input pixels than
# their neighbours (we counted the same thing for col2im in lesson 02). Feed a constant
# image through a transposed convolution with a constant kernel and the output should
# be constant; instead, with `k=3, s=2`, it is a grid of 1s, 2s and 4s. With `k=2, s=2`
# (the U-Net's choice) or `k=4, s=2`, every output pixel is covered equally often and
# this output is flat (except at the borders, where `k=4` patches run out).

# %%
side = 6 if SMALL else 10
flat = np.ones((1, 1, side, side))
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
for ax, k in zip(axes, [2, 3, 4], strict=True):
    layer = ConvTranspose2d(1, 1, k, stride=2, bias=False, dtype=np.float64)
    layer.params["weight"].data[...] = 1.0
    out = layer.forward(flat)[0, 0]
    im = ax.imshow(out, cmap="magma", vmin=0, vmax=4)
    ax.set_title(f"k={k}, s=2: values {np.unique(out).astype(int).tolist()}")
    ax.axis("off")
fig.colorbar(im, ax=axes, shrink=0.8)
fig.suptitle("transposed convolution of a constant image with a constant kernel", y=1.04)
plt.show()

# %% [markdown]
# Even coverage is not the whole story, though: the constant kernel hid something. A
# *learned* `k = s = 2` kernel has four different taps, and since every input pixel owns
# its 2x2 output block without overlap, a constant input comes out as the kernel's four
# taps **tiled** over the output: a pattern of period 2, a checkerboard of its own,
# until training makes the taps agree. The remedy usually recommended (Odena, Dumoulin
# and Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016) is
# **resize-then-convolve**: upsample with a fixed rule (nearest neighbour or bilinear),
# then apply an ordinary 3x3 convolution. Every output pixel then sees the same kind of
# neighbourhood, and a constant input stays constant for *any* kernel (away from the
# zero-padded border). minunet keeps the paper's `ConvTranspose2d(k=2, s=2)`.

# %%
rng_board = np.random.default_rng(7)
learned = ConvTranspose2d(1, 1, 2, stride=2, bias=False, dtype=np.float64, rng=rng_board)
tiled = learned.forward(flat)[0, 0]  # (2 side, 2 side)
taps = learned.params["weight"].data[0, 0]  # (2, 2)
np.testing.assert_array_equal(tiled, np.tile(taps, (side, side)))  # the 4 taps, repeated
assert np.ptp(tiled) > 0.1  # and they differ: not flat

resize_conv = Conv2d(1, 1, 3, padding=1, bias=False, dtype=np.float64, rng=rng_board)
resized = flat.repeat(2, axis=2).repeat(2, axis=3)  # nearest-neighbour x2: (1, 1, 2 side, 2 side)
smooth = resize_conv.forward(resized)[0, 0]
np.testing.assert_allclose(smooth[1:-1, 1:-1], resize_conv.params["weight"].data.sum(), atol=1e-12)
print(f"k=s=2, random kernel: the taps {np.round(taps.ravel(), 2).tolist()} tiled over the output")
print("resize (nearest x2) then 3x3 conv, random kernel: constant inside the border")

fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4))
for ax, img, title in [
    (axes[0], tiled, "ConvTranspose2d k=s=2, random kernel"),
    (axes[1], smooth, "resize x2, then Conv2d 3x3, random kernel"),
]:
    ax.imshow(img, cmap="magma")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.suptitle("a constant image, upsampled two ways", y=1.02)
plt.show()

# %% [markdown]
# ## What to remember
#
# - Max pool: forward keeps the max and where it was (a `uint8` offset); backward
#   sends `dout` to that one place.
# - Transposed convolution = a convolution's input-gradient computation used as a
#   layer. Its backward is a convolution. With `k = s = 2` it is a matmul and a reshape.
# - Uneven overlap (`k` not a multiple of `s`) paints a checkerboard. `k = s = 2`
#   covers evenly, but a learned kernel's four taps tile a period-2 pattern until they
#   agree; resize-then-convolve has neither problem.
#
# Next: [lesson 04](04_unet.ipynb) wires these layers into a U-Net.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/03_pool_and_upsample.py](solutions/03_pool_and_upsample.py).
#
# 1. `my_maxpool_backward(x, dout)`: the backward of a 2x2, stride-2 max pool without a
#    loop over windows. Each window's gradient goes to its maximum; on a tie, to the
#    first maximum in row-major order, as `MaxPool2d` does (the check has ties).
# 2. `my_upconv2x2(x, weight)`: the U-Net's up-convolution (`k = s = 2`, no bias) as
#    one `einsum` and a reshape; `weight` is `(C_in, C_out, 2, 2)`.

# %%
from exercises import check_my_maxpool_backward, check_my_upconv2x2, report  # noqa: E402


def my_maxpool_backward(x, dout):
    """x (N, C, H, W), dout (N, C, H/2, W/2) -> dx (N, C, H, W)."""
    ...  # TODO


def my_upconv2x2(x, weight):
    """x (N, C_in, H, W), weight (C_in, C_out, 2, 2) -> (N, C_out, 2H, 2W)."""
    ...  # TODO


report(check_my_maxpool_backward, my_maxpool_backward)
report(check_my_upconv2x2, my_upconv2x2)
