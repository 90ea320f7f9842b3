"""The model stage: registry (plain data), timm backbone, local checkpoints, PromptedViT, config build.

Names are imported lazily so that `spt_dist.model.registry` stays free of torch and timm.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "BACKBONES": "registry", "BackboneSpec": "registry", "backbone_spec": "registry",
    "normalization": "registry",
    "build_backbone": "backbone",
    "Checkpoint": "checkpoints", "CheckpointError": "checkpoints", "detect_format": "checkpoints",
    "read_checkpoint": "checkpoints", "load_backbone_weights": "checkpoints",
    "weights_hash": "checkpoints", "save_backbone_weights": "checkpoints",
    "PromptedViT": "prompted_vit", "vpt_uniform_bound": "prompted_vit",
    "build_model": "build", "resolve_pool": "build", "checkpoint_format": "build", "input_spec": "build",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spt_dist.model' has no attribute '{name}'")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
