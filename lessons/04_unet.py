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
from minunet.nn import Concat, ConvTranspose2d

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
# Forward above copies both maps into a new array. The library's U-Net saves one of the two
# copies: before the up-convolution runs, the decoder asks the join for its `room`, the
# `(N, Cu, H, W)` part of the output buffer behind the skip's channels. The up-convolution
# writes its map straight there (`ConvTranspose2d.forward(x, out=room)`), and the join, handed
# that same view, copies only the skip in. The numbers are the same; the decoder map is
# simply never copied (a room serves one forward: anything else is concatenated as above).

# %%
own = np.random.default_rng(1)  # its own generator: the lesson's later draws stay as they were
upsample = ConvTranspose2d(6, 4, 2, stride=2, dtype=np.float64, rng=own)
low = own.standard_normal((2, 6, 4, 4))  # the decoder map before upsampling: 4x4 -> 8x8
room = cat.room(skip, (4, 8, 8))  # (2, 4, 8, 8): a view of the join's buffer
joined = cat.forward(skip, upsample.forward(low, out=room))
np.testing.assert_array_equal(joined, concat_by_hand(skip, upsample.forward(low)))
assert np.shares_memory(joined, room), "the up map must lie inside the join, not be copied"
print(f"joined {joined.shape}: the up-convolution wrote channels 4..7 of it in place")

# %% [markdown]
# ### A map used twice gets the sum of two gradients
#
# Each encoder block's output goes two ways: down, into the max pool, and across,
# into the skip connection. When one value feeds two computations, the chain rule adds
# the gradients from both (if `L` depends on `a` through `f(a)` and `g(a)`, then
# `dL/da = dL/df f'(a) + dL/dg g'(a)`). So `UNet.backward` does, at each level,
#
# ```python
# d = self.pools[level].backward(d)  # the gradient from the path down
# d += dskips.pop()  # plus the gradient from the skip across
# d = self.encoder[level].backward(d)
# ```
#
# Forget the `+= dskip` and the encoder learns only from the bottleneck path; forget
# the pool term and it learns only from the skip. The end-to-end gradient check below
# catches the first: we run it once more with the skip's gradient removed, and watch it
# fail.
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
# network we train in lesson 07. The picture below draws the U from a real `UNet`'s
# `trace` (the rows of `summary()`): one box per block, at its level, labelled with its
# output shape for a 128x128 RGB input; red arrows are the max pools down, teal the 2x2
# transposed convolutions up, grey the skips with the channel count after each concat.
# (minunet numbers the decoder in the order it runs, from the bottom up: `decoder.0` is
# the deepest, and `upconvs.0` and `concats.0` belong to it.)

# %%
net = UNet(in_channels=3, num_classes=3, base_channels=16, depth=4)
shapes = {name: shape for name, _, shape, *_ in trace(net, 128, 128)}  # every layer's output
depth = net.depth


def block_out(key):
    """Output shape of a block ("encoder.1", "bottleneck", ...): its last layer's row."""
    return [shape for name, shape in shapes.items() if name.startswith(key + ".")][-1]


step = 1.5  # horizontal distance between levels
positions = {"bottleneck": (step * depth, -depth)}
for lv in range(depth):
    positions[f"encoder.{lv}"] = (step * lv, -lv)
    positions[f"decoder.{depth - 1 - lv}"] = (
        step * (2 * depth - lv),
        -lv,
    )  # decoder.0 is the deepest

fig, ax = plt.subplots(figsize=(12, 5))
arrow = dict(arrowstyle="-|>", lw=1.5)
for lv in range(depth):
    enc, dec = positions[f"encoder.{lv}"], positions[f"decoder.{depth - 1 - lv}"]
    below = positions[f"encoder.{lv + 1}" if lv + 1 < depth else "bottleneck"]
    below_dec = positions[f"decoder.{depth - 2 - lv}" if lv + 1 < depth else "bottleneck"]
    i = depth - 1 - lv  # upconvs.i and concats.i belong to decoder.i
    _, c_pool, h_pool, _ = shapes[f"pools.{lv}"]
    _, c_up, h_up, _ = shapes[f"upconvs.{i}"]
    _, c_cat, _, _ = shapes[f"concats.{i}"]
    ax.annotate("", below, enc, arrowprops=dict(color="crimson", shrinkA=18, shrinkB=18, **arrow))
    ax.text(
        (enc[0] + below[0]) / 2 - 0.12,
        (enc[1] + below[1]) / 2,
        f"pool\n{c_pool}x{h_pool}",
        ha="right",
        va="center",
        fontsize=7,
        color="crimson",
    )
    ax.annotate("", dec, below_dec, arrowprops=dict(color="teal", shrinkA=18, shrinkB=18, **arrow))
    ax.text(
        (dec[0] + below_dec[0]) / 2 + 0.12,
        (dec[1] + below_dec[1]) / 2,
        f"up 2x2\n{c_up}x{h_up}",
        ha="left",
        va="center",
        fontsize=7,
        color="teal",
    )
    ax.annotate(
        "",
        (dec[0] - 0.62, dec[1]),
        (enc[0] + 0.62, enc[1]),
        arrowprops=dict(color="gray", ls="--", **arrow),
    )
    ax.text(
        (enc[0] + dec[0]) / 2,
        enc[1] + 0.3,
        f"concat: skip {block_out(f'encoder.{lv}')[1]} + up {c_up} = {c_cat} ch",
        ha="center",
        va="bottom",
        fontsize=7,
        color="gray",
    )
