"""SPT's prototype initialisation of prompts: streaming, distributed, cached; and the
prompt-to-prototype alignment analysis.

Names are imported on first use, so that building the `spt` command does not import torch.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "alignment_metrics": "alignment", "plot_alignment": "alignment", "read_alignment": "alignment",
    "PromptInitError": "errors",
    "InitResult": "initialize", "initialize_prompts": "initialize", "select_init_keys": "initialize",
    "select_init_draws": "initialize",
    "STRATEGIES": "pass_plan", "InitPlan": "pass_plan", "has_prototype_pass": "pass_plan",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spt_dist.prompt_init' has no attribute '{name}'")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
