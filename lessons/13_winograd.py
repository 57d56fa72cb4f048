# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 13 (optional): Winograd convolutions for the deep layers
#
# Lesson 09 made the convolution fast by moving memory less. This lesson makes it fast
# by *multiplying* less. A 3x3 convolution spends 9 multiplications per output pixel and
# per pair of input and output channels; the U-Net's deepest layers, with hundreds of
# channels on small images, are nothing but those multiplications. Winograd's minimal
# filtering algorithm, `F(m x m, 3 x 3)`, computes an `m x m` tile of outputs with
# `(m + 2)^2` multiplications instead of `9 m^2`: 16 instead of 36 for `m = 2`. minunet
# uses it on NumPy for its deep layers (`minunet/accel/winograd.py`).
#
# The plan:
#
# 1. `F(2, 3)` in one dimension, derived by evaluating polynomials at a few points and
#    interpolating (Toom-Cook), its three matrices written out, and checked against the
#    library's `winograd.toom_cook(2)`;
# 2. nested to two dimensions, and for a whole layer, where the channel sum turns 16
#    elementwise products into 16 matrix products; the library's forward and both
#    gradients checked against the reference `Conv2d` in float64;
# 3. where the float32 error comes from, and why the library uses `F(2x2, 3x3)` and not
#    the cheaper `F(4x4, 3x3)`;
# 4. when it pays, the rule that picks it (`winograd.tile_for`), and a small timing.
#
# Notation as in lessons 01 and 09: `x (N, C, H, W)`, weight `w (K, C, 3, 3)`, output
# `(N, K, Ho, Wo)`. Everything here is a 3x3 kernel at stride 1.

# %%
import os
import time

import numpy as np

from minunet.accel import cpu, winograd
from minunet.accel.conv import BlockedConvCache, FastConv2d, WinogradCache
from minunet.nn import Conv2d  # the reference: im2col and one product

SMALL = os.environ.get("MINUNET_LESSON_SMALL") == "1"
rng = np.random.default_rng(0)
print(
    f"Winograd switched on: {winograd.ENABLED and cpu.ENABLED} (MINUNET_WINOGRAD=0 switches it off)"
)

# %% [markdown]
# ## 1. F(2, 3): two outputs of a 3-tap filter with 4 multiplications
#
# Take four inputs `d0..d3` and a filter `g0, g1, g2`. The convolution (a correlation,
# as in lesson 01) has two outputs,
#
# $$y_0 = g_0 d_0 + g_1 d_1 + g_2 d_2, \qquad y_1 = g_0 d_1 + g_1 d_2 + g_2 d_3,$$
#
# six multiplications. To do it with fewer, look first at the *linear convolution* of
# two polynomials, which a correlation is the transpose of.
#
# **Polynomials.** Let `g(z) = g0 + g1 z + g2 z^2` and `x(z) = x0 + x1 z`. Their product
# `s(z) = g(z) x(z)` has degree 3, four coefficients `s_l = sum_{i+k=l} x_i g_k`, which
# is `s = C_g x` with `C_g` the `4 x 2` matrix `C_g[l, i] = g_{l-i}`. Computed directly
# that takes 6 multiplications. But a polynomial of degree 3 is fixed by its values at 4
# points, and at each point the value of the product is the product of the values:
#
# $$s(p) = g(p)\, x(p).$$
#
# So: **evaluate** `g` and `x` at four points (additions, and multiplications by the
# constant points), **multiply** the four pairs of values (4 multiplications), and
# **interpolate** `s` back from its four values. That is Toom-Cook. Small points keep the
# constants simple: `0, 1, -1`, and the "point at infinity", which by convention gives a
# polynomial's leading coefficient (`s_3 = g_2 x_1` is a product too).
#
# With `E_q` the `4 x q` matrix that evaluates a polynomial of `q` coefficients at the
# four points (row `[1, p, p^2, ...]` for a finite point `p`; `[0, ..., 0, 1]` for
# infinity), all of that is one line:
#
# $$s = E_4^{-1}\,\big[(E_3\, g) * (E_2\, x)\big]
#   \quad\Longrightarrow\quad C_g = E_4^{-1}\, \mathrm{diag}(E_3 g)\, E_2 .$$
#
# **The transpose is the correlation.** `(C_g^T d)_i = sum_l g_{l-i} d_l = sum_k g_k
# d_{i+k} = y_i`. Transposing the product above (a diagonal matrix is its own
# transpose):
#
# $$y = C_g^T d = E_2^T\,\big[(E_3\, g) * (E_4^{-T} d)\big]
#   = A^T \big[(G\, g) * (B^T d)\big].$$
#
# That is Winograd's `F(2, 3)`: `A^T = E_2^T (2 x 4)`, `G = E_3 (4 x 3)`, `B^T = E_4^{-T}
# (4 x 4)`. The rows of `B^T` are the coefficients of the interpolation basis polynomials:
# for a finite point `p_j`, `l_j(z) = prod_{l != j}(z - p_l) / prod_{l != j}(p_j - p_l)`
# (1 at `p_j`, 0 at the other points, no `z^3` term); for infinity, `z (z - 1)(z + 1) = z^3
# - z`. The denominators (-1, 2 and 2) make `B^T` fractional. Each product `(G g)_j (B^T
# d)_j` is unchanged when row `j` of `G` is multiplied by a number and row `j` of `B^T`
# divided by it, so we move the denominators' sizes into `G` (their signs stay in `B^T`):
# the filter is transformed once per layer, the input once per tile, so `B^T` is the one
# to keep integer. Written out:
#
# $$A^T = \begin{pmatrix} 1 & 1 & 1 & 0 \\ 0 & 1 & -1 & 1 \end{pmatrix},\quad
#   G = \begin{pmatrix} 1 & 0 & 0 \\ \tfrac12 & \tfrac12 & \tfrac12 \\
#   \tfrac12 & -\tfrac12 & \tfrac12 \\ 0 & 0 & 1 \end{pmatrix},\quad
#   B^T = \begin{pmatrix} 1 & 0 & -1 & 0 \\ 0 & 1 & 1 & 0 \\ 0 & -1 & 1 & 0 \\
#   0 & -1 & 0 & 1 \end{pmatrix}.$$
#
# `B^T d` and the final `A^T` are additions only; `G g` is computed once per filter. What
# is left per tile is the elementwise product: 4 multiplications for 2 outputs, where the
# direct sums took 6. First the check that these matrices compute the correlation.

