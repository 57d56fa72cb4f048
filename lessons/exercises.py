"""The checks behind every lesson's exercises.

Each lesson ends with a "## Exercises" section: stubs for the reader to fill in (a
function whose body is ``...  # TODO``, or an answer set to ``None``), each followed by
``report(check_x, x)``. ``report`` runs the check and prints whether it passes; it never
raises, so a lesson with unfinished exercises still runs top to bottom.

A check is a function of the reader's object that raises ``AssertionError`` (with a
message saying what is wrong) unless the object does what the exercise asks, judged
against minunet itself. ``EXERCISES`` lists, per lesson, which name each check takes.
``tests/test_exercises.py`` runs every check against the solutions in
``lessons/solutions/NN_*.py`` (they must pass) and against the stubs in the lessons
(they must fail).

Mutation exercises ask which checks fail when one line of the library is changed. Their
checks answer it by running the mutated code: ``mutant`` loads a copy of a library
module with the change applied (in memory; the file is untouched), and the candidate
checks run against that copy.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from minunet.core.gradcheck import numerical_gradient
from minunet.core.im2col import col2im, conv_output_size, im2col
from minunet.data.augment import sample_bilinear
from minunet.data.loader import normalize
from minunet.model import UNet
from minunet.model.geometry import border, output_size
from minunet.nn import Conv2d, ConvTranspose2d, MaxPool2d, Parameter
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.metrics import metrics_from_confusion
from minunet.nn.optim import SGD, Adam

Check = Callable[[Any], None]


def report(check: Check, candidate: Any) -> bool:
    """Run one exercise's check on the reader's ``candidate``; print the verdict."""
    name = getattr(candidate, "__name__", None) or check.__name__.removeprefix("check_")
    if candidate is None:
        print(f"[ not yet ] {name}: no answer yet (replace None)")
        return False
    try:
        check(candidate)
    except Exception as err:  # a stub fails in any way it likes; say how, do not stop
        first = (str(err).strip().splitlines() or [""])[0]  # NumPy's messages run long
        print(f"[ not yet ] {name}: {type(err).__name__}: {first}")
        return False
    print(f"[ passed  ] {name}")
    return True


def mutant(module_name: str, find: str, replace: str) -> types.ModuleType:
    """A fresh copy of ``module_name`` with the one occurrence of ``find`` replaced."""
    spec = importlib.util.find_spec(module_name)
    source = open(spec.origin, encoding="utf-8").read()
    count = source.count(find)
    assert count == 1, f"{find!r} occurs {count} times in {spec.origin}, not once"
    module = types.ModuleType(module_name)
    module.__file__ = spec.origin
    exec(compile(source.replace(find, replace), spec.origin, "exec"), module.__dict__)
    return module


def _passes(check: Callable[[], None]) -> bool:
    try:
        check()
    except Exception:
        return False
    return True


def _check_mutation(answer: Any, candidates: dict[str, Callable[[Any], None]], mod: Any) -> None:
    """``answer`` must be the set of candidate names that fail on the mutated ``mod``.

    Every candidate must pass on the library as it is (else the question is void).
    """
    original = importlib.import_module(mod.__name__)
    broken = [name for name, run in candidates.items() if not _passes(lambda r=run: r(original))]
    assert not broken, f"the exercise is out of date: {broken} fail on the unchanged library"
    assert isinstance(answer, set | frozenset), (
        f"answer with a set of check names out of {sorted(candidates)}"
    )
    unknown = set(answer) - set(candidates)
    assert not unknown, f"no such checks {sorted(unknown)}; choose from {sorted(candidates)}"
    failing = {name for name, run in candidates.items() if not _passes(lambda r=run: r(mod))}
    assert set(answer) == failing, "not the checks that fail when the mutated code is run"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- lesson 00: arrays and the backend ---------------------------------------------------


def check_my_normalize(my_normalize: Callable) -> None:
    images = _rng().integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    got = my_normalize(images)
    want = normalize(images)
    assert got is not None and got.shape == want.shape, f"shape {getattr(got, 'shape', None)}"
    assert got.dtype == np.float32, f"dtype must be float32, got {got.dtype}"
    # Both are (u8 / 255 - mean) / std in float32, perhaps rounded in another order.
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def check_my_add_bias(my_add_bias: Callable) -> None:
    out = _rng().standard_normal((2, 4, 3, 5))
    bias = _rng(1).standard_normal(4)
    got = my_add_bias(out, bias)
    np.testing.assert_array_equal(got, out + bias[:, None, None])


# --- lesson 01: convolution as im2col ---------------------------------------------------


def check_my_conv_output_size(my_conv_output_size: Callable) -> None:
    for size in (1, 5, 8, 33):
        for k in (1, 2, 3, 5):
            for s in (1, 2, 3):
                for p in (0, 1, 2):
                    for d in (1, 2):
                        want = conv_output_size(size, k, s, p, d)
                        got = my_conv_output_size(size, k, s, p, d)
                        assert got == want, f"size {size} k {k} s {s} p {p} d {d}: {got} != {want}"


def check_my_im2col(my_im2col: Callable) -> None:
    x = _rng().standard_normal((2, 3, 7, 6))
    for k, s, p in ((3, 1, 0), (3, 1, 1), (2, 2, 0), (3, 2, 1)):
        got = my_im2col(x, k, s, p)
        np.testing.assert_array_equal(got, im2col(x, k, k, s, p), err_msg=f"k {k} s {s} p {p}")


# --- lesson 02: backpropagation through convolution --------------------------------------


def check_my_col2im(my_col2im: Callable) -> None:
    for k, s, p in ((3, 1, 0), (3, 1, 1), (2, 2, 0), (3, 2, 1)):
        shape = (2, 3, 7, 6)
        ho, wo = conv_output_size(7, k, s, p), conv_output_size(6, k, s, p)
        cols = _rng(k + s + p).standard_normal((2, 3 * k * k, ho * wo))
        got = my_col2im(cols, shape, k, s, p)
        # The same additions, perhaps in another order: a few roundings of O(1) sums.
        np.testing.assert_allclose(
            got, col2im(cols, shape, k, k, s, p), rtol=1e-12, atol=1e-12, err_msg=f"k{k} s{s} p{p}"
        )


def _adjoint(col2im_fn: Callable, k: int, s: int) -> None:
    """<im2col(x), c> == <x, col2im(c)>: col2im is im2col's adjoint."""
    x = _rng().standard_normal((1, 2, 6, 6))
    cols = im2col(x, k, k, s)
    c = _rng(1).standard_normal(cols.shape)
    lhs, rhs = (cols * c).sum(), (x * col2im_fn(c, x.shape, k, k, s)).sum()
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


COL2IM_CHECKS = {
    "adjoint_k3_s1": lambda m: _adjoint(m.col2im, 3, 1),
    "adjoint_k2_s2": lambda m: _adjoint(m.col2im, 2, 2),
    "one_by_one": lambda m: _adjoint(m.col2im, 1, 1),
}


def check_answer_col2im_mutation(answer: Any) -> None:
    mod = mutant("minunet.core.im2col", "] += (", "] = (")
    _check_mutation(answer, COL2IM_CHECKS, mod)


# --- lesson 03: pooling and transposed convolution ---------------------------------------


def check_my_maxpool_backward(my_maxpool_backward: Callable) -> None:
    pool = MaxPool2d(2)
    # Random values (no ties), then small integers (many ties: the first maximum of each
    # window in row-major order gets the gradient, as in MaxPool2d).
    for x in (_rng().standard_normal((2, 3, 6, 8)), _rng(1).integers(0, 3, (2, 3, 6, 8)) * 1.0):
        dout = _rng(2).standard_normal((2, 3, 3, 4))
        pool.forward(x)
        np.testing.assert_array_equal(my_maxpool_backward(x, dout), pool.backward(dout))


def check_my_upconv2x2(my_upconv2x2: Callable) -> None:
    up = ConvTranspose2d(3, 4, 2, stride=2, bias=False, dtype=np.float64, rng=_rng())
    x = _rng(1).standard_normal((2, 3, 5, 4))
    got = my_upconv2x2(x, up.params["weight"].data)
    np.testing.assert_allclose(got, up.forward(x), rtol=1e-12, atol=1e-12)


# --- lesson 04: the U-Net ---------------------------------------------------------------


