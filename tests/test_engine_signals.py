"""SIGUSR2 / SIGTERM outside the training loop: during setup the run stops cleanly at its
first step boundary; during the final writes it is noted and the run finishes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine_helpers import PYTHON, ROOT, make_assets, run, write_config

WORKER = str(ROOT / "tests" / "engine_worker.py")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _signal_run(tmp_path: Path, assets, phase: str):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=1, every=1000)
    proc = run([PYTHON, WORKER, "signal", str(out), str(cfg), phase, "data.batch_size=16"], timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]  # not killed (rc -12 / -15)
    return json.loads((out / "signal.json").read_text()), out / "sig", proc.stderr


def test_sigusr2_during_setup_interrupts_at_the_first_step_and_resumes(tmp_path, assets):
    report, run_dir, _ = _signal_run(tmp_path, assets, "setup")
    first, resumed = report["first"], report["resumed"]
    assert first["status"] == "interrupted" and first["signal"] == "SIGUSR2" and first["step"] == 1
    events = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "interrupted"] == [1]
    # The previous handler is back once train() returns, and the signal never reached it.
    assert report["handler_restored"] and report["outer_calls"] == []
    assert resumed["status"] == "finished" and resumed["step"] == 8  # 128 images / 16
    starts = [e["resumed_from"] for e in events if e["event"] == "start"]
    assert starts[0] is None and starts[1].endswith("step_00000001")
    assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"


def test_sigterm_during_the_final_writes_is_noted_and_the_run_finishes(tmp_path, assets):
    report, run_dir, err = _signal_run(tmp_path, assets, "final")
    first = report["first"]
    assert first["status"] == "finished" and first["step"] == 8 and first["signal"] is None
    assert (run_dir / "prompt_pack.safetensors").is_file()
    assert "SIGTERM arrived after the last step" in err
    assert report["resumed"] == first  # read back, not rerun
