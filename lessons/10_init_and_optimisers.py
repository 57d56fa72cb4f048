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
# # Lesson 10: initialisation and optimisers
#
# Two choices decide whether a deep net trains at all before any question of how well:
# the numbers its weights **start** from, and the rule that **moves** them. This lesson
# derives He initialisation, the one the U-Net paper prescribes, and watches what it
# does to the activations of a U-Net at initialisation, with and without BatchNorm. Then
# it derives the four update rules minunet has (SGD, momentum with its Nesterov variant,
# Adam with bias correction, AdamW) and checks each, step by step, against
# `minunet.nn.optim` on a small float64 parameter.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.model import UNet
from minunet.nn import Conv2d, Parameter
from minunet.nn.optim import SGD, Adam, AdamW

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)

# %% [markdown]
# ## He initialisation: keep the signal's size from layer to layer
#
# A convolution output is a sum of `fan_in = C * k * k` products, `y = sum_r w_r x_r`.
# With weights drawn independently, mean 0 and variance `s^2`, and independent of the
# inputs,
#
# $$\mathrm{Var}(y) = \mathrm{fan\_in}\; s^2\; \mathbb E[x^2].$$
#
# If `x` is the ReLU of a previous output `y'` that is symmetric around 0, half of
# `y'` is zeroed: `E[x^2] = Var(y') / 2`. So `Var(y) = fan_in s^2 Var(y') / 2`, and the
# variance stays the same from layer to layer exactly when
#
# $$s = \sqrt{2 / \mathrm{fan\_in}}.$$
#
# That is He et al.'s initialisation (2015), and what the U-Net paper asks for: "a
# Gaussian distribution with a standard deviation of sqrt(2/N), where N denotes the
# number of incoming nodes of one neuron". With any other `s`, the variance is multiplied
# by `fan_in s^2 / 2` at every layer: over 20 layers a factor 0.5 per layer is a
# millionth, and the last layer sees (almost) nothing.
#
# minunet's `Conv2d` draws its weight as `standard_normal * sqrt(2 / fan_in)`. The check:
# the same generator, by hand, gives the same numbers bit for bit.

# %%
cin, cout, k = 16, 32, 3
fan_in = cin * k * k
conv = Conv2d(cin, cout, k, dtype=np.float64, rng=np.random.default_rng(7))
by_hand = np.random.default_rng(7).standard_normal((cout, cin, k, k)) * np.sqrt(2 / fan_in)
np.testing.assert_array_equal(conv.params["weight"].data, by_hand)
assert np.all(conv.params["bias"].data == 0)
print(f"fan_in {fan_in}: Conv2d's weight == standard_normal * sqrt(2/{fan_in}) bit for bit")
print(f"its std {conv.params['weight'].data.std():.4f}, He's {np.sqrt(2 / fan_in):.4f}")

# %% [markdown]
# The derivation, measured: push unit-variance noise through a stack of `conv 3x3 ->
# ReLU` layers and print the second moment of each conv's output, averaged over a few
# draws of the weights (the derivation is about the average over draws: one draw
# fluctuates around it, and those fluctuations multiply from layer to layer). With He's
# `s` it stays at one level, about 2 (the first layer's input is raw noise with
# `E[x^2] = 1` rather than a ReLU output, so `E[y^2] = fan_in s^2 = 2` there, and the
# rule keeps it); with half of `s`, it falls by `(1/2)^2 = 1/4` per layer, as the formula
# says.

# %%
channels, side, n_layers, draws = (16, 12, 6, 3) if SMALL else (32, 16, 10, 6)
x0 = rng.standard_normal((2, channels, side, side))


def second_moments(scale: float) -> np.ndarray:
    """Mean over draws of E[y^2] after each conv of a conv-ReLU stack, He weights * scale."""
    moments = np.zeros((draws, n_layers))
    for draw in range(draws):
        layer_rng = np.random.default_rng(draw)
        h = x0
        for i in range(n_layers):
            layer = Conv2d(channels, channels, 3, padding=1, dtype=np.float64, rng=layer_rng)
            layer.params["weight"].data *= scale
            y = layer.forward(h)
            moments[draw, i] = np.mean(y**2)
            h = np.maximum(y, 0)
    return moments.mean(axis=0)