def check_my_valid_output_size(my_valid_output_size: Callable) -> None:
    for depth in (1, 2, 3, 4):
        net = UNet(1, 2, 1, depth, padding="valid")
        for size in range(1, 300):
            want = output_size(size, depth, "valid")
            assert want is None or want == net.output_size(size)
            got = my_valid_output_size(size, depth)
            assert got == want, f"depth {depth}, size {size}: {got} != {want}"


def _tiny_unet(unet_module: Any) -> tuple[Any, np.ndarray]:
    net = unet_module.UNet(1, 2, 2, 1, batchnorm=False, dtype=np.float64, seed=0)
    return net, _rng().standard_normal((1, 1, 4, 4))


def _unet_shape(m: Any) -> None:
    net, x = _tiny_unet(m)
    assert net.forward(x).shape == (1, 2, 4, 4)


def _unet_gradient(m: Any, param: str) -> None:
    """Central differences for one parameter of a tiny float64 U-Net (loss = sum(out * r))."""
    net, x = _tiny_unet(m)
    r = _rng(1).standard_normal((1, 2, 4, 4))
    p = dict(net.named_parameters())[param]
    net.forward(x)
    net.zero_grad()
    net.backward(r)
    numeric = numerical_gradient(lambda: float((net.forward(x) * r).sum()), p.data)
    # eps 1e-6: truncation ~eps^2, rounding ~1e-16 / eps = 1e-10 against O(1) gradients.
    np.testing.assert_allclose(p.grad, numeric, rtol=1e-6, atol=1e-8)


UNET_CHECKS = {
    "output_shape": _unet_shape,
    "gradient_head": lambda m: _unet_gradient(m, "head.weight"),
    "gradient_first_conv": lambda m: _unet_gradient(m, "encoder.0.conv1.weight"),
}


def check_answer_skip_mutation(answer: Any) -> None:
    mod = mutant("minunet.model.unet", "d += dskips.pop()", "d = dskips.pop()")
    _check_mutation(answer, UNET_CHECKS, mod)


# --- lesson 05: loss and metrics --------------------------------------------------------


def check_my_iou(my_iou: Callable) -> None:
    conf = _rng().integers(0, 50, (4, 4))
    want = list(metrics_from_confusion(conf)["iou"].values())
    np.testing.assert_allclose(np.asarray(my_iou(conf), dtype=float), want, rtol=1e-12)


def check_my_weighted_ce(my_weighted_ce: Callable) -> None:
    z = _rng().standard_normal((2, 3, 4, 5)) * 3
    y = _rng(1).integers(0, 3, (2, 4, 5))
    weights = np.array([0.5, 2.0, 4.0])
    want = float(SoftmaxCrossEntropy(class_weights=weights).forward(z, y))
    np.testing.assert_allclose(float(my_weighted_ce(z, y, weights)), want, rtol=1e-12)


# --- lesson 06: the data ----------------------------------------------------------------


def check_my_bilinear(my_bilinear: Callable) -> None:
    image = _rng().standard_normal((6, 7))
    points = [(0.0, 0.0), (2.0, 3.0), (1.25, 4.5), (4.9, 0.1), (5.0, 6.0)]
    points += [tuple(p) for p in _rng(1).uniform(0, 5, (10, 2))]
    for y, x in points:
        want = sample_bilinear(image[None], np.array([[[y]]]), np.array([[[x]]]))[0, 0, 0]
        np.testing.assert_allclose(my_bilinear(image, y, x), want, rtol=1e-12, atol=1e-14)


# --- lesson 07: training ----------------------------------------------------------------


def check_my_train_step(my_train_step: Callable) -> None:
    x = _rng().standard_normal((2, 3, 8, 8))
    y = _rng(1).integers(0, 3, (2, 8, 8))
    mine, ref = (UNet(3, 3, 2, 1, dtype=np.float64, seed=0) for _ in range(2))
    for p in mine.parameters():  # left over from a previous step: must not leak in
        p.grad[...] = 1.0
    loss = my_train_step(mine, SoftmaxCrossEntropy(), Adam(mine.parameters(), lr=1e-2), x, y)
    criterion, opt = SoftmaxCrossEntropy(), Adam(ref.parameters(), lr=1e-2)
    want = float(criterion(ref.forward(x, train=True), y))
    opt.zero_grad()
    ref.backward(criterion.backward())
    opt.step()
    np.testing.assert_allclose(float(loss), want, rtol=1e-12)
    for (name, a), b in zip(mine.named_parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14, err_msg=name)


