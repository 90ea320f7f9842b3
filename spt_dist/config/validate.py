"""Value checks the schema's types cannot express: choices, ranges, combinations."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, List, Optional

from .batch import global_batch_problem
from .errors import ConfigError
from .schema import Config, DataConfig, OptimConfig


def _check_field(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' = {value!r} is not a finite number")
    if "subset" in meta:
        _check_subset(key, value, meta["subset"])
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed; "
                          f"allowed values: {', '.join(repr(c) for c in meta['choices'])}")
    if "range" in meta:
        lo, hi, lo_open, hi_open = meta["range"]
        too_low = value <= lo if lo_open else value < lo
        too_high = value >= hi if hi_open else value > hi
        if too_low or too_high:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            raise ConfigError(f"config key '{key}' = {value!r} is out of range; "
                              f"allowed: {left}{lo}, {hi}{right}")


def _check_subset(key: str, value: Any, allowed: List[Any]) -> None:
    listed = ", ".join(repr(c) for c in allowed)
    bad = [v for v in value if v not in allowed]
    if bad:
        raise ConfigError(f"config key '{key}' = {list(value)!r}: {bad[0]!r} is not allowed; "
                          f"allowed: a list of any of {listed}")
    twice = sorted({v for v in value if list(value).count(v) > 1})
    if twice:
        raise ConfigError(f"config key '{key}' = {list(value)!r} names {twice[0]!r} twice; list each once")


def _walk(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _walk(value, key + ".")
        else:
            _check_field(key, value, dict(f.metadata))


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


# configs/method/*.yaml, for the message that asks for a prompt length.
PRESET_LENGTHS = {"vpt": "50 in method/vpt_shallow and method/vpt_deep",
                  "spt": "100 in method/spt_shallow, 20 in method/spt_deep"}
PLAIN_NAME = re.compile(r"^[A-Za-z0-9_+=,@%-][A-Za-z0-9._+=,@%-]*$")


def _check_combinations(cfg: Config) -> None:
    m, o = cfg.method, cfg.optim
    name = cfg.run.name
    _require(not name or (PLAIN_NAME.match(name) is not None and name not in (".", "..")), "run.name",
             f"{name!r} is not a plain folder name; allowed: letters, digits and . _ + = , @ % - "
             f"(no path separators, not starting with '.'), so the run stays inside run.out_dir")
    if m.name in ("linear", "full"):
        _require(m.prompt_length == 0, "method.prompt_length",
                 f"method={m.name} takes no prompts; set method.prompt_length=0 (got {m.prompt_length})")
        _require(not m.deep, "method.deep", f"deep prompts need method=vpt or method=spt, not {m.name}")
    else:
        also = " and method.init=kmeans (or random_sample, mean_pool, max_pool)" if m.name == "spt" and \
            m.init == "vpt" else ""
        _require(m.prompt_length >= 1, "method.prompt_length",
                 f"method={m.name} needs at least one prompt token (got {m.prompt_length}); add "
                 f"method.prompt_length=N{also} (the presets: {PRESET_LENGTHS[m.name]}; method.deep=true for "
                 f"deep prompts)")
    if m.name == "spt":
        _require(m.init != "vpt", "method.init",
                 "method=spt initialises from prototypes: add method.init=kmeans (or random_sample, mean_pool, "
                 "max_pool)")
    elif m.prompt_length:
        _require(m.init == "vpt", "method.init",
                 f"prototype initialisation '{m.init}' is SPT's; use method=spt or method.init=vpt")
    if cfg.model.pool == "mean_with_prompts":
        _require(m.prompt_length > 0, "model.pool", "mean_with_prompts needs prompts (method.prompt_length > 0)")
    _require(o.warmup_epochs <= o.epochs, "optim.warmup_epochs",
             f"must not exceed optim.epochs={o.epochs} (got {o.warmup_epochs}): lower optim.warmup_epochs or "
             f"raise optim.epochs (the protocols warm up 10 of 100 epochs; a shorter run needs its own warmup)")
    _require(o.min_lr <= o.lr, "optim.min_lr", f"must not exceed optim.lr={o.lr}")
    la = cfg.launch
    # The pre-timeout signal must leave the job time to train before it asks to be requeued.
    _require(la.signal_delay_s < la.timeout_min * 60 / 2, "launch.signal_delay_s",
             f"{la.signal_delay_s} s before the end of a {la.timeout_min}-minute job leaves it no time "
             f"to train; allowed: less than half of launch.timeout_min ({la.timeout_min * 30} s)")
    if la.min_nodes:
        _require(la.elastic and la.min_nodes <= la.nodes, "launch.min_nodes",
                 f"{la.min_nodes}: a node range needs launch.elastic=true and min_nodes <= launch.nodes={la.nodes}")
    problem = global_batch_problem(cfg)
    if problem:
        raise ConfigError(problem)
    if la.gpus_per_node > 0:
        _require(la.tasks_per_node == la.gpus_per_node, "launch.tasks_per_node",
                 f"one task per GPU: must equal launch.gpus_per_node={la.gpus_per_node}")
    problem = drop_last_problem(cfg.data.drop_last, la.nodes * la.tasks_per_node)
    if problem:
        raise ConfigError(problem)
    _check_optim(o)
    _check_splits(cfg.data)


def drop_last_problem(drop_last: bool, world_size: int) -> Optional[str]:
    """Why data.drop_last=false cannot run on `world_size` ranks, or None. Checked here with the
    launcher's world size and again at train start with the real one."""
    if drop_last or world_size == 1:
        return None
    return (f"config key 'data.drop_last' = false trains each epoch's short last batch, which only a single "
            f"rank can (every rank steps on equal batches), but the run has {world_size} ranks; "
            f"allowed: true, or false on one rank")


