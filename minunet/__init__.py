"""minunet: a U-Net for semantic segmentation in NumPy and CuPy, every backward pass by hand.

    from minunet import UNet, SoftmaxCrossEntropy, get_backend

The commands: ``python -m minunet.train``, ``.predict``, ``.evaluate``, ``.export``,
``.tune`` (each with ``--help``).
"""

from minunet.core.backend import get_array_module, get_backend
from minunet.model import UNet
from minunet.nn.losses import SoftmaxCrossEntropy

__version__ = "0.1.0"

__all__ = ["SoftmaxCrossEntropy", "UNet", "get_array_module", "get_backend", "__version__"]
