"""ReLU: out = max(x, 0); the gradient passes where x > 0 and stops elsewhere.

No fast path: one array operation each way is already one pass over memory. (In the
U-Net, BatchNorm2d(relu=True) applies the ReLU inside its own pass.)
"""

from __future__ import annotations

from typing import Any

from minunet.core.backend import get_array_module
from minunet.nn.base import Layer


class ReLU(Layer):
    """Rectified linear unit, any shape -> same shape."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None

    def forward(self, x: Any) -> Any:
        xp = get_array_module(x)
        out = xp.maximum(x, 0)
        self._cache = out  # out > 0 exactly where x > 0: no need to keep x
        return out

    def backward(self, dout: Any) -> Any:
        out = self._cache
        return dout * (out > 0)
