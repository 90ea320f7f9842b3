"""The root of every error that is the user's to fix (a bad config, file, shard or checkpoint).

The `spt` command prints such an error as one line and exits with code 2; anything else is a
bug or a failure of the machine and keeps its traceback.
"""


class SptError(Exception):
    """A problem with the input of a run; the message says what and where."""
