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
# # Lesson 05: softmax cross-entropy over pixels, and the metrics
#
# The U-Net ends with logits `z (N, K, H, W)`: K scores per pixel. Training needs a
# single number to minimise, the **loss**, and its gradient `dL/dz` to start
# backpropagation. Evaluation needs numbers people understand: **pixel accuracy**,
# **IoU** and **Dice**. This lesson derives both in NumPy and checks minunet against
# them.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from minunet.core.gradcheck import max_relative_error, numerical_gradient
from minunet.data.synthetic import make_toy_pets
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.metrics import confusion_matrix, format_metrics, metrics_from_confusion

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 72
rng = np.random.default_rng(0)

# %% [markdown]
# ## Softmax, one pixel at a time
#
# Segmentation is classification, once per pixel. At pixel `i` the K logits `z_i` become
# probabilities with the softmax,
#
# $$p_{ik} = \frac{e^{z_{ik}}}{\sum_{k'} e^{z_{ik'}}},$$
#
# and the loss of the pixel is the negative log-probability of its true class `y_i`.
# The loss of the batch is the mean over all `M = N*H*W` pixels:
#
# $$L = -\frac1M \sum_i \log p_{i y_i}
#     = \frac1M \sum_i \Big(\log\textstyle\sum_k e^{z_{ik}} - z_{i y_i}\Big).$$
#
# **Stability.** `exp(1000)` overflows. Softmax does not change if a constant is
# subtracted from all K logits, so we subtract the pixel's maximum first: every
# exponent is then `<= 0`, and `log sum exp` is computed as
# `m + log sum exp(z - m)` with `m = max_k z_k`.
#
# In an `(N, K, H, W)` array the classes are **axis 1**: every reduction below is
# over `axis=1`, once per pixel.


# %%
def softmax_ce_by_hand(z, y):
    """Mean softmax cross-entropy and its gradient. z (N, K, H, W), y (N, H, W) ints."""
    shifted = z - z.max(axis=1, keepdims=True)  # (N, K, H, W), each pixel's max is 0
    log_sum_exp = np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, 1, H, W)
    log_p = shifted - log_sum_exp  # log-probabilities
    picked = np.take_along_axis(log_p, y[:, None], axis=1)[:, 0]  # (N, H, W): log p_{i, y_i}
    loss = -picked.mean()
    onehot = np.arange(z.shape[1])[None, :, None, None] == y[:, None]  # (N, K, H, W) bool
    dz = (np.exp(log_p) - onehot) / y.size
    return loss, dz


z = rng.standard_normal((2, 3, 5, 4)) * 3
y = rng.integers(0, 3, (2, 5, 4))
loss_hand, dz_hand = softmax_ce_by_hand(z, y)
ce = SoftmaxCrossEntropy()
loss_lib = ce.forward(z, y)
np.testing.assert_allclose(float(loss_lib), loss_hand, rtol=1e-12)
np.testing.assert_allclose(ce.backward(), dz_hand, atol=1e-15)
print(f"loss {loss_hand:.6f}: SoftmaxCrossEntropy forward and backward == by hand")

# Stable where the naive formula is not: one pixel with logits (1000, 999, 0).
huge = np.array([1000.0, 999.0, 0.0])
with np.errstate(over="ignore", invalid="ignore"):
    print("naive softmax:     ", np.exp(huge) / np.exp(huge).sum())
print("max subtracted first:", np.exp(huge - huge.max()) / np.exp(huge - huge.max()).sum())
big = huge[None, :, None, None]  # (1, 3, 1, 1)
print("minunet's loss for true class 1:", float(ce.forward(big, np.array([[[1]]]))))
assert np.isclose(float(ce.forward(big, np.array([[[1]]]))), np.log1p(np.exp(-1.0)) + 1.0)

# %% [markdown]
# ## The gradient: `softmax - onehot`
#
# The gradient of the loss with respect to the logits has the most famous one-line
# form in deep learning. For one pixel with loss `l = log sum_k e^{z_k} - z_y`:
#
# - the first term's derivative with respect to `z_k` is `e^{z_k} / sum e^{z_k'} = p_k`;
# - the second's is 1 if `k = y`, else 0.
#
# So `dl/dz_k = p_k - [k = y]`, and with the mean over M pixels,
#
# $$\frac{\partial L}{\partial z_{ik}} = \frac{p_{ik} - \mathbb 1[k = y_i]}{M}.$$
#
# The gradient pushes the true class's logit up (its entry is `p - 1 < 0`) and every
# other logit down, in proportion to the probability the model wrongly gave it. A pixel
# already classified with confidence (`p_y ~ 1`) contributes almost nothing. Each
# pixel's K gradient entries sum to zero.
#
# Gradient check against the definition:

