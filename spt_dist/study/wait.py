"""Waiting for a submitted run (`spt submit --wait`, `spt sweep --wait`): a run is judged by the
tasks that started and by its own results.json, not by the task count of the submission.

submitit counts a job's tasks when it is submitted (nodes x tasks_per_node) and expects a
result file from each. An elastic job (launch.min_nodes) may start, or come back from a
requeue, on fewer nodes, whose tasks never exist. So once the job has ended, the tasks that ran
are SLURM's allocated node count (`sacct ... NNodes`) x tasks_per_node; a failure of any of them
is the job's, and the run succeeded when its results.json says "finished".
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from spt_dist.rundir import read_results


@dataclass
class Outcome:
    job_id: str
    run_dir: Path
    tasks: int                              # tasks that ran (the last allocation's)
    results: Optional[Dict[str, Any]]       # the run's results.json
    error: Optional[str]                    # why the run did not finish: a task's traceback or the run's status


def allocated_nodes(job_id: str, timeout_s: float = 30) -> Optional[int]:
    """The node count SLURM gave the job's allocation (its last, after requeues); None without accounting."""
    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "NNodes"], capture_output=True,
                             text=True, timeout=timeout_s).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return int(lines[-1]) if lines and lines[-1].isdigit() else None


def started_tasks(sub: Any) -> int:
    """Tasks of an ended job that ran: every submitted one, except on SLURM with fewer nodes."""
    submitted = sub.job.num_tasks
    if sub.cluster != "slurm":
        return submitted
    nodes = allocated_nodes(str(sub.job.job_id))
    return submitted if nodes is None else min(submitted, nodes * sub.cfg.launch.tasks_per_node)


def _task_error(sub: Any) -> tuple:
    """(tasks that ran, the first failed task's traceback or None), after the job ended."""
    job = sub.job
    if sub.cluster == "debug":  # runs in this process, one task
        try:
            job.results()
        except Exception as exc:  # noqa: BLE001 - the run's traceback is the message
            return 1, str(exc)
        return 1, None
    job.wait()  # every task's result file is there, or the scheduler says the job ended
    tasks = started_tasks(sub)
    for i in range(tasks):
        exc = job.task(i).exception()
        if exc is not None:
            return tasks, str(exc)
    return tasks, None


def wait_for(sub: Any) -> Outcome:
    """Block until the job of `sub` (study/submit.Submitted) has ended; what became of its run."""
    tasks, error = _task_error(sub)
    results = read_results(sub.run_dir)
    if error is None and (results or {}).get("status") != "finished":
        said = f"its results.json says status {results.get('status')!r}" if results else "it has no results.json"
        error = f"the job ended but the run in {sub.run_dir} did not finish: {said}"
    return Outcome(str(sub.job.job_id), Path(sub.run_dir), tasks, results, error)
