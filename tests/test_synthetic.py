"""The synthetic toy pets: deterministic, Pets-shaped, with a 2-3 px outline band."""

import numpy as np
import pytest

from minunet.data.dataset import PETS_CLASS_NAMES
from minunet.data.synthetic import (
    BACKGROUND,
    OUTLINE,
    PET,
    make_toy_pets,
    synthetic_splits,
)

SIZE = 64


@pytest.fixture(scope="module")
def pets():
    return make_toy_pets(12, SIZE, seed=3)


def test_shapes_dtypes_and_metadata(pets):
    assert pets.images.shape == (12, SIZE, SIZE, 3) and pets.images.dtype == np.uint8
    assert pets.masks.shape == (12, SIZE, SIZE) and pets.masks.dtype == np.uint8
    assert pets.class_names == list(PETS_CLASS_NAMES)
    assert pets.mask_values == [1, 2, 3]
    assert pets.num_classes == 3 and pets.in_channels == 3
    assert pets.weights is None and pets.ignore_index is None
    assert len(set(pets.names)) == 12


def test_deterministic_and_prefix(pets):
    again = make_toy_pets(12, SIZE, seed=3)
    np.testing.assert_array_equal(again.images, pets.images)
    np.testing.assert_array_equal(again.masks, pets.masks)
    prefix = make_toy_pets(5, SIZE, seed=3)
    np.testing.assert_array_equal(prefix.images, pets.images[:5])
    np.testing.assert_array_equal(prefix.masks, pets.masks[:5])
    assert prefix.names == pets.names[:5]


def test_seed_changes_the_data(pets):
    other = make_toy_pets(3, SIZE, seed=4)
    assert not np.array_equal(other.images, pets.images[:3])


def test_validation_split_is_fixed_and_distinct():
    train_a, val_a = synthetic_splits(4, 3, SIZE, seed=1)
    train_b, val_b = synthetic_splits(9, 3, SIZE, seed=1)
    np.testing.assert_array_equal(val_a.images, val_b.images)
    np.testing.assert_array_equal(val_a.masks, val_b.masks)
    np.testing.assert_array_equal(train_a.images, train_b.images[:4])
    np.testing.assert_array_equal(train_b.images, make_toy_pets(9, SIZE, seed=1).images)
    # No validation image is a training image.
    for v in val_b.images:
        assert not any(np.array_equal(v, t) for t in train_b.images)
    assert set(val_b.names).isdisjoint(train_b.names)


def test_every_class_present_with_sane_balance(pets):
    for mask in pets.masks:
        assert set(np.unique(mask)) == {PET, BACKGROUND, OUTLINE}
    fractions = np.bincount(pets.masks.ravel(), minlength=3) / pets.masks.size
    assert 0.05 < fractions[PET] < 0.5
    assert fractions[BACKGROUND] > 0.4
    assert 0.02 < fractions[OUTLINE] < 0.2


def _four_neighbours(mask: np.ndarray, value: int) -> np.ndarray:
    """Pixels with a 4-neighbour equal to ``value``."""
    hit = mask == value
    out = np.zeros_like(hit)
    out[1:] |= hit[:-1]
    out[:-1] |= hit[1:]
    out[:, 1:] |= hit[:, :-1]
    out[:, :-1] |= hit[:, 1:]
    return out


def test_outline_separates_pet_from_background(pets):
    # As in real trimaps, the band lies between the two: pet never touches background.
    for mask in pets.masks:
        assert not np.any((mask == PET) & _four_neighbours(mask, BACKGROUND))


def test_outline_band_is_two_to_three_pixels_wide():
    """Measure the band across straight vertical stretches of the boundary.

    Along each row, a run of outline pixels with pet on one side and background on the
    other crosses the band; where the boundary is near vertical (the same run on the rows
    above and below), the run length is the band width.
    """
    data = make_toy_pets(6, 128, seed=0)
    widths = []
    for mask in data.masks:
        for r in range(1, mask.shape[0] - 1):
            row = mask[r]
            c = 0
            while c < len(row):
                if row[c] != OUTLINE:
                    c += 1
                    continue
                end = c
                while end < len(row) and row[end] == OUTLINE:
                    end += 1
                if 0 < c and end < len(row) and {row[c - 1], row[end]} == {PET, BACKGROUND}:
                    above, below = mask[r - 1, c - 1 : end + 1], mask[r + 1, c - 1 : end + 1]
                    if np.array_equal(above, row[c - 1 : end + 1]) and np.array_equal(
                        below, row[c - 1 : end + 1]
                    ):
                        widths.append(end - c)
                c = end
    widths = np.array(widths)
    assert len(widths) > 20
    assert set(np.unique(widths)) <= {2, 3}
    assert {2, 3} <= set(np.unique(widths))  # both band widths occur


def test_images_are_not_flat(pets):
    # Textured animals and backgrounds: plenty of distinct colours, full-ish range.
    for image in pets.images:
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 500
        assert image.max() - image.min() > 100
