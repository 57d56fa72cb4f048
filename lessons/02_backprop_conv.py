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
# # Lesson 02: backpropagation through convolution, BatchNorm and ReLU
#
# Training needs, for every parameter, the derivative of the loss with respect to it.
# Backpropagation gets them layer by layer, last layer first: each layer receives
# `dout = dL/d(out)`, the gradient of the loss with respect to its output, and must
# produce
#
# - `dL/d(parameter)` for each of its parameters, and
# - `dx = dL/d(input)`, which becomes the `dout` of the layer before it.
#
# minunet writes every one of these by hand. This lesson derives the three that make up
# a U-Net block, `conv 3x3 -> BatchNorm -> ReLU`, checks each against the library, and
# checks the library against the definition of a derivative with a **gradient check**.
#
# Convention: a gradient has the shape of the thing it differentiates. `dw` is
# `(K, C, kh, kw)` like the weight `w`; `dx` is `(N, C, H, W)` like `x`. (As in lesson 01,
# `W` is a width, never the weight.)

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.core.gradcheck import check_layer, max_relative_error, numerical_gradient
from minunet.core.im2col import col2im, im2col
from minunet.nn import BatchNorm2d, Conv2d, ReLU

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)

# %% [markdown]
# ## The convolution's backward: three lines of calculus
#
# Lesson 01 wrote the forward pass, per image `n`, as a matrix product:
#
# $$\text{out}[n] = w_2\,\text{cols}[n] + b, \qquad
#   w_2: (K, D),\ \text{cols}[n]: (D, P),\ \text{out}[n]: (K, P),\ D = C k_h k_w$$
#
# (`D`, the length of one column). Written element by element,
# `out[n, k, p] = sum_r w2[k, r] cols[n, r, p] + b[k]`, with `r` running over the `D`
# rows of a column. Each gradient follows from asking "which outputs does this number
# touch, and with which coefficient?":
#
# - `w2[k, r]` touches `out[n, k, p]` for every `n, p`, with coefficient
#   `cols[n, r, p]`. So
#   $$dw_2 = \sum_n d\text{out}[n]\;\text{cols}[n]^\top \qquad (K, P)(P, D) = (K, D).$$
# - `b[k]` touches every `out[n, k, p]` with coefficient 1, so
#   $db[k] = \sum_{n, p} d\text{out}[n, k, p]$.
# - `cols[n, r, p]` touches `out[n, k, p]` for every `k`, with coefficient `w2[k, r]`:
#   $$d\text{cols}[n] = w_2^\top\, d\text{out}[n] \qquad (D, K)(K, P) = (D, P).$$
#
# The first two are the parameter gradients. The third is the gradient with respect to
# the *columns*, not yet the input. One more step, through im2col, is needed.
#
# ## Backward through im2col is col2im
#
# im2col *copies*: input pixel `x[n, c, h, w]` is copied into every column whose patch
# covers it (up to 9 for a 3x3 kernel). A number used in several places gets the **sum**
# of the gradients from all of them (the same rule that makes a skip connection work,
# lesson 04). So
#
# $$dx[n, c, h, w] = \sum_{\text{every } (r, p) \text{ that copied } x[n,c,h,w]} d\text{cols}[n, r, p].$$
#
# That operation, "send each column entry back to the pixel it came from, adding where
# patches overlap", is called **col2im**. It is the transpose (adjoint) of im2col, not
# its inverse: an inverse would *average* the overlapping copies; the gradient *adds*
# them. So the convolution's input gradient is
#
# $$dx = \text{col2im}\big(w_2^\top\, d\text{out}\big).$$
#
# Here is col2im written one output pixel at a time, mirroring `im2col_loops` of lesson
# 01 with `=` turned into `+=`.


# %%
def col2im_loops(cols, x_shape, kh, kw, stride=1, padding=0):
    """Add each column back onto its patch. cols (N, C*kh*kw, Ho*Wo) -> (N, C, H, W)."""
    n, c, h, w = x_shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    x_pad = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=cols.dtype)
    for oh in range(ho):
        for ow in range(wo):
            patch = cols[:, :, oh * wo + ow].reshape(n, c, kh, kw)
            x_pad[:, :, oh * stride : oh * stride + kh, ow * stride : ow * stride + kw] += patch
    # The padding ring held zeros that were not part of x: their gradient is dropped.
    return x_pad[:, :, padding : padding + h, padding : padding + w]


