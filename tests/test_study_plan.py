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
    assert "hours of the runs' wall time" in out and "h training" in out and "GFLOP/s" in out
    assert "h evaluation and prototype passes" in out and "72 jobs x 20 s, assumed" in out


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


def test_cost_counts_forward_passes_as_the_engine_makes_them(root):
    from dataclasses import replace

    from spt_dist.engine.preflight import training_samples
    from spt_dist.study.cost import STARTUP_S, estimate, feature_cached, forward_samples

    plan = build_plan(load_spec(_spec(root)))
    cell = next(c for c in plan.cells if c.key == "linear__backbone-vit_micro_p4_16__data.fraction-0.5")
    search, final = plan.search[cell.key][0], plan.final(cell, cell.grid()[0])[0]
    assert training_samples(final.cfg) == 48  # half of the 96 training images
    # A linear probe under the small preset trains on the feature cache: one pass over train and
    # val (engine/features.py), then none; the final run's test pass once.
    assert feature_cached(search.cfg) and forward_samples(search.cfg) == 48 + 12
    assert forward_samples(final.cfg) == 48 + 12
    uncached = replace(search.cfg, method=replace(search.cfg.method, feature_cache="never"))
    assert forward_samples(uncached) == 12 * 2  # val (12 images) after each of 2 epochs
    every3 = replace(uncached, run=replace(uncached.run, eval_every=3), optim=replace(uncached.optim, epochs=7))
    assert forward_samples(every3) == 12 * 3  # epochs 3, 6 and the last (7)

    vcell = next(c for c in plan.cells if c.key == "vpt_deep__backbone-vit_micro_p4_16__data.fraction-0.5")
    vpt = plan.search[vcell.key][0].cfg
    assert not vpt.method.track_alignment and forward_samples(vpt) == 12 * 2  # no prototype pass
    aligned = replace(vpt, method=replace(vpt.method, track_alignment=True))
    assert forward_samples(aligned) == 12 * 2 + 48  # the alignment reference's prototypes: every training image
    spt_some = replace(vpt, method=replace(vpt.method, name="spt", init="kmeans", init_images=20))
    assert forward_samples(spt_some) == 12 * 2 + 20
    drawn = replace(spt_some, method=replace(spt_some.method, init_images=100, init_replacement=True,
                                             init_transform="train"))
    assert forward_samples(drawn) == 12 * 2 + 100  # 100 augmented draws from 48 images

    # Two search runs of one cell share their prototypes through the cache: priced once.
    runs = [replace(r, cfg=replace(r.cfg, method=replace(r.cfg.method, track_alignment=True)))
            for r in plan.search[vcell.key]]
    huge = 1e30  # FLOP/s: only counts matter below
    one = estimate(runs[:1], training_samples, {}, huge)
    two = estimate(runs, training_samples, {}, huge)
    assert two["forward_seconds"] == pytest.approx(one["forward_seconds"] * (24 * 2 + 48) / (24 + 48))
    # A packed cell's search runs are one job: one set-up.
    assert two["jobs"] == 2 and two["startup_seconds"] == 2 * STARTUP_S and not two["startup_measured"]
    packed = estimate(runs, training_samples, {}, huge, packed=[vcell.key])
    assert packed["jobs"] == 1 and packed["startup_seconds"] == STARTUP_S
    assert packed["total_seconds"] == pytest.approx(packed["seconds"] + packed["forward_seconds"] + STARTUP_S)


def test_cost_measures_setup_from_earlier_runs_and_skips_odd_folders(root):
    from spt_dist.config.load import to_yaml
    from spt_dist.study.cost import flops_per_sample, forward_samples, measured_rates, measured_startup, reference_runs

    plan = build_plan(load_spec(_spec(root)))
    cell = next(c for c in plan.cells if c.key == "vpt_deep__backbone-vit_micro_p4_16__data.fraction-0.5")
    cfg = plan.search[cell.key][0].cfg
    pool = root / "startup_pool"
    rows = [(30.0, 10.0, None), (17.0, 10.0, None), (12.0, 10.0, None), (99.0, 1.0, 4)]  # the last: a pack member
    for i, (wall, train, pack) in enumerate(rows):
        run = pool / f"run{i}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(to_yaml(cfg))
        extra = f', "pack_size": {pack}' if pack else ""
        (run / "results.json").write_text(f'{{"status": "finished", "wall_s": {wall}, "train_s": {train}, '
                                          f'"samples_per_s": {100.0 * (i + 1)}{extra}}}')
    for i, text in enumerate(["[]", "null", '{"status": "finished", "wall_s": "12s", "train_s": [1]}', "{"]):
        odd = pool / f"odd{i}"
        odd.mkdir()
        (odd / "config.yaml").write_text(to_yaml(cfg))
        (odd / "results.json").write_text(text)
    (pool / "noconfig").mkdir()
    (pool / "noconfig" / "results.json").write_text('{"status": "finished", "wall_s": 5, "train_s": 1}')
    # FLOP/s at which this config's forward passes take 2 s: set-up = wall - train - 2
    flops = flops_per_sample(cfg, backward=False) * forward_samples(cfg) / 2.0
    refs = reference_runs(pool)
    # the pack member, unreadable results and the folder without a config are no references; the
    # finished one with non-numeric times is, and each figure below skips its bad fields
    assert len(refs) == 4
    assert measured_startup(refs, flops) == pytest.approx(5.0)  # the median of 18, 5 and 0 (clamped)
    assert measured_startup(reference_runs(root / "nothing_here"), flops) is None
    assert list(measured_rates(refs).values()) == [300.0]  # the fastest lone run; the pack member's is the pack's




