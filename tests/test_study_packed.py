"""protocol.pack_search: `spt study run` submits a cell's search stage as ONE packed task
(submitit's local executor, the real engine): both search runs share one job, each finishes in
its own run folder, selection and the final stage proceed as without packing."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from engine_helpers import PYTHON, ROOT, env
from spt_dist.rundir import read_results
from study_helpers import check_finished_study, make_study


def _packed_spec(tmp_path, search: str = "{optim.lr: [0.003, 0.05]}"):
    spec = make_study(tmp_path, "local")
    text = spec.read_text().replace("  seeds: [0, 1]\n", "  seeds: [0, 1]\n  pack_search: true\n")
    spec.write_text(text.replace("search: {optim.lr: [0.003, 0.05]}", f"search: {search}"))
    return spec


def test_a_cells_search_stage_goes_out_as_one_packed_task(tmp_path):
    spec = _packed_spec(tmp_path)
    proc = subprocess.run([PYTHON, "-m", "spt_dist.cli", "study", "run", str(spec), "--poll", "1"], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    check_finished_study(spec)  # selection = argmax of the search, finals finished, every run trained once
    ledger = [json.loads(line) for line in (tmp_path / "study" / "submitted.jsonl").read_text().splitlines()]
    search = [e for e in ledger if e["stage"] == "search"]
    final = [e for e in ledger if e["stage"] == "final"]
    assert len(search) == 2 and len({e["job_id"] for e in search}) == 1  # one task for the cell's search
    assert len(final) == 2 and len({e["job_id"] for e in final}) == 2
    assert all(read_results(e["run_dir"])["pack_size"] == 2 for e in search)
    assert all("pack_size" not in read_results(e["run_dir"]) for e in final)
    job = json.loads((Path(search[0]["job_folder"]) / "job.json").read_text())
    assert sorted(job["pack_run_dirs"]) == sorted(e["run_dir"] for e in search)


def test_a_search_grid_that_cannot_be_packed_is_refused_naming_the_key(tmp_path):
    from spt_dist.study.errors import StudyError
    from spt_dist.study.plan import build_plan
    from spt_dist.study.spec import load_spec

    spec = _packed_spec(tmp_path, "{method.prompt_length: [2, 4]}")
    with pytest.raises(StudyError, match="method.prompt_length"):
        build_plan(load_spec(spec))
