"""minunet.infer.rescale: bilinear resizing of logit maps, against PyTorch's interpolate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minunet.infer.rescale import resize_bilinear

torch = pytest.importorskip("torch", reason="the comparison needs torch (the test reference)")


@given(
    k=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    out_h=st.integers(1, 30),
    out_w=st.integers(1, 30),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_torch_bilinear_with_half_pixel_centres(k, h, w, out_h, out_w, seed) -> None:
    x = np.random.default_rng(seed).standard_normal((k, h, w))
    ours = resize_bilinear(x, out_h, out_w)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=(out_h, out_w), mode="bilinear", align_corners=False
    )[0].numpy()
    # Each output is a convex combination of 4 inputs: float64 rounding of a few operations.
    np.testing.assert_allclose(
        ours, ref, rtol=0, atol=8 * np.finfo(np.float64).eps * np.abs(x).max()
    )


def test_same_size_is_the_identity_and_constants_stay_constant() -> None:
    x = np.arange(12.0).reshape(1, 3, 4)
    assert resize_bilinear(x, 3, 4) is x
    np.testing.assert_array_equal(resize_bilinear(np.full((2, 5, 7), 3.5), 11, 2), 3.5)
