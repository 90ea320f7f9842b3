"""results.json: written last by a run, read by every tool (never the logs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from spt_dist.config import Config, ConfigError

from .identity import config_clash, config_hash

RESULTS = "results.json"


def read_results(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def checkpoint_config_hash(run_dir: Path) -> Optional[str]:
    """The config hash stored in the newest checkpoint's meta.json (checkpoints/step_<N>/), or
    None when there is none or it cannot be read (a damaged checkpoint: the checkpointer judges it)."""
    root = Path(run_dir) / "checkpoints"
    steps = sorted((int(p.name[5:]), p) for p in root.glob("step_*") if p.name[5:].isdigit()) \
        if root.is_dir() else []
    if not steps:
        return None
    try:
        return json.loads((steps[-1][1] / "meta.json").read_text()).get("identity", {}).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return None


def finished_results(cfg: Config, run_dir: Path) -> Optional[Dict[str, Any]]:
    """The results of `run_dir` when it holds this run, finished; None when there is work
    left. A finished run of another config there is a ConfigError naming both config hashes.

    Which config finished is told by config.yaml, compared through the current schema (so a
    newer version's added defaults do not make a run another one); without config.yaml, by the
    config hash results.json stores, else by the newest checkpoint's stored identity; with none
    of these the folder cannot say and is refused too."""
    done = read_results(run_dir)
    if not done or done.get("status") != "finished":
        return None
    if (Path(run_dir) / "config.yaml").is_file():
        clash = config_clash(cfg, run_dir)
        if clash:
            raise ConfigError(clash)
        return done
    ours = config_hash(cfg)
    held, where = done.get("config_hash"), Path(run_dir) / RESULTS
    if held is None:
        held, where = checkpoint_config_hash(run_dir), Path(run_dir) / "checkpoints"
        if held is None:
            raise ConfigError(f"{run_dir} holds a finished run but neither its results.json nor a config.yaml or "
                              f"checkpoint says which config it was; this config's hash is {ours}: move the "
                              f"folder away or choose another run.name")
    if held != ours:
        raise ConfigError(f"{run_dir} holds a finished run of another config (config_hash {held}, from {where}; "
                          f"this config's is {ours}); choose another run.name, or run that config")
    return done
