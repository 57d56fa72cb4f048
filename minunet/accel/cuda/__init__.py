"""Hand-written CUDA kernels: the framework (``kernel``) and its CPU emulator (``emulator``)."""
