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
# # Lesson 12: seeing inside a U-Net
#
# Three ways to look inside: how far each output pixel can see (the receptive field,
# computed layer by layer and then measured by back-propagating one pixel's gradient),
# what the layers compute (feature maps per level and the first layer's filters of a
# briefly trained net), and why the paper predicts large images in overlapping tiles
# with mirrored borders (its Fig. 2), checked against `minunet.infer.tiling`.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.data.loader import normalize
from minunet.data.synthetic import make_toy_pets
from minunet.infer.tiling import predict_tiled
from minunet.model import UNet
from minunet.model.geometry import output_size
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import Adam

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 64
DEPTH = 2 if SMALL else 3

# %% [markdown]
# ## The receptive field, layer by layer
#
# The receptive field `r` of a unit is the side of the input square it depends on. Walk
# the layers from the input keeping two numbers: `r`, and the **jump** `j`, the distance in
# input pixels between neighbouring units of the current map. A layer with kernel `k`
# and stride `s` widens the field by `(k - 1)` units of the current map and multiplies
# the jump by `s`:
#
# $$r \leftarrow r + (k - 1)\, j, \qquad j \leftarrow j\, s.$$
#
# A 2x2 transposed convolution with stride 2 divides the jump by 2 and adds nothing:
# each output pixel comes from exactly one input pixel. A skip connection joins a
# shallow branch with a smaller field; the concatenation sees the larger of the two,
# which is the deep path's. So the walk follows the deep path: down the encoder, through
# the bottleneck, and up the decoder.


# %%
def receptive_field_walk(depth: int) -> list[tuple[str, int, float]]:
    """(layer, r, jump) after each layer on a U-Net's deepest path, valid or same padding."""
    r, j, rows = 1, 1.0, []

    def layer(name, k, s=1, transpose=False):
        nonlocal r, j
        if transpose:
            j /= s  # k == s: each output pixel has one input pixel, r is unchanged
        else:
            r += int((k - 1) * j)
            j *= s
        rows.append((name, r, j))

    for level in range(depth):
        layer(f"encoder.{level}.conv1", 3)
        layer(f"encoder.{level}.conv2", 3)
        layer(f"pools.{level}", 2, 2)
    layer("bottleneck.conv1", 3)
    layer("bottleneck.conv2", 3)
    for i in range(depth):
        layer(f"upconvs.{i}", 2, 2, transpose=True)
        layer(f"decoder.{i}.conv1", 3)
        layer(f"decoder.{i}.conv2", 3)
    layer("head", 1)
    return rows


for name, r, j in receptive_field_walk(DEPTH):
    print(f"{name:>18}: r = {r:4d}, jump {j:g}")
RF = receptive_field_walk(DEPTH)[-1][1]
print(f"the paper's depth-4 U-Net: r = {receptive_field_walk(4)[-1][1]}")

# %% [markdown]
# ## Exact, per position: the walk with intervals
#
# The walk is exact on the way down. On the way up it is only an average: a 2x2
# transposed convolution gives both pixels of a pair the same input pixel, so a 3x3 conv
# after it reaches one more input unit on one side for some positions and not for
# others, and the field **depends on the output position modulo 2^depth**. The exact
# version carries, for every unit of a map (one axis; the field is a square), the
# interval `[lo, hi]` of input pixels it depends on, layer by layer on a valid-padding
# net: a 3x3 conv joins units `u .. u + 2`, a pool units `2u, 2u + 1`, an up-convolution
# repeats each unit twice, a concatenation takes the union with the centre-cropped skip.


