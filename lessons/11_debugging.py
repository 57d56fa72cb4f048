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
# # Lesson 11: debugging a net that does not learn
#
# A net that does not learn rarely crashes. It prints a loss, the loss is a number, and
# the number is wrong in a way that takes experience to read. This lesson builds that
# experience on purpose: first the checks that catch most bugs before a long run (the
# loss at initialisation, the class-prior baseline, overfitting one batch, gradient norms
# and update/weight ratios, dead ReLUs, BatchNorm's two modes, ignored pixels), then a
# row of deliberately broken training runs, each trained briefly from the same start,
# with the curve it produces and an assert that its symptom appears.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.data.loader import normalize
from minunet.data.synthetic import make_toy_pets
from minunet.model import UNet
from minunet.nn import BatchNorm2d, Conv2d, ReLU
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import SGD, Adam

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 64
K = 3  # pet, background, outline

SIZE, N_IMAGES, BASE, DEPTH = 32, 8, 8, 2
STEPS = 60 if SMALL else 150
data = make_toy_pets(2 * N_IMAGES, image_size=SIZE, seed=0)
x = normalize(data.images[:N_IMAGES])  # (N, 3, S, S) float32: the one training batch
y = data.masks[:N_IMAGES].astype(np.int64)  # (N, S, S) in {0, 1, 2}
x_held, y_held = normalize(data.images[N_IMAGES:]), data.masks[N_IMAGES:].astype(np.int64)
criterion = SoftmaxCrossEntropy()


def new_model(batchnorm: bool = True) -> UNet:
    return UNet(3, K, BASE, DEPTH, batchnorm=batchnorm, seed=0)


# %% [markdown]
# ## Check 1: the loss at initialisation is about ln K
#
# A freshly initialised net knows nothing, and should say so: its softmax should be
# close to uniform, `p = 1/K` for every class, and the cross-entropy of a uniform guess is
# `ln K` whatever the labels (`ln 3 = 1.099`). A first loss far above `ln K` means the
# logits start large and confidently wrong (an initialisation or input-scaling bug); the
# training will spend its first hundreds of steps undoing that. A first loss far below
# `ln K` on real data is a leak (the labels are reaching the input).
#
# minunet's U-Net ends in a He-initialised 1x1 conv, so its logits at initialisation are
# not exactly 0: the first loss is somewhat above `ln 3`, within half of it, as the check
# shows.

# %%
loss0 = float(criterion(new_model().forward(x, train=True), y))
print(f"loss at initialisation {loss0:.3f}, ln K = {np.log(K):.3f}")
assert abs(loss0 - np.log(K)) < 0.5 * np.log(K)
uniform = np.zeros((N_IMAGES, K, SIZE, SIZE))
assert np.isclose(float(criterion(uniform, y)), np.log(K), rtol=1e-12)

# %% [markdown]
# ## Check 2: the class-prior baseline
#
# The next number to beat is not `ln K` but the loss of the best **image-blind**
# predictor: the one that predicts, at every pixel, the class frequencies `pi_k` of the
# training labels. Its cross-entropy is the entropy of the labels,
#
# $$H(\pi) = -\sum_k \pi_k \ln \pi_k \;\le\; \ln K,$$
#
# reached by the constant logits `z_k = ln pi_k`. A net whose loss stalls at `H(pi)` has
# learned the class frequencies and nothing about the images. Its pixel accuracy is the
# frequency of the most common class: on held-out images, the number a net must beat to
# have learned anything that carries over (the "labels shuffled" run below does not).

# %%
prior = np.bincount(y.reshape(-1), minlength=K) / y.size
entropy = float(-(prior * np.log(prior)).sum())
blind_logits = np.broadcast_to(np.log(prior)[None, :, None, None], uniform.shape).copy()
np.testing.assert_allclose(float(criterion(blind_logits, y)), entropy, rtol=1e-12)
print(f"class frequencies {np.round(prior, 3)}: the prior baseline H = {entropy:.3f} < ln K")
print(f"an image-blind net's pixel accuracy: {prior.max():.3f}")

