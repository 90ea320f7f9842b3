"""Every checkpoint format users hold, written by the test in that format's own key layout,
loads into an identical backbone; a missing or unexpected tensor is an error naming it."""
import argparse

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

from spt_dist.model import (CheckpointError, PromptedViT, build_backbone, detect_format,
                            load_backbone_weights, save_backbone_weights, weights_hash)

NAME = "vit_micro_p4_16"  # patch 4, width 32, depth 3, 2 heads, 16 px


def _randomize(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def _source(seed=0):
    return _randomize(build_backbone(NAME), seed)


def _mae_source(seed=0):
    """MAE's fine-tuning ViT with global pooling: the final norm is fc_norm, no norm."""
    vit = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=2,
                            num_classes=0, global_pool="avg", fc_norm=True)
    return _randomize(vit, seed)


def _images(n=2, chans=3, size=16):
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(5))


def _same_outputs(a, b, pool="token", chans=3):
    ma, mb = PromptedViT(a, 4, pool=pool), PromptedViT(b, 4, pool=pool)
    mb.head.load_state_dict(ma.head.state_dict())
    with torch.no_grad():
        x = _images(chans=chans)
        torch.testing.assert_close(mb.eval()(x), ma.eval()(x), rtol=0, atol=0)


def _to_npz(model, path, big_vision=False):
    """The JAX layout: Google's ImageNet-21k files, or big_vision's (MHDPA_0, LayerNorm_1, MlpBlock_0)."""
    d, heads = model.embed_dim, model.blocks[0].attn.num_heads
    n = lambda t: t.detach().numpy()
    w = {"embedding/kernel": n(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
         "embedding/bias": n(model.patch_embed.proj.bias),
         "cls": n(model.cls_token),
         "Transformer/encoder_norm/scale": n(model.norm.weight),
         "Transformer/encoder_norm/bias": n(model.norm.bias),
         "head/kernel": np.zeros((d, 7), np.float32), "head/bias": np.zeros(7, np.float32),
         "pre_logits/kernel": np.zeros((d, d), np.float32), "pre_logits/bias": np.zeros(d, np.float32)}
    w["pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"] = n(model.pos_embed)
    mha, ln2, mlp = ("0", "1", "0") if big_vision else ("1", "2", "3")
    for i, blk in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = n(blk.norm1.weight), n(blk.norm1.bias)
        w[p + f"LayerNorm_{ln2}/scale"], w[p + f"LayerNorm_{ln2}/bias"] = n(blk.norm2.weight), n(blk.norm2.bias)
        qkv_w, qkv_b = blk.attn.qkv.weight.chunk(3), blk.attn.qkv.bias.chunk(3)
        for j, part in enumerate(("query", "key", "value")):
            w[p + f"MultiHeadDotProductAttention_{mha}/{part}/kernel"] = n(qkv_w[j].T.reshape(d, heads, -1))
            w[p + f"MultiHeadDotProductAttention_{mha}/{part}/bias"] = n(qkv_b[j].reshape(heads, -1))
        w[p + f"MultiHeadDotProductAttention_{mha}/out/kernel"] = n(blk.attn.proj.weight.T.reshape(heads, -1, d))
        w[p + f"MultiHeadDotProductAttention_{mha}/out/bias"] = n(blk.attn.proj.bias)
        for r, fc in enumerate((blk.mlp.fc1, blk.mlp.fc2)):
            w[p + f"MlpBlock_{mlp}/Dense_{r}/kernel"] = n(fc.weight.T)
            w[p + f"MlpBlock_{mlp}/Dense_{r}/bias"] = n(fc.bias)
    np.savez(path, **w)
    return w


def test_safetensors_round_trip(tmp_path):
    src = _source()
    path = save_backbone_weights(src, tmp_path / "vit.safetensors")
    assert detect_format(path) == "timm"
    loaded = build_backbone(NAME, checkpoint=path)
    assert weights_hash(loaded) == weights_hash(src)
    _same_outputs(src, loaded)


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_torch_state_dict_with_head(tmp_path, suffix):
    src = _source()
    state = dict(src.state_dict(), **{"head.weight": torch.randn(10, 32), "head.bias": torch.zeros(10)})
    torch.save(state, tmp_path / f"vit{suffix}")
    assert detect_format(tmp_path / f"vit{suffix}") == "timm"
    _same_outputs(src, build_backbone(NAME, checkpoint=tmp_path / f"vit{suffix}"))


@pytest.mark.parametrize("big_vision", [False, True])
def test_npz_jax_layout(tmp_path, big_vision):
    src = _source()
    _to_npz(src, tmp_path / "vit.npz", big_vision)
    assert detect_format(tmp_path / "vit.npz") == "npz"
    loaded = build_backbone(NAME, checkpoint=tmp_path / "vit.npz")
    assert weights_hash(loaded) == weights_hash(src)
    _same_outputs(src, loaded)


def test_mae_global_pool_checkpoint(tmp_path):
    src = _mae_source()
    state = dict(src.state_dict())
    state.update({"mask_token": torch.randn(1, 1, 16), "decoder_embed.weight": torch.randn(16, 32),
                  "decoder_pos_embed": torch.randn(1, 17, 16), "decoder_blocks.0.norm1.weight": torch.ones(16),
                  "decoder_norm.weight": torch.ones(16), "decoder_pred.weight": torch.randn(48, 16),
                  "head.weight": torch.randn(5, 32), "head.bias": torch.zeros(5)})
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-3), "epoch": 7}, tmp_path / "mae.pth")
    assert detect_format(tmp_path / "mae.pth") == "mae"
    loaded = build_backbone(NAME, checkpoint=tmp_path / "mae.pth")
    assert isinstance(loaded.norm, torch.nn.Identity) and loaded.fc_norm.weight.shape == (32,)
    assert weights_hash(loaded) == weights_hash(src)
    _same_outputs(src, loaded, pool="mean")


