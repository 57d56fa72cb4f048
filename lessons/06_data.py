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
# # Lesson 06: the data, preprocessing and augmentation
#
# A segmentation network learns from pairs (image, mask). This lesson looks at:
#
# 1. the **Oxford-IIIT Pets** trimaps (real photos, when a sample of them is present);
# 2. the **synthetic toy pets** that stand in for them offline;
# 3. **augmentation** (flips, crops, colour) as a sampling grid;
# 4. the U-Net paper's **elastic deformation** and **border weight map**.

# %%
# ruff: noqa: E402 (a warning filter must come before the imports that trigger it)
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, in Jupyter

from minunet.data.augment import AugmentConfig, augment_batch, sample_bilinear
from minunet.data.elastic import cubic_upsample_matrix, elastic_deform, elastic_field
from minunet.data.imageio import open_image, read_rgb
from minunet.data.pets import is_pets_root, preprocess_pet, read_split_names
from minunet.data.synthetic import make_toy_pets
from minunet.data.weightmap import border_weight_map

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
plt.rcParams["figure.dpi"] = 56  # photos compress poorly: keep the notebook small
SIZE = 64 if SMALL else 128
CLASS_CMAP = dict(cmap="viridis", vmin=0, vmax=2)

# %% [markdown]
# ## Oxford-IIIT Pets: photos and trimaps
#
# The Oxford-IIIT Pet data set (Parkhi et al., 2012) has 7,349 photos of 37 breeds of
# cats and dogs. Each comes with a **trimap**, a PNG whose pixels are 1 (pet),
# 2 (background) or 3 (the uncertain outline in between). minunet's classes are the
# trimap value minus 1: 0 pet, 1 background, 2 outline.
#
# The full data set is an 800 MB download (`minunet.data.pets` fetches and caches it).
# This lesson reads a few real pairs from an extracted Oxford-IIIT Pet folder (the full
# data set or any sample of it in the official layout) named by the environment
# variable `MINUNET_PETS_SAMPLE`, if it is set. It only reads from it.

# %%
PETS_SAMPLE = (
    Path(os.environ["MINUNET_PETS_SAMPLE"]) if os.environ.get("MINUNET_PETS_SAMPLE") else None
)
have_pets = PETS_SAMPLE is not None and is_pets_root(PETS_SAMPLE)
if have_pets:
    names = read_split_names(PETS_SAMPLE / "annotations" / "trainval.txt")
    print(f"real Pets sample found (MINUNET_PETS_SAMPLE): {len(names)} trainval images")
else:
    names = []
    where = (
        "MINUNET_PETS_SAMPLE is not set"
        if PETS_SAMPLE is None
        else f"MINUNET_PETS_SAMPLE={PETS_SAMPLE} is not an extracted Oxford-IIIT Pet folder"
    )
    print(
        f"No real photos: {where}. The cells below skip them and use the synthetic toy "
        "pets instead. To see real photos, set MINUNET_PETS_SAMPLE to a folder with "
        "images/, annotations/trimaps/ and annotations/trainval.txt before starting Jupyter."
    )

# %%
if have_pets:
    picks = [names[i] for i in np.linspace(0, len(names) - 1, 4).astype(int)]
    fig, axes = plt.subplots(3, 4, figsize=(9, 6.8))
    for col, name in enumerate(picks):
        photo = read_rgb(PETS_SAMPLE / "images" / f"{name}.jpg")  # (H, W, 3) uint8
        trimap = np.asarray(open_image(PETS_SAMPLE / "annotations" / "trimaps" / f"{name}.png"))
        image, mask = preprocess_pet(photo, trimap, SIZE)  # square, classes 0/1/2
        axes[0, col].imshow(photo)
        axes[0, col].set_title(f"{name}\n{photo.shape[1]}x{photo.shape[0]}", fontsize=8)
        axes[1, col].imshow(trimap, cmap="viridis", vmin=1, vmax=3)
        axes[2, col].imshow(image)
        axes[2, col].imshow(mask, alpha=0.45, **CLASS_CMAP)
        # preprocess_pet's mask is a nearest-neighbour resize (pixel centres) minus one:
        rows = ((np.arange(SIZE) + 0.5) * trimap.shape[0] / SIZE).astype(int)
        cols = ((np.arange(SIZE) + 0.5) * trimap.shape[1] / SIZE).astype(int)
        np.testing.assert_array_equal(mask, trimap[rows[:, None], cols[None, :]] - 1)
    for ax in axes.flat:
        ax.axis("off")
    axes[1, 0].set_title("trimap: 1 pet, 2 background, 3 outline", fontsize=8, loc="left")
    axes[2, 0].set_title(f"resized to {SIZE}x{SIZE}, classes overlaid", fontsize=8, loc="left")
    plt.tight_layout()
    plt.show()
else:
    print("(no real photos to show)")

