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
    # base 64, depth 1, batch 8 at 32 px: the bottleneck's second convolution is 128 -> 128
    # channels at 16 px, 128 4x4 tiles: the rule's F(4x4)
    model, contenders = step.build(dev, 64, 1, 8, 32, winograd_rows=True)
    expected = {"minunet": 4, "minunet, Winograd off": 0, "minunet, F(2x2) only": 2}
    assert [n for n in contenders if n.startswith("minunet")] == [*expected]
    switches = (winograd.ENABLED, winograd.RULE)
    for name, tile in expected.items():
        contenders[name]()
        cache = model.bottleneck.conv2._cache
        if tile:
            assert isinstance(cache, WinogradCache) and cache.tile == tile, name
        else:
            assert isinstance(cache, BlockedConvCache), name
        assert (winograd.ENABLED, winograd.RULE) == switches, name
