"""minunet: a U-Net for semantic segmentation in NumPy and CuPy, every backward pass by hand."""

__version__ = "0.1.0"
