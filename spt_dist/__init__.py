"""spt_dist: distributed visual prompt tuning (VPT, SPT) of frozen Vision Transformers."""
from typing import Any

__version__ = "0.1.0"
__all__ = ["PromptedViT", "build_backbone", "load_config", "Config", "ConfigError"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `spt config show` on a login node does not import torch.
    if name == "PromptedViT":
        from spt_dist.model.prompted_vit import PromptedViT
        return PromptedViT
    if name == "build_backbone":
        from spt_dist.model.backbone import build_backbone
        return build_backbone
    if name in ("load_config", "Config", "ConfigError"):
        import spt_dist.config as config
        return getattr(config, name)
    raise AttributeError(name)
