"""A study run's state on a SLURM cluster without accounting: squeue decides, so a job that
died without results ends (and frees its throttle slot) instead of counting as running forever.

Needs the development cluster's clients (`source /tmp/spt-slurm/env.sh`); skips without them.
accounting is switched off by a stand-in `sacct` that answers as sacct does when the cluster
keeps no accounting."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from spt_dist.study.progress import ALIVE, run_state
from spt_dist.study.status import sacct_state

NO_ACCOUNTING = "#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n"


@pytest.fixture
def no_accounting(tmp_path, monkeypatch):
    try:
        ok = subprocess.run(["squeue", "-h"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        pytest.skip("no SLURM controller answers squeue (source /tmp/spt-slurm/env.sh)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(NO_ACCOUNTING)
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def _submitted(root, job_id: str) -> list:
    folder = root / "jobs" / job_id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"job_id": job_id, "cluster": "slurm", "tasks": 1}))
    return [{"run_dir": str(root / "run"), "job_id": job_id, "job_folder": str(folder)}]


def test_a_job_gone_from_the_queue_without_results_has_failed(no_accounting):
    (no_accounting / "run").mkdir()
    out = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    gone = str(int(out.split(";")[0]) + 100000)  # an id the controller never gave out
    assert sacct_state(gone) not in ALIVE
    state = run_state(no_accounting / "run", _submitted(no_accounting, gone))
    assert state.state == "failed" and f"job {gone} ended without results" in state.error


def test_a_queued_job_still_runs(no_accounting):
    (no_accounting / "run").mkdir()
    job = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "-t", "1", "--wrap", "sleep 30"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    try:
        time.sleep(0.5)
        assert sacct_state(job) in {"PENDING", "RUNNING", "CONFIGURING"}
        assert run_state(no_accounting / "run", _submitted(no_accounting, job)).state == "running"
    finally:
        subprocess.run(["scancel", job], timeout=60)