he, half = second_moments(1.0), second_moments(0.5)
print("layer:       " + " ".join(f"{i + 1:>8}" for i in range(n_layers)))
print("He:          " + " ".join(f"{m:8.3f}" for m in he))
print("He * 0.5:    " + " ".join(f"{m:8.1e}" for m in half))
# The stack is linear in the scale (ReLU is positively homogeneous, the biases are 0):
# layer l's output scales by 0.5**l exactly, its second moment by 0.25**l.
np.testing.assert_allclose(half, he * 0.25 ** np.arange(1, n_layers + 1), rtol=1e-12)
# Layer 1 sees the raw noise, not a ReLU output: E[x^2] = 1 there, not Var/2, so its
# E[y^2] is about 2. From then on the ratio stays near 1; what drift remains is the
# zero padding (a tap off the image reads 0) and the finite number of draws.
assert 0.5 < he[-1] / he[0] < 2, "He's initialisation keeps the second moment within 2x"

# %% [markdown]
# ## Activations through a U-Net at initialisation
#
# The same measurement on minunet's U-Net, layer by layer, at initialisation, with and
# without BatchNorm. To see inside without changing the library, each `Conv2d` instance
# gets a `forward` attribute that records the std of what it returns (an attribute on
# the instance is found before the class's method). The U-Net is called exactly as in
# training.
#
# Three nets: He without BatchNorm; the same with every weight scaled by 0.5 (a "too
# small" initialisation); and with BatchNorm, whose layers renormalise every conv's
# output, so the scale of the weights stops mattering at all.

# %%
size, base, depth = (32, 4, 2) if SMALL else (64, 8, 3)
images = rng.standard_normal((4, 3, size, size)).astype(np.float32)


def conv_layers(model: UNet) -> list[tuple[str, Conv2d]]:
    return [(name, layer) for name, layer in _named_layers(model) if isinstance(layer, Conv2d)]


def _named_layers(layer, prefix=""):
    for cname, child in layer.children().items():
        yield prefix + cname, child
        yield from _named_layers(child, f"{prefix}{cname}.")


def activation_stds(model: UNet, weight_scale: float = 1.0) -> tuple[list[str], list[float]]:
    """Std of every conv's output in one training-mode forward, in the order they run."""
    names, stds = [], []
    for name, layer in conv_layers(model):
        layer.params["weight"].data *= weight_scale

        def recording(x, layer=layer, name=name):
            out = type(layer).forward(layer, x)
            names.append(name)
            stds.append(float(out.std()))
            return out

        layer.forward = recording
    model.forward(images, train=True)
    return names, stds


names, std_he = activation_stds(UNet(3, 3, base, depth, batchnorm=False, seed=0))
_, std_small = activation_stds(UNet(3, 3, base, depth, batchnorm=False, seed=0), 0.5)
_, std_bn = activation_stds(UNet(3, 3, base, depth, batchnorm=True, seed=0), 0.5)
bn_model = UNet(3, 3, base, depth, batchnorm=True, seed=0)
_, std_bn_he = activation_stds(bn_model)

fig, ax = plt.subplots(figsize=(10, 3.5))
ax.semilogy(std_he, "o-", label="He, no BatchNorm")
ax.semilogy(std_small, "s-", label="He x 0.5, no BatchNorm")
ax.semilogy(std_bn, "^-", label="He x 0.5, BatchNorm (conv output, before BN)")
ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
ax.set_ylabel("std of the conv's output")
ax.legend(fontsize=8)
ax.set_title("a U-Net at initialisation, one forward pass")
plt.tight_layout()
plt.show()

