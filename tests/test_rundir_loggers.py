"""run.loggers: TensorBoard, W&B (offline) and MLflow (file store) receive the run's metrics, the
same values as metrics.jsonl at the same steps, and a run stopped and resumed continues the same
tracked run. A tracker that is not installed or cannot start stops the run before training with
one line naming run.loggers; one that fails mid-run is switched off and the run goes on.

The W&B and MLflow tests skip when the package is missing (pip install -e ".[wandb]" /
".[mlflow]"); each tracker's own files are read back, W&B's transaction log record by record."""
from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import sys
from pathlib import Path

import pytest

from engine_helpers import make_assets, write_config
from spt_dist.cli import main as spt
from spt_dist.config import load_config
from spt_dist.engine.train import train

INSTALLED = [name for name in ("wandb", "mlflow") if importlib.util.find_spec(name)]


def _need(package: str) -> None:
    pytest.importorskip(package, reason=f"{package} is not installed: pip install -e \".[{package}]\"")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _cfg(tmp_path: Path, assets, *overrides: str):
    path = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=2, every=3)
    return load_config(str(path), ["data.batch_size=16", "run.name=r", *overrides])


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, assets):
    """One run with every installed tracker, stopped after 5 of 16 steps, then resumed to the end."""
    tmp = tmp_path_factory.mktemp("trackers")
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        mp.setenv(var, str(tmp / "wandb_home"))
    cfg = _cfg(tmp, assets, f"run.loggers=[tensorboard,{','.join(INSTALLED)}]".replace(",]", "]"))
    try:
        first = train(cfg, max_steps=5)
        last = train(cfg)
    finally:
        mp.undo()
        if "wandb" in INSTALLED:
            import wandb

            wandb.teardown()  # the W&B service process of this test process
    assert (first["status"], first["step"], last["status"], last["step"]) == ("interrupted", 5, "finished", 16)
    run_dir = tmp / "runs" / "r"
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"run_dir": run_dir, "events": events, "ids": json.loads((run_dir / "trackers.json").read_text())
            if (run_dir / "trackers.json").exists() else {}}


def _expected(events, key: str = "loss", event: str = "train"):
    """{step: value} of one metric as metrics.jsonl has it (the reference)."""
    return {e["step"]: e[key] for e in events if e["event"] == event}


def test_tensorboard_receives_the_metrics(resumed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    got = {}
    for events_file in sorted((resumed_run["run_dir"] / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events_file))
        acc.Reload()
        got.update({s.step: s.value for s in acc.Scalars("train/loss")})
    want = _expected(resumed_run["events"])
    assert sorted(got) == sorted(want) == list(range(1, 17))
    assert got == pytest.approx(want, rel=1e-6)


def _wandb_records(path: Path):
    """The records of a W&B transaction log (.wandb): a header, then LevelDB-log blocks of 32 KiB."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, pending = path.read_bytes(), 7, b""
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # no room for a record header: the block is padded
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, or the last chunk of a record
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_receives_the_metrics_and_a_resume_continues_the_run(resumed_run):
    _need("wandb")
    run_id = resumed_run["ids"]["wandb_id"]
    logs = sorted((resumed_run["run_dir"] / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and all(p.name == f"run-{run_id}.wandb" for p in logs)  # one W&B run, two sittings
    got = []
    for log in logs:
        runs = [r.run for r in _wandb_records(log) if r.WhichOneof("record_type") == "run"]
        assert [(r.run_id, r.display_name, r.project) for r in runs] == [(run_id, "r", "spt_dist")]
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                for r in _wandb_records(log) if r.WhichOneof("record_type") == "history"]
        got.append({row["_step"]: row["train/loss"] for row in rows if "train/loss" in row})
    want = _expected(resumed_run["events"])
    assert sorted(got[0]) == [1, 2, 3, 4, 5] and sorted(got[1]) == list(range(6, 17))  # appended, not restarted
    assert {**got[0], **got[1]} == pytest.approx(want, rel=1e-9)


def test_mlflow_file_store_receives_the_metrics_and_a_resume_continues_the_run(resumed_run):
    _need("mlflow")
    from mlflow.tracking import MlflowClient

    held = resumed_run["ids"]["mlflow"]
    store = resumed_run["run_dir"].parent / "mlruns"
    assert held["tracking_uri"] == store.resolve().as_uri()
    client = MlflowClient(held["tracking_uri"])
    experiment = client.get_experiment_by_name("spt_dist")
    (run,) = client.search_runs([experiment.experiment_id])  # the resume did not start a second run
    assert run.info.run_id == held["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["method.name"] == "vpt" and run.data.tags["spt.run_dir"] == str(
        resumed_run["run_dir"].resolve())
    got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert got == pytest.approx(_expected(resumed_run["events"]), rel=1e-9)
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test/top1")} == \
        pytest.approx(_expected(resumed_run["events"], "top1", "test"))


def test_a_tracker_not_installed_stops_the_run_before_training(tmp_path, assets, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # how Python marks a module that cannot be imported
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs")
    assert spt(["train", str(config), "run.loggers=[tensorboard,wandb]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spt: error: config key 'run.loggers' lists wandb")
    assert 'pip install -e ".[wandb]"' in err
    assert not (tmp_path / "runs").exists()


def test_a_tracker_that_cannot_start_stops_the_run_before_training(tmp_path, assets, capsys):
    _need("mlflow")
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs")
    assert spt(["train", str(config), "run.loggers=[mlflow]", "run.mlflow_tracking_uri=nosuch://store",
                "run.name=r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spt: error: config key 'run.loggers': mlflow failed to start")
    assert "nosuch://store" in err
    assert not (tmp_path / "runs" / "r" / "metrics.jsonl").exists() and not list(
        (tmp_path / "runs" / "r" / "checkpoints").glob("step_*"))


def test_a_tracker_failing_mid_run_is_switched_off(tmp_path, assets, capsys):
    _need("mlflow")
    from spt_dist.rundir.loggers import start_trackers
    from spt_dist.rundir.metrics import MetricsLog

    cfg = _cfg(tmp_path, assets, "run.loggers=[mlflow]")
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    log = MetricsLog(run_dir, True, start_trackers(cfg, run_dir, True))
    log.log("train", 1, loss=1.0)
    shutil.rmtree(tmp_path / "runs" / "mlruns")  # the store is gone under the running job
    log.log("train", 2, loss=0.5)
    log.log("train", 3, loss=0.25)
    log.close("finished")
    err = capsys.readouterr().err
    assert err.count("spt: warning: run.loggers: mlflow failed") == 1 and "off for the rest of this run" in err
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_a_full_disk_while_logging_is_reported_as_such_when_the_log_closes(tmpfs):
    """log() finds the full disk and its record stays buffered; leaving the `with` block closes
    the file, whose flush fails again: the run's error stays the DiskFullError, not the close's
    bare OSError."""
    from engine_helpers import fill_disk
    from spt_dist.io import DiskFullError
    from spt_dist.rundir.metrics import MetricsLog

    folder = tmpfs("1m")
    with pytest.raises(DiskFullError, match="while writing metrics.jsonl"):
        with MetricsLog(folder, enabled=True) as log:
            log.log("train", 1, loss=1.0)
            fill_disk(open(folder / "filler", "wb", buffering=0))
            for step in range(2, 200):  # small records: the one that crosses the file's last page fails
                log.log("train", step, note="x" * 100)
