"""The U-Net's size rule: which input sides a U-Net accepts, and what side comes out.

One side (height or width) goes through the network like this, for depth d:

    encoder, d levels:   block (two 3x3 convs)  -> 2x2 max-pool (halves; the side must be even)
    bottleneck:          block
    decoder, d levels:   2x2 up-convolution (doubles) -> concat with the skip map -> block

A 3x3 convolution keeps the side with padding "same" and trims a pixel from each side with
"valid" (the paper's network), so a block trims ``block_trim(padding)`` = 0 or 4 pixels.
A pool must see an even side: an odd one would drop a row, and the skip map would no longer
line up with the map that comes back up to meet it.

The sides a net accepts are evenly spaced, ``2**d`` apart (``input_size(d, padding, k)``):

* "same": 2**d, 2 * 2**d, ...; the output side equals the input side.
* "valid": walking back up from the bottleneck's input side b, each level undoes a pool and a
  block, s = 2 s' + 4, so the input side is 2**d (b + 4) - 4 for a whole number b. The
  decoder side u starts at b - 4 and goes u -> 2u - 4 per level (u - 4 doubles): it stays
  positive for every level when b - 4 >= 4, or b - 4 = 3 with a single level (3 -> 2). The
  output is 2**d (b - 8) + 4, smaller than the input by ``2 * border(d, "valid")`` =
  12 * 2**d - 8 for every accepted side: 572 -> 388 for d = 4 (the paper's figure 1).

``output_size`` walks a side through the network step by step (the rule as the layers apply
it); the closed forms above give the accepted sides without a search, and the tests check
the two against each other and against the model's real forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.errors import MinunetError

PADDINGS = ("same", "valid")


def block_trim(padding: str) -> int:
    """Pixels one ConvBlock (two 3x3 convolutions) takes off a side: 0 ("same") or 4."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    return 0 if padding == "same" else 4


@dataclass(frozen=True)
class SideTrace:
    """One input side followed through a U-Net.

    skips:  the encoder blocks' output sides, level 0 first (what the skip connections carry)
    crops:  per decoder step, deepest first, the pixels cut from each side of the skip map
            so it matches the upsampled map (all 0 for "same")
    output: the logits' side
    """

    skips: tuple[int, ...]
    crops: tuple[int, ...]
    output: int


def trace(size: int, depth: int, padding: str) -> SideTrace | None:
    """Follow an input side through a U-Net of ``depth`` poolings; None if it does not fit."""
    trim = block_trim(padding)
    skips = []
    for _ in range(depth):
        size -= trim
        if size < 2 or size % 2:
            return None
        skips.append(size)
        size //= 2
    size -= trim  # the bottleneck block
    if size < 1:
        return None
    crops = []
    for skip in reversed(skips):
        up = 2 * size
        crops.append((skip - up) // 2)  # the difference is even: both sides are even
        size = up - trim
        if size < 1:
            return None
    return SideTrace(tuple(skips), tuple(crops), size)


def output_size(size: int, depth: int, padding: str) -> int | None:
    """The logits' side for an input side, or None when the net does not accept it."""
    sides = trace(size, depth, padding)
    return None if sides is None else sides.output


def input_size(depth: int, padding: str, k: int = 0) -> int:
    """The (k+1)-th smallest input side the net accepts (k = 0, 1, ...), 2**depth apart.

    "same": 2**depth * (k + 1). "valid": 2**depth * (b + 4) - 4 with the bottleneck input
    b = 8 + k (b = 7 + k for depth 1); see the module docstring. 188, 204, ... for depth 4.
    """
    block_trim(padding)  # checks the padding
    step = 2**depth
    if padding == "same":
        return step * (k + 1)
    smallest_bottom = 7 if depth == 1 else 8
    return step * (smallest_bottom + k + 4) - 4


def nearest_input_sizes(size: int, depth: int, padding: str) -> tuple[int | None, int]:
    """The accepted sides nearest to ``size``: (the largest <= size, or None if there is
    none; the smallest >= size). Both are ``size`` when it is accepted."""
    first, step = input_size(depth, padding), 2**depth
    if size < first:
        return None, first
    below = first + (size - first) // step * step
    return below, below if below == size else below + step


def border(depth: int, padding: str) -> int:
    """Pixels the net trims from each side of its input: 0 for "same", 6 * 2**depth - 4
    for "valid" (92 for depth 4). The output side is ``size - 2 * border``."""
    first = input_size(depth, padding)
    return (first - trace(first, depth, padding).output) // 2


def check_input_size(size: int, depth: int, padding: str) -> int:
    """The output side for an input side, or MinunetError naming the nearest accepted sides."""
    out = output_size(size, depth, padding)
    if out is None:
        below, above = nearest_input_sizes(size, depth, padding)
        unit = f"a multiple of {2**depth}" if padding == "same" else "valid"
        hint = f"nearest valid sizes: {below} or {above}" if below else f"try {above}"
        raise MinunetError(
            f"input side {size} does not fit a {padding}-padding U-Net of depth {depth} "
            f"(each pooled map must have even sides; {unit}); {hint}"
        )
    return out
