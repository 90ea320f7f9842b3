"""Prototype cache (hit skips the forward pass; any change of key misses) and single-process errors."""
from pathlib import Path

import pytest
import torch

from spt_dist.config import ConfigError, load_config
from spt_dist.data import ShardIndex, write_shards
from spt_dist.distributed import Comm
from spt_dist.data.sources.builtin import digits_source
from spt_dist.model import build_model, weights_hash
from spt_dist.prompt_init import PromptInitError, initialize_prompts

ONE = Comm()  # one process


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("digits") / "shards"
    write_shards(digits_source(), str(root), shard_size=50, max_per_class=8, progress=False)
    return str(root)


def _setup(shards: str, cache: Path, *overrides: str, dtype=torch.float32, method_changes=None):
    cfg = load_config(None, [f"data.root={shards}", "model.name=vit_micro_p4_16", "method.name=spt",
                             "method.prompt_length=4", "method.deep=true", "method.init=mean_pool",
                             "method.track_alignment=true", "method.init_candidates=32",
                             f"method.cache_dir={cache}", "run.progress=false", *overrides])
    for key, value in (method_changes or {}).items():  # past the loader's validation
        setattr(cfg.method, key, value)
    index = ShardIndex.load(shards)
    torch.manual_seed(0)
    model = build_model(cfg, index.num_classes).to(dtype)
    calls = []
    model.backbone.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    return cfg, index, model, calls


def test_cache_hit_skips_the_forward_pass_and_gives_the_same_prompts(shards, tmp_path):
    cfg, index, model, calls = _setup(shards, tmp_path)
    first = initialize_prompts(model, cfg, index, ONE, "cpu")
    assert not first.cache_hit and len(calls) > 0
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.safetensors")) == ["kmeans", "mean_pool"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file

    cfg, index, model2, calls2 = _setup(shards, tmp_path)
    second = initialize_prompts(model2, cfg, index, ONE, "cpu")
    assert second.cache_hit and calls2 == []
    assert torch.equal(second.prompts, first.prompts) and torch.equal(second.reference, first.reference)
    assert torch.equal(model2.prompts.detach(), first.prompts)
    # The hash a caller already computed (the engine's) names the same cache entry.
    cfg, index, model3, calls3 = _setup(shards, tmp_path)
    third = initialize_prompts(model3, cfg, index, ONE, "cpu", backbone_hash=weights_hash(model3.backbone))
    assert third.cache_hit and calls3 == []
    assert second.stats == first.stats and second.images == first.images

    # The kmeans entry serves a later VPT run's alignment reference: no pass either.
    cfg, index, vpt, calls3 = _setup(shards, tmp_path, "method.name=vpt", "method.init=vpt")
    before = vpt.prompts.detach().clone()
    third = initialize_prompts(vpt, cfg, index, ONE, "cpu")
    assert third.cache_hit and calls3 == [] and third.prompts is None
    assert torch.equal(vpt.prompts.detach(), before)  # VPT's uniform init is left alone
    assert torch.equal(third.reference, first.reference)


@pytest.mark.parametrize("change", ["run.seed=1", "method.init_candidates=40", "method.init_images=30",
                                    "data.fraction=0.5", "method.kmeans_iters=5", "method.window_layout=spt",
                                    "method.init_replacement=true", "method.init_transform=train"])
def test_any_change_of_key_is_a_miss(shards, tmp_path, change):
    cfg, index, model, _ = _setup(shards, tmp_path)
    initialize_prompts(model, cfg, index, ONE, "cpu")
    cfg, index, model, calls = _setup(shards, tmp_path, change)
    res = initialize_prompts(model, cfg, index, ONE, "cpu")
    assert not res.cache_hit and calls


def test_corrupt_cache_file_is_recomputed(shards, tmp_path):
    cfg, index, model, _ = _setup(shards, tmp_path)
    first = initialize_prompts(model, cfg, index, ONE, "cpu")
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    cfg, index, model, calls = _setup(shards, tmp_path)
    again = initialize_prompts(model, cfg, index, ONE, "cpu")
    assert not again.cache_hit and calls and torch.equal(again.prompts, first.prompts)


def test_prompt_dtype_is_kept(shards, tmp_path):
    cfg, index, model, _ = _setup(shards, tmp_path, dtype=torch.bfloat16)
    res = initialize_prompts(model, cfg, index, ONE, "cpu")
    assert model.prompts.dtype == torch.bfloat16 and res.prompts.dtype == torch.float32
    assert torch.equal(model.prompts.detach(), res.prompts.to(torch.bfloat16))