def test_a_selection_made_from_an_earlier_spec_s_runs_is_set_aside_not_reused(root, tmp_path, capfd):
    import json

    from spt_dist.study.select import made_from, read_selection, select

    def cell_runs(text):
        plan = build_plan(load_spec(_spec(root, text, "sel.yaml")))
        cell = next(c for c in plan.cells if c.key == "vpt_deep__backbone-vit_micro_p4_16__data.fraction-0.5")
        return cell, plan.search[cell.key]

    def finish(runs, values):
        for r, v in zip(runs, values):
            r.run_dir.mkdir(parents=True, exist_ok=True)
            (r.run_dir / "results.json").write_text(json.dumps({"status": "finished", "val_top1": v}))

    text = SPEC.replace("out_dir: {root}/study", f"out_dir: {tmp_path}/study").replace("runs_dir: {root}/pool",
                                                                                      f"runs_dir: {tmp_path}/pool")
    cell, before = cell_runs(text)
    finish(before, [60.0, 50.0])
    first = select(tmp_path / "study", cell, before, "val_top1")
    assert first["chosen"] == {"optim.lr": 0.05}
    # The spec is edited (more epochs): other search runs, where the other lr wins.
    cell, after = cell_runs(text.replace("protocol:", "protocol:\n  tune: [data.stage=tune, optim.epochs=3]"))
    assert {r.name for r in after}.isdisjoint({r.name for r in before})
    assert not made_from(read_selection(tmp_path / "study", cell), after, "val_top1")
    assert select(tmp_path / "study", cell, after, "val_top1", write=False) is None  # plan / status / report:
    assert not list((tmp_path / "study" / "selections").glob("*.stale-*"))  # they only read
    assert select(tmp_path / "study", cell, after, "val_top1") is None  # new runs not finished: nothing chosen yet
    assert "made from other search runs" in capfd.readouterr().err
    stale = tmp_path / "study" / "selections" / f"{cell.key}.json.stale-1"
    assert json.loads(stale.read_text())["chosen"] == {"optim.lr": 0.05}
    finish(after, [40.0, 70.0])
    second = select(tmp_path / "study", cell, after, "val_top1")
    assert second["chosen"] == {"optim.lr": 0.5} and read_selection(tmp_path / "study", cell) == second
    assert select(tmp_path / "study", cell, after, "val_top1", write=False) == second  # what the report shows
    assert select(tmp_path / "study", cell, after, "val_top1") == second  # and kept from now on
    assert not made_from(second, after, "best_val_top1")  # made on another metric: stale


@pytest.mark.parametrize("base", ["demo", "protocol/vpt_vtab.yaml"])
def test_a_study_whose_base_is_a_config_name_reads_back_from_its_folder(tmp_path, monkeypatch, base):
    """`base:` may name a config of the package's configs/ folder, as run files' `defaults` do:
    the spec saved in out_dir names that file, so status and report given the folder plan it."""
    from spt_dist.config.load import CONFIG_ROOT
    from spt_dist.study.spec import save_spec

    monkeypatch.chdir(tmp_path)  # no `demo` here: found under configs/ only
    spec = tmp_path / "named.yaml"
    spec.write_text(f"name: named\nbase: {base}\nruns_dir: {tmp_path}/pool\nout_dir: {tmp_path}/study\n"
                    "axes: {data.fraction: [1.0]}\nmethods: {vpt: {search: {optim.lr: [0.01, 0.1]}}}\n"
                    "protocol: {metric: val_top1, seeds: [0]}\n")
    before = build_plan(load_spec(spec), check=False)
    save_spec(before.spec)
    again = load_spec(tmp_path / "study")
    assert Path(again.base) == (CONFIG_ROOT / (base if base.endswith(".yaml") else base + ".yaml")).resolve()
    after = build_plan(again, check=False)
    assert [r.run_dir for c in after.cells for r in after.search[c.key]] == \
        [r.run_dir for c in before.cells for r in before.search[c.key]]
