"""`spt study run` end to end on submitit's local executor with a packed search (a cell's
search stage as one packed task, protocol.pack_search): selection on validation, final stage
with seeds, `spt study status` and `spt study report`; idempotent when the driver is killed
at random points and run again. The unpacked study runs end to end on the local executor in
tests/test_study_local.py (with the report `spt study run` writes) and on SLURM in
tests/test_slurm_jobs.py."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

from engine_helpers import PYTHON, ROOT, env
from spt_dist.cli import main as spt
from spt_dist.rundir import read_results
from study_helpers import check_finished_study, make_study


def _driver(spec) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "study", "run", str(spec), "--poll", "1", "--no-report"],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_study_killed_at_random_points_finishes_with_every_run_once(tmp_path, capsys):
    spec = make_study(tmp_path, "local", pack_search=True)
    rng = random.Random(7)
    for _ in range(2):  # kill the driver (not its jobs) at random moments
        proc = _driver(spec)
        time.sleep(rng.uniform(2, 10))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = _driver(spec)
    out, _ = final.communicate(timeout=900)
    assert final.returncode == 0, out[-4000:]
    selections = check_finished_study(spec)
    ledger = (tmp_path / "study" / "submitted.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in ledger]
    search = {e["run_dir"]: e for e in entries if e["stage"] == "search"}
    assert len(search) == 2 and all(read_results(d)["pack_size"] == 2 for d in search)
    first = [e for e in entries if e["stage"] == "search"][0]  # the cell's search went out as one task
    job = json.loads((Path(first["job_folder"]) / "job.json").read_text())
    assert sorted(job["pack_run_dirs"]) == sorted(search)
    assert all("pack_size" not in read_results(e["run_dir"]) for e in entries if e["stage"] == "final")
    # Running it again changes nothing: no submission, the same selection.
    assert spt(["study", "run", str(spec), "--no-wait", "--no-report"]) == 0
    assert (tmp_path / "study" / "submitted.jsonl").read_text().splitlines() == ledger
    assert check_finished_study(spec) == selections
    capsys.readouterr()
    assert spt(["study", "status", str(spec)]) == 0
    status = capsys.readouterr().out
    assert status.count("2 done") == 2  # search and final
    assert spt(["study", "report", str(spec)]) == 0
    report = tmp_path / "study" / "report"
    rows = (report / "study.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("method,data.fraction,top1,std,n")
    assert all(",2," in r for r in rows[1:])  # n = 2 seeds per cell
    md = (report / "study.md").read_text()
    assert "sample standard deviation (n-1)" in md and "optim.lr=" in md
    for name in ("top1_vs_data.png", "top1_vs_params.png", "scaling_fit.png"):
        assert (report / name).stat().st_size > 1000
    assert json.loads((tmp_path / "study" / "selections" /
                       "vpt_deep__data.fraction-1.json").read_text())["warnings"]  # 2-point grid: an edge
