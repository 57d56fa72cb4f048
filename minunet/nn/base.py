"""What every layer shares: parameters with gradients, buffers, train/eval mode, devices.

A layer is a forward/backward pair. ``forward`` computes the output and keeps in ``self``
exactly what ``backward`` will need; ``backward`` takes dL/d(output), adds dL/d(parameter)
into each ``Parameter.grad`` and returns dL/d(input). Gradients *accumulate* (``+=``), like
micrograd and PyTorch, so zero them between steps (the optimiser does).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from minunet.core.backend import get_array_module, to_device, to_numpy


class Parameter:
    """A trainable array and the gradient of the loss with respect to it (same shape)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class: named parameters and buffers, a train/eval flag, and a device move.

    Subclasses set ``self.params[name] = Parameter(...)`` for trainable arrays and
    ``self.buffers[name] = array`` for state that is saved but not trained (BatchNorm's
    running statistics), using PyTorch's names so state dicts line up.
    """

    def __init__(self) -> None:
        self.params: dict[str, Parameter] = {}
        self.buffers: dict[str, Any] = {}
        self.training = True

    # -- the pair every layer implements -------------------------------------------------
    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def backward(self, dout: Any) -> Any:
        raise NotImplementedError

    def __call__(self, *args: Any) -> Any:
        return self.forward(*args)

    # -- bookkeeping ----------------------------------------------------------------------
    def children(self) -> dict[str, Layer]:
        """Named sub-layers, in the order they were assigned (empty for a leaf layer)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, Layer)}

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self.params.items():
            yield prefix + name, p
        for cname, child in self.children().items():
            yield from child.named_parameters(f"{prefix}{cname}.")

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        for name, b in self.buffers.items():
            yield prefix + name, b
        for cname, child in self.children().items():
            yield from child.named_buffers(f"{prefix}{cname}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    def train(self, mode: bool = True) -> Layer:
        self.training = mode
        for child in self.children().values():
            child.train(mode)
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def to(self, xp: ModuleType) -> Layer:
        """Move every parameter, gradient and buffer to the array module ``xp``."""
        for p in self.params.values():
            p.data = to_device(p.data, xp)
            p.grad = to_device(p.grad, xp)
        for name, b in self.buffers.items():
            self.buffers[name] = to_device(b, xp)
        for child in self.children().values():
            child.to(xp)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer as a host NumPy array, under PyTorch-style dotted names."""
        state = {name: to_numpy(p.data).copy() for name, p in self.named_parameters()}
        state.update({name: to_numpy(b).copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays from ``state`` into this layer's parameters and buffers.

        Every key must match, with the same shape; otherwise nothing is loaded and a
        ValueError lists what is missing, unexpected or mis-shaped.
        """
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        expected = {**{k: p.data for k, p in params.items()}, **buffers}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        mismatched = [
            f"{k} {tuple(np.shape(state[k]))} != {tuple(expected[k].shape)}"
            for k in expected
            if k in state and tuple(np.shape(state[k])) != tuple(expected[k].shape)
        ]
        problems = []
        if missing:
            problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            problems.append(
                f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            )
        if mismatched:
            problems.append(f"shape mismatch {mismatched[:5]}")
        if problems:
            raise ValueError("state dict does not fit this model: " + "; ".join(problems))
        for name, p in params.items():
            xp = get_array_module(p.data)
            p.data = to_device(np.asarray(state[name], dtype=p.data.dtype), xp)
        for name, b in buffers.items():
            owner, _, leaf = name.rpartition(".")
            layer = self._find(owner)
            xp = get_array_module(b)
            layer.buffers[leaf] = to_device(np.asarray(state[name], dtype=b.dtype), xp)

    def _find(self, dotted: str) -> Layer:
        layer = self
        for part in dotted.split(".") if dotted else []:
            layer = layer.children()[part]
        return layer

    def release(self) -> None:
        """Drop what forward cached for backward (frees memory after inference)."""
        for name in [k for k in vars(self) if k.startswith("_cache")]:
            setattr(self, name, None)
        for child in self.children().values():
            child.release()


class LayerList(Layer):
    """An indexed list of layers whose parameters are named ``0.``, ``1.``, ... (like
    PyTorch's ModuleList), so a U-Net level is ``encoder.2.conv1.weight``."""

    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layers = list(layers)

    def children(self) -> dict[str, Layer]:
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)


def check_input(x: Any, layer: str, channels: int, dtype: Any) -> None:
    """Raise one clear ValueError when ``x`` is not a (N, channels, H, W) array of ``dtype``."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"{layer} expects a 4-D input of shape (N, {channels}, H, W), "
            f"got {'a non-array' if shape is None else f'shape {tuple(shape)}'}"
        )
    if shape[1] != channels:
        raise ValueError(
            f"{layer} expects {channels} input channels, shape (N, {channels}, H, W); "
            f"got shape {tuple(shape)}"
        )
    if x.dtype != dtype:
        raise ValueError(
            f"{layer} expects dtype {np.dtype(dtype).name} (N, {channels}, H, W), got "
            f"{x.dtype}: convert with x.astype({np.dtype(dtype).name!r})"
        )


def he_normal(
    shape: tuple[int, ...], fan_in: int, rng: np.random.Generator, dtype: Any
) -> np.ndarray:
    """He (Kaiming) normal initialisation: std = sqrt(2 / fan_in), right for ReLU nets."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def check_conv_arguments(
    layer: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int,
    padding: int,
    dilation: int,
) -> None:
    """Raise one clear ValueError for a convolution's impossible sizes (Conv2d and its transpose)."""
    if min(in_channels, out_channels, kernel_size, stride, dilation) < 1 or padding < 0:
        raise ValueError(
            f"{layer} needs positive channels, kernel_size, stride and dilation, "
            f"and padding >= 0; got in={in_channels} out={out_channels} "
            f"k={kernel_size} s={stride} p={padding} d={dilation}"
        )


def conv_parameters(
    weight_shape: tuple[int, int, int, int],
    fan_in: int,
    out_channels: int,
    bias: bool,
    rng: np.random.Generator | None,
    dtype: Any,
) -> dict[str, Parameter]:
    """A convolution's ``weight`` (He-initialised, ``weight_shape``) and, with ``bias``, a
    zero ``bias`` (out_channels,)."""
    rng = rng or np.random.default_rng()
    params = {"weight": Parameter(he_normal(weight_shape, fan_in, rng, dtype))}
    if bias:
        params["bias"] = Parameter(np.zeros(out_channels, dtype=dtype))
    return params
