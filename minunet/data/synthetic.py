"""A synthetic "toy pets" data set: the offline default for demos, lessons and tests.

Each image shows one or two animal-like silhouettes (a body ellipse, a head, ears, legs
and a tail, built from overlapping shapes) with fur-like textures, on a cluttered
textured background. Its masks follow the Oxford-IIIT Pets trimaps exactly, so every
part of minunet that works on real Pets works here unchanged:

    0 pet, 1 background, 2 outline (a 2-3 px band straddling the silhouette boundary)

with ``mask_values = [1, 2, 3]`` (the values of the original trimap files).

Why it looks the way it does: a network must not be able to solve the task from colour
alone, so some background clutter uses the animals' own palette and fur textures, and
the silhouette (its shape) is what tells them apart. The outline band, as in real
trimaps, is the hard class.

How it is drawn: every shape is a *signed distance field* (negative inside, in pixels),
evaluated with NumPy on all pixels of the shape's window (its bounding square) at once. Unions are minima, cut-outs are
maxima, a soft ``clip(0.5 - d, 0, 1)`` coverage antialiases the painted edges, and the
labels are thresholds of the same field: pet where ``d <= -w/2``, outline where
``|d| < w/2``. So the image and the mask cannot disagree.

Determinism: sample ``i`` is drawn from its own generator seeded with
``(seed, stream, i)``, so it depends on nothing else: ``make_toy_pets(10)`` is a prefix
of ``make_toy_pets(100)``, and the validation split (another stream) never changes
when the training split grows.
"""

from __future__ import annotations

import math

import numpy as np

from minunet.data.dataset import PETS_CLASS_NAMES, SegmentationData

PET, BACKGROUND, OUTLINE = 0, 1, 2
# Values of the three classes in the original Oxford-IIIT trimap files.
PETS_MASK_VALUES = [1, 2, 3]

# Seed streams: training and validation samples never share a generator.
TRAIN_STREAM, VAL_STREAM = 0, 1

# Fur colours (RGB): ginger, brown, black, white, grey, cream, tan, dark brown, silver.
FUR_PALETTE = np.array(
    [
        [205, 120, 50],
        [125, 80, 45],
        [35, 30, 30],
        [235, 230, 220],
        [128, 128, 134],
        [228, 204, 160],
        [190, 150, 100],
        [72, 46, 30],
        [182, 182, 188],
    ],
    dtype=np.float32,
)

# Width of the outline band in pixels. Pixel centres within 1.25 px of the boundary
# are outline, so a crossing of the band covers 2 or 3 pixels depending on where the
# boundary falls between pixel centres: the 2-3 px band of real trimaps, but a
# deterministic function of the (antialiased, visible) edge. A width drawn at random
# per image would be label noise no network could learn.
OUTLINE_WIDTH = 2.5


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One uniform draw as a Python float.

    A Python float keeps float32 arithmetic in float32, where a NumPy float64 scalar
    would promote every (H, W) array it touches to float64, at twice the cost.
    """
    return float(rng.uniform(low, high))


# --------------------------------------------------------------------------------------
# Signed distance fields. Arguments u, v are (H, W) coordinate grids in pixels.
# --------------------------------------------------------------------------------------


def _sd_ellipse(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to the ellipse (u/a)^2 + (v/b)^2 = 1, centred at 0.

    First-order: (k - 1) / |grad k| with k the ellipse's radial function. Exact for a
    circle, and within a fraction of a pixel near the boundary of the ellipses used here
    (the only place the labels look at it).
    """
    k = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    return (k - 1.0) * k / np.maximum(grad, 1e-6)


def _sd_capsule(
    u: np.ndarray,
    v: np.ndarray,
    p0: tuple[float, float],
    p1: tuple[float, float],
    r0: float,
    r1: float,
) -> np.ndarray:
    """Signed distance to a segment p0 -> p1 thickened to radius r0 at p0, r1 at p1."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = ((u - p0[0]) * du + (v - p0[1]) * dv) / max(du * du + dv * dv, 1e-9)
    t = np.clip(t, 0.0, 1.0)
    dist = np.hypot(u - (p0[0] + t * du), v - (p0[1] + t * dv))
    return dist - (r0 + t * (r1 - r0))


def _sd_triangle(u: np.ndarray, v: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Signed distance to a triangle pts (3, 2): the largest signed distance to its edges.

    Exact inside and beside the edges; slightly too small (sharper) beyond the corners,
    which only makes ear tips a fraction of a pixel pointier.
    """
    # Orient the vertices counter-clockwise so every edge normal points outwards.
    e1, e2 = pts[1] - pts[0], pts[2] - pts[0]
    if e1[0] * e2[1] - e1[1] * e2[0] < 0:
        pts = pts[::-1]
    d = np.full(u.shape, -np.inf, dtype=np.float32)
    for k in range(3):
        a, b = pts[k], pts[(k + 1) % 3]
        ex, ey = b - a
        length = max(float(np.hypot(ex, ey)), 1e-9)
        # Outward normal of a counter-clockwise edge in (u right, v down) coordinates.
        nx, ny = ey / length, -ex / length
        dk = (u - a[0]) * nx + (v - a[1]) * ny
        d = np.maximum(d, dk)
    return d