# --- lesson 08: the GPU -----------------------------------------------------------------


def check_my_col2im_source_row(my_col2im_source_row: Callable) -> None:
    """Against im2col's own gather: tap i of output row oh reads row oh*s - p + i*d."""
    for h_in, k, s, p, d in ((7, 3, 1, 1, 1), (9, 3, 2, 1, 1), (10, 3, 1, 2, 2), (8, 2, 2, 0, 1)):
        ho = conv_output_size(h_in, k, s, p, d)
        for i in range(k):
            read_by = {oh * s - p + i * d: oh for oh in range(ho)}
            for h in range(h_in):
                got = my_col2im_source_row(h, i, s, p, d, ho)
                want = read_by.get(h)
                assert got == want, f"h {h} tap {i} (s {s} p {p} d {d}): {got} != {want}"


# --- lesson 09: a fast convolution ------------------------------------------------------


def check_my_flipped_kernel(my_flipped_kernel: Callable) -> None:
    for k, p in ((3, 1), (3, 0), (5, 2)):
        conv = Conv2d(3, 4, k, padding=p, dtype=np.float64, rng=_rng(k))
        x = _rng(1).standard_normal((2, 3, 7, 6))
        dout = _rng(2).standard_normal(conv.forward(x).shape)
        dx = conv.backward(dout)
        flipped = Conv2d(4, 3, k, padding=k - 1 - p, bias=False, dtype=np.float64)
        flipped.params["weight"].data = my_flipped_kernel(conv.params["weight"].data)
        np.testing.assert_allclose(flipped.forward(dout), dx, rtol=1e-12, atol=1e-12)


# --- lesson 10: initialisation and optimisers --------------------------------------------


def _adam_steps(step_fn: Callable, lr: float = 0.1, steps: int = 6) -> None:
    p0 = _rng().standard_normal(5)
    grads = _rng(1).standard_normal((steps, 5))
    param = Parameter(p0.copy())
    opt = Adam([param], lr=lr)
    p, m, v = p0.copy(), np.zeros(5), np.zeros(5)
    for t in range(1, steps + 1):
        param.grad[...] = grads[t - 1]
        opt.step()
        p, m, v = step_fn(p, grads[t - 1], m, v, t, lr, 0.9, 0.999, 1e-8)
        # The same real numbers, rounded in a different order: 1e-13 relative.
        np.testing.assert_allclose(p, param.data, rtol=1e-13, err_msg=f"step {t}")


def check_my_adam(my_adam: Callable) -> None:
    _adam_steps(my_adam)


def check_my_nesterov(my_nesterov: Callable) -> None:
    param = Parameter(_rng().standard_normal(5))
    opt = SGD([param], lr=0.05, momentum=0.9, nesterov=True)
    p, v = param.data.copy(), np.zeros(5)
    for t, g in enumerate(_rng(1).standard_normal((6, 5))):
        param.grad[...] = g
        opt.step()
        p, v = my_nesterov(p, g, v, 0.05, 0.9)
        np.testing.assert_allclose(p, param.data, rtol=1e-13, err_msg=f"step {t + 1}")


def _first_step_is_lr_sign(m: Any) -> None:
    param = Parameter(np.array([3.0, -0.01, 200.0]))
    param.grad[...] = [0.5, -2.0, 1e-3]
    m.Adam([param], lr=0.1).step()
    np.testing.assert_allclose(param.data, [2.9, 0.09, 199.9], rtol=1e-6)


def _adamw_idle_shrink(m: Any) -> None:
    param = Parameter(np.array([2.0]))
    m.AdamW([param], lr=0.1, weight_decay=0.01).step()  # zero gradient
    assert param.data[0] == 2.0 * (1 - 0.1 * 0.01)


def _sgd_momentum(m: Any) -> None:
    param = Parameter(np.array([1.0]))
    opt = m.SGD([param], lr=0.1, momentum=0.9)
    for _ in range(2):
        param.grad[...] = 1.0
        opt.step()
    np.testing.assert_allclose(param.data, [1.0 - 0.1 - 0.1 * 1.9], rtol=1e-15)


