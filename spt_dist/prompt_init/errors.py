"""The prompt-init stage's input error."""
from spt_dist.errors import SptError


class PromptInitError(SptError, RuntimeError):
    """Prototype init cannot run; raised on every rank with the same message."""
