"""im2col / col2im: against a loop over output pixels, and col2im as the exact adjoint."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minunet.core.im2col import col2im, conv_output_size, im2col


@st.composite
def conv_geometry(draw):
    """Draw an input shape and a kernel/stride/padding/dilation with a non-empty output."""
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, 2))
    d = draw(st.integers(1, 2))
    span = d * (k - 1) + 1
    h = draw(st.integers(max(1, span - 2 * p), span - 2 * p + 6))
    w = draw(st.integers(max(1, span - 2 * p), span - 2 * p + 6))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return (n, c, h, w), k, s, p, d


def im2col_loops(x, k, s, p, d):
    """The definition, one output pixel at a time."""
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, k, s, p, d), conv_output_size(w, k, s, p, d)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.zeros((n, c, k, k, ho, wo))
    for oh in range(ho):
        for ow in range(wo):
            for i in range(k):
                for j in range(k):
                    cols[:, :, i, j, oh, ow] = xp[:, :, oh * s + i * d, ow * s + j * d]
    return cols.reshape(n, c * k * k, ho * wo)


@given(conv_geometry(), st.integers(0, 2**31))
def test_im2col_matches_loops(geom, seed):
    shape, k, s, p, d = geom
    x = np.random.default_rng(seed).standard_normal(shape)
    np.testing.assert_array_equal(im2col(x, k, k, s, p, d), im2col_loops(x, k, s, p, d))


@given(conv_geometry(), st.integers(0, 2**31))
def test_col2im_is_the_adjoint_of_im2col(geom, seed):
    """<col2im(y), x> == <y, im2col(x)> for all x, y: col2im is im2col's transpose."""
    shape, k, s, p, d = geom
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols = im2col(x, k, k, s, p, d)
    y = rng.standard_normal(cols.shape)
    lhs = np.vdot(col2im(y, shape, k, k, s, p, d), x)
    rhs = np.vdot(y, cols)
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(rhs))


def test_output_size_formula():
    assert conv_output_size(572, 3) == 570
    assert conv_output_size(128, 3, 1, 1) == 128
    assert conv_output_size(7, 3, 2, 1) == 4
    assert conv_output_size(9, 3, 1, 0, 2) == 5