# %%
AT = np.array([[1, 1, 1, 0], [0, 1, -1, 1]], dtype=np.float64)  # (m, n) = (2, 4)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])  # (n, 3)
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], dtype=np.float64)

for _ in range(5):
    d, g = rng.standard_normal(4), rng.standard_normal(3)
    direct = np.array([g @ d[i : i + 3] for i in range(2)])  # 6 multiplications
    fast = AT @ ((G @ g) * (BT @ d))  # 4 multiplications, once G g is known
    np.testing.assert_allclose(fast, direct, rtol=1e-14, atol=1e-14)
print("A^T [(G g) * (B^T d)] == the direct correlation, on 5 random (d, g)")

# %% [markdown]
# The matrices above were typed from the derivation. Here the derivation itself, run:
# the evaluation matrices `E_q` from the points, `E_4` inverted, and the denominators'
# sizes `|prod_{l != j}(p_j - p_l)|` moved from `B^T` into `G` (the infinity row has none).


# %%
def evaluation(points, q):
    """E_q (len(points) + 1, q): the values at each point, then the leading coefficient."""
    finite = [[p**e for e in range(q)] for p in points]
    return np.array(finite + [[0.0] * (q - 1) + [1.0]])


points = winograd.POINTS[2]  # the library's points: (0, 1, -1), and infinity
denominators = np.array([np.prod([p - q for q in points if q != p]) for p in points] + [1.0])
size = np.abs(denominators)[:, None]
AT_derived = evaluation(points, 2).T
G_derived = evaluation(points, 3) / size
BT_derived = np.linalg.inv(evaluation(points, 4)).T * size
for name, derived, typed in [("A^T", AT_derived, AT), ("G", G_derived, G), ("B^T", BT_derived, BT)]:
    np.testing.assert_allclose(derived, typed, rtol=0, atol=1e-15, err_msg=name)
print(f"points {points} + infinity: denominators {denominators}")
print("evaluate, multiply, interpolate == the matrices written out above")

# %% [markdown]
# **The library's matrices.** `winograd.toom_cook(m)` builds the matrices of `F(m, 3)`
# from its points the same way, with one difference its docstring states: it divides
# row `j` of `G` by the signed denominator `prod_{l != j}(p_j - p_l)`, where we divided by
# its size. At the point 0 the denominator is `(0 - 1)(0 + 1) = -1`, so the library's
# first rows of `G` and `B^T` are ours negated. (Published tables differ in such signs
# too.) No single matrix is what matters; the *product* is. For every output `i`, tap
# `k` and input `l`,
#
# $$\sum_j A^T_{ij}\, G_{jk}\, B^T_{jl} = [\,l = i + k\,],$$
#
# since that is the coefficient of `g_k d_l` in `y_i`. Any row scaling leaves it alone.
# So we assert both: this identity, for our matrices and the library's, and the
# matrices themselves equal up to the row scaling computed from the denominators. The
# entries are small integers and halves, so both hold exactly, not just to rounding.

# %%
at_lib, g_lib, bt_lib = winograd.toom_cook(2)
print("library G:\n", g_lib + 0.0, "\nlibrary B^T:\n", bt_lib)  # + 0.0 prints -0 as 0


def identity(at, g, bt):
    """T[i, k, l] = sum_j AT[i, j] G[j, k] BT[j, l]: the coefficient of g_k d_l in y_i."""
    return np.einsum("ij,jk,jl->ikl", at, g, bt)


