"""A study's runs, stage by stage, derived from the spec alone (nothing runs here).

Cells are the product of the axes, crossed with the methods. Per cell the search stage has
one run per point of the method's search grid (with the protocol's tune overrides); the
final stage has one run per seed with the selected point (with the final overrides). A run
is its resolved config: its folder is `runs_dir/<default run name>`, which ends in the config
hash, so the same config asked for twice (by two stages, two cells or two studies sharing
`runs_dir`) is one run folder and trains once.

Every search config, and every final config with the first grid point standing in for the
selection, is loaded and checked like `spt submit` checks one (files, preflight) when the plan
is built: a bad axis key or an impossible combination fails before anything is submitted.
`build_plan(spec, check=False)` (status, report) validates the configs but opens no data or
weight file: it only names the runs, whose results files are then read.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from spt_dist.config.schema import Config

from .errors import StudyError
from .spec import AxisValue, Method, StudySpec, _value

SEARCH, FINAL = "search", "final"


@dataclass(frozen=True)
class Cell:
    method: Method
    values: Tuple[AxisValue, ...]

    @property
    def key(self) -> str:
        """Stable, readable, file-name safe: method__axis-label__..."""
        parts = [self.method.name] + [f"{v.axis}-{v.label}" for v in self.values]
        return re.sub(r"[^A-Za-z0-9._+=-]+", "-", "__".join(parts))

    @property
    def labels(self) -> Dict[str, str]:
        return {v.axis: v.label for v in self.values}

    def grid(self) -> List[Dict[str, Any]]:
        """The method's search points, in the spec's order (ties go to the earlier point)."""
        keys = [k for k, _ in self.method.search]
        return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in self.method.search))] or [{}]


@dataclass
class PlannedRun:
    stage: str
    cell: Cell
    point: Dict[str, Any]            # the search point (search) or the selected one (final)
    seed: Optional[int]              # final runs: run.seed
    cfg: Config
    config_path: str

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.out_dir) / self.cfg.run.name

    @property
    def name(self) -> str:
        return self.cfg.run.name


def overrides(spec: StudySpec, cell: Cell, stage: str, point: Dict[str, Any], seed: Optional[int]) -> List[str]:
    out = list(cell.method.overrides)
    for v in cell.values:
        out += v.overrides
    out += spec.tune if stage == SEARCH else spec.final
    out += [f"{k}={_value(v)}" for k, v in point.items()]
    if seed is not None:
        out.append(f"run.seed={seed}")
    out += list(spec.launch)
    out += [f"run.out_dir={spec.runs_dir}", "run.name=''"]  # the default name: ends in the config hash
    return out


def make_run(spec: StudySpec, cell: Cell, stage: str, point: Dict[str, Any], seed: Optional[int],
             check: bool = True) -> PlannedRun:
    from .submit import prepare

    cfg = prepare(spec.base, overrides(spec, cell, stage, point, seed), check=check)
    return PlannedRun(stage, cell, point, seed, cfg, spec.base)


def cells(spec: StudySpec) -> List[Cell]:
    return [Cell(m, combo) for m in spec.methods for combo in itertools.product(*spec.axes)]


@dataclass
class Plan:
    spec: StudySpec
    cells: List[Cell]
    search: Dict[str, List[PlannedRun]]   # cell key -> runs
    packed: List[str] = field(default_factory=list)  # protocol.pack_search: cells whose search is one pack
    check: bool = True                    # configs checked against their files (False: only named)

    def final(self, cell: Cell, point: Dict[str, Any]) -> List[PlannedRun]:
        return [make_run(self.spec, cell, FINAL, point, seed, self.check) for seed in self.spec.seeds]


def build_plan(spec: StudySpec, check_final: bool = True, check: bool = True) -> Plan:
    """Every search run, validated; the final stage validated with the first grid point.
    `check=False`: validated without opening data or weight files (for commands that only read)."""
    all_cells = cells(spec)
    keys = [c.key for c in all_cells]
    if len(set(keys)) != len(keys):
        raise ValueError("two cells share a name; give axis values distinct labels")
    search = {c.key: [make_run(spec, c, SEARCH, p, None, check) for p in c.grid()] for c in all_cells}
    packed = packed_cells(spec, search) if spec.pack_search else []
    if check_final and check:
        for c in all_cells:
            for seed in spec.seeds:
                make_run(spec, c, FINAL, c.grid()[0], seed)
    return Plan(spec, all_cells, search, packed, check)


def packed_cells(spec: StudySpec, search: Dict[str, List[PlannedRun]]) -> List[str]:
    """protocol.pack_search: the cells of prompt methods, each checked to form a pack; a linear
    probe's or full fine-tuning's cells (which packed training cannot train) run one task per run."""
    from spt_dist.config.pack import packable_method

    keys = []
    for key, runs in search.items():
        can = {packable_method(r.cfg) for r in runs}
        if len(can) > 1:
            raise StudyError(f"cell {key}: protocol.pack_search=true, but its search grid mixes prompt methods with "
                             f"methods packed training cannot train; give them separate methods in the spec")
        if can == {True}:
            keys.append(key)
    if not keys:
        raise StudyError(f"{spec.name}: protocol.pack_search=true, but no method of this study is a prompt "
                         f"method with prompts (vpt, spt with method.prompt_length >= 1); nothing could be packed")
    for key in keys:
        check_packable(key, search[key])
    return keys


def check_packable(cell: str, runs: Sequence[PlannedRun]) -> None:
    """A prompt method's cell under protocol.pack_search: its search runs must form a pack (config/pack.py)."""
    from spt_dist.config import ConfigError
    from spt_dist.config.pack import PackMember, check_pack

    try:
        check_pack([PackMember(r.name, [], r.cfg) for r in runs])
    except ConfigError as exc:
        raise StudyError(f"cell {cell}: protocol.pack_search=true, but its search runs cannot be packed: {exc}") \
            from None


def unique_runs(runs: Sequence[PlannedRun]) -> List[PlannedRun]:
    """One PlannedRun per run folder (a config asked for twice runs once)."""
    seen, out = set(), []
    for r in runs:
        if r.run_dir not in seen:
            seen.add(r.run_dir)
            out.append(r)
    return out
