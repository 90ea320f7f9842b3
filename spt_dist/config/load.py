"""Compose a run config: schema defaults <- `defaults` files <- the file <- dot-list overrides."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import ConfigError
from .method import MethodKeys, resolve_method
from .schema import Config
from .stage import note_split_keys, resolve_stage
from .validate import validate

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"


def _config_roots(path: Path) -> List[Path]:
    roots = [path.parent]
    env = os.environ.get("SPT_CONFIG_ROOT")
    if env:
        roots.append(Path(env))
    roots.append(CONFIG_ROOT)
    return roots


def _resolve(name: str, relative_to: Optional[Path]) -> Path:
    candidates = [Path(name)]
    if not name.endswith((".yaml", ".yml")):
        candidates.append(Path(name + ".yaml"))
    roots = _config_roots(relative_to) if relative_to else [Path.cwd(), CONFIG_ROOT]
    for cand in candidates:
        if cand.is_absolute() and cand.is_file():
            return cand
        for root in roots:
            if (root / cand).is_file():
                return (root / cand).resolve()
    raise ConfigError(f"config file '{name}' not found (looked in: {', '.join(str(r) for r in roots)})")


def config_file(name: str) -> Path:
    """The absolute path of the file `load_config(name)` reads: `name` (or `name.yaml`) from the
    working directory, else from the package's configs/ (`demo`, `protocol/vpt_vtab.yaml`)."""
    return _resolve(name, None)


def _explain(exc: OmegaConfBaseException, origin: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    if isinstance(exc, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.structured(Config)
        allowed = list(OmegaConf.select(node, parent).keys()) if parent else list(node.keys())
        where = f"'{parent}'" if parent else "the top level"
        return ConfigError(f"{origin}: unknown config key '{key}'; allowed keys under {where}: "
                           f"{', '.join(str(a) for a in allowed)}")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return ConfigError(f"{origin}: config key '{key}' has a wrong type or value: {msg}")
    return ConfigError(f"{origin}: config key '{key}': {str(exc).splitlines()[0]}")


SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "defaults"]


def _merge(base: DictConfig, other, origin: str) -> DictConfig:
    for section in SECTIONS:  # OmegaConf's message for these names no key
        if section in other and not isinstance(other[section], (DictConfig, dict)):
            raise ConfigError(f"{origin}: config key '{section}' is a section, not a value; "
                              f"set its keys, e.g. {section}.<key>=<value> (see `spt config show`)")
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise _explain(exc, origin) from None


def _compose_file(base: DictConfig, path: Path, stack: List[Path], origins: Dict[str, str],
                  methods: MethodKeys) -> DictConfig:
    """Merge `path` after its `defaults`; `stack` is the chain of files including it (a cycle
    is an error; the same file reached twice by different chains is fine). `origins` records
    where split keys were set (see stage.py), `methods` where method keys were (see method.py)."""
    if path in stack:
        raise ConfigError(f"config file '{path}' includes itself through 'defaults' "
                          f"({' -> '.join(p.name for p in stack + [path])})")
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # yaml syntax errors
        raise ConfigError(f"{path}: cannot parse YAML: {exc}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    includes = raw.pop("defaults", [])
    if isinstance(includes, str):
        includes = [includes]
    for name in includes:
        base = _compose_file(base, _resolve(str(name), path), stack + [path], origins, methods)
    note_split_keys(raw, str(path), origins)
    methods.note(raw, str(path))
    return _merge(base, raw, str(path))


def _check_overrides(overrides: Sequence[str]) -> None:
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override '{bad[0]}' is not of the form key=value (e.g. method.prompt_length=20)")
    nested = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] == "defaults"]
    if nested:
        raise ConfigError(f"override '{nested[0]}': `defaults` composes files and is read from the run file only; "
                          f"list the files under `defaults:` in a run file, or override their keys one by one")


def compose_by_source(path: Optional[str], overrides: Sequence[str]) -> DictConfig:
    """The reference composition: file by file, override by override, into the schema; an error
    names the file or the override it comes from. `compose` gives the same tree in one merge
    (and falls back to this one to explain an error)."""
    cfg = OmegaConf.structured(Config)
    origins: Dict[str, str] = {}
    methods = MethodKeys()
    if path:
        cfg = _compose_file(cfg, _resolve(path, None), [], origins, methods)
    for item in overrides:
        source = OmegaConf.from_dotlist([item])
        note_split_keys(source, f"override '{item}'", origins)
        methods.note(source, f"override '{item}'")
        cfg = _merge(cfg, source, f"override '{item}'")
    resolve_stage(cfg, origins)
    resolve_method(cfg, methods)
    return cfg