# %% [markdown]
# What the figure shows, asserted:
#
# - **He, no BatchNorm**: the std wanders but stays within a small factor of the first
#   layer's all the way down the encoder and back up (it rises a little at each level:
#   a max pool keeps the largest of four values, whose second moment is above average).
# - **He x 0.5**: the std halves at every conv that follows a conv (the first sees the
#   image, the bias is zero, and each ReLU passes the scale through), so it is tiny by
#   the bottleneck. The skip connections bring some signal back on the way up: the
#   decoder's convs concatenate a shallow map that was halved fewer times.
# - **BatchNorm**: the first conv of the net sees the image and is scaled by 0.5; every
#   later conv sees a BatchNorm output (mean 0, std 1 per channel before its ReLU), so
#   its output's std is the same whatever the scale of the weights before: exactly 0.5
#   times the He net's, since the conv is linear in its weight.

# %%
ratio_he = max(std_he) / min(std_he)
print(f"He without BatchNorm: largest / smallest std over {len(names)} convs = {ratio_he:.1f}")
bottleneck = [i for i, n in enumerate(names) if n.startswith("bottleneck")]
print(f"bottleneck std: He {std_he[bottleneck[-1]]:.3f}, He x 0.5 {std_small[bottleneck[-1]]:.2e}")
assert ratio_he < 10
# The bottleneck's last conv is the (2 * depth + 2)-th halved conv on the path from the
# image: its output is 0.5 ** (2 * depth + 2) of He's (the net is positively homogeneous in
# each conv's weight: zero biases, ReLU, max pooling; halving is exact in floating point).
np.testing.assert_allclose(
    std_small[bottleneck[-1]], std_he[bottleneck[-1]] * 0.5 ** (2 * depth + 2), rtol=1e-4
)
# With BatchNorm every conv's std is 0.5 x that of the same BatchNorm net at He scale, up
# to BatchNorm's eps: rstd = 1/sqrt(var + eps) with var ~ 1 changes by ~eps = 1e-5 relative
# when var is scaled, so rtol 1e-4.
np.testing.assert_allclose(std_bn, 0.5 * np.array(std_bn_he), rtol=1e-4)
print("BatchNorm: the weights' scale passes through one conv and no further")

# %% [markdown]
# ## SGD, step by step
#
# The simplest rule: step against the gradient, `p <- p - lr * g`. To check it and every
# rule below, one small float64 parameter gets a gradient from a fixed quadratic loss
# `L(p) = 1/2 sum_i a_i (p_i - t_i)^2` (so `g = a * (p - t)`), and we run the library's
# optimiser and the formula side by side for several steps, comparing every iterate.
#
# `Parameter` is minunet's array-plus-gradient pair; the optimisers read `.grad` and
# update `.data` in place.

# %%
curvature = np.array([1.0, 10.0, 0.5, 3.0])  # a_i: an ill-conditioned bowl
target = np.array([1.0, -2.0, 0.5, 3.0])
p_start = np.array([-1.0, 1.0, 2.0, 0.0])
steps = 8


def gradient(p: np.ndarray) -> np.ndarray:
    return curvature * (p - target)


def library_run(optimizer_class, **kwargs) -> np.ndarray:
    """The iterates (steps + 1, P) of a minunet optimiser on the quadratic."""
    param = Parameter(p_start.copy())
    opt = optimizer_class([param], **kwargs)
    path = [param.data.copy()]
    for _ in range(steps):
        opt.zero_grad()
        param.grad += gradient(param.data)
        opt.step()
        path.append(param.data.copy())
    return np.array(path)


def hand_sgd(lr: float) -> np.ndarray:
    p, path = p_start.copy(), [p_start.copy()]
    for _ in range(steps):
        p = p - lr * gradient(p)
        path.append(p)
    return np.array(path)


lr = 0.05
np.testing.assert_array_equal(library_run(SGD, lr=lr, momentum=0.0), hand_sgd(lr))
print(f"SGD (no momentum): {steps} steps == p - lr * g, bit for bit")

