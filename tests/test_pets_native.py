"""Full-resolution evaluation on the real Oxford-IIIT Pets sample (skipped where absent)."""

import os
from pathlib import Path

import numpy as np
import pytest

from minunet.data.pets import load_pets_native
from minunet.data.sources import DataOptions, load_splits

# The real Pets sample (the official layout, a few hundred images) lives outside the
# repository: point MINUNET_PETS_SAMPLE at it (as benchmarks/fingerprint.sh does).
SAMPLE = Path(os.environ.get("MINUNET_PETS_SAMPLE", "")).expanduser()
pytestmark = pytest.mark.skipif(
    not os.environ.get("MINUNET_PETS_SAMPLE") or not (SAMPLE / "annotations" / "test.txt").exists(),
    reason="set MINUNET_PETS_SAMPLE to the real Pets sample to run this",
)


def test_native_test_split_keeps_each_image_size():
    data = load_pets_native(SAMPLE, "test", limit=6)
    assert len(data) == 6
    sizes = {img.shape[:2] for img in data.images}
    assert len(sizes) > 1  # not resized to one square
    for img, mask in zip(data.images, data.masks, strict=True):
        assert img.shape[:2] == mask.shape and img.shape[2] == 3
        assert set(np.unique(mask)) <= {0, 1, 2}


def test_sources_give_native_pets_for_test_when_no_size():
    data, none = load_splits(
        DataOptions(data="pets", data_dir=str(SAMPLE), image_size=None, limit=3), split="test"
    )
    assert none is None and len(data) == 3 and isinstance(data.images, list)
