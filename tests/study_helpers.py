"""A miniature study for the end-to-end tests (local executor and SLURM): the tests' micro
backbone on tiny shards, one data fraction x VPT-deep, a 2-point lr search, 2 seeds."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

BASE = """
model: {{name: vit_micro_p4_16, checkpoint: {backbone}}}
method: {{name: vpt, deep: true, prompt_length: 2, init: vpt, track_alignment: false}}
data: {{root: {shards}, batch_size: 8, eval_batch_size: 16}}
optim: {{name: adamw, lr: 0.01, epochs: 1, warmup_epochs: 0}}
run: {{progress: false, log_every: 1, checkpoint_every: 1000}}
launch: {{cpus_per_task: 1, timeout_min: 20, signal_delay_s: 60}}
"""

SPEC = """
name: mini
base: {root}/base.yaml
runs_dir: {root}/pool
out_dir: {root}/study
axes:
  data.fraction: [1.0]
methods:
  vpt_deep:
    search: {{optim.lr: [0.003, 0.05]}}
protocol:
  metric: val_top1
  seeds: [0, 1]
launch: {{cluster: {cluster}, array_parallelism: 2}}
"""


def make_study(root: Path, cluster: str, pack_search: bool = False, search: str = "") -> Path:
    """The miniature spec; pack_search: a cell's search stage as one packed task; search: another
    search grid (YAML flow mapping)."""
    from engine_helpers import make_assets

    assets = make_assets(root / "assets")
    (root / "base.yaml").write_text(BASE.format(backbone=assets["backbone"], shards=assets["shards"]))
    text = SPEC.format(root=root, cluster=cluster)
    if pack_search:
        text = text.replace("  seeds: [0, 1]\n", "  seeds: [0, 1]\n  pack_search: true\n")
    if search:
        text = text.replace("search: {optim.lr: [0.003, 0.05]}", f"search: {search}")
    spec = root / "mini.yaml"
    spec.write_text(text)
    return spec


def starts(run_dir: Path) -> List[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "start"]


def check_finished_study(spec_path: Path) -> Dict:
    """Selection is the argmax of the search runs' val_top1, every final run finished, every run
    trained once; returns {cell key: selection}."""
    from spt_dist.rundir import read_results
    from spt_dist.study.driver import survey
    from spt_dist.study.plan import build_plan
    from spt_dist.study.spec import load_spec

    plan = build_plan(load_spec(spec_path))
    p = survey(plan)
    assert len(p.final) == len(plan.cells) == 1
    selections = {}
    for cell in plan.cells:
        search = {r.point["optim.lr"]: read_results(r.run_dir) for r in plan.search[cell.key]}
        assert all(res["status"] == "finished" and res["top1"] is None for res in search.values())  # no test pass
        for r in plan.search[cell.key]:  # the configured lr and weight decay, beside the effective lr
            res = search[r.point["optim.lr"]]
            assert res["base_lr"] == r.point["optim.lr"] and res["weight_decay"] == r.cfg.optim.weight_decay
        best = max(search, key=lambda lr: (search[lr]["val_top1"], -list(search).index(lr)))
        sel = json.loads((plan.spec.out_dir / "selections" / f"{cell.key}.json").read_text())
        assert sel["chosen"] == {"optim.lr": best} and sel["value"] == search[best]["val_top1"]
        finals = p.final[cell.key]
        assert [r.cfg.run.seed for r in finals] == [0, 1]
        for r in finals:
            res = read_results(r.run_dir)
            assert res["status"] == "finished" and isinstance(res["top1"], float) and res["val_top1"] is None
            assert r.cfg.optim.lr == best == res["base_lr"] and res["weight_decay"] == r.cfg.optim.weight_decay
        selections[cell.key] = sel
    for state in p.states:
        assert len(starts(Path(state))) == 1, state  # trained exactly once
    return selections


def check_report(out_dir: Path, cells: int = 1, seeds: int = 2) -> None:
    """The report `spt study run` wrote when the study finished: table (Markdown, CSV), fits, plots."""
    import csv

    report = Path(out_dir) / "report"
    with open(report / "study.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == cells and all(int(r["n"]) == seeds and float(r["top1"]) >= 0 for r in rows)
    assert all(r["selected"].startswith("optim.lr=") for r in rows)
    md = (report / "study.md").read_text()
    assert md.startswith("# Study ") and "sample standard deviation (n-1)" in md and "| method |" in md
    assert (report / "fits.csv").read_text().startswith("error_vs,method,at,exponent,exponent_se")
    for name in ("top1_vs_data.png", "top1_vs_params.png", "scaling_fit.png"):
        assert (report / name).stat().st_size > 1000, name
