"""A pack on 2 ranks (torchrun, gloo; ZeRO 0: each member's engine all-reduces its own
gradients after the one backward) trains, per member, what that member trains alone on the
same 2 ranks."""
from __future__ import annotations

import json

from engine_helpers import ROOT, make_assets, run, torchrun, write_config
from test_engine_packed import TOLERANCE

PACK = """\
members:
  - [optim.lr=0.01]
  - [optim.name=sgd, optim.lr=0.05, optim.weight_decay=0.001]
  - [optim.lr=0.03, method.prompt_dropout=0.0, optim.grad_clip=1.0]
"""


def test_a_pack_on_two_ranks_trains_each_member_as_it_trains_alone(tmp_path):
    assets = make_assets(tmp_path.parent / "engine_assets_ranks")
    cfg = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=2, every=5)
    (tmp_path / "pack.yaml").write_text(PACK)
    proc = run(torchrun([str(ROOT / "tests" / "pack_worker.py"), str(tmp_path), str(cfg), str(tmp_path / "pack.yaml"),
                         "ranks"]), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads((tmp_path / "ranks.json").read_text())
    for packed, alone, diffs in zip(report["pack"], report["alone"], report["vs_alone"]):
        assert packed["world_size"] == alone["world_size"] == 2
        assert packed["status"] == alone["status"] == "finished" and packed["step"] == alone["step"] == 16
        for name, (diff, scale) in diffs.items():
            assert diff <= TOLERANCE * max(1.0, scale), (name, diff)
    assert report["again"] == report["pack"]  # the finished pack read back, its inputs not checked again
