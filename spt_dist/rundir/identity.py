"""Which run a folder holds: the config hash, the default folder name, clash detection.

The same run means the same config_hash: what decides the numbers. Launch settings (more
time, more requeues, another shape), the run section's paths, name and display flags, and the
caches (NEUTRAL_KEYS: how fast a run gets its numbers) may change between a submission and its
resubmission; so may data.num_workers under the exact shuffle, whose order does not depend on
it. The cache keys are left out of the hashed text altogether, so a config hashes as it did
before they existed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional

from spt_dist.config import Config
from spt_dist.config.dotted import flatten
from spt_dist.config.load import dump_yaml

# Run settings that name, place or show a run, never change its numbers.
NEUTRAL_RUN = {"out_dir": "", "name": "", "progress": True, "log_every": 1, "lock_stale_s": 120,
               "loggers": [], "wandb_project": "", "wandb_entity": None, "wandb_mode": "offline",
               "mlflow_tracking_uri": None, "mlflow_experiment": ""}


# Settings that only change how fast the numbers come (the caches give the same batches, and
# the same results within float summation order: docs/training.md), or whether a run may start.
NEUTRAL_KEYS = ("data.cache_mb", "method.feature_cache", "data.duplicate_images")


def _identity_tree(cfg: Config) -> Dict[str, Any]:
    """The settings that decide a run's numbers, as the nested tree config_hash hashes."""
    run = dataclasses.replace(cfg.run, **{k: v for k, v in NEUTRAL_RUN.items() if hasattr(cfg.run, k)})
    data = cfg.data
    if data.shuffle == "exact":  # the exact shuffle's order does not depend on the DataLoader workers
        data = dataclasses.replace(data, num_workers=0)
    tree = dataclasses.asdict(dataclasses.replace(cfg, run=run, data=data, launch=type(cfg.launch)()))
    for dotted in NEUTRAL_KEYS:
        section, key = dotted.split(".")
        tree[section].pop(key, None)
    if not cfg.data.global_batch:  # the default: runs named before the key existed keep their hash
        tree["data"].pop("global_batch", None)
    return tree


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(dump_yaml(_identity_tree(cfg)).encode()).hexdigest()[:8]


def differing_settings(held: Config, cfg: Config, most: int = 5) -> str:
    """"key held -> this, ..." for the settings that decide the numbers and differ (at most `most`)."""
    a, b = flatten(_identity_tree(held)), flatten(_identity_tree(cfg))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def default_run_name(cfg: Config) -> str:
    m = cfg.method
    prompts = f"_p{m.prompt_length}{'deep' if m.deep else 'shallow'}" if m.prompt_length else ""
    return (f"{m.name}_{cfg.model.name}{prompts}_f{cfg.data.fraction:g}_s{cfg.run.seed}_"
            f"{config_hash(cfg)}")


def run_dir_for(cfg: Config) -> Path:
    return Path(os.path.expanduser(cfg.run.out_dir)) / (cfg.run.name or default_run_name(cfg))


def config_clash(cfg: Config, run_dir: Path) -> Optional[str]:
    """Why `run_dir` cannot hold the run `cfg` describes, or None (a new folder, or the same run)."""
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
    return (f"{run_dir} already holds a run with a different config ({path}; the folder's -> this one's: "
            f"{differing_settings(held, cfg)}); resume it with `spt train {run_dir}` or choose another run.name")

