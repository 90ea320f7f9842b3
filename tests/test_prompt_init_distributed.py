"""1 rank versus 2 real gloo ranks on the same shards: same prompts; errors raised on every rank."""
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from spt_dist.config import load_config
from spt_dist.data import ShardIndex, write_shards
from spt_dist.data.sources.builtin import digits_source
from spt_dist.distributed import Comm
from spt_dist.model import build_model
from spt_dist.prompt_init import PromptInitError, initialize_prompts

ROOT = Path(__file__).resolve().parents[1]
BASE = ["model.name=vit_micro_p4_16", "method.name=spt", "method.prompt_length=4", "method.deep=true",
        "method.init_candidates=48", "method.init_batch_size=7", "method.cache_dir=''", "run.progress=false"]
SCENARIOS = {
    # name: overrides; random_sample also yields the k-means reference (track_alignment)
    "random_sample": ["method.init=random_sample", "method.track_alignment=true"],
    "mean_pool": ["method.init=mean_pool", "method.track_alignment=false"],
    "max_pool": ["method.init=max_pool", "method.track_alignment=false"],
    "kmeans_shallow": ["method.init=kmeans", "method.deep=false", "method.track_alignment=false"],
    # SPT's code: images drawn with replacement through the training transform, each draw its own crop
    "train_transform": ["method.init=random_sample", "method.track_alignment=false", "data.preset=spt_fgvc",
                        "method.init_transform=train", "method.init_replacement=true"],
}
ERRORS = {
    "one_image_two_ranks": (["method.init_images=1"], "every rank needs at least one"),
    "too_few_candidates": (["method.init_images=2", "method.prompt_length=40", "method.init_candidates=64"],
                           "fewer candidate tokens than method.prompt_length=40"),
    "layer_mismatch": (["method.deep=false", "+model_deep"], "expect (1, 4, 32)"),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("digits") / "shards"
    write_shards(digits_source(), str(root), shard_size=40, max_per_class=12, progress=False)
    return str(root)


def _cfg(root: str, overrides):
    return load_config(None, [f"data.root={root}"] + BASE + [o for o in overrides if not o.startswith("+")])


def _model(cfg, index, deep=None):
    torch.manual_seed(0)
    if deep is not None:
        cfg = load_config(None, [f"data.root={cfg.data.root}"] + BASE + [f"method.deep={deep}"])
    return build_model(cfg, index.num_classes)


def _run(root, overrides, rank, world):
    cfg = _cfg(root, overrides)
    index = ShardIndex.load(root)
    model = _model(cfg, index, deep=True if "+model_deep" in overrides else None)
    return initialize_prompts(model, cfg, index, Comm(rank, world), "cpu"), model


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        results = {}
        for name, overrides in SCENARIOS.items():
            res, model = _run(root, overrides, rank, world)
            results[name] = {"prompts": res.prompts, "reference": res.reference,
                             "model": model.prompts.detach().clone(), "images": res.images}
        for name, (overrides, _) in ERRORS.items():
            try:
                _run(root, overrides, rank, world)
                results[name] = "no error"
            except PromptInitError as exc:
                results[name] = str(exc)
        try:  # a failure on rank 1 only must reach rank 0 instead of leaving it in a collective
            Comm(rank, world).agreed(lambda: 1 // (1 - rank), kind=PromptInitError)
            results["one_rank_fails"] = "no error"
        except PromptInitError as exc:
            results["one_rank_fails"] = str(exc)
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_worker, args=(2, _free_port(), shards, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_match_one_rank(shards, two_ranks, name):
    # Two scenarios read through 2 DataLoader workers on the single rank: any worker count.
    workers = ["data.num_workers=2"] if name in ("mean_pool", "train_transform") else []
    single, model = _run(shards, SCENARIOS[name] + workers, 0, 1)
    r0, r1 = two_ranks[0][name], two_ranks[1][name]
    # Every rank ends with identical prompts, written into its model.
    assert torch.equal(r0["prompts"], r1["prompts"]) and torch.equal(r0["model"], r1["model"])
    assert torch.equal(r0["model"], r0["prompts"])
    assert r0["images"] == single.images == ShardIndex.load(shards).split("train").num_samples
    if name.startswith("kmeans"):
        torch.testing.assert_close(r0["prompts"], single.prompts, rtol=1e-4, atol=1e-5)
    else:  # sampling strategies: bitwise, whatever the partition
        assert torch.equal(r0["prompts"], single.prompts)
    if single.reference is not None:
        torch.testing.assert_close(r0["reference"], single.reference, rtol=1e-4, atol=1e-5)
        assert torch.equal(r0["reference"], r1["reference"])


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_input_raises_the_same_clear_error_on_every_rank(two_ranks, name):
    expected = ERRORS[name][1]
    assert expected in two_ranks[0][name] and two_ranks[0][name] == two_ranks[1][name]


def test_a_failure_on_one_rank_is_raised_on_every_rank(two_ranks):
    for rank in (0, 1):
        assert "rank 1: ZeroDivisionError" in two_ranks[rank]["one_rank_fails"]


def test_spt_init_cli_under_torchrun(shards, tmp_path):
    """The user path: `torchrun -m spt_dist.cli init ... --save` on 2 ranks, statistics printed once."""
    out = tmp_path / "prompts.safetensors"
    overrides = [f"data.root={shards}"] + BASE + ["method.init=kmeans", "method.track_alignment=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "spt_dist.cli", "init", "configs/base.yaml", *overrides, "--save", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("prototype init: strategy=kmeans") == 1
    assert proc.stdout.count("layer  2:") == 1 and "inertia=" in proc.stdout
    assert "align/mean=1.000" in proc.stdout  # k-means prompts are their own reference
    single, _ = _run(shards, ["method.init=kmeans", "method.track_alignment=true"], 0, 1)
    torch.testing.assert_close(load_file(str(out))["prompts"], single.prompts, rtol=1e-4, atol=1e-5)
