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


def test_the_batchnorm_class_of_another_commit_sits_under_the_cuda_part():
    from minunet.accel import batchnorm
    from minunet.accel.cuda.batchnorm import KernelBatchNorm2d

    base = conv_before_after.module_at("HEAD", "batchnorm")
    cls = conv_before_after.batchnorm_class(base)
    assert cls.__mro__[1:3] == (KernelBatchNorm2d, base.ThreadedBatchNorm2d)
    assert conv_before_after.batchnorm_class(batchnorm) is batchnorm.FastBatchNorm2d
    rng = np.random.default_rng(2)
    x, d = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    got = cls(3, relu=True, dtype=np.float64)
    want = batchnorm.FastBatchNorm2d(3, relu=True, dtype=np.float64)
    np.testing.assert_allclose(got.forward(x), want.forward(x), rtol=1e-12)
    np.testing.assert_allclose(got.backward(d), want.backward(d), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extra", [[], ["--step"]])
def test_a_tiny_batchnorm_run_times_each_level_and_puts_the_class_back(extra, capsys, monkeypatch):
    from minunet.accel import batchnorm

    built, original = [], conv_before_after.build

    def build(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(conv_before_after, "build", build)
    conv_before_after.main(["HEAD", *TINY, "--module", "batchnorm", *extra])
    out = capsys.readouterr().out
    assert "minunet/accel/batchnorm.py swapped" in out
    rows = [line for line in out.splitlines() if line.startswith(("step ", "BatchNorm2d"))]
    names = [row.split("  ")[0] for row in rows]
    if extra:
        assert names == ["step b2 n2 16px"]
    else:
        assert names == ["BatchNorm2d+ReLU 2ch 16px", "BatchNorm2d+ReLU 4ch 8px"]
    assert all(float(row.split()[-2]) > 0 for row in rows)
    for model, _ in built:  # the step's model: every BatchNorm back to this checkout's class
        norms = conv_before_after.batchnorm_layers(model)
        assert norms and all(type(layer) is batchnorm.FastBatchNorm2d for layer in norms)
    assert len(built) == len(extra)


def test_pool_gives_every_layer_the_base_pool_and_puts_this_one_back(monkeypatch, capsys):
    """--pool: while the base's steps run, cpu.parallel (which BatchNorm, the max-pool,
    Adam and Winograd call) is the base module's; afterwards it is this checkout's again.
    A step calls it for its BatchNorms whichever side runs."""
    from minunet.accel import cpu

    ours = cpu.parallel
    calls = {"base": 0, "head": 0}
    base_callers: set[str] = set()  # the classes whose work ran on the base's pool
    original_module_at = conv_before_after.module_at

    def module_at(commit, name="cpu"):
        module = original_module_at(commit, name)
        real = module.parallel

        def counted(fn, items):
            calls["base"] += 1
            base_callers.add(fn.__qualname__.split(".")[0])
            return real(fn, items)

        module.parallel = counted
        return module

    def counted_head(fn, items):
        calls["head"] += 1
        return ours(fn, items)

    monkeypatch.setattr(conv_before_after, "module_at", module_at)
    monkeypatch.setattr(cpu, "parallel", counted_head)
    conv_before_after.main(["HEAD", *TINY, "--step", "--pool"])
    assert "step b2 n2 16px" in capsys.readouterr().out
    assert calls["base"] > 0 and calls["head"] > 0
    assert "ThreadedBatchNorm2d" in base_callers  # not only the convolutions' cpu.py
    assert cpu.parallel is counted_head
    with pytest.raises(SystemExit):
        conv_before_after.main(["HEAD", *TINY, "--pool"])  # not without --step
