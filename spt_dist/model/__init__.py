"""The model stage: timm backbone, local weight files, PromptedViT, config -> model.

Names are imported lazily so that importing the package loads neither torch nor timm. The
backbone registry (plain data) lives in spt_dist.config.registry and is re-exported here.
"""
from importlib import import_module
from typing import Any

_REGISTRY = "spt_dist.config.registry"
_EXPORTS = {
    "BACKBONES": _REGISTRY, "BackboneSpec": _REGISTRY, "backbone_spec": _REGISTRY, "normalization": _REGISTRY,
    "build_backbone": "backbone",
    "Checkpoint": "weights", "CheckpointError": "weights", "detect_format": "weights",
    "read_checkpoint": "weights", "load_backbone_weights": "weights",
    "weights_hash": "weights", "save_backbone_weights": "weights",
    "PromptedViT": "prompted_vit", "vpt_uniform_bound": "prompted_vit",
    "PromptSet": "prompt_stack", "PromptStack": "prompt_stack", "MultiPromptViT": "prompt_stack",
    "build_model": "build", "resolve_pool": "build", "checkpoint_format": "weights", "input_spec": "build",
    "InputSpec": "build", "read_weights": "build", "build_run_backbone": "build", "wrap_backbone": "build",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spt_dist.model' has no attribute '{name}'")
    module = _EXPORTS[name]
    return getattr(import_module(module if "." in module else f"{__name__}.{module}"), name)