for key, (px, py) in positions.items():
    _, ch, hh, ww = block_out(key)
    ax.add_patch(plt.Rectangle((px - 0.6, py - 0.28), 1.2, 0.56, color="lightsteelblue"))
    ax.text(px, py, f"{key}\n{ch} x {hh} x {ww}", ha="center", va="center", fontsize=7.5)
_, k_head, h_head, w_head = shapes["head"]
ax.text(
    step * 2 * depth + 0.7,
    0,
    f"head 1x1\n-> {k_head} x {h_head} x {w_head}",
    fontsize=7.5,
    va="center",
)
ax.text(-0.7, 0, f"input\n{net.in_channels} x 128 x 128", fontsize=7.5, va="center", ha="right")
ax.set_xlim(-2.0, step * 2 * depth + 2.0)
ax.set_ylim(-depth - 0.5, 0.8)
ax.axis("off")
ax.set_title(
    f"UNet(base 16, depth {depth}), 128x128 RGB input: block outputs (channels x H x W),"
    " from summary's trace"
)
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
def spot_check(net, x, names, rng, samples=4, eps=1e-6):
    """Worst relative error of net.backward against central differences of
    L = sum(net.forward(x) * R), over `samples` random entries of x and of each named
    parameter. Prints one line per array."""
    R = rng.standard_normal(net.forward(x).shape)

    def loss():
        return float(np.sum(net.forward(x) * R))

    net.forward(x)
    net.zero_grad()
    dx = net.backward(R)
    params = dict(net.named_parameters())
    checks = [("input", x, dx)] + [(name, params[name].data, params[name].grad) for name in names]
    worst = 0.0
    for name, array, grad in checks:
        flat, gflat = array.reshape(-1), grad.reshape(-1)
        errors = []
        for i in rng.choice(flat.size, size=min(samples, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            plus = loss()
            flat[i] = old - eps
            minus = loss()
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            errors.append(abs(numeric - gflat[i]) / max(abs(numeric), abs(gflat[i]), 1e-8))
        worst = max(worst, *errors)
        print(f"  {name:<26} {str(array.shape):<16} worst relative error {max(errors):.1e}")
    return worst


side = 8
tiny = UNet(in_channels=2, num_classes=3, base_channels=2, depth=2, dtype=np.float64, seed=1)
x = rng.standard_normal((2, 2, side, side))
names = [
    "encoder.0.conv1.weight",
    "encoder.1.bn2.weight",
    "bottleneck.conv2.weight",
    "upconvs.0.weight",
    "upconvs.1.bias",
    "decoder.1.conv1.weight",
    "head.weight",
]
print("same padding, depth 2:")
worst = spot_check(tiny, x, names, rng)
print(f"worst relative error over {4 * (len(names) + 1)} entries: {worst:.1e}")
# float64 central differences with eps = 1e-6 are good to ~1e-9 relative (lesson 02); a
# wrong term is off by order 1. 1e-5 leaves room for entries whose gradient is small.
assert worst < 1e-5

# %% [markdown]
# Now break it on purpose. Each `Concat` returns `(dskip, dup)`; we make the concats of
# this one network return a zero `dskip`, which is exactly what forgetting
# `d += dskips.pop()` would do. The decoder's parameters are untouched by this (their
# gradients flow before the concat), but every encoder weight and the input lose one of
# their two paths, and the check must see it.

# %%
saved = [cat.backward for cat in tiny.concats]
for cat, original in zip(tiny.concats, saved, strict=True):
    cat.backward = lambda dout, original=original: (0 * original(dout)[0], original(dout)[1])
print("the same check, the skip's gradient dropped:")
try:
    broken = spot_check(tiny, x, names[:1] + names[-1:], rng)
finally:
    for cat in tiny.concats:
        del cat.backward  # back to the class's method
print(f"worst relative error: {broken:.1e}")
assert broken > 1e-2  # the encoder's gradients are visibly wrong: the check would fail

# %% [markdown]
# The paper's "valid" network takes a different road through the same code: every
# convolution is unpadded, so each skip map is larger than the decoder map it meets,
# and `Concat` crops it (its backward pads the gradient with zeros). The same spot check
# on a tiny valid U-Net, 44x44 in, 4x4 out, checks that road end to end.

# %%
valid = UNet(2, 3, base_channels=2, depth=2, padding="valid", dtype=np.float64, seed=2)
x_valid = rng.standard_normal((1, 2, 44, 44))
assert valid.output_size(44) == 4
# Not upconvs.1.bias this time: in a valid net its true gradient is exactly 0 (a constant
# shift of the upsampled map stays a constant shift through the unpadded conv after it,
# and that conv's BatchNorm subtracts it again), so its relative error would compare two
# rounding noises. Same padding breaks the constancy at the zero-padded border.
valid_names = [name.replace("upconvs.1.bias", "upconvs.1.weight") for name in names]
print("valid padding, depth 2, 44 -> 4:")
worst_valid = spot_check(valid, x_valid, valid_names, rng)
print(f"worst relative error: {worst_valid:.1e}")
assert worst_valid < 1e-5

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
