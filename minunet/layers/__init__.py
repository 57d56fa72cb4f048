"""The layers of a U-Net, each a forward/backward pair written by hand."""

from minunet.layers.base import Layer, LayerList, Parameter
from minunet.layers.batchnorm import BatchNorm2d
from minunet.layers.concat import Concat
from minunet.layers.conv import Conv2d
from minunet.layers.conv_transpose import ConvTranspose2d
from minunet.layers.dropout import Dropout
from minunet.layers.pool import MaxPool2d
from minunet.layers.relu import ReLU

__all__ = [
    "BatchNorm2d",
    "Concat",
    "Conv2d",
    "ConvTranspose2d",
    "Dropout",
    "Layer",
    "LayerList",
    "MaxPool2d",
    "Parameter",
    "ReLU",
]