# %%
def field_intervals(side: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) input interval of every output position of a valid U-Net, one axis."""

    def conv(m):  # valid 3x3: output u sees input units u, u + 1, u + 2
        return m[0][:-2], m[1][2:]

    m, skips = (np.arange(side), np.arange(side)), []
    for _ in range(depth):
        m = conv(conv(m))
        skips.append(m)
        m = m[0][0::2], m[1][1::2]  # 2x2 pool, stride 2
    m = conv(conv(m))
    for _ in range(depth):
        m = np.repeat(m[0], 2), np.repeat(m[1], 2)  # 2x2 up-convolution, stride 2
        skip, n = skips.pop(), len(m[0])
        off = (len(skip[0]) - n) // 2  # the centre crop of the skip connection
        m = np.minimum(skip[0][off : off + n], m[0]), np.maximum(skip[1][off : off + n], m[1])
        m = conv(conv(m))
    return m


# %% [markdown]
# ## The effective receptive field, by back-propagation
#
# The gradient of one output logit with respect to the input is nonzero exactly where
# the input can change that logit: send a one-hot `dlogits` (1 at one pixel of one
# class) through `UNet.backward` and look at `dx`. For one image, max pooling routes the
# gradient through one pixel of each window and ReLUs stop it where they are off, so the
# support is a sparse subset of the field; over a batch of random images (each its own
# one-hot, the net without BatchNorm so that images do not mix) the union of supports
# spans the whole field. Its bounding box must be exactly the interval computed above,
# for every output position we try.
#
# The net: valid padding, float64, an input a little larger than the field.

# %%
side = next(s for s in range(RF + 8, 400) if output_size(s, DEPTH, "valid"))
net = UNet(3, 2, 4, DEPTH, padding="valid", batchnorm=False, dtype=np.float64, seed=0)
images = np.random.default_rng(0).standard_normal((8, 3, side, side))
lo, hi = field_intervals(side, DEPTH)
out_side = len(lo)
assert out_side == output_size(side, DEPTH, "valid") == net.output_size(side)
widths = hi - lo + 1
print(f"input {side}, output {out_side}: field width per output position {widths}")
period = widths[: 2**DEPTH]  # the pattern repeats every 2**depth output pixels
print(f"the walk's r = {RF} is their mean over one period: {period.mean():g}")
assert period.mean() == RF and np.array_equal(np.resize(period, out_side), widths)
for pos in sorted({0, out_side // 2, out_side - 1, 2**DEPTH // 2}):
    logits = net.forward(images, train=True)
    onehot = np.zeros_like(logits)
    onehot[:, 0, pos, pos] = 1.0
    erf = np.abs(net.backward(onehot)).sum(axis=(0, 1))  # (side, side)
    rows, cols = np.flatnonzero(erf.any(axis=1)), np.flatnonzero(erf.any(axis=0))
    print(
        f"output ({pos}, {pos}): gradient support rows {rows[0]}..{rows[-1]}, cols {cols[0]}..{cols[-1]}"
    )
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (lo[pos], hi[pos], lo[pos], hi[pos])
RF = widths[pos]  # the field of the last pixel tried, drawn below

fig, ax = plt.subplots(figsize=(4.5, 4))
shown = ax.imshow(np.log10(erf + 1e-12 * erf.max()), cmap="magma")
ax.add_patch(plt.Rectangle((cols[0] - 0.5, rows[0] - 0.5), RF, RF, fill=False, ec="c", lw=1.5))
ax.set_title(
    f"log10 |d logit / d x|, output ({pos}, {pos})\n(cyan: its {RF} x {RF} field)", fontsize=9
)
fig.colorbar(shown, ax=ax)
plt.show()

# %% [markdown]
# The field is not uniform: its centre, reached by many more paths, weighs far more than
# its edges (Luo et al., 2016, "effective receptive field"). The share of the gradient
# inside the central half of the box:

# %%
half = RF // 4
inner = erf[rows[0] + half : rows[-1] - half + 1, cols[0] + half : cols[-1] - half + 1]
share = inner.sum() / erf.sum()
print(
    f"central {inner.shape[0]} x {inner.shape[1]} ({inner.size / RF**2:.0%} of the area): {share:.0%} of |dx|"
)
assert share > inner.size / RF**2

# %% [markdown]
# ## Feature maps and filters of a briefly trained net
#
# A small same-padding U-Net, trained for a few dozen steps on toy pets. The encoder
# outputs at each level are the maps the skip connections carry. The first level keeps
# full resolution, and its channels typically pick out colours and edges; deeper levels
# are coarser, each unit summarising a larger patch of the image. The first layer's filters are 3x3 RGB patches,
# drawn as tiny images.

# %%
size, steps = (32, 15) if SMALL else (64, 60)
pets = make_toy_pets(16, image_size=size, seed=0)
x, y = normalize(pets.images), pets.masks.astype(np.int64)
model = UNet(3, 3, 8, DEPTH, seed=0)
criterion, opt = SoftmaxCrossEntropy(), Adam(model.parameters(), lr=3e-3)
losses = []
for step in range(steps):
    batch = slice(8 * (step % 2), 8 * (step % 2) + 8)
    losses.append(float(criterion(model.forward(x[batch], train=True), y[batch])))
    opt.zero_grad()
    model.backward(criterion.backward(), input_grad=False)
    opt.step()
print(f"{steps} steps: training loss {losses[0]:.3f} -> {losses[-1]:.3f}")
assert losses[-1] < losses[0]

# The maps each encoder level hands its skip connection, by recording the block outputs
# during an ordinary eval forward (an instance attribute shadows the method).
maps = []
for block in model.encoder:

    def recording(h, keep_cache=True, block=block):
        out = type(block).forward(block, h, keep_cache)
        maps.append(out)
        return out

    block.forward = recording
model.infer(x[:1])
for level, m in enumerate(maps):
    assert m.shape == (1, 8 * 2**level, size // 2**level, size // 2**level)

fig, axes = plt.subplots(len(maps), 5, figsize=(8, 1.7 * len(maps)))
for level, m in enumerate(maps):
    axes[level, 0].imshow(pets.images[0])
    axes[level, 0].set_title(f"level {level}", fontsize=8, loc="left")
    for c in range(4):
        axes[level, c + 1].imshow(m[0, c], cmap="gray")
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout()
plt.show()

w = model.encoder[0].conv1.params["weight"].data  # (8, 3, 3, 3)
fig, axes = plt.subplots(1, w.shape[0], figsize=(8, 1.2))
for i, ax in enumerate(axes):
    filt = w[i].transpose(1, 2, 0)
    ax.imshow((filt - filt.min()) / (filt.max() - filt.min() + 1e-12))
    ax.axis("off")
fig.suptitle("first-layer filters (each rescaled to 0..1)", fontsize=9)
plt.show()

# %% [markdown]
# ## Overlap-tile prediction, the paper's Fig. 2
#
# A valid-padding U-Net's output is smaller than its input: each output pixel needs its
# whole field around it. To segment an image of any size, the paper predicts it tile by
# tile: each input tile is `t` pixels, its output is the central `t - 2 * shrink`; tiles
# are placed so the outputs cover the image exactly, and the context missing beyond the
# image border is filled by **mirroring** the image. `minunet.infer.tiling.predict_tiled`
# does that; its mirror (`mirror_pad`) is NumPy's "symmetric" one, which repeats the edge
# pixel, because that is how training pads a sample smaller than its crop.
#
# Is the result the same as running the net once on the whole mirror-padded image? Only
# if every tile starts on the whole image's **pooling grid**: a 2x2 pool pairs pixels
# (0, 1), (2, 3), ..., so a tile that starts at an odd offset pairs them differently and
# computes a different (equally valid) function near its start. Tiles placed every
# `out` pixels start on that grid only when `out` is a multiple of `2^depth`. For depth 2
# it is (valid outputs are multiples of 4); for depth 3 and for the paper's depth 4 it
# is not (388 = 16 * 24 + 4), and such tiles would differ from a whole-image pass after
# the first one. So `predict_tiled` advances by the output side rounded down to the
# pooling grid (388 -> 384 for depth 4): neighbouring outputs then overlap by a few
# pixels, each kept from one tile, and the tiled image equals the whole-image pass.


# %%
def tiling_against_whole(depth: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Tiled and whole-image logits (K, H, W) of a valid U-Net; and tile, out, shrink."""
    start = next(s for s in range(16, 400) if output_size(s, depth, "valid"))
    t = next(s for s in range(start, 400) if (output_size(s, depth, "valid") or 0) >= 8)
    out = output_size(t, depth, "valid")
    pad = (t - out) // 2
    # An image of n tiles' outputs per side, for the smallest n >= 4 whose mirror-padded
    # image is itself a valid input: then the whole-image run exists to compare with.
    n = next(n for n in range(4, 12) if output_size(n * out + 2 * pad, depth, "valid"))
    img = normalize(make_toy_pets(1, image_size=n * out, seed=3).images)[0]  # (3, H, W)
    net = UNet(3, 3, 4, depth, padding="valid", seed=1)
    tiled = predict_tiled(net.infer, img, t, num_classes=3, depth=depth, border=pad)
    mirrored = np.pad(img, [(0, 0), (pad, pad), (pad, pad)], mode="symmetric")
    return tiled, net.infer(mirrored[None])[0], t, out, pad


