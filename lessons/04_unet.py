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
# # Lesson 04: skip connections and the U-Net
#
# We have every layer. A U-Net wires them into a "U":
#
# - the **encoder** (left arm): blocks of two 3x3 convolutions, each followed by a 2x2
#   max pool that halves the resolution, while the channels double;
# - the **bottleneck** at the bottom;
# - the **decoder** (right arm): a 2x2 transposed convolution doubles the resolution,
#   the encoder map of the same level is **concatenated** to it (the skip connection),
#   and a block of two convolutions merges them;
# - a 1x1 convolution, the **head**, turns each pixel's features into one score
#   (logit) per class.
#
# The skip connections are the U-Net's idea: the encoder knows *where* things are (high
# resolution) and the bottleneck knows *what* they are (large receptive field); the skip
# hands the "where" across so the decoder can draw sharp boundaries.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.model import UNet
from minunet.model.summary import trace
from minunet.nn import Concat

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)

# %% [markdown]
# ## The skip connection: forward and backward
#
# `Concat` joins the encoder map `skip (N, Cs, Hs, Ws)` and the upsampled decoder map
# `up (N, Cu, H, W)` along channels, giving `(N, Cs + Cu, H, W)`. In the paper's
# "valid" network the encoder map is larger than the decoder's (unpadded convolutions
# shrink every map), so its **centre is cropped** first.
#
# Backward: concatenation just places numbers, so the gradient is split along channels.
# The decoder part goes to `up`. The skip part goes to the cropped window of `skip`;
# the border that was cropped away never reached the output, so its gradient is 0.


# %%
def concat_by_hand(skip, up):
    _, _, hs, ws = skip.shape
    _, _, h, w = up.shape
    top, left = (hs - h) // 2, (ws - w) // 2
    return np.concatenate([skip[:, :, top : top + h, left : left + w], up], axis=1)


def concat_backward_by_hand(dout, skip_shape):
    cs, (hs, ws), (h, w) = skip_shape[1], skip_shape[2:], dout.shape[2:]
    top, left = (hs - h) // 2, (ws - w) // 2
    dskip = np.zeros(skip_shape)
    dskip[:, :, top : top + h, left : left + w] = dout[:, :cs]
    return dskip, dout[:, cs:]


skip = rng.standard_normal((2, 4, 12, 12))  # the encoder map: larger
up = rng.standard_normal((2, 4, 8, 8))  # the upsampled decoder map
cat = Concat()
out = cat.forward(skip, up)
np.testing.assert_array_equal(out, concat_by_hand(skip, up))
dout = rng.standard_normal(out.shape)
for lib, hand in zip(cat.backward(dout), concat_backward_by_hand(dout, skip.shape), strict=True):
    np.testing.assert_array_equal(lib, hand)
print(f"skip {skip.shape} + up {up.shape} -> {out.shape}; Concat forward and backward == by hand")

# %% [markdown]
# ### A map used twice gets the sum of two gradients
#
# Each encoder block's output goes two ways: down, into the max pool, and across,
# into the skip connection. When one value feeds two computations, the chain rule adds
# the gradients from both (if `L` depends on `a` through `f(a)` and `g(a)`, then
# `dL/da = dL/df f'(a) + dL/dg g'(a)`). So `UNet.backward` does, at each level,
#
# ```python
# d = block.backward(pool.backward(d) + dskips.pop())
# ```
#
# Forget the `+ dskip` and the encoder learns only from the bottleneck path; forget
# the pool term and it learns only from the skip. The end-to-end gradient check below
# would catch both.
#
# ## Shapes at every level: the paper's 572 -> 388 network
#
# Ronneberger et al. (2015) used unpadded ("valid") 3x3 convolutions: each trims one
# pixel from every side, so a block of two shrinks a map by 4. Depth 4, 64 channels at
# the top, 1024 at the bottom. Follow a 572x572 tile down and up:


# %%
def valid_unet_sides(size, depth=4):
    """The map side after each block of the paper's U-Net, as (name, side) pairs."""
    sides = []
    for level in range(depth):
        size -= 4  # two unpadded 3x3 convolutions
        sides.append((f"encoder {level}", size))
        assert size % 2 == 0, "a pooled map must have an even side"
        size //= 2
    size -= 4
    sides.append(("bottleneck", size))
    for level in reversed(range(depth)):
        size = 2 * size - 4  # upsample x2, then two unpadded convolutions
        sides.append((f"decoder {level}", size))
    return sides


