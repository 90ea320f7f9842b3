"""The submission path without SLURM: submitit's local executor (one process per task) and the
in-process debug executor, with the real training engine on tiny shards; and the miniature
study, unpacked, end to end on the local executor with one command (the packed search:
tests/test_study_run.py; on SLURM: tests/test_slurm_jobs.py)."""
import json
import subprocess
import sys
import time

import pytest

from spt_dist.data.synthetic import tiny_shards


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("local_study")
    tiny_shards(root / "data", {"train": [32, 32], "val": [8, 8], "test": [8, 8]}, num_classes=3, size=16)
    path = root / "run.yaml"
    path.write_text(f"""
model: {{name: vit_micro_p4_16, checkpoint: null}}
method: {{name: vpt, prompt_length: 2, deep: false, init: vpt}}
data: {{root: {root / 'data'}, batch_size: 4, eval_batch_size: 8, shuffle_buffer: 8}}
optim: {{name: sgd, lr: 0.05, epochs: 1, warmup_epochs: 0}}
run: {{out_dir: {root / 'runs'}, progress: false}}
launch: {{folder: {root / 'jobs'}, tasks_per_node: 2, cpus_per_task: 1, timeout_min: 5}}
""")
    return path


def test_local_executor_runs_two_ranks(run_file):
    from spt_dist.study import prepare, submit_run
    from spt_dist.study.status import job_status

    sub = submit_run(prepare(str(run_file), ["launch.cluster=local", "run.name=local2"]))
    deadline = time.time() + 240
    while not sub.job.done():
        if time.time() > deadline:
            sub.job.cancel(check=False)
            pytest.fail(f"local job not done in 240 s:\n{sub.job.stderr()}")
        time.sleep(1)
    results = sub.job.results()
    assert [r["status"] for r in results] == ["finished", "finished"] and results[0]["world_size"] == 2
    assert json.loads((sub.run_dir / "results.json").read_text())["status"] == "finished"
    status = job_status(sub.job_folder)
    assert status.state == "COMPLETED" and status.results["world_size"] == 2 and not status.errors


def test_debug_executor_runs_in_process(run_file):
    proc = subprocess.run([sys.executable, "-m", "spt_dist.cli", "submit", str(run_file), "run.name=debug1",
                           "--cluster", "debug"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["results"]["status"] == "finished" and printed["results"]["world_size"] == 1
    assert printed["run_dir"].endswith("/debug1")


def test_study_end_to_end_on_the_local_executor(tmp_path):
    """`spt study run SPEC --cluster local`, the spec asking for another executor: search (one
    task per run), selection on validation, the final stage with seeds, the report."""
    from spt_dist.cli import main
    from study_helpers import check_finished_study, check_report, make_study

    spec = make_study(tmp_path, "debug")
    assert main(["study", "run", str(spec), "--cluster", "local", "--poll", "1"]) == 0
    check_finished_study(spec)
    check_report(tmp_path / "study")
    ledger = [json.loads(line) for line in (tmp_path / "study" / "submitted.jsonl").read_text().splitlines()]
    assert {e["cluster"] for e in ledger} == {"local"} and len(ledger) == 4
    assert len({e["job_id"] for e in ledger if e["stage"] == "search"}) == 2  # not packed: a job per run


def test_building_the_parser_imports_no_torch():
    code = "import sys, spt_dist.cli; spt_dist.cli.build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr
