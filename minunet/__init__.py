"""minunet: a U-Net for semantic segmentation in NumPy and CuPy, every backward pass by hand.

    from minunet import UNet, SoftmaxCrossEntropy, Adam, get_backend

The public API: the U-Net, its layers (each a forward/backward pair), the loss, the
optimisers and the backend switch. The commands: ``python -m minunet.train``,
``.predict``, ``.evaluate``, ``.export``, ``.tune`` (each with ``--help``).
"""

from minunet.core.backend import get_array_module, get_backend
from minunet.model import UNet
from minunet.nn import (
    BatchNorm2d,
    Concat,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Layer,
    MaxPool2d,
    Parameter,
    ReLU,
    SyncBatchNorm2d,
)
from minunet.nn.losses import SoftmaxCrossEntropy
from minunet.nn.optim import SGD, Adam, AdamW

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "BatchNorm2d",
    "Concat",
    "Conv2d",
    "ConvTranspose2d",
    "Dropout",
    "Layer",
    "MaxPool2d",
    "Parameter",
    "ReLU",
    "SoftmaxCrossEntropy",
    "SyncBatchNorm2d",
    "UNet",
    "__version__",
    "get_array_module",
    "get_backend",
]