# %% [markdown]
# ## Check 3: overfit one batch
#
# Before training on the whole data set, train on **one** small batch, with no
# augmentation, until the loss is far below the prior baseline. A correct net with
# enough capacity memorises a handful of images easily; if it cannot, no amount of data
# will help, and the bug is in the model, the loss or the update. Every run below is
# this experiment, so one function does them all: each flag breaks one thing.


# %%
def train_briefly(
    lr: float = 1e-2,
    optimiser: str = "adam",
    zero_grad: bool = True,
    labels: np.ndarray = y,
    bn_eval: bool = False,
    inputs: np.ndarray = x,
    batchnorm: bool = True,
    steps: int = STEPS,
) -> dict:
    """Train a fresh U-Net on the one batch (inputs, labels); the per-step record."""
    model = new_model(batchnorm)
    params = model.parameters()
    opt = Adam(params, lr=lr) if optimiser == "adam" else SGD(params, lr=lr, momentum=0.9)
    record = {"loss": [], "grad_norm": [], "model": model}
    for _ in range(steps):
        model.train(not bn_eval)  # the bug: BatchNorm left in eval mode for training
        loss = float(criterion(model.forward(inputs), labels))
        if zero_grad:
            opt.zero_grad()
        model.backward(criterion.backward(), input_grad=False)
        record["grad_norm"].append(float(np.sqrt(sum((p.grad**2).sum() for p in params))))
        opt.step()
        record["loss"].append(loss)
        if not np.isfinite(loss):
            break
    return record


good = train_briefly()
print(f"one batch, {STEPS} steps: loss {good['loss'][0]:.3f} -> {good['loss'][-1]:.3f}")
assert good["loss"][-1] < 0.7 * entropy, "a correct net must get well below the prior"

# %% [markdown]
# ## Check 4: gradient norms and update/weight ratios, per layer
#
# The size of each parameter's gradient, and above all the size of each **update**
# relative to the weight it changes, `|delta w| / |w|`, say whether the learning rate is
# sane. A common rule of thumb is about `1e-3` per step: much smaller and the layer is
# not moving, much larger and it is being rewritten each step. Per layer, because one
# layer far off the others (the head, or the first conv) is itself a clue.
#
# On Adam's first step every element moves by almost exactly `lr` (lesson 10), so the
# ratio is `lr * sqrt(n) / |w|` for a weight of `n` elements: exactly proportional to
# `lr`. The check: 100 times the learning rate, 100 times the ratio, layer by layer.


# %%
def first_step_ratios(lr: float) -> dict[str, float]:
    """|delta w| / |w| per conv weight after one Adam step on the batch."""
    model = new_model()
    weights = {
        n: p for n, p in model.named_parameters() if n.endswith("weight") and p.data.ndim == 4
    }
    before = {n: p.data.copy() for n, p in weights.items()}
    opt = Adam(model.parameters(), lr=lr)
    criterion(model.forward(x, train=True), y)
    model.backward(criterion.backward(), input_grad=False)
    opt.step()
    return {
        n: float(np.linalg.norm(p.data - before[n]) / np.linalg.norm(before[n]))
        for n, p in weights.items()
    }


ratios_ok, ratios_high = first_step_ratios(1e-3), first_step_ratios(1e-1)
# Adam's step lr * m_hat / (sqrt(v_hat) + eps) is exactly proportional to lr; what differs
# is float32 rounding of w - delta: 2**-24 |w| per element, ~2e-5 of a 1e-3 step on a
# weight of 0.3, less in a norm over many elements. rtol 1e-4 leaves room for that only.
np.testing.assert_allclose(
    np.array(list(ratios_high.values())), 100 * np.array(list(ratios_ok.values())), rtol=1e-4
)
fig, ax = plt.subplots(figsize=(10, 3))
names = list(ratios_ok)
ax.semilogy(list(ratios_ok.values()), "o-", label="Adam lr 1e-3")
ax.semilogy(list(ratios_high.values()), "s-", label="Adam lr 1e-1")
ax.axhline(1e-3, color="0.6", ls="--", lw=1)
ax.set_xticks(
    range(len(names)), [n.removesuffix(".weight") for n in names], rotation=70, fontsize=7
)
ax.set_ylabel("|delta w| / |w|, first step")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f"lr 1e-3: ratios {min(ratios_ok.values()):.1e} .. {max(ratios_ok.values()):.1e}")

