from .errors import ConfigError
from .load import compose, load_config, to_yaml
from .schema import Config
from .validate import validate

__all__ = ["Config", "ConfigError", "compose", "load_config", "to_yaml", "validate"]
