"""benchmarks/profile_gpu.py's recorder wraps every leaf layer of a U-Net and leaves the
step as it was: the wrappers hand on the keywords the U-Net passes (an up-convolution's
``out=``, a convolution's ``input_grad=``). Run here on NumPy with a stand-in for CUDA's
events; the timings themselves need a GPU."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import profile_gpu  # noqa: E402

from minunet.model import UNet  # noqa: E402


class _Event:
    def record(self) -> None:
        pass


def test_the_wrapped_unet_computes_what_the_plain_one_does():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16))
    dlogits = rng.standard_normal((2, 3, 16, 16))
    plain = UNet(3, 3, base_channels=4, depth=2, dtype=np.float64, seed=1)
    wrapped = UNet(3, 3, base_channels=4, depth=2, dtype=np.float64, seed=1)
    rec = profile_gpu.Recorder(SimpleNamespace(cuda=SimpleNamespace(Event=_Event)))
    for name, layer in profile_gpu.leaf_layers(wrapped):
        rec.wrap(name, layer)
    rec.active = True
    np.testing.assert_array_equal(wrapped.forward(x, train=True), plain.forward(x, train=True))
    assert wrapped.backward(dlogits, input_grad=False) is None
    assert plain.backward(dlogits, input_grad=False) is None
    for (name, p), (_, q) in zip(wrapped.named_parameters(), plain.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=name)
    assert ("upconvs.0", "fwd") in rec.events and ("encoder.0.conv1", "bwd") in rec.events