# %% [markdown]
# ## Check 5: dead ReLUs
#
# A ReLU unit whose input is negative for every pixel of every image passes no gradient:
# `dout * (out > 0)` is 0 everywhere, so the weights feeding it get an exactly zero
# gradient and it can never come back. A large learning-rate step, or a large negative
# bias, kills units this way. The check: the fraction of channels whose output is 0 at
# every pixel of the batch, and for those channels, that the gradient of the conv weights
# feeding them is exactly zero.
#
# To make some, take a conv -> ReLU -> conv chain and shift the first conv's biases down
# by a large amount for half of its channels.

# %%
chain_rng = np.random.default_rng(3)
conv_a = Conv2d(3, 8, 3, padding=1, dtype=np.float64, rng=chain_rng)
relu = ReLU()
conv_b = Conv2d(8, 4, 3, padding=1, dtype=np.float64, rng=chain_rng)
conv_a.params["bias"].data[:4] -= 50.0  # channels 0-3: pushed far below zero
x64 = x[:2].astype(np.float64)
hidden = relu.forward(conv_a.forward(x64))
dead = np.all(hidden == 0, axis=(0, 2, 3))  # (8,): never fires on this batch
out = conv_b.forward(hidden)
conv_a.zero_grad()
conv_a.backward(relu.backward(conv_b.backward(np.ones_like(out))))
dead_grad = conv_a.params["weight"].grad[dead]
print(f"dead channels: {np.flatnonzero(dead)} ({dead.mean():.0%} of the layer)")
assert dead[:4].all() and not dead[4:].any()
assert np.all(dead_grad == 0) and np.all(conv_a.params["bias"].grad[dead] == 0)
print("their weights' and biases' gradients: exactly 0, they cannot recover")

# %% [markdown]
# ## Check 6: BatchNorm's two modes
#
# In **training** mode BatchNorm normalises with the statistics of the current batch, so
# one image's output depends on the other images in its batch; in **eval** mode it uses
# the running averages, and each image's output is its own. Two classic mistakes follow:
#
# - predicting in training mode: the prediction for an image changes with its batch
#   companions (and a batch of one is normalised by its own statistics);
# - training in eval mode: the running statistics are never updated (they stay at their
#   initial mean 0, variance 1), the activations are not normalised at all, and the net
#   trains like one without BatchNorm, but with the wrong backward (the layer is a fixed
#   affine map).

# %%
model = new_model()
model.forward(x, train=True)  # one training step's statistics into the running averages
alone_train = model.forward(x[:1], train=True)
in_batch_train = model.forward(x, train=True)[:1]
alone_eval = model.forward(x[:1], train=False)
in_batch_eval = model.forward(x, train=False)[:1]
print(
    f"train mode: image 0 alone vs in a batch differ by {np.abs(alone_train - in_batch_train).max():.2f}"
)
print(
    f"eval mode:  image 0 alone vs in a batch differ by {np.abs(alone_eval - in_batch_eval).max():.1e}"
)
assert np.abs(alone_train - in_batch_train).max() > 0.1
# Eval mode: the same per-image arithmetic; only float32 summation order can differ.
np.testing.assert_allclose(alone_eval, in_batch_eval, rtol=1e-4, atol=1e-5)

# %% [markdown]
# ## Check 7: an ignore label that leaks into the loss
#
# Real masks have pixels nobody labelled (the Pets trimaps' "unclassified" border, or
# 255 in many data sets). They must carry no loss and no gradient. minunet refuses a
# label outside `[0, K)` unless it is declared as `ignore_index`, with a `ValueError`
# that says so (unchecked, the label would reach the loss's indexing, where NumPy stops
# with an `IndexError` far from the cause), so the mistake can only be made on purpose, e.g. by clipping 255 into the last class to make the error go
# away. That **leaks**: the ignored pixels become confident "outline" targets.