# %% [markdown]
# ## Momentum, and Nesterov's look-ahead
#
# On an ill-conditioned bowl plain SGD must use an `lr` small enough for the steepest
# direction (`lr < 2 / max a`), and then crawls along the flat ones. **Momentum** keeps
# a running sum of past gradients, a velocity, and steps along it: directions where the
# gradient keeps its sign build up speed, directions where it flips cancel.
# minunet uses PyTorch's form:
#
# $$v \leftarrow \mu v + g, \qquad p \leftarrow p - \mathrm{lr}\; v.$$
#
# (The textbook form `u <- mu u - lr g; p <- p + u` is the same iterates with `u = -lr v`,
# as long as `lr` is constant.) **Nesterov** momentum steps with the gradient plus the
# velocity it is about to have, `p <- p - lr (g + mu v)` after the update of `v`: the
# same look-ahead as evaluating the gradient at the point momentum is carrying you to.
#
# In the iterates below both forms are computed with the same operations in the same
# order as the library (multiply, then add), so they agree bit for bit.

# %%
mu = 0.9


def hand_momentum(lr: float, mu: float, nesterov: bool) -> np.ndarray:
    p, v, path = p_start.copy(), np.zeros_like(p_start), [p_start.copy()]
    for _ in range(steps):
        g = gradient(p)
        v = mu * v + g
        p = p - lr * (g + mu * v if nesterov else v)
        path.append(p)
    return np.array(path)


for nesterov in (False, True):
    lib = library_run(SGD, lr=lr, momentum=mu, nesterov=nesterov)
    np.testing.assert_array_equal(lib, hand_momentum(lr, mu, nesterov))
print("SGD with momentum 0.9, plain and Nesterov: == the formulas, bit for bit")

# The textbook form: the same iterates up to rounding (lr * v is formed in another order:
# a few float64 roundings, 2**-52 relative each, over 8 steps).
u, p_text = np.zeros_like(p_start), [p_start.copy()]
for _ in range(steps):
    u = mu * u - lr * gradient(p_text[-1])
    p_text.append(p_text[-1] + u)
np.testing.assert_allclose(p_text, hand_momentum(lr, mu, False), rtol=1e-13, atol=1e-14)

# %% [markdown]
# ## Adam, with its bias correction
#
# Adam keeps two running averages per element, of the gradient and of its square, and
# divides one by the root of the other: each coordinate moves by about `lr`, whatever
# the scale of its gradient.
#
# $$m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,$$
# $$\hat m = \frac{m}{1-\beta_1^t}, \qquad \hat v = \frac{v}{1-\beta_2^t}, \qquad
#   p \leftarrow p - \mathrm{lr}\;\frac{\hat m}{\sqrt{\hat v} + \epsilon}.$$
#
# **Why the correction.** `m` and `v` start at 0, so after `t` steps `m` is a weighted sum
# of gradients whose weights `(1 - b1) b1^(t-1-s)` add up to `1 - b1^t`, not 1: early on
# the averages are biased towards 0. Dividing by `1 - b^t` makes the weights sum to 1.
# Without either correction the first step would be `(1 - b1) / sqrt(1 - b2) = 3.2` times
# too large (for the default betas); without the first one alone, ten times too small.
# Both errors fade as `b^t -> 0`, the second much more slowly (`0.999^t`).
#
# At step 1 the corrected `m_hat = g` and `v_hat = g^2`, so the first step is
# `lr * g / (|g| + eps)`: almost exactly `lr * sign(g)` in every coordinate.
#
# The library (which calls `m` and `v` by PyTorch's names, `exp_avg` and `exp_avg_sq`)
# folds the corrections into the step size, `(lr / c1) * m / (sqrt(v / c2) + eps)`, which
# is the same number rounded differently: agreement to a few units in the last place of
# float64, not bit for bit.