x_shape = (2, 3, 7, 6)
for stride, padding in [(1, 1), (1, 0), (2, 1)]:
    cols_shape = im2col(np.zeros(x_shape), 3, 3, stride, padding).shape
    dcols = rng.standard_normal(cols_shape)
    np.testing.assert_allclose(
        col2im(dcols, x_shape, 3, 3, stride, padding),
        col2im_loops(dcols, x_shape, 3, 3, stride, padding),
        atol=1e-12,
    )
print("minunet.core.im2col.col2im == the loop col2im: OK")

# %% [markdown]
# ### The adjoint identity
#
# "col2im is the transpose of im2col" has a precise meaning, and it is a check that
# would catch an off-by-one in either: for any `x` and any `c` of the right shapes,
#
# $$\langle \text{im2col}(x),\ c\rangle = \langle x,\ \text{col2im}(c)\rangle,$$
#
# where `<a, b>` is the sum of the elementwise product. (For a matrix `A`,
# `<Ax, c> = <x, A^T c>` is the definition of the transpose.)

# %%
x = rng.standard_normal(x_shape)
c = rng.standard_normal(im2col(x, 3, 3, 2, 1).shape)
lhs = np.sum(im2col(x, 3, 3, 2, 1) * c)
rhs = np.sum(x * col2im(c, x_shape, 3, 3, 2, 1))
print(f"<im2col(x), c> = {lhs:.12f}\n<x, col2im(c)> = {rhs:.12f}")
assert abs(lhs - rhs) < 1e-9 * max(1.0, abs(lhs))

# %% [markdown]
# ### How many patches cover each pixel?
#
# col2im of all-ones columns counts, for every pixel, the patches that copied it: the
# number of gradient contributions it sums. With padding 1 and stride 1, interior pixels
# are in 9 patches, edges in 6, corners in 4. With stride 2 the pattern is uneven: some
# pixels are in 4 patches, some in 2, some in 1. Keep this picture in mind; it returns
# in lesson 03 as the "checkerboard" of transposed convolutions.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
for ax, stride in zip(axes, [1, 2], strict=True):
    shape = (1, 1, 9, 9)
    ones = np.ones(im2col(np.zeros(shape), 3, 3, stride, 1).shape)
    counts = col2im(ones, shape, 3, 3, stride, 1)[0, 0]
    ax.imshow(counts, cmap="magma", vmin=0, vmax=9)
    for (r, q), v in np.ndenumerate(counts):
        ax.text(q, r, int(v), ha="center", va="center", color="w" if v < 5 else "k", fontsize=9)
    ax.set_title(f"3x3 kernel, padding 1, stride {stride}")
    ax.axis("off")
fig.suptitle("col2im(ones): how many patches copied each pixel", y=1.03)
plt.show()

# %% [markdown]
# ## The whole backward, by hand, against `Conv2d.backward`
#
# The forward caches the columns (`cols`), because `dw` needs them; the backward is the
# three formulas. We compute them here in float64 and compare with the library.

# %%
n, cin, h, w, k = 2, 3, 7, 6, 4
x = rng.standard_normal((n, cin, h, w))
conv = Conv2d(cin, k, 3, padding=1, dtype=np.float64, rng=rng)
out = conv.forward(x)  # (N, K, H, W)
dout = rng.standard_normal(out.shape)  # pretend the layers above sent us this
conv.zero_grad()
dx_lib = conv.backward(dout)

weight = conv.params["weight"].data
cols = im2col(x, 3, 3, 1, 1)  # (N, D, P)
d = dout.reshape(n, k, -1)  # (N, K, P)
w2 = weight.reshape(k, -1)  # (K, D)
dw_hand = sum(d[i] @ cols[i].T for i in range(n)).reshape(weight.shape)
db_hand = d.sum(axis=(0, 2))
dx_hand = col2im_loops(np.stack([w2.T @ d[i] for i in range(n)]), x.shape, 3, 3, 1, 1)

