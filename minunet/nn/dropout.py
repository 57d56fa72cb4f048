"""Dropout, inverted: zero each activation with probability p in training and scale the
survivors by 1/(1-p), so evaluation needs no rescaling and is the identity.

    train:  mask ~ Bernoulli(1-p),  out = x * mask / (1-p),  dx = dout * mask / (1-p)
    eval:   out = x,                dx = dout

The masks come from a generator seeded by (seed, call count), and the call count is a
buffer saved in checkpoints, so a resumed run draws the same masks as an unbroken one.

No fast path: a mask and a product each way.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module
from minunet.nn.base import Layer


class Dropout(Layer):
    """Inverted dropout, any shape -> same shape."""

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability must be in [0, 1), got {p}")
        self.p, self.seed = p, seed
        # A host counter: reading it never waits for the GPU.
        self.buffers["calls"] = np.zeros((), dtype=np.int64)
        self._cache: Any = None

    def forward(self, x: Any) -> Any:
        if not self.training or self.p == 0.0:
            self._cache = None
            return x
        xp = get_array_module(x)
        calls = int(self.buffers["calls"])
        self.buffers["calls"] = self.buffers["calls"] + 1
        rng = xp.random.default_rng(self.seed * 1_000_003 + calls)
        scale = x.dtype.type(1.0 / (1.0 - self.p))
        mask = (rng.random(x.shape, dtype=xp.float32) >= self.p) * scale  # 0 or 1/(1-p)
        mask = mask.astype(x.dtype, copy=False)
        self._cache = mask
        return x * mask

    def backward(self, dout: Any) -> Any:
        return dout if self._cache is None else dout * self._cache

    def to(self, xp: ModuleType) -> Dropout:
        self.buffers["calls"] = np.asarray(self.buffers["calls"].item(), dtype=np.int64)
        return self
