"""The one class-weights function: median-frequency balancing, checked by counting pixels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minunet.data.class_weights import class_weights, median_frequency_weights
from minunet.data.dataset import NativeSizeData, SegmentationData
from minunet.data.weightmap import border_weight_map
from minunet.errors import DataError


def brute_force(masks: list[np.ndarray], k: int) -> list[float]:
    """Count every pixel in Python, then median(freq) / freq by the definition."""
    counts = [0] * k
    for mask in masks:
        for value in mask.ravel().tolist():
            if value != 255:
                counts[value] += 1
    total = sum(counts)
    freq = sorted(c / total for c in counts if c)
    mid = len(freq) // 2
    median = freq[mid] if len(freq) % 2 else (freq[mid - 1] + freq[mid]) / 2
    return [median / (c / total) if c else 0.0 for c in counts]


@given(
    k=st.integers(1, 6),
    sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_median_frequency_matches_a_pixel_count(k, sizes, seed):
    rng = np.random.default_rng(seed)
    # Values 0..k (k stands for 255, ignored); some classes may never occur.
    masks = [rng.integers(0, k + 1, size).astype(np.uint8) for size in sizes]
    masks = [np.where(m == k, 255, m).astype(np.uint8) for m in masks]
    if all((m == 255).all() for m in masks):
        masks[0].flat[0] = 0
    got = median_frequency_weights(masks, k)
    assert got.shape == (k,) and got.dtype == np.float64
    # Each weight is a few float64 operations on exact integer counts, each correctly
    # rounded (relative error 2**-53), so the two computations agree to a few ulps.
    np.testing.assert_allclose(got, brute_force(masks, k), rtol=8 * 2.0**-53, atol=0)


def test_one_function_for_auto_weights_and_the_border_map():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, :1] = 1  # 4 of 32 pixels are class 1, class 2 is absent
    masks[1, 0, 0] = 255  # ignored, not counted
    data = SegmentationData(np.zeros((2, 4, 4, 1), np.uint8), masks, ["a", "b", "c"])
    auto = class_weights(data)
    assert auto.dtype == np.float32 and auto[2] == 0
    np.testing.assert_array_equal(auto, median_frequency_weights(masks, 3).astype(np.float32))
    native = NativeSizeData(list(data.images), list(masks), ["a", "b", "c"])
    np.testing.assert_array_equal(class_weights(native), auto)
    # The border map's default w_c is the same balancing over its one mask.
    default = border_weight_map(masks[0], [1], w0=0.0)
    given_weights = border_weight_map(
        masks[0], [1], w0=0.0, class_weights=median_frequency_weights([masks[0]], 2)
    )
    np.testing.assert_array_equal(default, given_weights)
    np.testing.assert_allclose(class_weights(data, "1,2.5,0"), [1, 2.5, 0])
    np.testing.assert_array_equal(class_weights(data, "none"), [1, 1, 1])
    with pytest.raises(DataError, match="3 comma-separated"):
        class_weights(data, "1,2")
    with pytest.raises(DataError, match="negative"):
        class_weights(data, "1,-2,0")


def test_sqrt_mode_is_the_square_root_of_median_frequency_balancing():
    """--class-weights sqrt (the default): sqrt(median(freq) / freq[k]) from a pixel count,
    absent classes 0; balanced classes keep weight 1."""
    from minunet.data.class_weights import class_weights
    from minunet.data.dataset import SegmentationData

    masks = np.zeros((2, 4, 5), dtype=np.uint8)
    masks[0, :2] = 1  # 10 of 40 pixels are class 1, none class 3, the rest class 0
    masks[1, 0, 0] = 2  # one pixel of class 2
    images = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    data = SegmentationData(images, masks, ["a", "b", "c", "d"])
    counts = np.array([29, 10, 1, 0])
    freq = counts[:3] / 40
    want = np.append(np.sqrt(np.median(freq) / freq), 0.0)
    np.testing.assert_allclose(class_weights(data, "sqrt"), want, rtol=1e-6)  # float32 out
    np.testing.assert_allclose(
        class_weights(data, "sqrt") ** 2, class_weights(data, "auto"), rtol=1e-6
    )
    balanced = SegmentationData(images, np.arange(40).reshape(2, 4, 5) % 2, ["a", "b"])
    np.testing.assert_array_equal(class_weights(balanced, "sqrt"), [1.0, 1.0])
