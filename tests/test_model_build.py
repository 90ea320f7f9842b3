"""Config -> model: the four methods as settings, pool "auto", checkpoint loading."""
import torch
import pytest

from spt_dist.config import load_config
from spt_dist.model import build_backbone, build_model, resolve_pool, save_backbone_weights

BASE = ["model.name=vit_micro_p4_16"]
METHODS = {
    "linear": ["method.name=linear", "method.prompt_length=0", "method.init=vpt"],
    "full": ["method.name=full", "method.prompt_length=0", "method.init=vpt"],
    "vpt_deep": ["method.name=vpt", "method.prompt_length=5", "method.deep=true", "method.init=vpt",
                 "method.prompt_dropout=0.1"],
    "spt_shallow": ["method.name=spt", "method.prompt_length=7", "method.init=kmeans"],
}


@pytest.mark.parametrize("method, trainable, prompt_shape", [
    ("linear", 32 * 4 + 4, None), ("full", 40_320 + 132, None),
    ("vpt_deep", 3 * 5 * 32 + 132, (3, 5, 32)), ("spt_shallow", 7 * 32 + 132, (1, 7, 32))])
def test_methods_are_settings(method, trainable, prompt_shape):
    model = build_model(load_config(overrides=BASE + METHODS[method]), num_classes=4)
    assert model.param_counts()["trainable"] == trainable
    assert (None if model.prompts is None else tuple(model.prompts.shape)) == prompt_shape
    assert model.train_backbone == (method == "full") and model.pool == "token"
    assert model.prompt_dropout.p == (0.1 if method == "vpt_deep" else 0.0)


def test_pool_auto_follows_checkpoint_format(tmp_path):
    src = build_backbone("vit_micro_p4_16")
    timm_file = save_backbone_weights(src, tmp_path / "vit.safetensors")
    # MAE's pretraining layout: no head, a mask token (the released encoder-only files need
    # model.checkpoint_format=mae, see test_model_checkpoints).
    torch.save({"model": dict(src.state_dict(), mask_token=torch.zeros(1, 1, 32))}, tmp_path / "mae.pth")
    cfg = load_config(overrides=BASE + METHODS["vpt_deep"] + [f"model.checkpoint={timm_file}"])
    assert resolve_pool(cfg) == "token"
    cfg = load_config(overrides=BASE + METHODS["vpt_deep"] + [f"model.checkpoint={tmp_path / 'mae.pth'}",
                                                               "model.grad_checkpointing=true"])
    assert resolve_pool(cfg) == "mean_with_prompts"  # VPT's MAE code averages prompts too
    model = build_model(cfg, num_classes=3)
    assert model.pool == "mean_with_prompts" and model.grad_checkpointing
    linear = load_config(overrides=BASE + [f"model.checkpoint={tmp_path / 'mae.pth'}", "method.name=linear",
                                           "method.prompt_length=0", "method.init=vpt"])
    assert resolve_pool(linear) == "mean"
    cfg.model.pool = "mean_with_prompts"
    assert resolve_pool(cfg) == "mean_with_prompts"
    assert resolve_pool(load_config(overrides=["model.name=vit_micro_p4_16"])) == "token"