for name, side in valid_unet_sides(572):
    print(f"{name:<12} {side:>4} x {side}")

# %% [markdown]
# 572 in, **388 out**: the output covers only the centre of the input tile. The paper
# predicts a large image tile by tile, feeding each tile with 92 pixels of context on
# every side ("overlap-tile", `minunet.infer.tiling`). Only some input sizes work: every
# pooled map must have an even side.
#
# minunet's `UNet(padding="valid")` is that network. With 1 input channel and 2 classes
# (the paper's cell segmentation) it must have the paper's 23 convolution layers and
# 31,030,658 parameters. `summary()` computes the table from the shape formulas alone
# (no forward pass), so it is instant even for this 31-million-parameter net.

# %%
paper = UNet(
    in_channels=1, num_classes=2, base_channels=64, depth=4, padding="valid", batchnorm=False
)
assert paper.output_size(572) == 388 == valid_unet_sides(572)[-1][1]
assert paper.num_parameters() == 31_030_658
n_conv = sum(row[1] in ("Conv2d", "ConvTranspose2d") for row in trace(paper, 572, 572))
assert n_conv == 23
print(paper.summary(572))

# %% [markdown]
# Every encoder row's shape matches our hand-computed sides. Note the `concats` rows: a
# 64x64 skip map from `encoder.3` is cropped to the 56x56 of the upsampled bottleneck,
# and so on up. The last column is the memory the forward keeps for the backward (the
# im2col columns dominate: 9x each conv input).
#
# Where do the parameters live? Mostly at the bottom: a 3x3 convolution from 1024 to
# 1024 channels alone has `1024 * 1024 * 9 = 9.4 M` weights.

# %%
rows = trace(paper, 572, 572)
levels = {}
for name, _, _, params, _, _ in rows:
    key = name.split(".")[0] + ("." + name.split(".")[1] if name[0] in "ed" else "")
    levels[key] = levels.get(key, 0) + params
levels = {k: v for k, v in levels.items() if v}
fig, ax = plt.subplots(figsize=(9, 3))
ax.bar(range(len(levels)), [v / 1e6 for v in levels.values()], color="teal")
ax.set_xticks(range(len(levels)), list(levels), rotation=45, ha="right")
ax.set_ylabel("parameters (millions)")
ax.set_title("the paper's U-Net: parameters per block")
plt.show()

# %% [markdown]
# ## minunet's default: "same" padding
#
# Padding every 3x3 convolution by 1 keeps sizes, so output = input size and the skip
# maps need no crop. The input side must then be divisible by `2**depth`. This is the
# network we train in lesson 07. The picture below draws the U: one box per block, at
# its level, labelled with its output shape for a 128x128 RGB input. (minunet numbers
# the decoder in the order it runs, from the bottom up: `decoder.0` is the deepest, and
# `upconvs.0` and `concats.0` belong to it.)

# %%
net = UNet(in_channels=3, num_classes=3, base_channels=16, depth=4)
rows = trace(net, 128, 128)
block_out = {}
for name, _, shape, *_ in rows:
    parts = name.split(".")
    if parts[0] in ("encoder", "decoder") or parts[0] == "bottleneck":
        key = parts[0] if parts[0] == "bottleneck" else f"{parts[0]}.{parts[1]}"
        block_out[key] = shape  # the last layer of the block wins

fig, ax = plt.subplots(figsize=(10, 4))
positions = {}
for lv in range(4):
    positions[f"encoder.{lv}"] = (lv, -lv)
    positions[f"decoder.{3 - lv}"] = (8 - lv, -lv)
positions["bottleneck"] = (4, -4)
for key, (px, py) in positions.items():
    _, ch, hh, ww = block_out[key]
    ax.add_patch(plt.Rectangle((px - 0.4, py - 0.3), 0.8, 0.6, color="lightsteelblue"))
    ax.text(px, py, f"{key}\n{ch} x {hh} x {ww}", ha="center", va="center", fontsize=8)
