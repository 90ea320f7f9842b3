"""The serving stage: one frozen backbone answering many tasks from their prompt packs.

bank.py (PromptBank: packs checked against the backbone, mixed-task batches in one pass),
offline.py (image files and shard splits), batcher.py (dynamic batching), metrics.py, app.py
(the HTTP endpoints), server.py (uvicorn on a bound socket), cli.py (`spt serve`, `spt predict`).
Names are imported lazily: importing the package loads neither torch nor the web framework.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "PromptBank": "bank", "Task": "bank", "BadImageError": "bank", "UnknownTaskError": "bank",
    "TaskNameError": "bank", "TaskExistsError": "bank",
    "classify_files": "offline", "score_shards": "offline",
    "DynamicBatcher": "batcher", "ServeMetrics": "metrics", "create_app": "app", "serve_forever": "server",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spt_dist.serve' has no attribute '{name}'")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
