"""Winograd F(2x2, 3x3) and F(4x4, 3x3) (minunet.accel.winograd) against the im2col reference.

Tolerances come from the transforms: every output of F(m, 3) is a sum of products whose
terms the transforms can grow by at most ``growth(m)`` = (|A^T| |G| |B^T|)^2 (infinity
norms, squared for the two nested dimensions), so an output's rounding error is at most
about growth * eps * (number of terms) * max|x| * max|w|, the bound checked here with the
dtype's eps. The reference (im2col + matmul) errs far less, so the bound is for Winograd's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from minunet.accel import winograd
from minunet.core.im2col import col2im, im2col

TILES = (2, 4)


def growth(m: int) -> float:
    """How much F(m, 3)'s transforms can grow a sum: (|A^T| |G| |B^T|)^2, infinity norms."""
    at, g, bt = winograd.toom_cook(m)
    norm = lambda a: np.abs(a).sum(axis=1).max()  # noqa: E731
    return float((norm(at) * norm(g) * norm(bt)) ** 2)


def bound(m: int, dtype: type, terms: int, scale: float) -> float:
    """The absolute error allowed for a sum of ``terms`` products of size <= ``scale``."""
    return growth(m) * np.finfo(dtype).eps * terms * scale


def reference(x: np.ndarray, w: np.ndarray, b: np.ndarray, dout: np.ndarray, p: int):
    """Forward and gradients by im2col in float64: (out, dx, dW, db)."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    cols = im2col(x, 3, 3, 1, p, 1)  # (N, C*9, P)
    out = (w.reshape(k, -1) @ cols + b[:, None]).reshape(n, k, h + 2 * p - 2, wd + 2 * p - 2)
    d = dout.reshape(n, k, -1)
    dw = (d @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)
    dx = col2im(w.reshape(k, -1).T @ d, x.shape, 3, 3, 1, p, 1)
    return out, dx, dw, d.sum(axis=(0, 2))


def test_the_matrices_compute_a_correlation_in_one_dimension() -> None:
    """A^T [(G g) * (B^T d)] == sum_k g_k d_{i+k}, for random d and g, both tile sizes."""
    rng = np.random.default_rng(0)
    for m in TILES:
        at, g, bt = winograd.toom_cook(m)
        assert at.shape == (m, m + 2) and g.shape == (m + 2, 3) and bt.shape == (m + 2, m + 2)
        assert np.array_equal(bt, np.round(bt)), "B^T's entries are integers"
        d, taps = rng.standard_normal(m + 2), rng.standard_normal(3)
        direct = np.array([taps @ d[i : i + 3] for i in range(m)])
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), direct, rtol=0, atol=1e-13)


def test_f2_uses_16_and_f4_36_multiplications_per_tile() -> None:
    for m, products in ((2, 16), (4, 36)):
        assert winograd.filter_tiles(np.ones((1, 1, 3, 3)), m).shape[:2] == (m + 2, m + 2)
        assert (m + 2) ** 2 == products


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 9),
    k=st.integers(1, 9),
    h=st.integers(1, 13),
    w=st.integers(1, 13),
    p=st.integers(0, 2),
    m=st.sampled_from(TILES),
    tiles=st.sampled_from((1, 2, 3, 5, 1000)),
    threads=st.sampled_from((1, 3)),
    seed=st.integers(0, 2**31 - 1),
)
def test_forward_and_gradients_match_im2col_in_float64(
    n, c, k, h, w, p, m, tiles, threads, seed
) -> None:
    """Every block shape: bands of 1, 2, ... tile rows and several whole images per block
    (``tile_blocks`` gives each block ``tiles`` tiles or K, whichever is more; 1000: the
    whole batch), on 1 and 3 threads."""
    assume(h + 2 * p >= 3 and w + 2 * p >= 3)  # else there is no output
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winograd, "BLOCK_BYTES", 0)
        mp.setattr(winograd, "MIN_TILES", tiles)
        mp.setenv("MINUNET_THREADS", str(threads))
        _check_against_im2col(n, c, k, h, w, p, m, seed)


@pytest.mark.parametrize("m", TILES)
@pytest.mark.parametrize("side", [8, 7, 9])
def test_outputs_of_whole_tiles_and_of_tiles_past_the_image(m: int, side: int) -> None:
    """The forward writes whole tiles straight into the output where its rows and columns
    are multiples of m (8 px, padding 1) and goes through a buffer where the last tiles
    reach past the image (7 and 9 px): both, with blocks of one tile row and of whole
    images."""
    for tiles in (1, 1000):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(winograd, "BLOCK_BYTES", 0)
            mp.setattr(winograd, "MIN_TILES", tiles)
            _check_against_im2col(2, 3, 4, side, side, 1, m, seed=side)


def _check_against_im2col(n, c, k, h, w, p, m, seed) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, 3, 3))
    b = rng.standard_normal(k)
    dout = rng.standard_normal((n, k, h + 2 * p - 2, w + 2 * p - 2))
    out_ref, dx_ref, dw_ref, db_ref = reference(x, wt, b, dout, p)
    out = winograd.conv2d_forward(x, wt, b, p, m)
    dx, dw, db = winograd.conv2d_backward(x, wt, dout, p, True, True, m)
    scale_x = np.abs(x).max() * np.abs(wt).max()
    scale_d = np.abs(dout).max() * np.abs(wt).max()
    scale_w = np.abs(dout).max() * np.abs(x).max()
    np.testing.assert_allclose(
        out, out_ref, rtol=0, atol=bound(m, np.float64, 9 * c, scale_x) + 1e-12
    )
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=bound(m, np.float64, 9 * k, scale_d))
    terms = n * out_ref.shape[2] * out_ref.shape[3]  # every output pixel adds to each tap
    np.testing.assert_allclose(dw, dw_ref, rtol=0, atol=bound(m, np.float64, terms, scale_w))
    np.testing.assert_allclose(db, db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", TILES)
def test_float32_stays_within_the_stated_bound(m: int) -> None:
    """A U-Net-sized layer in float32 against the float64 reference: inside the bound, and
    the measured error is printed (RESULTS.md quotes it)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 64, 16, 16))
    wt = rng.standard_normal((32, 64, 3, 3)) * np.sqrt(2 / (64 * 9))
    b = np.zeros(32)
    dout = rng.standard_normal((2, 32, 16, 16))
    out_ref, dx_ref, dw_ref, _ = reference(x, wt, b, dout, 1)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    out = winograd.conv2d_forward(f32(x), f32(wt), f32(b), 1, m)
    dx, dw, _ = winograd.conv2d_backward(f32(x), f32(wt), f32(dout), 1, False, True, m)
    for name, got, want, terms, scale in (
        ("out", out, out_ref, 9 * 64, np.abs(x).max() * np.abs(wt).max()),
        ("dx", dx, dx_ref, 9 * 32, np.abs(dout).max() * np.abs(wt).max()),
        ("dW", dw, dw_ref, 2 * 16 * 16, np.abs(dout).max() * np.abs(x).max()),
    ):
        err = np.abs(got - want).max() / np.abs(want).max()
        print(f"F({m},3) float32 {name}: max error / max |value| = {err:.2e}")
        assert np.abs(got - want).max() <= bound(m, np.float32, terms, scale)


