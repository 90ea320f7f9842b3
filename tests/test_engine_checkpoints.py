"""Single-process runs in this process: checkpoint integrity, refusal, resume from a run folder,
the prompt pack round trip through `spt predict`, and the optimisation protocol's maths."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from engine_helpers import make_assets, write_config
from spt_dist.cli import main as spt
from spt_dist.config import ConfigError, load_config
from spt_dist.config.schema import OptimConfig
from spt_dist.engine.checkpoint import CheckpointMismatchError, folder_bytes, verify
from spt_dist.engine.optim import effective_lr, lr_factor, param_groups
from spt_dist.engine.train import train


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _cfg(tmp_path: Path, assets, *overrides: str, epochs: int = 1, every: int = 3):
    path = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=epochs, every=every)
    return load_config(str(path), ["data.batch_size=16", "run.name=r", *overrides])


def test_corrupt_newest_checkpoint_falls_back_to_previous_and_is_moved_aside(tmp_path, assets, capfd):
    cfg = _cfg(tmp_path, assets, epochs=2)
    first = train(cfg, max_steps=7)  # 8 batches/epoch: checkpoints at 3, 6 and the stop at 7
    assert first["status"] == "interrupted"
    root = tmp_path / "runs" / "r" / "checkpoints"
    ckpts = sorted(root.glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000006", "step_00000007"]  # keep_checkpoints=2
    victim = next(ckpts[-1].rglob("*optim_states.pt"), None) or next(ckpts[-1].rglob("*model_states.pt"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    assert "does not" in verify(ckpts[-1]) or "bytes" in verify(ckpts[-1])
    capfd.readouterr()
    res = train(cfg, max_steps=9)
    err = capfd.readouterr().err
    assert "step_00000007 is corrupt or incomplete" in err and ".corrupt_step_00000007" in err
    assert res["status"] == "interrupted" and res["step"] == 9
    # Rotation kept the valid step 6 next to the new 9; the corrupt 7 is aside, not counted.
    assert sorted(c.name for c in root.glob("step_*")) == ["step_00000006", "step_00000009"]
    assert verify(root / ".corrupt_step_00000007") is not None
    assert train(cfg)["step"] == 16
    starts = [json.loads(l) for l in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
              if '"start"' in l]
    assert starts[1]["resumed_from"].endswith("step_00000006")


def test_totals_in_results_cover_every_invocation(tmp_path, assets):
    cfg = _cfg(tmp_path, assets, every=1000)
    first = train(cfg, max_steps=8)  # stopped at the last step: the resume trains nothing
    resumed = train(cfg)
    assert first["status"] == "interrupted" and resumed["status"] == "finished" and resumed["step"] == 8
    assert resumed["train_s"] == pytest.approx(first["train_s"], abs=1e-3) and resumed["train_s"] > 0
    assert resumed["samples_per_s"] == pytest.approx(first["samples_per_s"], rel=1e-3)
    assert resumed["wall_s"] > first["wall_s"]


def test_kept_short_batch_gives_vpts_steps_per_epoch_and_resumes_exactly(tmp_path, assets):
    """data.drop_last=false on one rank: 128 samples in batches of 48 train 3 steps an epoch (48,
    48, 32), VPT's len(loader); the per-epoch schedule counts epochs of those 3 steps; a run
    stopped inside an epoch resumes to the very prompts of a run never stopped."""
    vpt = ["data.batch_size=48", "data.drop_last=false", "optim.name=sgd", "optim.prompt_weight_decay=0",
           "optim.lr=0.2", "optim.lr_schedule=per_epoch", "optim.warmup_epochs=2", "optim.warmup_from_zero=true"]
    steps = len(torch.utils.data.DataLoader(range(128), batch_size=48, shuffle=True, drop_last=False))
    assert steps == 3

    def vpt_factor(epoch: int, warmup: int = 2, total: int = 4) -> float:
        # KMnP/vpt WarmupCosineSchedule, stepped once per epoch of len(loader) steps.
        if epoch < warmup:
            return epoch / warmup
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (total - warmup))))

    whole = train(_cfg(tmp_path, assets, *vpt, "run.name=whole", epochs=4))
    assert whole["status"] == "finished" and whole["step"] == 4 * steps
    events = [json.loads(l) for l in (tmp_path / "runs" / "whole" / "metrics.jsonl").read_text().splitlines()]
    # A train event at step s logs the lr the next step uses: that of epoch s // 3.
    lrs = [(e["step"], e["lr"]) for e in events if e["event"] == "train"]
    assert lrs == [(s, pytest.approx(0.2 * vpt_factor(s // steps), abs=1e-12)) for s in range(1, 4 * steps + 1)]

    cut = _cfg(tmp_path, assets, *vpt, "run.name=cut", epochs=4)
    assert train(cut, max_steps=steps + 1)["status"] == "interrupted"  # after the first batch of epoch 1
    assert train(cut)["step"] == 4 * steps
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / "runs" / r / "prompt_pack.safetensors")) for r in ("whole", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deepspeed_json_contradicting_the_config_is_refused_an_agreeing_one_runs(tmp_path, assets):
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    cfg = _cfg(tmp_path, assets, "distributed.zero_stage=0", "precision.dtype=fp32",
               f"distributed.deepspeed_json={ds_json}", every=1000)
    with pytest.raises(ConfigError, match=r"sets zero_optimization.stage=2 but the config has distributed.zero_stage "
                                          r"= 0; set it in one place"):
        train(cfg)
    for bad, message in (({"optimizer": {"type": "Adam"}}, "sets 'optimizer', which the run's config decides"),
                         ({"gradient_accumulation_steps": 4}, "optim.grad_accum = 1")):
        ds_json.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            train(cfg)
    ds_json.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        train(cfg)
    assert not (tmp_path / "runs" / "r").exists()  # refused before the run folder was touched
    # The same ZeRO stage and precision as the config, plus a setting only DeepSpeed has.
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": 50000000},
                                   "bf16": {"enabled": True}}))
    cfg = _cfg(tmp_path, assets, "distributed.zero_stage=2", "precision.dtype=bf16",
               f"distributed.deepspeed_json={ds_json}", every=1000)
    res = train(cfg)
    assert res["status"] == "finished" and res["step"] == 8
    assert res["zero_stage"] == 2 and res["dtype"] == "bf16"
    assert res["optimizer_master_bytes"] >= 4 * res["trainable_params"]  # ZeRO-2's fp32 partitions
    # Fewer steps than checkpoint_every: the final state is still saved, and measured.
    final = tmp_path / "runs" / "r" / "checkpoints" / "step_00000008"
    assert verify(final) is None and res["checkpoint_bytes"] == folder_bytes(final) > 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "runs" / "r" / "prompt_pack.safetensors"), framework="pt") as f:
        assert f.metadata()["dtype"] == "bf16"


def test_unfinished_tmp_folder_is_ignored_and_finished_run_is_not_rerun(tmp_path, assets):
    cfg = _cfg(tmp_path, assets)
    train(cfg, max_steps=3)
    ckpts = tmp_path / "runs" / "r" / "checkpoints"
    shutil.copytree(ckpts / "step_00000003", ckpts / ".tmp_step_00000005")  # a crash mid-write
    (ckpts / ".tmp_step_00000005" / "manifest.json").unlink()
    res = train(cfg)
    assert res["status"] == "finished" and res["step"] == 8
    mtime = (tmp_path / "runs" / "r" / "results.json").stat().st_mtime
    assert train(cfg)["top1"] == res["top1"]  # read back, not rerun
    assert (tmp_path / "runs" / "r" / "results.json").stat().st_mtime == mtime


def test_single_process_run_leaves_no_rendezvous_in_the_environment(tmp_path, assets, monkeypatch):
    # Processes started afterwards (a submitted job, a subprocess) inherit os.environ; a
    # MASTER_PORT left there would point them at this process's store.
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    train(_cfg(tmp_path, assets), max_steps=1)
    assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} & set(os.environ)


def test_mismatched_checkpoint_is_refused(tmp_path, assets):
    cfg = _cfg(tmp_path, assets)
    train(cfg, max_steps=2)
    run_dir = tmp_path / "runs" / "r"
    meta_path = next(run_dir.glob("checkpoints/step_*")) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["identity"]["weights_hash"] = "0" * 64  # as if written for other backbone weights
    meta_path.write_text(json.dumps(meta))
    # keep the manifest consistent so the refusal comes from the identity check, not integrity
    man_path = meta_path.parent / "manifest.json"
    man = json.loads(man_path.read_text())
    import hashlib

    man["files"]["meta.json"] = [meta_path.stat().st_size, hashlib.sha256(meta_path.read_bytes()).hexdigest()]
    man_path.write_text(json.dumps(man))
    with pytest.raises(CheckpointMismatchError, match="weights_hash"):
        train(cfg)
    # A different prompt shape under the same run folder is refused before anything trains, naming it.
    with pytest.raises(Exception, match=r"different config .*the folder's -> this one's: method\.prompt_length \d+ -> 5\)"):
        train(_cfg(tmp_path, assets, "method.prompt_length=5"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_prompt_pack_predict_reproduces_test_accuracy(tmp_path, assets, capsys, dtype):
    cfg = _cfg(tmp_path, assets, "method.name=vpt", "method.deep=false", f"precision.dtype={dtype}")
    res = train(cfg)
    pack = tmp_path / "runs" / "r" / "prompt_pack.safetensors"
    assert res["status"] == "finished" and pack.is_file() and res["dtype"] == dtype
    capsys.readouterr()
    assert spt(["predict", str(pack), "--backbone-checkpoint", str(assets["backbone"]),
                str(assets["shards"])]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["total"] == 30 and out["top1"] == pytest.approx(res["top1"])
    # The same logits as the run's test pass: its loss too (fp32 vs bf16 differ far more).
    test = [json.loads(l) for l in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()
            if '"test"' in l][-1]
    assert out["loss"] == pytest.approx(test["loss"], rel=1e-5)
    if dtype == "bf16":
        return  # the rest does not depend on the precision
    # Another backbone file is refused.
    from spt_dist.model import build_backbone, save_backbone_weights

    torch.manual_seed(1)
    other = save_backbone_weights(build_backbone("vit_micro_p4_16"), tmp_path / "other.safetensors")
    assert spt(["predict", str(pack), "--backbone-checkpoint", other, str(assets["shards"])]) == 2
    # Resuming a finished run folder from the CLI prints its results again.
    capsys.readouterr()
    assert spt(["train", str(tmp_path / "runs" / "r")]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == res["top1"]


def test_lr_schedule_warmup_cosine_and_vpt_scaling():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, 0.1) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup, per step
    assert f[10] == pytest.approx(1.0) and f[100] == pytest.approx(0.1)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    cfg = OptimConfig(name="sgd", lr=0.5, min_lr=0.01, lr_scaling="linear")
    assert effective_lr(cfg, 512) == (1.0, 0.02)
    assert effective_lr(OptimConfig(lr=0.5), 512) == (0.5, 0.0)


def test_param_groups_follow_each_protocol():
    model = torch.nn.Module()
    model.prompts = torch.nn.Parameter(torch.zeros(2, 3, 4))
    model.head = torch.nn.Linear(4, 2)
    model.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
    adamw = OptimConfig(name="adamw", weight_decay=0.05, prompt_weight_decay=0.001)
    groups = {g["group"]: (g["weight_decay"], len(g["params"])) for g in param_groups(model.named_parameters(), adamw)}
    assert groups == {"prompts": (0.001, 1), "decay": (0.05, 1), "no_decay": (0.0, 1)}
    sgd = param_groups(model.named_parameters(), OptimConfig(name="sgd", weight_decay=1e-4))
    assert [(g["group"], g["weight_decay"], len(g["params"])) for g in sgd] == [("all", 1e-4, 2),
                                                                                ("head_bias", 0.0, 1)]


def test_same_run_with_other_launch_settings_continues_a_different_one_is_refused(tmp_path, assets):
    cfg = _cfg(tmp_path, assets)
    assert train(cfg, max_steps=2)["status"] == "interrupted"
    # More time and requeues on resubmission: the same run, which continues from step 2.
    more = _cfg(tmp_path, assets, "launch.max_requeues=9", "launch.timeout_min=600", "run.log_every=3")
    assert train(more)["step"] == 8
    assert "max_requeues: 9" in (tmp_path / "runs" / "r" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="different config"):
        train(_cfg(tmp_path, assets, "optim.lr=0.5"))


def test_tuning_stage_never_reads_test_and_final_stage_skips_validation(tmp_path, assets):
    tune = train(_cfg(tmp_path, assets, "data.stage=tune", "run.name=tune"))
    events = [json.loads(l)["event"] for l in (tmp_path / "runs" / "tune" / "metrics.jsonl").read_text().splitlines()]
    assert tune["status"] == "finished" and tune["top1"] is None and tune["val_top1"] is not None
    assert "test" not in events and "val" in events
    final = train(_cfg(tmp_path, assets, "data.stage=final", "run.name=final"))
    events = [json.loads(l)["event"] for l in (tmp_path / "runs" / "final" / "metrics.jsonl").read_text().splitlines()]
    assert final["top1"] is not None and final["val_top1"] is None
    assert "test" in events and "val" not in events


def test_every_checkpoint_corrupt_is_said_loudly_and_the_run_starts_over(tmp_path, assets, capfd):
    cfg = _cfg(tmp_path, assets, epochs=2)
    assert train(cfg, max_steps=7)["status"] == "interrupted"
    root = tmp_path / "runs" / "r" / "checkpoints"
    for ckpt in root.glob("step_*"):
        (ckpt / "meta.json").write_text("{}")  # no longer what the manifest says
    capfd.readouterr()
    res = train(cfg)
    err = capfd.readouterr().err
    assert "no valid checkpoint is left" in err and "the run starts again from step 0" in err
    assert res["status"] == "finished" and res["step"] == 16
    events = [json.loads(l) for l in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    lost = [e for e in events if e["event"] == "checkpoints_lost"]
    assert len(lost) == 1 and sorted(lost[0]["corrupt"]) == ["step_00000006", "step_00000007"]
    assert lost[0]["resumed_from"] is None


def test_a_rank_added_by_an_elastic_resume_draws_a_stream_of_its_own(tmp_path):
    import random

    import numpy as np

    from spt_dist.engine.checkpoint import TrainRng, added_rank_rng, rng_state, set_rng_state

    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    path = tmp_path / "rng_rank0.pt"
    torch.save(rng_state(), path)
    saved = torch.load(path, weights_only=True)  # as the checkpoint's loader reads it

    def draws(state):
        rng = TrainRng()
        set_rng_state(state, rng)
        with rng.active():
            masks = torch.rand(64)
        return masks, np.random.rand(4).tolist(), random.random()

    base = draws(saved)
    assert torch.equal(base[0], draws(saved)[0])  # rank 0 continues its own stream exactly
    r1, r2 = draws(added_rank_rng(saved, 1)), draws(added_rank_rng(saved, 2))
    for other in (r1, r2):
        assert not torch.equal(other[0], base[0]) and other[1] != base[1] and other[2] != base[2]
    assert not torch.equal(r1[0], r2[0])
    again = draws(added_rank_rng(saved, 1))  # the same checkpoint and rank: the same stream
    assert torch.equal(again[0], r1[0]) and again[1:] == r1[1:]


@pytest.fixture
def cuda_generator(monkeypatch):
    """torch.cuda's RNG functions over a CPU generator standing in for one device's (this
    machine has no GPU; the real thing runs in benchmarks/gpu_check.sh)."""
    device = torch.Generator().manual_seed(123)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device_=None: device.get_state())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device_=None: device.set_state(state))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: device.manual_seed(seed))
    return device


def test_prompt_dropout_on_a_gpu_draws_from_the_runs_own_cuda_stream(cuda_generator):
    from spt_dist.engine.checkpoint import TrainRng, added_rank_rng, rng_state, set_rng_state

    def draw(rng):  # a dropout mask as the CUDA generator would make it
        with rng.active():
            return torch.rand(8, generator=cuda_generator)

    a, b = TrainRng(), TrainRng()  # two pack members created from the same state
    outer = cuda_generator.get_state()
    first = draw(a)
    assert torch.equal(cuda_generator.get_state(), outer)  # the global CUDA stream is left alone
    assert torch.equal(draw(b), first)  # each member draws what it would draw alone
    saved = rng_state(a)
    assert torch.equal(saved["train_cuda"], a.cuda) and "cuda_device" in saved
    expected = draw(a)  # what the run draws next
    resumed = TrainRng()
    set_rng_state(saved, resumed)
    assert torch.equal(draw(resumed), expected)  # the resumed run continues the masks exactly
    added = TrainRng()
    set_rng_state(added_rank_rng(saved, 1), added)
    added_first = draw(added)
    assert not torch.equal(added_first, expected)  # an added rank: a CUDA stream of its own
    again = TrainRng()
    set_rng_state(added_rank_rng(saved, 1), again)
    assert torch.equal(draw(again), added_first)  # derived from the checkpoint: the same every time


class _Killed(Exception):
    """Stands in for a kill at a chosen point (the files are what a kill leaves)."""


def _train_killed_after_step(cfg, step: int, monkeypatch) -> None:
    """train(cfg), killed once step `step`'s train record is written."""
    import spt_dist.engine.train as engine_train

    original = engine_train.log_step

    def killed(cfg, parts, state, *rest):
        original(cfg, parts, state, *rest)
        if state.step == step:
            raise _Killed()

    monkeypatch.setattr(engine_train, "log_step", killed)
    with pytest.raises(_Killed):
        train(cfg)
    monkeypatch.setattr(engine_train, "log_step", original)