m, n = AT.shape  # 2 outputs, 4 inputs per tile
shift = np.array([[[float(l == i + k) for l in range(n)] for k in range(3)] for i in range(m)])
np.testing.assert_array_equal(identity(AT, G, BT), shift)
np.testing.assert_array_equal(identity(at_lib, g_lib, bt_lib), shift)

scaling = np.abs(denominators) / denominators  # the library's row j of G = ours * scaling_j
np.testing.assert_array_equal(at_lib, AT)
np.testing.assert_array_equal(g_lib, scaling[:, None] * G)
np.testing.assert_array_equal(bt_lib, BT / scaling[:, None])
print(f"row scaling library / lesson: {scaling}; the identity == [l == i + k] for both")

# %% [markdown]
# ## 2. Two dimensions, and a whole layer
#
# **Nesting.** A 2-D correlation of a `4 x 4` input tile `d` with a `3 x 3` filter `g` is
# a 1-D correlation along the rows of 1-D correlations along the columns. Apply `F(2, 3)`
# on both sides:
#
# $$Y = A^T \big[(G\, g\, G^T) * (B^T d\, B)\big] A \qquad (2 \times 2).$$
#
# The elementwise product is now `4 x 4`: **16 multiplications for a `2 x 2` tile of
# outputs, where the direct sums take `4 * 9 = 36`**. The same with `F(4, 3)` (`6 x 6`
# tiles, five finite points `0, 1, -1, 2, -2`): 36 multiplications for 16 outputs
# instead of 144. First one tile, checked against the direct sums:

# %%
d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
direct = np.array([[np.sum(g * d[u : u + 3, v : v + 3]) for v in range(2)] for u in range(2)])
tile = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
np.testing.assert_allclose(tile, direct, rtol=1e-13, atol=1e-13)
for mm in (2, 4):
    nn = mm + 2
    print(
        f"F({mm}x{mm}, 3x3): {nn * nn} multiplications per tile instead of {9 * mm * mm}"
        f" ({9 * mm * mm / (nn * nn):.2f}x fewer)"
    )

# %% [markdown]
# **A layer.** Cut the (padded) input into `n x n` tiles that start every `m` pixels
# (neighbours overlap by 2), so each tile yields an `m x m` block of the output. With `T
# = N * (Ho/m) * (Wo/m)` tiles, the transformed inputs `V[t, c] = B^T d_{t,c} B` and
# filters `U[k, c] = G w_{k,c} G^T` are `n x n` each, and output `k` of tile `t` is
#
# $$Y_{t,k} = \sum_c A^T \big[U_{k,c} * V_{t,c}\big] A
#   = A^T \Big[\sum_c U_{k,c} * V_{t,c}\Big] A,$$
#
# since `A^T [.] A` is linear: transform back once, after the channel sum. Now read that
# sum one position `(xi, eta)` of the `n x n` tile at a time:
#
# $$M[\xi, \eta]_{t,k} = \sum_c V[\xi, \eta]_{t,c}\, U[\xi, \eta]_{k,c}
#   \quad\Longrightarrow\quad
#   M[\xi, \eta] = V[\xi, \eta]_{(T, C)}\; U[\xi, \eta]^T_{(C, K)} .$$
#
# The 16 elementwise products per tile and channel pair have become **16 ordinary matrix
# products**, `(tiles x C) @ (C x K)`, the kind BLAS does at full speed. The whole layer
# in a few lines of NumPy (for sizes whose output is a whole number of tiles), checked
# against the reference `Conv2d` in float64:


# %%
def conv_winograd_by_hand(x, weight, padding, at, g, bt):
    """Stride-1 3x3 convolution by Winograd with the given matrices.

    x (N, C, H, W), weight (K, C, 3, 3) -> (N, K, Ho, Wo); Ho and Wo multiples of m.
    """
    m, n = at.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    # Every n x n window, then every m-th: d[i, c, ty, tx] is the tile at (m ty, m tx).
    d = np.lib.stride_tricks.sliding_window_view(xp, (n, n), axis=(2, 3))[:, :, ::m, ::m]
    n_img, c, th, tw = d.shape[:4]
    v = np.einsum("xa,ictsab,yb->xyitsc", bt, d, bt)  # B^T d B: (n, n, N, th, tw, C)
    u = np.einsum("xa,kcab,yb->xykc", g, weight, g)  # G w G^T: (n, n, K, C)
    prod = v.reshape(n, n, -1, c) @ u.transpose(0, 1, 3, 2)  # n^2 products (T, C) @ (C, K)
    prod = prod.reshape(n, n, n_img, th, tw, -1)
    y = np.einsum("ux,xyitsk,vy->iktusv", at, prod, at)  # A^T M A: (N, K, th, m, tw, m)
    return y.reshape(n_img, -1, th * m, tw * m)


# The tolerance, from the transforms (section 3 explains it): every output is a sum of
# `terms` products of size <= `scale`, grown by the transforms by at most growth(m).
def growth(m):
    """(|A^T| |G| |B^T|)^2 of the library's F(m, 3), infinity norms (max row sums)."""
    norm = lambda a: np.abs(a).sum(axis=1).max()  # noqa: E731
    at, g, bt = winograd.toom_cook(m)
    return float((norm(at) * norm(g) * norm(bt)) ** 2)


