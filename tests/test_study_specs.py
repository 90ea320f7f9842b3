"""The shipped study specs (configs/study/*.yaml) expand into the runs they promise, with their
data and weight paths pointed at stand-ins built here (tiny shards with the same split names,
real .npz archives)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from spt_dist.study.plan import FINAL, SEARCH, cells, make_run
from spt_dist.study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    from spt_dist.data.synthetic import tiny_shards

    root = tmp_path_factory.mktemp("specs")
    tiny_shards(root / "vtab", {"train800": [160], "val200": [40], "train800val200": [200], "test": [40]},
                num_classes=4, size=8)
    tiny_shards(root / "fgvc", {"train": [800, 800], "val": [40], "test": [40]}, num_classes=4, size=8)
    for name in ("B_16", "L_16", "H_14"):
        np.savez(root / f"imagenet21k_ViT-{name}.npz", stand_in=np.zeros(2))
    return root


def _copy(spec: str, root: Path, subs) -> Path:
    text = (ROOT / "configs" / "study" / spec).read_text()
    for old, new in subs:
        text = text.replace(old, new)
    text = re.sub(r"^base: \.\./", f"base: {ROOT}/configs/", text, flags=re.M)
    text = text.replace("runs_dir: runs/pool", f"runs_dir: {root}/pool").replace("out_dir: runs/", f"out_dir: {root}/")
    path = root / spec
    path.write_text(text)
    return path


def test_vtab_capacity_spec(stand_ins):
    spec = load_spec(_copy("vtab_capacity.yaml", stand_ins, [("/weights/", f"{stand_ins}/"),
                                                           ("data/vtab/caltech101", str(stand_ins / "vtab"))]))
    all_cells = cells(spec)  # every cell's first and last search config, and its final stage, are built
    assert len(all_cells) == 9 and sum(len(c.grid()) for c in all_cells) == 9 * 40
    for c in all_cells:
        make_run(spec, c, SEARCH, c.grid()[0], None)
    cfg = make_run(spec, all_cells[-1], SEARCH, all_cells[-1].grid()[-1], None).cfg
    assert (cfg.model.name, cfg.method.name, cfg.data.train_split, cfg.data.val_split, cfg.data.test_split) == \
        ("vit_h14", "spt", "train800", "val200", None)
    assert (cfg.optim.name, cfg.optim.lr_scaling, cfg.optim.lr, cfg.optim.weight_decay) == ("sgd", "linear", 50.0, 0.01)
    final = [make_run(spec, all_cells[0], FINAL, all_cells[0].grid()[0], s) for s in spec.seeds]
    assert [r.cfg.run.seed for r in final] == [42, 44, 82, 100, 800]
    assert final[0].cfg.data.train_split == "train800val200" and final[0].cfg.data.val_split is None


def test_fgvc_fraction_spec(stand_ins):
    spec = load_spec(_copy("fgvc_fraction.yaml", stand_ins, [("/weights/", f"{stand_ins}/"),
                                                           ("data/fgvc/cub", str(stand_ins / "fgvc"))]))
    all_cells = cells(spec)
    assert len(all_cells) == 3 * 4 and {len(c.grid()) for c in all_cells} == {9 * 4}
    runs = [make_run(spec, c, SEARCH, c.grid()[-1], None) for c in all_cells]
    assert sorted({r.cfg.data.fraction for r in runs}) == [0.1, 0.2, 0.4, 0.8]
    assert {r.cfg.optim.lr for r in runs} == {50.0}


def test_mini_fmnist_spec(tmp_path):
    from spt_dist.data.synthetic import tiny_shards

    tiny_shards(tmp_path / "fm", {"train": [2000, 2000], "val": [60], "test": [60]}, num_classes=5, size=8)
    spec = load_spec(_copy("mini_fmnist.yaml", tmp_path, [("base: ../demo.yaml", f"base: {ROOT}/configs/demo.yaml")]))
    import dataclasses

    from spt_dist.study import plan as plan_mod

    spec = dataclasses.replace(spec, launch=spec.launch + (f"launch.folder={tmp_path}/jobs",))
    spec.tune = spec.tune + (f"data.root={tmp_path}/fm",)
    spec.final = spec.final + (f"data.root={tmp_path}/fm",)
    plan = plan_mod.build_plan(spec)
    assert len(plan.cells) == 9 and sum(len(v) for v in plan.search.values()) == 18
    assert {r.cfg.optim.epochs for runs in plan.search.values() for r in runs} == {3}
