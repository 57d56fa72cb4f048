"""Mask values -> class labels: which raw pixel value of a mask file is which class.

A mask file stores each pixel's class as some value: a gray level (0/255 for a binary
mask), a palette index, a 16-bit value, or a colour. ``class_mapping`` decides the raw
value of each class from what the masks hold and what ``ROOT/classes.json`` declares;
``to_labels`` then turns a raw mask into uint8 labels 0..K-1 (``IGNORE_LABEL`` where
ignored). The rules, with the options that steer them:

* index masks: the distinct values over all masks, sorted, become classes 0..K-1
  (``0 -> 0, 255 -> 1`` for a 0/255 binary mask; 0/1 masks map to themselves).
* ``classes.json`` mapping names to colours (``{"road": [128, 64, 128], ...}``): class i
  is the i-th entry, colours packed as ``r * 65536 + g * 256 + b`` (``imageio.pack_rgb``).
* ``classes.json`` mapping names to index values (``{"membrane": 0, "cell": 255}``): it
  names the classes and fixes their order.
* ``ignore_index=V``: raw value V is no class; its pixels get label 255.
* ``num_classes=K``: more than K distinct values is an error; when every value is below
  K, values are class indices as they are (identity, even if some class never occurs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minunet.data.dataset import IGNORE_LABEL
from minunet.data.imageio import pack_rgb
from minunet.errors import DataError

CLASSES_FILE = "classes.json"
MAX_CLASSES = 255  # labels are uint8 and 255 is reserved for ignored pixels


@dataclass
class ClassSpec:
    """What ``classes.json`` says: names, and either colours or index values (or nothing)."""

    names: list[str] | None = None
    values: list[int] | None = None  # raw values (packed colours when colour is True)
    colour: bool = False


def read_classes_json(root: Path) -> ClassSpec:
    """What ``ROOT/classes.json`` declares (an empty ``ClassSpec`` when there is none)."""
    path = root / CLASSES_FILE
    if not path.is_file():
        return ClassSpec()
    fix = 'write {"name": [r, g, b], ...} for colour masks or {"name": value, ...}'
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read this JSON ({exc}); {fix}") from None
    if not isinstance(spec, dict) or not spec:
        raise DataError(f"{path}: expected a non-empty object; {fix}")
    items = list(spec.items())
    if all(isinstance(v, int) and not isinstance(v, bool) for _, v in items):
        return ClassSpec([str(k) for k, _ in items], [int(v) for _, v in items], False)
    if all(
        isinstance(v, list) and len(v) == 3 and all(isinstance(c, int) and 0 <= c < 256 for c in v)
        for _, v in items
    ):
        colours = pack_rgb(np.array([v for _, v in items], dtype=np.uint8)).tolist()
        return ClassSpec([str(k) for k, _ in items], [int(c) for c in colours], True)
    raise DataError(f"{path}: every entry must be a colour [r, g, b] or an integer; {fix}")


def _describe(value: int, colour: bool) -> str:
    """A raw value as the user wrote it: ``255``, or a colour ``(128, 64, 128)``."""
    if colour:
        return f"({value >> 16}, {(value >> 8) & 255}, {value & 255})"
    return str(value)


def class_mapping(
    found: np.ndarray,
    spec: ClassSpec,
    ignore_index: int | None,
    num_classes: int | None,
    root: Path,
    where: dict[int, str],
) -> tuple[list[int], list[str]]:
    """Decide the raw value of each class and the class names.

    found: sorted distinct raw values over all masks. where: a file holding each value,
    for error messages. Returns ``(mask_values, class_names)``.
    """
    found = [int(v) for v in found if ignore_index is None or int(v) != ignore_index]
    if spec.values is not None:
        declared = [v for v in spec.values if ignore_index is None or v != ignore_index]
        names = [n for n, v in zip(spec.names, spec.values, strict=True) if v in declared]
        unknown = [v for v in found if v not in set(declared)]
        if unknown:
            what = "colours" if spec.colour else "values"
            shown = ", ".join(f"{_describe(v, spec.colour)} in {where[v]}" for v in unknown[:5])
            raise DataError(
                f"masks contain {len(unknown)} {what} not in {root / CLASSES_FILE} "
                f"({shown}); add them to {CLASSES_FILE}, fix the masks, or pass "
                "--ignore-index for a 'void' value"
            )
        values = declared
    elif num_classes is not None and found and found[-1] < num_classes and found[0] >= 0:
        values = list(range(num_classes))  # the values already are class indices
        names = [f"class {i}" for i in values]
    else:
        values = found
        names = [f"class {i}" for i in range(len(values))]
    if num_classes is not None and len(values) > num_classes:
        raise DataError(
            f"masks under {root} hold {len(values)} distinct values "
            f"({', '.join(map(str, values[:8]))}{', ...' if len(values) > 8 else ''}) but "
            f"{num_classes} classes were declared; raise --num-classes, pass --ignore-index "
            "for a 'void' value, or fix masks saved lossily (JPEG masks blur class values)"
        )
    if len(values) > MAX_CLASSES:
        raise DataError(
            f"masks under {root} hold {len(values)} distinct values, more than "
            f"{MAX_CLASSES} classes; masks saved as JPEG get blurred values: save them as PNG"
        )
    if not values:
        raise DataError(f"masks under {root} hold no class value at all (only ignored pixels)")
    if num_classes is not None and len(names) < num_classes:
        names += [f"class {i}" for i in range(len(names), num_classes)]
        values += [-1] * (num_classes - len(values))  # classes no mask uses
    return values, names


def to_labels(raw: np.ndarray, values: list[int], ignore_index: int | None) -> np.ndarray:
    """Raw mask values -> (H, W) uint8 labels: index into ``values``, 255 where ignored."""
    # A sorted lookup table: raw value -> its class; classes no mask uses (-1) are left out.
    table_labels = np.array([i for i, v in enumerate(values) if v >= 0], dtype=np.int64)
    table_values = np.array(values, dtype=np.int64)[table_labels]
    order = np.argsort(table_values)
    table_values, table_labels = table_values[order], table_labels[order]
    raw64 = raw.astype(np.int64)
    pos = np.clip(np.searchsorted(table_values, raw64), 0, max(len(table_values) - 1, 0))
    labels = table_labels[pos].astype(np.uint8)
    if ignore_index is not None:
        labels[raw64 == ignore_index] = IGNORE_LABEL
    return labels


def mapping_summary(values: list[int], names: list[str], colour: bool, ignore: int | None) -> str:
    """One line: ``found 2 classes: 0 -> 0, 255 -> 1``, with names when they are given."""
    parts = []
    for i, (v, n) in enumerate(zip(values, names, strict=True)):
        label = "(unused)" if v < 0 else _describe(v, colour)
        parts.append(f"{label} -> {i}" + ("" if n == f"class {i}" else f" ({n})"))
    tail = "" if ignore is None else f"; {ignore} ignored (label {IGNORE_LABEL})"
    return f"found {len(values)} classes: {', '.join(parts)}{tail}"