def test_mae_pretrain_checkpoint_pools_then_normalises(tmp_path):
    # MAE's (and VPT's) protocol: mean over the tokens, then a new LayerNorm; the pretraining's
    # per-token norm is dropped.
    src = _source()
    torch.save({"model": dict(src.state_dict(), mask_token=torch.zeros(1, 1, 32))}, tmp_path / "mae_pretrain.pth")
    assert detect_format(tmp_path / "mae_pretrain.pth") == "mae"
    loaded = build_backbone(NAME, checkpoint=tmp_path / "mae_pretrain.pth")
    assert isinstance(loaded.norm, torch.nn.Identity)
    assert torch.equal(loaded.fc_norm.weight, torch.ones(32)) and torch.equal(loaded.fc_norm.bias, torch.zeros(32))
    model = PromptedViT(loaded, 4, pool="mean").eval()
    x = _images()
    with torch.no_grad():
        tokens = src.blocks(src.norm_pre(src._pos_embed(src.patch_embed(x))))  # no per-token norm
        expected = F.layer_norm(tokens[:, src.num_prefix_tokens:].mean(dim=1), (32,), eps=1e-6)
        torch.testing.assert_close(model.forward_features(x)[:, 1:].mean(dim=1), tokens[:, 1:].mean(dim=1))
        torch.testing.assert_close(model(x), model.head(expected))