def _coverage(sd: np.ndarray) -> np.ndarray:
    """Antialiased area coverage of a pixel by a shape, from its signed distance."""
    return np.clip(0.5 - sd, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------


def _interpolation_matrix(rng: np.random.Generator, length: int, cell: float) -> np.ndarray:
    """(length, n) weights that interpolate n lattice values onto ``length`` pixel centres.

    The lattice spacing is ``cell`` pixels. Each row holds the smoothstep weights of the
    two lattice points around that pixel, at a random phase; the smoothstep hides the
    lattice that linear weights would show.
    """
    n = int(math.ceil(length / cell)) + 2
    t = (np.arange(length, dtype=np.float32) + 0.5) / np.float32(cell) + np.float32(rng.random())
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    f = f * f * (3.0 - 2.0 * f)
    weights = np.zeros((length, n), dtype=np.float32)
    rows = np.arange(length)
    weights[rows, i0] = 1.0 - f
    weights[rows, i0 + 1] = f
    return weights


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field in [0, 1] with features about ``cell`` pixels across.

    Returns ``shape`` = (H, W) float32: random values on a lattice ``cell`` pixels apart,
    interpolated. The interpolation is separable, so the whole field is two small
    matrix products, Wy @ lattice @ Wx.T, instead of a gather per pixel.
    """
    wy = _interpolation_matrix(rng, shape[0], cell)
    wx = _interpolation_matrix(rng, shape[1], cell)
    lattice = rng.random((wy.shape[1], wx.shape[1]), dtype=np.float32)
    return wy @ lattice @ wx.T


def _window(size: int, cx: float, cy: float, radius: float) -> tuple[slice, slice] | None:
    """The square of pixels within ``radius`` of (cx, cy), clipped to the image.

    Objects are drawn only inside their window: most are small, and evaluating every
    shape on the whole image was most of the generation time. None if it is outside.
    """
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, size)
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, size)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _grid(window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a window: yy (h, 1) and xx (1, w), float32."""
    rows, cols = window
    yy = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    xx = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
    return yy, xx


def _paint(img: np.ndarray, window: tuple[slice, slice], sd: np.ndarray, colour) -> None:
    """Composite ``colour`` (h, w, 3) or (3,) over ``img[window]`` where ``sd < 0``, in place."""
    alpha = _coverage(sd)[..., None]
    region = img[window]
    region *= 1.0 - alpha
    region += colour * alpha


def _jitter_colour(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    """A colour moved by up to ``amount`` (0-255 units) per channel, kept in range."""
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def _fur_texture(
    rng: np.random.Generator, u: np.ndarray, v: np.ndarray, scale: float
) -> np.ndarray:
    """Fur colour field (h, w, 3) float32 for one animal, in the animal's own frame.

    u, v: (h, w) coordinates in the animal's frame (pixels); scale: its size in pixels.
    One of: plain with soft shading, tabby stripes (oriented, warped by noise), or
    blotches (patches of a second colour), always with fine grain on top.
    """
    shape = u.shape
    base = _jitter_colour(rng, FUR_PALETTE[rng.integers(len(FUR_PALETTE))], 25)
    second = _jitter_colour(rng, FUR_PALETTE[rng.integers(len(FUR_PALETTE))], 25)
    pattern = rng.choice(["plain", "stripes", "blotches"], p=[0.3, 0.4, 0.3])
    if pattern == "stripes":
        # Stripes run across the body; noise warps them like real tabby markings.
        angle = _uniform(rng, -0.5, 0.5) + math.pi / 2
        period = scale * _uniform(rng, 0.18, 0.35)
        warp = 2.5 * _value_noise(rng, shape, scale * _uniform(rng, 0.4, 1.0))
        phase = (u * math.cos(angle) + v * math.sin(angle)) * (2 * math.pi / period) + warp
        mix = np.clip(np.sin(phase) * 2.0 - 0.3, 0.0, 1.0)
        if rng.random() < 0.6:  # tabby: stripes are a darker version of the base
            second = base * _uniform(rng, 0.35, 0.65)
    elif pattern == "blotches":
        noise = _value_noise(rng, shape, scale * _uniform(rng, 0.25, 0.6))
        mix = np.clip((noise - _uniform(rng, 0.45, 0.65)) * 8.0, 0.0, 1.0)
    else:
        mix = 0.35 * _value_noise(rng, shape, scale * 0.7)
        second = base * 0.8
    colour = base + (second - base) * mix[..., None]
    # Fine grain: noise a couple of pixels across, like individual tufts of fur.
    grain = _value_noise(rng, shape, 2.5) - 0.5
    colour *= 1.0 + 0.25 * grain[..., None]
    return colour


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background (size, size, 3) float32: gradient, maybe a floor, noise."""
    yy, xx = _grid((slice(0, size), slice(0, size)))
    yy, xx = yy / size, xx / size
    c0 = rng.uniform(20, 235, 3).astype(np.float32)
    c1 = np.clip(c0 + rng.uniform(-90, 90, 3), 0, 255).astype(np.float32)
    angle = _uniform(rng, 0, 2 * math.pi)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle), 0, 1)
    img = c0 + (c1 - c0) * t[..., None]
    if rng.random() < 0.6:
        # A floor: a differently coloured lower part, like a room or a lawn.
        horizon = _uniform(rng, 0.45, 0.8)
        floor = rng.uniform(20, 235, 3).astype(np.float32)
        alpha = np.clip((yy - horizon) * size + 0.5, 0, 1)[..., None]
        img = img + (floor - img) * alpha
    texture = _value_noise(rng, (size, size), size / _uniform(rng, 4, 16)) - 0.5
    img *= 1.0 + _uniform(rng, 0.1, 0.4) * texture[..., None]
    return img


def _clutter(rng: np.random.Generator, img: np.ndarray, count: int) -> None:
    """Paint ``count`` random objects on ``img`` (H, W, 3) in place: ellipses, boxes, blobs.

    About a quarter use the fur palette and fur textures, so colour and texture alone
    cannot separate a pet from the background.
    """
    size = img.shape[0]
    for _ in range(count):
        cx, cy = (float(c) for c in rng.uniform(-0.1, 1.1, 2) * size)
        a, b = (float(c) for c in rng.uniform(0.04, 0.25, 2) * size)
        angle = _uniform(rng, 0, math.pi)
        kind = int(rng.integers(3))
        window = _window(size, cx, cy, 1.45 * max(a, b))  # covers every kind's extent
        if window is None:
            continue
        yy, xx = _grid(window)
        cos, sin = math.cos(angle), math.sin(angle)
        u = (xx - cx) * cos + (yy - cy) * sin
        v = (yy - cy) * cos - (xx - cx) * sin
        if kind == 0:
            sd = _sd_ellipse(u, v, a, b)
        elif kind == 1:
            sd = np.maximum(np.abs(u) - a, np.abs(v) - b)  # a box (exact inside)
        else:
            # An irregular blob: a circle whose radius is modulated by noise.
            noise = _value_noise(rng, u.shape, a * _uniform(rng, 0.3, 0.6))
            sd = np.hypot(u, v) - a * (0.6 + 0.8 * noise)
        if rng.random() < 0.25:
            colour = _fur_texture(rng, u, v, max(a, b))
        else:
            flat = rng.uniform(0, 255, 3).astype(np.float32)
            shade = _value_noise(rng, u.shape, size / _uniform(rng, 2, 8)) - 0.5
            colour = flat * (1.0 + 0.3 * shade[..., None])
        _paint(img, window, sd, colour)


# --------------------------------------------------------------------------------------
# Animals
# --------------------------------------------------------------------------------------


def _animal_sdf(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, A: float) -> dict:
    """Signed distance of one animal in its own frame, and where its face is.

    u points from tail to head and v downwards, both in pixels, with the body centred
    at 0; ``A`` is the body's half-length in pixels and every part is sized from it.
    Returns {"sd": (H, W), "head": (x, y), "head_r": r, "dog": bool}.
    """
    B = A * _uniform(rng, 0.42, 0.6)  # body half-height
    dog = bool(rng.random() < 0.5)
    parts = [_sd_ellipse(u, v, A, B)]

    # Head at the front, above the body, joined by a neck.
    R = A * _uniform(rng, 0.36, 0.48)
    hx = A * _uniform(rng, 0.85, 1.05)
    hy = -B * _uniform(rng, 0.6, 1.2)
    parts.append(_sd_ellipse(u - hx, v - hy, R * _uniform(rng, 1.0, 1.15), R))
    parts.append(_sd_capsule(u, v, (0.55 * A, -0.2 * B), (hx, hy), 0.5 * R, 0.6 * R))

    if dog:
        # Snout in front of the head, and floppy ears hanging behind it.
        sl = R * _uniform(rng, 0.45, 0.7)
        parts.append(
            _sd_capsule(
                u, v, (hx, hy + 0.2 * R), (hx + R + sl * 0.6, hy + 0.3 * R), 0.45 * R, 0.3 * R
            )
        )
        for phi in (_uniform(rng, -2.2, -1.8), _uniform(rng, -1.6, -1.3)):
            top = (hx + R * math.cos(phi), hy + R * math.sin(phi))
            tip = (hx - 0.9 * R + _uniform(rng, -0.2, 0.2) * R, hy + R * _uniform(rng, 0.5, 1.0))
            parts.append(_sd_capsule(u, v, top, tip, 0.3 * R, 0.22 * R))
    else:
        # Pointed triangular ears standing on top of the head.
        ear = R * _uniform(rng, 0.7, 1.0)
        for phi in (_uniform(rng, -2.1, -1.8), _uniform(rng, -1.3, -1.0)):
            half = 0.35
            base0 = (hx + 0.9 * R * math.cos(phi - half), hy + 0.9 * R * math.sin(phi - half))
            base1 = (hx + 0.9 * R * math.cos(phi + half), hy + 0.9 * R * math.sin(phi + half))
            tip = (hx + (R + ear) * math.cos(phi), hy + (R + ear) * math.sin(phi))
            parts.append(_sd_triangle(u, v, np.array([base0, base1, tip], dtype=np.float32)))

    # Four legs from the underside, front pair and hind pair, slightly splayed.
    leg = A * _uniform(rng, 0.45, 0.85)
    r_leg = A * _uniform(rng, 0.11, 0.16)
    for x in (0.62, 0.38, -0.5, -0.72):
        x0 = x * A + _uniform(rng, -0.05, 0.05) * A
        x1 = x0 + _uniform(rng, -0.2, 0.2) * A
        parts.append(_sd_capsule(u, v, (x0, 0.2 * B), (x1, B + leg), r_leg, 0.8 * r_leg))

    # A tail: a chain of tapered capsules bending away from the rump.
    r_tail = A * _uniform(rng, 0.07, 0.12)
    length = A * _uniform(rng, 0.5, 1.1) / 3
    angle = _uniform(rng, np.pi * 0.9, np.pi * 1.3)  # pointing back, somewhat up
    bend = _uniform(rng, -0.5, 0.5)
    p = (-0.9 * A, -0.3 * B)
    for k in range(3):
        q = (p[0] + length * math.cos(angle), p[1] + length * math.sin(angle))
        parts.append(_sd_capsule(u, v, p, q, r_tail * (1 - 0.2 * k), r_tail * (0.8 - 0.2 * k)))
        p, angle = q, angle + bend

    return {"sd": np.minimum.reduce(parts), "head": (hx, hy), "head_r": R, "dog": dog}


# Every part of an animal lies within this many body half-lengths of its centre.
ANIMAL_RADIUS = 2.5


def _draw_animal(
    rng: np.random.Generator, img: np.ndarray, sd: np.ndarray, A: float, cx: float, cy: float
) -> None:
    """Paint one animal centred at (cx, cy) on ``img`` (H, W, 3), in place.

    A: body half-length in pixels. Its signed distance is merged (a union: the minimum)
    into ``sd`` (H, W), from which the caller derives the mask.
    """
    window = _window(img.shape[0], cx, cy, ANIMAL_RADIUS * A)
    if window is None:
        return
    yy, xx = _grid(window)
    # The animal's frame: rotated a little, facing left or right.
    theta = _uniform(rng, -0.35, 0.35)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    cos, sin = math.cos(theta), math.sin(theta)
    u = facing * ((xx - cx) * cos + (yy - cy) * sin)
    v = (yy - cy) * cos - (xx - cx) * sin
    animal = _animal_sdf(rng, u, v, A)

    # A soft shadow on the ground under the animal (background, not pet).
    shadow = _sd_ellipse(u, v - A * 0.9, A * 1.3, A * 0.25)
    img[window] *= (1.0 - 0.35 * np.clip(shadow / (-0.3 * A), 0, 1))[..., None]

    fur = _fur_texture(rng, u, v, A)
    # Lighting from above: the belly is darker, the back brighter, like a rounded body.
    fur *= (1.0 + 0.25 * np.clip(v / (-2 * A), -1, 1))[..., None]
    # Eye and nose: dark spots inside the head, so faces have features to find.
    hx, hy = animal["head"]
    R = animal["head_r"]
    eye = _sd_ellipse(u - (hx + 0.4 * R), v - (hy - 0.15 * R), 0.14 * R, 0.14 * R)
    nose_x = hx + (1.55 if animal["dog"] else 1.0) * R
    nose = _sd_ellipse(u - nose_x, v - (hy + 0.15 * R), 0.14 * R, 0.1 * R)
    dark = _coverage(np.minimum(eye, nose))[..., None]
    fur += (20.0 - fur) * dark

    _paint(img, window, animal["sd"], fur)
    np.minimum(sd[window], animal["sd"], out=sd[window])


def _make_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size, 3) uint8 and its trimap mask (size, size) uint8."""
    img = _background(rng, size)
    _clutter(rng, img, int(rng.integers(2, 8)))

    # Signed distance to the union of all animals; +inf far from any.
    sd = np.full((size, size), np.inf, dtype=np.float32)
    if rng.random() < 0.75:
        A = size * _uniform(rng, 0.2, 0.3)
        centres = [rng.uniform([0.3, 0.4], [0.7, 0.62]) * size]
    else:
        A = size * _uniform(rng, 0.14, 0.19)
        # Left and right halves, so the two animals overlap at most a little.
        centres = [
            rng.uniform([0.18, 0.3], [0.42, 0.7]) * size,
            rng.uniform([0.58, 0.3], [0.82, 0.7]) * size,
        ]
    for cx, cy in centres:
        _draw_animal(rng, img, sd, A * _uniform(rng, 0.85, 1.15), float(cx), float(cy))

    if rng.random() < 0.2:
        # Something in front of the animal (a table leg, a toy): it cuts the silhouette,
        # and the cut is outlined too, as in real trimaps.
        yy, xx = _grid((slice(0, size), slice(0, size)))
        x0, width = _uniform(rng, 0.2, 0.8) * size, _uniform(rng, 0.04, 0.1) * size
        occluder = np.maximum(np.abs(xx - x0) - width, _uniform(rng, 0.3, 0.7) * size - yy)
        _paint(img, (slice(0, size), slice(0, size)), occluder, rng.uniform(0, 255, 3))
        sd = np.maximum(sd, -occluder)

    # Sensor noise, then quantise.
    img += _uniform(rng, 2.0, 7.0) * rng.standard_normal(img.shape, dtype=np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # Labels from the same distance field the painting used: the outline band straddles
    # the boundary, half of it inside the animal and half outside.
    half = OUTLINE_WIDTH / 2
    mask = np.full((size, size), BACKGROUND, dtype=np.uint8)
    mask[sd <= -half] = PET
    mask[np.abs(sd) < half] = OUTLINE
    return image, mask


def _generate(n: int, image_size: int, seed: int, stream: int, prefix: str) -> SegmentationData:
    """``n`` samples of one seed stream; sample i is drawn from rng(seed, stream, i)."""
    if n < 0 or image_size < 16:
        raise ValueError(f"need n >= 0 and image_size >= 16, got n={n}, image_size={image_size}")
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, stream, i])
        images[i], masks[i] = _make_sample(rng, image_size)
    return SegmentationData(
        images=images,
        masks=masks,
        class_names=list(PETS_CLASS_NAMES),
        mask_values=list(PETS_MASK_VALUES),
        names=[f"{prefix}{i:05d}" for i in range(n)],
    )


def make_toy_pets(n: int, image_size: int = 128, seed: int = 0) -> SegmentationData:
    """``n`` synthetic pet images with Oxford-IIIT-style trimaps.

    Returns SegmentationData with images (n, S, S, 3) uint8 and masks (n, S, S) uint8 in
    {0 pet, 1 background, 2 outline}, S = ``image_size``. Deterministic: sample i depends
    only on (seed, i), so a smaller n gives a prefix of a larger one.
    """
    return _generate(n, image_size, seed, TRAIN_STREAM, "toy_pet_")


def synthetic_splits(
    n_train: int, n_val: int, image_size: int = 128, seed: int = 0
) -> tuple[SegmentationData, SegmentationData]:
    """Training and validation splits of the toy pets.

    The training split is ``make_toy_pets(n_train, image_size, seed)``. The validation
    split comes from a separate seed stream, so it is the same whatever ``n_train`` is
    and never shares a sample with any training split of the same seed.
    """
    train = make_toy_pets(n_train, image_size, seed)
    val = _generate(n_val, image_size, seed, VAL_STREAM, "toy_pet_val_")
    return train, val