np.testing.assert_allclose(conv.params["weight"].grad, dw_hand, atol=1e-12)
np.testing.assert_allclose(conv.params["bias"].grad, db_hand, atol=1e-12)
np.testing.assert_allclose(dx_lib, dx_hand, atol=1e-12, err_msg="Conv2d dx")
print("Conv2d.backward: dw, db and dx equal the hand-derived formulas")

# %% [markdown]
# ## The gradient check: the definition of a derivative
#
# Agreement with our own derivation proves the code does what we *think*; it does not
# prove our thinking is right. For that we go back to the definition. For a scalar loss
# `L` and one entry `x_i`,
#
# $$\frac{\partial L}{\partial x_i} \approx \frac{L(x + \varepsilon e_i) - L(x - \varepsilon e_i)}{2\varepsilon},$$
#
# the *central difference*, accurate to `O(eps^2)`. In float64 with `eps = 1e-6` it is
# good to about 1e-9 relative, so a correct backward agrees to ~1e-8 and a wrong one
# is off by orders of magnitude more.
#
# Which loss? Any scalar works, as long as it does not hide an error. The trick used by
# `minunet.core.gradcheck`: pick a fixed random array `R` shaped like the output and let
# `L = sum(out * R)`. Then `dL/d(out) = R` exactly, so `backward(R)` must give the
# numerical gradient of `L`. (`R` is random so that every output entry is weighted
# differently: the BatchNorm section below shows a layer for which the plain
# `L = sum(out)` would let a broken backward pass.) Here it is written out once for the
# input of the convolution.

# %%
R = rng.standard_normal(out.shape)


def loss():
    return float(np.sum(conv.forward(x) * R))


conv.forward(x)
conv.zero_grad()
dx_analytic = conv.backward(R)

dx_numeric = np.zeros_like(x)
eps = 1e-6
for idx in np.ndindex(x.shape):
    old = x[idx]
    x[idx] = old + eps
    plus = loss()
    x[idx] = old - eps
    minus = loss()
    x[idx] = old
    dx_numeric[idx] = (plus - minus) / (2 * eps)

err = max_relative_error(dx_analytic, dx_numeric)
print(f"conv dx: max relative error {err:.2e}")
assert err < 1e-7

# %% [markdown]
# `minunet.core.gradcheck.check_layer` does the same for every input and every parameter
# (it is the loop above, wrapped). Strided, unpadded, 1x1 and dilated convolutions all
# pass:

# %%
for kwargs in [dict(padding=1), dict(stride=2), dict(kernel_size=1), dict(dilation=2, padding=2)]:
    kernel = kwargs.pop("kernel_size", 3)
    layer = Conv2d(cin, k, kernel, dtype=np.float64, rng=rng, **kwargs)
    errors = check_layer(layer, rng.standard_normal((2, cin, 6, 5)))
    print(f"kernel {kernel} {kwargs}: " + ", ".join(f"{k_}={v:.1e}" for k_, v in errors.items()))
    assert max(errors.values()) < 1e-6, "Conv2d gradient check"

# %% [markdown]
# ## ReLU
#
# `out = max(x, 0)`: the derivative is 1 where `x > 0` and 0 elsewhere, so
# `dx = dout * (x > 0)`. minunet caches the *output* instead of the input (it is
# positive exactly where the input was), which saves keeping a second array.

# %%
relu = ReLU()
xr = rng.standard_normal((2, 3, 4, 4))
dr = rng.standard_normal(xr.shape)
relu.forward(xr)
np.testing.assert_array_equal(relu.backward(dr), dr * (xr > 0))
print("ReLU.backward == dout * (x > 0)")