# %%
ce.forward(z, y)
analytic = ce.backward()
numeric = numerical_gradient(lambda: float(ce.forward(z, y)), z)
errors = max_relative_error(analytic, numeric)
print(f"max relative error vs central differences: {errors:.1e}")
assert errors < 1e-6
np.testing.assert_allclose(analytic.sum(axis=1), 0, atol=1e-15)

# %% [markdown]
# ## Weights: class weights, pixel weights, ignored pixels
#
# Real masks are unbalanced (much more background than outline), and the U-Net paper
# weights pixels near object borders more (lesson 06). minunet supports a weight per
# pixel, `w_i = class_weight[y_i] * pixel_weight_i`, and an `ignore_index` whose pixels
# get weight 0. The loss becomes a **weighted mean**, and the gradient of pixel `i` is
# scaled by the same weight:
#
# $$L = \frac{\sum_i w_i\,(-\log p_{i y_i})}{\sum_i w_i}, \qquad
#   \frac{\partial L}{\partial z_{ik}} = \frac{w_i\,(p_{ik} - \mathbb 1[k = y_i])}{\sum_i w_i}.$$

# %%
class_weights = np.array([2.0, 0.5, 4.0])
pixel_weights = rng.uniform(0.5, 3.0, y.shape)
y_ign = y.copy()
y_ign[0, 0, :] = 255  # an ignored row

valid = y_ign != 255
safe_y = np.where(valid, y_ign, 0)
w = valid * class_weights[safe_y] * pixel_weights  # (N, H, W)
shifted = z - z.max(axis=1, keepdims=True)
log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
nll = -np.take_along_axis(log_p, safe_y[:, None], axis=1)[:, 0]
loss_hand = (w * nll).sum() / w.sum()
onehot = np.arange(3)[None, :, None, None] == safe_y[:, None]
dz_hand = (np.exp(log_p) - onehot) * (w / w.sum())[:, None]

wce = SoftmaxCrossEntropy(class_weights=class_weights, ignore_index=255)
np.testing.assert_allclose(float(wce.forward(z, y_ign, pixel_weights)), loss_hand, rtol=1e-12)
np.testing.assert_allclose(wce.backward(), dz_hand, atol=1e-15)
assert np.all(wce.backward()[0, :, 0, :] == 0)  # ignored pixels get no gradient
print("weighted, with ignored pixels: loss and gradient == by hand")

# %% [markdown]
# That compares the library with our own derivation; if both were wrong the same way
# (the weighted mean divided by the wrong total, say), it would still pass. So, as for
# the plain loss, the definition gets the last word: central differences of the
# weighted loss itself, through `minunet.core.gradcheck.numerical_gradient`.

# %%
wce.forward(z, y_ign, pixel_weights)
analytic_w = wce.backward()
numeric_w = numerical_gradient(lambda: float(wce.forward(z, y_ign, pixel_weights)), z)
error_w = max_relative_error(analytic_w, numeric_w)
print(f"weighted loss: max relative error vs central differences {error_w:.1e}")
assert error_w < 1e-6  # float64, eps 1e-6: ~1e-9 expected; a wrong term is off by O(1)

# %% [markdown]
# ## Metrics from a confusion matrix
#
# The loss is for the optimiser. People judge a segmentation by how its masks overlap
# the truth. Everything needed is in the **confusion matrix** `C (K, K)`:
# `C[t, p]` = number of pixels of true class `t` predicted as `p`. From it, for class
# `k` with `TP = C[k, k]`, `FN = row_k - TP` (missed) and `FP = col_k - TP` (false
# alarms):
#
# - pixel accuracy = `trace(C) / sum(C)`;
# - IoU (intersection over union, Jaccard) = `TP / (TP + FP + FN)`;
# - Dice (F1) = `2 TP / (2 TP + FP + FN)`; always `Dice = 2 IoU / (1 + IoU)`, an
#   increasing function, so *for one class* the two rank models identically (Dice just
#   reads higher). Averaged over classes they need not: see below;
# - mean IoU = the average of IoU over the classes.
#
# minunet builds `C` by counting each pixel's flat index `t*K + p` into a `K*K` array with
# one `xp.add.at` (pixels it does not count go to a spare last bin). It works on the GPU,
# batch by batch, without reading anything back to the CPU, which `bincount` or a boolean
# mask would do to size its output. Here is the slow, obvious version, and the formulas
# by hand:


# %%
def confusion_by_hand(pred, target, k):
    conf = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        conf[t, p] += 1
    return conf


size = 32 if SMALL else 64
truth = make_toy_pets(4, image_size=size, seed=5).masks.astype(np.int64)  # (N, H, W)
pred = truth.copy()
pred[:, :, : size // 8] = 1  # a "model" that misses a strip on the left
noise = rng.random(truth.shape) < 0.1
pred[noise] = rng.integers(0, 3, noise.sum())  # and is wrong on 10% of the pixels at random

conf = confusion_matrix(pred, truth, 3)
np.testing.assert_array_equal(conf, confusion_by_hand(pred, truth, 3))

tp = np.diag(conf).astype(float)
fn, fp = conf.sum(axis=1) - tp, conf.sum(axis=0) - tp
iou_hand, dice_hand = tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)
m = metrics_from_confusion(conf, ["pet", "background", "outline"])
np.testing.assert_allclose(m["pixel_accuracy"], tp.sum() / conf.sum())
np.testing.assert_allclose(list(m["iou"].values()), iou_hand)
np.testing.assert_allclose(list(m["dice"].values()), dice_hand)
np.testing.assert_allclose(m["miou"], iou_hand.mean())
# (So the library's Dice and IoU satisfy Dice = 2 IoU / (1 + IoU) too: both equal the formulas.)
print(conf)
print(format_metrics(m))

# %%
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
axes[0].imshow(truth[0], vmin=0, vmax=2)
axes[0].set_title("truth")
axes[1].imshow(pred[0], vmin=0, vmax=2)
axes[1].set_title("prediction")
pet_t, pet_p = truth[0] == 0, pred[0] == 0
overlap = np.zeros(truth[0].shape + (3,))
overlap[pet_t & pet_p] = (0.2, 0.7, 0.2)  # intersection: green
overlap[pet_t & ~pet_p] = (0.9, 0.2, 0.2)  # missed: red
overlap[~pet_t & pet_p] = (0.2, 0.3, 0.9)  # false alarm: blue
axes[2].imshow(overlap)
axes[2].set_title(f"pet: TP green, FN red, FP blue\nbatch pet IoU {m['iou']['pet']:.2f}")
for ax in axes[:3]:
    ax.axis("off")
rates = conf / conf.sum(axis=1, keepdims=True)
axes[3].imshow(rates, cmap="Blues", vmin=0, vmax=1)
for (r, q), v in np.ndenumerate(rates):
    axes[3].text(q, r, f"{v:.2f}", ha="center", va="center", color="w" if v > 0.5 else "k")
names = ["pet", "bg", "outline"]
axes[3].set_xticks(range(3), names)
axes[3].set_yticks(range(3), names)
axes[3].set_xlabel("predicted")
axes[3].set_ylabel("true")
axes[3].set_title("confusion, rows normalised")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Mean IoU and mean Dice can disagree
#
# Per class, Dice is an increasing function of IoU. But `2u / (1 + u)` is *concave*: it
# lifts low IoUs much more than high ones (0.1 becomes 0.18, 0.9 only 0.95). So after
# averaging over classes, a model that is excellent on two classes and poor on the third
# can win on mean IoU and lose on mean Dice to a model that is fair on all three. Two
# such models on the same 220 pixels (100 pet, 100 background, 20 outline), given as
# their confusion matrices, expanded into pixels and counted by the library:


# %%
def pixels_from_confusion(conf):
    """(truth, prediction) pixel lists, (M,) each, with exactly this confusion matrix."""
    t, p = np.indices(conf.shape)
    counts = conf.ravel()
    return np.repeat(t.ravel(), counts), np.repeat(p.ravel(), counts)


class_names = ["pet", "background", "outline"]
sharp = np.array([[100, 0, 0], [0, 100, 0], [9, 9, 2]])  # misses most of the outline
even = np.array([[82, 6, 12], [6, 82, 12], [2, 2, 16]])  # fair everywhere
scores = {}
for name, c in [("sharp", sharp), ("even", even)]:
    t, p = pixels_from_confusion(c)
    np.testing.assert_array_equal(confusion_matrix(p, t, 3), c)
    mc = metrics_from_confusion(confusion_matrix(p, t, 3), class_names)
    scores[name] = (mc["miou"], float(np.mean(list(mc["dice"].values()))))
    per_class = ", ".join(f"{k} {v:.2f}" for k, v in mc["iou"].items())
    print(
        f"{name}: IoU {per_class}; mean IoU {scores[name][0]:.3f}, mean Dice {scores[name][1]:.3f}"
    )
