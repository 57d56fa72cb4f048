"""Overlap-tile prediction: segment an image of any size, tile by tile, in bounded memory.

The U-Net paper (Fig. 2) predicts large images in tiles: each output tile needs the
input around it as context, and where the image ends the missing context is filled by
mirroring the image. This module does that for any fully convolutional ``forward``:

    forward(x: (B, C, h, w) float32) -> logits (B, K, h', w')

Only ``batch`` tiles' activations exist at any time; the (K, H, W) result (or the (H, W)
class map) is the only full-size array.

Two kinds of network, two input-size rules (``minunet.model.geometry`` has them for U-Nets):

* **valid padding** (the paper's network: no zero padding, each 3x3 conv trims a pixel
  on each side): h' = h - 2 * border. The image is mirror-padded by ``border`` on every
  side (and at the bottom and right as far as the last tile reaches) and tiled so that the
  output tiles cover it. The tile side must be one the network accepts
  (``geometry.input_size``; 572 -> 388 for depth 4, border 92). Every tile starts on a
  multiple of 2**depth of the padded image, so its pooling grid is the whole image's:
  a tile's output is then exactly the whole padded image's output at that place, and the
  result equals running the network on the whole mirror-padded image. The output side
  itself is 4 more than a multiple of 2**depth (388 = 24 * 16 + 4), so for depth >= 3
  consecutive tiles step by the output side rounded down to a multiple of 2**depth and
  overlap by the remainder (4 px; the overlap is split at its middle).
* **same padding** (minunet's default network): h' = h, and a U-Net of depth d needs
  tile sides that are multiples of 2**d. The image is mirror-padded at the bottom and
  right to a multiple of 2**d, tiles overlap by ``2 * margin`` pixels, and each tile
  keeps only its centre part (the overlap is discarded), because pixels near a tile's
  edge saw zero padding instead of the real neighbourhood. Tiles start on multiples of
  2**d so the pooling grid matches the whole-image one. The result equals whole-image
  prediction (``minunet.infer.inference`` pads it with the same ``mirror_pad``) wherever
  ``margin`` is at least the network's receptive-field radius, and is a close
  approximation otherwise (a U-Net's receptive field is large; its far taps carry little
  weight).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from minunet.core.backend import to_numpy

Forward = Callable[[np.ndarray], Any]


def mirror_pad(array: np.ndarray, pads: list[tuple[int, int]]) -> np.ndarray:
    """Mirror-pad ``array`` by ``pads`` (one (before, after) pair per axis, as ``np.pad``).

    The one border rule of prediction, tiled or not. 'symmetric' (the edge pixel is
    repeated, then the image is read backwards) because that is how training pads a
    sample smaller than its crop (``minunet.data.folder.CropLoader``), so the model is
    asked about borders like the ones it learned on; it also works for a 1-pixel side
    and for pads wider than the image.
    """
    if all(p == (0, 0) for p in pads):
        return array
    return np.pad(array, pads, mode="symmetric")


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts 0, stride, 2 stride, ... and a last one flush with the end."""
    starts = list(range(0, max(length - tile, 0) + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _kept(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    """The part [lo, hi) of the image each tile keeps: overlaps split at their middle."""
    bounds = [0] + [(b + a + tile) // 2 for a, b in zip(starts, starts[1:], strict=False)]
    return list(zip(bounds, [*bounds[1:], length], strict=True))


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_tiled(
    forward: Forward,
    image: np.ndarray,
    tile: int,
    *,
    num_classes: int,
    depth: int,
    border: int = 0,
    batch: int = 4,
    margin: int | None = None,
    output: str = "logits",
) -> np.ndarray:
    """Predict a whole image tile by tile.

    forward: (B, C, t, t) float32 host array -> (B, K, t - 2 * border, same)
        logits, NumPy or CuPy (copied back per batch of tiles).
    image: (C, H, W) float32, already normalised like the training inputs.
    tile: input tile side (clipped to the padded image for a same net on a small image).
    num_classes: K. depth: the U-Net's number of poolings (sets the 2**depth alignment
        of a same-padding net). border: 0 for a same-padding net, else the pixels the
        net trims from each side (``geometry.border(depth, "valid")`` for a U-Net).
    batch: tiles per ``forward`` call (the memory bound). margin (same net only): pixels
        of each tile's edge discarded where tiles overlap; default ``tile // 8``.
    output: "logits" -> (K, H, W) float32; "classes" -> (H, W) int64 argmax (without a
        K x H x W array).
    See the module docstring for the rules.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if output not in ("logits", "classes"):
        raise ValueError(f"output must be 'logits' or 'classes', got {output!r}")
    image = np.asarray(image, dtype=np.float32)
    _, h, w = image.shape
    if border > 0:
        plan = _plan_valid(h, w, tile, border, depth)
    else:
        plan = _plan_same(h, w, tile, depth, tile // 8 if margin is None else margin)
    padded = mirror_pad(image, [(0, 0), *plan.pads])
    if output == "logits":
        result = np.zeros((num_classes, h, w), dtype=np.float32)
    else:
        result = np.zeros((h, w), dtype=np.int64)
    th, tw = plan.tile
    expect = (num_classes, th - 2 * border, tw - 2 * border)
    for group in _batches(plan.tiles, batch):
        tiles = np.stack([padded[:, y : y + th, x : x + tw] for (y, x), _ in group])
        logits = to_numpy(forward(tiles))
        if logits.shape[1:] != expect:
            raise ValueError(
                f"forward turned tiles of {th}x{tw} into {logits.shape[1:]}, expected "
                f"{expect}: check tile, border and num_classes (see minunet.infer.tiling)"
            )
        for out, (_, (rows, cols)) in zip(logits, group, strict=True):
            # rows/cols: where in this tile's output the kept part lies, and where it goes.
            (oy0, iy0, iy1), (ox0, ix0, ix1) = rows, cols
            iy1, ix1 = min(iy1, h), min(ix1, w)  # the padding at the bottom/right is cut
            if iy1 <= iy0 or ix1 <= ix0:
                continue
            part = out[:, oy0 : oy0 + iy1 - iy0, ox0 : ox0 + ix1 - ix0]
            if output == "logits":
                result[:, iy0:iy1, ix0:ix1] = part
            else:
                result[iy0:iy1, ix0:ix1] = part.argmax(axis=0)
    return result


class _Plan:
    """Where the tiles go: padding, tile size, and per tile its input corner (y, x) and,
    for rows and for columns, ``(out_lo, image_lo, image_hi)``: the tile's output from
    ``out_lo`` on fills the image's [image_lo, image_hi)."""

    def __init__(self, pads: list[tuple[int, int]], tile: tuple[int, int]) -> None:
        self.pads = pads
        self.tile = tile
        self.tiles: list[tuple[tuple[int, int], tuple[tuple, tuple]]] = []


def _plan_valid(h: int, w: int, tile: int, border: int, depth: int) -> _Plan:
    out = tile - 2 * border
    if out <= 0:
        raise ValueError(f"tile {tile} leaves no output after trimming {border} px per side")
    # A tile's output starts where its input does (both shifted by ``border``), so the tile
    # step is the output side rounded down to the pooling grid: 388 -> 384 for depth 4.
    align = 2**depth
    step = out // align * align
    if step == 0:
        raise ValueError(
            f"tile {tile} gives {out} output px, fewer than the 2**depth = {align} px a "
            f"tile must advance to stay on the pooling grid: use a tile of at least "
            f"{tile + align}"
        )

    def axis(length: int) -> list[tuple[int, tuple]]:
        # The fewest starts 0, step, 2 step, ... whose outputs reach the end.
        starts = [i * step for i in range(1 + -(-max(length - out, 0) // step))]
        return [
            (s, (lo - s, lo, hi))
            for s, (lo, hi) in zip(starts, _kept(starts, out, length), strict=True)
        ]

    rows, cols = axis(h), axis(w)
    # The padded image holds the last tile's whole input: ``border`` before, the rest after.
    pads = [(border, rows[-1][0] + tile - border - h), (border, cols[-1][0] + tile - border - w)]
    plan = _Plan(pads, (tile, tile))
    for y, row_part in rows:
        for x, col_part in cols:
            plan.tiles.append(((y, x), (row_part, col_part)))
    return plan


def _plan_same(h: int, w: int, tile: int, depth: int, margin: int) -> _Plan:
    align = 2**depth
    if tile % align:
        raise ValueError(
            f"tile {tile} is not a multiple of 2**depth = {align}, which a same-padding "
            f"U-Net of depth {depth} needs: use e.g. {max(align, tile // align * align)}"
        )
    hp, wp = -(-h // align) * align, -(-w // align) * align
    th, tw = min(tile, hp), min(tile, wp)
    plan = _Plan([(0, hp - h), (0, wp - w)], (th, tw))

    def axis(length: int, t: int) -> list[tuple[int, tuple]]:
        stride = max((t - 2 * margin) // align * align, align)
        starts = _starts(length, t, stride)
        return [
            (s, (lo - s, lo, hi))
            for s, (lo, hi) in zip(starts, _kept(starts, t, length), strict=True)
        ]

    for y, row_part in axis(hp, th):
        for x, col_part in axis(wp, tw):
            plan.tiles.append(((y, x), (row_part, col_part)))
    return plan
