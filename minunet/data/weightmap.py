"""The U-Net paper's border weight map, in pure NumPy.

Ronneberger et al. (2015) weight every pixel's loss by

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

where ``w_c`` balances the class frequencies, and ``d1`` / ``d2`` are the distances to
the nearest and the second-nearest object (a connected component of the foreground).
The second term is large only in the thin gaps between two touching objects, which is
exactly where a segmentation network is tempted to merge them.

Conventions (the paper leaves them open):

* The border term is added on background pixels only (pixels of no foreground class),
  as in the paper's Fig. 3d: inside an object, d1 = 0 would weight the object's interior
  near every neighbour, which is not the gap the term is meant to emphasise.
* A pixel with no second object (an image with zero or one object) has no border
  term: there is no gap between two objects to separate, so the whole ``w0`` term
  is omitted (equivalently, d2 = infinity).
* The term is computed exactly where it is at least ``1e-6`` and set to 0 beyond: each
  object's distance transform is only evaluated inside its bounding box grown by the
  distance at which the term falls below that (about 28 px for w0 = 10, sigma = 5).
  That keeps the cost proportional to the objects' size rather than to
  (number of objects) x (image size).
* ``w_c`` is median-frequency balancing over this mask's labelled pixels
  (``median(freq) / freq[class]``), or the data set's weights when given; ignored pixels
  (label 255) get weight 0.

The connected components (run-length labelling with a union-find over runs) and the
exact Euclidean distance transform (Felzenszwalb & Huttenlocher's lower envelope of
parabolas, run on all rows at once) are written here so minunet needs no SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from minunet.data.cache import fingerprint, load_cache, save_cache
from minunet.data.class_weights import median_frequency_weights
from minunet.data.dataset import IGNORE_LABEL

# The border term is dropped where it is below this (see the module docstring).
BORDER_TERM_FLOOR = 1e-6


def label_components(foreground: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """Connected components of a boolean image.

    foreground: (H, W) bool. connectivity: 4 (edge neighbours) or 8 (edges and corners).
    Returns ``(labels, count)``: labels (H, W) int32 with 0 for background and 1..count
    for the components, numbered in raster order of their first pixel.

    Works on horizontal runs: a run is a maximal stretch of foreground in one row, found
    for all rows at once with NumPy; runs in adjacent rows that touch are joined with a
    union-find. There are far fewer runs than pixels, so the Python part is small.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    fg = np.asarray(foreground, dtype=bool)
    h, w = fg.shape
    # A run starts where the pixel is on and its left neighbour is off, and ends (exclusive)
    # where the pixel is on and its right neighbour is off.
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = fg
    edges = np.diff(padded, axis=1)
    run_row, run_start = np.nonzero(edges == 1)
    _, run_end = np.nonzero(edges == -1)
    n_runs = len(run_row)
    labels = np.zeros((h, w), dtype=np.int32)
    if n_runs == 0:
        return labels, 0

    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees shallow
            i = parent[i]
        return i

    # Runs are sorted by row, then start: the runs of row r are run_index[r]:run_index[r+1].
    row_first = np.searchsorted(run_row, np.arange(h + 1))
    reach = 1 if connectivity == 8 else 0  # 8-connectivity also joins diagonal neighbours
    for r in range(h - 1):
        a0, a1 = row_first[r], row_first[r + 1]
        b0, b1 = row_first[r + 1], row_first[r + 2]
        if a0 == a1 or b0 == b1:
            continue
        starts_b, ends_b = run_start[b0:b1], run_end[b0:b1]
        # Run a = [s, e) touches run b = [s', e') when s' < e + reach and e' > s - reach.
        lo = np.searchsorted(ends_b, run_start[a0:a1] - reach, side="right")
        hi = np.searchsorted(starts_b, run_end[a0:a1] + reach, side="left")
        for a, first, last in zip(range(a0, a1), lo.tolist(), hi.tolist(), strict=True):
            for b in range(b0 + first, b0 + last):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)

    roots = np.array([find(i) for i in range(n_runs)], dtype=np.int64)
    # Number the components 1..count in order of their first run (raster order).
    unique_roots, run_label = np.unique(roots, return_inverse=True)
    run_label = run_label.astype(np.int32) + 1
    lengths = run_end - run_start
    pixel_rows = np.repeat(run_row, lengths)
    pixel_cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    pixel_cols += np.repeat(run_start, lengths)
    labels[pixel_rows, pixel_cols] = np.repeat(run_label, lengths)
    return labels, len(unique_roots)


