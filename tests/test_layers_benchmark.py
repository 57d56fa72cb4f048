"""benchmarks/layers.py's --phase: each contender runs the halves it names, on its own path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("torch", reason="the benchmark times PyTorch beside minunet")
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import layers  # noqa: E402

from minunet.accel import accelerate  # noqa: E402
from minunet.accel.conv import BlockedConvCache, FastConv2d, WinogradCache  # noqa: E402
from minunet.nn.conv import Im2colCache  # noqa: E402
from minunet.nn.losses import SoftmaxCrossEntropy  # noqa: E402

# 16 -> 16 channels at 8 px, batch 2: small, and every 3x3 path applies (F(4x4): 2x2 tiles)
SHAPE = (2, 16, 8, 8)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Every FastConv2d forward and backward, with the cache each backward read."""
    seen: dict[str, list] = {"forward": [], "backward": []}
    forward, backward = FastConv2d.forward, FastConv2d.backward

    def spy_forward(self, x):
        seen["forward"].append(x.shape)
        return forward(self, x)

    def spy_backward(self, dout, input_grad=True):
        seen["backward"].append(self._cache)
        return backward(self, dout, input_grad)

    monkeypatch.setattr(FastConv2d, "forward", spy_forward)
    monkeypatch.setattr(FastConv2d, "backward", spy_backward)
    return seen


@pytest.mark.parametrize("phase", ["both", "forward", "backward"])
def test_each_contender_runs_the_phase_it_is_asked_for(phase, calls):
    dev = common.setup("numpy", False)
    contenders = layers.build("conv", SHAPE, dev, base=16, phase=phase)
    assert {"minunet", "torch", "reference", "blocked", "F(2x2)", "F(4x4)"} <= set(contenders)
    for name, run in contenders.items():
        calls["forward"].clear()
        calls["backward"].clear()
        run()
        if name == "torch":
            assert calls == {"forward": [], "backward": []}
            continue
        assert len(calls["forward"]) == (phase != "backward"), name
        assert len(calls["backward"]) == (phase != "forward"), name


def test_a_backward_alone_reads_its_own_paths_cache(calls):
    dev = common.setup("numpy", False)
    contenders = layers.build("conv", SHAPE, dev, base=16, phase="backward")
    for name, check in {
        "blocked": lambda c: isinstance(c, BlockedConvCache),
        "F(2x2)": lambda c: isinstance(c, WinogradCache) and c.tile == 2,
        "F(4x4)": lambda c: isinstance(c, WinogradCache) and c.tile == 4,
        "reference": lambda c: isinstance(c, Im2colCache),
    }.items():
        calls["backward"].clear()
        contenders[name]()
        contenders[name]()  # again: the cache is put back, not used up
        assert len(calls["backward"]) == 2 and all(map(check, calls["backward"])), name


def test_main_prints_a_row_per_layer_for_a_phase(capsys):
    layers.main(
        [
            "--phase",
            "backward",
            "--rounds",
            "1",
            "--batch",
            "1",
            "--base",
            "8",
            "--only",
            "3x3 16->16",
        ]
    )
    out = capsys.readouterr().out
    assert "# layers: backward, float32, batch 1" in out
    assert "Conv2d 3x3 16->16" in out


@pytest.mark.parametrize("phase", ["both", "forward", "backward"])
def test_the_loss_runs_the_phase_it_is_asked_for(phase, monkeypatch):
    cls = type(accelerate(SoftmaxCrossEntropy(check_targets=False)))
    seen: list[str] = []
    forward, backward = cls.forward, cls.backward
    monkeypatch.setattr(cls, "forward", lambda self, *a: seen.append("f") or forward(self, *a))
    monkeypatch.setattr(cls, "backward", lambda self, *a: seen.append("b") or backward(self, *a))
    dev = common.setup("numpy", False)
    contenders = layers.build("ce", (2, 3, 8, 8), dev, phase=phase)
    seen.clear()
    contenders["minunet"]()
    contenders["minunet"]()
    assert seen == {"both": ["f", "b"] * 2, "forward": ["f"] * 2, "backward": ["b"] * 2}[phase]
