"""The U-Net model."""

from minunet.model.unet import ConvBlock, UNet

__all__ = ["ConvBlock", "UNet"]
