"""Bad configs are refused before any data or model is loaded, naming the key: by `spt train`
(one line, exit code 2, no run folder made) and, where they can be known there, by
`spt submit` on the login node. Bad data the read checks (data.verify) find is refused the same
way before the first training step."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from engine_helpers import corrupt_images, make_assets, write_config
from spt_dist.cli import main as spt
from spt_dist.config import ConfigError, load_config
from spt_dist.data import ShardIndex
from spt_dist.engine import preflight


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


@pytest.fixture
def config(tmp_path, assets):
    return write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=1)


def _refused(args, capsys, message: str) -> str:
    start = time.perf_counter()
    assert spt(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("spt: error: ")  # one line, no traceback
    return f"{time.perf_counter() - start:.1f} s"


def _cases(tmp_path: Path, assets) -> dict:
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(assets["backbone"].read_bytes()[:3000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    return {
        "grad_accum beyond an epoch": (["optim.grad_accum=9", "data.batch_size=16"],
                                       "config key 'optim.grad_accum' = 9: an epoch has only 8 micro-batch(es) per rank"),
        "absurd prompt length": (["method.prompt_length=20000"], "config key 'method.prompt_length' = 20000"),
        "prompt length no machine has": (["method.prompt_length=200000"], "more than any machine has"),
        "absurd image size": (["model.img_size=7000", f"model.checkpoint={assets['backbone']}"],
                              "config key 'model.img_size' = 7000"),
        "truncated weights": ([f"model.checkpoint={truncated}"], "config key 'model.checkpoint': "),
        "garbage weights": ([f"model.checkpoint={garbage}"], "neither a safetensors file, a PyTorch checkpoint"),
        "nccl without a GPU": (["distributed.backend=nccl"], "config key 'distributed.backend' = 'nccl' needs CUDA"),
        "run name with a path": (["run.name=../x"], "config key 'run.name': '../x' is not a plain folder name"),
        "defaults override": (["defaults=[base]"], "`defaults` composes files"),
        "lock staleness below its refresh": (["run.lock_stale_s=10"],
                                             "config key 'run.lock_stale_s' = 10 is out of range; allowed: [15, inf]"),
    }


@pytest.mark.parametrize("case", ["grad_accum beyond an epoch", "absurd prompt length", "absurd image size",
                                  "truncated weights", "garbage weights", "nccl without a GPU",
                                  "run name with a path", "defaults override", "lock staleness below its refresh"])
def test_spt_train_refuses_before_any_work(tmp_path, assets, config, capsys, case):
    overrides, message = _cases(tmp_path, assets)[case]
    _refused(["train", str(config), "run.name=r", *overrides], capsys, message)
    assert not (tmp_path / "runs").exists()  # no run folder, no checkpoint, no config.yaml


@pytest.mark.parametrize("case", ["grad_accum beyond an epoch", "prompt length no machine has", "truncated weights",
                                  "run name with a path"])
def test_submit_refuses_on_the_login_node(tmp_path, assets, config, capsys, case):
    overrides, message = _cases(tmp_path, assets)[case]
    _refused(["submit", str(config), *overrides, "--cluster", "local", "--folder", str(tmp_path / "jobs")],
             capsys, message)
    assert not (tmp_path / "jobs").exists()


def test_submit_refuses_nccl_without_gpus(tmp_path, config, capsys):
    _refused(["submit", str(config), "distributed.backend=nccl", "--cluster", "local", "--folder",
              str(tmp_path / "jobs")], capsys, "launch.gpus_per_node = 0")


def test_accumulation_counts_per_world_size(config):
    cfg = load_config(str(config), ["data.batch_size=16", "optim.grad_accum=4"])
    assert preflight.check_accumulation(cfg, 128, 2) == 4   # 128 / (2 x 16)
    with pytest.raises(ConfigError, match="allowed: at most 2"):
        preflight.check_accumulation(cfg, 128, 4)
    with pytest.raises(ConfigError, match="data.batch_size"):
        preflight.check_accumulation(cfg, 20, 2)


def test_kept_last_batch_refusals_name_what_works(config):
    """drop_last=false: 41 samples at 8 are 6 micro-batches (the last short); an accumulation
    above 6 is refused naming the divisors (4 and 5 would be refused too); a shape that
    data.global_batch derived is refused naming data.global_batch, not keys the user never set."""
    cfg = load_config(str(config), ["data.batch_size=8", "optim.grad_accum=7", "data.drop_last=false"])
    with pytest.raises(ConfigError, match=r"allowed: 1, 2, 3, 6 \(divisors of 6: data.drop_last=false\)"):
        preflight.check_accumulation(cfg, 41, 1)
    from spt_dist.engine.shape import first_shape, shaped

    cfg = load_config(str(config), ["data.global_batch=32", "data.batch_size=8", "data.drop_last=false"])
    shape = first_shape(cfg, 1)
    assert (shape.batch_size, shape.grad_accum) == (8, 4)  # 6 micro-batches: not whole windows of 4
    with pytest.raises(ConfigError, match=r"^config key 'data.global_batch' = 32 with data.drop_last=false: it "
                                          r"trains 8 x 4 .*allowed: data.drop_last=true, or a data.global_batch"):
        preflight.check_accumulation(shaped(cfg, shape), 41, 1)


def test_step_memory_estimate_grows_with_tokens(config):
    small = preflight.step_bytes(load_config(str(config)))
    longer = preflight.step_bytes(load_config(str(config), ["method.prompt_length=400"]))
    assert longer > 50 * small  # attention scores grow with the square of the tokens
    ckpt = preflight.step_bytes(load_config(str(config), ["method.prompt_length=400", "model.grad_checkpointing=true"]))
    assert ckpt < longer
    preflight.check_step_memory(load_config(str(config)), 8 << 30)
    with pytest.raises(ConfigError, match="this machine has 0.0 GiB"):
        preflight.check_step_memory(load_config(str(config), ["method.prompt_length=400"]), 1 << 20)


def test_weight_file_headers(tmp_path, assets):
    preflight.check_weights_file(str(assets["backbone"]))
    import torch

    good = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3)}, good)
    preflight.check_weights_file(str(good))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ConfigError, match="cannot be a weight file"):
        preflight.check_weights_file(str(cut))
    head = tmp_path / "head.safetensors"
    head.write_bytes((10 ** 9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError, match="header length is out of range"):
        preflight.check_weights_file(str(head))
    bad_json = tmp_path / "bad.safetensors"
    bad_json.write_bytes((5).to_bytes(8, "little") + b"{oops")
    with pytest.raises(ConfigError, match="not valid safetensors JSON"):
        preflight.check_weights_file(str(bad_json))


def test_deepspeed_json_keys(tmp_path, config):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 0}}))
    cfg = load_config(str(config), [f"distributed.deepspeed_json={ds}", "data.batch_size=8"])
    assert preflight.check_deepspeed_json(cfg, 2)["zero_optimization"]["stage"] == 0
    ds.write_text(json.dumps({"train_batch_size": 99}))
    with pytest.raises(ConfigError, match=r"train_batch_size=99 but the config has data.batch_size x optim.grad_accum"):
        preflight.check_deepspeed_json(cfg, 2)
    ds.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        preflight.check_deepspeed_json(cfg, 2)
    ds.write_text(json.dumps({"zero_optimization": {"stage": 0, "reduce_bucket_size": 1000}}))
    assert preflight.check_deepspeed_json(load_config(str(config), [f"distributed.deepspeed_json={ds}"]), 2)


@pytest.mark.parametrize("bad, named", [
    ({"zero_optimization": {"reduce_bucket_size": "abc"}}, "zero_optimization.reduce_bucket_size='abc'"),
    ({"zero_optimization": {"no_such_setting": 1}}, "zero_optimization.no_such_setting=1: Extra inputs"),
    ({"zero_optimization": {"offload_optimizer": {"device": "floppy"}}},
     "zero_optimization.offload_optimizer.device='floppy'"),
], ids=["wrong-type", "unknown-key", "nested-value"])
def test_spt_train_refuses_a_deepspeed_json_deepspeed_rejects(tmp_path, config, capsys, bad, named):
    """Checked by DeepSpeed's own config parser before any work: one line naming the file and key."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(bad))
    _refused(["train", str(config), "run.name=r", f"distributed.deepspeed_json={ds}"], capsys,
             f"config key 'distributed.deepspeed_json': DeepSpeed rejects {ds}: {named}")
    assert not (tmp_path / "runs").exists()


