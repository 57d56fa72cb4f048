"""Mutations of the library that lessons 10-12 must catch.

Each row changes one snippet of minunet (``find`` occurs exactly once in ``path``) into a
plausible bug (``replace``); run in small mode, lesson ``lesson`` must then fail.
``check`` names the assert that catches it: a piece of its source line in the lesson
(the exercise cells are not the catch: they report and go on). The harness that applies
them is tests/test_lesson_mutations.py.
"""

MUTATIONS = [
    # --- lesson 10: initialisation and optimisers -------------------------------------
    dict(
        lesson="10",
        path="minunet/nn/base.py",
        find="np.sqrt(2.0 / fan_in)",
        replace="np.sqrt(1.0 / fan_in)",
        check='np.testing.assert_array_equal(conv.params["weight"].data, by_hand)',
    ),
    dict(
        lesson="10",
        path="minunet/nn/optim.py",
        find="v *= self.momentum",
        replace="v *= 0.0",
        check="np.testing.assert_array_equal(lib, hand_momentum(lr, mu, nesterov))",
    ),
    dict(
        lesson="10",
        path="minunet/nn/optim.py",
        find="g = g + self.momentum * v if self.nesterov else v",
        replace="g = v",
        check="np.testing.assert_array_equal(lib, hand_momentum(lr, mu, nesterov))",
    ),
    dict(
        lesson="10",
        path="minunet/nn/optim.py",
        find="c1 = 1 - self.beta1**self.steps",
        replace="c1 = 1.0",
        check="np.testing.assert_allclose(lib_adam, hand_adam(lr_adam)",
    ),
    dict(
        lesson="10",
        path="minunet/nn/optim.py",
        find="p.data *= 1 - self.lr * self.weight_decay",
        replace="p.data *= 1 - self.weight_decay",
        check="hand_adam(lr_adam, wd=wd, decoupled=True)",
    ),
    dict(
        lesson="10",
        path="minunet/nn/optim.py",
        find="g = g + self.weight_decay * p.data",
        replace="g = g",
        check="library_run(Adam, lr=lr_adam, weight_decay=wd), hand_adam(lr_adam, wd=wd)",
    ),
    # --- lesson 11: debugging -----------------------------------------------------------
    dict(
        lesson="11",
        path="minunet/nn/optimizer_base.py",
        find="p.grad[...] = 0",
        replace="pass",
        check='assert good["loss"][-1] < 0.7 * entropy',
    ),
    dict(
        lesson="11",
        path="minunet/nn/relu.py",
        find="return dout * (out > 0)",
        replace="return dout",
        check="assert np.all(dead_grad == 0)",
    ),
    dict(
        lesson="11",
        path="minunet/nn/batchnorm.py",
        find="if self.training:",
        replace="if True:",
        check="np.testing.assert_allclose(alone_eval, in_batch_eval",
    ),
    dict(
        lesson="11",
        path="minunet/nn/losses.py",
        find="weights = valid.astype(logits.dtype)  # (N, H, W)",
        replace="weights = xp.ones(target.shape, dtype=logits.dtype)  # (N, H, W)",
        check="np.testing.assert_allclose(loss_right, float(labelled), rtol=1e-12)",
        note="ignored pixels still weigh 1, as targets of class 0",
    ),
    dict(
        lesson="11",
        path="minunet/nn/losses.py",
        find="bad = (target < 0) | (target >= k)",
        replace="bad = target < 0",
        check='raise AssertionError(f"a label of 255 reached the loss unchecked: {err}")',
        note="the label check forgets the upper bound: 255 reaches the indexing",
    ),
    # --- lesson 12: seeing inside -------------------------------------------------------
    dict(
        lesson="12",
        path="minunet/model/unet.py",
        find="d += dskips.pop()",
        replace="d = dskips.pop()",
        check="assert (rows[0], rows[-1], cols[0], cols[-1]) == (lo[pos], hi[pos]",
    ),
    dict(
        lesson="12",
        path="minunet/infer/tiling.py",
        find='np.pad(array, pads, mode="symmetric")',
        replace='np.pad(array, pads, mode="reflect")',
        check="np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)",
    ),
    dict(
        lesson="12",
        path="minunet/infer/tiling.py",
        find="step = out // align * align",
        replace="step = out",  # tiles every out px: off the pooling grid at depth 3
        check="np.testing.assert_allclose(tiled3, whole3, rtol=1e-5, atol=1e-5)",
    ),
]
