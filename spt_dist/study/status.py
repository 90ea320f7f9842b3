"""State of a submitted job from its folder: scheduler state, result, failure traceback.

Sources, in order of trust: submitit's result files (written by the job itself), the run's
results.json, SLURM accounting (`sacct`), and for a job still running the log tails.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from submitit.core.utils import pickle_load

from .errors import StudyError
from spt_dist.rundir import read_results


@dataclass
class JobStatus:
    job_id: str
    folder: Path
    cluster: str
    state: str
    run_dir: Optional[Path]
    results: Optional[Dict[str, Any]] = None
    errors: List[str] = field(default_factory=list)  # tracebacks, one per failed task


def find_job_folders(ref: str, jobs_dir: str = "jobs") -> List[Path]:
    """One job's folder, or every task folder of an array given its array id (`13` ->
    `13_0`, `13_1`, ... under `jobs_dir`), in task order."""
    try:
        return [find_job_folder(ref, jobs_dir)]
    except StudyError:
        tasks = [p for p in Path(jobs_dir).glob(f"{ref}_*") if (p / "job.json").is_file()
                 and p.name[len(ref) + 1:].isdigit()]
        if not tasks:
            raise
        return sorted(tasks, key=lambda p: int(p.name[len(ref) + 1:]))


def find_job_folder(ref: str, jobs_dir: str = "jobs") -> Path:
    """A job folder given itself or a job id (looked up under `jobs_dir`)."""
    path = Path(ref)
    if (path / "job.json").is_file():
        return path
    cand = Path(jobs_dir) / ref
    if (cand / "job.json").is_file():
        return cand
    raise StudyError(f"no job folder '{ref}' (nor '{cand}'): expected a folder holding job.json, "
                      "as `spt submit` writes under launch.folder")


ENDED = "ENDED"  # not in SLURM's queue, and no accounting to say how it ended


def sacct_state(job_id: str, timeout_s: float = 30) -> str:
    """SLURM's state of a job (first line: the allocation). Without an answer from accounting
    (none configured, or the job not recorded yet): squeue's, ENDED for a job the queue no
    longer holds, UNKNOWN where squeue cannot be asked either."""
    try:
        lines = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True,
                               text=True, timeout=timeout_s).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        lines = []
    lines = [line for line in lines if line.strip()]
    return lines[-1].split()[0] if lines else squeue_state(job_id, timeout_s)  # "CANCELLED by 0" -> CANCELLED


def squeue_state(job_id: str, timeout_s: float = 30) -> str:
    """The queue's state of a job; ENDED when the controller answers that it has no such job."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN"
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode == 0:
        return lines[-1] if lines else ENDED
    return ENDED if "invalid job id" in proc.stderr.lower() else "UNKNOWN"  # else: controller unreachable


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _task_outcomes(folder: Path, job_id: str) -> Dict[int, tuple]:
    outcomes = {}
    for path in sorted(folder.glob(f"{job_id}_*_result.pkl")):
        task = int(path.name[len(job_id) + 1:].split("_")[0])
        try:
            outcomes[task] = pickle_load(path)
        except Exception as exc:  # a half-written file: report it, do not crash
            outcomes[task] = ("error", f"cannot read {path}: {exc}")
    return outcomes


def job_status(folder: Path) -> JobStatus:
    info = json.loads((Path(folder) / "job.json").read_text())
    job_id, cluster = str(info["job_id"]), info.get("cluster", "slurm")
    run_dir = Path(info["run_dir"]) if info.get("run_dir") else None
    outcomes = _task_outcomes(Path(folder), job_id)
    errors = [trace for _, (kind, trace) in sorted(outcomes.items()) if kind == "error"]
    if len(outcomes) >= int(info.get("tasks", 1)) or (outcomes and cluster != "slurm"):
        state = "FAILED" if errors else "COMPLETED"  # the job's own word; sacct may lag behind
        first = outcomes.get(0, ("", None))[1]
        if not errors and isinstance(first, dict) and first.get("status") == "interrupted":
            # Saved and stopped on a signal without a requeue (a cancel): not a completed run.
            state = sacct_state(job_id) if cluster == "slurm" else "INTERRUPTED"
    elif cluster == "slurm":
        state = sacct_state(job_id)
    else:
        state = "RUNNING" if job_id.isdigit() and _pid_alive(int(job_id)) else "ENDED_WITHOUT_RESULT"
    results = read_results(run_dir) if run_dir else None
    return JobStatus(job_id, Path(folder), cluster, state, run_dir, results, errors)


def cancel_job(folder: Path, timeout_s: float = 30) -> str:
    """Cancel the job of a folder; returns what was done."""
    info = json.loads((Path(folder) / "job.json").read_text())
    job_id, cluster = str(info["job_id"]), info.get("cluster", "slurm")
    if cluster == "slurm":
        subprocess.run(["scancel", job_id], check=True, timeout=timeout_s)
        return f"scancel {job_id}"
    if job_id.isdigit() and _pid_alive(int(job_id)):
        os.kill(int(job_id), signal.SIGINT)  # submitit's local controller stops its tasks on SIGINT
        return f"interrupted local job {job_id}"
    return f"local job {job_id} is not running"


def log_tail(folder: Path, job_id: str, lines: int = 20) -> str:
    """The end of rank 0's stderr, for jobs that died without a result file."""
    path = Path(folder) / f"{job_id}_0_log.err"
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