def test_a_run_whose_results_were_lost_after_the_last_step_is_not_evaluated_again(tmp_path, assets, monkeypatch):
    """The last step is a checkpoint step (8 of 8, checkpoint_every=4): the final checkpoint still
    holds the state after the last evaluation. A kill while results.json is written leaves the
    end event without results; the run is re-entered past the end: no second val or test, one
    end event (the re-entry's), the same results."""
    import spt_dist.engine.train as engine_train

    cfg = _cfg(tmp_path, assets, every=4)
    run = tmp_path / "runs" / "r"

    def killed(path, obj):
        raise _Killed(obj)

    monkeypatch.setattr(engine_train, "write_json_atomic", killed)
    with pytest.raises(_Killed) as kill:
        train(cfg)
    monkeypatch.undo()
    done = kill.value.args[0]
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "end" and not (run / "results.json").exists()
    meta = json.loads((run / "checkpoints" / "step_00000008" / "meta.json").read_text())["state"]
    assert (meta["epoch"], meta["batch"], meta["test_top1"]) == (1, 0, done["top1"])
    again = train(cfg)
    assert {k: v for k, v in again.items() if k != "wall_s"} == {k: v for k, v in done.items() if k != "wall_s"}
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events if e["event"] in ("val", "test")] == [("val", 8), ("test", 8)]
    assert [(e["event"], e["step"]) for e in events if e["event"] == "end"] == [("end", 8)]  # the re-entry's
    assert json.loads((run / "results.json").read_text())["wall_s"] == events[-1]["wall_s"]


