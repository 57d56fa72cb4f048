"""Solutions to lesson 04's exercises."""


def my_valid_output_size(size, depth):
    """Two unpadded 3x3 convs (-4) then a pool (/2, even sizes only), depth times; the
    bottleneck's convs; then depth times up (x2) and two convs (-4)."""
    for _ in range(depth):
        size -= 4
        if size <= 0 or size % 2:
            return None
        size //= 2
    size -= 4
    if size <= 0:
        return None
    for _ in range(depth):
        size = 2 * size - 4
    return size if size > 0 else None


# Replacing the sum by the skip's gradient alone drops everything that came back through
# the pool and the deeper levels: the encoder's gradients go wrong. The head's gradient
# comes before any of that, and the forward is untouched.
answer_skip_mutation = {"gradient_first_conv"}
