"""Solutions to lesson 08's exercises."""


def my_col2im_source_row(h, i, stride, pad, dil, ho):
    """Tap i of output row oh reads h = oh*stride - pad + i*dil: solve for oh."""
    top = h + pad - i * dil
    if top < 0 or top % stride or top // stride >= ho:
        return None
    return top // stride