def test_a_resumed_run_cuts_metrics_back_to_its_checkpoint_and_never_glues_a_record(tmp_path, assets,
                                                                                     monkeypatch):
    """A line left partial by a full disk (in a fresh folder, then after a kill) never swallows
    the next record, and the records a killed run wrote past its checkpoint (steps 5 and 6 after
    the checkpoint at 4) are dropped before the resumed run writes them again."""
    cfg = _cfg(tmp_path, assets, every=4)
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"event": "tra')  # a fresh folder with a partial line
    _train_killed_after_step(cfg, 6, monkeypatch)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "st')  # the disk filled mid-record
    assert train(cfg)["step"] == 8
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # every line whole
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 9))
    starts = [e for e in events if e["event"] == "start"]
    assert starts[0]["resumed_from"] is None and starts[1]["resumed_from"].endswith("step_00000004")
    assert [e["event"] for e in events].count("end") == 1


def test_a_read_error_while_verifying_is_raised_and_the_checkpoint_kept(tmp_path, monkeypatch):
    """An I/O error reading a checkpoint (EIO: cannot be made on a real disk here, so injected) is
    not evidence of corruption: a clear error, the folder left as it is and used once reads work;
    a file truly missing still moves the folder aside."""
    import errno

    import spt_dist.engine.checkpoint as checkpoint
    from engine_helpers import FileWritingEngine
    from spt_dist.distributed import single_process

    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", 2, 1, single_process(), {}, "")
    for step in (1, 2):
        ckpt.save(FileWritingEngine(), step, {"step": step})

    def unreadable(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(checkpoint, "file_sha256", unreadable)
    with pytest.raises(OSError, match="Input/output error.*left in place, not taken for corrupt") as raised:
        ckpt.newest_valid()
    assert type(raised.value).__name__ == "CheckpointReadError"  # an SptError: one line, on every rank
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    assert ckpt.newest_valid() == tmp_path / "checkpoints" / "step_00000002" and not ckpt.lost
    (tmp_path / "checkpoints" / "step_00000002" / "ds" / "state" / "model_states.pt").unlink()
    assert ckpt.newest_valid() == tmp_path / "checkpoints" / "step_00000001" and ckpt.lost == ["step_00000002"]


def test_a_kill_during_the_final_evaluation_loses_no_training(tmp_path, assets, monkeypatch):
    """8 steps, checkpoint_every=3: the last periodic checkpoint is step 6. A job killed while the
    final test split is evaluated (a scheduler's kill after a stop it could not vote on yet)
    leaves step 8's checkpoint, written before the evaluation; the re-entered run trains no step,
    only evaluates, and ends with the uninterrupted run's results."""
    import spt_dist.engine.train as engine_train

    (tmp_path / "whole").mkdir()
    whole = train(_cfg(tmp_path / "whole", assets))
    cfg = _cfg(tmp_path, assets)
    run = tmp_path / "runs" / "r"
    original = engine_train.evaluate

    def killed_at_the_test_split(engine, data, *rest, **kw):
        if data.split_name == "test":
            raise _Killed()
        return original(engine, data, *rest, **kw)

    monkeypatch.setattr(engine_train, "evaluate", killed_at_the_test_split)
    with pytest.raises(_Killed):
        train(cfg)
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    again = train(cfg)
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    assert starts[-1]["resumed_from"].endswith("step_00000008")
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 9))  # none trained again
    keep = ("status", "step", "top1", "best_val_top1")
    assert {k: again.get(k) for k in keep} == {k: whole.get(k) for k in keep} and again["status"] == "finished"


