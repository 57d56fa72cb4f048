"""benchmarks/conv_before_after.py: an earlier commit's cpu.py loaded beside this one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch", reason="the benchmark's setup configures PyTorch's threads")
if not (ROOT / ".git").exists():
    pytest.skip("needs a git checkout (it reads an earlier commit)", allow_module_level=True)
sys.path.insert(0, str(ROOT / "benchmarks"))
import conv_before_after  # noqa: E402

from minunet.accel import cpu  # noqa: E402

TINY = ["--base", "2", "--depth", "1", "--size", "16", "--batch", "2", "--rounds", "1"]


def test_the_loaded_module_is_another_copy_of_the_convolution():
    base = conv_before_after.module_at("HEAD")
    assert base is not cpu and base.__name__ == "cpu_base"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 9, 7))
    w = rng.standard_normal((4, 8, 3, 3))
    np.testing.assert_allclose(
        base.conv2d_forward(x, w, None, 1), cpu.conv2d_forward(x, w, None, 1), rtol=1e-12
    )


def test_an_unknown_commit_is_one_line():
    with pytest.raises(SystemExit, match="cannot read minunet/accel/cpu.py at 'no-such-rev'"):
        conv_before_after.module_at("no-such-rev")


def test_layer_shapes_are_the_unets_3x3_layers_after_the_first():
    assert conv_before_after.layer_shapes(16, 2, 128) == [
        (16, 16, 128),
        (32, 16, 128),
        (32, 32, 64),
        (64, 32, 64),
        (64, 64, 32),
    ]


@pytest.mark.parametrize("extra", [[], ["--step"]])
def test_a_tiny_run_prints_a_row_per_timing(extra, capsys):
    conv_before_after.main(["HEAD", *TINY, *extra])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("step ", "2->", "4->"))]
    names = [row.split("  ")[0] for row in rows]
    if extra:
        assert names == ["step b2 n2 16px"]
    else:
        assert names == [
            f"{shape} {pass_}"
            for shape in ["2->2 16px", "4->2 16px", "4->4 8px"]
            for pass_ in ["forward", "backward"]
        ]
    assert all(float(row.split()[-2]) > 0 for row in rows)  # the ratio column


def test_the_winograd_module_can_be_swapped_instead():
    from minunet.accel import winograd

    base = conv_before_after.module_at("HEAD", "winograd")
    assert base is not winograd and base.__name__ == "winograd_base"
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((4, 3, 3, 3))
    np.testing.assert_allclose(
        base.conv2d_forward(x, w, None, 1), winograd.conv2d_forward(x, w, None, 1), rtol=1e-12
    )


@pytest.mark.parametrize("extra", [[], ["--step"]])
def test_a_tiny_winograd_run_times_only_the_layers_the_rule_gives_it(extra, capsys, monkeypatch):
    from minunet.accel import winograd

    # h = C*K / (C+K): 2 for 4->4, under 2 for the others; a tile from 1 tile on
    monkeypatch.setattr(winograd, "RULE", ((2, 2, 1),))
    switch = winograd.ENABLED
    conv_before_after.main(["HEAD", *TINY, "--module", "winograd", *extra])
    out = capsys.readouterr().out
    assert "minunet/accel/winograd.py swapped" in out
    rows = [line for line in out.splitlines() if line.startswith(("step ", "2->", "4->"))]
    names = [row.split("  ")[0] for row in rows]
    if extra:
        assert names == ["step b2 n2 16px"]
    else:
        assert names == ["4->4 8px forward", "4->4 8px backward"]
    assert winograd.ENABLED == switch  # the step's switch is put back
