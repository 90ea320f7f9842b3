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


RANK0_FULL = """
import errno, os, sys
where = sys.argv[1]
if os.environ["RANK"] == "0":  # the disk fills under rank 0's own write (no tmpfs can fill for one rank)
    if where == "manifest":
        import spt_dist.engine.checkpoint as C
        original = C._write_json
        def write(path, obj):
            if path.name == "manifest.json" and obj.get("step") == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(path, obj)
        C._write_json = write
    else:
        import spt_dist.engine.train as T
        from spt_dist.io import DiskFullError
        def write(path, obj):
            raise DiskFullError(f"no space left on {path.parent} while writing {path.name}")
        T.write_json_atomic = write
from spt_dist.cli import main
sys.exit(main(["train", *sys.argv[2:]]))
"""


@pytest.mark.parametrize("where", ["manifest"])  # "results": the same Comm.on_main, not run here for time
def test_a_full_disk_under_a_rank_0_write_ends_every_rank_with_exit_2(tmp_path, where):
    """The checkpoint's manifest (and results.json) are rank 0's to write; the disk filling under
    it is said on every rank (exit 2 each), no rank left waiting in a collective for it."""
    from engine_helpers import torchrun

    assets = make_assets(tmp_path / "assets")
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1, every=2)
    (tmp_path / "worker.py").write_text(RANK0_FULL)
    proc = subprocess.run(torchrun([str(tmp_path / "worker.py"), where, str(config), "run.name=r",
                                    "data.batch_size=16", "distributed.timeout_s=600"]),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    said = [line for line in proc.stderr.splitlines() if "error on rank" in line]
    assert sorted(said) == [f"spt train: error on rank {r}: no space left on {tmp_path / 'runs' / 'r'}"
                            f"{'/checkpoints while saving checkpoint step 2' if where == 'manifest' else ' while writing results.json'}"
                            for r in (0, 1)], proc.stderr[-4000:]
    assert proc.stderr.count("exitcode  : 2") == 2, proc.stderr[-4000:]