def bound(m, dtype, terms, scale):
    """The absolute error allowed, as in tests/test_winograd.py."""
    return growth(m) * np.finfo(dtype).eps * terms * scale


nb, cb, kb, side = (2, 6, 5, 8) if SMALL else (2, 16, 12, 16)
x = rng.standard_normal((nb, cb, side, side))
layer = Conv2d(cb, kb, 3, padding=1, dtype=np.float64, rng=rng)
layer.params["bias"].data[...] = rng.standard_normal(kb)  # it starts at zero: test it too
weight = layer.params["weight"].data
want = layer.forward(x) - layer.params["bias"].data[:, None, None]  # the by-hand has no bias
for mm, matrices in [(2, (AT, G, BT)), (4, winograd.toom_cook(4))]:
    mine = conv_winograd_by_hand(x, weight, 1, *matrices)
    tol = bound(mm, np.float64, 9 * cb, np.abs(x).max() * np.abs(weight).max())
    np.testing.assert_allclose(mine, want, rtol=0, atol=tol)
    print(f"by hand, F({mm}x{mm}, 3x3): == the reference Conv2d (float64, atol {tol:.1e})")

# %% [markdown]
# **Each 2-D transform as one matrix.** The einsums above apply the 1-D matrices along
# the rows and then along the columns of every tile. Flatten a tile row by row instead,
# and the pair becomes one matrix, a Kronecker product: for any matrices $P$, $X$, $Q$,
# $\mathrm{flat}(P X Q) = (P \otimes Q^T)\, \mathrm{flat}(X)$, so
#
# $$\mathrm{flat}(B^T d\, B) = (B^T \otimes B^T)\, \mathrm{flat}(d), \qquad
#   \mathrm{flat}(G\, g\, G^T) = (G \otimes G)\, \mathrm{flat}(g), \qquad
#   \mathrm{flat}(A^T M A) = (A^T \otimes A^T)\, \mathrm{flat}(M).$$
#
# With every tile of a layer flattened into a column, each transform is a single matrix
# product, `(n^2, n^2) @ (n^2, tiles * C)` for the input. The library builds the three
# matrices (`winograd.nested(m, dtype)`) and transforms the filters this way (9 numbers
# each). For the tiles it keeps the nesting instead: `B^T` along every tile's columns,
# one product `(n, n) @ (n, tiles * C)` over all of them, then along the rows, another:
# `2 n^3` multiply-adds per tile where the Kronecker matrix takes `n^4` (a third of them
# for `F(4x4)`, whose `n` is 6). The check: the Kronecker form gives the nested one, for
# our matrices, and the library's matrices are the Kronecker products of its
# `toom_cook`'s.

# %%
flat_v = np.kron(BT, BT) @ d.ravel()  # d: the 4 x 4 tile above
np.testing.assert_allclose(flat_v, (BT @ d @ BT.T).ravel(), rtol=0, atol=1e-13)
flat_u = np.kron(G, G) @ g.ravel()
np.testing.assert_allclose(flat_u, (G @ g @ G.T).ravel(), rtol=0, atol=1e-13)
flat_y = np.kron(AT, AT) @ (flat_u * flat_v)  # the tile again, with no nesting at all
np.testing.assert_allclose(flat_y, direct.ravel(), rtol=1e-13, atol=1e-13)
aa_lib, gg_lib, bb_lib = winograd.nested(2, np.float64)
np.testing.assert_array_equal(aa_lib, np.kron(at_lib, at_lib))
np.testing.assert_array_equal(gg_lib, np.kron(g_lib, g_lib))
np.testing.assert_array_equal(bb_lib, np.kron(bt_lib, bt_lib))
print(
    f"Kronecker forms: B^T (x) B^T {bb_lib.shape}, G (x) G {gg_lib.shape}, A^T (x) A^T {aa_lib.shape}"
)

# %% [markdown]
# **The library.** `winograd.conv2d_forward(x, weight, bias, padding, m)` is that
# computation organised for speed: the layer's tiles go through in blocks of a hundred or
# so (bands of tile rows, or several small images: `winograd.tile_blocks`), each block
# transformed, multiplied and transformed back while it is in the cache; the input tiles
# channels last (each tile's `C` numbers contiguous, `winograd.block_input_tiles`), the
# products channels first (`U[xi, eta] (K, C) @ V[xi, eta]^T (C, T)`, each channel's tiles
# contiguous, so that the output transform gives rows of pixels); the blocks shared out
# over threads as in lesson 09, and any size handled by padding the last tiles with zeros.
#
# Its backward, `winograd.conv2d_backward`:
#
# - **`dx`** is lesson 09's result again: the convolution of `dout` with the kernel
#   flipped and its channel axes swapped, padding `2 - p`: so it is `conv2d_forward`,
#   Winograd and all.
# - **`dW`**: `Y` is linear in `U`, so with `dM = A dY A^T` (each `m x m` output-gradient
#   tile taken back through the output transform, its transpose), `dU[xi, eta] =
#   dM[xi, eta] V[xi, eta]`, `(K, T) @ (T, C)`: the same 16 products with the roles
#   exchanged, summed over the blocks. Then `dW = G^T dU G`, the transpose of the filter
#   transform.
#
# The check: forward, `dx`, `dW` and `db` against the reference `Conv2d` and its backward
# (lesson 02's im2col formulas), in float64, for both tile sizes, with padding 1 (the
# U-Net's) and 0, on sizes that are not a whole number of tiles.

