"""Where each run of a study stands, from files only: its run folder and the study's ledger.

- done: results.json says finished;
- running: a job holds its lock (spt_dist.rundir.lock.held_at_a_look, with the run's
  run.lock_stale_s the lock records, else its config.yaml's, else the default), or its last
  submitted job is queued or running (SLURM: sacct's state, else squeue's, a job neither holds
  having ended; UNKNOWN, where neither can be asked, counts as running);
- failed: its last job ended without finished results (`error` holds the job's traceback or
  the end of its log), `attempts` counting the submissions;
- pending: never submitted, or interrupted and not running (it resumes from its checkpoint).

The ledger, `out_dir/submitted.jsonl`, gets one line per submission (run folder, job id,
job folder) right after it; a driver that dies between the two submits again, and the run
folder's lock makes the second job stop at once while the first trains.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from omegaconf import OmegaConf

from spt_dist.config.schema import RunConfig
from spt_dist.rundir import read_results
from spt_dist.rundir.lock import LOCK, held_at_a_look, seconds

from .status import ENDED, job_status

LEDGER = "submitted.jsonl"
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
         "SUSPENDED", "RESIZING", "UNKNOWN"}


@dataclass
class RunState:
    state: str                  # done | running | failed | pending
    attempts: int = 0
    error: str = ""
    job: Optional[str] = None


def read_ledger(out_dir: Path) -> Dict[str, List[dict]]:
    """run folder -> its submissions, oldest first."""
    path = Path(out_dir) / LEDGER
    out: Dict[str, List[dict]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            out.setdefault(entry["run_dir"], []).append(entry)
    return out


def record(out_dir: Path, entries: List[dict]) -> None:
    path = Path(out_dir) / LEDGER
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for e in entries:
            f.write(json.dumps(e, sort_keys=True) + "\n")
        f.flush()


def lock_stale_s(run_dir: Path) -> float:
    """The run's run.lock_stale_s for a lock that does not record it: the one key read from its
    config.yaml (the resolved config the run wrote, validated when it started), else the schema's
    default."""
    try:
        value = seconds(OmegaConf.select(OmegaConf.load(Path(run_dir) / "config.yaml"), "run.lock_stale_s"))
        if value is not None:
            return value
    except Exception:  # noqa: BLE001 - absent, unreadable or not YAML: the training job says why
        pass
    return float(RunConfig().lock_stale_s)


def run_state(run_dir: Path, submissions: List[dict]) -> RunState:
    res = read_results(run_dir)
    if res and res.get("status") == "finished":
        return RunState("done", len(submissions))
    if (Path(run_dir) / LOCK).is_file() and held_at_a_look(run_dir, lambda: lock_stale_s(run_dir)):
        return RunState("running", len(submissions), job=submissions[-1]["job_id"] if submissions else None)
    if not submissions:
        return RunState("pending")
    last = submissions[-1]
    try:
        st = job_status(Path(last["job_folder"]))
    except Exception as exc:  # a job folder gone: judge by the run folder alone
        return RunState("failed", len(submissions), f"job folder unreadable ({exc})", last["job_id"])
    if st.state in ALIVE:
        return RunState("running", len(submissions), job=last["job_id"])
    # The job ended: read the results again, since they may have been written (and the lock let
    # go, and the job ended) after the first read above: a finished run is never judged failed.
    res = read_results(run_dir)
    if res and res.get("status") == "finished":
        return RunState("done", len(submissions))
    if st.errors:
        return RunState("failed", len(submissions), st.errors[-1], last["job_id"])
    if res and res.get("status") == "interrupted":
        return RunState("pending", len(submissions), job=last["job_id"])  # resumes when submitted again
    from .status import log_tail

    tail = log_tail(Path(last["job_folder"]), str(last["job_id"]))
    how = "" if st.state == ENDED else f" {st.state}"
    return RunState("failed", len(submissions), f"job {last['job_id']} ended{how} without results"
                    + (f":\n{tail}" if tail else ""), last["job_id"])
