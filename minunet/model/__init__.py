"""The U-Net model."""

from minunet.model.geometry import PADDINGS
from minunet.model.unet import ConvBlock, UNet

__all__ = ["PADDINGS", "ConvBlock", "UNet"]