# %%
hx, wx = (7, 9) if SMALL else (13, 15)
for mm in (2, 4):
    for padding in (1, 0):
        ref = Conv2d(cb, kb, 3, padding=padding, dtype=np.float64, rng=rng)
        w_ref, b_ref = ref.params["weight"].data, ref.params["bias"].data
        b_ref[...] = rng.standard_normal(kb)
        x = rng.standard_normal((nb, cb, hx, wx))
        out_ref = ref.forward(x)
        dout = rng.standard_normal(out_ref.shape)
        dx_ref = ref.backward(dout)
        out = winograd.conv2d_forward(x, w_ref, b_ref, padding, mm)
        dx, dw, db = winograd.conv2d_backward(x, w_ref, dout, padding, True, True, mm)

        wmax, xmax, dmax = np.abs(w_ref).max(), np.abs(x).max(), np.abs(dout).max()
        terms_dw = nb * out_ref.shape[2] * out_ref.shape[3]  # every output adds to each tap
        np.testing.assert_allclose(
            out, out_ref, rtol=0, atol=bound(mm, np.float64, 9 * cb + 1, xmax * wmax)
        )
        np.testing.assert_allclose(
            dx, dx_ref, rtol=0, atol=bound(mm, np.float64, 9 * kb, dmax * wmax)
        )
        np.testing.assert_allclose(
            dw, ref.params["weight"].grad, rtol=0, atol=bound(mm, np.float64, terms_dw, dmax * xmax)
        )
        np.testing.assert_allclose(db, ref.params["bias"].grad, rtol=1e-12, atol=1e-12)
        print(f"F({mm}x{mm}, 3x3), padding {padding}, x {x.shape}: out, dx, dW, db == Conv2d")

# %% [markdown]
# ## 3. Where the float32 error comes from
#
# In exact arithmetic Winograd computes the same sums as the direct convolution. In
# floating point it does not: the transforms first *grow* the numbers, the products are
# rounded at that larger size, and the output transform then *cancels* most of it back
# down. The rounding errors do not cancel with it.
#
# How much can the numbers grow? Each transform is a matrix, and the largest factor a
# matrix can grow a vector by (in the largest entry) is its infinity norm, the largest
# row sum of absolute values. One output passes through `B^T`, `G` and `A^T` once per
# dimension, so
#
# $$\text{growth}(m) = \big(\|A^T\|_\infty \|G\|_\infty \|B^T\|_\infty\big)^2,$$
#
# and a float32 output's error is at most about `growth(m) * eps * (9 C) * max|x| max|w|`
# (the `bound` above; `tests/test_winograd.py` checks the library against it). For
# `F(2, 3)` the entries are 0, 1 and 1/2; `F(4, 3)`'s five points give entries up to 8
# (`A^T`, `2^3`), 5 (`B^T`) and 1/24 (`G`):

# %%
for mm in (2, 4):
    at, g, bt = winograd.toom_cook(mm)
    largest = max(np.abs(a).max() for a in (at, g, bt))
    print(f"F({mm}, 3): largest entry {largest:g}, growth(m) = {growth(mm):g}")
print("F(4, 3)'s A^T:\n", winograd.toom_cook(4)[0])
print("F(4, 3)'s B^T:\n", winograd.toom_cook(4)[2])

# %% [markdown]
# The bound is a worst case. What matters is the error measured on a layer like the
# U-Net's (64 to 32 channels, He-initialised weights, as in the test), in float32 against
# the float64 reference, next to lesson 09's blocked path (the direct sums) on the same
# data. The cell also prints how much larger the transformed input tiles `V = B^T d B`
# are than the input, the growth in action.

# %%
ce, ke, se = 64, 32, 16
x = rng.standard_normal((2, ce, se, se))
weight = rng.standard_normal((ke, ce, 3, 3)) * np.sqrt(2 / (ce * 9))
ref = Conv2d(ce, ke, 3, padding=1, bias=False, dtype=np.float64)
ref.params["weight"].data[...] = weight
want = ref.forward(x)
x32, w32 = x.astype(np.float32), weight.astype(np.float32)
scale, top = np.abs(x).max() * np.abs(weight).max(), np.abs(want).max()

