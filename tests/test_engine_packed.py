"""Packed training (engine/pack.py): G configs over one backbone pass per batch.

A member of a pack trains what it would train alone (same tensors, its own run folder with
the lone run's files) and a pack stopped by SIGTERM and started again finishes bit-identical
to an uninterrupted pack. One `spt train --pack` process is stopped for real; one worker
process resumes it and trains the uninterrupted pack and the lone runs (tests/pack_worker.py).
"""
from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from engine_helpers import PYTHON, ROOT, env, make_assets, run, wait_for_step, write_config

PACK = """\
members:
  - [optim.lr=0.01]
  - [optim.lr=0.03, optim.weight_decay=0.1, method.prompt_dropout=0.0]
  - [optim.name=sgd, optim.lr=0.05, optim.weight_decay=0.001]
  - [method.name=spt, method.init=kmeans, method.init_images=64, method.cache_dir=null]
"""
STEPS = 32  # 2 epochs of 128 images / 8
# Lone vs packed: the backbone's matrix products run over 4 x 8 rows instead of 8, which may
# change their summation order; the bound below is far above float32 noise over 32 steps and
# far below any real difference (measured: 0.0, bit-identical, on this CPU).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packed")
    assets = make_assets(tmp_path_factory.getbasetemp() / "engine_assets")
    cfg = write_config(tmp / "cfg.yaml", assets, tmp / "killed", epochs=2, every=5)
    (tmp / "pack.yaml").write_text(PACK)
    proc = subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "train", str(cfg), "--pack", str(tmp / "pack.yaml"),
                             "--no-progress"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        first_dir = _member_dirs(tmp / "killed", timeout_proc=proc)[0]
        wait_for_step(first_dir / "metrics.jsonl", 3, proc)
        proc.send_signal(signal.SIGTERM)
        said, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    killed = {"rc": proc.returncode, "out": said,
              "results": [json.loads((d / "results.json").read_text()) for d in _member_dirs(tmp / "killed")]}
    worker = run([PYTHON, str(ROOT / "tests" / "pack_worker.py"), str(tmp), str(cfg), str(tmp / "pack.yaml")])
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-6000:]
    return killed, json.loads((tmp / "report.json").read_text())


def _member_dirs(out: Path, timeout_proc=None):
    import time

    deadline = time.time() + 120
    while True:
        dirs = sorted(p for p in out.glob("*") if (p / "metrics.jsonl").is_file()) if out.is_dir() else []
        if len(dirs) == 4 or timeout_proc is None:
            return dirs
        if timeout_proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"no 4 member folders in {out}:\n{timeout_proc.stdout.read()[-4000:]}")
        time.sleep(0.1)


def test_every_member_trains_what_it_trains_alone_in_its_own_run_folder(packed):
    _, report = packed
    for member, full, alone in zip(report["members"], report["full"], report["alone"]):
        assert member["names"]["full"] == member["names"]["alone"]  # the folder it gets alone
        assert {"config.yaml", "metrics.jsonl", "results.json", "prompt_pack.safetensors", "train_keys.txt",
                "checkpoints"} <= set(member["files"])
        assert member["checkpoints"] == ["step_00000030", "step_00000032"]
        for name, (diff, scale) in member["vs_alone"].items():
            assert diff <= TOLERANCE * max(1.0, scale), (member["names"]["full"], name, diff)
        assert full["status"] == alone["status"] == "finished" and full["step"] == alone["step"] == STEPS
        assert full["pack_size"] == 4 and (full["top1"], full["val_top1"]) == (alone["top1"], alone["val_top1"])
        assert full["trainable_params"] == alone["trainable_params"]
    assert len({m["names"]["full"] for m in report["members"]}) == 4


def test_a_pack_stopped_by_sigterm_resumes_and_finishes_identical_to_an_uninterrupted_pack(packed):
    killed, report = packed
    assert killed["rc"] == 0, killed["out"][-4000:]
    steps = {r["step"] for r in killed["results"]}
    assert len(steps) == 1 and 3 <= steps.pop() < STEPS  # every member stopped at the same step
    assert all(r["status"] == "interrupted" and r["signal"] == "SIGTERM" for r in killed["results"])
    for member, resumed in zip(report["members"], report["resumed"]):
        assert resumed["status"] == "finished" and resumed["step"] == STEPS
        assert member["resumed_identical"], member["names"]["killed"]
        assert member["events"].count("start") == 2 and "interrupted" in member["events"]


def test_a_member_of_a_stopped_pack_continues_alone_from_its_lone_format_checkpoint(packed):
    _, report = packed
    assert report["continued"]["status"] == "finished" and report["continued"]["step"] == STEPS
    assert "pack_size" not in report["continued"]
    for name, (diff, scale) in report["continued_vs_full"].items():
        assert diff <= TOLERANCE * max(1.0, scale), (name, diff)


def test_a_pack_whose_members_differ_in_a_shared_key_is_refused_naming_it(tmp_path):
    from spt_dist.config import ConfigError
    from spt_dist.config.pack import load_pack

    assets = make_assets(tmp_path.parent / "engine_assets_cfg")
    cfg = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs")
    for members, key in (("[[data.batch_size=8], [data.batch_size=16]]", "data.batch_size"),
                         ("[[run.seed=0], [run.seed=1]]", "run.seed"),
                         ("[[method.prompt_length=4], [method.prompt_length=8]]", "method.prompt_length")):
        (tmp_path / "pack.yaml").write_text(f"members: {members}\n")
        with pytest.raises(ConfigError, match=rf"'{key}'") as err:
            load_pack(str(cfg), str(tmp_path / "pack.yaml"))
        assert "member 1" in str(err.value)
    from spt_dist.cli import main as spt

    assert spt(["train", str(cfg), "--pack", str(tmp_path / "pack.yaml")]) == 2  # one `spt: error:` line
    (tmp_path / "pack.yaml").write_text("members: [[optim.lr=0.1], [optim.lr=0.1]]\n")
    from spt_dist.engine.pack import train_pack

    with pytest.raises(ConfigError, match="same run"):
        train_pack([m.cfg for m in load_pack(str(cfg), str(tmp_path / "pack.yaml"))])
    (tmp_path / "pack.yaml").write_text("members: [[optim.lr=0.1], [optim.lr=0.2]]\n")
    with pytest.raises(ConfigError, match="distributed.zero_stage"):
        load_pack(str(cfg), str(tmp_path / "pack.yaml"), ["distributed.zero_stage=2"])
