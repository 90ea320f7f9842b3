"""A pack: G run configs one job trains over one backbone pass per batch (engine/pack.py).

Each member is composed by `load_config` exactly as `spt train CONFIG <its overrides>` would
compose it, so its run folder is the one it would get alone. The pack is valid as a whole when
its members agree on everything that decides the shared batches and the shared backbone pass
(model, data, run.seed, which also orders the data, prompt shape, batch, epochs, checkpoints,
distributed, precision, launch) and differ only in PACK_FREE keys: optimizer settings, the
prompt and head init, prompt dropout, and how a run is named or shown. A mismatch is a
ConfigError naming the key and both values.

The pack file is the sweep format (config/sweep.py) without `config`/`configs` (the run file
is given on the command line), plus an optional list of explicit members:

    overrides: [optim.epochs=2]              # every member
    grid: {optim.lr: [0.1, 0.01]}            # crossed, as in a sweep
    members:                                 # crossed with the grid; a list of dot-lists or mappings
      - [optim.weight_decay=0.0]
      - {optim.weight_decay: 0.01, method.init: vpt}
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Dict, List, Sequence, Tuple

from .errors import ConfigError
from .load import load_config
from .schema import Config
from .sweep import expand, read_grid_file

PACK_FREE = frozenset({
    "optim.name", "optim.lr", "optim.lr_scaling", "optim.momentum", "optim.weight_decay",
    "optim.prompt_weight_decay", "optim.sgd_no_decay", "optim.warmup_epochs", "optim.lr_schedule",
    "optim.warmup_from_zero", "optim.min_lr", "optim.grad_clip", "optim.label_smoothing",
    "method.name", "method.init", "method.init_images", "method.init_candidates", "method.init_batch_size",
    "method.kmeans_iters", "method.kmeans_tol", "method.cache_dir", "method.track_alignment",
    "method.window_layout", "method.init_replacement", "method.init_transform", "method.prompt_dropout",
    "model.head_init", "model.head_init_std",
    "run.name", "run.out_dir", "run.progress", "run.log_every", "run.loggers", "run.wandb_project",
    "run.wandb_entity", "run.wandb_mode", "run.mlflow_tracking_uri", "run.mlflow_experiment",
})
PACK_METHODS = ("vpt", "spt")  # prompts over a frozen backbone: the backbone pass is what is shared
PACK_FILE_KEYS = ("overrides", "grid", "members")




@dataclasses.dataclass
class PackMember:
    label: str          # the member's own overrides, for messages
    overrides: List[str]
    cfg: Config


def _flat(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("sbatch_extra",):
            out.update(_flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def packable_method(cfg) -> bool:
    """Whether packed training can train this config's method (prompt methods with prompts)."""
    return cfg.method.name in PACK_METHODS and cfg.method.prompt_length > 0


def check_pack(members: Sequence[PackMember]) -> None:
    """The whole pack at once: agreement on every key outside PACK_FREE, and what the packed
    engine supports (prompt methods, ZeRO stage 0, fp32, two checkpoints kept)."""
    if not members:
        raise ConfigError("a pack needs at least one member")
    first = _flat(dataclasses.asdict(members[0].cfg))
    for i, m in enumerate(members):
        cfg = m.cfg
        if not packable_method(cfg):
            raise ConfigError(f"pack member {i} ({m.label}): method.name={cfg.method.name!r} with "
                              f"method.prompt_length={cfg.method.prompt_length}; packed training is for prompt "
                              f"methods ({', '.join(PACK_METHODS)}) with prompt_length >= 1")
        for key, value in _flat(dataclasses.asdict(cfg)).items():
            if key not in PACK_FREE and key != "defaults" and first.get(key) != value:
                raise ConfigError(
                    f"pack member {i} ({m.label}) differs from member 0 ({members[0].label}) in '{key}': "
                    f"{value!r} vs {first.get(key)!r}; pack members share model, data, seed, prompt shape, batch, "
                    f"epochs, checkpoints, distributed, precision and launch, and may differ only in "
                    f"{', '.join(sorted(PACK_FREE))}")
    cfg = members[0].cfg
    for key, value, allowed in (("distributed.zero_stage", cfg.distributed.zero_stage, 0),
                                ("precision.dtype", cfg.precision.dtype, "fp32")):
        if value != allowed:
            raise ConfigError(f"config key '{key}' = {value!r}: packed training supports only {key}={allowed!r} "
                              f"(one plain backward for every member's engine); train these runs one by one")
    if cfg.run.keep_checkpoints < 2:
        raise ConfigError("config key 'run.keep_checkpoints' = 1: a pack needs 2, so that a pack stopped while "
                          "its members were saving still has one step every member holds")


def _member_lists(raw: Any, path: str) -> List[List[str]]:
    if raw is None:
        return [[]]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{path}: 'members' is a non-empty list of dot-list overrides or mappings")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, dict):
            out.append([f"{k}={v}" for k, v in _flat(item).items()])
        elif isinstance(item, list):
            out.append([str(o) for o in item])
        elif isinstance(item, str):
            out.append([item])
        else:
            raise ConfigError(f"{path}: members[{i}] is {item!r}; give a list of key=value or a mapping")
    return out


def read_pack_file(path: str) -> Tuple[Dict[str, List[str]], List[str], List[List[str]]]:
    """(grid, overrides, member override lists) of a pack file."""
    raw, grid, overrides = read_grid_file(path, "pack", PACK_FILE_KEYS, (
        ("config", "configs"), " (the run file is the CONFIG argument of `spt train`)"))
    return grid, overrides, _member_lists(raw.get("members"), path)


def load_pack(config: str, pack_file: str, overrides: Sequence[str] = (),
              check_files: bool = False) -> List[PackMember]:
    """Every member composed with load_config (file overrides, then `overrides`, then its grid
    point and member values), checked as a whole before any work."""
    grid, file_overrides, member_lists = read_pack_file(pack_file)
    members = []
    for point, own in itertools.product(expand([config], grid), member_lists):
        sets = point.overrides + own
        label = " ".join(sets) or "(no overrides)"
        cfg = load_config(config, [*file_overrides, *overrides, *sets], check_files=check_files)
        members.append(PackMember(label, sets, cfg))
    check_pack(members)
    return members