OPTIM_CHECKS = {
    "first_step_is_lr_sign": _first_step_is_lr_sign,
    "adamw_idle_shrink": _adamw_idle_shrink,
    "sgd_momentum": _sgd_momentum,
}


def check_answer_bias_correction_mutation(answer: Any) -> None:
    mod = mutant("minunet.nn.optim", "c1 = 1 - self.beta1**self.steps", "c1 = 1.0")
    _check_mutation(answer, OPTIM_CHECKS, mod)


# --- lesson 11: debugging ---------------------------------------------------------------


def check_my_prior_baseline(my_prior_baseline: Callable) -> None:
    y = _rng().choice(3, size=(2, 6, 6), p=[0.6, 0.3, 0.1])
    prior = np.bincount(y.reshape(-1), minlength=3) / y.size
    logits = np.broadcast_to(np.log(prior)[None, :, None, None], (2, 3, 6, 6)).copy()
    want = float(SoftmaxCrossEntropy().forward(logits, y))
    np.testing.assert_allclose(float(my_prior_baseline(y, 3)), want, rtol=1e-12)


def check_my_dead_channels(my_dead_channels: Callable) -> None:
    acts = np.maximum(_rng().standard_normal((3, 6, 4, 4)), 0)
    acts[:, [1, 4]] = 0
    acts[0, 2, 0, 0] = 0.5  # channel 2 fires once: alive
    acts[:, 2] = 0
    acts[1, 2, 3, 3] = 1e-9
    got = np.asarray(my_dead_channels(acts))
    np.testing.assert_array_equal(got, [False, True, False, False, True, False])


def _ignored_get_no_gradient(m: Any) -> None:
    z = _rng().standard_normal((1, 3, 2, 3))
    y = np.array([[[0, 255, 1], [2, 1, 255]]])
    ce = m.SoftmaxCrossEntropy(ignore_index=255)
    ce.forward(z, y)
    assert np.all(ce.backward()[0, :, y[0] == 255] == 0)


def _plain_mean(m: Any) -> None:
    z, y = _rng().standard_normal((1, 3, 2, 3)), _rng(1).integers(0, 3, (1, 2, 3))
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    want = -np.take_along_axis(log_p, y[:, None], axis=1).mean()
    np.testing.assert_allclose(float(m.SoftmaxCrossEntropy().forward(z, y)), want, rtol=1e-12)


