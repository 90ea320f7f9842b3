"""A full disk is named as such, leaves no partial checkpoint, and costs no finished work:
on a real (tiny) tmpfs, filled while the run trains."""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from engine_helpers import PYTHON, ROOT, FileWritingEngine, env, fill_disk, make_assets, wait_for_step, write_config


@pytest.fixture
def tiny_fs(tmpfs):
    return tmpfs("64m")


def _usage(folder: Path) -> str:
    return subprocess.run(["du", "-ak", str(folder)], capture_output=True, text=True).stdout[-3000:]


def test_disk_full_is_named_and_the_run_resumes(tmp_path, tiny_fs):
    assets = make_assets(tmp_path / "assets")
    config = write_config(tmp_path / "cfg.yaml", assets, tiny_fs / "runs", epochs=60, every=4)
    run = tiny_fs / "runs" / "full"
    # opened before the run starts, so that filling never depends on creating a file on a busy fs
    filler_path = tiny_fs / f"filler-{uuid.uuid4().hex}"
    filler = open(filler_path, "wb", buffering=0)
    proc = subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "train", str(config), "run.name=full",
                             "data.batch_size=16", "optim.warmup_epochs=0"], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(run / "metrics.jsonl", 5, proc, timeout=180)
    fill_disk(filler)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 2, out[-3000:] + _usage(tiny_fs)
    assert f"spt: error: no space left on {run}" in out, out[-3000:]
    assert "unexpected pos" not in out
    assert not list((run / "checkpoints").glob(".tmp_*")), "a partial checkpoint was left behind"
    filler_path.unlink()
    shutil.rmtree(run / "tb", ignore_errors=True)  # TensorBoard's writer may hold a broken file
    resumed = subprocess.run([PYTHON, "-m", "spt_dist.cli", "train", str(run)], cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"status": "finished"' in resumed.stdout


@pytest.mark.parametrize("when", ["full before the save", "full during the save"])
def test_a_checkpoint_on_a_full_disk_is_named_and_leaves_no_step_folder(tmp_path, tmpfs, when):
    from spt_dist.distributed import single_process
    from spt_dist.engine.checkpoint import Checkpointer
    from spt_dist.io import DiskFullError

    fs = tmpfs("1m")
    ckpt = Checkpointer(fs / "checkpoints", 2, 1, single_process(), {}, "")
    ckpt.save(FileWritingEngine(), 1, {"step": 1})  # room: saved whole
    filler = open(fs / "filler", "wb", buffering=0)
    if when == "full during the save":
        (fs / "checkpoints" / ".tmp_step_00000002" / "ds").mkdir(parents=True)  # the folder fits, the file not
    fill_disk(filler)
    with pytest.raises(DiskFullError, match=f"^no space left on {fs / 'checkpoints'} while saving checkpoint step 2"):
        ckpt.save(FileWritingEngine(), 2, {"step": 2})
    assert sorted(p.name for p in (fs / "checkpoints").iterdir()) == ["step_00000001"]
