"""Errors a user can act on, and the exit code each one ends a command with.

Anything raised as a ``MinunetError`` is printed by the command-line tools as one line,
without a traceback: its message must say what was wrong and how to fix it.

The exit code tells a script which kind of failure it was (``minunet.cli.EXIT_CODES``):
2 for a usage error, something the user gave that can never work (a flag's value, a path,
a file that is not what it should be), 1 for a failure while the run was going (a full
disk, an I/O error, a loss that diverged): the same command may work another time.
"""


class MinunetError(Exception):
    """A problem with the user's input, files or machine, explained in one line."""

    exit_code = 2


class UsageError(MinunetError):
    """A flag or a path on the command line that cannot work, named in the message."""


class DataError(MinunetError):
    """A data set, archive, image or mask is missing, malformed or inconsistent."""


class CheckpointError(MinunetError):
    """A checkpoint is missing, truncated, unsafe, or does not fit the model."""


class RunFailure(MinunetError):
    """The run failed while it was going, through no fault of its arguments (a full
    disk, an I/O error, a diverging loss). Whatever was written before is intact."""

    exit_code = 1


class RunLocked(UsageError):
    """Another run is using the same output folder."""