blocked = cpu.conv2d_forward(x32, w32, None, 1)
print(f"blocked (direct sums): max error / max |out| = {np.abs(blocked - want).max() / top:.1e}")
errors = {}
for mm in (2, 4):
    errors[mm] = np.abs(winograd.conv2d_forward(x32, w32, None, 1, mm) - want).max()
    v_growth = np.abs(winograd.block_input_tiles(x, 1, mm)).max() / np.abs(x).max()
    print(
        f"F({mm}x{mm}, 3x3): max error / max |out| = {errors[mm] / top:.1e}"
        f" (bound {bound(mm, np.float32, 9 * ce, scale) / top:.1e}); max|V| / max|x| = {v_growth:.0f}"
    )
for mm in (2, 4):
    assert errors[mm] <= bound(mm, np.float32, 9 * ce, scale), f"F({mm}, 3) above its bound"
assert errors[4] > errors[2], "F(4, 3) should round more than F(2, 3)"
print(f"F(4, 3) / F(2, 3) float32 error: {errors[4] / errors[2]:.0f}x")

# %% [markdown]
# `F(2x2, 3x3)`'s float32 error is of the size of the direct sums': its transforms'
# entries are of size 0, 1 and 1/2, and grow the tiles about twice. `F(4x4, 3x3)` saves
# more (4x fewer multiplications against 2.25x) but rounds an order of magnitude more, on
# every layer it runs and in the forward and both gradients. Is that acceptable? Measured
# on every 3x3 layer of the U-Net (`benchmarks/winograd_rule.py --error`), the worst was
# 1.4e-5 of a layer's largest output, against 9e-7 for the direct sums: about 230 times
# the 6e-8 of one float32 rounding, and about 290 times smaller than the 4e-3 of
# bfloat16, in which networks are routinely trained; a five-step training run on
# `F(4x4, 3x3)` tracks the blocked run's losses (`tests/test_winograd.py`). So minunet
# uses both: the rule below picks `F(4x4, 3x3)` where it pays and `F(2x2, 3x3)` where
# only that does. (Should your own use need the direct sums' error, `MINUNET_WINOGRAD=0`
# switches Winograd off.)
#
# ## 4. When it pays
#
# Count the work for one layer with `T` tiles, `C` inputs and `K` outputs, `n = m + 2`:
#
# - **the products**: `n^2 T C K` multiplications (16 for `F(2x2)`, 36 for `F(4x4)`),
#   against `9 m^2 T C K` for the direct sums: the whole saving;
# - **the input transform**: `V` for every tile and channel, `O(n^2 T C)`: it does not
#   grow with `K`;
# - **the output transform**: `O(n^2 T K)`, not growing with `C`; the filter transform
#   `O(n^2 K C)`, once per call however many tiles there are.
#
# Per tile the transforms cost `O(C + K)` and save `O(C K)`, so what decides is
# `h = C K / (C + K)`, the multiply-adds of the products per transformed value: the more
# channels, the smaller the transforms' share. Their cost is less the additions than the
# copies around them: `V` holds `n^2 / m^2` times as many numbers as `x` (the tiles
# overlap), each gathered from the image and each output pixel put back, with a handful
# of arithmetic per number, so they run at the speed of the caches and memory, the
# bottleneck of lesson 09, while the products run at BLAS's speed. (Done for the whole
# layer at once, `V` was tens of MB at 64 channels, and every transform a pass through
# memory; in cache-sized blocks of tiles, the same layer on `F(4x4)`, 64 to 64 channels
# at 64 px, took about half the time, forward and backward, and the rule below moved
# from 128 channels down to 64: `benchmarks/RESULTS.md`.) And each of the `n^2` products reads
# all of `U`'s `C K` values, so it needs enough rows, tiles, to run at BLAS's speed: at
# 8x8 pixels a batch of 8 images has only 32 tiles of `4 x 4`, but 128 of `2 x 2`.
#
# Where exactly it pays is a measurement, not a formula: `benchmarks/winograd_rule.py`
# times every 3x3 convolution of a U-Net on the three paths, and the rule's thresholds,
# `winograd.RULE`, are read off that table. **The rule**, `winograd.tile_for`: for NumPy
# float32/float64, 3x3, stride 1, dilation 1 and padding at most 2 (the input gradient's
# padding `2 - p` must not be negative), the first entry `(m, least h, least tiles)` of
# `RULE` for which `h` and the batch's count of `m x m` output tiles both reach their
# thresholds gives the tile size `m`; `F(4x4)` comes first (it saves more), once for the
# layers with many channels and once for those with fewer but very many tiles (32
# channels at 128 px), and `F(2x2)` needs more channels. Everything else keeps
# lesson 09's blocked path or im2col. `FastConv2d` asks it on every call, and its cache
# records the road taken. It is on by default (`MINUNET_WINOGRAD=0` switches it off).
# One lesson from the measurements: a product that OpenBLAS splits over its own threads
# leaves them spinning afterwards, on the cores minunet's workers need, so even the small
# filter transforms run in the pool's workers, each under `cpu.single_threaded_blas()`
# (`benchmarks/step_threads.py` shows each thread's time).

