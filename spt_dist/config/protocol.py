"""Where a resolved config departs from an official recipe (`spt config show --protocol NAME`).

The recipe is the preset file configs/protocol/NAME.yaml plus the rules here; every setting
of the schema is judged in exactly one way (`treatment`):
- recipe: a key the preset file sets itself (its comment names the official source, or says
  the value is a choice of ours), compared with the file's value;
- always: a key in ALWAYS that the files leave to their defaults but that changes what a run
  computes, compared with the value the preset resolves to;
- global batch: data.batch_size, optim.grad_accum and data.global_batch are compared only
  through the global batch (data.global_batch when set, else per-rank batch x grad_accum x
  world size), since the official batch sizes are global;
- effective lr: optim.lr and optim.min_lr are compared after each side's optim.lr_scaling at
  the run's global batch (config/batch.py's lr_scale), so an lr given already scaled with
  lr_scaling=none is the recipe when it trains at the official lr; lr_scaling itself is no
  departure;
- splits: data.train_split / val_split / test_split are compared with the preset's table of
  the run's data.stage (data.stage=custom: the nearer of the tune and final tables), which is
  what the stage keys (data.stage, data.tune.*, data.final.*) decide;
- exempt: a key in EXEMPT, with the reason it is not part of a recipe (the run's inputs, the
  variant it studies, settings that give the same numbers, where and how it runs).
Values the official code chooses per task (VPT's lr, weight decay and batch from its grids and
commands) are in GRIDS: any of them is the recipe. Values that follow the prompt depth
(BY_DEPTH), the world size (BY_WORLD, VPT's drop_last) or the backbone (BY_BACKBONE, SPT's
MAE and MoCo v3 recipes, keyed on the weight file's format) are compared with the official
code's value(s) for the run's depth, world size or backbone (the format is
model.checkpoint_format, else the one the caller read from the file: `spt config show` reads
it as the engine does, through model/cli.py). A compared key whose setting the
run does not use (ONLY_WHEN: momentum without SGD, k-means settings without k-means) is
skipped: it changes nothing; one the run uses is compared with the official value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from omegaconf import OmegaConf

from .batch import lr_scale
from .dotted import flatten
from .errors import ConfigError
from .load import CONFIG_ROOT, load_config
from .schema import Config

PROTOCOL_ROOT = CONFIG_ROOT / "protocol"
GLOBAL_BATCH = "global batch"
LAUNCH_WORLD = "launch.nodes x launch.tasks_per_node"
BATCH_KEYS = ("data.batch_size", "optim.grad_accum", "data.global_batch")
LR_KEYS = ("optim.lr", "optim.lr_scaling", "optim.min_lr")
SPLIT_KEYS = {"data.train_split": "train", "data.val_split": "val", "data.test_split": "test"}
STAGE_KEYS = ("data.stage", "data.tune.", "data.final.")
STAGES = ("tune", "final")

_VPT_WD = (0.01, 0.001, 0.0001, 0.0)
# DATA.BATCH_SIZE of VPT's commands: 64 for dmlab and eurosat, 128 for sun397 and the tuning runs.
_VPT_BATCH = ((64, 128), "demo.ipynb:123, 145, 168, 812, 828")
# key -> (values the official code uses per task, where); KMnP/vpt tune_vtab.py / tune_fgvc.py, demo.ipynb.
GRIDS: Dict[str, Dict[str, Tuple[Tuple[float, ...], str]]] = {
    "vpt_vtab": {"optim.lr": ((50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05), "tune_vtab.py:245-251"),
                 "optim.weight_decay": (_VPT_WD, "tune_vtab.py:251"), GLOBAL_BATCH: _VPT_BATCH},
    "vpt_fgvc": {"optim.lr": ((5.0, 2.5, 1.0, 50.0, 25.0, 10.0, 0.5, 0.25, 0.1), "tune_fgvc.py:152-156"),
                 "optim.weight_decay": (_VPT_WD, "tune_fgvc.py:157"), GLOBAL_BATCH: _VPT_BATCH},
}
# key -> (values deep, values shallow, where); the first value is the preset's. VPT's per-task
# commands set MODEL.PROMPT.DROPOUT 0.1 for every deep run; its generic VPT-deep command gives
# 0.0; shallow runs use none. SPT's README gives 20 prompts deep, 100 shallow.
_VPT_DROPOUT = ((0.1, 0.0), (0.0,), "deep: 0.1 in every per-task command, demo.ipynb:126, 148, 171, 814, 830; "
                                    "0.0 in the generic one, demo.ipynb:19-25; shallow: demo.ipynb:28-34")
_SPT_LENGTH = ((20,), (100,), "README.md:89")
BY_DEPTH: Dict[str, Dict[str, Tuple[Tuple[Any, ...], Tuple[Any, ...], str]]] = {
    "vpt_vtab": {"method.prompt_dropout": _VPT_DROPOUT},
    "vpt_fgvc": {"method.prompt_dropout": _VPT_DROPOUT},
    "spt_vtab": {"method.prompt_length": _SPT_LENGTH},
    "spt_fgvc": {"method.prompt_length": _SPT_LENGTH},
}
# The backbone's recipe, keyed on the weight file's format (model.checkpoint_format, or the
# format the caller detected): key -> {format: (value, where)}; a format not listed (timm, npz:
# supervised) is judged by the preset's value. SPT's README gives a command for MAE weights
# (train_MAE.py) and one for MoCo v3 and supervised weights (train.py, the preset's values); the
# repository's script for MoCo v3 weights, train_MoCo.py, differs from train.py in the two values
# below. WangYZ1608/Self-Prompt-Tuning at ce0754f.
_SPT_BACKBONE: Dict[str, Dict[str, Tuple[Any, str]]] = {
    "optim.lr": {"mae": (0.05, "README.md:83: --lr 5e-2")},
    "optim.weight_decay": {"mae": (0.5, "README.md:82: --wd_head 0.5")},
    "model.head_init_std": {"mocov3": (0.01, "train_MoCo.py:260: trunc_normal_(std=.01)")},
    "method.init_images": {"mocov3": (1, "train_MoCo.py:100, 227: prompt_generator's sample_size=1, one image")},
}
BY_BACKBONE: Dict[str, Dict[str, Dict[str, Tuple[Any, str]]]] = {"spt_vtab": _SPT_BACKBONE,
                                                                  "spt_fgvc": _SPT_BACKBONE}
BACKBONE_NAMES = {"mae": "MAE", "mocov3": "MoCo v3", "timm": "supervised", "npz": "supervised"}
# key -> (one rank, more ranks, where): VPT's train loader keeps the last partial batch on one
# GPU and drops it on more (SPT's always drops it: its presets set data.drop_last=true).
_VPT_DROP_LAST = (False, True, "src/data/loader.py:55-58: drop_last = NUM_GPUS > 1")
BY_WORLD: Dict[str, Dict[str, Tuple[Any, Any, str]]] = {
    "vpt_vtab": {"data.drop_last": _VPT_DROP_LAST},
    "vpt_fgvc": {"data.drop_last": _VPT_DROP_LAST},
}
# Settings that change what a run computes and that the preset files leave to their defaults
# (or set for some presets only): compared with the preset's resolved value. key -> that value's meaning.
ALWAYS: Dict[str, str] = {
    "model.head_init_std": "std of the trunc-normal head init",
    "method.window_layout": "SPT's windows",
    "method.init_images": "prototype images drawn",
    "method.init_replacement": "prototype draws with replacement",
    "method.init_transform": "prototype images' transform",
    "method.init_candidates": "ours: candidate tokens kept per layer for the prototypes",
    "method.kmeans_iters": "ours: k-means iterations",
    "method.kmeans_tol": "ours: k-means tolerance",
    "data.fraction": "1.0: the whole split (VPT's DATA.PERCENTAGE < 1 reads another list, train_{pct}.json, "
                     "for FGVC: src/data/datasets/json_dataset.py:37-44)",
    "data.fraction_seed": "the subset drawn by data.fraction",
    "data.on_bad_sample": "error: both codes stop on an unreadable image; skip trains on fewer",
    "optim.momentum": "SGD momentum",
    "optim.sgd_no_decay": "SGD tensors without weight decay",
    "optim.prompt_weight_decay": "AdamW's prompt weight decay",
    "distributed.deepspeed_json": "null: no raw DeepSpeed settings over the run's",
}
_PROTOTYPES = ("random_sample", "mean_pool", "max_pool", "kmeans")
# key -> (the setting it needs, test on a flat config): skipped when the run does not use it.
ONLY_WHEN: Dict[str, Tuple[str, Callable[[Dict[str, Any]], bool]]] = {
    "model.head_init_std": ("model.head_init=trunc_normal", lambda c: c["model.head_init"] == "trunc_normal"),
    "optim.momentum": ("optim.name=sgd", lambda c: c["optim.name"] == "sgd"),
    "optim.sgd_no_decay": ("optim.name=sgd", lambda c: c["optim.name"] == "sgd"),
    "optim.prompt_weight_decay": ("optim.name=adamw", lambda c: c["optim.name"] == "adamw"),
    "method.window_layout": ("mean_pool / max_pool", lambda c: c["method.init"] in ("mean_pool", "max_pool")),
    "method.kmeans_iters": ("method.init=kmeans", lambda c: c["method.init"] == "kmeans"),
    "method.kmeans_tol": ("method.init=kmeans", lambda c: c["method.init"] == "kmeans"),
    "data.fraction_seed": ("data.fraction < 1", lambda c: c["data.fraction"] < 1.0),
    **{k: ("prototypes", lambda c: c["method.init"] in _PROTOTYPES and c["method.prompt_length"] > 0)
       for k in ("method.init_images", "method.init_replacement", "method.init_transform",
                 "method.init_candidates")},
}
# key (or "prefix.") -> why it is no part of a recipe.
EXEMPT: Dict[str, str] = {
    "defaults": "composition, not a setting",
    "model.name": "the backbone a run studies (both codes report several; the presets compose model/vit_b16)",
    "model.checkpoint": "the weights file: read only for its format under model.checkpoint_format=auto "
                        "(BY_BACKBONE); `spt weights check RUN` names a known official file, the presets' "
                        "comments name each code's files",
    "model.checkpoint_format": "how the weights file is read",
    "model.in_chans": "3 is the only value",
    "model.grad_checkpointing": "recomputes activations: the same numbers",
    "method.prompt_length": "VPT: tuned per task (the paper's tables); SPT: BY_DEPTH",
    "method.deep": "the variant a run studies (deep or shallow); BY_DEPTH values follow it",
    "method.init_batch_size": "batching of the prototype pass",
    "method.cache_dir": "where prototypes are cached",
    "method.track_alignment": "a diagnostic",
    "method.feature_cache": "the same features, computed once",
    "data.root": "the task",
    "data.eval_batch_size": "batching of evaluation",
    "data.num_workers": "loader processes: augmentation is seeded per sample",
    "data.cache_mb": "decoded samples kept between epochs: the same pixels",
    "data.shuffle_buffer": "stream mode only (data.shuffle is compared)",
    "data.stream_shards": "stream mode only (data.shuffle is compared)",
    "data.mixing_check": "a check", "data.min_mixing": "a check", "data.verify": "a check",
    "data.duplicate_images": "a check: genuine duplicate images shared with training (data/overlap.py)",
    "run.seed": "a draw: the recipes' numbers are over seeds (VPT's final runs: 5)",
    "run.": "output, logging, checkpoint and evaluation cadence (resume is exact; the last epoch is "
            "always evaluated)",
    "launch.": "where and how a run is launched: the world size enters through the global batch and BY_WORLD",
    "distributed.zero_stage": "ZeRO partitions state: the same update",
    "distributed.backend": "the collective library", "distributed.timeout_s": "a timeout",
}


@dataclass
class Departure:
    key: str
    ours: Any
    official: Any
    note: str = ""


def protocol_names() -> List[str]:
    return sorted(p.stem for p in PROTOCOL_ROOT.glob("*.yaml"))


def protocol_path(name: str) -> Path:
    path = PROTOCOL_ROOT / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown protocol '{name}'; allowed: {', '.join(protocol_names())}")
    return path




def recipe_keys(name: str) -> List[str]:
    """The dotted keys the protocol file sets itself (its `defaults` only supply the rest)."""
    raw = OmegaConf.to_container(OmegaConf.load(protocol_path(name)))
    raw.pop("defaults", None)
    return list(flatten(raw))


def _flat(cfg: Config) -> Dict[str, Any]:
    return flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))


def _exempt(key: str) -> Optional[str]:
    return EXEMPT.get(key) or next((why for k, why in EXEMPT.items() if k.endswith(".") and key.startswith(k)), None)


def treatment(name: str, cfg: Optional[Config] = None) -> Dict[str, str]:
    """How each setting of `cfg` (default: the preset itself) is judged against protocol `name`:
    recipe, always, by depth, by world size, global batch, effective lr, splits, stage, or exempt."""
    recipe, by_depth, by_world = set(recipe_keys(name)), BY_DEPTH.get(name, {}), BY_WORLD.get(name, {})
    by_backbone = BY_BACKBONE.get(name, {})
    out = {}
    for key in _flat(cfg if cfg is not None else load_config(str(protocol_path(name)))):
        if key in BATCH_KEYS:
            out[key] = "global batch"
        elif key in LR_KEYS:
            out[key] = "effective lr"
        elif key in SPLIT_KEYS:
            out[key] = "splits"
        elif key.startswith(STAGE_KEYS):
            out[key] = "stage"
        elif key in by_depth:
            out[key] = "by depth"
        elif key in by_world:
            out[key] = "by world size"
        elif key in by_backbone:
            out[key] = "by backbone"
        elif key in recipe:
            out[key] = "recipe"
        elif key in ALWAYS:
            out[key] = "always"
        elif _exempt(key):
            out[key] = "exempt"
        else:
            out[key] = "unjudged"  # a schema key without a rule (tests/test_protocols.py refuses it): compared
    return out


def launch_world_size(cfg: Config) -> int:
    return cfg.launch.nodes * cfg.launch.tasks_per_node


def _per_task(values: Tuple[Any, ...], where: str) -> str:
    return f"per task, one of {{{', '.join(map(str, values))}}} ({where})"


def _split_departures(cfg: Config, official: Config) -> List[Departure]:
    ours = {k: getattr(cfg.data, k.split(".")[1]) for k in SPLIT_KEYS}
    tables = {s: {k: getattr(getattr(official.data, s), n) for k, n in SPLIT_KEYS.items()} for s in STAGES}
    if cfg.data.stage in STAGES:
        stage, note = cfg.data.stage, f"data.{cfg.data.stage} of the preset"
    else:  # custom: the nearer stage (a tie: tune)
        stage = min(STAGES, key=lambda s: sum(ours[k] != tables[s][k] for k in SPLIT_KEYS))
        note = f"data.stage=custom: the preset's nearer stage, data.{stage}"
    return [Departure(k, ours[k], tables[stage][k], note) for k in SPLIT_KEYS if ours[k] != tables[stage][k]]


def backbone_format(cfg: Config, detected: Optional[str] = None,
                    unread: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(the weight file's format BY_BACKBONE is keyed on, where it came from): model.checkpoint_format
    when set, else `detected` (the format the caller read the file as), else None (judged as
    supervised), saying why: `unread`, the caller's reason it has no format, or that nobody read it."""
    if cfg.model.checkpoint_format != "auto":
        return cfg.model.checkpoint_format, "model.checkpoint_format"
    if detected is not None:
        return detected, f"model.checkpoint_format=auto: {cfg.model.checkpoint} reads as {detected}"
    why = unread or "the file is not read here"
    return None, f"model.checkpoint_format=auto: {why}; set mae or mocov3 for those weights"


