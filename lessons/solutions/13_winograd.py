"""Solutions to lesson 13's exercises."""

import numpy as np


def my_toom_cook(points):
    """Three distinct finite points -> (A^T (2, 4), G (4, 3), B^T (4, 4)) of F(2, 3).

    Section 1's derivation: E_q evaluates a polynomial of q coefficients at the points and
    at infinity; A^T = E_2^T, G = E_3 and B^T = E_4^{-T}, with the Lagrange denominators
    moved from the rows of B^T into the rows of G.
    """

    def evaluation(q):
        finite = [[float(p) ** e for e in range(q)] for p in points]
        return np.array(finite + [[0.0] * (q - 1) + [1.0]])

    denominators = [np.prod([p - q for q in points if q != p]) for p in points] + [1.0]
    scale = np.array(denominators, dtype=np.float64)[:, None]
    return evaluation(2).T, evaluation(3) / scale, np.linalg.inv(evaluation(4)).T * scale


# Only the input gradient's padding changes, and 2 - p == p at p = 1: a layer with
# padding 1 (the U-Net's) cannot see the mistake; with padding 0, dx comes out the wrong
# size. The forward and dW do not use that padding.
answer_dx_padding_mutation = {"dx_padding_0"}
