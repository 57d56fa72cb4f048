"""The engine's core: the array backend, im2col/col2im (the reference a convolution is
built on) and the numerical gradient check that every layer is tested with."""
