"""benchmarks/step.py's contenders: the --winograd rows switch the path and put it back."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch", reason="the benchmark times PyTorch beside minunet")
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import step  # noqa: E402

from minunet.accel import winograd  # noqa: E402
from minunet.accel.conv import BlockedConvCache, WinogradCache  # noqa: E402


def test_the_winograd_rows_run_each_path_and_restore_the_switches():
    dev = common.setup("numpy", False)
    # base 64, depth 1: the bottleneck's second convolution is 128 -> 128 channels
    model, contenders = step.build(dev, 64, 1, 2, 16, winograd_rows=True)
    expected = {
        "minunet, Winograd off": BlockedConvCache,
        "minunet, Winograd >= 128 ch": WinogradCache,
        "minunet, Winograd >= 256 ch": BlockedConvCache,
    }
    assert [name for name in contenders if name.startswith("minunet, Winograd")] == [*expected]
    switches = (winograd.ENABLED, winograd.MIN_CHANNELS)
    for name, cache in expected.items():
        contenders[name]()
        assert isinstance(model.bottleneck.conv2._cache, cache), name
        assert (winograd.ENABLED, winograd.MIN_CHANNELS) == switches, name