def _values(values: Tuple[Any, ...]) -> str:
    return " or ".join(map(_show, values))


def _num(x: float) -> float:
    return float(f"{x:.12g}")  # 0.1 x 128 / 256 shown as 0.05


def _backbone_ref(rules: Dict[str, Tuple[Any, str]], fmt: Optional[str], preset: Any) -> Tuple[Any, str]:
    """(the official value for the backbone of format `fmt`, the note naming its source)."""
    if fmt in rules:
        ref, where = rules[fmt]
    else:
        ref, where = preset, "the preset's value; " + "; ".join(
            f"{BACKBONE_NAMES[f]}: {_show(v)} ({w})" for f, (v, w) in rules.items())
    return ref, f"{BACKBONE_NAMES.get(fmt or '', 'supervised')} weights: {where}"


def _lr_departure(key: str, cfg: Config, official: Config, batch: int, ref: float, note: str = "",
                  grid: Optional[Tuple[Tuple[float, ...], str]] = None) -> Optional[Departure]:
    """optim.lr or optim.min_lr judged by the lr it trains at: this config's value under its
    lr_scaling against the official `ref` (or any value of `grid`: values, where) under the
    recipe's, both at global batch `batch`. Where the two lr_scalings differ, the official
    column is the official value written in this config's lr_scaling."""
    ours = getattr(cfg.optim, key.split(".")[1])
    ours_scale, ref_scale = lr_scale(cfg.optim.lr_scaling, batch), lr_scale(official.optim.lr_scaling, batch)
    values = grid[0] if grid else (ref,)
    if any(math.isclose(ours * ours_scale, v * ref_scale, rel_tol=1e-9) for v in values):
        return None

    def as_ours(v: float) -> float:
        return v if ours_scale == ref_scale else _num(v * ref_scale / ours_scale)

    if grid:
        note = _per_task(tuple(map(as_ours, values)), grid[1])
    if ours_scale != ref_scale:
        rule = (f"trains at {_num(ours * ours_scale)}, the recipe at {_num(ref * ref_scale)} (this config's "
                f"lr_scaling={cfg.optim.lr_scaling}, the recipe's {official.optim.lr_scaling}, global batch {batch}); "
                f"the official value(s) shown in this config's lr_scaling")
        note = f"{rule}; {note}" if note else rule
    return Departure(key, ours, as_ours(ref), note)