def _yaml(text: str) -> object:
    """YAML as OmegaConf reads it (its loader: the same types), without building a DictConfig."""
    import yaml
    from omegaconf._yaml import get_yaml_loader

    return yaml.load(text, Loader=get_yaml_loader())


def _dotted(item: str) -> dict:
    key, _, value = item.partition("=")
    parts = key.strip().split(".")
    if not all(p and p.replace("_", "a").replace("-", "a").isalnum() for p in parts):
        raise ValueError(f"key {key!r}")  # indexing or odd keys: the slow path handles them
    out: dict = {}
    node = out
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = _yaml(value) if value.strip() else None
    return out


def _sources(path: Path, stack: List[Path], out: List[tuple]) -> None:
    """(origin, plain dict) of `path` after its defaults, in merge order."""
    if path in stack:
        raise ConfigError(f"config file '{path}' includes itself through 'defaults' "
                          f"({' -> '.join(p.name for p in stack + [path])})")
    try:
        raw = _yaml(path.read_text())
    except Exception as exc:  # yaml syntax errors
        raise ConfigError(f"{path}: cannot parse YAML: {exc}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    includes = raw.pop("defaults", [])
    for name in [includes] if isinstance(includes, str) else includes:
        _sources(_resolve(str(name), path), stack + [path], out)
    out.append((str(path), raw))


def _deep_update(into: dict, other: dict) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


def _compose_fast(path: Optional[str], overrides: Sequence[str]) -> DictConfig:
    """Every source merged as plain data, then ONE merge into the schema (a config loads in
    milliseconds, which a study of hundreds of runs needs). Any error: see compose_by_source."""
    sources: List[tuple] = []
    if path:
        _sources(_resolve(path, None), [], sources)
    sources += [(f"override '{o}'", _dotted(o)) for o in overrides]
    origins: Dict[str, str] = {}
    methods = MethodKeys()
    merged: dict = {}
    for origin, raw in sources:
        if any(sec in raw and not isinstance(raw[sec], dict) for sec in SECTIONS):
            raise ValueError("a section given a value")  # the slow path names it
        note_split_keys(raw, origin, origins)
        methods.note(raw, origin)
        _deep_update(merged, raw)
    cfg = OmegaConf.merge(_schema(), merged)
    resolve_stage(cfg, origins)
    resolve_method(cfg, methods)
    return cfg


_SCHEMA: Optional[DictConfig] = None


def _schema() -> DictConfig:
    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = OmegaConf.structured(Config)
    return _SCHEMA


def compose(path: Optional[str] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Merged but not yet validated config tree (for tools that only print it)."""
    _check_overrides(overrides)
    try:
        cfg = _compose_fast(path, overrides)
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError, TypeError, KeyError):
        cfg = compose_by_source(path, overrides)  # raises the precise error (or agrees)
    cfg.defaults = []  # composed away: the result is self-contained
    return cfg


def load_config(path: Optional[str] = None, overrides: Iterable[str] = (),
                check_files: bool = False) -> Config:
    """Load, compose and validate a run config; raises ConfigError naming the bad key."""
    tree = compose(path, list(overrides))
    try:
        cfg: Config = OmegaConf.to_object(tree)
    except OmegaConfBaseException as exc:
        raise _explain(exc, "config") from None
    validate(cfg, check_files=check_files)
    return cfg


def to_yaml(cfg: Config) -> str:
    """The resolved config; self-contained (`defaults` composed away), so it reloads as it ran."""
    return dump_yaml(dataclasses.asdict(cfg))


def dump_yaml(tree: Dict[str, Any]) -> str:
    """OmegaConf's own YAML dumper on plain data: the same text as OmegaConf.to_yaml, faster."""
    import yaml
    from omegaconf._utils import get_omega_conf_dumper

    return yaml.dump(tree, default_flow_style=False, allow_unicode=True, sort_keys=False,
                     Dumper=get_omega_conf_dumper())
