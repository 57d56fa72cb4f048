"""Errors a user can act on.

Anything raised as a ``MinunetError`` is printed by the command-line tools as one line,
without a traceback: its message must say what was wrong and how to fix it.
"""


class MinunetError(Exception):
    """A problem with the user's input, files or machine, explained in one line."""


class DataError(MinunetError):
    """A data set, archive, image or mask is missing, malformed or inconsistent."""


class CheckpointError(MinunetError):
    """A checkpoint is missing, truncated, unsafe, or does not fit the model."""
