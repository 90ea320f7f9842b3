"""Study specs expand into the right runs per stage, validated as a whole before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from spt_dist.cli import main as spt
from spt_dist.config import ConfigError
from spt_dist.study.errors import StudyError
from spt_dist.study.plan import FINAL, SEARCH, build_plan
from spt_dist.study.spec import load_spec

SPEC = """
name: tiny
base: {base}
runs_dir: {root}/pool
out_dir: {root}/study
axes:
  backbone:
    - {{model.name: vit_micro_p4_16}}
    - {{model.name: vit_micro_reg_p4_16}}
  data.fraction: [0.25, 0.5, 1.0]
methods:
  linear:
    overrides: [method.name=linear, method.prompt_length=0, method.deep=false, method.init=vpt]
    search: {{optim.lr: [0.01, 0.1], optim.weight_decay: [0.0, 0.001]}}
  vpt_deep:
    overrides: {{method.name: vpt, method.deep: true, method.prompt_length: 2, method.init: vpt}}
    search: {{optim.lr: [0.05, 0.5]}}
protocol:
  metric: val_top1
  seeds: [0, 1, 2]
launch: {{cluster: local, array_parallelism: 2}}
"""

BASE = """
model: {{name: vit_micro_p4_16}}
method: {{track_alignment: false}}
data: {{root: {shards}, batch_size: 8, eval_batch_size: 16}}
optim: {{name: adamw, lr: 0.01, epochs: 2, warmup_epochs: 0}}
run: {{progress: false, log_every: 1}}
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from spt_dist.data.synthetic import tiny_shards

    root = tmp_path_factory.mktemp("plan")
    tiny_shards(root / "shards", {"train": [48, 48], "val": [12], "test": [12]}, num_classes=3, size=16)
    (root / "base.yaml").write_text(BASE.format(shards=root / "shards"))
    return root


def _spec(root: Path, text: str = SPEC, name: str = "spec.yaml") -> Path:
    path = root / name
    path.write_text(text.format(base=root / "base.yaml", root=root))
    return path


def test_two_capacities_three_fractions_two_methods(root):
    plan = build_plan(load_spec(_spec(root)))
    assert len(plan.cells) == 2 * (2 * 3)
    per_method = {m: sum(len(plan.search[c.key]) for c in plan.cells if c.method.name == m) for m in ("linear", "vpt_deep")}
    assert per_method == {"linear": 6 * 4, "vpt_deep": 6 * 2}  # each method its own grid
    cell = next(c for c in plan.cells if c.key == "linear__backbone-vit_micro_reg_p4_16__data.fraction-0.5")
    runs = plan.search[cell.key]
    assert [r.point for r in runs] == [{"optim.lr": 0.01, "optim.weight_decay": 0.0},
                                       {"optim.lr": 0.01, "optim.weight_decay": 0.001},
                                       {"optim.lr": 0.1, "optim.weight_decay": 0.0},
                                       {"optim.lr": 0.1, "optim.weight_decay": 0.001}]
    cfg = runs[3].cfg
    assert (cfg.model.name, cfg.data.fraction, cfg.optim.lr, cfg.optim.weight_decay, cfg.method.name) == \
        ("vit_micro_reg_p4_16", 0.5, 0.1, 0.001, "linear")
    assert cfg.data.stage == "tune" and cfg.data.test_split is None  # the search never reads test
    final = plan.final(cell, {"optim.lr": 0.1, "optim.weight_decay": 0.0})
    assert [r.stage for r in final] == [FINAL] * 3 and [r.cfg.run.seed for r in final] == [0, 1, 2]
    assert final[0].cfg.data.stage == "final" and final[0].cfg.data.val_split is None
    # Stable names: the same spec expands to the same run folders, named by config hash.
    again = build_plan(load_spec(_spec(root)))
    assert [r.name for r in again.search[cell.key]] == [r.name for r in runs]
    assert all(r.run_dir.parent == root / "pool" for r in runs) and len({r.name for r in runs}) == 4
    assert runs[0].stage == SEARCH


def test_same_config_in_two_studies_is_one_run_folder(root):
    plan_a = build_plan(load_spec(_spec(root)))
    other = SPEC.replace("name: tiny", "name: other").replace("out_dir: {root}/study", "out_dir: {root}/other")
    plan_b = build_plan(load_spec(_spec(root, other, "other.yaml")))
    a = {str(r.run_dir) for runs in plan_a.search.values() for r in runs}
    b = {str(r.run_dir) for runs in plan_b.search.values() for r in runs}
    assert a == b


