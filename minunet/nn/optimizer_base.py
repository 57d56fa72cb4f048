"""What every optimiser shares: its parameters, learning rate, step count and state.

The update rules themselves are in ``minunet.nn.optim``. The state (momentum buffers, Adam's
moments, the step count) goes through ``state_dict`` and ``load_state_dict``, so that a
checkpoint resumes a run exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module, to_device, to_numpy
from minunet.nn.base import Parameter


class Optimizer:
    """Shared bookkeeping: parameters, learning rate, step count, per-parameter state."""

    def __init__(self, params: Sequence[Parameter], lr: float, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.lr = lr
        self.weight_decay = weight_decay
        self.steps = 0
        self.state: dict[str, list[Any]] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def step(self) -> None:
        self.steps += 1
        for i, p in enumerate(self.params):
            self._update(i, p)

    def _update(self, i: int, p: Parameter) -> None:
        raise NotImplementedError

    def _buffers(self, name: str) -> list[Any]:
        """One zero-initialised buffer per parameter, created on first use."""
        if name not in self.state:
            self.state[name] = [get_array_module(p.data).zeros_like(p.data) for p in self.params]
        return self.state[name]

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"steps": np.asarray(self.steps, dtype=np.int64)}
        for name, bufs in self.state.items():
            for i, b in enumerate(bufs):
                out[f"{name}.{i}"] = to_numpy(b).copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.steps = int(state["steps"])
        names = {k.rsplit(".", 1)[0] for k in state if k != "steps"}
        for name in names:
            bufs = []
            for i, p in enumerate(self.params):
                arr = np.asarray(state[f"{name}.{i}"])
                if arr.shape != p.data.shape:
                    raise ValueError(
                        f"optimiser state {name}.{i} has shape {arr.shape}, expected {p.data.shape}"
                    )
                bufs.append(to_device(arr.astype(p.data.dtype), get_array_module(p.data)))
            self.state[name] = bufs