def test_a_wrong_transform_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison is sharp: one flipped sign in B^T breaks the forward."""
    rng = np.random.default_rng(2)
    x, wt = rng.standard_normal((1, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3))
    good = winograd.conv2d_forward(x, wt, None, 1, 2)
    at, g, bt = winograd.toom_cook(2)
    broken = bt.copy()
    broken[1, 1] *= -1
    monkeypatch.setattr(winograd, "toom_cook", lambda m: (at, g, broken))
    bad = winograd.conv2d_forward(x, wt, None, 1, 2)
    assert np.abs(bad - good).max() > 1e-3


@pytest.mark.parametrize(
    "shape, k, tile",
    [
        ((8, 64, 16, 16), 64, 4),  # h = 32, 128 4x4 tiles: F(4x4)'s thresholds, exactly
        ((8, 64, 16, 16), 63, 0),  # h just under 32, and under F(2x2)'s 80
        ((7, 64, 16, 16), 64, 0),  # 112 4x4 tiles; 448 2x2 tiles but h = 32 < 80
        ((8, 64, 14, 14), 64, 4),  # the last tiles reach past the image: still 128 of them
        ((8, 64, 64, 64), 32, 0),  # h = 21, however many tiles
        ((8, 32, 128, 128), 32, 4),  # h = 16 and 8192 4x4 tiles: the second F(4x4) entry
        ((4, 32, 128, 128), 32, 0),  # h = 16, 4096 tiles
        ((8, 32, 128, 128), 31, 0),  # h just under 16
        ((8, 128, 16, 16), 128, 4),  # h = 64
        ((8, 512, 8, 8), 512, 2),  # 32 4x4 tiles; 128 2x2 tiles and h = 256: F(2x2)
        ((8, 256, 8, 8), 256, 2),  # h = 128
        ((8, 128, 8, 8), 256, 2),  # h = 85
        ((8, 160, 8, 8), 160, 2),  # h = 80, F(2x2)'s threshold exactly
        ((8, 160, 8, 8), 159, 0),  # h just under 80
        ((7, 160, 16, 16), 160, 2),  # 112 4x4 tiles: not F(4x4); 448 2x2 tiles
        ((8, 480, 8, 8), 480, 2),  # h = 240
        ((4, 512, 8, 8), 512, 0),  # 64 2x2 tiles
        ((2, 256, 32, 32), 128, 4),  # h = 85, 128 4x4 tiles
    ],
)
def test_the_rule_picks_by_channel_intensity_and_tiles(shape, k, tile) -> None:
    """``winograd.RULE`` as its comment states it: F(4x4) from h = C*K/(C+K) = 32 and 128
    4x4 tiles in the batch or from h = 16 and 8192 tiles, else F(2x2) from h = 80 and 128
    2x2 tiles, else blocked."""
    assert winograd.RULE == ((4, 32, 128), (4, 16, 8192), (2, 80, 128))
    with winograd.enabled(True):
        assert winograd.tile_for(np.zeros(shape, np.float32), k, 3, 1, 1, 1) == tile


def test_the_rule_applies_only_to_3x3_stride_1_numpy_float_layers() -> None:
    deep = np.zeros((8, 128, 16, 16), dtype=np.float32)
    with winograd.enabled(True):
        assert winograd.tile_for(deep, 128, 3, 1, 1, 1) == 4
        assert winograd.tile_for(deep, 128, 1, 1, 1, 0) == 0  # 1x1
        assert winograd.tile_for(deep, 128, 3, 2, 1, 1) == 0  # stride 2
        assert winograd.tile_for(deep, 128, 3, 1, 2, 1) == 0  # dilated
        assert winograd.tile_for(deep, 128, 3, 1, 1, 3) == 0  # dx would need padding -1
        assert winograd.tile_for(deep.astype(np.float16), 128, 3, 1, 1, 1) == 0
        assert winograd.tile_for(deep.view(StandIn), 128, 3, 1, 1, 1) == 0  # not NumPy's own
        with winograd.forced(2):  # the benchmarks' override, for applicable layers only
            assert winograd.tile_for(deep, 128, 3, 1, 1, 1) == 2
            assert winograd.tile_for(deep[:1, :4], 4, 3, 1, 1, 1) == 2
            assert winograd.tile_for(deep, 128, 3, 2, 1, 1) == 0
        with winograd.forced(0):
            assert winograd.tile_for(deep, 128, 3, 1, 1, 1) == 0
        assert winograd.FORCED is None
    with winograd.enabled(False):
        assert winograd.tile_for(deep, 128, 3, 1, 1, 1) == 0
    with pytest.raises(ValueError, match="no Winograd tile size 3"):
        with winograd.forced(3):
            pass


class StandIn(np.ndarray):
    """A subclass of NumPy's array, as the tests' CuPy stand-in is: not for the CPU paths."""


def test_winograd_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """On by default (the rule picks it where it measured faster); MINUNET_WINOGRAD=0 is off."""
    import importlib

    deep = np.zeros((8, 128, 16, 16), dtype=np.float32)
    monkeypatch.delenv("MINUNET_WINOGRAD", raising=False)
    try:
        fresh = importlib.reload(winograd)
        assert fresh.ENABLED and fresh.tile_for(deep, 128, 3, 1, 1, 1) == 4
        monkeypatch.setenv("MINUNET_WINOGRAD", "0")
        fresh = importlib.reload(winograd)
        assert not fresh.ENABLED and fresh.tile_for(deep, 128, 3, 1, 1, 1) == 0
    finally:
        monkeypatch.undo()
        importlib.reload(winograd)


@pytest.mark.parametrize("m", TILES)
def test_fast_conv2d_takes_winograd_and_matches_the_reference_layer(m: int) -> None:
    """Through the layer: FastConv2d with Winograd F(m, 3) forced runs it (its cache says
    so), and its forward and gradients equal the reference Conv2d's within the float64
    bound."""
    from minunet.accel import accelerate
    from minunet.accel.conv import WinogradCache
    from minunet.nn import Conv2d

    c = 6
    rng = np.random.default_rng(3)
    ref = Conv2d(c, c, 3, padding=1, dtype=np.float64, rng=np.random.default_rng(4))
    fast = accelerate(Conv2d(c, c, 3, padding=1, dtype=np.float64, rng=np.random.default_rng(4)))
    x = rng.standard_normal((2, c, 5, 6))
    with winograd.forced(m):
        out, out_ref = fast.forward(x), ref.forward(x)
        assert isinstance(fast._cache, WinogradCache) and fast._cache.tile == m
        dout = rng.standard_normal(out.shape)
        dx, dx_ref = fast.backward(dout), ref.backward(dout)
    w = ref.params["weight"].data
    np.testing.assert_allclose(
        out,
        out_ref,
        rtol=0,
        atol=bound(m, np.float64, 9 * c + 1, np.abs(x).max() * np.abs(w).max()),
    )
    np.testing.assert_allclose(
        dx, dx_ref, rtol=0, atol=bound(m, np.float64, 9 * c, np.abs(dout).max() * np.abs(w).max())
    )
    np.testing.assert_allclose(
        fast.params["weight"].grad,
        ref.params["weight"].grad,
        rtol=0,
        atol=bound(m, np.float64, 2 * 5 * 6, np.abs(dout).max() * np.abs(x).max()),
    )
    np.testing.assert_allclose(fast.params["bias"].grad, ref.params["bias"].grad, rtol=1e-12)


@pytest.mark.parametrize("m", TILES)
def test_a_short_training_run_with_winograd_tracks_the_blocked_run(
    m: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five Adam steps of a U-Net whose 3x3 convolutions (all but the first) take Winograd
    F(m, 3), in float32, against the same run on the blocked path: the losses agree to
    float32 noise, grown by F(m, 3)'s transforms and the steps (each step's rounding feeds
    the next)."""
    from minunet.model import UNet
    from minunet.nn.losses import SoftmaxCrossEntropy
    from minunet.nn.optim import Adam

    def run() -> list[float]:
        net = UNet(3, 3, base_channels=8, depth=2, seed=0)
        loss_fn, opt = SoftmaxCrossEntropy(), Adam(net.parameters(), lr=1e-3)
        data = np.random.default_rng(1)
        x = data.standard_normal((2, 3, 16, 16)).astype(np.float32)
        y = data.integers(0, 3, (2, 16, 16))
        losses = []
        for _ in range(5):
            opt.zero_grad()
            losses.append(float(loss_fn.forward(net.forward(x), y)))
            net.backward(loss_fn.backward())
            opt.step()
        return losses

    calls: list[str] = []  # which Winograd functions ran (equal losses do not say: float32
    for name in ("conv2d_forward", "conv2d_backward"):  # can round both runs' to one value)
        original = getattr(winograd, name)
        spy = lambda *a, _f=original, _n=name, **kw: (calls.append(_n), _f(*a, **kw))[1]  # noqa: E731
        monkeypatch.setattr(winograd, name, spy)
    with winograd.forced(m):
        with_winograd = run()
    taken = len(calls)
    with winograd.forced(0):
        blocked = run()
    assert {"conv2d_forward", "conv2d_backward"} <= set(calls[:taken]), "Winograd was not taken"
    assert len(calls) == taken, "the blocked run took Winograd"
    tolerance = 5 * growth(m) * np.finfo(np.float32).eps  # relative: 5 steps of F(m,3) rounding
    np.testing.assert_allclose(with_winograd, blocked, rtol=tolerance)
