"""The minunet U-Net written in PyTorch, so a model trained here can be used there (and back).

``TorchUNet(**unet.config)`` builds the same graph as ``minunet.model.UNet``: the same
blocks, the same centre crop of the skip maps for ``padding="valid"``, dropout in the same
place (after the bottleneck block) and the same BatchNorm constants (eps 1e-5, momentum
0.1, which are PyTorch's defaults). Its attributes are named like minunet's layers, so the
two ``state_dict()``s have exactly the same keys and shapes:

    encoder.0.conv1.weight   (C1, C_in, 3, 3)      encoder.0.bn1.running_var       (C1,)
    upconvs.0.weight         (C_d, C_d-1, 2, 2)    encoder.0.bn1.num_batches_tracked ()
    decoder.0.conv2.weight   (C_d-1, C_d-1, 3, 3)  dropout.calls                   ()
    head.bias                (num_classes,)

Moving weights is then only a change of array type: ``to_torch_state_dict`` and
``from_torch_state_dict``. ``dropout.calls`` is minunet's dropout call counter (it makes
a resumed run draw the same masks); PyTorch's ``nn.Dropout`` has no such state, so the
dropout module here carries it as a buffer and counts the same way.

This is the one module of minunet that imports torch at module level.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from minunet.model.unet import unet_config


class CountingDropout(nn.Dropout):
    """``nn.Dropout`` plus minunet's ``calls`` buffer (training calls with p > 0)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            self.calls += 1
        return super().forward(x)


class ConvBlock(nn.Module):
    """(conv 3x3 -> [BatchNorm] -> ReLU) twice. x (N, C_in, H, W) -> (N, C_out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, padding: int, batchnorm: bool):
        super().__init__()
        bias = not batchnorm  # BatchNorm right after would cancel a conv bias
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=padding, bias=bias)
        self.bn1 = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=padding, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


def centre_crop(skip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centred (h, w) window of skip (N, C, H, W), as minunet's Concat takes it."""
    dh, dw = skip.shape[2] - size[0], skip.shape[3] - size[1]
    return skip[:, :, dh // 2 : dh // 2 + size[0], dw // 2 : dw // 2 + size[1]]


class TorchUNet(nn.Module):
    """minunet's U-Net in PyTorch. x (N, in_channels, H, W) -> logits (N, num_classes, Ho, Wo).

    Takes the keys of ``minunet.model.UNet.config``; PyTorch's default initialisation
    (not minunet's He normal), since weights are meant to be loaded into it.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 3,
        base_channels: int = 32,
        depth: int = 4,
        padding: str = "same",
        batchnorm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.config = unet_config(
            "TorchUNet", in_channels, num_classes, base_channels, depth, padding, batchnorm, dropout
        )
        pad = 1 if padding == "same" else 0
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [
                ConvBlock(in_channels if lv == 0 else widths[lv - 1], widths[lv], pad, batchnorm)
                for lv in range(depth)
            ]
        )
        self.pools = nn.ModuleList([nn.MaxPool2d(2) for _ in range(depth)])
        self.bottleneck = ConvBlock(widths[depth - 1], widths[depth], pad, batchnorm)
        self.dropout = CountingDropout(dropout)
        # Index 0 is the deepest level, as in minunet (the order they are applied in).
        self.upconvs = nn.ModuleList(
            [
                nn.ConvTranspose2d(widths[lv + 1], widths[lv], 2, stride=2)
                for lv in reversed(range(depth))
            ]
        )
        self.decoder = nn.ModuleList(
            [ConvBlock(2 * widths[lv], widths[lv], pad, batchnorm) for lv in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in_channels, H, W) -> logits (N, num_classes, Ho, Wo); sizes as minunet's."""
        skips = []
        for block, pool in zip(self.encoder, self.pools, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, block in zip(self.upconvs, self.decoder, strict=True):
            x = up(x)
            skip = centre_crop(skips.pop(), (x.shape[2], x.shape[3]))
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


def to_torch_state_dict(minunet_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """minunet ``state_dict()`` (name -> NumPy array) -> the same names as CPU tensors.

    dtypes are kept (float32 stays float32, the int64 counters stay int64); every tensor
    owns a copy, so later training on either side leaves the other untouched.
    """
    return {name: torch.from_numpy(np.array(a, copy=True)) for name, a in minunet_state.items()}


def from_torch_state_dict(sd: dict[str, Any]) -> dict[str, np.ndarray]:
    """PyTorch state dict (name -> tensor, any device) -> name -> host NumPy array (copies).

    bfloat16 tensors (which NumPy cannot hold) become float32; other dtypes are kept.
    """
    state = {}
    for name, t in sd.items():
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        state[name] = t.numpy().copy()
    return state
