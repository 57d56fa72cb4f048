"""The U-Net: an encoder that halves the resolution, a decoder that doubles it back, and
skip connections that hand each decoder level the encoder's map of the same size.

    level 0   x ── ConvBlock ─────────────────────────────── Concat ── ConvBlock ── head ── logits
                      │ MaxPool                                  ▲ ConvTranspose (2x up)
    level 1           └─ ConvBlock ─────────────── Concat ── ConvBlock
                             │ MaxPool                 ▲
    ...                      └── ... bottleneck ───────┘

A ConvBlock is two 3x3 convolutions, each followed by BatchNorm (optional) and ReLU
(with BatchNorm, one ``BatchNorm2d(relu=True)`` layer does both, saving an array).
Channels double at each level down (base, 2*base, ..., 2**depth * base at the bottom)
and halve on the way up. The head is a 1x1 convolution to one logit per class.

Backward runs the same graph in reverse. Each encoder output is used twice, by the pool
below it and by the skip connection, so its gradient is the *sum* of the two paths.

``padding="same"`` pads every 3x3 convolution by 1 so sizes are kept: the input sides
must be multiples of 2**depth. ``padding="valid"`` is the paper's network: no padding, so
each convolution trims a pixel from every side, the skip maps are centre-cropped, and a
572x572 input gives a 388x388 output (the paper's figure 1). Which sides fit, and what
comes out, is ``minunet.model.geometry``.

The layers are the references of ``minunet.nn``; the constructor hands them their fast
implementations (``minunet.accel.accelerate``), which compute the same thing faster.
``MINUNET_ACCEL=0`` keeps the references.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minunet.accel import accelerate
from minunet.model import geometry
from minunet.model.geometry import PADDINGS
from minunet.nn import (
    BatchNorm2d,
    Concat,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Layer,
    LayerList,
    MaxPool2d,
    ReLU,
)


class ConvBlock(Layer):
    """(conv 3x3 -> [BatchNorm] -> ReLU) twice. x (N, C_in, H, W) -> (N, C_out, H', W')."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        padding: int,
        batchnorm: bool,
        *,
        dtype: Any,
        rng: np.random.Generator,
    ) -> None:
        super().__init__()
        # With BatchNorm right after it, a conv bias would be subtracted out again.
        bias = not batchnorm
        # Two stages, conv1 and bn1 (or relu1), then conv2 and bn2: the names a checkpoint uses.
        for stage, c_in in enumerate((in_channels, out_channels), start=1):
            conv = Conv2d(c_in, out_channels, 3, padding=padding, bias=bias, dtype=dtype, rng=rng)
            setattr(self, f"conv{stage}", conv)
            # With BatchNorm, the ReLU is done by the BatchNorm layer in the same pass.
            if batchnorm:
                setattr(self, f"bn{stage}", BatchNorm2d(out_channels, relu=True, dtype=dtype))
            else:
                setattr(self, f"relu{stage}", ReLU())
        self.sequence = list(self.children().values())  # in assignment order

    def forward(self, x: Any, keep_cache: bool = True) -> Any:
        for layer in self.sequence:
            x = _run(layer, x, keep=keep_cache)
        return x

    def backward(self, dout: Any, input_grad: bool = True) -> Any:
        """dout (N, C_out, H', W') -> dx (N, C_in, H, W), or None if not ``input_grad``."""
        for layer in reversed(self.sequence[1:]):  # every layer after conv1
            dout = layer.backward(dout)
        return self.conv1.backward(dout, input_grad=input_grad)


def _run(layer: Layer, *inputs: Any, keep: bool, **options: Any) -> Any:
    """``layer.forward(*inputs, **options)``; with ``keep=False`` the layer drops what it
    cached for a backward that will not come (inference then holds one layer's buffers at
    a time)."""
    out = layer.forward(*inputs, **options)
    if not keep:
        layer.release()
    return out


def unet_config(
    model: str,
    in_channels: int,
    num_classes: int,
    base_channels: int,
    depth: int,
    padding: str,
    batchnorm: bool,
    dropout: float,
) -> dict[str, Any]:
    """Check a U-Net's settings (one clear ValueError naming ``model``); return them as the
    dict ``UNet.config`` keeps, from which ``UNet(**config)`` or ``TorchUNet(**config)``
    builds the same network."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if depth < 1 or base_channels < 1 or in_channels < 1 or num_classes < 2:
        raise ValueError(
            f"{model} needs depth >= 1, base_channels >= 1, in_channels >= 1 and "
            f"num_classes >= 2; got depth={depth}, base_channels={base_channels}, "
            f"in_channels={in_channels}, num_classes={num_classes}"
        )
    return dict(
        in_channels=in_channels,
        num_classes=num_classes,
        base_channels=base_channels,
        depth=depth,
        padding=padding,
        batchnorm=batchnorm,
        dropout=dropout,
    )


class UNet(Layer):
    """U-Net for semantic segmentation. x (N, in_channels, H, W) -> logits (N, num_classes, Ho, Wo).

    Ho = H for padding="same"; for "valid" see ``output_size``.
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
        *,
        dtype: Any = np.float32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.config = unet_config(
            "UNet", in_channels, num_classes, base_channels, depth, padding, batchnorm, dropout
        )
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.padding = padding
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        pad = 1 if padding == "same" else 0
        widths = [base_channels * 2**level for level in range(depth + 1)]

        def block(cin: int, cout: int) -> ConvBlock:
            return ConvBlock(cin, cout, pad, batchnorm, dtype=dtype, rng=rng)

        self.encoder = LayerList(
            [block(in_channels if lv == 0 else widths[lv - 1], widths[lv]) for lv in range(depth)]
        )
        self.pools = LayerList([MaxPool2d(2) for _ in range(depth)])
        self.bottleneck = block(widths[depth - 1], widths[depth])
        # The paper drops out at the end of the contracting path; so do we.
        self.dropout = Dropout(dropout, seed=seed)
        self.upconvs = LayerList(
            [
                ConvTranspose2d(widths[lv + 1], widths[lv], 2, stride=2, dtype=dtype, rng=rng)
                for lv in reversed(range(depth))
            ]
        )
        self.concats = LayerList([Concat() for _ in range(depth)])
        self.decoder = LayerList(
            [block(2 * widths[lv], widths[lv]) for lv in reversed(range(depth))]
        )
        self.head = Conv2d(widths[0], num_classes, 1, dtype=dtype, rng=rng)
        accelerate(self)  # every layer's fast path, where it has one

    # -- sizes ------------------------------------------------------------------------------
    def output_size(self, size: int) -> int:
        """Output side for an input side, or raise MinunetError naming valid sizes (the rule
        is in ``minunet.model.geometry``)."""
        return geometry.check_input_size(size, self.depth, self.padding)

    # -- the pair -------------------------------------------------------------------------
    def forward(self, x: Any, train: bool | None = None, keep_cache: bool = True) -> Any:
        """x (N, in_channels, H, W) -> logits (N, num_classes, Ho, Wo).

        ``train`` switches the mode first (True: batch statistics and dropout; False: eval).
        ``keep_cache=False`` keeps nothing for a backward pass (see ``infer``).
        """
        if train is not None:
            self.train(train)
        if getattr(x, "ndim", 0) != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input of shape (N, {self.in_channels}, H, W), got "
                f"{tuple(getattr(x, 'shape', ()))}"
            )
        for side in x.shape[2:]:
            self.output_size(int(side))
        keep = keep_cache
        skips = []
        h = x
        for block, pool in zip(self.encoder, self.pools, strict=True):
            h = block.forward(h, keep)
            skips.append(h)  # kept for the skip connection
            h = _run(pool, h, keep=keep)
        h = _run(self.dropout, self.bottleneck.forward(h, keep), keep=keep)
        for up, cat, block in zip(self.upconvs, self.concats, self.decoder, strict=True):
            skip = skips.pop()
            # The up-convolution writes its map straight into the concatenation's buffer,
            # behind the skip's channels (Concat.room): the join then copies only the skip.
            room = cat.room(skip, (up.out_channels, *up.output_shape(*h.shape[2:])))
            h = _run(cat, skip, _run(up, h, out=room, keep=keep), keep=keep)
            h = block.forward(h, keep)
        return _run(self.head, h, keep=keep)

    def infer(self, x: Any) -> Any:
        """Logits in eval mode, keeping no backward caches: the memory-lean forward for
        prediction and validation (the mode the model was in is restored)."""
        was_training = self.training
        try:
            return self.forward(x, train=False, keep_cache=False)
        finally:
            self.train(was_training)

    def backward(self, dlogits: Any, input_grad: bool = True) -> Any:
        """dL/dlogits (N, K, Ho, Wo) -> dL/dx (N, in_channels, H, W); fills every .grad.

        Training needs only the parameters' gradients: ``input_grad=False`` skips the first
        convolution's input gradient (a whole col2im over the input) and returns None.
        """
        d = self.head.backward(dlogits)
        dskips = []
        for up, cat, block in zip(
            reversed(self.upconvs.layers),
            reversed(self.concats.layers),
            reversed(self.decoder.layers),
            strict=True,
        ):
            dskip, dup = cat.backward(block.backward(d))
            dskips.append(dskip)
            d = up.backward(dup)
        d = self.bottleneck.backward(self.dropout.backward(d))
        for level in reversed(range(self.depth)):
            # The encoder output fed both the pool and the skip: add the two gradients
            # (in place: the pool's backward returns a fresh array).
            d = self.pools[level].backward(d)
            d += dskips.pop()
            d = self.encoder[level].backward(d, input_grad=input_grad or level > 0)
        return d

    def predict(self, x: Any) -> Any:
        """Class map (N, Ho, Wo), in eval mode."""
        return self.infer(x).argmax(axis=1)

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    def summary(self, height: int, width: int | None = None, batch: int = 1) -> str:
        """A table of every layer: output shape, parameters, FLOPs and activation memory."""
        from minunet.model.summary import summarize

        return summarize(self, height, width or height, batch)
