from spt_dist.errors import SptError


class CheckpointMismatchError(SptError, ValueError):
    """A checkpoint that belongs to another config, backbone, prompt shape or global batch (or
    another world size, without launch.elastic)."""


class CheckpointReadError(SptError, OSError):
    """A checkpoint's file could not be read while it was verified (an I/O error, not missing or
    mismatching content): the checkpoint is left in place, never taken for corrupt."""
