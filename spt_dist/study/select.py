"""Selection: per cell, the search point with the best validation metric, chosen once.

The metric is read from each search run's results.json (protocol.metric: `val_top1`, the
last epoch's, or `best_val_top1`). Ties go to the earlier point of the grid (list a grid in
the order you prefer on ties, e.g. VPT: the smaller learning rate first). The choice is
written to `out_dir/selections/<cell>.json` once and never recomputed: rerunning a study
after a crash cannot select differently. A selection made from other search runs than the
spec's current ones, or on another metric (the spec was edited: another grid, epochs, data,
protocol.metric...), is moved aside by `spt study run`, saying so, and the cell is selected
again from its current runs; plan, status and report only read (write=False). Warnings name a choice on the edge of a numeric
grid axis (the search may have been too narrow) and exact ties (a setting that changed
nothing).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from spt_dist.io import write_json_atomic
from spt_dist.rundir import read_results

from .plan import Cell, PlannedRun

FOLDER = "selections"


def set_aside(path: Path) -> Path:
    """Rename `path` to the first free `<name>.stale-<n>`; returns the new path."""
    n = 1
    while path.with_name(f"{path.name}.stale-{n}").exists():
        n += 1
    target = path.with_name(f"{path.name}.stale-{n}")
    path.rename(target)
    return target


def selection_path(out_dir: Path, cell: Cell) -> Path:
    return Path(out_dir) / FOLDER / f"{cell.key}.json"


def read_selection(out_dir: Path, cell: Cell) -> Optional[Dict[str, Any]]:
    path = selection_path(out_dir, cell)
    return json.loads(path.read_text()) if path.is_file() else None


def made_from(selection: Dict[str, Any], runs: Sequence[PlannedRun], metric: str) -> bool:
    """Whether `selection` was made on `metric` from exactly these search runs (not from an
    earlier spec's)."""
    return selection.get("metric") == metric and \
        sorted(str(c.get("run")) for c in selection.get("candidates", [])) == sorted(r.name for r in runs)


def _warnings(cell: Cell, candidates: List[Dict[str, Any]], best: Dict[str, Any]) -> List[str]:
    out = []
    for key, values in cell.method.search:
        numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numeric) == len(values) and len(set(values)) > 1:
            chosen = best["point"][key]
            if chosen in (min(values), max(values)):
                side = "smallest" if chosen == min(values) else "largest"
                out.append(f"{cell.key}: {key}={chosen} is the {side} value searched; the best may lie outside "
                           f"the grid {list(values)}")
    tied = [c for c in candidates if c["value"] == best["value"]]
    if len(tied) > 1:
        differ = sorted({k for c in tied for k in c["point"] if c["point"][k] != best["point"][k]})
        out.append(f"{cell.key}: {len(tied)} search points tie at {best['value']} (they differ in "
                   f"{', '.join(differ)}, which gave the same value here: a saturated metric, or a setting that does "
                   f"not matter at this size); the first in grid order was taken")
    return out


def select(out_dir: Path, cell: Cell, runs: Sequence[PlannedRun], metric: str,
           write: bool = True) -> Optional[Dict[str, Any]]:
    """The cell's selection: read if made before (from these runs, on this metric); made now if
    every search run is finished; None while some are not. `write=False` (plan, status,
    report): nothing is written or moved, a selection not yet saved is computed in memory."""
    done = read_selection(out_dir, cell)
    if done is not None:
        if made_from(done, runs, metric):
            return done
        if write:
            stale = set_aside(selection_path(out_dir, cell))
            print(f"spt: the selection of cell {cell.key} was made from other search runs or on another metric "
                  f"than the spec's now (the spec changed): moved to {stale}; selecting again from the current "
                  f"search runs", file=sys.stderr, flush=True)
    candidates = []
    for r in runs:
        res = read_results(r.run_dir)
        if not res or res.get("status") != "finished":
            return None
        value = res.get(metric)
        if not isinstance(value, (int, float)):
            raise ValueError(f"{r.run_dir}/results.json has no numeric '{metric}' (no validation split in the "
                             f"search stage? check protocol.tune)")
        candidates.append({"point": r.point, "value": float(value), "run": r.name})
    best = max(candidates, key=lambda c: c["value"])  # max keeps the first of equal values
    choice = {"cell": cell.key, "metric": metric, "chosen": best["point"], "value": best["value"],
              "run": best["run"], "candidates": candidates, "warnings": _warnings(cell, candidates, best)}
    if not write:
        return choice
    path = selection_path(out_dir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():  # another driver may have written it meanwhile: keep the first
        write_json_atomic(path, choice)
    return json.loads(path.read_text())
