"""`spt pretrain --recipe mae`: MAE's recipe values, masking, the norm-pix loss, the encoder on
visible patches as timm's forward, and a file in MAE's layout that loads as format `mae`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from engine_helpers import make_assets
from spt_dist.cli import main as spt
from spt_dist.config import ConfigError, load_config
from spt_dist.config.schema import DataConfig
from spt_dist.data import EvalData, ShardIndex
from spt_dist.engine.cli import pretrain_options
from spt_dist.engine.pretrain_mae import MAE_RECIPE
from spt_dist.model import build_backbone, build_model, detect_format, normalization
from spt_dist.model.mae import (MaskedAutoencoder, patchify, random_masking, reconstruction_loss,
                                save_mae_checkpoint, sincos_with_class_row)

NAME = "vit_micro_p4_16"
ROOT = Path(__file__).resolve().parents[1]


def test_recipe_values_are_maes():
    # facebookresearch/mae: main_pretrain.py defaults --mask_ratio 0.75, --weight_decay 0.05,
    # --min_lr 0, AdamW(..., betas=(0.9, 0.95)); PRETRAIN.md: --norm_pix_loss, --blr 1.5e-4,
    # --warmup_epochs 40 of --epochs 800. Paper (arXiv 2111.06377) Sec. 4.1 / Table 8: 75 % masking.
    assert MAE_RECIPE == {"mask_ratio": 0.75, "norm_pix_loss": True, "betas": (0.9, 0.95), "weight_decay": 0.05,
                          "warmup_fraction": 0.05, "min_lr": 0.0, "blr": 1.5e-4}


def test_supervised_stays_the_default(tmp_path):
    args = argparse.Namespace(config=None, shards="s", out="o.safetensors", recipe=None, no_progress=True,
                              **dict.fromkeys(("backbone", "epochs", "batch_size", "lr", "seed", "decoder_dim",
                                               "decoder_depth", "decoder_heads", "dtype", "max_steps")))
    assert pretrain_options(args) == {"recipe": "supervised", "shards": "s", "out": "o.safetensors",
                                      "backbone": "vit_tiny_p7_28", "epochs": 3, "batch_size": 128, "lr": 1e-3,
                                      "seed": 0}
    args.decoder_dim = 32
    with pytest.raises(ConfigError, match="do not apply to recipe 'supervised'"):
        pretrain_options(args)
    cfg = tmp_path / "p.yaml"
    cfg.write_text("recipe: mae\nepochs: 9\nlr: 0.01\n")
    args.config, args.decoder_dim, args.lr = str(cfg), None, 0.02
    opts = pretrain_options(args)  # the file over the recipe's defaults, flags over the file
    assert (opts["recipe"], opts["epochs"], opts["lr"], opts["decoder_dim"]) == ("mae", 9, 0.02, 64)
    args.backbone = "vit_micro_reg_p4_16"
    with pytest.raises(ConfigError, match="MAE's encoder layout"):
        pretrain_options(args)


def test_masking_keeps_a_quarter_per_sample():
    gen = torch.Generator().manual_seed(0)
    ids_keep, mask, ids_restore = random_masking(64, 16, 0.75, gen)
    assert ids_keep.shape == (64, 4) and torch.equal(mask.sum(1), torch.full((64,), 12.0))
    assert torch.equal(mask.gather(1, ids_keep), torch.zeros(64, 4))  # kept patches are the unmasked ones
    assert len({tuple(r.tolist()) for r in ids_keep}) > 60  # drawn per sample
    shuffle = ids_restore.argsort(1)
    assert torch.equal(shuffle.gather(1, ids_restore), torch.arange(16).expand(64, -1))


def test_patchify_and_norm_pix_loss():
    images = torch.randn(2, 3, 8, 8)
    # MAE's patchify: reshape to (n, c, h, p, w, q), einsum 'nchpwq->nhwpqc'
    ref = torch.einsum("nchpwq->nhwpqc", images.reshape(2, 3, 2, 4, 2, 4)).reshape(2, 4, 48)
    target = patchify(images, 4)
    assert torch.equal(target, ref)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])
    pred = torch.where(mask[..., None].bool(), normed, torch.randn_like(normed))  # wrong only where visible
    assert reconstruction_loss(pred, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    pred = normed + mask[..., None] * 2.0  # off by 2 on every masked pixel
    assert reconstruction_loss(pred, target, mask).item() == pytest.approx(4.0, rel=1e-5)
    assert reconstruction_loss(target, target, mask, norm_pix=False).item() == 0.0


def test_encoder_on_all_patches_is_timms_forward():
    """With nothing masked the encoder is timm's forward_features, patches in shuffled order."""
    torch.manual_seed(0)
    mae = MaskedAutoencoder(build_backbone(NAME), decoder_dim=16, decoder_depth=1, decoder_heads=2).eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        tokens, mask, ids_restore = mae.encode(images, 0.0)
        ref = mae.encoder.forward_features(images)
    unshuffled = tokens[:, 1:].gather(1, ids_restore[..., None].expand(-1, -1, tokens.shape[2]))
    assert mask.sum() == 0
    torch.testing.assert_close(tokens[:, 0], ref[:, 0])
    torch.testing.assert_close(unshuffled, ref[:, 1:])
    # MAE's fixed sin-cos tables, not trained
    assert torch.equal(mae.encoder.pos_embed, sincos_with_class_row(32, 4))
    assert not mae.encoder.pos_embed.requires_grad and not mae.decoder_pos_embed.requires_grad


