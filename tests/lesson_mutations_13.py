"""Mutations that lesson 13 (Winograd convolutions) must catch.

Each row changes one snippet (``find`` occurs exactly once in ``path``) into a plausible
bug (``replace``); run in small mode, the lesson must then stop with an AssertionError in
the statement containing ``check``. Rows on ``minunet/accel/winograd.py`` break the library
the lesson checks; rows on the lesson itself break one of its own derivations (no library
code feeds those checks), or, where no plausible library bug can reach a check alone,
the check's own claim, to show it is not vacuous (the note says which). The harness that
applies them is tests/test_lesson_mutations.py.
"""

from __future__ import annotations

L13 = "lessons/13_winograd.py"
WINOGRAD = "minunet/accel/winograd.py"


def _row(path: str, find: str, replace: str, check, note: str) -> dict:
    return dict(lesson="13", path=path, find=find, replace=replace, check=check, note=note)


MUTATIONS = [
    # --- 1. F(2, 3) in one dimension ----------------------------------------------------
    _row(
        L13,
        "[0.5, -0.5, 0.5]",
        "[0.5, 0.5, -0.5]",
        "np.testing.assert_allclose(fast, direct, rtol=1e-14",
        "the typed G with wrong signs in the row of the point -1",
    ),
    _row(
        L13,
        "size = np.abs(denominators)[:, None]",
        "size = np.ones((4, 1))",
        "np.testing.assert_allclose(derived, typed",
        "the derivation forgets to move the Lagrange denominators from B^T into G",
    ),
    _row(
        L13,
        "float(l == i + k)",
        "float(l == k)",
        "np.testing.assert_array_equal(identity(AT, G, BT), shift)",
        "the identity written without the output's shift: y_i reads d_{i+k}, not d_k",
    ),
    _row(
        WINOGRAD,
        "at[m - 1, n - 1] = 1.0",
        "at[m - 1, n - 1] = 0.0",
        "np.testing.assert_array_equal(identity(at_lib, g_lib, bt_lib), shift)",
        "A^T without the point at infinity: no B^T makes the identity hold (lstsq's best"
        " fit is not a correlation)",
    ),
    _row(
        WINOGRAD,
        "at[m - 1, n - 1] = 1.0",
        "at[m - 1, n - 1] = -1.0",
        "np.testing.assert_array_equal(at_lib, AT)",
        "another valid sign at infinity (some published tables use it): the identity still"
        " holds (B^T is solved for), the matrices differ from the derivation's",
    ),
    _row(
        WINOGRAD,
        "g[j] = p ** np.arange(KERNEL) / scale",
        "g[j] = p ** np.arange(KERNEL) / abs(scale)",
        "np.testing.assert_array_equal(g_lib, scaling[:, None] * G)",
        "the library no longer divides by the signed denominator its docstring states",
    ),
    _row(
        L13,
        "np.testing.assert_array_equal(bt_lib, BT / scaling[:, None])",
        "np.testing.assert_array_equal(bt_lib, BT)",
        "np.testing.assert_array_equal(bt_lib, BT",
        "the check's own claim: without the row scaling the library's B^T is not the typed"
        " one (no library bug reaches this check alone: B^T is fixed by A^T, G and the"
        " identity, all checked before it)",
    ),
    # --- 2. two dimensions and a layer ----------------------------------------------------
    _row(
        L13,
        "tile = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T",
        "tile = AT @ ((G @ g.T @ G.T) * (BT @ d @ BT.T)) @ AT.T",
        "np.testing.assert_allclose(tile, direct",
        "the nested filter transform applied to the transposed filter",
    ),
    _row(
        L13,
        '"ux,xyitsk,vy->iktusv"',
        '"ux,xyitsk,vy->iktvsu"',
        "np.testing.assert_allclose(mine, want, rtol=0, atol=tol)",
        "the by-hand layer puts each output tile back transposed",
    ),
    _row(
        "minunet/nn/conv.py",
        '            out += self.params["bias"].data[:, None]',
        "            pass",
        "np.testing.assert_allclose(mine, want, rtol=0, atol=tol)",
        "the reference Conv2d forgets its bias (the by-hand layer is compared with it)",
    ),
    _row(
        WINOGRAD,
        "np.kron(at, at).astype(dtype)",
        "np.kron(at, at[::-1]).astype(dtype)",
        "np.testing.assert_array_equal(aa_lib, np.kron(at_lib, at_lib))",
        "the output transform's column factor with its rows swapped (each tile's two output"
        " columns would change places): no longer the Kronecker product of A^T with itself",
    ),
    _row(
        WINOGRAD,
        "(s[1], s[2], s[0], m * s[1], m * s[2], s[3])",
        "(s[2], s[1], s[0], m * s[1], m * s[2], s[3])",
        "out, out_ref, rtol=0",
        "the library gathers each tile transposed before B^T (x) B^T: the layer's forward is"
        " wrong though the matrices are right",
    ),
    _row(
        WINOGRAD,
        "dst += bias[:, None, None]",
        "dst += 0 * bias[:, None, None]",
        "out, out_ref, rtol=0",
        "the Winograd forward forgets the bias",
    ),
    _row(
        WINOGRAD,
        "flipped, None, KERNEL - 1 - padding, m)",
        "flipped, None, padding, m)",
        "dx, dx_ref, rtol=0",
        "dx with the forward's padding p instead of 2 - p: equal at p = 1, so only the"
        " lesson's padding-0 layer sees it (lesson 13's exercise 2)",
    ),
    _row(
        WINOGRAD,
        "weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)",
        "weight[:, :, ::-1, :].transpose(1, 0, 2, 3)",
        "dx, dx_ref, rtol=0",
        "dx's kernel flipped in one axis only",
    ),
    _row(
        WINOGRAD,
        "(s[2], s[3], s[1], s[0], m * s[2], m * s[3])",
        "(s[3], s[2], s[1], s[0], m * s[2], m * s[3])",
        'dw, ref.params["weight"].grad',
        "the output-gradient tiles cut with rows and columns exchanged, before A dY A^T",
    ),
    _row(
        WINOGRAD,
        "db = dout.sum(axis=(0, 2, 3)) if need_bias else None",
        "db = dout.mean(axis=(0, 2, 3)) if need_bias else None",
        'db, ref.params["bias"].grad',
        "the bias gradient averaged instead of summed",
    ),
    # --- 3. the float32 error -------------------------------------------------------------
    _row(
        L13,
        "assert errors[mm] <= bound(mm, np.float32, 9 * ce, scale)",
        "assert errors[mm] <= bound(mm, np.float64, 9 * ce, scale)",
        "assert errors[mm] <= bound(mm, np.float64",
        "the check's own claim: the measured float32 error is above the same bound at"
        " float64's eps, so the bound is about float32 rounding (no plausible library bug"
        " both passes the float64 checks and leaves float32 above this worst-case bound)",
    ),
    _row(
        L13,
        "errors[mm] = np.abs(winograd.conv2d_forward(x32, w32, None, 1, mm) - want).max()",
        "errors[mm] = np.abs(winograd.conv2d_forward(x32, w32, None, 1, 2) - want).max()",
        "assert errors[4] > errors[2]",
        "the measurement runs F(2, 3) for both tile sizes: the claim F(4, 3) rounds more"
        " is then false, and the check says so",
    ),
    # --- 4. when it pays: the rule --------------------------------------------------------
    _row(
        WINOGRAD,
        "intensity = c * k / (c + k)",
        "intensity = c / 2",
        "assert chosen == (expected if on else 0), name",
        "the rule's channel intensity forgets the output channels (64 -> 32 would take F(4x4))",
    ),
    _row(
        WINOGRAD,
        "if intensity >= least_intensity and n * th * tw >= least_tiles:",
        "if intensity >= least_intensity and th * tw >= least_tiles:",
        "assert chosen == (expected if on else 0), name",
        "the rule counts one image's tiles, not the batch's",
    ),
    _row(
        WINOGRAD,
        "and padding <= KERNEL - 1",
        "and padding <= KERNEL",
        "assert chosen == (expected if on else 0), name",
        "the rule accepts padding 3, whose input gradient would need padding -1",
    ),
    _row(
        "minunet/accel/conv.py",
        "        if tile:\n",
        "        if False:\n",
        "assert isinstance(conv._cache, cache_type) or not on",
        "FastConv2d ignores the rule and never takes Winograd",
    ),
]
