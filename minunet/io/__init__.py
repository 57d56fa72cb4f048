"""Files: the checkpoint format, atomic writes, and the PyTorch / ONNX interop and export."""
