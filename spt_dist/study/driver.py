"""`spt study run`: submit what can run, select per cell when its search is done, submit its
final stage, until every cell is done (or, with --no-wait, once).

Each pass reads the state from files (run folders, selections, the ledger), so the driver is
idempotent: after a crash, a cancel or a lost login node, running it again skips finished
runs, resumes unfinished ones from their checkpoints, leaves running ones alone and never
re-selects. Cells progress independently: a cell's final stage starts as soon as its own
search is complete. Everything submitted in one pass goes out as ONE job array; each pass
submits only as many tasks as keep the study's queued and running tasks at most
`launch.array_parallelism` (a packed cell's search is one task), so that throttles the whole
study, on SLURM and on the local executor alike. A run that failed is submitted again up to
`max_attempts` times, then reported. With protocol.pack_search, the search runs of a cell
that a pass submits are one packed task.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence

from .plan import FINAL, SEARCH, Plan, PlannedRun, unique_runs
from .progress import RunState, read_ledger, record, run_state
from .select import select


@dataclass
class Pass:
    states: Dict[str, RunState]                   # run folder -> state
    final: Dict[str, List[PlannedRun]]            # cell key -> final runs (selected cells only)
    submitted: List[PlannedRun] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    selections: Dict[str, Dict] = field(default_factory=dict)  # cell key -> its selection (selected cells)

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s.state == state)


def runs_of(plan: Plan, final: Dict[str, List[PlannedRun]]) -> List[PlannedRun]:
    return unique_runs([r for c in plan.cells for r in plan.search[c.key] + final.get(c.key, [])])


def survey(plan: Plan, write: bool = True) -> Pass:
    """States of every run, selections made where a cell's search is complete (`write=False`:
    computed without saving them, for the commands that only read)."""
    spec, ledger = plan.spec, read_ledger(plan.spec.out_dir)
    final: Dict[str, List[PlannedRun]] = {}
    warnings: List[str] = []
    selections: Dict[str, Dict] = {}
    for cell in plan.cells:
        chosen = select(spec.out_dir, cell, plan.search[cell.key], spec.metric, write=write)
        if chosen is not None:
            selections[cell.key] = chosen
            final[cell.key] = plan.final(cell, chosen["chosen"])
            warnings += chosen["warnings"]
    states = {str(r.run_dir): run_state(r.run_dir, ledger.get(str(r.run_dir), [])) for r in runs_of(plan, final)}
    return Pass(states, final, warnings=warnings, selections=selections)


def task_groups(runs: List[PlannedRun], packed: Sequence[str]) -> List[List[PlannedRun]]:
    """The tasks `runs` go out as: one per run; the search runs of this pass of a cell in
    `packed` (protocol.pack_search) form one pack."""
    groups: Dict[str, List[PlannedRun]] = {}
    for i, r in enumerate(runs):
        pack = r.stage == SEARCH and r.cell.key in packed
        groups.setdefault(f"search/{r.cell.key}" if pack else f"run/{i}", []).append(r)
    return list(groups.values())


def _submit(groups: List[List[PlannedRun]], out_dir) -> None:
    from .submit import submit_groups

    runs = [r for g in groups for r in g]
    subs = submit_groups([[r.cfg for r in g] for g in groups], [r.config_path for r in runs])
    record(out_dir, [{"run_dir": str(s.run_dir), "job_id": str(s.job.job_id), "job_folder": str(s.job_folder),
                      "cluster": s.cluster, "stage": r.stage, "cell": r.cell.key, "time": time.time()}
                     for s, r in zip(subs, runs)])


def live_tasks(p: Pass) -> int:
    """Tasks of this study queued or running (the members of a pack are one task)."""
    return len({s.job or run_dir for run_dir, s in p.states.items() if s.state == "running"})


def to_submit(plan: Plan, p: Pass, max_attempts: int = 2) -> List[List[PlannedRun]]:
    """The tasks a pass submits: runs pending, or failed with attempts left, as task_groups makes
    them, so many that at most launch.array_parallelism tasks of the study are queued or running."""
    todo = [r for r in runs_of(plan, p.final)
            if p.states[str(r.run_dir)].state == "pending"
            or (p.states[str(r.run_dir)].state == "failed" and p.states[str(r.run_dir)].attempts < max_attempts)]
    if not todo:
        return []
    return task_groups(todo, plan.packed)[:max(0, todo[0].cfg.launch.array_parallelism - live_tasks(p))]


def step(plan: Plan, max_attempts: int = 2) -> Pass:
    """One pass: survey, then submit what may run now (to_submit), on every executor alike."""
    p = survey(plan)
    groups = to_submit(plan, p, max_attempts)
    if groups:
        _submit(groups, plan.spec.out_dir)
        p.submitted = [r for g in groups for r in g]
    return p


def complete(plan: Plan, p: Pass) -> bool:
    """Every cell selected and every run of both stages finished."""
    return len(p.final) == len(plan.cells) and p.count("done") == len(p.states)


def run_study(plan: Plan, wait: bool = True, poll_s: float = 5.0, max_attempts: int = 2,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Pass:
    """Drive the study until every run is done or nothing more can run; returns the last pass.
    The spec is saved in its out_dir first (spec.SAVED), for status and report given the folder."""
    from .spec import save_spec

    save_spec(plan.spec)
    shown: set = set()
    while True:
        p = step(plan, max_attempts)
        for w in p.warnings:
            if w not in shown:
                shown.add(w)
                log(f"  warning: {w}")
        n_final = sum(len(v) for v in p.final.values())
        log(f"study {plan.spec.name}: {p.count('done')} done, {p.count('running')} running, "
            f"{p.count('failed')} failed, {p.count('pending')} pending; {len(p.final)}/{len(plan.cells)} cells "
            f"selected ({n_final} final runs)" + (f"; submitted {len(p.submitted)}" if p.submitted else ""))
        stuck = not p.submitted and p.count("running") == 0
        if complete(plan, p) or stuck or not wait:
            return p
        time.sleep(poll_s)


def final_runs(p: Pass) -> List[PlannedRun]:
    return [r for runs in p.final.values() for r in runs if r.stage == FINAL]