def _edt_rows(f: np.ndarray) -> np.ndarray:
    """Exact 1-D squared distance transform of every row of ``f``.

    f: (R, n) float64, 0 at the sites and +inf elsewhere (or any sampled function).
    Returns (R, n): ``d[r, q] = min_p (q - p)^2 + f[r, p]``.

    Felzenszwalb & Huttenlocher: the result is the lower envelope of the parabolas
    ``(q - p)^2 + f[p]``. One sweep builds the envelope (``v``: parabola vertices,
    ``z``: where each takes over), one sweep reads it. The loops run over columns; each
    step acts on all rows at once, with masks for rows whose envelope must change.
    """
    f = np.asarray(f, dtype=np.float64)
    rows, n = f.shape
    out = np.full((rows, n), np.inf)
    v = np.zeros((rows, n), dtype=np.int64)
    z = np.full((rows, n + 1), np.inf)
    k = np.full(rows, -1, dtype=np.int64)  # index of the last parabola; -1 = none yet
    all_rows = np.arange(rows)
    for q in range(n):
        fq = f[:, q]
        active = np.isfinite(fq)  # an infinite sample is never part of the envelope
        s = np.full(rows, -np.inf)
        # Pop parabolas that the new one hides, on the rows that still need it.
        while True:
            idx = all_rows[active & (k >= 0)]
            if len(idx) == 0:
                break
            p = v[idx, k[idx]]
            s_idx = ((fq[idx] + q * q) - (f[idx, p] + p * p)) / (2.0 * (q - p))
            pop = s_idx <= z[idx, k[idx]]
            s[idx] = s_idx
            if not pop.any():
                break
            k[idx[pop]] -= 1
            active[idx[~pop]] = False  # this row's envelope is ready for q
        new = np.isfinite(fq)
        idx = all_rows[new]
        k[idx] += 1
        v[idx, k[idx]] = q
        z[idx, k[idx]] = np.where(k[idx] == 0, -np.inf, s[idx])
        z[idx, k[idx] + 1] = np.inf
    # Read the envelope: walk a pointer j along each row's parabolas as q grows.
    has_site = k >= 0
    j = np.zeros(rows, dtype=np.int64)
    for q in range(n):
        while True:
            move = has_site & (z[all_rows, j + 1] < q)
            if not move.any():
                break
            j[move] += 1
        p = v[all_rows, j]
        out[:, q] = np.where(has_site, (q - p) ** 2 + f[all_rows, p], np.inf)
    return out


