"""Expand a sweep (run files x a grid of dot-list values) into run configs.

On the command line a grid axis is `key=v1,v2,...`; in a sweep YAML it is a list:

    config: configs/demo.yaml          # or `configs: [a.yaml, b.yaml]`
    overrides: [optim.epochs=2]
    grid:
      method.prompt_length: [10, 20]
      optim.lr: [0.1, 0.01]
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from .errors import ConfigError


@dataclass
class SweepPoint:
    config: Optional[str]
    overrides: List[str]
    suffix: str  # appended to the run name so every point has its own run folder


def parse_grid(items: Sequence[str]) -> Dict[str, List[str]]:
    grid: Dict[str, List[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"grid axis '{item}' is not of the form key=v1,v2 (e.g. optim.lr=0.1,0.01)")
        if key in grid:
            raise ConfigError(f"grid axis '{key}' is given twice")
        grid[key] = [v.strip() for v in values.split(",")]
    return grid


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")


def expand(configs: Sequence[Optional[str]], grid: Dict[str, List[str]],
           overrides: Sequence[str] = ()) -> List[SweepPoint]:
    """Every run file crossed with every grid point, in a stable order."""
    configs = list(configs) or [None]
    keys = list(grid)
    points = []
    for path in configs:
        stem = _slug(Path(path).stem) if path and len(configs) > 1 else ""
        for values in itertools.product(*(grid[k] for k in keys)):
            sets = [f"{k}={v}" for k, v in zip(keys, values)]
            parts = ([stem] if stem else []) + [f"{_slug(k.rsplit('.', 1)[-1])}-{_slug(v)}"
                                                for k, v in zip(keys, values)]
            suffix = ("__" + "_".join(parts)) if parts else ""
            points.append(SweepPoint(path, list(overrides) + sets, suffix))
    return points


def is_sweep_file(path: str) -> bool:
    """A sweep YAML has config/configs/grid at the top; a run file has config sections."""
    raw = OmegaConf.load(path)
    return hasattr(raw, "keys") and bool({"config", "configs", "grid"} & set(raw.keys()))


def read_grid_file(path: str, kind: str, allowed: Sequence[str], hint: Tuple[Sequence[str], str] = ((), "")
                   ) -> Tuple[dict, Dict[str, List[str]], List[str]]:
    """(raw mapping, grid, overrides) of a sweep-format YAML file (`kind`: sweep or pack), its
    keys checked against `allowed`; hint = (keys, text): text is added to the unknown-key error
    when one of those keys is among the unknown ones."""
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:
        raise ConfigError(f"{path}: cannot parse {kind} YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {kind} file is a mapping with {', '.join(allowed)}")
    unknown = set(raw) - set(allowed)
    if unknown:
        extra = hint[1] if unknown & set(hint[0]) else ""
        raise ConfigError(f"{path}: unknown {kind} key(s) {', '.join(sorted(unknown))}{extra}; "
                          f"allowed: {', '.join(allowed)}")
    grid = {str(k): [str(v) for v in (vs if isinstance(vs, list) else [vs])]
            for k, vs in (raw.get("grid") or {}).items()}
    return raw, grid, [str(o) for o in raw.get("overrides") or []]


def load_sweep_file(path: str) -> tuple:
    """(configs, grid, overrides) from a sweep YAML."""
    raw, grid, overrides = read_grid_file(path, "sweep", ("config", "configs", "overrides", "grid"))
    base = Path(path).parent
    def _at(p: str) -> str:
        return str(base / p) if not Path(p).is_absolute() and (base / p).exists() else p
    configs = [_at(str(c)) for c in ([raw["config"]] if raw.get("config") else []) + list(raw.get("configs") or [])]
    return configs, grid, overrides