assert scores["sharp"][0] > scores["even"][0]  # mean IoU prefers "sharp" ...
assert scores["sharp"][1] < scores["even"][1]  # ... mean Dice prefers "even"
print("mean IoU ranks sharp first, mean Dice ranks even first")

# %% [markdown]
# So say which mean you report, and compare models on the same one. minunet reports
# mean IoU.
#
# **A class that never occurs.** If a class appears neither in the truth nor in the
# prediction (an image with no outline, predicted without one), its IoU is `0 / 0`.
# Counting it as 0 would punish a correct answer, counting it as 1 would reward
# nothing. `metrics_from_confusion` reports its IoU and Dice as `nan` and leaves it out
# of the mean (`np.nanmean`): the mean is over the classes that occur in the truth or
# in the prediction. A class that is predicted but absent from the truth does count,
# with IoU 0.

# %%
no_outline = np.array([[30, 5, 0], [4, 61, 0], [0, 0, 0]])  # class 2 nowhere
m_absent = metrics_from_confusion(no_outline, class_names)
iou_present = [30 / (35 + 34 - 30), 61 / (65 + 66 - 61)]
assert np.isnan(m_absent["iou"]["outline"]) and np.isnan(m_absent["dice"]["outline"])
np.testing.assert_allclose(m_absent["miou"], np.mean(iou_present), rtol=1e-12)
false_alarm = no_outline.copy()
false_alarm[1, 1], false_alarm[1, 2] = 60, 1  # one background pixel called outline
m_alarm = metrics_from_confusion(false_alarm, class_names)
assert m_alarm["iou"]["outline"] == 0.0
np.testing.assert_allclose(m_alarm["miou"], np.mean([30 / 39, 60 / 70, 0.0]), rtol=1e-12)
print(
    f"absent class: IoU {m_absent['iou']['outline']}, mean IoU over the 2 others {m_absent['miou']:.4f}"
)
print(f"predicted once but absent from the truth: IoU 0, mean IoU {m_alarm['miou']:.4f}")

# %% [markdown]
# ## Why pixel accuracy alone misleads
#
# A "model" that calls every pixel background scores the background fraction as its
# accuracy, often 60-70% on pet photos, while finding no pet at all. IoU for the pet is
# 0, and mean IoU drops accordingly. That is why segmentation papers report IoU.

# %%
lazy = np.ones_like(truth)  # everything background
m_lazy = metrics_from_confusion(confusion_matrix(lazy, truth, 3), ["pet", "background", "outline"])
print(
    f"all-background: pixel accuracy {m_lazy['pixel_accuracy']:.2f}, pet IoU {m_lazy['iou']['pet']:.2f}, mean IoU {m_lazy['miou']:.2f}"
)
assert m_lazy["iou"]["pet"] == 0.0

# %% [markdown]
# ## What to remember
#
# - Per pixel: `loss = logsumexp(z) - z_y`, computed after subtracting the max;
#   gradient `(softmax - onehot) / M`, or weighted by `w_i / sum w`.
# - The confusion matrix holds every metric: accuracy = trace / total,
#   IoU = TP / (TP + FP + FN), Dice = 2 IoU / (1 + IoU).
# - Report IoU per class, not just pixel accuracy. Mean IoU and mean Dice can rank two
#   models differently; a class absent from truth and prediction is left out of the mean.
#
# Next: [lesson 06](06_data.ipynb), the data the loss is computed on.

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/05_loss_and_metrics.py](solutions/05_loss_and_metrics.py).
#
# 1. `my_iou(conf)`: the IoU of every class, `(K,)`, from a `(K, K)` confusion matrix
#    (rows true, columns predicted), as `metrics_from_confusion` computes it.
# 2. `my_weighted_ce(z, y, class_weights)`: the class-weighted mean cross-entropy, the
#    number `SoftmaxCrossEntropy(class_weights=...)` returns. Stay stable for large logits.

# %%
from exercises import check_my_iou, check_my_weighted_ce, report  # noqa: E402


def my_iou(conf):
    """(K, K) counts -> (K,) IoU per class."""
    ...  # TODO


def my_weighted_ce(z, y, class_weights):
    """z (N, K, H, W), y (N, H, W), class_weights (K,) -> scalar loss."""
    ...  # TODO


report(check_my_iou, my_iou)
report(check_my_weighted_ce, my_weighted_ce)
