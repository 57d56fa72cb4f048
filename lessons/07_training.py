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
# # Lesson 07: training, and reading the results
#
# Everything so far, assembled into a training loop, small enough to run on a laptop
# CPU in a couple of minutes: a narrow U-Net on 64x64 toy pets. Then we read the
# results the way you would for a real model: learning curves, predicted masks, the
# confusion matrix, and the worst cases.
#
# The loop is written out here from the library's pieces, so every step is visible.
# `python -m minunet.train` is the full-featured version of the same loop (checkpoints,
# schedules, the real Pets data, the GPU).

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from minunet.core.backend import seed_everything
from minunet.data.augment import AugmentConfig
from minunet.data.loader import DeviceLoader
from minunet.data.synthetic import synthetic_splits
from minunet.model import UNet
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.metrics import confusion_matrix, format_metrics, metrics_from_confusion
from minunet.nn.optim import make_optimizer

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 64
xp = np  # the backend: numpy here; lesson 08 swaps in cupy
seed_everything(0)

# Small mode (CI) trains just long enough to beat the two baselines checked below, with
# a margin (over seeds 0-4 its final loss sat 0.15-0.3 below the prior's entropy).
if SMALL:
    SIZE, N_TRAIN, N_VAL, BASE, DEPTH, EPOCHS, LR = 32, 48, 16, 8, 2, 12, 5e-3
else:
    SIZE, N_TRAIN, N_VAL, BASE, DEPTH, EPOCHS, LR = 64, 128, 32, 8, 3, 20, 3e-3
BATCH = 8

# %% [markdown]
# ## Data, model, loss, optimiser
#
# - `synthetic_splits`: training and validation toy pets from separate seed streams
#   (never the same image in both).
# - `DeviceLoader`: puts the uint8 split on the backend once, then each epoch shuffles,
#   augments (flip, crop, colour) and normalises batches `x (B, 3, H, W)` float32 with
#   labels `y (B, H, W)`. `for_eval` gives the validation batches, in order, unaugmented.
# - `UNet`: same padding, BatchNorm, `BASE` channels at the top.
# - `SoftmaxCrossEntropy` (lesson 05) and Adam.

# %%
train_data, val_data = synthetic_splits(N_TRAIN, N_VAL, image_size=SIZE, seed=0)
augment = AugmentConfig(flip=True, scale=(0.75, 1.0), jitter=0.1)
train_loader = DeviceLoader(train_data, xp, BATCH, augment=augment, seed=0)
val_loader = DeviceLoader.for_eval(val_data, xp, BATCH)

model = UNet(in_channels=3, num_classes=3, base_channels=BASE, depth=DEPTH, seed=0)
criterion = SoftmaxCrossEntropy()
optimizer = make_optimizer("adam", model.parameters(), lr=LR)
print(f"{len(train_data)} training / {len(val_data)} validation images of {SIZE}x{SIZE}")
print(f"U-Net base {BASE}, depth {DEPTH}: {model.num_parameters():,} parameters")
print(f"{len(train_loader)} steps per epoch, {EPOCHS} epochs")

# %% [markdown]
# ## One training step
#
# Exactly the chain of the previous lessons:
#
# 1. `logits = model.forward(x)`: `(B, 3, H, W)`;
# 2. `loss = criterion(logits, y)`: a scalar;
# 3. `optimizer.zero_grad()`, since gradients accumulate (`+=`);
# 4. `model.backward(criterion.backward())`: fills every `Parameter.grad`;
# 5. `optimizer.step()`: Adam updates every `Parameter.data` in place.
#
# Validation puts the model in **eval** mode (BatchNorm uses its running statistics)
# and accumulates one confusion matrix over all validation pixels.


# %%
def evaluate(model, loader):
    """Mean loss and the (K, K) confusion matrix over a loader, in eval mode."""
    model.eval()
    conf = xp.zeros((3, 3), dtype=np.int64)
    total, pixels = 0.0, 0
    for batch in loader.epoch(0):
        logits = model.forward(batch.x)
        total += float(criterion(logits, batch.y)) * batch.y.size
        pixels += batch.y.size
        conf += confusion_matrix(logits.argmax(axis=1), batch.y, 3)
    model.release()  # drop the caches kept for a backward that will not come
    model.train()
    return total / pixels, conf


