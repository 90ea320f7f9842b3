"""The root of every error that is the user's to fix (a bad config, file, shard or checkpoint).

The `spt` command prints such an error as one line and exits with code 2; anything else is a
bug or a failure of the machine and keeps its traceback (RendezvousError is one such).
"""


class SptError(Exception):
    """A problem with the input of a run; the message says what and where."""


class RendezvousError(RuntimeError):
    """The ranks of a job could not meet at start-up (a port taken by another process, a peer
    that never came): a failure of the machine, not of the input. Raised only by the
    distributed start-up (spt_dist.distributed.init_distributed, spt_dist.study.rendezvous),
    so that a submitted task retries exactly these on other ports (study/task.py)."""