tiled, whole, tile, out_tile, shrink = tiling_against_whole(2)
h = tiled.shape[1]
print(f"depth 2: {h}x{h} image in {(h // out_tile) ** 2} tiles of {tile} -> {out_tile}")
# float32 both ways; a tile's pixel is the same sum of the same products as the whole
# image's, so agreement is to a few float32 roundings at most.
np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
print("  tiled == whole mirror-padded image, everywhere")

tiled3, whole3, _, out3, _ = tiling_against_whole(3)
step3 = out3 // 8 * 8
print(f"depth 3: tiles of output {out3} = {out3 // 8} * 8 + {out3 % 8}, placed every {step3} px")
assert out3 % 8, "this case must be one where out is off the pooling grid"
np.testing.assert_allclose(tiled3, whole3, rtol=1e-5, atol=1e-5)
print("  tiled == whole mirror-padded image, everywhere, seams included")

fig, axes = plt.subplots(1, 2, figsize=(9, 4))
photo = make_toy_pets(1, image_size=h, seed=3).images[0]  # (H, W, 3) uint8, for display
axes[0].imshow(np.pad(photo, [(shrink, shrink), (shrink, shrink), (0, 0)], mode="symmetric"))
axes[0].add_patch(plt.Rectangle((-0.5, -0.5), tile, tile, fill=False, ec="b", lw=2))
axes[0].add_patch(
    plt.Rectangle((shrink - 0.5, shrink - 0.5), out_tile, out_tile, fill=False, ec="y", lw=2)
)
axes[0].add_patch(plt.Rectangle((shrink - 0.5, shrink - 0.5), h, h, fill=False, ec="w", ls="--"))
axes[0].set_title("mirror-padded image: blue input tile, yellow its output", fontsize=8)
axes[1].imshow(tiled.argmax(axis=0), cmap="viridis")
for edge in range(out_tile, h, out_tile):  # where one tile's output meets the next
    axes[1].axhline(edge - 0.5, color="w", lw=1)
    axes[1].axvline(edge - 0.5, color="w", lw=1)