@pytest.mark.parametrize("changes,message", [
    ({"init": "max_pool", "prompt_length": 20}, "16 patch tokens into method.prompt_length=20 windows"),
    ({"init_candidates": 3}, "method.init_candidates=3 is fewer than method.prompt_length=4"),
    ({"data.train_split": "nope"}, "no split 'nope'"),
])
def test_bad_settings_fail_before_any_forward_pass(shards, tmp_path, changes, message):
    overrides = [f"{k}={v}" for k, v in changes.items() if "." in k]
    method = {k: v for k, v in changes.items() if "." not in k}
    if method:  # the config loader refuses these on the login node already
        with pytest.raises(ConfigError):
            _setup(shards, tmp_path, *[f"method.{k}={v}" for k, v in method.items()])
    # ... and the init step still refuses them from a Config built past the loader.
    cfg, index, model, calls = _setup(shards, tmp_path, *overrides, method_changes=method)
    with pytest.raises(PromptInitError, match=message):
        initialize_prompts(model, cfg, index, ONE, "cpu")
    assert calls == []


def test_model_that_does_not_match_the_method_is_refused(shards, tmp_path):
    cfg, index, model, calls = _setup(shards, tmp_path)
    shallow, *_ = _setup(shards, tmp_path, "method.deep=false")
    with pytest.raises(PromptInitError, match=r"shape \(3, 4, 32\) .* expect \(1, 4, 32\)"):
        initialize_prompts(model, shallow, index, ONE, "cpu")
    with pytest.raises(PromptInitError, match="PromptedViT"):
        initialize_prompts(model.backbone, cfg, index, ONE, "cpu")
    linear, index, no_prompts, _ = _setup(shards, tmp_path, "method.name=linear", "method.prompt_length=0",
                                          "method.deep=false", "method.init=vpt", "method.track_alignment=false")
    assert initialize_prompts(no_prompts, linear, index, ONE, "cpu").prompts is None
    assert calls == []


def test_init_images_are_drawn_from_the_training_fraction(shards, tmp_path):
    from spt_dist.data import select_fraction
    from spt_dist.prompt_init import select_init_keys

    cfg, index, _, _ = _setup(shards, tmp_path, "data.fraction=0.5", "method.init_images=10")
    keys = select_init_keys(cfg, index)
    assert len(keys) == 10 and set(keys) <= set(select_fraction(index, "train", 0.5, 0))
    assert keys == select_init_keys(cfg, index)
    cfg, index, _, _ = _setup(shards, tmp_path, "method.init_images=10")
    assert len(select_init_keys(cfg, index)) == 10
    cfg, index, _, _ = _setup(shards, tmp_path, "method.init_images=0")
    assert select_init_keys(cfg, index) == index.split("train").keys()


def test_more_init_images_than_training_images_is_said(shards, tmp_path, capsys):
    cfg, index, model, _ = _setup(shards, tmp_path, "method.init_images=1000")
    result = initialize_prompts(model, cfg, index, ONE, "cpu")
    n = index.split("train").num_samples
    assert result.images == n < 1000
    assert (f"spt: method.init_images=1000 is more than the run's {n} training images: the prototypes come "
            f"from all {n}") in capsys.readouterr().err


def test_init_images_drawn_with_replacement(shards, tmp_path):
    from spt_dist.prompt_init import select_init_draws, select_init_keys

    cfg, index, model, _ = _setup(shards, tmp_path, "method.init_replacement=true", "method.init_images=0")
    draws = select_init_draws(cfg, index)
    train = index.split("train").keys()
    assert sum(draws.values()) == len(train) and set(draws) < set(train)  # SPT: as many draws as images
    assert select_init_keys(cfg, index) == list(draws) and draws == select_init_draws(cfg, index)
    res = initialize_prompts(model, cfg, index, ONE, "cpu")
    assert res.images == len(train) and res.prompts.shape == (3, 4, 32)
    cfg, index, _, _ = _setup(shards, tmp_path, "method.init_replacement=true", "method.init_images=7")
    assert sum(select_init_draws(cfg, index).values()) == 7


def test_the_training_selection_of_the_data_stage_is_the_one_used(shards, tmp_path):
    """The run's TrainData passes its selected keys down: the prototypes (and their cache key)
    are those of the selection made here, and other keys give other prototypes."""
    from spt_dist.data import TrainData
    from spt_dist.model import input_spec

    cfg, index, model, calls = _setup(shards, tmp_path, "data.fraction=0.5", "data.batch_size=4")
    inputs = input_spec(cfg)
    train = TrainData(cfg.data, index, *inputs, rank=0, world_size=1, seed=cfg.run.seed)
    passed = initialize_prompts(model, cfg, index, ONE, "cpu", inputs=inputs, train_keys=train.selected_keys)
    assert not passed.cache_hit and calls
    again = initialize_prompts(model, cfg, index, ONE, "cpu")  # selected here: the same key, a hit
    assert again.cache_hit and torch.equal(again.prompts, passed.prompts)
    others = sorted(set(index.split("train").keys()) - set(train.selected_keys))
    other = initialize_prompts(model, cfg, index, ONE, "cpu", inputs=inputs, train_keys=others)
    assert not other.cache_hit and not torch.equal(other.prompts, passed.prompts)