# %% [markdown]
# Things to notice in real trimaps: the outline band is a few pixels wide at full
# resolution and is the *uncertain* region (fur, whiskers), so it is the hardest class;
# photos are of every size and aspect ratio, and resizing to a square distorts them a
# little; masks are resized with **nearest neighbour** (checked above against the
# pixel-centre formula), because averaging class numbers would invent classes.
#
# ## The synthetic stand-in
#
# `make_toy_pets` draws animal-like silhouettes (body, head, ears, legs, tail) with fur
# textures on cluttered backgrounds, some of it in the animals' own colours, so that
# colour alone cannot solve the task: the *shape* must be learned. The masks use the
# same three classes, with an outline band straddling the boundary. Everything is
# deterministic: sample `i` depends only on `(seed, i)`.

# %%
toy = make_toy_pets(8, image_size=SIZE, seed=0)
fig, axes = plt.subplots(2, 8, figsize=(14, 3.8))
for i in range(8):
    axes[0, i].imshow(toy.images[i])
    axes[1, i].imshow(toy.masks[i], **CLASS_CMAP)
for ax in axes.flat:
    ax.axis("off")
plt.show()
freq = np.bincount(toy.masks.ravel(), minlength=3) / toy.masks.size
print("class frequencies:", dict(zip(toy.class_names, np.round(freq, 3).tolist(), strict=True)))

# %% [markdown]
# ## Augmentation is a sampling grid
#
# minunet augments a whole batch at once, on the backend the batch lives on. A flip
# and a random resized crop are both "for each output pixel, read the input at some
# (fractional) position". So they are expressed as one **sampling grid** `(gy, gx)`,
# and two samplers read it: **bilinear** for images (a weighted average of the 4 nearest
# pixels) and **nearest** for masks (so labels stay exact).
#
# Bilinear interpolation at `(gy, gx)`, with `y0 = floor(gy)`, `fy = gy - y0` (and the
# same for x):
#
# $$v = (1-f_y)(1-f_x)\,I[y_0, x_0] + (1-f_y)f_x\,I[y_0, x_0+1] + f_y(1-f_x)\,I[y_0+1, x_0] + f_y f_x\,I[y_0+1, x_0+1].$$

# %%
img = toy.images[:1].astype(np.float32) / 255  # (1, H, W, 3)
gy, gx = np.float32(10.3), np.float32(20.75)
y0, x0, fy, fx = 10, 20, gy - 10, gx - 20
by_hand = (
    (1 - fy) * (1 - fx) * img[0, y0, x0]
    + (1 - fy) * fx * img[0, y0, x0 + 1]
    + fy * (1 - fx) * img[0, y0 + 1, x0]
    + fy * fx * img[0, y0 + 1, x0 + 1]
)
lib = sample_bilinear(img, np.full((1, 1, 1), gy), np.full((1, 1, 1), gx))[0, 0, 0]
np.testing.assert_allclose(lib, by_hand, rtol=1e-6)
# The identity grid reproduces the image exactly.
identity = sample_bilinear(img, np.arange(SIZE)[None, :, None], np.arange(SIZE)[None, None, :])
np.testing.assert_allclose(identity, img, atol=1e-7)
print("sample_bilinear == the four-neighbour formula; identity grid == the image")

# %%
rng = np.random.default_rng(1)
config = AugmentConfig(flip=True, scale=(0.6, 1.0), jitter=0.2)
batch_images = np.repeat(toy.images[:1], 6, axis=0)  # the same image six times
batch_masks = np.repeat(toy.masks[:1], 6, axis=0)
aug_images, aug_masks, _ = augment_batch(batch_images, batch_masks, None, config, rng)
assert set(np.unique(aug_masks)) <= {0, 1, 2}

# That check alone would not catch a mask resampled bilinearly and rounded: pet (0) and
# outline (2) average to 1, a valid class (background) in the wrong place. A mask of
# only 0 and 2 makes the mistake visible: nearest neighbour can never produce a 1.
two_class = np.where(batch_masks == 0, 0, 2).astype(batch_masks.dtype)  # pet vs the rest
_, aug_two, _ = augment_batch(batch_images, two_class, None, config, np.random.default_rng(1))
assert set(np.unique(aug_two)) == {0, 2}  # both still there, and no 1 invented between them
print("augmented masks: labels only copied (a 0/2 mask stays 0/2, no 1 appears)")
fig, axes = plt.subplots(2, 6, figsize=(12, 4))
for i in range(6):
    axes[0, i].imshow(aug_images[i])
    axes[1, i].imshow(aug_masks[i], **CLASS_CMAP)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle("one image, six random flips, crops and colour jitters (masks follow)")
plt.show()

