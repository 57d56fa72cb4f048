"""The one in-memory form every data source produces, whatever it read.

A source (synthetic, Oxford-IIIT Pets, a folder of the user's own images, ISBI 2012)
returns ``SegmentationData`` for each split. Training, evaluation and the lessons only
ever see this form, so a new source is one new loader and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The label of pixels that belong to no class ("void"): the loss and the metrics skip
# them, and labels are uint8, so 255 is the one value no class can have.
IGNORE_LABEL = 255
# Oxford-IIIT Pets trimap classes, as in the original notebook: trimap value minus 1.
PETS_CLASS_NAMES = ("pet", "background", "outline")


@dataclass
class _Split:
    """What the two in-memory forms below share: the class metadata, its defaults, and
    ``num_classes``. The fields are listed here once, in the order both constructors take
    them; each form narrows the types of ``images``, ``masks`` and ``weights`` and checks
    their shapes in ``_check_arrays``.
    """

    images: Any
    masks: Any
    class_names: list[str]
    mask_values: list[int] = field(default_factory=list)
    ignore_index: int | None = None
    weights: Any = None
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._check_arrays()
        # Defaults that depend on other fields, so a dataclass default cannot give them.
        if not self.mask_values:
            self.mask_values = list(range(len(self.class_names)))
        if not self.names:
            self.names = [str(i) for i in range(len(self.images))]

    def _check_arrays(self) -> None:
        """Raise ValueError unless images and masks have the form's shapes and dtypes."""
        raise NotImplementedError

    def _class_metadata(self) -> dict[str, Any]:
        """The class metadata copied, for ``subset``: a subset never aliases its lists."""
        return {
            "class_names": list(self.class_names),
            "mask_values": list(self.mask_values),
            "ignore_index": self.ignore_index,
        }

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)


# The forms re-declare images, masks and weights only to narrow their types: a field
# declared again in a dataclass subclass keeps its place in the constructor.


@dataclass
class SegmentationData(_Split):
    """Images and per-pixel class labels of one split, held on the host.

    images:       (N, H, W, C) uint8, C = 1 (grayscale) or 3 (RGB)
    masks:        (N, H, W) uint8 class indices in [0, num_classes), or ``ignore_index``
    class_names:  one name per class, ``len(class_names) == num_classes``
    mask_values:  the value each class had in the user's own mask files (e.g. [0, 255]),
                  so predictions can be written back in the user's values
    ignore_index: label value skipped by the loss and the metrics, or None
    weights:      optional (N, H, W) float32 per-pixel loss weights (the U-Net paper's
                  border weight map), or None
    names:        one identifier per sample (file stem), for reports and plots
    """

    images: np.ndarray
    masks: np.ndarray
    weights: np.ndarray | None = None

    def _check_arrays(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be a (N, H, W, C) uint8 array, got {self.images.dtype} "
                f"of shape {self.images.shape}"
            )
        if self.masks.shape != self.images.shape[:3]:
            raise ValueError(
                f"masks must have shape {self.images.shape[:3]} (N, H, W) to match the "
                f"images, got {self.masks.shape}"
            )

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[3])

    def subset(self, index: np.ndarray | list[int]) -> SegmentationData:
        """The samples at ``index`` (a copy), keeping the class metadata."""
        index = np.asarray(index, dtype=np.int64)
        return SegmentationData(
            images=self.images[index],
            masks=self.masks[index],
            weights=None if self.weights is None else self.weights[index],
            names=[self.names[i] for i in index],
            **self._class_metadata(),
        )


@dataclass
class NativeSizeData(_Split):
    """``SegmentationData`` at native resolution: one array per sample, sizes differ.

    images:  list of (H_i, W_i, C) uint8, C the same for all (1 or 3)
    masks:   list of (H_i, W_i) uint8 class labels, 255 where ignored
    weights: list of (H_i, W_i) float32 border weight maps, or None
    The class metadata has the meaning it has in ``SegmentationData``.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    weights: list[np.ndarray] | None = None

    def _check_arrays(self) -> None:
        for image, mask in zip(self.images, self.masks, strict=True):
            if image.ndim != 3 or image.dtype != np.uint8 or mask.shape != image.shape[:2]:
                raise ValueError(
                    f"expected (H, W, C) uint8 images with (H, W) masks, got {image.dtype} "
                    f"{image.shape} with {mask.shape}"
                )

    @property
    def in_channels(self) -> int:
        return int(self.images[0].shape[2]) if self.images else 1

    def subset(self, index: np.ndarray | list[int]) -> NativeSizeData:
        """The samples at ``index`` (the arrays are shared, not copied)."""
        index = [int(i) for i in index]
        return NativeSizeData(
            images=[self.images[i] for i in index],
            masks=[self.masks[i] for i in index],
            weights=None if self.weights is None else [self.weights[i] for i in index],
            names=[self.names[i] for i in index],
            **self._class_metadata(),
        )
