"""The layers of a U-Net, each a forward/backward pair written by hand."""

from minunet.nn.base import Layer, LayerList, Parameter
from minunet.nn.batchnorm import BatchNorm2d
from minunet.nn.concat import Concat
from minunet.nn.conv import Conv2d
from minunet.nn.conv_transpose import ConvTranspose2d
from minunet.nn.dropout import Dropout
from minunet.nn.pool import MaxPool2d
from minunet.nn.relu import ReLU
from minunet.nn.sync_batchnorm import SyncBatchNorm2d, use_sync_batchnorm

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
    "SyncBatchNorm2d",
    "use_sync_batchnorm",
]