# %% [markdown]
# ## BatchNorm: a backward worth deriving slowly
#
# BatchNorm normalises each channel over the batch and the image. For channel `c`, with
# the `m = N*H*W` values `x_i` of that channel:
#
# $$\mu = \tfrac1m \textstyle\sum_i x_i,\quad
#   \sigma^2 = \tfrac1m \textstyle\sum_i (x_i-\mu)^2,\quad
#   r = (\sigma^2+\epsilon)^{-1/2},\quad
#   \hat x_i = (x_i - \mu)\, r,\quad
#   y_i = \gamma\, \hat x_i + \beta.$$
#
# The parameters are easy: `dbeta = sum_i dy_i` and `dgamma = sum_i dy_i * xhat_i`
# (summed over `N, H, W`, one number per channel).
#
# The input is the interesting part, because **every** `x_j` affects **every** `y_i`
# through `mu` and `r`. Write `g_i = dL/dxhat_i = gamma * dy_i`. Three paths lead from
# `x_j` to the loss: directly through `xhat_j`, through the mean, and through the
# variance:
#
# $$\frac{\partial L}{\partial x_j}
#   = g_j\, r \;+\; \frac{\partial L}{\partial \mu}\frac{1}{m} \;+\;
#     \frac{\partial L}{\partial \sigma^2}\frac{2(x_j-\mu)}{m}.$$
#
# With `dxhat_i/dsigma^2 = -(x_i - mu) r^3 / 2`, the variance term is
# `dL/dsigma^2 = -(r^3/2) sum_i g_i (x_i - mu)`, and its contribution to `dx_j` is
# `-(r/m) xhat_j sum_i g_i xhat_i`. The mean enters `xhat_i` directly (`-r` each) and
# through the variance, whose derivative with respect to `mu` is
# `-(2/m) sum_i (x_i - mu) = 0`; so `dL/dmu = -r sum_i g_i`. Putting the three together:
#
# $$dx_j = r\Big(g_j - \tfrac1m \textstyle\sum_i g_i - \hat x_j\, \tfrac1m \sum_i g_i \hat x_i\Big).$$
#
# Read it as: take the incoming gradient, remove its mean, remove its component along
# `xhat`, scale by `1/std`. Those are exactly the two directions a normalisation cannot
# see (a shift and a rescaling of `x` leave `xhat` unchanged), which is a good sanity
# check on the formula. Substituting `g = gamma * dy`, `sum g = gamma * dbeta` and
# `sum g xhat = gamma * dgamma` gives minunet's form,
# `dx = (gamma r / m) (m dy - dbeta - xhat dgamma)`.
#
# The forward keeps what the backward needs: `xhat` (N, C, H, W) and `r` (C,).
#
# The graph of one channel's forward pass, drawn below, shows the three paths: every
# `x_j` reaches `xhat` directly (through `x - mu`), through the mean, and through the
# variance. The backward walks these arrows in reverse, adding where paths meet.

# %%
nodes = {  # name: (column, row, label)
    "x": (0, 0, "$x$\n(m values)"),
    "mu": (1.6, 1.2, "$\\mu = \\mathrm{mean}(x)$"),
    "xc": (3.2, 0, "$x - \\mu$"),
    "var": (4.9, 1.2, "$\\sigma^2 = \\mathrm{mean}((x-\\mu)^2)$"),
    "r": (7.4, 1.2, "$r = (\\sigma^2 + \\epsilon)^{-1/2}$"),
    "xhat": (8.8, 0, "$\\hat x = (x - \\mu)\\, r$"),
    "gb": (10.4, 1.2, "$\\gamma, \\beta$"),
    "y": (10.6, 0, "$y = \\gamma \\hat x + \\beta$"),
}
edges = [  # (from, to, colour): the three paths from x, and the parameters
    ("x", "xc", "tab:blue"),
    ("xc", "xhat", "tab:blue"),
    ("x", "mu", "tab:orange"),
    ("mu", "xc", "tab:orange"),
    ("xc", "var", "tab:green"),
    ("var", "r", "tab:green"),
    ("r", "xhat", "tab:green"),
    ("xhat", "y", "k"),
    ("gb", "y", "gray"),
]
fig, ax = plt.subplots(figsize=(12, 2.6))
for a, b, colour in edges:
    (xa, ya, _), (xb_, yb_, _) = nodes[a], nodes[b]
    ax.annotate(
        "",
        (xb_, yb_),
        (xa, ya),
        arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.8, shrinkA=22, shrinkB=22),
    )
for px, py, label in nodes.values():
    ax.text(
        px,
        py,
        label,
        ha="center",
        va="center",
        fontsize=10,
        bbox=dict(boxstyle="round", fc="lightsteelblue", ec="none"),
    )
