class ConfigError(ValueError):
    """A config value that cannot run; the message names the key and what is allowed."""
