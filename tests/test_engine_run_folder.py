"""One run per run folder: two jobs started on one folder at the same moment never mix, and a
checkpoint of another config is never resumed, even with config.yaml gone."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from engine_helpers import PYTHON, ROOT, env, make_assets, write_config
from spt_dist.config import ConfigError, load_config
from spt_dist.engine.checkpoint import CheckpointMismatchError
from spt_dist.engine.train import train
from spt_dist.rundir import config_hash, finished_results


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _start_together(config, overrides_a, overrides_b):
    """Both `spt train` processes are started, then released at the same moment (after imports)."""
    cmd = [PYTHON, "-c", "import sys, time; import spt_dist.engine.train; from spt_dist.cli import main; "
                         "t = float(sys.argv[1]); time.sleep(max(0.0, t - time.time())); "
                         "sys.exit(main(sys.argv[2:]))"]
    at = str(time.time() + 12)
    procs = [subprocess.Popen([*cmd, at, "train", str(config), *o], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for o in (overrides_a, overrides_b)]
    return [(p.wait(timeout=300), p.stderr.read()) for p in procs]


@pytest.mark.parametrize("same", [False, True], ids=["different-configs", "identical-configs"])
def test_two_jobs_on_one_folder_one_trains_one_is_refused(tmp_path, assets, same):
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=3)
    a, b = ["run.name=shared", "optim.lr=0.02"], ["run.name=shared", "optim.lr=0.02" if same else "optim.lr=0.2"]
    outcomes = _start_together(config, a, b)
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 2], outcomes
    refused = next(err for code, err in outcomes if code == 2)
    assert "is being trained by another job" in refused or "already holds a run with a different config" in refused
    run = tmp_path / "runs" / "shared"
    held = load_config(str(run / "config.yaml"))
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "finished"
    # Never a mix: what trained is what config.yaml says, in every checkpoint and in the metrics.
    assert results["lr"] == pytest.approx(held.optim.lr)
    for meta in run.glob("checkpoints/step_*/meta.json"):
        assert json.loads(meta.read_text())["identity"]["config_hash"] == config_hash(held)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("start") == 1
    assert not (run / "lock.json").exists()  # released at the end


def test_another_config_never_resumes_a_checkpoint_even_without_config_yaml(tmp_path, assets):
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=2, every=3)
    first = train(load_config(str(config), ["run.name=r", "optim.lr=0.02"]), max_steps=4)
    assert first["status"] == "interrupted"
    (tmp_path / "runs" / "r" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="has no config.yaml but its checkpoints were written by another config"):
        train(load_config(str(config), ["run.name=r", "optim.lr=0.2"]))
    assert not (tmp_path / "runs" / "r" / "config.yaml").exists()  # not claimed by the wrong config
    # The original config still resumes (config.yaml is written again).
    assert train(load_config(str(config), ["run.name=r", "optim.lr=0.02"]))["status"] == "finished"


def test_a_checkpoint_of_another_config_is_refused_by_its_identity(tmp_path, assets):
    """The last line of defence, below config.yaml: the config hash stored in every checkpoint."""
    import shutil

    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=2, every=3)
    train(load_config(str(config), ["run.name=a", "optim.lr=0.02"]), max_steps=4)
    train(load_config(str(config), ["run.name=b", "optim.lr=0.2"]), max_steps=1)
    shutil.rmtree(tmp_path / "runs" / "b" / "checkpoints")
    shutil.copytree(tmp_path / "runs" / "a" / "checkpoints", tmp_path / "runs" / "b" / "checkpoints")
    with pytest.raises(CheckpointMismatchError, match="was written for config_hash="):
        train(load_config(str(config), ["run.name=b", "optim.lr=0.2"]))


def test_a_finished_run_without_config_yaml_never_answers_for_another_config(tmp_path, assets):
    import re
    import shutil

    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1, every=3)
    ours, other = (load_config(str(config), ["run.name=f", f"optim.lr={lr}"]) for lr in (0.02, 0.2))
    run = tmp_path / "runs" / "f"
    done = train(ours)
    assert done["status"] == "finished" and done["config_hash"] == config_hash(ours) != config_hash(other)
    (run / "config.yaml").unlink()
    both = rf"config_hash {config_hash(ours)}, from {re.escape(str(run))}/%s; this config's is {config_hash(other)}"
    with pytest.raises(ConfigError, match=both % "results.json"):
        train(other)
    assert train(ours) == done  # read back, not trained again
    # results.json written before it stored the hash: the newest checkpoint's identity decides.
    results = json.loads((run / "results.json").read_text())
    del results["config_hash"]
    (run / "results.json").write_text(json.dumps(results))
    assert sorted(run.glob("checkpoints/step_*/meta.json"))
    with pytest.raises(ConfigError, match=both % "checkpoints"):
        finished_results(other, run)
    assert finished_results(ours, run) == results
    shutil.rmtree(run / "checkpoints")  # nothing left to tell: refused, never assumed
    with pytest.raises(ConfigError, match="neither its results.json nor a config.yaml or checkpoint"):
        finished_results(ours, run)
    # With config.yaml, the configs are compared through the schema, not by a stored hash that a
    # newer version (new default keys) would compute otherwise.
    from spt_dist.config import to_yaml

    (run / "config.yaml").write_text(to_yaml(ours))
    (run / "results.json").write_text(json.dumps({**results, "config_hash": "a hash of an older version"}))
    assert finished_results(ours, run)["status"] == "finished"
    with pytest.raises(ConfigError):
        finished_results(other, run)


def test_a_claim_that_fails_once_the_lock_is_taken_lets_the_lock_go(tmp_path, assets):
    """config.yaml cannot be written (a folder stands in its place): the error is the run's, and
    no lock.json is left behind to hold off the next job."""
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1)
    run = tmp_path / "runs" / "lk"
    (run / "config.yaml").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        train(load_config(str(config), ["run.name=lk"]))
    assert not (run / "lock.json").exists()


def test_a_claim_failing_on_rank_0_ends_every_rank_at_once(tmp_path, assets):
    """Two ranks, config.yaml unwritable: rank 1 is told rank 0's error (it waited in the claim's
    exchange for the collective timeout, 600 s here), and the lock is let go."""
    from engine_helpers import torchrun

    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1)
    run = tmp_path / "runs" / "lk"
    (run / "config.yaml").mkdir(parents=True)
    started = time.monotonic()
    proc = subprocess.run(torchrun(["-m", "spt_dist.cli", "train", str(config), "run.name=lk",
                                    "distributed.timeout_s=600"]), cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and time.monotonic() - started < 120, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "error on rank" in line]
    assert len(said) == 2 and all("IsADirectoryError" in line or "Is a directory" in line for line in said), \
        proc.stderr[-3000:]
    assert "error on rank 1: rank 0 failed: IsADirectoryError" in proc.stderr, proc.stderr[-3000:]
    assert not (run / "lock.json").exists()