ax.plot([], [], color="tab:blue", label="direct: through $x - \\mu$")
ax.plot([], [], color="tab:orange", label="through the mean")
ax.plot([], [], color="tab:green", label="through the variance")
ax.legend(loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.45, -0.35))
ax.set_xlim(-0.8, 11.6)
ax.set_ylim(-0.5, 1.7)
ax.axis("off")
ax.set_title("BatchNorm's forward, one channel: the three paths from x to the output")
plt.show()


# %%
def batchnorm_backward_by_hand(dy, x, gamma, eps=1e-5):
    """dx, dgamma, dbeta for training-mode BatchNorm. dy, x (N, C, H, W); gamma (C,)."""
    axes = (0, 2, 3)
    mu = x.mean(axis=axes, keepdims=True)
    r = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + eps)
    xhat = (x - mu) * r
    g = gamma[:, None, None] * dy
    dx = r * (
        g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)
    )
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


bn = BatchNorm2d(3, dtype=np.float64)
bn.params["weight"].data[...] = rng.uniform(0.5, 2.0, 3)  # gamma != 1, to see it
xb = rng.standard_normal((4, 3, 5, 5)) * 3 + 1
dyb = rng.standard_normal(xb.shape)
bn.forward(xb)
bn.zero_grad()
dx_lib = bn.backward(dyb)
dx_hand, dgamma_hand, dbeta_hand = batchnorm_backward_by_hand(dyb, xb, bn.params["weight"].data)
np.testing.assert_allclose(dx_lib, dx_hand, atol=1e-12, err_msg="BatchNorm2d dx")
np.testing.assert_allclose(bn.params["weight"].grad, dgamma_hand, atol=1e-10)
np.testing.assert_allclose(bn.params["bias"].grad, dbeta_hand, atol=1e-10)
print("BatchNorm2d.backward (training mode) == the derivation")

# The two invisible directions: per channel, dx is orthogonal to a shift (a constant) and,
# up to the small eps in the square root, to xhat.
xhat = bn._cache.xhat  # what the forward saved for the backward
print("sum of dx per channel:       ", np.abs(dx_lib.sum(axis=(0, 2, 3))).max())
print("sum of dx * xhat per channel:", np.abs((dx_lib * xhat).sum(axis=(0, 2, 3))).max())
print("for scale, sum of |dx|:      ", np.abs(dx_lib).sum(axis=(0, 2, 3)).min())

errors = check_layer(bn, xb.copy())
print("gradient check:", ", ".join(f"{k_}={v:.1e}" for k_, v in errors.items()))
assert max(errors.values()) < 1e-6, "BatchNorm2d gradient check"

# %% [markdown]
# The first sum is zero to rounding: shifting every `x` of a channel by the same amount
# does not change BatchNorm's output, so the gradient has no component in that
# direction. The second is tiny but not zero: scaling a channel around its mean would
# leave the output unchanged only if `eps` were 0; with `eps = 1e-5` in
# `1/sqrt(var + eps)` the layer is very slightly sensitive to scale.
#
# ### Why that gradient check needs its random `R`
#
# Those two invisible directions are a trap for a careless gradient check. Take the
# simplest scalar, `L = sum(out)`, i.e. `R` all ones and `dy = 1`. Per channel,
# `sum_i y_i = gamma sum_i xhat_i + m beta = m beta`, because `xhat` has mean 0 whatever
# `x` is: `L` does not depend on `x` at all, and BatchNorm's true `dx` is exactly zero.
# (The formula agrees: `g = gamma` is constant, so `g - mean(g) = 0`, and
# `sum_i g_i xhat_i = gamma sum_i xhat_i = 0`.) A backward that returned zeros would match
# that numerical gradient perfectly. A random `R` weights every output differently, the
# true `dx` is then far from zero, and the all-zeros backward fails by 100%:

# %%
numeric_ones = numerical_gradient(lambda: float(bn.forward(xb).sum()), xb)
bn.forward(xb)
dx_ones = bn.backward(np.ones_like(xb))
print(
    f"L = sum(out):     numeric |dx| <= {np.abs(numeric_ones).max():.1e}, library {np.abs(dx_ones).max():.1e}"
)
assert np.abs(numeric_ones).max() < 1e-7  # truly zero, to central-difference rounding
assert np.abs(dx_ones).max() < 1e-12  # the library's dx is zero too (float64 rounding)