def test_pretrained_file_loads_as_mae_and_loss_falls(tmp_path, capsys):
    assets = make_assets(tmp_path / "assets")
    out = tmp_path / "mae.pth"
    assert spt(["pretrain", "--recipe", "mae", "--shards", str(assets["shards"]), "--out", str(out),
                "--backbone", NAME, "--epochs", "12", "--batch-size", "16", "--lr", "0.003",
                "--decoder-dim", "32", "--decoder-depth", "1", "--dtype", "float32", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 12 * 128 // 16
    assert result["train_loss_last"] < 0.8 * result["train_loss_first"]
    # Better than predicting every masked patch as flat (zero after norm-pix) on the test split.
    index = ShardIndex.load(assets["shards"])
    data = EvalData(DataConfig(root=str(assets["shards"]), preset="small"), index, "test", 16,
                    *normalization(NAME, "mae"), 0, 1)
    target = torch.cat([patchify(images, 4) for images, _, _ in data])
    flat = reconstruction_loss(torch.zeros_like(target), target, torch.ones(target.shape[:2])).item()
    assert result["test_reconstruction_loss"] < flat - 0.05, (result, flat)

    # The file is MAE's own layout: {'model': ...} with the encoder's and the decoder's names.
    with torch.serialization.safe_globals([argparse.Namespace]):  # MAE's files pickle their args too
        raw = torch.load(out, weights_only=True)
    assert isinstance(raw["args"], argparse.Namespace) and raw["args"].mask_ratio == 0.75
    keys = set(raw["model"])
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.2.attn.qkv.weight", "norm.weight",
            "mask_token", "decoder_embed.weight", "decoder_pos_embed", "decoder_blocks.0.mlp.fc2.bias",
            "decoder_pred.weight"} <= keys
    assert not any(k.startswith(("head.", "fc_norm.", "encoder.")) for k in keys)
    assert raw["spt_metadata"]["test_reconstruction_loss"] == f"{result['test_reconstruction_loss']:.4f}"
    assert detect_format(out) == "mae"

    # In-process: train a few steps, save, load through model.checkpoint; tensors equal the encoder's.
    torch.manual_seed(1)
    mae = MaskedAutoencoder(build_backbone(NAME), decoder_dim=16, decoder_depth=1, decoder_heads=2)
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.95))
    for _ in range(3):
        loss = mae(torch.randn(8, 3, 16, 16))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = save_mae_checkpoint(mae, tmp_path / "step3.pth", {"epochs": 1}, {"recipe": "mae"})
    trained = {k: v for k, v in mae.encoder.state_dict().items() if not k.startswith("norm.")}
    for head_norm in ("pretrained", "new"):
        cfg = load_config(overrides=[f"model.name={NAME}", f"model.checkpoint={path}", "method.name=linear",
                                     "method.prompt_length=0", "method.init=vpt", f"model.mae_head_norm={head_norm}"])
        model = build_model(cfg, num_classes=3)
        assert model.pool == "mean"  # MAE: mean of the patch tokens, then fc_norm
        loaded = model.backbone.state_dict()
        for k, v in trained.items():
            assert torch.equal(loaded[k], v), k
        norm = mae.encoder.norm
        want = (norm.weight, norm.bias) if head_norm == "pretrained" else (torch.ones(32), torch.zeros(32))
        assert torch.equal(loaded["fc_norm.weight"], want[0]) and torch.equal(loaded["fc_norm.bias"], want[1])


@pytest.mark.parametrize("name, mib", [("vit_tiny_p7_28", 3), ("vit_mini_p7_28", 3), ("vit_small_p7_28", 8)])
def test_committed_mae_backbones_load_as_mae(name, mib):
    from spt_dist.model.summary import summarize
    from spt_dist.model.weights import read_checkpoint

    path = ROOT / "spt_dist" / "assets" / f"mae_{name}_fmnist04.pth"
    if not path.is_file():
        pytest.skip(f"{path.name} not committed")
    assert path.stat().st_size < mib * 2 ** 20 and detect_format(path) == "mae"
    summary = summarize(str(path))  # what `spt weights check` reports
    assert (summary.layout, summary.pos_embed) == ("mae-with-decoder", "sincos-mae")
    with torch.serialization.safe_globals([argparse.Namespace]):
        raw = torch.load(path, weights_only=True)
    meta = raw["spt_metadata"]
    assert meta["recipe"] == "mae" and meta["backbone"] == name and float(meta["train_s"]) > 0
    assert float(meta["test_reconstruction_loss"]) < 0.9  # the flat predictor's is 0.99 on this test split
    assert {v.dtype for v in raw["model"].values()} == {torch.float16}
    backbone = build_backbone(name, checkpoint=read_checkpoint(path))
    assert backbone.fc_norm.weight.dtype == torch.float32
    for k, v in backbone.state_dict().items():
        if k in raw["model"]:
            assert torch.equal(v, raw["model"][k].float()), k
