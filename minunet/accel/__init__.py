"""Accelerated implementations of the reference operations in ``minunet.nn``.

``cpu``: the blocked channels-last convolution for NumPy. ``cuda``: hand-written CUDA
kernels, their compiler and launcher (``cuda.kernel``), and a CPU emulator that runs them
thread by thread for the tests (``cuda.emulator``). Each is tested against the reference.
"""