R_bn = rng.standard_normal(xb.shape)
numeric_r = numerical_gradient(lambda: float(np.sum(bn.forward(xb) * R_bn)), xb)
bn.forward(xb)
error_lib = max_relative_error(bn.backward(R_bn), numeric_r)
error_zeros = max_relative_error(np.zeros_like(xb), numeric_r)
print(f"L = sum(out * R): library error {error_lib:.1e}, an all-zeros backward {error_zeros:.1f}")
assert error_lib < 1e-6 and error_zeros == 1.0

# %% [markdown]
# ### The running statistics
#
# Every training-mode forward also updates two buffers per channel, which eval mode will
# use in place of the batch's statistics (at prediction time there may be one image, or
# none of the batch's company). They are exponential moving averages, in PyTorch's
# convention, where `momentum` (0.1) is the weight of the *new* batch:
#
# $$\mu_{\text{run}} \leftarrow (1 - 0.1)\,\mu_{\text{run}} + 0.1\,\mu, \qquad
#   \sigma^2_{\text{run}} \leftarrow (1 - 0.1)\,\sigma^2_{\text{run}} + 0.1\,\frac{m}{m-1}\,\sigma^2 .$$
#
# The forward normalises with the *biased* `sigma^2` (divided by `m`): that is the
# batch's own spread, and the derivation above assumed it. The running average wants an
# estimate of the variance of the whole data, and the batch variance underestimates it
# by the factor `(m-1)/m` on average (the mean was fitted to the same `m` values), so it
# stores the *unbiased* `m/(m-1) sigma^2` (Bessel's correction; `np.var(ddof=1)`). The
# buffers start at mean 0 and variance 1. Small batches make the difference visible:
# here `m = 2 * 2 * 2 = 8`, so the factor is 8/7.

# %%
bn_run = BatchNorm2d(3, dtype=np.float64)  # momentum 0.1
mean_run, var_run = np.zeros(3), np.ones(3)
for _ in range(3):
    xs = rng.standard_normal((2, 3, 2, 2)) * 2 + 3  # m = 8 values per channel
    bn_run.forward(xs)
    mean_run = 0.9 * mean_run + 0.1 * xs.mean(axis=(0, 2, 3))
    var_run = 0.9 * var_run + 0.1 * xs.var(axis=(0, 2, 3), ddof=1)  # unbiased: / (m - 1)
    np.testing.assert_allclose(bn_run.buffers["running_mean"], mean_run, rtol=1e-12)
    np.testing.assert_allclose(bn_run.buffers["running_var"], var_run, rtol=1e-12)
assert int(bn_run.buffers["num_batches_tracked"]) == 3
print("running_mean, running_var == (1 - 0.1) * running + 0.1 * (batch mean, unbiased var)")
print("after 3 batches:", np.round(bn_run.buffers["running_var"], 4), "(unbiased)")

# %% [markdown]
# In **eval** mode BatchNorm uses those running statistics instead of the batch's. It is
# then a fixed per-channel affine map, and its backward is just `dx = dy * gamma * r`.

# %%
bn.eval()
bn.forward(xb)
bn.zero_grad()
r_run = 1.0 / np.sqrt(bn.buffers["running_var"] + bn.eps)
np.testing.assert_allclose(
    bn.backward(dyb), dyb * (bn.params["weight"].data * r_run)[:, None, None]
)
print("eval mode: dx = dy * gamma / sqrt(running_var + eps)")

# %% [markdown]
# ## The block, chained
#
# A U-Net block is `conv -> BN -> ReLU`, twice. Backward runs the chain in reverse, each
# layer's `dx` feeding the previous layer's `backward`. The gradient check on the chain
# as a whole passes too:


# %%
class Chain:
    """Layers in sequence: forward in order, backward in reverse."""

    def __init__(self, *layers):
        self.layers = layers

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def named_parameters(self):
        for i, layer in enumerate(self.layers):
            for name, p in layer.named_parameters():
                yield f"{i}.{name}", p


