"""A study spec: one YAML that says which runs a study needs, stage by stage.

```yaml
name: capacity_x_fraction
base: configs/demo.yaml             # a run file; every run starts from it
runs_dir: runs/pool                 # run folders, named by config hash: the same config runs once,
                                    #   whichever stage or study asks for it (default: runs/pool)
out_dir: runs/studies/capacity_x_fraction   # selections, the ledger and the report
axes:                               # the grid of cells (their product)
  backbone:                         # a named axis: each value sets several keys together
    - {model.name: vit_b16, model.checkpoint: /w/b16.npz}
    - {model.name: vit_l16, model.checkpoint: /w/l16.npz}
  data.fraction: [0.1, 0.5, 1.0]    # a plain axis: one key
methods:                            # crossed with the axes; each with its own search grid
  linear:
    overrides: [method.name=linear, method.prompt_length=0, method.deep=false, method.init=vpt]
    search: {optim.lr: [0.01, 0.1], optim.weight_decay: [0.0, 0.0001]}
  vpt_deep:
    overrides: {method.name: vpt, method.deep: true, method.prompt_length: 10, method.init: vpt}
    search: {optim.lr: [0.05, 0.5]}
protocol:
  metric: val_top1                  # a results.json key of the search runs: val_top1 (last epoch)
                                    #   or best_val_top1; ties -> the earlier grid point
  tune: [data.stage=tune]           # overrides of the search stage
  final: [data.stage=final]         # overrides of the final stage
  seeds: [0, 1, 2]                  # final runs per cell (run.seed)
  pack_search: false                # true: a prompt cell's search runs (those still to run) go out as ONE
                                    #   packed task (spt train --pack; training.md), each in its own folder
launch: {array_parallelism: 8}      # launch settings of every run (or a list of launch.key=value)
```

Overrides may be a list of `key=value` strings or a mapping of dotted keys. Everything is
validated when the spec is loaded: unknown spec keys, empty axes, and (in plan.py) every run
config of both stages, before anything runs. `spt study run` saves the spec, its paths made
absolute, as `out_dir/spec.yaml` (SAVED), so `spt study status|report OUT_DIR` find it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from omegaconf import OmegaConf

from spt_dist.io import write_text_atomic

from .errors import StudyError

TOP = {"name", "base", "runs_dir", "out_dir", "axes", "methods", "protocol", "launch"}
PROTOCOL = {"metric": "val_top1", "tune": ["data.stage=tune"], "final": ["data.stage=final"], "seeds": [0, 1, 2],
            "pack_search": False}
METRICS = ("val_top1", "best_val_top1")
SAVED = "spec.yaml"


@dataclass(frozen=True)
class AxisValue:
    axis: str
    label: str                       # how the value is written in cell names and reports
    overrides: Tuple[str, ...]


@dataclass(frozen=True)
class Method:
    name: str
    overrides: Tuple[str, ...]
    search: Tuple[Tuple[str, Tuple[Any, ...]], ...]  # (key, values) in the spec's order


@dataclass
class StudySpec:
    name: str
    base: str
    runs_dir: Path
    out_dir: Path
    axes: List[List[AxisValue]]
    methods: List[Method]
    metric: str
    tune: Tuple[str, ...]
    final: Tuple[str, ...]
    seeds: Tuple[int, ...]
    launch: Tuple[str, ...] = ()
    pack_search: bool = False
    path: Path = field(default=Path("."))
    raw: Dict[str, Any] = field(default_factory=dict)   # the spec as written


def _value(v: Any) -> str:
    """A value as an override right-hand side (YAML-compatible, so lists and nulls survive)."""
    if v is None:
        return "null"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _overrides(raw: Any, where: str) -> Tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, dict):
        return tuple(f"{k}={_value(v)}" for k, v in raw.items())
    if isinstance(raw, list) and all(isinstance(o, str) and "=" in o for o in raw):
        return tuple(raw)
    raise StudyError(f"{where}: expected a list of key=value overrides or a mapping of dotted keys, got {raw!r}")


def _label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _axes(raw: Any, path: Path) -> List[List[AxisValue]]:
    if not isinstance(raw, dict) or not raw:
        raise StudyError(f"{path}: 'axes' must map axis names to lists of values (at least one axis)")
    axes = []
    for name, values in raw.items():
        if not isinstance(values, list) or not values:
            raise StudyError(f"{path}: axis '{name}' needs a non-empty list of values")
        out = []
        for i, v in enumerate(values):
            if isinstance(v, dict):  # a named axis: several keys per value (and an optional label)
                v = dict(v)
                given = v.pop("label", None)
                sets = _overrides(v, f"{path}: axes.{name}[{i}]")
                label = _label(given) if given is not None else \
                    next((_label(x) for k, x in v.items() if k.endswith(".name")), f"{name}{i}")
            else:
                sets, label = (f"{name}={_value(v)}",), _label(v)
            out.append(AxisValue(str(name), label, sets))
        if len({a.label for a in out}) != len(out):
            raise StudyError(f"{path}: axis '{name}' has two values with the same label; labels name cells")
        axes.append(out)
    return axes


def _methods(raw: Any, path: Path) -> List[Method]:
    if not isinstance(raw, dict) or not raw:
        raise StudyError(f"{path}: 'methods' must map method names to {{overrides, search}}")
    out = []
    for name, m in raw.items():
        m = m or {}
        unknown = set(m) - {"overrides", "search"}
        if unknown:
            raise StudyError(f"{path}: methods.{name}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"allowed: overrides, search")
        search = m.get("search") or {}
        if not isinstance(search, dict) or any(not isinstance(v, list) or not v for v in search.values()):
            raise StudyError(f"{path}: methods.{name}.search must map keys to non-empty lists of values")
        out.append(Method(str(name), _overrides(m.get("overrides"), f"{path}: methods.{name}.overrides"),
                          tuple((k, tuple(v)) for k, v in search.items())))
    return out


def load_spec(path: str | Path) -> StudySpec:
    """A spec file, or a study's out_dir (the spec `spt study run` saved there)."""
    path = Path(path)
    if path.is_dir():
        if not (path / SAVED).is_file():
            raise StudyError(f"{path} is a folder without {SAVED} (`spt study run` saves the spec in the study's "
                             f"out_dir); give the spec file")
        path = path / SAVED
    if not path.is_file():
        raise StudyError(f"study spec '{path}' not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:  # YAML syntax
        raise StudyError(f"{path}: cannot parse YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study spec is a mapping with {', '.join(sorted(TOP))}")
    unknown = set(raw) - TOP
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(TOP))}")
    for key in ("name", "base", "axes", "methods"):
        if key not in raw:
            raise StudyError(f"{path}: missing '{key}'")
    proto = dict(PROTOCOL, **(raw.get("protocol") or {}))
    if set(proto) - set(PROTOCOL):
        raise StudyError(f"{path}: protocol: unknown key(s) {', '.join(sorted(set(proto) - set(PROTOCOL)))}; "
                         f"allowed: {', '.join(PROTOCOL)}")
    if proto["metric"] not in METRICS:
        raise StudyError(f"{path}: protocol.metric '{proto['metric']}' is not allowed; allowed: {', '.join(METRICS)}")
    seeds = proto["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise StudyError(f"{path}: protocol.seeds must be a non-empty list of distinct integers")
    if not isinstance(proto["pack_search"], bool):
        raise StudyError(f"{path}: protocol.pack_search must be true or false")
    base = Path(str(raw["base"]))
    if not base.is_absolute() and (path.parent / base).is_file():
        base = path.parent / base
    name = str(raw["name"])
    return StudySpec(
        name=name, base=str(base),
        runs_dir=Path(str(raw.get("runs_dir", "runs/pool"))).expanduser().resolve(),
        out_dir=Path(str(raw.get("out_dir", f"runs/studies/{name}"))).expanduser().resolve(),
        axes=_axes(raw["axes"], path), methods=_methods(raw["methods"], path), metric=proto["metric"],
        tune=_overrides(proto["tune"], f"{path}: protocol.tune"),
        final=_overrides(proto["final"], f"{path}: protocol.final"), seeds=tuple(seeds),
        launch=tuple(o if o.startswith("launch.") else f"launch.{o}"
                     for o in _overrides(raw.get("launch"), f"{path}: launch")), path=path,
        pack_search=proto["pack_search"], raw=raw)


def save_spec(spec: StudySpec) -> Path:
    """`out_dir/spec.yaml`: the spec as written, its base (the file the runs load), runs_dir and
    out_dir made absolute."""
    import yaml

    from spt_dist.config import ConfigError
    from spt_dist.config.load import config_file

    try:
        base = config_file(spec.base)  # a name under the package's configs/ too, as the runs load it
    except ConfigError:
        base = Path(spec.base).resolve()  # not found: build_plan says so
    raw = dict(spec.raw, base=str(base), runs_dir=str(spec.runs_dir), out_dir=str(spec.out_dir))
    path = spec.out_dir / SAVED
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, f"# saved by `spt study run` from {spec.path.resolve()}\n"
                      + yaml.safe_dump(raw, sort_keys=False))
    return path
