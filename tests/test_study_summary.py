"""`spt study report` and `spt study status` of a study folder, on results written from a known
power law: they read results files only (the shards moved away), fit both exponents, draw both
fitted curves, list what is missing and the selection warnings; a failed run's error line."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from engine_helpers import ROOT
from spt_dist.cli import main as spt
from spt_dist.study.plan import build_plan
from spt_dist.study.spec import load_spec, save_spec

SPEC = """
name: synth
base: {root}/base.yaml
runs_dir: {root}/pool
out_dir: {root}/study
axes:
  backbone:
    - {{model.name: vit_micro_p4_16}}
    - {{model.name: vit_micro_reg_p4_16}}
  data.fraction: [0.25, 1.0]
methods:
  linear:
    overrides: [method.name=linear, method.prompt_length=0, method.deep=false, method.init=vpt]
    search: {{optim.lr: [0.01], optim.weight_decay: [0.0, 0.001]}}
protocol: {{seeds: [0, 1, 2]}}
launch: {{cluster: local, folder: {root}/jobs, tasks_per_node: 1, timeout_min: 5}}
"""
BASE = """
model: {{name: vit_micro_p4_16}}
method: {{track_alignment: false}}
data: {{root: {shards}, batch_size: 8, eval_batch_size: 16}}
optim: {{name: adamw, lr: 0.01, epochs: 2, warmup_epochs: 0}}
run: {{progress: false}}
"""
PARAMS = {"vit_micro_p4_16": 1.0e6, "vit_micro_reg_p4_16": 4.0e6}  # written into the results
B_SAMPLES, B_PARAMS = 0.3, 0.2  # error (%) = 600 * samples^-0.3 * params^-0.2, 1 % noise


SKIP = "linear__backbone-vit_micro_p4_16__data.fraction-0.25"   # one final run never ran


def _study(root: Path, text: str = SPEC):
    from spt_dist.data.synthetic import tiny_shards

    tiny_shards(root / "shards", {"train": [48, 48], "val": [12], "test": [12]}, num_classes=3, size=16)
    (root / "base.yaml").write_text(BASE.format(shards=root / "shards"))
    (root / "spec.yaml").write_text(text.format(root=root))
    return build_plan(load_spec(root / "spec.yaml"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The study's out_dir, with its spec saved as `spt study run` saves it, every run's
    results written, and the shards moved away."""
    root = tmp_path_factory.mktemp("summary")
    plan = _study(root)
    _finish(plan, SKIP)
    save_spec(plan.spec)
    os.rename(root / "shards", root / "moved")  # data (and weights) gone: results suffice
    return root / "study"


def _write(run_dir: Path, results: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(dict(status="finished", **results)))


def _finish(plan, skip_final: str) -> None:
    """Search: weight decay changes nothing (a tie). Final: the power law; one final run of
    `skip_final` never ran."""
    from spt_dist.study.driver import survey

    for cell in plan.cells:
        for r in plan.search[cell.key]:
            _write(r.run_dir, {"val_top1": 49.9})
    p = survey(plan)
    rng = random.Random(3)
    for cell in plan.cells:
        for r in p.final[cell.key]:
            if cell.key == skip_final and r.seed == 2:
                continue
            n, params = 96 * r.cfg.data.fraction, PARAMS[r.cfg.model.name]
            err = 600 * n ** -B_SAMPLES * params ** -B_PARAMS * (1 + 0.01 * rng.gauss(0, 1))
            _write(r.run_dir, {"top1": 100 - err, "train_samples": int(n), "backbone_params": int(params),
                               "trainable_params": 10, "wall_s": 36.0, "device": "cpu"})


def test_report_and_status_of_a_study_folder_read_results_only(finished, capsys):
    skip, study = SKIP, str(finished)
    assert spt(["study", "status", study]) == 0
    assert f"{skip:60} final  2 done, 1 pending" in capsys.readouterr().out
    assert spt(["study", "report", study]) == 0
    out = capsys.readouterr().out
    assert f"incomplete: {skip}: 2 of 3 final runs finished" in out
    report = finished / "report"
    md = (report / "study.md").read_text()
    assert f"- {skip}: 2 of 3 final runs finished" in md
    tie = "linear__backbone-vit_micro_p4_16__data.fraction-1: 2 search points tie at 49.9 (they differ in " \
          "optim.weight_decay, which gave the same value here: a saturated metric, or a setting that does not " \
          "matter at this size)"
    assert tie in md and "optim.lr=0.01;optim.weight_decay=0.0" in md  # the first in grid order
    fits = {(f["error_vs"], f["method"], f["at"]): f for f in _csv(report / "fits.csv")}
    assert len(fits) == 2 + 2  # over samples per backbone, over parameters per training-set size
    for (x, _, _), f in fits.items():
        true = B_SAMPLES if x == "train_samples" else B_PARAMS
        assert abs(float(f["exponent"]) - true) <= 3 * float(f["exponent_se"]) + 1e-3, f
    rows = _csv(report / "study.csv")
    assert len(rows) == 4 and {r["n"] for r in rows} == {"3", "2"}
    assert all(float(r["cpu_hours"]) > 0 for r in rows)
    for name in ("top1_vs_data.png", "top1_vs_params.png", "scaling_fit.png"):
        assert (report / name).stat().st_size > 1000


def test_the_fit_figure_draws_the_curve_against_samples_and_against_parameters(finished):
    from spt_dist.study.summary import fit_figure, fits, rows

    table, _ = rows(build_plan(load_spec(finished), check=False))
    fig = fit_figure([r for r in table if r["top1"] is not None], fits(table))
    samples, params = fig.axes
    assert samples.get_xlabel() == "training samples" and params.get_xlabel() == "backbone parameters"
    # one fitted line per fit (2 backbones; 2 training-set sizes), labelled with its exponent
    assert sum("b=" in (line.get_label() or "") for line in samples.lines) == 2
    assert sum("b=" in (line.get_label() or "") for line in params.lines) == 2


def test_status_shows_the_error_of_a_failed_run(tmp_path, capsys, monkeypatch):
    """A search run whose local job failed (its rendezvous never succeeded): status names it with
    the job's last line, and exits 1."""
    from spt_dist.study.progress import record
    from spt_dist.study.submit import submit_run

    plan = _study(tmp_path, SPEC.replace("    - {{model.name: vit_micro_reg_p4_16}}\n", "")
                  .replace("[0.25, 1.0]", "[1.0]"))
    save_spec(plan.spec)
    run = plan.search[plan.cells[0].key][0]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    sub = submit_run(run.cfg, train_fn="test_study_rendezvous:_always_taken")
    deadline = time.time() + 120
    while not sub.job.done() and time.time() < deadline:
        time.sleep(0.5)
    record(plan.spec.out_dir, [{"run_dir": str(sub.run_dir), "job_id": str(sub.job.job_id),
                                "job_folder": str(sub.job_folder), "stage": "search"}])
    capsys.readouterr()
    assert spt(["study", "status", str(tmp_path / "study")]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "failed (attempt 1)" in x)
    assert line.strip().startswith(run.name) and "StartupError: the run could not start" in line
    assert "submit it again" in line


def test_a_folder_without_a_saved_spec_is_one_error_line(tmp_path, capsys):
    assert spt(["study", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spt: error:") and "spec.yaml" in err and "\n" not in err


def _csv(path: Path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))