def departures(cfg: Config, name: str, world_size: Optional[int] = None,
               fmt: Optional[str] = None) -> List[Departure]:
    """Every setting whose resolved value departs from protocol `name`'s recipe, on `world_size`
    ranks (default: launch.nodes x launch.tasks_per_node), for the backbone of format `fmt`
    (default: backbone_format(cfg)'s)."""
    world = launch_world_size(cfg) if world_size is None else world_size
    fmt = fmt if fmt is not None else backbone_format(cfg)[0]
    official = load_config(str(protocol_path(name)))
    ours_flat, ref_flat = _flat(cfg), _flat(official)
    grids, by_depth, by_world = GRIDS.get(name, {}), BY_DEPTH.get(name, {}), BY_WORLD.get(name, {})
    by_backbone = BY_BACKBONE.get(name, {})
    ref_g = official.data.batch_size * official.optim.grad_accum
    if cfg.data.global_batch:
        ours_g, rule = cfg.data.global_batch, f"data.global_batch {cfg.data.global_batch}"
    else:
        ours_g = cfg.data.batch_size * cfg.optim.grad_accum * world
        rule = (f"data.batch_size {cfg.data.batch_size} x optim.grad_accum {cfg.optim.grad_accum} "
                f"x world size {world}")
    out = []
    for key, how in treatment(name, cfg).items():
        how = "always" if how == "unjudged" else how
        if key in ONLY_WHEN and not ONLY_WHEN[key][1](ours_flat):
            continue  # the run does not use it
        ours, ref = ours_flat[key], ref_flat.get(key)
        if how == "effective lr":
            if key == "optim.lr_scaling":
                continue  # it enters through the effective lr
            if key in by_backbone:
                found = _lr_departure(key, cfg, official, ours_g, *_backbone_ref(by_backbone[key], fmt, ref))
            else:
                found = _lr_departure(key, cfg, official, ours_g, ref, grid=grids.get(key))
            out += [found] if found else []
        elif how == "by depth":
            deep, shallow, where = by_depth[key]
            refs = deep if cfg.method.deep else shallow
            if ours not in refs:
                out.append(Departure(key, ours, refs[0], f"{_values(deep)} deep, {_values(shallow)} shallow ({where})"))
        elif how == "by world size":
            one, more, where = by_world[key]
            ref = one if world == 1 else more
            if ours != ref:
                out.append(Departure(key, ours, ref, f"{_show(one)} on one rank, {_show(more)} on more ({where})"))
        elif how == "by backbone":
            ref, note = _backbone_ref(by_backbone[key], fmt, ref)
            if ours != ref:
                out.append(Departure(key, ours, ref, note))
        elif how in ("recipe", "always") and key in grids:
            values, where = grids[key]
            if ours not in values:
                out.append(Departure(key, ours, ref, _per_task(values, where)))
        elif how in ("recipe", "always") and ours != ref:
            out.append(Departure(key, ours, ref, ALWAYS.get(key, "") if how == "always" else ""))
    out += _split_departures(cfg, official)
    if GLOBAL_BATCH in grids:
        values, where = grids[GLOBAL_BATCH]
        if ours_g not in values:
            out.append(Departure(GLOBAL_BATCH, ours_g, ref_g, f"{rule}; {_per_task(values, where)}"))
    elif ours_g != ref_g:
        out.append(Departure(GLOBAL_BATCH, ours_g, ref_g, rule))
    return out


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def departure_table(cfg: Config, name: str, world_size: Optional[int] = None,
                    detected_format: Optional[str] = None, unread: Optional[str] = None,
                    world_source: str = "--world-size") -> str:
    """Side-by-side text table of `departures` (a line saying so when there are none), naming
    the world size it judged and where it came from (`world_source` for a given `world_size`:
    --world-size, or a run folder's results; else the launch settings) and,
    for a protocol with BY_BACKBONE rules, the backbone recipe and where its format came from
    (`detected_format`, `unread`: see backbone_format)."""
    world = launch_world_size(cfg) if world_size is None else world_size
    source = world_source if world_size is not None else LAUNCH_WORLD
    fmt, fmt_source = backbone_format(cfg, detected_format, unread)
    rows = departures(cfg, name, world, fmt)
    where = protocol_path(name).relative_to(CONFIG_ROOT.parent)
    on = f"on {world} rank{'s' if world > 1 else ''} ({source})"
    if name in BY_BACKBONE:
        on += f", {BACKBONE_NAMES.get(fmt or '', 'supervised')} weights' recipe ({fmt_source})"
    # a weight file auto could not decide: the backbone recipe was not judged, and the table says so first
    caveat = (f"backbone recipe not judged: {unread}; the supervised recipe is assumed (set "
              f"model.checkpoint_format to judge it)\n") if name in BY_BACKBONE and fmt is None and unread and cfg.model.checkpoint else ""
    if not rows:
        return f"{caveat}no departures from protocol {name} ({where}) {on}\n"
    cells = [("setting", "this config", name, "")] + [(d.key, _show(d.ours), _show(d.official), d.note)
                                                     for d in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(3)) + (f"  {c[3]}" if c[3] else "") for c in cells]
    lines.append(f"{len(rows)} setting(s) depart from protocol {name} {on} ({where}; "
                 f"its comments name the official source of each value)")
    return caveat + "\n".join(line.rstrip() for line in lines) + "\n"
