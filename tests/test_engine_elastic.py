"""Elastic resume: a run interrupted on W ranks continues on W' ranks (and other DataLoader
worker counts) with the same global batch, the same samples in every optimizer step, and the
result of an uninterrupted run up to floating-point summation order."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_helpers import ROOT, env, free_port, losses, make_assets, run, torchrun, write_config
from spt_dist.config import ConfigError, load_config
from spt_dist.config.schema import DataConfig
from spt_dist.data import TrainData
from spt_dist.data.synthetic import tiny_shards
from spt_dist.engine.checkpoint import CheckpointMismatchError
from spt_dist.engine.shape import Shape, first_shape, run_shape
from spt_dist.engine.state import TrainState
from spt_dist.rundir import config_hash

WORKER = str(ROOT / "tests" / "engine_worker.py")
MEAN, STD = [0.5] * 3, [0.25] * 3


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("el"), {"train": [50, 47, 60]}, num_classes=3, size=8)


def _steps(index, shape: Shape, workers: int, epoch: int = 1):
    """The set of keys every optimizer step trains on, over all ranks, for a shape."""
    cfg = DataConfig(batch_size=shape.batch_size, num_workers=workers)
    per_rank = [[keys for _, _, keys in TrainData(cfg, index, 8, MEAN, STD, r, shape.world_size, seed=4,
                                                   grad_accum=shape.grad_accum).epoch(epoch)]
                for r in range(shape.world_size)]
    micro = len(per_rank[0])
    assert all(len(b) == micro for b in per_rank) and micro % shape.grad_accum == 0
    return [frozenset(k for r in per_rank for b in r[s * shape.grad_accum:(s + 1) * shape.grad_accum] for k in b)
            for s in range(micro // shape.grad_accum)]


def test_every_shape_of_one_global_batch_trains_the_same_samples_per_step(index):
    reference = _steps(index, Shape(2, 8, 1), 0)
    assert len(reference) == 157 // 16 and all(len(s) == 16 for s in reference)
    for shape, workers in ((Shape(1, 16, 1), 2), (Shape(1, 8, 2), 0), (Shape(4, 2, 2), 2), (Shape(2, 4, 2), 3)):
        assert _steps(index, shape, workers) == reference, shape


def test_resume_position_in_another_shape(index):
    """Stopped after 3 steps on 2 x 8: 48 samples in; 1 x 16 continues at its micro-batch 3,
    4 x 2 x 2 at its micro-batch 6, and the rest of the epoch matches."""
    full = _steps(index, Shape(2, 8, 1), 0)
    state = TrainState(batch=3)
    state.reshape(Shape(2, 8, 1), Shape(4, 2, 2))
    assert state.batch == 6
    cfg = DataConfig(batch_size=2)
    tail = [[keys for _, _, keys in TrainData(cfg, index, 8, MEAN, STD, r, 4, seed=4, grad_accum=2).epoch(
        1, skip_batches=state.batch)] for r in range(4)]
    steps = [frozenset(k for r in tail for b in r[s * 2:(s + 1) * 2] for k in b) for s in range(len(tail[0]) // 2)]
    assert steps == full[3:]


def _cfg(*overrides):
    return load_config(None, ["data.batch_size=8", "optim.grad_accum=1", *overrides])


def test_shape_choice_keeps_the_global_batch_or_names_what_would():
    held = Shape(2, 8, 1).as_dict()
    cfg = _cfg("launch.elastic=true")
    assert run_shape(cfg, 1, held) == Shape(1, 8, 2)           # the same micro-batch, twice the accumulation
    assert run_shape(cfg, 4, held) == Shape(4, 4, 1)
    assert run_shape(cfg, 2, Shape(3, 8, 1).as_dict()) == Shape(2, 6, 2)  # not 12 x 1: B never grows past 8
    assert run_shape(cfg, 2, held) == Shape(2, 8, 1)
    # the config's micro-batch is the preference, not the last shape's: 4 x 4 -> 1 rank is 8 x 2 again
    assert run_shape(cfg, 1, Shape(4, 4, 1).as_dict()) == Shape(1, 8, 2)
    assert run_shape(cfg, 1, Shape(2, 8, 2).as_dict()) == Shape(1, 8, 4)  # same micro-batch, more accumulation
    with pytest.raises(CheckpointMismatchError, match=r"global batch of 16 .* cannot be split over 3 rank\(s\); "
                                                      r"world sizes that keep it: 1, 2, 4, 8, 16"):
        run_shape(cfg, 3, held)
    with pytest.raises(CheckpointMismatchError, match="set launch.elastic=true"):
        run_shape(_cfg(), 1, held)
    with pytest.raises(CheckpointMismatchError, match=r"ZeRO-2 optimizer state is saved only in 2 per-rank partitions: "
                                                      r"continue it on 2 rank\(s\) with launch.elastic=true once"):
        run_shape(_cfg("distributed.zero_stage=2"), 1, held)
    zero2 = _cfg("launch.elastic=true", "distributed.zero_stage=2")
    with pytest.raises(CheckpointMismatchError, match="distributed.zero_stage.*only in 2 per-rank partitions"):
        run_shape(zero2, 1, held)  # saved without the whole optimizer state
    assert run_shape(zero2, 1, {**held, "full_optimizer": True}) == Shape(1, 8, 2)
    zero1 = _cfg("launch.elastic=true", "distributed.zero_stage=1")
    with pytest.raises(CheckpointMismatchError, match="'distributed.zero_stage' = 1.*only in 2 per-rank partitions"):
        run_shape(zero1, 4, held)
    assert run_shape(zero1, 4, {**held, "full_optimizer": True}) == Shape(4, 4, 1)
    zero3 = _cfg("launch.elastic=true", "distributed.zero_stage=3")
    with pytest.raises(CheckpointMismatchError, match="'distributed.zero_stage' = 3.*only in 2 per-rank partitions"):
        run_shape(zero3, 1, held)
    assert run_shape(zero3, 1, {**held, "full_optimizer": True}) == Shape(1, 8, 2)
    with pytest.raises(CheckpointMismatchError, match="data.shuffle"):
        run_shape(_cfg("launch.elastic=true", "data.shuffle=stream"), 1, held)


def test_the_configured_global_batch_is_the_same_on_every_first_world_size():
    """data.global_batch fixes G whatever the first allocation; without it G follows it."""
    cfg = _cfg("data.global_batch=48", "data.batch_size=16")
    shapes = [first_shape(cfg, w) for w in (1, 2, 3, 4, 6, 48)]
    assert [s.global_batch for s in shapes] == [48] * 6
    assert shapes[:4] == [Shape(1, 16, 3), Shape(2, 12, 2), Shape(3, 16, 1), Shape(4, 12, 1)]
    assert all(s.batch_size <= 16 for s in shapes)
    assert [first_shape(_cfg("data.batch_size=16"), w).global_batch for w in (1, 2, 4)] == [16, 32, 64]
    with pytest.raises(ConfigError, match=r"'data.global_batch' = 48 cannot be split over 5 rank\(s\); world "
                                          r"sizes that keep it: 1, 2, 3, 4, 6, 8, 12, 16, 24, 48"):
        first_shape(cfg, 5)
    assert config_hash(_cfg()) != config_hash(cfg) != config_hash(_cfg("data.global_batch=96", "data.batch_size=16"))


@pytest.mark.parametrize("overrides, message", [
    (["launch.tasks_per_node=8", "launch.nodes=4", "launch.min_nodes=2", "data.global_batch=256"],
     r"'data.global_batch' = 256 cannot be split over 24 rank\(s\) \(launch.nodes 2-4 x launch.tasks_per_node 8: "
     r"world sizes 16, 24, 32\); allowed: a multiple of 96"),
    (["launch.tasks_per_node=8", "launch.nodes=4", "launch.min_nodes=2", "data.batch_size=16"],
     r"'data.global_batch' = 0: .* = 16 x the first allocation's world size, and a first allocation of 16 rank\(s\) "
     r"gives 256, which 24 rank\(s\) cannot split .* multiple of 96 \(e.g. 288\)"),
    (["launch.tasks_per_node=2", "data.global_batch=7"], r"'data.global_batch' = 7 cannot be split over 2 rank"),
])
def test_a_global_batch_some_world_size_of_the_launch_cannot_keep_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _cfg("launch.elastic=true", *overrides)


def test_a_global_batch_every_world_size_of_the_launch_keeps_is_accepted():
    for overrides in (["data.global_batch=192"], ["data.global_batch=96", "data.batch_size=64"]):
        cfg = _cfg("launch.elastic=true", "launch.tasks_per_node=8", "launch.nodes=4", "launch.min_nodes=2", *overrides)
        assert {first_shape(cfg, w).global_batch for w in (16, 24, 32)} == {cfg.data.global_batch}
    _cfg("launch.elastic=true", "launch.tasks_per_node=2", "launch.nodes=3", "launch.min_nodes=1",
         "data.batch_size=6")  # 6 per rank: every first allocation (2, 4, 6 ranks) gives a G all of them split


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _run(config: Path, nproc: int, stop_at: int, *overrides: str) -> None:
    proc = run(torchrun([WORKER, "run", str(config.parent / "runs"), str(config), str(stop_at), *overrides],
                        nproc=nproc), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]


# Every elastic run below trains AdamW on a global batch of 16 (2 ranks x 8 in the reference)
# without prompt dropout: one uninterrupted ZeRO-0 reference serves them all, since ZeRO stages
# change where the state lives, not the numbers (up to the order of floating-point sums).
ADAMW = ["optim.name=adamw", "optim.lr=0.01", "method.prompt_dropout=0.0"]


def _config(folder: Path, assets) -> Path:
    return write_config(folder / "cfg.yaml", assets, folder / "runs", epochs=2, every=3)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, assets) -> Path:
    folder = tmp_path_factory.mktemp("elastic_reference")
    _run(_config(folder, assets), 2, 0, "run.name=reference", "distributed.zero_stage=0", *ADAMW)
    return folder / "runs" / "reference"


def _same_as_reference(moved: Path, reference: Path) -> None:
    ref = load_file(str(reference / "prompt_pack.safetensors"))
    pack = load_file(str(moved / "prompt_pack.safetensors"))
    assert set(pack) == set(ref)
    for k in ref:  # fp32 sums in another order: a few ulps (one step at a wrong lr missed by 1.5e-3)
        torch.testing.assert_close(pack[k], ref[k], rtol=1e-5, atol=1e-6)
    # every optimizer step trained on the reference's samples: the same loss at every step
    assert losses(moved)[-16:] == pytest.approx(losses(reference), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("zero", [0, 3], ids=["zero0", "zero3"])
def test_a_run_moves_from_2_ranks_to_1_and_back_with_the_uninterrupted_result(tmp_path, assets, reference, zero):
    """ZeRO 0: the optimizer state is the same on every rank. ZeRO 3 partitions the trainable
    tensors themselves and AdamW's moments: they are re-partitioned into fewer (2 -> 1) and more
    (1 -> 2, the head's bias of 3 values then padded on the last rank) partitions."""
    config = _config(tmp_path, assets)
    common = [f"distributed.zero_stage={zero}", *ADAMW, "launch.elastic=true"]
    _run(config, 2, 5, "run.name=moved", *common)                        # 2 ranks x 8, workers 0
    _run(config, 1, 11, "run.name=moved", "data.num_workers=2", *common)  # 1 rank x 8 x 2 steps, workers 2
    _run(config, 2, 0, "run.name=moved", *common)                        # 2 ranks x 8 again
    moved = tmp_path / "runs" / "moved"
    results = json.loads((moved / "results.json").read_text())
    assert results["status"] == "finished" and results["world_sizes"] == [2, 1, 2] and results["global_batch"] == 16
    assert results["step"] == 16 and results["zero_stage"] == zero
    _same_as_reference(moved, reference)


def _spt_train(config: Path, nproc: int, *overrides: str) -> list:
    """`spt train` on `nproc` ranks, each started as torchrun would (RANK, WORLD_SIZE, ...)."""
    port, cmd = free_port(), [sys.executable, "-m", "spt_dist.cli", "train", str(config), *overrides]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=dict(env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(nproc),
                                                      LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                                                      MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(nproc)]
    return [(p.wait(timeout=300), p.stderr.read()) for p in procs]


def test_a_zero2_run_moves_from_1_rank_to_2_and_back_with_the_uninterrupted_result(tmp_path, assets, reference):
    """ZeRO 2 partitions the AdamW moments and fp32 master weights by rank: the elastic run's
    checkpoints hold them whole as well, and the new ranks re-partition them
    (engine/zero_state.py), into more partitions (1 -> 2, the added rank with an RNG stream
    derived from rank 0's) and into fewer (2 -> 1). data.global_batch=16 makes the run started
    on 1 rank (8 x 2 accumulation) the same run as the 2-rank reference (2 x 8)."""
    config = _config(tmp_path, assets)
    common = ["distributed.zero_stage=2", *ADAMW, "launch.elastic=true", "data.global_batch=16"]
    _run(config, 1, 5, "run.name=moved", *common)                        # 1 rank x 8 x 2, workers 0
    moved = tmp_path / "runs" / "moved"
    saved = sorted((moved / "checkpoints").glob("step_*"))
    assert saved and all((p / "optimizer_full.pt").is_file() for p in saved)
    # 3 ranks cannot carry the global batch of 16: refused by `spt train` before any step (given
    # the run folder, which takes launch.* overrides)
    refused = _spt_train(moved, 3, "launch.elastic=true")
    assert [rc for rc, _ in refused] == [2, 2, 2], refused
    assert "global batch of 16 (1 ranks x 8 x 2 accumulation steps) cannot be split over 3 rank(s); world sizes " \
           "that keep it: 1, 2, 4, 8, 16" in refused[0][1]
    assert max(e["step"] for e in map(json.loads, (moved / "metrics.jsonl").read_text().splitlines())
               if e["event"] == "train") == 5 and sorted((moved / "checkpoints").glob("step_*")) == saved
    _run(config, 2, 11, "run.name=moved", "data.num_workers=2", *common)  # 2 ranks x 8, workers 2
    assert (moved / "checkpoints" / "step_00000011" / "rng_rank1.pt").is_file()
    _run(config, 1, 0, "run.name=moved", *common)                         # 1 rank x 8 x 2, workers 0
    results = json.loads((moved / "results.json").read_text())
    assert results["status"] == "finished" and results["world_sizes"] == [1, 2, 1] and results["zero_stage"] == 2
    assert results["global_batch"] == 16 and results["step"] == 16
    _same_as_reference(moved, reference)


def test_a_run_folder_takes_launch_overrides_only(tmp_path, capsys):
    from spt_dist.cli import main as spt

    (tmp_path / "config.yaml").write_text("optim: {lr: 0.1}\n")
    assert spt(["train", str(tmp_path), "launch.elastic=true", "optim.lr=0.5"]) == 2
    assert f"{tmp_path} is a run folder: it resumes with its own config.yaml; overrides (optim.lr=0.5) are not " \
           "allowed, except launch.* settings" in capsys.readouterr().err