# %%
y_unknown = y.copy()
y_unknown[:, :4, :] = 255  # the top rows of every image: unlabelled
try:
    SoftmaxCrossEntropy().forward(uniform, y_unknown)
except ValueError as err:  # minunet's own check: one line that says what is wrong
    print("refused:", err)
except IndexError as err:  # NumPy's, from deep inside the loss: nothing checked the label
    raise AssertionError(f"a label of 255 reached the loss unchecked: {err}") from None
else:
    raise AssertionError("a label of 255 without ignore_index must be refused")

logits = new_model().forward(x, train=True).astype(np.float64)
right = SoftmaxCrossEntropy(ignore_index=255)
loss_right = float(right.forward(logits, y_unknown))
grad_right = right.backward()
leaky = SoftmaxCrossEntropy()
loss_leak = float(leaky.forward(logits, np.minimum(y_unknown, K - 1)))  # the bug
grad_leak = leaky.backward()
# The right loss is the plain mean over the labelled pixels only.
labelled = SoftmaxCrossEntropy().forward(logits[:, :, 4:, :], y[:, 4:, :])
np.testing.assert_allclose(loss_right, float(labelled), rtol=1e-12)
assert np.all(grad_right[:, :, :4, :] == 0)
assert np.abs(grad_leak[:, :, :4, :]).max() > 0
print(f"loss with ignore_index {loss_right:.4f} (labelled pixels only); leaking {loss_leak:.4f}")

# %% [markdown]
# ## A gallery of broken runs
#
# Each run starts from the same initial weights on the same batch and breaks one thing:
#
# | run | the bug | the symptom to recognise |
# |-----|---------|--------------------------|
# | lr too high | SGD with momentum at lr 10 | the loss jumps far above where it started and stays high (without BatchNorm: `nan` within a few steps) |
# | forgot `zero_grad` | gradients summed over all past steps | the gradient norm climbs an order of magnitude above the correct run's and stays there; the loss stalls |
# | labels shuffled | masks paired with the wrong images | the training loss falls just as well (8 images are easy to memorise), but on held-out images the net is no better than image-blind |
# | BN in eval mode | `model.eval()` during training | running statistics never move; slower, worse training |
# | no input normalisation (no BN) | raw 0-255 pixels into a net without BatchNorm | a first loss far above `ln K` |

# %%
rng = np.random.default_rng(1)
runs = {
    "correct": good,
    "lr too high": train_briefly(lr=10.0, optimiser="sgd"),
    "forgot zero_grad": train_briefly(zero_grad=False),
    "labels shuffled": train_briefly(labels=y[rng.permutation(N_IMAGES)]),
    "BN in eval mode": train_briefly(bn_eval=True),
    "no normalisation, no BN": train_briefly(
        inputs=data.images[:N_IMAGES].transpose(0, 3, 1, 2).astype(np.float32), batchnorm=False
    ),
}
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
for label, run in runs.items():
    losses = np.array(run["loss"])
    ax0.semilogy(np.where(np.isfinite(losses), losses, np.nan), label=label)
    ax1.semilogy(run["grad_norm"], label=label)
ax0.axhline(entropy, color="0.5", ls=":", lw=1)
for ax in (ax0, ax1):
    ax.set_xlabel("step")
ax0.set_ylabel("training loss (dotted: prior baseline)")
ax1.set_ylabel("global gradient norm")
ax0.legend(fontsize=8)
plt.tight_layout()
plt.show()
for label, run in runs.items():
    print(f"{label:>24}: first loss {run['loss'][0]:10.3f}, last {run['loss'][-1]:10.3f}")

# %% [markdown]
# The symptoms, asserted (each against the correct run where it is a comparison):

# %%
high = np.array(runs["lr too high"]["loss"])
assert np.nanmax(high) > 5 * high[0], "lr too high: the loss jumps far above its start"
assert not np.isfinite(high[-1]) or high[-1] > 5 * good["loss"][-1]