for lv in range(4):
    ax.annotate(
        "",
        xy=(8 - lv - 0.42, -lv),
        xytext=(lv + 0.42, -lv),
        arrowprops=dict(arrowstyle="->", color="gray", ls="--"),
    )
ax.text(4, 0.45, "skip connections (concat)", ha="center", color="gray")
ax.set_xlim(-0.6, 8.6)
ax.set_ylim(-4.5, 0.8)
ax.axis("off")
ax.set_title("UNet(base 16, depth 4), 128x128 input: block outputs (channels x H x W)")
plt.show()

# %% [markdown]
# ## End to end: forward, backward, and a gradient check through the whole U
#
# `UNet.forward` runs encoder, bottleneck and decoder, keeping each encoder output for
# its skip; `UNet.backward` takes `dL/dlogits` and walks the U in reverse, filling every
# parameter's `.grad` and returning `dL/dx`. We check a few numbers of it against
# central differences of `L = sum(logits * R)`, in float64, for a tiny same-padding
# U-Net with BatchNorm. (Checking *every* weight would take thousands of forward
# passes; a random sample of entries of each kind of parameter catches a wrong formula
# just as surely.)

# %%
side = 8
tiny = UNet(in_channels=2, num_classes=3, base_channels=2, depth=2, dtype=np.float64, seed=1)
x = rng.standard_normal((2, 2, side, side))
R = rng.standard_normal((2, 3, side, side))


def loss():
    return float(np.sum(tiny.forward(x) * R))


tiny.forward(x)
tiny.zero_grad()
dx = tiny.backward(R)

params = dict(tiny.named_parameters())
checks = [("input", x, dx)] + [
    (name, params[name].data, params[name].grad)
    for name in [
        "encoder.0.conv1.weight",
        "encoder.1.bn2.weight",
        "bottleneck.conv2.weight",
        "upconvs.0.weight",
        "upconvs.1.bias",
        "decoder.1.conv1.weight",
        "head.weight",
    ]
]
eps = 1e-6
worst = 0.0
for name, array, grad in checks:
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
        old = flat[i]
        flat[i] = old + eps
        plus = loss()
        flat[i] = old - eps
        minus = loss()
        flat[i] = old
        numeric = (plus - minus) / (2 * eps)
        err = abs(numeric - gflat[i]) / max(abs(numeric), abs(gflat[i]), 1e-8)
        worst = max(worst, err)
    print(f"{name:<26} {array.shape}  analytic {gflat[i]:+.6f}  numeric {numeric:+.6f}")
print(f"worst relative error over {4 * len(checks)} entries: {worst:.1e}")
assert worst < 1e-5

# %% [markdown]
# ## What to remember
#
# - Encoder: conv-conv-pool, channels x2, size /2. Decoder: up x2, concat the skip,
#   conv-conv. Head: 1x1 conv to one logit per class.
# - A value used twice gets the sum of both gradients: the encoder outputs (pool +
#   skip).
# - The paper's valid network maps 572 -> 388 with 31,030,658 parameters; minunet's
#   `summary()` shows every shape, and the library asserts match the paper.
#
# Next: [lesson 05](05_loss_and_metrics.ipynb), from logits to a loss and to scores.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions: [solutions/04_unet.py](solutions/04_unet.py).
#
# 1. `my_valid_output_size(size, depth)`: the output side of a valid-padding U-Net for an
#    input side, or `None` where the input does not fit (a pooled map with an odd side,
#    or nothing left). 572 must give 388 at depth 4.
# 2. **A mutation.** In `UNet.backward` (`minunet/model/unet.py`), change
#    `d += dskips.pop()` to `d = dskips.pop()`. Which of these checks would fail?
#    - `"output_shape"`: the forward's output shape;
#    - `"gradient_head"`: a gradient check of the head's weight;
#    - `"gradient_first_conv"`: a gradient check of the first conv's weight.
#
#    Set `answer_skip_mutation` to the set of names; the check runs the mutated code.

# %%
from exercises import check_answer_skip_mutation, check_my_valid_output_size, report  # noqa: E402


def my_valid_output_size(size, depth):
    """Output side of a valid-padding U-Net, or None."""
    ...  # TODO


answer_skip_mutation = None  # TODO: a set of check names

report(check_my_valid_output_size, my_valid_output_size)
report(check_answer_skip_mutation, answer_skip_mutation)