def _class_weights(m: Any) -> None:
    z, y = _rng().standard_normal((1, 3, 2, 3)), _rng(1).integers(0, 3, (1, 2, 3))
    ce = m.SoftmaxCrossEntropy(class_weights=np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(
        float(ce.forward(z, y)), float(m.SoftmaxCrossEntropy().forward(z, y)), rtol=1e-12
    )


LOSS_CHECKS = {
    "ignored_get_no_gradient": _ignored_get_no_gradient,
    "plain_mean": _plain_mean,
    "class_weights": _class_weights,
}


def check_answer_ignore_mutation(answer: Any) -> None:
    mod = mutant("minunet.nn.losses", "valid = target != self.ignore_index", "valid = target >= 0")
    _check_mutation(answer, LOSS_CHECKS, mod)


# --- lesson 12: seeing inside -----------------------------------------------------------


def _support_box(layers: list[tuple[str, int]]) -> int:
    """Side of the bounding box of d(one output)/d(input) through library layers, over a
    batch of random inputs (a union: max pooling routes each one through one pixel)."""
    rng = _rng(5)
    chain = [
        Conv2d(1, 1, k, dtype=np.float64, rng=rng) if kind == "conv" else MaxPool2d(k)
        for kind, k in layers
    ]
    x = rng.standard_normal((32, 1, 64, 64))
    h = x
    for layer in chain:
        h = layer.forward(h)
    d = np.zeros_like(h)
    d[:, 0, h.shape[2] // 2, h.shape[3] // 2] = 1.0
    for layer in reversed(chain):
        d = layer.backward(d)
    rows = np.flatnonzero(np.abs(d).sum(axis=(0, 1, 3)))
    return int(rows[-1] - rows[0] + 1)


def check_my_receptive_field(my_receptive_field: Callable) -> None:
    for layers in (
        [("conv", 3)],
        [("conv", 3), ("conv", 3)],
        [("conv", 3), ("pool", 2), ("conv", 3)],
        [("conv", 5), ("pool", 2), ("conv", 3), ("pool", 2), ("conv", 3)],
        [("pool", 2), ("pool", 2), ("conv", 1), ("conv", 3)],
    ):
        got, want = my_receptive_field(layers), _support_box(layers)
        assert got == want, f"{layers}: {got} != the gradient's support {want}"


def _tiled_run(m: Any, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    net = UNet(3, 2, 2, 1, padding="valid", dtype=np.float32, seed=0)
    tile = 20
    pad = border(1, "valid")  # pixels the net trims from each side
    tiled = m.predict_tiled(net.infer, image, tile, num_classes=2, depth=1, border=pad)
    mirrored = np.pad(image, [(0, 0), (pad, pad), (pad, pad)], mode="symmetric")
    return tiled, net.infer(mirrored[None])[0]


def _tiled_equals_whole(m: Any) -> None:
    tiled, whole = _tiled_run(m, _rng().standard_normal((3, 24, 24)).astype(np.float32))
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)


def _tiled_shape(m: Any) -> None:
    tiled, _ = _tiled_run(m, _rng().standard_normal((3, 24, 24)).astype(np.float32))
    assert tiled.shape == (2, 24, 24)


def _tiled_class_map(m: Any) -> None:
    image = _rng().standard_normal((3, 24, 24)).astype(np.float32)
    net = UNet(3, 2, 2, 1, padding="valid", dtype=np.float32, seed=0)
    args = dict(num_classes=2, depth=1, border=border(1, "valid"))
    logits = m.predict_tiled(net.infer, image, 20, **args)
    classes = m.predict_tiled(net.infer, image, 20, output="classes", **args)
    np.testing.assert_array_equal(classes, logits.argmax(axis=0))


TILING_CHECKS = {
    "tiled_equals_whole": _tiled_equals_whole,
    "tiled_shape": _tiled_shape,
    "tiled_class_map": _tiled_class_map,
}


def check_answer_mirror_mutation(answer: Any) -> None:
    mod = mutant("minunet.infer.tiling", 'mode="symmetric")', 'mode="reflect")')
    _check_mutation(answer, TILING_CHECKS, mod)


# --- lesson 13: Winograd convolutions ---------------------------------------------------


def _winograd_product(at: np.ndarray, g: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """T[i, k, l] = sum_j AT[i, j] G[j, k] BT[j, l]: the coefficient of g_k d_l in y_i."""
    return np.einsum("ij,jk,jl->ikl", at, g, bt)


def _parallel(row: np.ndarray, direction: np.ndarray) -> bool:
    """Whether ``row`` is a nonzero multiple of ``direction`` (a row scaling is allowed)."""
    along = row @ direction / (direction @ direction)
    return abs(along) > 1e-12 and np.allclose(row, along * direction, rtol=0, atol=1e-10)


def check_my_toom_cook(my_toom_cook: Callable) -> None:
    from minunet.accel import winograd  # here, not at the top: only lesson 13 needs it

    shift = np.array([[[float(l == i + k) for l in range(4)] for k in range(3)] for i in range(2)])
    rng = _rng()
    for points in ((0, 1, -1), (0, 1, 2), (0.5, -1, 3), (-2, 0, 0.25)):
        at, g, bt = (np.asarray(a, dtype=np.float64) for a in my_toom_cook(points))
        shapes = (at.shape, g.shape, bt.shape)
        assert shapes == ((2, 4), (4, 3), (4, 4)), f"points {points}: shapes {shapes}"
        # Row j of G (column j of A^T) evaluates at point j, up to a scaling; the last
        # row is the point at infinity (the leading coefficient).
        for j, p in enumerate(points):
            assert _parallel(g[j], np.array([1.0, p, p * p])), f"G row {j} is not at point {p}"
            assert _parallel(at[:, j], np.array([1.0, p])), f"A^T column {j}: not at point {p}"
        assert _parallel(g[3], np.array([0.0, 0.0, 1.0])), "G row 3 is not the point at infinity"
        # Entries up to about 30 for these points: sums of a few such products, 1e-10.
        for _ in range(3):
            d, taps = rng.standard_normal(4), rng.standard_normal(3)
            direct = np.array([taps @ d[i : i + 3] for i in range(2)])
            got = at @ ((g @ taps) * (bt @ d))
            np.testing.assert_allclose(got, direct, rtol=1e-10, atol=1e-10, err_msg=f"{points}")
        np.testing.assert_allclose(_winograd_product(at, g, bt), shift, rtol=0, atol=1e-10)
    mine = _winograd_product(*my_toom_cook(winograd.POINTS[2]))
    library = _winograd_product(*winograd.toom_cook(2))
    np.testing.assert_allclose(mine, library, rtol=0, atol=1e-12, err_msg="against toom_cook(2)")


def _winograd_against_reference(m: Any, padding: int, which: str) -> None:
    """One output of minunet.accel.winograd (or a mutated copy ``m``) against Conv2d."""
    ref = Conv2d(3, 4, 3, padding=padding, dtype=np.float64, rng=_rng(7))
    w, b = ref.params["weight"].data, ref.params["bias"].data
    x = _rng(8).standard_normal((2, 3, 6, 7))
    out_ref = ref.forward(x)
    dout = _rng(9).standard_normal(out_ref.shape)
    dx_ref = ref.backward(dout)
    if which == "forward":
        got, want = m.conv2d_forward(x, w, b, padding), out_ref
    else:
        dx, dw, _ = m.conv2d_backward(x, w, dout, padding, False)
        got, want = (dx, dx_ref) if which == "dx" else (dw, ref.params["weight"].grad)
    # F(2,3) in float64: growth 81 x eps x at most 84 terms of size ~10 is ~2e-11.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


WINOGRAD_CHECKS = {
    "dx_padding_1": lambda m: _winograd_against_reference(m, 1, "dx"),
    "dx_padding_0": lambda m: _winograd_against_reference(m, 0, "dx"),
    "dw_padding_0": lambda m: _winograd_against_reference(m, 0, "dw"),
    "forward_padding_0": lambda m: _winograd_against_reference(m, 0, "forward"),
}


def check_answer_dx_padding_mutation(answer: Any) -> None:
    mod = mutant(
        "minunet.accel.winograd",
        "flipped, None, KERNEL - 1 - padding, m)",
        "flipped, None, padding, m)",
    )
    _check_mutation(answer, WINOGRAD_CHECKS, mod)


# --- which name each lesson's checks take -------------------------------------------------

EXERCISES: dict[str, list[tuple[str, Check]]] = {
    "00": [("my_normalize", check_my_normalize), ("my_add_bias", check_my_add_bias)],
    "01": [("my_conv_output_size", check_my_conv_output_size), ("my_im2col", check_my_im2col)],
    "02": [
        ("my_col2im", check_my_col2im),
        ("answer_col2im_mutation", check_answer_col2im_mutation),
    ],
    "03": [
        ("my_maxpool_backward", check_my_maxpool_backward),
        ("my_upconv2x2", check_my_upconv2x2),
    ],
    "04": [
        ("my_valid_output_size", check_my_valid_output_size),
        ("answer_skip_mutation", check_answer_skip_mutation),
    ],
    "05": [("my_iou", check_my_iou), ("my_weighted_ce", check_my_weighted_ce)],
    "06": [("my_bilinear", check_my_bilinear)],
    "07": [("my_train_step", check_my_train_step)],
    "08": [("my_col2im_source_row", check_my_col2im_source_row)],
    "09": [("my_flipped_kernel", check_my_flipped_kernel)],
    "10": [
        ("my_adam", check_my_adam),
        ("my_nesterov", check_my_nesterov),
        ("answer_bias_correction_mutation", check_answer_bias_correction_mutation),
    ],
    "11": [
        ("my_prior_baseline", check_my_prior_baseline),
        ("my_dead_channels", check_my_dead_channels),
        ("answer_ignore_mutation", check_answer_ignore_mutation),
    ],
    "12": [
        ("my_receptive_field", check_my_receptive_field),
        ("answer_mirror_mutation", check_answer_mirror_mutation),
    ],
    "13": [
        ("my_toom_cook", check_my_toom_cook),
        ("answer_dx_padding_mutation", check_answer_dx_padding_mutation),
    ],
}
