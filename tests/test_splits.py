"""The one hold-out rule (minunet.data.splits.holdout), and that every source uses it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from minunet.data.folder import load_folder
from minunet.data.splits import holdout
from minunet.errors import DataError


@given(
    count=st.integers(2, 300),
    fraction=st.floats(0.0, 1.0, exclude_max=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_holdout_sizes_cover_and_seed(count, fraction, seed):
    train, val = holdout(count, fraction, seed)
    expected = 0 if fraction == 0 else min(max(1, round(count * fraction)), count - 1)
    assert len(val) == expected and len(train) == count - expected
    # Disjoint, together every sample, each part in the pool's order.
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(count))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert train.dtype == val.dtype == np.int64
    # Which samples: the first of the seeded permutation, the same on every call.
    if expected:
        first = np.random.default_rng(seed).permutation(count)[:expected]
        assert np.array_equal(val, np.sort(first))
    again_train, again_val = holdout(count, fraction, seed)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)


def test_tiny_sets_and_bad_fractions():
    # At least one sample on each side: 0.9 of 3 is 2.7 -> 3, clamped to 2.
    assert [len(p) for p in holdout(3, 0.9, 0)] == [1, 2]
    assert [len(p) for p in holdout(2, 0.01, 0)] == [1, 1]  # 0.02 -> 0, raised to 1
    assert [len(p) for p in holdout(1, 0.0, 0)] == [1, 0]  # no validation asked for
    assert [len(p) for p in holdout(0, 0.0, 0)] == [0, 0]
    for count in (0, 1):
        with pytest.raises(DataError, match="cannot hold out") as info:
            holdout(count, 0.1, 0)
        assert "\n" not in str(info.value) and "--val-fraction 0" in str(info.value)
    for fraction in (-0.1, 1.0, 1.5):
        with pytest.raises(DataError, match="--val-fraction"):
            holdout(10, fraction, 0)


def test_folder_uses_the_rule(tmp_path):
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.eye(4, dtype=np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    train, val = load_folder(tmp_path, 4, val_fraction=0.9, seed=5, log=None)
    expected_train, expected_val = holdout(3, 0.9, 5)
    assert val.names == [str(i) for i in expected_val] and len(val) == 2
    assert train.names == [str(i) for i in expected_train]