# %%
winograd.ENABLED = True  # the default, unless MINUNET_WINOGRAD=0 switched it off
print(f"winograd.RULE = {winograd.RULE}  (m, least h, least tiles)")


def intensity(c, k):
    return c * k / (c + k)


on = winograd.ENABLED and cpu.ENABLED
f32 = np.float32
deep = np.zeros((8, 128, 16, 16), f32)  # 128 -> 128 at 16 px, batch 8
cases = [  # (name, x, output channels, kernel, stride, dilation, padding, expected tile)
    ("128 -> 128 at 16 px, batch 8", deep, 128, 3, 1, 1, 1, 4),
    ("64 -> 64 at 16 px, batch 8", np.zeros((8, 64, 16, 16), f32), 64, 3, 1, 1, 1, 4),
    ("64 -> 32 at 64 px, batch 8", np.zeros((8, 64, 64, 64), f32), 32, 3, 1, 1, 1, 0),
    ("32 -> 64 at 64 px, batch 8", np.zeros((8, 32, 64, 64), f32), 64, 3, 1, 1, 1, 0),
    ("32 -> 32 at 128 px, batch 8", np.zeros((8, 32, 128, 128), f32), 32, 3, 1, 1, 1, 4),
    ("256 -> 128 at 32 px, batch 2", np.zeros((2, 256, 32, 32), f32), 128, 3, 1, 1, 1, 4),
    ("128 -> 128 at 16 px, batch 4", np.zeros((4, 128, 16, 16), f32), 128, 3, 1, 1, 1, 0),
    ("512 -> 512 at 8 px, batch 8", np.zeros((8, 512, 8, 8), f32), 512, 3, 1, 1, 1, 2),
    ("256 -> 256 at 8 px, batch 8", np.zeros((8, 256, 8, 8), f32), 256, 3, 1, 1, 1, 2),
    ("128 -> 128 at 8 px, batch 8", np.zeros((8, 128, 8, 8), f32), 128, 3, 1, 1, 1, 0),
    ("512 -> 512 at 8 px, batch 2", np.zeros((2, 512, 8, 8), f32), 512, 3, 1, 1, 1, 0),
    ("5x5 kernel", deep, 128, 5, 1, 1, 2, 0),
    ("stride 2", deep, 128, 3, 2, 1, 1, 0),
    ("dilation 2", deep, 128, 3, 1, 2, 1, 0),
    ("padding 3", deep, 128, 3, 1, 1, 3, 0),
    ("float16", deep.astype(np.float16), 128, 3, 1, 1, 1, 0),
]
for name, xx, k_out, ksize, stride, dilation, padding, expected in cases:
    chosen = winograd.tile_for(xx, k_out, ksize, stride, dilation, padding)
    assert chosen == (expected if on else 0), name
    h = intensity(xx.shape[1], k_out)
    road = f"Winograd F({chosen}x{chosen}, 3x3)" if chosen else "not Winograd"
    print(f"{name:32s} h = {h:5.1f} -> {road}")

for channels, cache_type in [(64, WinogradCache), (32, BlockedConvCache)]:
    conv = FastConv2d(channels, channels, 3, padding=1, rng=rng)
    conv.forward(np.zeros((8, channels, 16, 16), np.float32))
    assert isinstance(conv._cache, cache_type) or not on, f"{channels} channels"
    print(f"FastConv2d {channels} -> {channels}: {type(conv._cache).__name__}")

# %% [markdown]
# **A timing, on this machine.** One deep layer (256 to 256 channels at 16x16, a batch
# of 8), forward and backward, float32: lesson 09's blocked path (`cpu.conv2d_forward`,
# `cpu.conv2d_backward`) against Winograd `F(2x2)` and `F(4x4)` (`winograd`'s), called
# directly, whatever the rule would pick. Each figure is the median of a few calls after
# a warm-up. As in lesson 09, these times belong to this machine at this moment: on a
# busy machine (see the load averages) they mean little, and in small mode the layer is
# tiny and the fixed cost of each NumPy call decides. The stored run is rebuilt on a
# quiet machine; `benchmarks/winograd_rule.py` makes the careful measurement.


