"""The border weight map against brute force: distances, components and the formula."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.data.weightmap import border_weight_map, distance_to, label_components

RNG = np.random.default_rng(0)


def flood_fill(fg: np.ndarray, connectivity: int) -> list[np.ndarray]:
    """The components of ``fg`` as (M, 2) pixel lists, by a plain breadth-first search."""
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if connectivity == 8:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    seen = np.zeros_like(fg, dtype=bool)
    components = []
    for start in zip(*np.nonzero(fg), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = [start], []
        while queue:
            y, x = queue.pop()
            pixels.append((y, x))
            for dy, dx in steps:
                p = (y + dy, x + dx)
                inside = 0 <= p[0] < fg.shape[0] and 0 <= p[1] < fg.shape[1]
                if inside and fg[p] and not seen[p]:
                    seen[p] = True
                    queue.append(p)
        components.append(np.array(pixels))
    return components


def brute_distance(shape, pixels: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    d2 = (ys[..., None] - pixels[:, 0]) ** 2 + (xs[..., None] - pixels[:, 1]) ** 2
    return np.sqrt(d2.min(axis=-1))


@pytest.mark.parametrize("connectivity", [4, 8])
def test_components_match_flood_fill(connectivity):
    for _ in range(20):
        fg = RNG.random((17, 23)) < RNG.uniform(0.2, 0.7)
        labels, count = label_components(fg, connectivity)
        components = flood_fill(fg, connectivity)
        assert count == len(components)
        assert ((labels > 0) == fg).all()
        for pixels in components:  # each true component is exactly one label
            assert len(np.unique(labels[pixels[:, 0], pixels[:, 1]])) == 1


def test_distance_transform_is_exact():
    for _ in range(30):
        sites = RNG.random(tuple(RNG.integers(1, 20, 2))) < RNG.uniform(0.02, 0.5)
        d = distance_to(sites)
        if not sites.any():
            assert np.isinf(d).all()
            continue
        np.testing.assert_allclose(d, brute_distance(sites.shape, np.argwhere(sites)), atol=1e-9)


def instance_image() -> np.ndarray:
    """Four cells, some 1-3 px apart, one touching the border, on a 40 x 36 background."""
    mask = np.zeros((40, 36), np.uint8)
    mask[3:12, 2:14] = 1
    mask[3:12, 16:30] = 1  # 4 px gap to the first
    mask[14:25, 5:20] = 1  # 3 px below both
    yy, xx = np.mgrid[:40, :36]
    mask[(yy - 32) ** 2 + (xx - 28) ** 2 < 36] = 1  # a disc
    mask[38:, :4] = 255  # an ignored corner
    return mask


def test_weight_map_equals_brute_force():
    mask = instance_image()
    w0, sigma = 10.0, 5.0
    weights = border_weight_map(mask, [1], w0, sigma)
    assert weights.shape == mask.shape and weights.dtype == np.float32

    labelled = mask != 255
    counts = np.bincount(mask[labelled], minlength=2)[:2]
    freq = counts / counts.sum()
    w_c = np.median(freq) / freq
    distances = np.sort([brute_distance(mask.shape, p) for p in flood_fill(mask == 1, 4)], axis=0)
    d1, d2 = distances[0], distances[1]
    expected = np.where(labelled, w_c[np.where(labelled, mask, 0)], 0.0)
    background = mask == 0
    expected[background] += w0 * np.exp(-((d1 + d2)[background] ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(weights, expected, atol=1e-5, rtol=1e-5)
    assert weights[7, 15] > w0 * 0.8  # the 4 px gap between the two top cells


def test_conventions_single_object_ignore_and_given_class_weights():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:10] = 1
    mask[0, 0] = 255
    one = border_weight_map(mask, [1], class_weights=np.array([1.0, 3.0]))
    expected = np.where(mask == 1, 3.0, 1.0)
    expected[0, 0] = 0.0
    np.testing.assert_array_equal(one, expected)  # one object: no border term at all
    assert border_weight_map(np.zeros((5, 5), np.uint8), [1]).tolist() == np.ones((5, 5)).tolist()
