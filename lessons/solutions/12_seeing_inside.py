"""Solutions to lesson 12's exercises."""


def my_receptive_field(layers):
    """r += (k - 1) * jump; a pool (stride k) multiplies the jump by k."""
    r, jump = 1, 1
    for kind, k in layers:
        r += (k - 1) * jump
        if kind == "pool":
            jump *= k
    return r


# "reflect" does not repeat the edge pixel, "symmetric" does: the tiles' context changes,
# so the tiled result no longer equals the net on the symmetric-padded image. The shapes and
# the class map (argmax of whatever logits come out) are unaffected.
answer_mirror_mutation = {"tiled_equals_whole"}