# %%
def median_ms(fn, calls):
    """Median wall time of fn() in milliseconds, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def load_average():
    """The 1, 5 and 15 minute load averages, where the system reports them."""
    if not hasattr(os, "getloadavg"):  # Windows
        return "not reported here"
    return "(1/5/15 min) " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def forward_and_backward(module, *tile):
    """One forward and one backward (dx and dW) of the timed layer, on one path."""
    module.conv2d_forward(xt, wt, None, 1, *tile)
    module.conv2d_backward(xt, wt, dt, 1, False, True, *tile)


tn, tc, tside = (1, 16, 8) if SMALL else (8, 256, 16)
calls = 2 if SMALL else 5
xt = rng.standard_normal((tn, tc, tside, tside), dtype=np.float32)
wt = (rng.standard_normal((tc, tc, 3, 3)) * np.sqrt(2 / (tc * 9))).astype(np.float32)
dt = rng.standard_normal((tn, tc, tside, tside), dtype=np.float32)
print(
    f"Conv2d 3x3 {tc}->{tc}, x ({tn}, {tc}, {tside}, {tside}) float32,"
    f" forward + backward, median of {calls}"
)
print(f"load average {load_average()}")
times = {
    "blocked path": median_ms(lambda: forward_and_backward(cpu), calls),
    "Winograd F(2x2)": median_ms(lambda: forward_and_backward(winograd, 2), calls),
    "Winograd F(4x4)": median_ms(lambda: forward_and_backward(winograd, 4), calls),
}
for name, ms in times.items():
    print(f"  {name:16s} {ms:8.2f} ms")
print(f"load average {load_average()}")
for name in ("Winograd F(2x2)", "Winograd F(4x4)"):
    speed = times["blocked path"] / times[name]
    print(f"{name} vs blocked: {speed:.2f}x the speed (above 1: faster)")

# %% [markdown]
# At most 36/16 = 2.25x (`F(2x2)`) or 144/36 = 4x (`F(4x4)`) could come from the
# products; the transforms take their share back, more of it the fewer the channels, and
# the backward transforms the input tiles again and the output gradient's tiles besides.
# On the 2-core machine minunet was measured on, this layer took 33% less time on
# `F(4x4)` than on the blocked path, and a training step of the base-32 U-Net 10-26%
# less with the rule on than with Winograd off (`benchmarks/RESULTS.md`). Read the ratio
# with the load averages, and compare ratios measured on one machine, never absolute
# times across machines.
#
# ## What to remember
#
# - Toom-Cook: evaluate two polynomials at a few points, multiply the values,
#   interpolate. Transposed, it is Winograd's `F(m, 3)`: `y = A^T [(G g) * (B^T d)]`,
#   `m + 2` multiplications for `m` outputs of a 3-tap filter, where the direct sums take
#   `3 m`.
# - The matrices are fixed by the points only up to a scaling of the rows of `G` and
#   `B^T`; what must agree is the product, `sum_j A^T_ij G_jk B^T_jl = [l = i + k]`.
# - Nested: `Y = A^T [(G g G^T) * (B^T d B)] A`, 16 multiplications instead of 36 per
#   `2 x 2` tile (36 instead of 144 for `F(4, 3)`); summed over channels, the 16
#   elementwise products become 16 matrix products `(tiles x C) @ (C x K)`.
# - Backward: `dx` is the forward again (flipped kernel, padding `2 - p`); `dW` is the
#   same 16 products with the roles exchanged, then `G^T dU G`.
# - The transforms grow the numbers before rounding: `F(4x4, 3x3)` rounds about an order
#   of magnitude more in float32 (1.4e-5 of the output at most on the U-Net's layers),
#   still far below the precision networks train in.
# - It pays only where the products dominate the memory-bound transforms: many channels
#   in and out (`h = C K / (C + K)`) and enough tiles per product. `tile_for` reads both
#   against `RULE`, thresholds measured on every layer of the U-Net: a measurement
#   decides, not the count. And the transforms pay only if they stay in the cache:
#   the tiles go through in blocks.
#
# Back to [lesson 09](09_fast_numpy.ipynb) or to [the reading order](README.md).

# %% [markdown]
# ## Exercises
#
# Fill in each stub, then run the cell: `report` checks your version against minunet and
# says "passed" or what is still wrong. Solutions:
# [solutions/13_winograd.py](solutions/13_winograd.py).
#
# 1. `my_toom_cook(points)`: the matrices `(A^T (2, 4), G (4, 3), B^T (4, 4))` of `F(2, 3)`
#    for any three distinct finite points (and infinity), as derived in section 1. The
#    check runs them on random data for several sets of points, and for `(0, 1, -1)`
#    compares the product `sum_j A^T_ij G_jk B^T_jl` with the library's `toom_cook(2)`'s.
# 2. **A mutation.** In `winograd.conv2d_backward`, change the input gradient's padding
#    `KERNEL - 1 - padding` to `padding` (the forward's). Which of these checks fail?
#    - `"dx_padding_1"`: `dx` == the reference's, for a layer with padding 1;
#    - `"dx_padding_0"`: the same with padding 0;
#    - `"dw_padding_0"`: `dW` == the reference's, padding 0;
#    - `"forward_padding_0"`: the forward == the reference's, padding 0.
#
#    Set `answer_dx_padding_mutation` to the set of names; the check runs the mutated code.

# %%
from exercises import check_answer_dx_padding_mutation, check_my_toom_cook, report  # noqa: E402


def my_toom_cook(points):
    """Three distinct finite points -> (A^T (2, 4), G (4, 3), B^T (4, 4)) of F(2, 3)."""
    ...  # TODO


answer_dx_padding_mutation = None  # TODO: a set of check names

report(check_my_toom_cook, my_toom_cook)
report(check_answer_dx_padding_mutation, answer_dx_padding_mutation)
