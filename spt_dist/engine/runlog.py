"""The run folder's files: name, config.yaml, metrics.jsonl, TensorBoard events, results.json.

Only rank 0 writes. Tools read these files, never the console output.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

from spt_dist.config import Config, to_yaml


def config_hash(cfg: Config) -> str:
    """Hash of what decides the numbers (the run section's paths and display flags left out)."""
    neutral = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir="", name="", progress=True,
                                                                 log_every=1),
                                  launch=type(cfg.launch)())
    return hashlib.sha256(to_yaml(neutral).encode()).hexdigest()[:8]


def default_run_name(cfg: Config) -> str:
    m = cfg.method
    prompts = f"_p{m.prompt_length}{'deep' if m.deep else 'shallow'}" if m.prompt_length else ""
    return (f"{m.name}_{cfg.model.name}{prompts}_f{cfg.data.fraction:g}_s{cfg.run.seed}_"
            f"{config_hash(cfg)}")


def config_clash(cfg: Config, run_dir: Path) -> Optional[str]:
    """Why `run_dir` cannot hold the run `cfg` describes, or None (a new folder, or the same run).

    The same run means the same config_hash: launch settings (more time, more requeues) and the
    folder's own name and paths may change between a submission and its resubmission.
    """
    from spt_dist.config import ConfigError, load_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        held = load_config(str(path))
    except ConfigError as exc:
        return f"{path} cannot be read back ({exc})"
    if config_hash(held) == config_hash(cfg):
        return None
    return (f"{run_dir} already holds a run with a different config ({path}); resume it with "
            f"`spt train {run_dir}` or choose another run.name")


def run_dir_for(cfg: Config) -> Path:
    return Path(os.path.expanduser(cfg.run.out_dir)) / (cfg.run.name or default_run_name(cfg))


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_results(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


class MetricsLog:
    """metrics.jsonl (one JSON object per event, appended, flushed) and TensorBoard scalars."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._file = None
        self._tb = None
        if enabled:
            self._file = open(Path(run_dir) / "metrics.jsonl", "a")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, event: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{event}/{key}", value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None
