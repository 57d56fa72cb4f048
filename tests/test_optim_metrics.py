"""Optimisers against PyTorch's, schedules, clipping, and the metrics."""

import math

import numpy as np
import pytest

from minunet.nn import Parameter
from minunet.nn.clip import clip_grad_norm
from minunet.nn.metrics import confusion_matrix, metrics_from_confusion
from minunet.nn.optim import SGD, Adam, AdamW, learning_rate, make_optimizer

torch = pytest.importorskip("torch", reason="PyTorch (the reference) is not installed")


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda p: SGD(p, 0.1, momentum=0.0), lambda p: torch.optim.SGD(p, 0.1)),
        (
            lambda p: SGD(p, 0.1, 0.9, 1e-2),
            lambda p: torch.optim.SGD(p, 0.1, 0.9, weight_decay=1e-2),
        ),
        (
            lambda p: SGD(p, 0.1, 0.9, nesterov=True),
            lambda p: torch.optim.SGD(p, 0.1, 0.9, nesterov=True),
        ),
        (
            lambda p: Adam(p, 1e-2, weight_decay=1e-3),
            lambda p: torch.optim.Adam(p, 1e-2, weight_decay=1e-3),
        ),
        (
            lambda p: AdamW(p, 1e-2, weight_decay=0.1),
            lambda p: torch.optim.AdamW(p, 1e-2, weight_decay=0.1),
        ),
        # Defaults (AdamW's weight decay 1e-2, Adam's none) and the options by position.
        (lambda p: Adam(p), lambda p: torch.optim.Adam(p)),
        (lambda p: AdamW(p), lambda p: torch.optim.AdamW(p)),
        (
            lambda p: AdamW(p, 1e-2, (0.8, 0.99), 1e-6, 0.05),
            lambda p: torch.optim.AdamW(p, 1e-2, (0.8, 0.99), 1e-6, 0.05),
        ),
    ],
)
def test_optimisers_match_torch(ours, theirs):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    p = Parameter(w0.copy())
    pt = torch.tensor(w0.copy(), requires_grad=True)
    opt, ref = ours([p]), theirs([pt])
    for _ in range(5):
        g = rng.standard_normal(w0.shape)
        p.grad[...] = g
        pt.grad = torch.tensor(g)
        opt.step()
        ref.step()
    np.testing.assert_allclose(p.data, pt.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimiser_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((2, 3)) for _ in range(6)]
    a = Parameter(np.ones((2, 3)))
    opt = make_optimizer("adam", [a], 1e-2)
    for g in grads[:3]:
        a.grad[...] = g
        opt.step()
    b = Parameter(a.data.copy())
    opt_b = make_optimizer("adam", [b], 1e-2)
    opt_b.load_state_dict(opt.state_dict())
    for g in grads[3:]:
        a.grad[...] = g
        b.grad[...] = g
        opt.step()
        opt_b.step()
    np.testing.assert_array_equal(a.data, b.data)


def test_schedules():
    assert learning_rate(0, 100, 1.0, "constant", warmup_steps=10) == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert learning_rate(99, 100, 1.0, "cosine", warmup_steps=10) == pytest.approx(0.0)
    mid = learning_rate(10 + 89 // 2, 100, 1.0, "cosine", warmup_steps=10)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * (44 / 89))))
    assert learning_rate(25, 100, 1.0, "step", step_size=10, gamma=0.5) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, 1, 1.0, "linear")


def test_clip_grad_norm():
    p = Parameter(np.zeros(4))
    p.grad[...] = [3.0, 4.0, 0.0, 0.0]
    norm = clip_grad_norm([p], 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert np.linalg.norm(p.grad) == pytest.approx(1.0, rel=1e-5)


def test_metrics_by_hand():
    target = np.array([[[0, 0, 1, 1], [2, 2, 1, 255]]])
    pred = np.array([[[0, 1, 1, 1], [2, 0, 1, 0]]])
    conf = confusion_matrix(pred, target, 3, ignore_index=255)
    np.testing.assert_array_equal(conf, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    m = metrics_from_confusion(conf, ["pet", "background", "outline"])
    assert m["pixel_accuracy"] == pytest.approx(5 / 7)
    assert m["iou"]["pet"] == pytest.approx(1 / 3)  # tp 1, row 2, col 2
    assert m["iou"]["background"] == pytest.approx(3 / 4)  # tp 3, row 3, col 4
    assert m["iou"]["outline"] == pytest.approx(1 / 2)
    assert m["dice"]["background"] == pytest.approx(6 / 7)
    assert m["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert m["fg_iou"] == m["iou"]["pet"]


def test_metrics_skip_absent_classes_in_mean_iou():
    conf = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]])
    m = metrics_from_confusion(conf)
    assert m["miou"] == 1.0 and math.isnan(m["iou"]["class 2"])