@pytest.mark.parametrize("prefix", ["module.base_encoder.", "module."])
def test_mocov3_checkpoint(tmp_path, prefix):
    src, momentum = _source(0), _source(1)
    state = {prefix + k: v for k, v in src.state_dict().items()}
    state[prefix + "head.0.weight"] = torch.randn(64, 32)  # projection MLP
    if prefix == "module.base_encoder.":  # the pretraining file: momentum encoder and predictor too
        state.update({"module.momentum_encoder." + k: v for k, v in momentum.state_dict().items()})
        state["module.predictor.0.weight"] = torch.randn(64, 64)
    blob = {"epoch": 300, "arch": "vit_base", "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}
    torch.save(blob, tmp_path / "mocov3.pth.tar")
    assert detect_format(tmp_path / "mocov3.pth.tar") == "mocov3"
    loaded = build_backbone(NAME, checkpoint=tmp_path / "mocov3.pth.tar")
    assert weights_hash(loaded) == weights_hash(src) != weights_hash(momentum)
    _same_outputs(src, loaded)


def test_missing_key_is_named(tmp_path):
    path = save_backbone_weights(_source(), tmp_path / "vit.safetensors")
    state = load_file(path)
    del state["blocks.1.mlp.fc2.bias"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: \[blocks\.1\.mlp\.fc2\.bias\]"):
        build_backbone(NAME, checkpoint=tmp_path / "cut.safetensors")


def test_unexpected_key_is_named(tmp_path):
    state = dict(_source().state_dict(), **{"blocks.0.attn.gate": torch.zeros(2)})
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: \[blocks\.0\.attn\.gate\]"):
        build_backbone(NAME, checkpoint=tmp_path / "extra.pth")
    # A deeper backbone's file into a shallower model, and the reverse, list the blocks.
    with pytest.raises(CheckpointError, match=r"missing keys: \[blocks\.3\."):
        build_backbone("vit_tiny_p7_28", checkpoint=save_backbone_weights(_source(), tmp_path / "m.safetensors"))


def test_npz_missing_and_unexpected_keys_are_named(tmp_path):
    w = _to_npz(_source(), tmp_path / "full.npz")
    cut = {k: v for k, v in w.items() if k != "Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"}
    np.savez(tmp_path / "cut.npz", **cut)
    with pytest.raises(CheckpointError, match="Transformer/encoderblock_1/MlpBlock_3/Dense_1/bias"):
        build_backbone(NAME, checkpoint=tmp_path / "cut.npz")
    extra = dict(w, **{"Transformer/encoderblock_3/LayerNorm_0/scale": np.ones(32, np.float32)})
    np.savez(tmp_path / "extra.npz", **extra)
    with pytest.raises(CheckpointError, match=r"unexpected keys: \[Transformer/encoderblock_3/LayerNorm_0/scale\]"):
        build_backbone(NAME, checkpoint=tmp_path / "extra.npz")
    # timm's reader skips what it does not know (here fc_norm): never left at its old values.
    with pytest.raises(CheckpointError, match=r"has no weights for: \[fc_norm\.bias, fc_norm\.weight\]"):
        load_backbone_weights(_mae_source(), tmp_path / "full.npz")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_position_embedding_resampled_to_new_grid(tmp_path, suffix):
    src = _source()
    path = tmp_path / f"vit{suffix}"
    _to_npz(src, path) if suffix == ".npz" else save_backbone_weights(src, path)
    big = build_backbone(NAME, img_size=24, checkpoint=path)  # 4x4 grid -> 6x6
    assert big.pos_embed.shape == (1, 37, 32)
    torch.testing.assert_close(big.pos_embed[:, 0], src.pos_embed[:, 0])  # class position kept
    with torch.no_grad():
        assert torch.isfinite(big(_images(size=24))).all()


def test_input_channels_adapted(tmp_path):
    src = _source()
    path = save_backbone_weights(src, tmp_path / "vit.safetensors")
    gray = build_backbone(NAME, in_chans=1, checkpoint=path)
    torch.testing.assert_close(gray.patch_embed.proj.weight, src.patch_embed.proj.weight.sum(1, keepdim=True))


def test_load_into_existing_model_and_explicit_format(tmp_path):
    src = _source()
    torch.save({"model": dict(src.state_dict(), **{"head.weight": torch.zeros(3, 32)})}, tmp_path / "deit.pth")
    assert detect_format(tmp_path / "deit.pth") == "timm"  # a supervised {'model': ...} file has a head
    model = build_backbone(NAME)
    assert load_backbone_weights(model, tmp_path / "deit.pth", fmt="timm") == "timm"
    assert weights_hash(model) == weights_hash(src)
    # Declared MAE, the file gets MAE's pooled norm, which a per-token-norm model does not have.
    with pytest.raises(CheckpointError, match=r"unexpected keys: \[fc_norm\.bias, fc_norm\.weight\]"):
        load_backbone_weights(model, tmp_path / "deit.pth", fmt="mae")
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'jax'"):
        load_backbone_weights(model, tmp_path / "deit.pth", fmt="jax")
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_weights(model, tmp_path / "absent.pth")


class _Opaque:
    pass


def test_pickled_code_is_refused(tmp_path):
    torch.save({"model": _source().state_dict(), "hook": _Opaque()}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="pickled objects"):
        build_backbone(NAME, checkpoint=tmp_path / "odd.pth")


def test_a_file_that_is_no_weights_file_is_named_as_such(tmp_path):
    """Text under a .pth name is not called a pickle of unsafe objects: it is no checkpoint."""
    (tmp_path / "notes.pth").write_text("# my notes\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a weights file \(neither a PyTorch checkpoint"):
        build_backbone(NAME, checkpoint=tmp_path / "notes.pth")


def test_weights_hash_is_deterministic_and_sensitive():
    src = _source()
    h = weights_hash(src)
    assert h == weights_hash(_source()) == weights_hash(PromptedViT(src, 3, prompt_length=2))
    with torch.no_grad():
        src.blocks[2].mlp.fc2.bias[5] += 1e-6
    assert weights_hash(src) != h
    assert len(h) == 64


def test_model_file_without_head_or_mae_marks_needs_its_format(tmp_path):
    # A supervised backbone saved as {'model': ...} without its head looks like MAE's released
    # encoder-only files: nothing in the keys says which it is, so auto detection refuses it.
    src = _source()
    path = tmp_path / "deit_no_head.pth"
    torch.save({"model": src.state_dict()}, path)
    for attempt in (lambda: detect_format(path), lambda: build_backbone(NAME, checkpoint=path)):
        with pytest.raises(CheckpointError, match="model.checkpoint_format=mae or model.checkpoint_format=timm"):
            attempt()
    supervised = build_backbone(NAME, checkpoint=path, checkpoint_format="timm")
    assert not isinstance(supervised.norm, torch.nn.Identity)  # its trained per-token norm kept
    assert weights_hash(supervised) == weights_hash(src)
    _same_outputs(src, supervised)  # class-token pooling after that norm
    mae = build_backbone(NAME, checkpoint=path, checkpoint_format="mae")  # declared an MAE encoder
    assert isinstance(mae.norm, torch.nn.Identity) and torch.equal(mae.fc_norm.weight, torch.ones(32))


def test_model_file_without_head_through_the_config(tmp_path):
    from spt_dist.config import load_config
    from spt_dist.model import build_model, resolve_pool

    src = _source()
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    base = ["model.name=vit_micro_p4_16", f"model.checkpoint={tmp_path / 'w.pth'}", "method.name=linear",
            "method.prompt_length=0", "method.init=vpt"]
    with pytest.raises(CheckpointError, match="model.checkpoint_format"):
        build_model(load_config(None, base), num_classes=3)
    cfg = load_config(None, base + ["model.checkpoint_format=timm"])
    assert resolve_pool(cfg) == "token"
    assert weights_hash(build_model(cfg, num_classes=3).backbone) == weights_hash(src)


def test_timm_copy_of_mae_without_wrapper_needs_its_format(tmp_path):
    # timm's vit_*.mae files: MAE's encoder in timm's names, flat, no head, no decoder, no mask
    # token; the fixed sin-cos pos_embed (MAE's formula) is what says MAE. A supervised headless
    # file (a learned pos_embed) stays timm.
    from spt_dist.model.mae import sincos_with_class_row

    src = _source()
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "learned.safetensors"))
    assert detect_format(tmp_path / "learned.safetensors") == "timm"
    state["pos_embed"] = sincos_with_class_row(32, 4)
    save_file(state, str(tmp_path / "mae.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    for path in (tmp_path / "mae.safetensors", tmp_path / "pytorch_model.bin"):
        with pytest.raises(CheckpointError, match=r"pos_embed is MAE's fixed sin-cos.*"
                                                  r"model.checkpoint_format=mae or model.checkpoint_format=timm"):
            detect_format(path)
        with pytest.raises(CheckpointError, match="model.checkpoint_format=mae"):
            build_backbone(NAME, checkpoint=path)
    mae = build_backbone(NAME, checkpoint=tmp_path / "mae.safetensors", checkpoint_format="mae")
    assert isinstance(mae.norm, torch.nn.Identity) and torch.equal(mae.fc_norm.weight, torch.ones(32))
    timm = build_backbone(NAME, checkpoint=tmp_path / "mae.safetensors", checkpoint_format="timm")
    assert torch.equal(timm.norm.weight, src.norm.weight) and torch.equal(timm.pos_embed, state["pos_embed"])


@pytest.mark.parametrize("marks", [{"mask_token": torch.zeros(1, 1, 32)},
                                   {"decoder_embed.weight": torch.zeros(16, 32), "mask_token": torch.zeros(1, 1, 16)}])
def test_real_mae_pretraining_layouts_are_detected(tmp_path, marks):
    src = _source()
    torch.save({"model": dict(src.state_dict(), **marks)}, tmp_path / "mae.pth")
    assert detect_format(tmp_path / "mae.pth") == "mae"
    save_file(dict(src.state_dict(), **marks), str(tmp_path / "mae.safetensors"))  # no wrapper: marks suffice
    assert detect_format(tmp_path / "mae.safetensors") == "mae"


def test_mae_pretrained_norm_on_the_pooled_tokens(tmp_path):
    # SPT's MAE models (Models/MAE_vit.py): mean of the tokens, then the PRETRAINED `norm`.
    from spt_dist.model import read_checkpoint

    src = _source()
    torch.save({"model": dict(src.state_dict(), mask_token=torch.zeros(1, 1, 32))}, tmp_path / "mae.pth")
    ckpt = read_checkpoint(tmp_path / "mae.pth", mae_head_norm="pretrained")
    loaded = build_backbone(NAME, checkpoint=ckpt)
    assert isinstance(loaded.norm, torch.nn.Identity)
    assert torch.equal(loaded.fc_norm.weight, src.norm.weight) and torch.equal(loaded.fc_norm.bias, src.norm.bias)
    model = PromptedViT(loaded, 4, prompt_length=3, pool="mean_with_prompts").eval()
    x = _images()
    with torch.no_grad():
        tokens = model.forward_features(x)[:, 1:]  # prompts and patches, no per-token norm
        expected = F.layer_norm(tokens.mean(dim=1), (32,), src.norm.weight, src.norm.bias, eps=1e-6)
        torch.testing.assert_close(model(x), model.head(expected))
    with pytest.raises(CheckpointError, match="mae_head_norm 'old'"):
        read_checkpoint(tmp_path / "mae.pth", mae_head_norm="old")