def _no_step_taken(run: Path) -> None:
    metrics = run / "metrics.jsonl"
    events = [json.loads(line)["event"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    assert "train" not in events and not list(run.glob("checkpoints/step_*")), events


def _copy_of_shards(tmp_path: Path, assets) -> Path:
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(assets["shards"], shards)
    return shards


def test_a_corrupt_test_image_is_refused_before_training(tmp_path, assets, config, capsys):
    shards = _copy_of_shards(tmp_path, assets)
    index = ShardIndex.load(shards)
    key = index.split("test").shards[1].keys[4]
    corrupt_images(index, "test", {key})  # indexed again: only decoding it can tell
    _refused(["train", str(config), "run.name=r", f"data.root={shards}"], capsys,
             f"bad sample in split 'test', shard {shards / 'test-000001.tar'}, key '{key}': image cannot be decoded")
    _no_step_taken(tmp_path / "runs" / "r")


@pytest.mark.parametrize("suffix, data", [(".cls", b"2"), (".png", b"\0" * 64)], ids=["wrong-label", "image-bytes"])
def test_a_changed_training_tar_is_refused_at_start_with_full_verify(tmp_path, assets, config, capsys, suffix, data):
    """A tar edited in place after it was indexed (same size, so the index loads): a valid but
    wrong label, or changed image bytes; data.verify=full checks every shard's sha256 first."""
    import tarfile

    shards = _copy_of_shards(tmp_path, assets)
    tar_path = shards / "train-000000.tar"
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix)
                      and (suffix != ".cls" or tar.extractfile(m).read().strip() != data))
    raw = bytearray(tar_path.read_bytes())
    raw[member.offset_data:member.offset_data + len(data)] = data
    tar_path.write_bytes(bytes(raw))
    _refused(["train", str(config), "run.name=r", f"data.root={shards}", "data.verify=full"], capsys,
             f"{tar_path}: sha256 differs from index.json")
    _no_step_taken(tmp_path / "runs" / "r")
