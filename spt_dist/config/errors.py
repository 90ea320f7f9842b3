from spt_dist.errors import SptError


class ConfigError(SptError, ValueError):
    """A config value that cannot run; the message names the key and what is allowed."""
