"""`spt pretrain`: a backbone trained from scratch, saved as safetensors, loadable and hashed."""
from __future__ import annotations

import json

from engine_helpers import make_assets
from spt_dist.cli import main as spt
from spt_dist.model import build_backbone, weights_hash


def test_pretrain_writes_a_loadable_backbone(tmp_path, capsys):
    assets = make_assets(tmp_path / "assets")
    out = tmp_path / "backbone.safetensors"
    assert spt(["pretrain", "--shards", str(assets["shards"]), "--out", str(out), "--backbone",
                "vit_micro_p4_16", "--epochs", "2", "--batch-size", "16", "--lr", "0.003"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 * 128 // 16 and result["test_total"] == 30
    assert result["test_top1"] > 100 / 3  # learns beyond chance on the 3-class toy task
    backbone = build_backbone("vit_micro_p4_16", checkpoint=out)
    assert weights_hash(backbone) == result["weights_hash"]