# %% [markdown]
# ## The paper's elastic deformation
#
# The U-Net paper trained on 30 images. Its key augmentation: random **elastic
# deformations**. Draw random displacement vectors on a coarse 3x3 grid (Gaussian, 10
# pixels standard deviation), interpolate them smoothly (bicubic) to every pixel, and
# resample the image at `identity + displacement`. Tissue and animals bend like that;
# the network learns to ignore it.
#
# Two differences from the paper are worth knowing before reading the pictures below.
# The paper's 10 pixels were chosen for its 512x512 cell images; minunet's default
# keeps 10 pixels whatever the image size, so on these 128x128 images the same
# displacement is a fraction of the image four times as large (at the small sizes of
# the CI run, 64x64, eight times). For images of another size, scale it:
# `elastic_deform(..., sigma=10 * side / 512)`. And where a displaced position falls
# outside the image, minunet reads the nearest border pixel (clamping), which smears the
# border row or column into a band; the paper mirrored the image at its borders instead.
#
# Interpolating a 3x3 grid to `H x W` is linear, so it is two small matrices:
# `field = M_h @ coarse @ M_w^T`, with `M (size, 3)` holding the cubic-convolution
# (Keys) weights. Each row of `M` sums to 1 (a constant displacement stays constant),
# and `M` passes exactly through the nodes. Those two properties hold for linear
# interpolation too, so we also build `M` by hand from the cubic kernel (Keys 1981,
# `a = -0.5`): pixel `y` sits at `u = y (g-1)/(H-1)` in node units, and node `k`
# gets weight `K(u - k)` for the four nodes `floor(u) - 1 ... floor(u) + 2`, taps beyond
# the ends falling onto the end nodes,
#
# $$K(t) = \begin{cases} (a+2)|t|^3 - (a+3)|t|^2 + 1 & |t| \le 1 \\
#   a|t|^3 - 5a|t|^2 + 8a|t| - 4a & 1 < |t| < 2 \\ 0 & \text{otherwise.} \end{cases}$$

# %%
m_h = cubic_upsample_matrix(SIZE, 3)
np.testing.assert_allclose(m_h.sum(axis=1), 1.0, atol=1e-6)
for k, node_pixel in enumerate([0, (SIZE - 1) / 2, SIZE - 1]):
    if float(node_pixel).is_integer():
        np.testing.assert_allclose(m_h[int(node_pixel)], np.eye(3)[k], atol=1e-6)


def keys_kernel(t, a=-0.5):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0


def cubic_matrix_by_hand(size, nodes):
    m = np.zeros((size, nodes))
    for y in range(size):
        u = y * (nodes - 1) / (size - 1)
        for k in range(int(np.floor(u)) - 1, int(np.floor(u)) + 3):
            m[y, min(max(k, 0), nodes - 1)] += keys_kernel(u - k)  # clamped at the ends
    return m


for size, nodes in [(SIZE, 3), (37, 3), (50, 5)]:
    # float32 matrix vs float64 by hand: entries are O(1), so 1e-6 is float32 rounding.
    np.testing.assert_allclose(
        cubic_upsample_matrix(size, nodes), cubic_matrix_by_hand(size, nodes), atol=1e-6
    )
linear = np.interp(np.arange(SIZE) * 2 / (SIZE - 1), [0, 1, 2], [0.0, 1.0, 0.0])  # node 1's weights
print(
    f"cubic_upsample_matrix == the Keys kernel by hand; it differs from linear interpolation by up to {np.abs(m_h[:, 1] - linear).max():.3f}"
)

field = elastic_field(2, SIZE, SIZE, np.random.default_rng(3))  # (N, 2, H, W)
coarse = np.random.default_rng(3).standard_normal((2, 2, 3, 3), dtype=np.float32) * 10
np.testing.assert_allclose(field, m_h @ coarse @ m_h.T, rtol=1e-5, atol=1e-4)
print("elastic_field == M_h @ (10 * N(0,1) on a 3x3 grid) @ M_w^T")
print(
    f"sigma 10 px on {SIZE}x{SIZE}: {512 / SIZE:g}x the paper's displacement relative to the image"
)

