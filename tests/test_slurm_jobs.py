"""The launcher against a real single-node SLURM cluster (launch/slurm_up.sh) and the real
training engine: 2-rank jobs, job arrays, preemption with requeue and exact resume, failed
jobs, and configs rejected before submission.

Skips with the reason when the cluster cannot be brought up or SPT_SKIP_SLURM=1, and fails
instead under SPT_REQUIRE_SLURM=1 (both set is an error). A cluster that was up before is
left up.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPT = [sys.executable, "-m", "spt_dist.cli"]
JOB_TIMEOUT_S = 300
STEPS = 128  # 2 x 128 train samples, 2 ranks x 4 per batch, 4 epochs


def _unavailable(reason: str) -> None:
    if os.environ.get("SPT_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM required (SPT_REQUIRE_SLURM=1) but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm():
    """Bring the development cluster up (a no-op when it is up), point clients at it, and stop
    it afterwards only if this fixture started it."""
    skip, require = os.environ.get("SPT_SKIP_SLURM") == "1", os.environ.get("SPT_REQUIRE_SLURM") == "1"
    if skip and require:
        pytest.fail("SPT_SKIP_SLURM=1 and SPT_REQUIRE_SLURM=1 contradict each other; unset one")
    if skip:
        pytest.skip("SPT_SKIP_SLURM=1")
    if os.geteuid() != 0:
        _unavailable("the development SLURM cluster needs root")
    state = os.environ.get("SPT_SLURM_DIR", "/tmp/spt-slurm")
    try:
        proc = subprocess.run(["bash", str(ROOT / "launch" / "slurm_up.sh")], capture_output=True, text=True,
                              timeout=900)  # may apt-get install the packages first
    except subprocess.TimeoutExpired:
        _unavailable("launch/slurm_up.sh did not finish in 900 s")
    if proc.returncode != 0:
        _unavailable(f"launch/slurm_up.sh failed:\n{proc.stdout}\n{proc.stderr}")
    started_here = "already up" not in proc.stdout
    os.environ["SLURM_CONF"] = f"{state}/etc/slurm.conf"
    os.environ["PATH"] = "/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")
    yield state
    if started_here:
        subprocess.run(["bash", str(ROOT / "launch" / "slurm_down.sh")], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Tiny shards and a run file for vit_micro_p4_16 (random backbone weights, VPT-deep)."""
    from spt_dist.data.synthetic import tiny_shards

    root = tmp_path_factory.mktemp("slurm_study")
    tiny_shards(root / "data", {"train": [128, 128], "val": [16, 16], "test": [16, 16]}, num_classes=3, size=16)
    (root / "run.yaml").write_text(f"""
model: {{name: vit_micro_p4_16, checkpoint: null}}
method: {{name: vpt, prompt_length: 4, deep: true, init: vpt}}
data: {{root: {root / 'data'}, batch_size: 4, eval_batch_size: 16, shuffle_buffer: 16}}
optim: {{name: sgd, lr: 0.05, epochs: 4, warmup_epochs: 1}}
run: {{out_dir: {root / 'runs'}, checkpoint_every: 1000, log_every: 1, progress: false}}
launch: {{cluster: slurm, folder: {root / 'jobs'}, tasks_per_node: 2, cpus_per_task: 1, timeout_min: 20,
          signal_delay_s: 60, max_requeues: 3}}
""")
    return root


def wait_done(job, timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.time() + timeout_s
    while not job.done():
        if time.time() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout_s}s (state {job.state});\n{job.stderr()}")
        time.sleep(1)


def submit(study, *overrides, name: str):
    from spt_dist.study import prepare, submit_run

    cfg = prepare(str(study / "run.yaml"), [f"run.name={name}", *overrides])
    return submit_run(cfg, config_path=str(study / "run.yaml"))


def events(run_dir: Path, kind: str) -> list:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == kind]


def pack(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "prompt_pack.safetensors"))


@pytest.fixture(scope="module")
def reference(slurm, study):
    """An uninterrupted 2-rank run; submitted once, shared by the tests that compare to it."""
    sub = submit(study, name="reference")
    wait_done(sub.job)
    return sub