# %%
def hand_adam(lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False) -> np.ndarray:
    p, m, v = p_start.copy(), np.zeros_like(p_start), np.zeros_like(p_start)
    path = [p.copy()]
    for t in range(1, steps + 1):
        g = gradient(p)
        if decoupled:
            p = p - lr * wd * p  # AdamW: shrink p itself (next section)
        else:
            g = g + wd * p  # L2 in the gradient
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        path.append(p)
    return np.array(path)


# Tolerance: each iterate is a sum of 8 steps of size ~lr, each the same real number
# computed by two orderings of ~10 float64 operations: 1e-13 relative leaves room for
# 100s of roundings (2**-52 = 2.2e-16 each) and no room for a wrong formula.
lr_adam = 0.1
lib_adam = library_run(Adam, lr=lr_adam)
np.testing.assert_allclose(lib_adam, hand_adam(lr_adam), rtol=1e-13, atol=1e-15)
first_step = lib_adam[1] - lib_adam[0]
np.testing.assert_allclose(first_step, -lr_adam * np.sign(gradient(p_start)), rtol=1e-7)
print("Adam: 8 steps == the bias-corrected formulas; the first step is lr * sign(g):")
print("  first step", first_step)

# %% [markdown]
# ## AdamW: weight decay, decoupled
#
# Weight decay pulls weights towards 0. With SGD, adding `wd * p` to the gradient (the
# L2 penalty `wd/2 |p|^2`) and shrinking `p` directly are the same thing. With Adam they
# are not: a decay added to the gradient is divided by `sqrt(v_hat)` like the rest of
# it, so weights with large gradients are barely decayed, and weights with tiny
# gradients are decayed at the full Adam step size, `lr` per step, however small `wd`.
# Loshchilov and Hutter's **AdamW** takes the decay out of the gradient and applies it
# to the weight, `p <- p - lr * wd * p`, before the Adam step on the plain gradient.
#
# The demonstration is a parameter with no data gradient at all (a weight the loss does
# not care about): AdamW shrinks it by exactly `(1 - lr wd)` per step, while Adam with
# L2 moves it by `lr`, the same as for a weight of any importance.

# %%
wd = 0.01
np.testing.assert_allclose(
    library_run(AdamW, lr=lr_adam, weight_decay=wd),
    hand_adam(lr_adam, wd=wd, decoupled=True),
    rtol=1e-13,
    atol=1e-15,
)
np.testing.assert_allclose(
    library_run(Adam, lr=lr_adam, weight_decay=wd), hand_adam(lr_adam, wd=wd), rtol=1e-13
)
print("AdamW (decoupled) and Adam with L2: == the formulas")

idle = {}
for name, cls in (("AdamW", AdamW), ("Adam + L2", Adam)):
    param = Parameter(np.array([2.0]))
    opt = cls([param], lr=lr_adam, weight_decay=wd)
    opt.step()  # the gradient is zero: only the weight decay acts
    idle[name] = param.data[0]
    print(f"{name}: an idle weight 2.0 after one step: {param.data[0]:.6f}")
assert idle["AdamW"] == 2.0 * (1 - lr_adam * wd)
# lr * g / (|g| + eps) with |g| = wd * 2 = 0.02: lr * (1 - eps / 0.02) = lr * (1 - 5e-7).
np.testing.assert_allclose(idle["Adam + L2"], 2.0 - lr_adam, rtol=1e-6)

# %% [markdown]
# ## The four rules on the bowl
#
# The same quadratic over more steps, drawn in its two most different coordinates
# (curvatures 1 and 10). Plain SGD at `lr = 0.15`, near the largest stable step
# (`2 / 10`), crawls along the flat directions (curvature 0.5 shrinks its error by only
# `1 - 0.075` per step). Momentum 0.6 at `lr = 0.1` gets there far sooner. Momentum 0.9 is
# too much for this bowl: it overshoots and circles the minimum; Nesterov's look-ahead at
# the same 0.9 damps much of that. Adam moves about `lr` per coordinate per step, so it
# needs about `distance / lr` steps to arrive and then wobbles around the minimum.

# %%
steps = 30 if SMALL else 60
paths = {
    "SGD lr 0.15": library_run(SGD, lr=0.15, momentum=0.0),
    "momentum 0.6": library_run(SGD, lr=0.1, momentum=0.6),
    "momentum 0.9": library_run(SGD, lr=0.1, momentum=0.9),
    "Nesterov 0.9": library_run(SGD, lr=0.1, momentum=0.9, nesterov=True),
    "Adam lr 0.1": library_run(Adam, lr=0.1),
}
fig, ax = plt.subplots(figsize=(6, 4))
u_grid, v_grid = np.meshgrid(np.linspace(-1.5, 2.5, 80), np.linspace(-3.5, 1.5, 80))
ax.contour(u_grid, v_grid, (u_grid - 1) ** 2 + 10 * (v_grid + 2) ** 2, 12, colors="0.8")
for label, path in paths.items():
    ax.plot(path[:, 0], path[:, 1], ".-", label=label, lw=1, ms=3)
ax.plot(target[0], target[1], "k*", ms=12)
ax.set_xlabel("p[0] (curvature 1)")
ax.set_ylabel("p[1] (curvature 10)")
ax.legend(fontsize=8)
plt.show()
distances = {k: float(np.abs(v[-1] - target).max()) for k, v in paths.items()}
for label, d in distances.items():
    print(f"{label:>13}: largest coordinate error after {steps} steps {d:.4f}")
assert distances["momentum 0.6"] < distances["SGD lr 0.15"] / 5
assert distances["Nesterov 0.9"] < distances["momentum 0.9"] / 2

# %% [markdown]
# ## What to remember
#
# - He: `std = sqrt(2 / fan_in)` keeps `E[y^2]` constant through conv-ReLU layers. Any
#   other scale compounds geometrically with depth. BatchNorm removes the dependence on
#   the scale after one layer.
# - SGD `p -= lr g`; momentum `v = mu v + g, p -= lr v`; Nesterov steps with `g + mu v`.
# - Adam: moving averages of `g` and `g^2`, divided by their bias `1 - b^t`; the first step
#   is `lr * sign(g)`.
# - AdamW decays the weight, not the gradient: `p -= lr wd p`, independent of Adam's
#   scaling.
#
# Next: [lesson 11](11_debugging.ipynb), when the net does not learn.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/10_init_and_optimisers.py](solutions/10_init_and_optimisers.py).
#
# 1. `my_adam(p, g, m, v, t, lr, b1, b2, eps)`: one Adam step with bias correction
#    (`t` counts from 1), returning the new `(p, m, v)`; checked over six steps against
#    `Adam`.
# 2. `my_nesterov(p, g, v, lr, mu)`: one step of SGD with Nesterov momentum in minunet's
#    (PyTorch's) form, returning `(p, v)`.
# 3. **A mutation.** In `Adam._update` (`minunet/nn/optim.py`), change
#    `c1 = 1 - self.beta1**self.steps` to `c1 = 1.0`. Which of these checks would fail?
#    - `"first_step_is_lr_sign"`: Adam's first step is `lr * sign(g)`;
#    - `"adamw_idle_shrink"`: AdamW shrinks a weight with no gradient by `1 - lr * wd`;
#    - `"sgd_momentum"`: two steps of SGD with momentum.
#
#    Set `answer_bias_correction_mutation` to the set of names; the check runs the
#    mutated code.

# %%
from exercises import (  # noqa: E402
    check_answer_bias_correction_mutation,
    check_my_adam,
    check_my_nesterov,
    report,
)


def my_adam(p, g, m, v, t, lr, b1, b2, eps):
    """One Adam step; returns (p, m, v)."""
    ...  # TODO


def my_nesterov(p, g, v, lr, mu):
    """One Nesterov step; returns (p, v)."""
    ...  # TODO


answer_bias_correction_mutation = None  # TODO: a set of check names

report(check_my_adam, my_adam)
report(check_my_nesterov, my_nesterov)
report(check_answer_bias_correction_mutation, answer_bias_correction_mutation)