size = 5 if SMALL else 8
block = Chain(
    Conv2d(2, 3, 3, padding=1, bias=False, dtype=np.float64, rng=rng),
    BatchNorm2d(3, dtype=np.float64),
    ReLU(),
)
errors = check_layer(block, rng.standard_normal((2, 2, size, size)))
print(", ".join(f"{k_}={v:.1e}" for k_, v in errors.items()))
assert max(errors.values()) < 1e-6, "conv-BN-ReLU chain gradient check"

# %% [markdown]
# The U-Net's blocks make one change to this chain: the ReLU is folded into the BatchNorm,
# `BatchNorm2d(channels, relu=True)`. The arithmetic is the same (the ReLU's mask is
# applied to `dout` before BatchNorm's backward), but one layer keeps one array where two
# layers kept two (the separate ReLU holds its own output for its backward), and on the
# GPU the pair is one pass over memory instead of two. The check: the fused layer computes
# exactly what BatchNorm followed by ReLU computes, forward and backward.

# %%
x_block = rng.standard_normal((2, 3, size, size))
d_block = rng.standard_normal(x_block.shape)
gamma_beta = rng.standard_normal((2, 3))
pair = Chain(BatchNorm2d(3, dtype=np.float64), ReLU())
fused = BatchNorm2d(3, relu=True, dtype=np.float64)
for layer in (pair.layers[0], fused):
    layer.params["weight"].data[...], layer.params["bias"].data[...] = gamma_beta
np.testing.assert_array_equal(fused.forward(x_block), pair.forward(x_block))
np.testing.assert_array_equal(fused.backward(d_block), pair.backward(d_block))
print("BatchNorm2d(relu=True) == BatchNorm2d then ReLU, forward and backward")

# %% [markdown]
# ## What to remember
#
# - Conv backward: `dw2 = sum_n dout[n] cols[n]^T`, `db = sum dout`,
#   `dx = col2im(w2^T dout)`.
# - col2im is the *adjoint* of im2col: it adds overlapping copies; the adjoint identity
#   and a gradient check both test it.
# - BatchNorm's `dx` removes the mean of the gradient and its component along `xhat`,
#   then scales by `1/std`. The U-Net folds the ReLU after it into the same layer.
# - A central-difference gradient check in float64 is the final judge.
#
# `numerical_gradient` is also available on its own, for any scalar function of an array.
# Its error is absolute, not relative: rounding in f(a + eps) - f(a - eps) is about
# 1e-16 * |f| / eps, ~1e-10 here, so an entry of a near 0 needs the `atol`.

# %%
a = rng.standard_normal((3, 3))
numeric = numerical_gradient(lambda: float(np.sum(a**3)), a)
np.testing.assert_allclose(numeric, 3 * a**2, rtol=1e-6, atol=1e-8)
print("d/da sum(a^3) = 3 a^2: OK")

# %% [markdown]
# Next: [lesson 03](03_pool_and_upsample.ipynb), the layers that change resolution.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/02_backprop_conv.py](solutions/02_backprop_conv.py).
#
# 1. `my_col2im(cols, x_shape, k, stride, padding)`: the adjoint of im2col, `(N, C*k*k,
#    Ho*Wo)` to `(N, C, H, W)`: add every column back onto the patch it came from.
# 2. **A mutation.** In `col2im` (`minunet/core/im2col.py`), change the `+=` of the line
#    `x_pad[...] += (` to `=`. Which of these checks would then fail?
#    - `"adjoint_k3_s1"`: the adjoint identity for a 3x3 kernel, stride 1;
#    - `"adjoint_k2_s2"`: the same for a 2x2 kernel, stride 2;
#    - `"one_by_one"`: the same for a 1x1 kernel.
#
#    Predict first. Set `answer_col2im_mutation` to the set of names: the check applies
#    the change to a copy of the module, runs the three checks on it, and compares.

# %%
from exercises import check_answer_col2im_mutation, check_my_col2im, report  # noqa: E402


def my_col2im(cols, x_shape, k, stride, padding):
    """cols (N, C*k*k, Ho*Wo) -> (N, C, H, W), x_shape = (N, C, H, W)."""
    ...  # TODO


answer_col2im_mutation = None  # TODO: a set of check names, e.g. {"one_by_one"}

report(check_my_col2im, my_col2im)
report(check_answer_col2im_mutation, answer_col2im_mutation)