def distance_to(sites: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance from every pixel to the nearest ``True`` pixel.

    sites: (H, W) bool. Returns (H, W) float64; +inf everywhere when there is no site.
    Separable: a 1-D transform along the columns, then along the rows of the result.
    """
    f = np.where(np.asarray(sites, dtype=bool), 0.0, np.inf)
    squared = _edt_rows(_edt_rows(f.T).T)
    return np.sqrt(squared)


def border_weight_map(
    mask: np.ndarray,
    foreground_classes: Iterable[int],
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    class_weights: np.ndarray | None = None,
    connectivity: int = 4,
) -> np.ndarray:
    """The paper's per-pixel loss weights for one label map.

    mask: (H, W) integer class labels (255 = ignored). foreground_classes: the classes
    whose connected components are the objects (e.g. ``[1]`` for cells).
    class_weights: (K,) weights for ``w_c``, e.g. ``median_frequency_weights`` of the
    whole data set; by default median-frequency balancing over this mask.
    Returns (H, W) float32 ``w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``, the second term
    on background pixels only; 0 on ignored pixels. See the module docstring.
    """
    mask = np.asarray(mask)
    h, w = mask.shape
    labelled = mask != IGNORE_LABEL
    if class_weights is None:
        num = int(mask[labelled].max()) + 1 if labelled.any() else 1
        class_weights = median_frequency_weights([mask], num)
    class_weights = np.asarray(class_weights, dtype=np.float64)
    weights = np.zeros((h, w), dtype=np.float64)
    weights[labelled] = class_weights[mask[labelled]]

    foreground = np.isin(mask, list(foreground_classes))
    objects, count = label_components(foreground, connectivity)
    if count < 2 or w0 <= 0:
        return weights.astype(np.float32)

    # Beyond this distance sum the term is below BORDER_TERM_FLOOR, so each object's
    # distances are only needed up to it (d1 + d2 <= reach implies both are <= reach).
    reach = sigma * math.sqrt(2.0 * math.log(max(w0, BORDER_TERM_FLOOR) / BORDER_TERM_FLOOR))
    margin = int(math.ceil(reach))
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    # The pixels of every object at once: sort the object pixels by label and split.
    flat = np.flatnonzero(objects)
    flat = flat[np.argsort(objects.ravel()[flat], kind="stable")]
    per_object = np.split(flat, np.cumsum(np.bincount(objects.ravel()[flat])[1:])[:-1])
    for i, pixels in enumerate(per_object, start=1):
        rr, cc = np.divmod(pixels, w)
        r0, r1 = max(rr.min() - margin, 0), min(rr.max() + margin + 1, h)
        c0, c1 = max(cc.min() - margin, 0), min(cc.max() + margin + 1, w)
        d = distance_to(objects[r0:r1, c0:c1] == i)
        # Keep the two smallest distances seen so far, pixel by pixel.
        a, b = d1[r0:r1, c0:c1], d2[r0:r1, c0:c1]
        d2[r0:r1, c0:c1] = np.minimum(b, np.maximum(a, d))
        d1[r0:r1, c0:c1] = np.minimum(a, d)

    total = d1 + d2
    near = labelled & ~foreground & (total <= reach)
    weights[near] += w0 * np.exp(-(total[near] ** 2) / (2.0 * sigma**2))
    return weights.astype(np.float32)


def border_weights_cached(
    masks: list[np.ndarray],
    num_classes: int,
    foreground_classes: list[int] | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
    *,
    cache_stem: Path | None = None,
) -> list[np.ndarray]:
    """The border weight map of every mask of a data set, cached beside the data.

    masks: list of (H_i, W_i) uint8 labels. foreground_classes: the object classes
    (default: every class but 0). ``w_c`` is median-frequency balancing over all
    ``masks`` (float32, as the loss's class weights are). cache_stem: the data's cache
    path without ``.npz`` (the maps go to ``<stem>-w<options>.npz``), or None for no
    cache. Returns a list of (H_i, W_i) float32 maps.
    """
    foreground = list(range(1, num_classes)) if foreground_classes is None else foreground_classes
    foreground = [int(c) for c in foreground]
    names = [f"weight_{i}" for i in range(len(masks))]
    path = key = None
    if cache_stem is not None:
        key = fingerprint([foreground, float(w0), float(sigma)])
        path = cache_stem.parent / f"{cache_stem.name}-w{key}.npz"
        cached = load_cache(path, key, names)
        if cached is not None and all(
            cached[n].shape == m.shape for n, m in zip(names, masks, strict=True)
        ):
            return [cached[n] for n in names]
    balance = median_frequency_weights(masks, num_classes).astype(np.float32)
    weights = [border_weight_map(m, foreground, w0, sigma, class_weights=balance) for m in masks]
    if path is not None:
        save_cache(path, dict(zip(names, weights, strict=True)), key)
    return weights