grid = np.zeros((2, SIZE, SIZE, 3), dtype=np.uint8)
grid[:] = 230
grid[:, :: SIZE // 16] = 40
grid[:, :, :: SIZE // 16] = 40
warped_grid, _, _ = elastic_deform(grid, toy.masks[:2], None, None, field=field)
warped_img, warped_mask, _ = elastic_deform(toy.images[:2], toy.masks[:2], None, None, field=field)
fig, axes = plt.subplots(1, 5, figsize=(14, 3))
step = SIZE // 8
yy, xx = np.mgrid[0:SIZE:step, 0:SIZE:step]
axes[0].imshow(grid[0])
axes[0].quiver(xx, yy, field[0, 1, ::step, ::step], -field[0, 0, ::step, ::step], color="crimson")
axes[0].set_title("displacement field")
axes[1].imshow(warped_grid[0])
axes[1].set_title("a grid, deformed")
axes[2].imshow(toy.images[0])
axes[2].set_title("image")
axes[3].imshow(warped_img[0])
axes[3].set_title("deformed image")
axes[4].imshow(warped_mask[0], **CLASS_CMAP)
axes[4].set_title("deformed mask")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The paper's border weight map
#
# In cell images, touching cells are separated by a thin gap of background. Getting
# that gap right is what separates two cells from one blob, yet it is a tiny fraction of
# the pixels. The paper weights each pixel's loss by
#
# $$w(x) = w_c(x) + w_0 \exp\!\Big(-\frac{(d_1(x) + d_2(x))^2}{2\sigma^2}\Big),$$
#
# where `w_c` balances class frequencies and `d1`, `d2` are the distances to the
# nearest and second-nearest object (`w0 = 10`, `sigma = 5` pixels). The second term is
# large only where *two* objects are both close: the gaps. minunet adds it on
# background pixels only, and computes the distances with its own exact Euclidean
# distance transform (no SciPy). Here it is checked against brute force on a few
# discs: for every background pixel, the distance to every pixel of every object.

# %%
side = 48
yy, xx = np.mgrid[0:side, 0:side]
discs = [
    (14, 14, 8),
    (14, 34, 9),
    (34, 24, 10),
]  # (centre row, centre column, radius): gaps of 3-4 px
cells = np.zeros((side, side), dtype=np.uint8)
for cy, cx, r in discs:
    cells[(yy - cy) ** 2 + (xx - cx) ** 2 <= r**2] = 1
weights = border_weight_map(cells, foreground_classes=[1], w0=10.0, sigma=5.0)

# Brute force: object k is the k-th disc (they do not touch), distances by exhaustive search.
objects = []
for cy, cx, r in discs:
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    objects.append(np.argwhere(inside))
dist = np.stack(
    [
        np.sqrt(((np.stack([yy, xx], -1)[:, :, None, :] - pts[None, None]) ** 2).sum(-1)).min(-1)
        for pts in objects
    ]
)  # (objects, H, W)
d_sorted = np.sort(dist, axis=0)
d1, d2 = d_sorted[0], d_sorted[1]
counts = np.bincount(cells.ravel(), minlength=2)
freq = counts / counts.sum()
w_c = (np.median(freq) / freq)[cells]  # median-frequency class balancing
brute = w_c + np.where(cells == 0, 10.0 * np.exp(-((d1 + d2) ** 2) / (2 * 5.0**2)), 0.0)
brute[brute - w_c < 1e-6] = w_c[brute - w_c < 1e-6]  # minunet drops terms below 1e-6
np.testing.assert_allclose(weights, brute, rtol=1e-5, atol=1e-5)
print("border_weight_map == w_c + 10 exp(-(d1 + d2)^2 / 50), by brute-force distances")

fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))
for ax, arr, title in [
    (axes[0], cells, "mask (3 objects)"),
    (axes[1], d1, "d1: nearest object"),
    (axes[2], d2, "d2: second nearest"),
    (axes[3], weights, "weight map"),
]:
    im = ax.imshow(arr, cmap="magma" if ax is axes[3] else "viridis")
    ax.set_title(title)
    ax.axis("off")
fig.colorbar(im, ax=axes[3], shrink=0.8)
plt.show()

# %% [markdown]
# The bright ridges are the gaps between neighbouring discs: there the loss counts up
# to ~10 times more. For Oxford Pets (one animal per image, usually) the term rarely
# applies; it matters for instance-dense data such as the paper's ISBI cell images
# (`minunet.data.isbi`).
#
# ## What to remember
#
# - Masks are resized and resampled with nearest neighbour; images with bilinear.
# - Augmentation = a sampling grid (flip, crop, elastic warp) + two samplers, applied
#   identically to image, mask and weight map.
# - Elastic field = `M_h @ (3x3 Gaussian displacements) @ M_w^T`.
# - Border weights emphasise the thin gaps between objects.
#
# Next: [lesson 07](07_training.ipynb) puts it all together and trains.

# %% [markdown]
# ## Exercises
#
# Fill in the stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solution: [solutions/06_data.py](solutions/06_data.py).
#
# 1. `my_bilinear(image, y, x)`: the bilinear interpolation of a 2-D `image` at one
#    fractional position, in pixel-centre coordinates (`(2.0, 3.0)` is pixel `[2, 3]`
#    itself), from its four neighbours, as `sample_bilinear` computes it. Positions on
#    the last row or column must work too.

# %%
from exercises import check_my_bilinear, report  # noqa: E402


def my_bilinear(image, y, x):
    """image (H, W), a position (y, x) inside it -> the interpolated value."""
    ...  # TODO


report(check_my_bilinear, my_bilinear)