history = {"step_loss": [], "val_loss": [], "val_miou": [], "val_acc": []}
start = time.perf_counter()
for epoch in range(EPOCHS):
    for batch in train_loader:
        logits = model.forward(batch.x)
        loss = criterion(logits, batch.y)
        optimizer.zero_grad()
        model.backward(criterion.backward())
        optimizer.step()
        history["step_loss"].append(float(loss))
    val_loss, conf = evaluate(model, val_loader)
    m = metrics_from_confusion(conf, val_data.class_names)
    history["val_loss"].append(val_loss)
    history["val_miou"].append(m["miou"])
    history["val_acc"].append(m["pixel_accuracy"])
    print(
        f"epoch {epoch + 1:>2}: train loss {np.mean(history['step_loss'][-len(train_loader) :]):.3f}"
        f"  val loss {val_loss:.3f}  val mIoU {m['miou']:.3f}  pixel acc {m['pixel_accuracy']:.3f}"
        f"  ({time.perf_counter() - start:.0f} s)"
    )

assert all(np.isfinite(history["step_loss"]))
# The loss must fall: the last 5 steps' mean at most 80% of the first 5 steps' mean.
assert np.mean(history["step_loss"][-5:]) < 0.8 * np.mean(history["step_loss"][:5])

# %% [markdown]
# ## Did it learn more than the class frequencies?
#
# A falling loss is not yet proof of learning: a model can lower its loss by learning
# only how common each class is, and a model that calls everything background already
# scores a respectable pixel accuracy (lesson 05). Two baselines that need no image:
#
# - **the prior**: predict the training set's class frequencies `f` at every pixel. Its
#   cross-entropy is the entropy `H(f) = -sum_k f_k log f_k`, the lowest loss a model
#   that ignores the image can reach. Our final loss must be below it.
# - **all background**: its mean IoU is `f_background / 3` on the validation set
#   (background IoU = the background fraction, the other two classes 0). Our validation
#   mean IoU must beat it.
#
# Both hold in the small CI run too, where the model trains for seconds.

# %%
freq = np.bincount(train_data.masks.ravel(), minlength=3) / train_data.masks.size
prior_entropy = float(-(freq * np.log(freq)).sum())
baseline_miou = float(np.mean(val_data.masks == 1)) / 3  # background IoU = its fraction
final_train_loss = float(np.mean(history["step_loss"][-len(train_loader) :]))
print(f"class frequencies {np.round(freq, 3).tolist()}: prior entropy {prior_entropy:.3f} nats")
print(
    f"final loss: train (last epoch) {final_train_loss:.3f}, validation {history['val_loss'][-1]:.3f}"
)
print(f"validation mean IoU {history['val_miou'][-1]:.3f}, all-background {baseline_miou:.3f}")
assert final_train_loss < prior_entropy, "no better than the class prior on training data"
assert history["val_loss"][-1] < prior_entropy, "no better than the prior on validation"
assert history["val_miou"][-1] > baseline_miou + 0.05, "mean IoU no better than all-background"

# %% [markdown]
# ## Learning curves
#
# The training loss is noisy (each point is one batch of 8, freshly augmented) and
# falls quickly at first. The validation loss is computed once per epoch on the same
# held-out images, without augmentation. If validation loss rose while training loss
# kept falling, the model would be memorising its training images (overfitting); with
# fresh augmentation every epoch and so few steps, that has no time to happen here.
# Validation loss even sits *below* training loss: the training batches are augmented
# (harder), and BatchNorm uses batch statistics in training but running ones in eval.

# %%
steps_per_epoch = len(train_loader)
epoch_ends = np.arange(1, EPOCHS + 1) * steps_per_epoch
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.5))
ax0.plot(history["step_loss"], alpha=0.5, label="train (per step)")
ax0.plot(epoch_ends, history["val_loss"], "o-", label="validation (per epoch)")
ax0.set_xlabel("step")
ax0.set_ylabel("cross-entropy")
ax0.legend()
ax1.plot(range(1, EPOCHS + 1), history["val_miou"], "o-", label="mean IoU")
ax1.plot(range(1, EPOCHS + 1), history["val_acc"], "s-", label="pixel accuracy")
ax1.set_xlabel("epoch")
ax1.set_ylim(0, 1)
ax1.legend()
ax1.set_title("validation")
plt.show()

# %% [markdown]
# ## Predicted masks
#
# `model.predict(x)` runs the forward in eval mode and returns `argmax` over the class
# axis: `(N, H, W)`. Shown with the truth and an error map (red where wrong).