def test_a_run_killed_before_its_first_checkpoint_starts_again_without_its_old_records(tmp_path, assets,
                                                                                       monkeypatch):
    """No checkpoint to resume from (killed at step 2, checkpoint_every=100): the run starts
    again from step 0 and metrics.jsonl holds each step's record once, and one initial
    alignment, the killed attempt's start kept as history."""
    cfg = _cfg(tmp_path, assets, "method.track_alignment=true", every=100)
    run = tmp_path / "runs" / "r"
    _train_killed_after_step(cfg, 2, monkeypatch)
    assert not list((run / "checkpoints").glob("step_*"))
    assert train(cfg)["status"] == "finished"
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == list(range(1, 9))
    assert [e["resumed_from"] for e in events if e["event"] == "start"] == [None, None]
    assert len([e for e in events if e["event"] == "alignment" and e["step"] == 0]) == 1


@pytest.mark.parametrize("files", [{"a.pt": [5]}, {"a.pt": None}, [], "x"])
def test_a_manifest_of_another_shape_is_corrupt_not_an_error(tmp_path, files):
    from spt_dist.engine.checkpoint import verify

    (tmp_path / "manifest.json").write_text(json.dumps({"step": 1, "files": files}))
    assert verify(tmp_path).startswith("unreadable manifest (")


