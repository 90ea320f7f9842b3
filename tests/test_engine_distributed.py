"""Real 2-rank CPU training (torchrun + gloo + DeepSpeed's CPU accelerator)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine_helpers import (PYTHON, ROOT, free_port, checkpoint_tensors, env, losses, make_assets, run, torchrun,
                             wait_for_step, write_config)

WORKER = str(ROOT / "tests" / "engine_worker.py")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _worker(mode: str, out: Path, config: Path, *extra: str) -> dict:
    proc = run(torchrun([WORKER, mode, str(out), str(config), *extra]), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads((out / f"{mode}.json").read_text())


def test_zero_stages_0_to_3_and_precisions_learn_and_save_only_trainable_tensors(tmp_path, assets):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=1, every=4)
    report = _worker("matrix", out, cfg)
    assert set(report) == {f"z{z}_{d}" for z in (0, 1, 2, 3) for d in ("fp32", "bf16")}
    for name, res in report.items():
        assert res["status"] == "finished" and res["world_size"] == 2, name
        curve = losses(out / name)
        assert len(curve) == res["step"] == 8
        assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, (name, curve)  # it learns
        trainable = res["trainable_params"]
        assert trainable == 3 * 4 * 32 + 32 * 3 + 3  # deep prompts + head; the backbone is frozen
        # Checkpoint: module tensors are exactly the trainable ones; all tensors together fit
        # weights + fp32 master + two Adam moments (+ ZeRO padding), far below the backbone.
        step_dir = sorted((out / name / "checkpoints").glob("step_*"))[-1]
        tensors = checkpoint_tensors(step_dir)
        model_files = [v for f, v in tensors.items() if "model_states" in f]  # ZeRO-3: one per rank
        assert model_files, name
        for module in model_files:
            assert sorted(k for k in module if k.startswith("module.")) == \
                ["module.head.bias", "module.head.weight", "module.prompts"], name
        total = sum(sum(v.values()) for v in tensors.values())
        assert total <= 4 * trainable * 4 + 4096, (name, total)
        assert total < res["backbone_params"], name  # i.e. under a quarter of the frozen bytes
        assert res["checkpoint_bytes"] > 0 and res["optimizer_moment_bytes"] >= 2 * 4 * trainable


@pytest.mark.parametrize("overrides", [
    ["distributed.zero_stage=0", "precision.dtype=fp32", "optim.name=sgd", "optim.lr=0.05"],
    ["distributed.zero_stage=2", "precision.dtype=bf16", "optim.grad_accum=2", "optim.grad_clip=1.0"],
], ids=["zero0-fp32-sgd", "zero2-bf16-accum-clip"])
def test_resume_mid_epoch_is_bit_identical(tmp_path, assets, overrides):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=2, every=3)
    # 8 batches per epoch: step 11 = epoch 1, batch 3; with accumulation 2, step 5 = epoch 1, batch 2.
    stop_at = 5 if "optim.grad_accum=2" in overrides else 11
    if "distributed.zero_stage=2" in overrides:  # SPT: k-means init, alignment reference rebuilt on resume
        overrides = [*overrides, "method.name=spt", "method.init=kmeans", "method.track_alignment=true",
                     f"method.cache_dir={tmp_path / 'cache'}"]
    report = _worker("resume", out, cfg, str(stop_at), *overrides)
    assert report["first"]["status"] == "interrupted" and report["first"]["step"] == stop_at
    assert report["resumed"]["status"] == "finished"
    assert report["resumed"]["step"] == report["full"]["step"]
    assert all(report["identical"].values()), report["max_abs_diff"]
    events = [json.loads(l) for l in (out / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [e["resumed_from"] is not None for e in events if e["event"] == "start"] == [False, True]
    if "method.name=spt" in overrides:
        align = [e for e in events if e["event"] == "alignment"]
        assert align[0]["step"] == 0 and align[0]["align/mean"] == pytest.approx(1.0, abs=1e-4)  # prompts = prototypes
        assert [e["step"] for e in align[1:]] == [8 // 2, 16 // 2]  # each epoch end, across the resume


def _popen_train(config: Path) -> subprocess.Popen:
    cmd = torchrun(["-m", "spt_dist.cli", "train", str(config)])
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _ranks(proc: subprocess.Popen) -> list:
    """PIDs of the rank processes (torchrun's children)."""
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_sigusr2_mid_epoch_checkpoints_and_exits_cleanly(tmp_path, assets):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=50, every=1000)
    proc = _popen_train(cfg)
    try:
        run_dir = None
        deadline = time.time() + 120
        while run_dir is None and time.time() < deadline:
            found = list(out.glob("*/metrics.jsonl")) if out.is_dir() else []
            run_dir = found[0].parent if found else None
            time.sleep(0.2)
        assert run_dir is not None, "the run folder never appeared"
        wait_for_step(run_dir / "metrics.jsonl", 3, proc)
        ranks = _ranks(proc)
        assert len(ranks) == 2
        os.kill(ranks[1], signal.SIGUSR2)  # one rank is told; both must stop at the same step
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = proc.stdout.read()
    assert rc == 0, log[-4000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "interrupted" and res["signal"] == "SIGUSR2"
    assert 3 <= res["step"] < 50 * 8
    steps = sorted(run_dir.glob("checkpoints/step_*"))
    assert steps and int(steps[-1].name.split("_")[1]) == res["step"]
    meta = json.loads((steps[-1] / "meta.json").read_text())
    assert meta["state"]["step"] == res["step"] and meta["state"]["epoch"] == res["epoch"]
    assert not (run_dir / "prompt_pack.safetensors").exists()  # nothing else is written


def test_killed_rank_ends_the_run_nonzero_in_bounded_time(tmp_path, assets):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=50, every=1000)
    proc = _popen_train(cfg)
    try:
        deadline = time.time() + 120
        while not list(out.glob("*/metrics.jsonl")) and time.time() < deadline:
            time.sleep(0.2)
        wait_for_step(next(out.glob("*/metrics.jsonl")), 2, proc)
        ranks = _ranks(proc)
        os.kill(ranks[1], signal.SIGKILL)
        t0 = time.time()
        rc = proc.wait(timeout=90)
        assert rc != 0
        assert time.time() - t0 < 90
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_without_a_launcher_a_dead_peer_ends_the_other_rank(tmp_path, assets):
    """Two ranks started like srun tasks (SLURM_PROCID/SLURM_NTASKS, no torchrun to kill the
    rest): when one dies, the other fails within the collective timeout instead of hanging."""
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=50, every=1000)
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        e = env()
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            e.pop(key, None)
        e.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank), SLURM_JOB_ID="1",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "train",
                                       str(cfg), "distributed.timeout_s=20"], cwd=ROOT, env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        deadline = time.time() + 120
        while not list(out.glob("*/metrics.jsonl")) and time.time() < deadline:
            time.sleep(0.2)
        wait_for_step(next(out.glob("*/metrics.jsonl")), 2, procs[0])
        procs[1].kill()
        rc = procs[0].wait(timeout=60)  # timeout_s=20 plus teardown
        assert rc != 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_linear_probe_feature_cache_matches_the_plain_path_and_resumes_exactly(tmp_path, assets):
    """2 ranks, 2 epochs, validation every epoch: the cached features (gathered across ranks)
    give the plain path's head within float summation order, the same metrics, and a cut run
    resumes bit-identically to an uninterrupted cached one."""
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=2, every=1000)
    report = _worker("features", out, cfg, "11")
    plain, cached = report["plain"], report["cached"]
    assert plain["status"] == cached["status"] == report["resumed"]["status"] == "finished"
    assert report["first"]["status"] == "interrupted" and report["first"]["step"] == 11
    # Features are computed in batches of 16 instead of the training batch of 8; a row of a
    # matmul may be summed in another order: fp32 rounding, not a different computation.
    assert max(report["max_abs_diff"].values()) <= 1e-5, report["max_abs_diff"]
    for key in ("top1", "val_top1", "best_val_epoch", "step", "bad_samples"):
        assert plain[key] == cached[key], key
    assert losses(out / "plain") == pytest.approx(losses(out / "cached"), abs=1e-5)
    assert report["resume_identical"]
    events = [json.loads(l) for l in (out / "cached" / "metrics.jsonl").read_text().splitlines()]
    used = [e for e in events if e["event"] == "feature_cache"]
    assert len(used) == 1 and used[0]["used"] and used[0]["samples"] == 128
    skipped = [json.loads(l) for l in (out / "plain" / "metrics.jsonl").read_text().splitlines()
               if '"feature_cache"' in l]
    assert [e["reason"] for e in skipped] == ["method.feature_cache=never"]