def test_two_task_job_trains_on_two_ranks(reference):
    results = reference.job.results()
    assert len(results) == 2 and all(r["status"] == "finished" for r in results)
    assert results[0]["world_size"] == 2 and results[0]["step"] == STEPS
    on_disk = json.loads((reference.run_dir / "results.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["top1"] is not None
    assert (reference.job_folder / "job.json").is_file() and reference.job_folder.name == reference.job.job_id


def test_status_of_finished_job(reference, capsys):
    from spt_dist.cli import main

    assert main(["status", str(reference.job_folder)]) == 0
    out = capsys.readouterr().out
    assert "COMPLETED" in out and '"status": "finished"' in out


def test_preemption_requeues_and_resumes_exactly(reference, study):
    sub = submit(study, name="preempted")
    deadline = time.time() + JOB_TIMEOUT_S
    while len(events(sub.run_dir, "train")) < 5:  # in the middle of training
        if time.time() > deadline or sub.job.done():
            sub.job.cancel(check=False)
            pytest.fail(f"training never started: {sub.job.stderr()}")
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR2", sub.job.job_id], check=True, timeout=30)
    wait_done(sub.job)
    results = sub.job.results()
    assert [r["status"] for r in results] == ["finished", "finished"]
    interrupted = events(sub.run_dir, "interrupted")
    starts = events(sub.run_dir, "start")
    assert len(interrupted) == 1 and interrupted[0]["signal"] == "SIGUSR2" and interrupted[0]["step"] < STEPS
    assert len(starts) == 2 and starts[1]["resumed_from"] and starts[1]["step"] == interrupted[0]["step"]
    assert "Requeued job" in sub.job.paths.stdout.read_text()
    want, got = pack(reference.run_dir), pack(sub.run_dir)
    assert want.keys() == got.keys()
    for key in want:
        assert (want[key] == got[key]).all(), f"{key} differs after preemption and resume"


def test_finished_run_is_not_rerun(reference, study):
    sub = submit(study, name="reference")  # same run folder as the finished reference
    wait_done(sub.job)
    assert sub.job.results()[0]["wall_s"] == json.loads((reference.run_dir / "results.json").read_text())["wall_s"]
    assert len(events(reference.run_dir, "start")) == 1


def test_job_array_of_a_sweep(slurm, study, capsys):
    from spt_dist.study import prepare, submit_study
    from spt_dist.config.sweep import expand, parse_grid

    points = expand([str(study / "run.yaml")], parse_grid(["method.prompt_length=2,3,5"]),
                    ["run.name=sweep", "optim.epochs=1", "launch.tasks_per_node=1"])
    subs = submit_study([prepare(p.config, p.overrides, name_suffix=p.suffix) for p in points])
    array_ids = {s.job.job_id.split("_")[0] for s in subs}
    assert len(array_ids) == 1 and [s.job.job_id.split("_")[1] for s in subs] == ["0", "1", "2"]
    for sub in subs:
        wait_done(sub.job)
    for sub, length in zip(subs, (2, 3, 5)):
        results = json.loads((sub.run_dir / "results.json").read_text())
        assert results["status"] == "finished" and results["prompt_length"] == length
        assert sub.run_dir.name == f"sweep__prompt_length-{length}"
    from spt_dist.cli import main

    array = array_ids.pop()  # `spt status <array id>`: every task at once
    assert main(["status", array, "--jobs-dir", str(study / "jobs")]) == 0
    out = capsys.readouterr().out
    assert out.count(f"job {array}_") == 3 and f"array {array}: 3 tasks, 0 failed" in out


def test_failed_job_reports_its_traceback(slurm, study, tmp_path, capsys):
    import shutil
    import tarfile

    from spt_dist.cli import main
    from spt_dist.config import ConfigError

    bad = study / "corrupt.safetensors"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(ConfigError, match="cannot be a weight file"):  # refused on the login node
        submit(study, f"model.checkpoint={bad}", name="refused")
    # What the login node cannot see: a training image whose bytes changed after indexing.
    data = tmp_path / "data"
    shutil.copytree(study / "data", data)
    tar = data / "train-000000.tar"
    with tarfile.open(tar) as t:
        at = next(m for m in t.getmembers() if m.name.endswith(".png")).offset_data
    raw = bytearray(tar.read_bytes())
    raw[at + 30:at + 46] = b"\0" * 16
    tar.write_bytes(bytes(raw))
    sub = submit(study, f"data.root={data}", "data.verify=none", "launch.tasks_per_node=1", name="failing")
    wait_done(sub.job)
    with pytest.raises(Exception) as err:
        sub.job.results()
    message = str(err.value)  # the job's own traceback, from the engine down to the reader
    assert "Traceback" in message and "spt_dist/engine/train.py" in message and "image bytes differ" in message
    assert main(["status", str(sub.job_folder)]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "Traceback" in captured.err


def _job_ids() -> set:
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-o", "JobID", "-S", "now-1days"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    return set(out.split()) | set(queued.split())


@pytest.mark.parametrize("override, key", [("optim.lr=-1", "optim.lr"), ("data.root=/nonexistent", "data.root"),
                                           ("launch.tasks_per_node=0", "launch.tasks_per_node")])
def test_bad_config_is_rejected_before_submission(slurm, study, override, key):
    before = _job_ids()
    jobs = study / "jobs_rejected"
    proc = subprocess.run([*SPT, "submit", str(study / "run.yaml"), override, "--folder", str(jobs)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and key in proc.stderr, proc.stderr
    assert _job_ids() == before and not jobs.exists()


def test_cancel_of_a_training_job_ends_it_without_requeue(slurm, study, capsys):
    from spt_dist.cli import main
    from spt_dist.study.status import sacct_state

    sub = submit(study, "optim.epochs=50", "launch.tasks_per_node=1", name="cancelled")
    deadline = time.time() + JOB_TIMEOUT_S
    while not events(sub.run_dir, "train"):  # cancel a job that trains, not one still starting
        if time.time() > deadline or sub.job.done():
            sub.job.cancel(check=False)
            pytest.fail(f"training never started: {sub.job.stderr()}")
        time.sleep(0.1)
    assert main(["cancel", sub.job.job_id, "--jobs-dir", str(study / "jobs")]) == 0
    assert f"scancel {sub.job.job_id}" in capsys.readouterr().out
    wait_done(sub.job, timeout_s=120)  # accounting tells submitit the job is over
    time.sleep(5)  # a requeue would show up by now as a pending or running job again
    assert sacct_state(sub.job.job_id) == "CANCELLED"
    queued = subprocess.run(["squeue", "-h", "-j", sub.job.job_id, "-o", "%T"], capture_output=True, text=True,
                            timeout=30).stdout.split()
    assert not queued, f"job {sub.job.job_id} is back in the queue: {queued}"
    assert "Requeued job" not in sub.job.paths.stdout.read_text()
    assert len(events(sub.run_dir, "start")) == 1
    interrupted = events(sub.run_dir, "interrupted")  # the engine saved before the job ended
    assert [e["signal"] for e in interrupted] == ["SIGTERM"]
    assert main(["status", str(sub.job_folder)]) == 0 and "CANCELLED" in capsys.readouterr().out


def test_reused_run_name_with_another_config_is_refused(reference, study):
    before = _job_ids()
    jobs = study / "jobs_clash"
    proc = subprocess.run([*SPT, "submit", str(study / "run.yaml"), "run.name=reference", "optim.lr=0.01",
                           "--folder", str(jobs)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "different config" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert _job_ids() == before and not jobs.exists()


def test_unknown_sbatch_option_is_one_error_line(slurm, study):
    jobs = study / "jobs_refused"
    proc = subprocess.run([*SPT, "submit", str(study / "run.yaml"), "run.name=refused", "--folder", str(jobs),
                           "--sbatch", "no-such-option=1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    # sbatch's own words once, inside spt's line (submitit prints them too before it raises)
    said = [line for line in proc.stderr.splitlines() if "no-such-option" in line]
    assert len(said) == 1 and said[0].startswith("spt: error: submission to slurm failed"), proc.stderr


def test_sbatch_true_is_a_bare_flag(slurm, study):
    sub = submit(study, "launch.tasks_per_node=1", "optim.epochs=1", "launch.sbatch_extra.exclusive=true",
                 name="exclusive")
    assert "#SBATCH --exclusive\n" in sub.job.paths.submission_file.read_text()
    # The scheduler took the flag as exclusive node use.  Running the job would wait for the
    # whole node, which a job of another test may hold, so the job is only inspected.
    shown = subprocess.run(["scontrol", "show", "job", str(sub.job.job_id)], capture_output=True, text=True,
                           timeout=60)
    sub.job.cancel(check=False)
    assert shown.returncode == 0, shown.stderr
    assert "OverSubscribe=NO" in shown.stdout, shown.stdout


def test_study_end_to_end_on_slurm(slurm, tmp_path):
    """The miniature study through the real scheduler: one job array per driver pass; the
    report written when the study finishes, and again from the study's folder."""
    from spt_dist.cli import main
    from study_helpers import check_finished_study, check_report, make_study

    spec = make_study(tmp_path, "slurm")
    assert main(["study", "run", str(spec), "--poll", "2"]) == 0
    check_finished_study(spec)
    check_report(tmp_path / "study")
    ledger = [json.loads(line) for line in (tmp_path / "study" / "submitted.jsonl").read_text().splitlines()]
    assert {e["cluster"] for e in ledger} == {"slurm"} and len(ledger) == 4
    assert all("_" in e["job_id"] for e in ledger)  # array tasks: <array id>_<index>
    for path in (tmp_path / "study" / "report").iterdir():
        path.unlink()
    assert main(["study", "report", str(tmp_path / "study")]) == 0
    check_report(tmp_path / "study")


def test_elastic_job_asks_for_a_node_range(slurm, tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    from spt_dist.config import ConfigError, load_config
    from spt_dist.study.executor import make_executor

    cfg = load_config(None, ["launch.cluster=slurm", "launch.elastic=true", "launch.nodes=4", "launch.min_nodes=2",
                             "data.global_batch=48", f"launch.folder={tmp_path}"])
    script = _make_sbatch_string(command="true", folder=str(tmp_path), **make_executor(cfg.launch)._executor.parameters)
    assert [line for line in script.splitlines() if "--nodes" in line] == ["#SBATCH --nodes=2-4"]
    with pytest.raises(ConfigError, match="launch.min_nodes"):
        load_config(None, ["launch.nodes=4", "launch.min_nodes=2"])  # a range without elastic


def test_elastic_job_on_fewer_nodes_is_judged_by_its_run(slurm, study):
    """Submitted for 1-2 nodes, the job gets the cluster's one node: one task of the two
    submitit counted. `spt submit --wait` waits for the task that ran and the run's results.json."""
    proc = subprocess.run([*SPT, "submit", str(study / "run.yaml"), "run.name=elastic_wait", "optim.epochs=1",
                           "--tasks-per-node", "1", "--nodes", "2", "--min-nodes", "1", "--elastic", "--wait"],
                          capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["tasks"] == 1 and printed["results"]["status"] == "finished"
    assert printed["results"]["world_sizes"] == [1] and printed["results"]["step"] == 256 // 4
    job = printed["job"]
    assert json.loads((study / "jobs" / job / "job.json").read_text())["tasks"] == 2  # what was submitted
    assert not list((study / "jobs" / job).glob("*_1_result.pkl"))                    # task 1 never ran


def test_a_node_range_whose_world_sizes_cannot_keep_the_global_batch_is_refused(slurm, study):
    proc = subprocess.run([*SPT, "submit", str(study / "run.yaml"), "run.name=elastic_bad", "--nodes", "3",
                           "--min-nodes", "1", "--elastic", "--tasks-per-node", "1", "--folder",
                           str(study / "jobs_elastic_bad")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "'data.global_batch' = 0" in proc.stderr and "a first allocation of 1 rank(s) gives 4, which 3 rank(s)" \
        in proc.stderr and "world sizes 1, 2, 3" in proc.stderr and "multiple of 6" in proc.stderr, proc.stderr
    proc = subprocess.run([*SPT, "submit", str(study / "run.yaml"), "run.name=elastic_bad", "data.global_batch=8",
                           "--nodes", "3", "--min-nodes", "1", "--elastic", "--tasks-per-node", "1", "--folder",
                           str(study / "jobs_elastic_bad")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "'data.global_batch' = 8 cannot be split over 3 rank(s)" in proc.stderr, proc.stderr
    assert "submitted job" not in proc.stdout and not (study / "jobs_elastic_bad").exists()


def test_every_launch_key_is_a_flag_and_in_the_launch_table():
    import dataclasses

    from spt_dist.cli import build_parser
    from spt_dist.config.schema import LaunchConfig
    from spt_dist.study.cli import LAUNCH_FLAGS

    keys = {f.name for f in dataclasses.fields(LaunchConfig)} - {"sbatch_extra"}  # --sbatch K=V
    assert set(LAUNCH_FLAGS) == keys
    table = (ROOT / "docs" / "slurm.md").read_text()
    assert all(f"`{k}`" in table for k in keys), sorted(k for k in keys if f"`{k}`" not in table)
    args = build_parser().parse_args(["submit", "run.yaml", "--elastic", "--min-nodes", "2"])
    assert (args.launch_elastic, args.launch_min_nodes) == ("true", 2)
    assert build_parser().parse_args(["submit", "run.yaml", "--elastic", "false"]).launch_elastic == "false"
