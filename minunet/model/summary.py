"""A layer-by-layer table of a U-Net: output shape, parameters, FLOPs and memory.

Computed from the shape formulas alone (no forward pass), so the paper's 572x572
network is summarised instantly. FLOPs count a multiply-add as two; "activations" is
what the forward keeps for the backward (the output, plus the im2col columns a
convolution caches, which for a 3x3 convolution are 9x its input). That is the plain
im2col path, the GPU's; the CPU fast path (``minunet.accel.cpu``) rebuilds the columns in the
backward instead of keeping them, so on NumPy the figure is an upper bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minunet.accel import reference_class
from minunet.nn import BatchNorm2d, Concat, Conv2d, ConvTranspose2d, Dropout, MaxPool2d, ReLU

if TYPE_CHECKING:
    from minunet.model.unet import UNet


def _count(layer) -> int:
    return int(sum(p.data.size for p in layer.parameters()))


def _row(name, layer, in_shape, extra_in=None):
    """(name, kind, out_shape, params, flops, activation elements) for one layer."""
    n, c, h, w = in_shape
    kind = reference_class(layer).__name__  # Conv2d, also for its accelerated FastConv2d
    if isinstance(layer, Conv2d):
        ho, wo = layer.output_shape(h, w)
        k = layer.kernel_size
        out = (n, layer.out_channels, ho, wo)
        flops = 2 * n * layer.out_channels * ho * wo * c * k * k
        acts = n * layer.out_channels * ho * wo + n * c * k * k * ho * wo  # output + columns
        return (name, kind, out, _count(layer), flops, acts)
    if isinstance(layer, ConvTranspose2d):
        ho, wo = layer.output_shape(h, w)
        k = layer.kernel_size
        out = (n, layer.out_channels, ho, wo)
        flops = 2 * n * c * layer.out_channels * k * k * h * w
        return (name, kind, out, _count(layer), flops, n * layer.out_channels * ho * wo)
    if isinstance(layer, MaxPool2d):
        ho, wo = layer.output_shape(h, w)
        out = (n, c, ho, wo)
        # output + a uint8 argmax per output (a quarter of a float32)
        return (name, kind, out, 0, n * c * h * w, n * c * ho * wo * 5 // 4)
    if isinstance(layer, Concat):
        out = (n, c + extra_in[1], extra_in[2], extra_in[3])
        # Only the skip's part is new memory: the up-convolution wrote the rest in place
        # (Concat.room), and its row counted it.
        return (name, kind, out, 0, 0, n * c * out[2] * out[3])
    if isinstance(layer, BatchNorm2d | ReLU | Dropout):
        numel = n * c * h * w
        flops = {"BatchNorm2d": 8 * numel, "ReLU": numel, "Dropout": numel}[kind]
        if isinstance(layer, BatchNorm2d) and layer.relu:
            flops += numel  # the ReLU it applies
        if isinstance(layer, Dropout) and layer.p == 0:
            return None
        return (name, kind, in_shape, _count(layer), flops, numel)
    raise TypeError(f"summary does not know layer type {kind}")


def trace(model: UNet, height: int, width: int, batch: int = 1) -> list[tuple]:
    """Rows (name, kind, output shape, params, flops, activation elements) in forward order."""
    model.output_size(height)
    model.output_size(width)
    rows: list[tuple] = []
    shape = (batch, model.in_channels, height, width)

    def run_block(prefix, block, shape):
        for cname, layer in block.children().items():
            row = _row(f"{prefix}.{cname}", layer, shape)
            rows.append(row)
            shape = row[2]
        return shape

    skips = []
    for i, (block, pool) in enumerate(zip(model.encoder, model.pools, strict=True)):
        shape = run_block(f"encoder.{i}", block, shape)
        skips.append(shape)
        rows.append(_row(f"pools.{i}", pool, shape))
        shape = rows[-1][2]
    shape = run_block("bottleneck", model.bottleneck, shape)
    if (row := _row("dropout", model.dropout, shape)) is not None:
        rows.append(row)
    for i, (up, cat, block) in enumerate(
        zip(model.upconvs, model.concats, model.decoder, strict=True)
    ):
        rows.append(_row(f"upconvs.{i}", up, shape))
        up_shape = rows[-1][2]
        skip = skips.pop()
        rows.append(_row(f"concats.{i}", cat, skip, extra_in=up_shape))
        shape = run_block(f"decoder.{i}", block, rows[-1][2])
    rows.append(_row("head", model.head, shape))
    return rows


def summarize(model: UNet, height: int, width: int, batch: int = 1) -> str:
    """The table as text, with totals."""
    rows = trace(model, height, width, batch)
    itemsize = model.dtype.itemsize
    lines = [
        f"{'layer':<22}{'type':<17}{'output shape':<24}{'params':>12}{'MFLOPs':>12}{'act MiB':>10}"
    ]
    lines.append("-" * len(lines[0]))
    for name, kind, out, params, flops, acts in rows:
        lines.append(
            f"{name:<22}{kind:<17}{str(tuple(out)):<24}{params:>12,}"
            f"{flops / 1e6:>12,.1f}{acts * itemsize / 2**20:>10.1f}"
        )
    total_params = sum(r[3] for r in rows)
    total_flops = sum(r[4] for r in rows)
    total_acts = sum(r[5] for r in rows)
    n_conv = sum(r[1] in ("Conv2d", "ConvTranspose2d") for r in rows)
    lines.append("-" * len(lines[0]))
    lines.append(
        f"{n_conv} convolution layers, {total_params:,} parameters "
        f"({total_params * itemsize / 2**20:.1f} MiB), forward {total_flops / 1e9:.2f} GFLOPs "
        f"for batch {batch}, activations kept for backward {total_acts * itemsize / 2**20:.1f} MiB"
    )
    return "\n".join(lines)
