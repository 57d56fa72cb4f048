"""Model files that travel: minunet's U-Net for PyTorch and as an ONNX graph.

- ``minunet.io.interop.torch_unet``: ``TorchUNet``, the same network written in PyTorch,
  whose ``state_dict()`` keys and shapes equal minunet's, and the two conversions
  ``to_torch_state_dict`` / ``from_torch_state_dict``. Needs ``torch``.
- ``minunet.io.interop.onnx_export``: an ONNX graph of a trained U-Net, built node by node
  with the ``onnx`` package (no PyTorch involved). Needs ``onnx``.

Nothing here is imported by the rest of minunet, and this package imports neither
library itself, so NumPy-only installs never pay for (or need) either.
"""