axes[1].set_title("tiled prediction of an untrained net, tile by tile", fontsize=8)
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## What to remember
#
# - Receptive field: `r += (k - 1) j; j *= s`, along the deepest path; a U-Net of depth 4
#   sees far more than its 3x3 kernels suggest, and its centre counts most.
# - One output's gradient with respect to the input shows where it looks.
# - Record what a layer returns by shadowing its `forward` on the instance.
# - Overlap-tile with mirroring segments any image in bounded memory; it equals one
#   whole-image pass when the tiles' output side is a multiple of `2^depth`.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/12_seeing_inside.py](solutions/12_seeing_inside.py).
#
# 1. `my_receptive_field(layers)`: the receptive field of a chain of unpadded layers,
#    given as `[("conv", k), ("pool", k), ...]` (a pool's stride is its size). The check
#    builds each chain from minunet's `Conv2d` and `MaxPool2d` and measures the support
#    of one output's gradient.
# 2. **A mutation.** In `mirror_pad` (`minunet/infer/tiling.py`), change
#    `mode="symmetric")` to `mode="reflect")` (NumPy's other mirror, which does not repeat
#    the edge pixel). Which of these checks would fail?
#    - `"tiled_equals_whole"`: tiled == the net on the whole symmetric-padded image;
#    - `"tiled_shape"`: the tiled logits are `(K, H, W)`;
#    - `"tiled_class_map"`: `output="classes"` is the argmax of `output="logits"`.
#
#    Set `answer_mirror_mutation` to the set of names; the check runs the mutated code.

# %%
from exercises import check_answer_mirror_mutation, check_my_receptive_field, report  # noqa: E402


def my_receptive_field(layers):
    """[("conv" | "pool", k), ...] -> the side of one output's receptive field."""
    ...  # TODO


answer_mirror_mutation = None  # TODO: a set of check names

report(check_my_receptive_field, my_receptive_field)
report(check_answer_mirror_mutation, answer_mirror_mutation)