@pytest.mark.parametrize("change, error, message", [
    (("data.fraction: [0.25, 0.5, 1.0]", "data.fractoin: [0.25]"), ConfigError, "unknown config key 'data.fractoin'"),
    (("data.fraction: [0.25, 0.5, 1.0]", "data.fraction: [0.25, 1.5]"), ConfigError,
     "config key 'data.fraction' = 1.5 is out of range"),
    (("method.prompt_length: 2,", "method.prompt_length: 0,"), ConfigError, "needs at least one prompt token"),
    (("metric: val_top1", "metric: val_top"), StudyError, "protocol.metric 'val_top' is not allowed"),
    (("seeds: [0, 1, 2]", "seeds: []"), StudyError, "protocol.seeds must be a non-empty list"),
    (("name: tiny", "name: tiny\nmethodz: 1"), StudyError, "unknown key(s) methodz"),
])
def test_bad_spec_is_refused_before_anything_runs(root, change, error, message):
    path = _spec(root, SPEC.replace(*change), "bad.yaml")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_plan(load_spec(path))
    assert not (root / "pool").exists() or not any((root / "pool").iterdir())


def test_study_plan_command_prints_runs_and_cost(root, capsys):
    assert spt(["study", "plan", str(_spec(root))]) == 0
    out = capsys.readouterr().out
    assert "12 cells (2 method(s) x 2 x 3 axis values)" in out
    assert "search: 36 runs (linear 24, vpt_deep 12)" in out and "final: 36 runs (3 seed(s) per cell" in out
    assert "training hours" in out and "GFLOP/s" in out
    assert "rank-hours in all" in out and "of start-up" in out


def test_named_axis_label_tells_apart_backbones_of_one_architecture(root):
    # Supervised and MAE weights of the same architecture: model.name alone would give both
    # values the label 'vit_micro_p4_16' (refused as duplicate); a `label` names each cell.
    text = SPEC.replace("- {{model.name: vit_micro_p4_16}}", "- {{label: sup, model.name: vit_micro_p4_16}}") \
               .replace("- {{model.name: vit_micro_reg_p4_16}}", "- {{label: mae, model.name: vit_micro_p4_16}}")
    plan = build_plan(load_spec(_spec(root, text, "labels.yaml")))
    assert {c.labels["backbone"] for c in plan.cells} == {"sup", "mae"}
    cell = next(c for c in plan.cells if c.key == "vpt_deep__backbone-mae__data.fraction-0.5")
    assert plan.search[cell.key][0].cfg.model.name == "vit_micro_p4_16"  # the label is no override
    same = SPEC.replace("vit_micro_reg_p4_16}}", "vit_micro_p4_16}}")
    with pytest.raises(StudyError, match="two values with the same label"):
        load_spec(_spec(root, same, "same.yaml"))


def test_cost_counts_evaluation_passes_and_measured_startup(root):
    from dataclasses import replace

    from spt_dist.config.load import to_yaml
    from spt_dist.engine.preflight import training_samples
    from spt_dist.study.cost import STARTUP_S, estimate, forward_samples, measured_startup

    plan = build_plan(load_spec(_spec(root)))
    cell = next(c for c in plan.cells if c.key == "linear__backbone-vit_micro_p4_16__data.fraction-0.5")
    search, final = plan.search[cell.key][0], plan.final(cell, cell.grid()[0])[0]
    assert forward_samples(search.cfg) == 12 * 2  # val (12 images) after each of 2 epochs, no test
    assert forward_samples(final.cfg) == 12  # test once, no val
    every2 = replace(search.cfg, run=replace(search.cfg.run, eval_every=3), optim=replace(search.cfg.optim, epochs=7))
    assert forward_samples(every2) == 12 * 3  # epochs 3, 6 and the last (7)
    assert training_samples(final.cfg) == 48  # half of the 96 training images
    spt_all = replace(final.cfg, method=replace(final.cfg.method, name="spt", init="kmeans", prompt_length=2,
                                                init_images=0))
    assert forward_samples(spt_all) == 12 + 48  # + prototypes from the whole (fraction of the) training split
    spt_some = replace(spt_all, method=replace(spt_all.method, init_images=20))
    assert forward_samples(spt_some) == 12 + 20

    pool = root / "startup_pool"
    for i, (wall, train) in enumerate([(30.0, 10.0), (17.0, 10.0), (12.0, 10.0)]):
        run = pool / f"run{i}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(to_yaml(final.cfg))
        (run / "results.json").write_text(f'{{"status": "finished", "wall_s": {wall}, "train_s": {train}}}')
    fast = 1e30  # FLOP/s: evaluation costs nothing, what is left is start-up
    assert measured_startup(pool, {}, fast) == pytest.approx(7.0)  # the median of 20, 7 and 2
    assert measured_startup(root / "nothing_here", {}, fast) is None

    cost = estimate([search, final], training_samples, {}, 1e9, startup_s=None)
    assert cost["startup_seconds"] == 2 * STARTUP_S and not cost["startup_measured"]
    assert cost["total_seconds"] == pytest.approx(cost["seconds"] + cost["eval_seconds"] + 2 * STARTUP_S)
    assert cost["eval_seconds"] > 0
