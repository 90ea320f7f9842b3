"""Where a resolved config departs from an official recipe (`spt config show --protocol NAME`).

The recipe is the preset file configs/protocol/NAME.yaml itself: every key it sets is a
setting of the official code (its comment names the source), so the file is the only place
a value is written. Values the official code chooses per task (VPT's lr and weight decay from
its tuning grids, its batch size from its commands) are listed here with the values it uses:
any of them is the recipe. Values it sets by prompt depth (VPT's prompt dropout) are compared
with the one for the config's method.deep. One derived row, the global batch, is compared
too, since the official batch sizes are global.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

from omegaconf import OmegaConf

from .errors import ConfigError
from .load import CONFIG_ROOT, load_config
from .schema import Config

PROTOCOL_ROOT = CONFIG_ROOT / "protocol"
GLOBAL_BATCH = "global batch"
GLOBAL_BATCH_RULE = "data.batch_size x optim.grad_accum x launch.nodes x launch.tasks_per_node"

_VPT_WD = (0.01, 0.001, 0.0001, 0.0)
# DATA.BATCH_SIZE of VPT's commands: 64 for dmlab and eurosat, 128 for sun397 and the tuning runs.
_VPT_BATCH = ((64, 128), "demo.ipynb:123, 145, 168, 812, 828")
# key -> (values the official code uses per task, where); KMnP/vpt tune_vtab.py / tune_fgvc.py, demo.ipynb.
GRIDS: Dict[str, Dict[str, Tuple[Tuple[float, ...], str]]] = {
    "vpt_vtab": {"optim.lr": ((50.0, 25.0, 10.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.1, 0.05), "tune_vtab.py:245-251"),
                 "optim.weight_decay": (_VPT_WD, "tune_vtab.py:251"), "data.batch_size": _VPT_BATCH},
    "vpt_fgvc": {"optim.lr": ((5.0, 2.5, 1.0, 50.0, 25.0, 10.0, 0.5, 0.25, 0.1), "tune_fgvc.py:152-156"),
                 "optim.weight_decay": (_VPT_WD, "tune_fgvc.py:157"), "data.batch_size": _VPT_BATCH},
}
# key -> (deep, shallow, where): VPT's commands set MODEL.PROMPT.DROPOUT 0.1 for every deep run
# and none for shallow ones.
_VPT_DROPOUT = (0.1, 0.0, "demo.ipynb:126, 148, 171, 814, 830; shallow: demo.ipynb:28")
BY_DEPTH: Dict[str, Dict[str, Tuple[Any, Any, str]]] = {
    "vpt_vtab": {"method.prompt_dropout": _VPT_DROPOUT},
    "vpt_fgvc": {"method.prompt_dropout": _VPT_DROPOUT},
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


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def recipe_keys(name: str) -> List[str]:
    """The dotted keys the protocol file sets itself (its `defaults` only supply the rest)."""
    raw = OmegaConf.to_container(OmegaConf.load(protocol_path(name)))
    raw.pop("defaults", None)
    return list(_flatten(raw))


def _global_batch(cfg: Config) -> int:
    la = cfg.launch
    return cfg.data.global_batch or cfg.data.batch_size * cfg.optim.grad_accum * la.nodes * la.tasks_per_node


def _per_task(values: Tuple[Any, ...], where: str) -> str:
    return f"per task, one of {{{', '.join(map(str, values))}}} ({where})"


def departures(cfg: Config, name: str) -> List[Departure]:
    """Every recipe setting whose resolved value differs from protocol `name`'s."""
    official = load_config(str(protocol_path(name)))
    ours_flat = _flatten(OmegaConf.to_container(OmegaConf.structured(cfg)))
    ref_flat = _flatten(OmegaConf.to_container(OmegaConf.structured(official)))
    grids, by_depth = GRIDS.get(name, {}), BY_DEPTH.get(name, {})
    out = []
    for key in recipe_keys(name):
        ours, ref = ours_flat[key], ref_flat[key]
        if key in by_depth:
            deep, shallow, where = by_depth[key]
            ref = deep if cfg.method.deep else shallow
            if ours != ref:
                out.append(Departure(key, ours, ref, f"{deep} deep, {shallow} shallow ({where})"))
        elif key in grids:
            values, where = grids[key]
            if ours not in values:
                out.append(Departure(key, ours, ref, _per_task(values, where)))
        elif ours != ref:
            out.append(Departure(key, ours, ref))
    ours_g, ref_g = _global_batch(cfg), _global_batch(official)
    batches = grids.get("data.batch_size")
    if (ours_g not in batches[0]) if batches else ours_g != ref_g:
        note = f"{GLOBAL_BATCH_RULE}; {_per_task(*batches)}" if batches else GLOBAL_BATCH_RULE
        out.append(Departure(GLOBAL_BATCH, ours_g, ref_g, note))
    return out


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def departure_table(cfg: Config, name: str) -> str:
    """Side-by-side text table of `departures` (a line saying so when there are none)."""
    rows = departures(cfg, name)
    where = protocol_path(name).relative_to(CONFIG_ROOT.parent)
    if not rows:
        return f"no departures from protocol {name} ({where})\n"
    cells = [("setting", "this config", name, "")] + [(d.key, _show(d.ours), _show(d.official), d.note)
                                                     for d in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(3)) + (f"  {c[3]}" if c[3] else "") for c in cells]
    lines.append(f"{len(rows)} setting(s) depart from protocol {name} ({where}; "
                 f"its comments name the official source of each value)")
    return "\n".join(line.rstrip() for line in lines) + "\n"