def _check_optim(o: OptimConfig) -> None:
    if o.name == "sgd":
        _require(o.prompt_weight_decay == 0, "optim.prompt_weight_decay",
                 "only optim.name=adamw decays prompts separately; with sgd every trainable tensor takes "
                 f"optim.weight_decay (got {o.prompt_weight_decay}; set it to 0)")
    if o.lr_schedule == "per_epoch":
        _require(float(o.warmup_epochs).is_integer(), "optim.warmup_epochs",
                 f"optim.lr_schedule=per_epoch warms up in whole epochs (got {o.warmup_epochs})")


def _check_splits(d: DataConfig) -> None:
    where = "" if d.stage == "custom" else f" (from data.{d.stage}, data.stage={d.stage})"
    _require(bool(d.train_split), "data.train_split", f"must name a split{where}")
    for key in ("val_split", "test_split"):
        _require(getattr(d, key) != "", f"data.{key}", f"must name a split or be null{where}")
    _require(d.val_split is None or d.val_split != d.test_split, "data.val_split",
             f"model selection on the test split is not allowed; use a validation split or null{where}")
    _require(d.val_split is not None or d.test_split is not None, "data.test_split",
             f"with data.val_split also null nothing would be evaluated{where}")


def _check_registry(cfg: Config) -> None:
    """What the backbone's shape makes impossible (plain data, no torch import)."""
    from .registry import BACKBONES

    mc, m = cfg.model, cfg.method
    _require(mc.name in BACKBONES, "model.name",
             f"unknown backbone '{mc.name}'; allowed: {', '.join(sorted(BACKBONES))}")
    spec = BACKBONES[mc.name]
    size = mc.img_size or spec.img_size
    _require(size % spec.patch_size == 0, "model.img_size",
             f"{size} is not a multiple of {mc.name}'s patch size {spec.patch_size}")
    patches = (size // spec.patch_size) ** 2
    if m.name == "spt" and m.init in ("mean_pool", "max_pool"):
        _require(m.prompt_length <= patches, "method.prompt_length",
                 f"method.init={m.init} cuts each image's {patches} patch tokens into "
                 f"{m.prompt_length} windows; allowed: at most {patches} at model.img_size={size}")
        if m.window_layout == "spt":
            _require(m.prompt_length >= 2, "method.prompt_length",
                     f"method.window_layout=spt cuts the tokens into p-1 windows plus one; allowed: at least 2 "
                     f"(got {m.prompt_length})")
    if m.prompt_length and (m.name == "spt" or m.track_alignment):
        _require(m.init_candidates >= m.prompt_length, "method.init_candidates",
                 f"{m.init_candidates} candidate tokens cannot give {m.prompt_length} prototypes; "
                 f"allowed: at least method.prompt_length")


def _check_normalization(cfg: Config) -> None:
    for key in ("mean", "std"):
        value = getattr(cfg.model, key)
        if value is not None:
            _require(len(value) == 3 and all(math.isfinite(v) for v in value), f"model.{key}",
                     f"needs 3 finite values, one per RGB channel (got {list(value)})")
    if cfg.model.std is not None:
        _require(all(v > 0 for v in cfg.model.std), "model.std", "values must be > 0")
    _require((cfg.model.mean is None) == (cfg.model.std is None), "model.mean",
             "set model.mean and model.std together")


def _check_checkpoint_name(cfg: Config) -> None:
    from .hub import is_hub_name, parse_hub_name

    if is_hub_name(cfg.model.checkpoint):
        parse_hub_name(cfg.model.checkpoint)


def _check_files(cfg: Config) -> None:
    from .hub import resolve_checkpoint

    paths: List[tuple] = [("data.root", os.path.join(os.path.expanduser(cfg.data.root), "index.json"))]
    if cfg.model.checkpoint:  # an hf-hub name not in the cache fails here, naming the cache
        paths.append(("model.checkpoint", resolve_checkpoint(cfg.model.checkpoint)))
    if cfg.distributed.deepspeed_json:
        paths.append(("distributed.deepspeed_json", os.path.expanduser(cfg.distributed.deepspeed_json)))
    for key, path in paths:
        _require(os.path.isfile(path), key, f"file not found: {path}")


def validate(cfg: Config, check_files: bool = False) -> None:
    """Raise ConfigError on the first bad value; `check_files` also checks paths exist."""
    _walk(cfg, "")
    _check_combinations(cfg)
    _check_registry(cfg)
    _check_normalization(cfg)
    _check_checkpoint_name(cfg)
    if check_files:
        _check_files(cfg)
