"""benchmarks/winograd_rule.py: the U-Net's 3x3 convolutions, each path timed, the rule's pick."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch", reason="the benchmark's setup configures PyTorch's threads")
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import winograd_rule  # noqa: E402

from minunet.accel import winograd  # noqa: E402


def test_the_shapes_are_every_distinct_3x3_convolution_after_the_first():
    shapes = winograd_rule.unet_convolutions(32)
    levels = [(32, 128), (64, 64), (128, 32), (256, 16), (512, 8)]
    expected = {(c, c, s) for c, s in levels}  # each level's second convolution
    expected |= {(c // 2, c, s) for c, s in levels[1:]}  # after each pool: c/2 -> c
    expected |= {(2 * c, c, s) for c, s in levels[:-1]}  # the decoder's joins: 2c -> c
    assert set(shapes) == expected and len(shapes) == len(expected) == 13
    assert [s[2] for s in shapes] == sorted((s[2] for s in shapes), reverse=True)


def test_each_path_computes_the_same_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 8, 8))
    w = rng.standard_normal((5, 6, 3, 3))
    d = rng.standard_normal((2, 5, 8, 8))
    results = [winograd_rule.path_call(t)(x, w, d) for t in winograd_rule.PATHS.values()]
    for got in results[1:]:
        for a, b in zip(got, results[0], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_a_tiny_run_prints_a_row_per_shape_with_the_rules_pick(capsys, monkeypatch):
    monkeypatch.setattr(common, "PAUSE_S", 0.0)
    monkeypatch.setattr(common, "WARMUP_S", 0.0)
    monkeypatch.setattr(winograd, "RULE", ((4, 2, 1), (2, 1, 1)))  # F(4x4) from h = 2
    switch = winograd.ENABLED
    winograd_rule.main(["--base", "2", "--batch", "1", "--rounds", "1", "--side", "8", "--error"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("2 ")]
    # at 8 px, base 2 (the bottleneck): 16->32 after the pool and 32->32
    assert [r[1] for r in rows] == ["16->32", "32->32"]
    assert all(r[-4] == "F(4x4,3x3)" for r in rows)  # the rule's column, as patched
    assert all(float(e) < 1e-4 for r in rows for e in r[-3:])  # the three error columns
    assert winograd.ENABLED == switch and winograd.FORCED is None


def test_the_torch_contender_computes_the_same_convolution():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 8, 8))
    w = rng.standard_normal((5, 6, 3, 3))
    d = rng.standard_normal((2, 5, 8, 8))
    ours = winograd_rule.path_call(0)(x, w, d)
    theirs = [t.detach().numpy() for t in winograd_rule.torch_call(x, w, d)()]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_a_tiny_run_with_torch_prints_its_time_and_the_rules_ratio(capsys, monkeypatch):
    monkeypatch.setattr(common, "PAUSE_S", 0.0)
    monkeypatch.setattr(common, "WARMUP_S", 0.0)
    winograd_rule.main(["--base", "2", "--batch", "4", "--rounds", "1", "--side", "8", "--torch"])
    out = capsys.readouterr().out
    header = next(line.split() for line in out.splitlines() if line.startswith("base"))
    assert header[-3:] == ["torch", "ms", "rule/torch"]
    rows = [line.split() for line in out.splitlines() if line.startswith("2 ")]
    assert len(rows) == 2
    for r in rows:
        blocked, f2, f4 = (float(v) for v in r[3:6])
        rule, torch_ms, ratio = r[-3], float(r[-2]), float(r[-1])
        ours = {"blocked": blocked, "F(2x2,3x3)": f2, "F(4x4,3x3)": f4}[rule]
        # One round: the ratio is the rule's time over torch's, the printed times' quotient
        # up to their rounding (0.05 ms each, 0.005 on the ratio).
        assert torch_ms >= 0.1
        low, high = (ours - 0.05) / (torch_ms + 0.05), (ours + 0.05) / (torch_ms - 0.05)
        assert low - 0.005 <= ratio <= high + 0.005
