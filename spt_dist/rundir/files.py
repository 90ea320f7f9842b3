"""results.json: written last by a run, read by every tool (never the logs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from spt_dist.config import Config, ConfigError

from .identity import config_clash

RESULTS = "results.json"


def read_results(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def finished_results(cfg: Config, run_dir: Path) -> Optional[Dict[str, Any]]:
    """The results of `run_dir` when it holds this run, finished; None when there is work
    left. A finished run of another config there is a ConfigError."""
    done = read_results(run_dir)
    if not done or done.get("status") != "finished":
        return None
    clash = config_clash(cfg, run_dir)
    if clash:
        raise ConfigError(clash)
    return done