def test_a_kill_while_a_step_is_saved_again_keeps_that_step(tmp_path, monkeypatch):
    """Saving step 2 again (after the final evaluation) puts the old folder aside until the new
    one is in place: a kill in between leaves the aside folder, which the next run puts back."""
    import os as os_module

    import spt_dist.engine.checkpoint as checkpoint
    from spt_dist.distributed import single_process

    from engine_helpers import FileWritingEngine

    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", 2, 1, single_process(), {}, "")
    ckpt.save(FileWritingEngine(), 2, {"step": 2})
    original = os_module.replace

    def killed_after_the_old_went_aside(src, dst):
        original(src, dst)
        if Path(dst).name.startswith(checkpoint.REPLACED):
            raise _Killed()

    monkeypatch.setattr(checkpoint.os, "replace", killed_after_the_old_went_aside)
    with pytest.raises(_Killed):
        ckpt.save(FileWritingEngine(), 2, {"step": 2, "again": True})
    monkeypatch.undo()
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    again = checkpoint.Checkpointer(tmp_path / "checkpoints", 2, 1, single_process(), {}, "")
    assert again.newest_valid() == tmp_path / "checkpoints" / "step_00000002" and not again.lost
    assert json.loads((tmp_path / "checkpoints" / "step_00000002" / "meta.json").read_text()) == {"step": 2}
