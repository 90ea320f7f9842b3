"""Nested mappings as dotted keys, the form config overrides, reports and trackers use."""
from __future__ import annotations

from typing import Any, Dict


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}; a leaf that is not a dict keeps its value."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out
