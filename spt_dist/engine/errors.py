from spt_dist.errors import SptError


class CheckpointMismatchError(SptError, ValueError):
    """A checkpoint that belongs to another config, backbone, prompt shape or global batch (or
    another world size, without launch.elastic)."""