# %%
val_x = next(iter(val_loader.epoch(0))).x
pred = model.predict(val_x)  # (B, H, W)
truth = val_data.masks[: len(pred)]
show = min(6, len(pred))
fig, axes = plt.subplots(4, show, figsize=(2 * show, 8))
for i in range(show):
    axes[0, i].imshow(val_data.images[i])
    axes[1, i].imshow(truth[i], cmap="viridis", vmin=0, vmax=2)
    axes[2, i].imshow(pred[i], cmap="viridis", vmin=0, vmax=2)
    axes[3, i].imshow(pred[i] != truth[i], cmap="Reds", vmin=0, vmax=1)
for row, label in enumerate(["image", "truth", "prediction", "errors"]):
    axes[row, 0].set_title(label, loc="left", fontsize=9)
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The confusion matrix: where the errors are
#
# Rows are the true class, normalised to 1: row "outline" says what fraction of true
# outline pixels were called pet, background or outline. The outline band is thin and
# sits exactly where pet and background meet, so it is the class a small model confuses
# most, as on the real Pets data.

# %%
final = metrics_from_confusion(conf, val_data.class_names)
print(format_metrics(final))
rates = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
fig, ax = plt.subplots(figsize=(4, 3.5))
ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
for (r, q), v in np.ndenumerate(rates):
    ax.text(q, r, f"{v:.2f}", ha="center", va="center", color="w" if v > 0.5 else "k")
ax.set_xticks(range(3), val_data.class_names)
ax.set_yticks(range(3), val_data.class_names)
ax.set_xlabel("predicted")
ax.set_ylabel("true")
plt.show()

# %% [markdown]
# ## Failure cases
#
# Averages hide the images a model gets badly wrong. Rank the validation images by their
# own pet IoU and look at the worst. Typical culprits on toy pets: background clutter in
# the animal's own colours, thin legs and tails, and two animals touching.

# %%
all_pred = np.concatenate([model.predict(b.x) for b in val_loader.epoch(0)])
per_image = []
for p, t in zip(all_pred, val_data.masks, strict=True):
    m_i = metrics_from_confusion(confusion_matrix(p, t, 3), val_data.class_names)
    per_image.append(m_i["iou"]["pet"])
worst = np.argsort(per_image)[:3]
fig, axes = plt.subplots(3, 3, figsize=(6.5, 6.5))
for col, i in enumerate(worst):
    axes[0, col].imshow(val_data.images[i])
    axes[0, col].set_title(f"{val_data.names[i]}\npet IoU {per_image[i]:.2f}", fontsize=8)
    axes[1, col].imshow(val_data.masks[i], cmap="viridis", vmin=0, vmax=2)
    axes[2, col].imshow(all_pred[i], cmap="viridis", vmin=0, vmax=2)
for ax in axes.flat:
    ax.axis("off")
axes[1, 0].set_title("truth", loc="left", fontsize=8)
axes[2, 0].set_title("prediction", loc="left", fontsize=8)
plt.tight_layout()
plt.show()
print(f"pet IoU per image: median {np.median(per_image):.2f}, worst {min(per_image):.2f}")

# %% [markdown]
# ## Where to go from here
#
# - Train longer and wider (`base_channels=32`, 128x128, more images): the outline IoU is
#   what improves last.
# - The real data: `python -m minunet.train --help` lists the options, among them the
#   Oxford-IIIT Pets source, learning-rate schedules, checkpoints and the GPU backend.
# - Compare with public figures (collected in the project README's Pets section, **not
#   measured here**): from-scratch 3-class U-Nets trained on the *full* Oxford-IIIT Pets
#   data at 128-256 px report roughly 0.87-0.90 pixel accuracy and mean IoU 0.66-0.70,
#   the outline class the hardest (IoU ~0.4). What minunet itself measured on real Pets
#   photos is in `benchmarks/RESULTS.md`.
#
# Next: [lesson 08](08_gpu.ipynb), the same code on a GPU.

# %% [markdown]
# ## Exercises
#
# Fill in the stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solution:
# [solutions/07_training.py](solutions/07_training.py).
#
# 1. `my_train_step(model, criterion, optimizer, x, y)`: one training step, as in the
#    loop above, returning the loss as a float. The check starts your model with stale
#    gradients in every `.grad` and compares every parameter after your step with one
#    step of the library's pieces from the same start.

# %%
from exercises import check_my_train_step, report  # noqa: E402


def my_train_step(model, criterion, optimizer, x, y):
    """Forward, loss, backward, update; returns float(loss)."""
    ...  # TODO


report(check_my_train_step, my_train_step)