norms = np.array(runs["forgot zero_grad"]["grad_norm"])
# The accumulated gradient is the sum of every step's gradient so far: its norm grows far
# beyond that of any single step's (the correct run's norms stay of one order).
assert norms[-1] > 5 * max(good["grad_norm"]), "forgot zero_grad: the gradient norm grows"


def held_out_accuracy(model: UNet) -> float:
    return float((model.predict(x_held) == y_held).mean())


blind_accuracy = float((y_held == prior.argmax()).mean())  # the image-blind prediction
acc_good = held_out_accuracy(good["model"])
acc_shuffled = held_out_accuracy(runs["labels shuffled"]["model"])
print(f"held-out pixel accuracy: correct {acc_good:.3f}, labels shuffled {acc_shuffled:.3f},")
print(f"image-blind (always {data.class_names[prior.argmax()]}) {blind_accuracy:.3f}")
shuffled = runs["labels shuffled"]["loss"]
assert shuffled[-1] < entropy, "labels shuffled: the training batch is memorised anyway"
assert acc_shuffled < blind_accuracy + 0.01, "...but nothing carries over to new images"
assert acc_good > acc_shuffled + 0.02

bn_model = runs["BN in eval mode"]["model"]
bns = [layer for layer in bn_model.encoder[0].children().values() if isinstance(layer, BatchNorm2d)]
assert all(np.all(bn.buffers["running_mean"] == 0) for bn in bns), "eval mode: no statistics"
assert all(int(bn.buffers["num_batches_tracked"]) == 0 for bn in bns)
assert runs["BN in eval mode"]["loss"][-1] > good["loss"][-1]

raw = runs["no normalisation, no BN"]["loss"]
assert raw[0] > 10 * np.log(K), "raw pixels: a first loss far above ln K"
print("every broken run shows its symptom")

# %% [markdown]
# ## What to remember
#
# - Before a long run: loss at init about `ln K`; the prior baseline `H(pi)` is the
#   number to beat; a single batch must be overfit.
# - Watch per-layer update/weight ratios (about `1e-3`) and the gradient norm; a steadily
#   growing gradient norm is accumulated gradients.
# - Dead ReLUs get exactly zero gradient. BatchNorm: train mode to train, eval mode to
#   predict; the running statistics tell which one was used.
# - Unlabelled pixels: `ignore_index`, never a clip into a real class.
#
# Next: [lesson 12](12_seeing_inside.ipynb), looking inside a trained U-Net.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/11_debugging.py](solutions/11_debugging.py).
#
# 1. `my_prior_baseline(labels, k)`: the loss of the best image-blind predictor for these
#    labels, as a float (the check computes it with `SoftmaxCrossEntropy`).
# 2. `my_dead_channels(activations)`: which channels of a `(N, C, H, W)` ReLU output are
#    dead on this batch (zero at every pixel of every image), as a `(C,)` bool array.
# 3. **A mutation.** In `SoftmaxCrossEntropy.forward` (`minunet/nn/losses.py`), change
#    `valid = target != self.ignore_index` to `valid = target >= 0`. Which of these
#    checks would fail?
#    - `"ignored_get_no_gradient"`: pixels labelled `ignore_index` get a zero gradient;
#    - `"plain_mean"`: without weights the loss is the mean over pixels;
#    - `"class_weights"`: class weights all 1 give the plain loss.
#
#    Set `answer_ignore_mutation` to the set of names; the check runs the mutated code.

# %%
from exercises import (  # noqa: E402
    check_answer_ignore_mutation,
    check_my_dead_channels,
    check_my_prior_baseline,
    report,
)


def my_prior_baseline(labels, k):
    """labels (N, H, W) ints in [0, k) -> the prior baseline's cross-entropy."""
    ...  # TODO


def my_dead_channels(activations):
    """(N, C, H, W) -> (C,) bool."""
    ...  # TODO


answer_ignore_mutation = None  # TODO: a set of check names

report(check_my_prior_baseline, my_prior_baseline)
report(check_my_dead_channels, my_dead_channels)
report(check_answer_ignore_mutation, answer_ignore_mutation)
