"""`spt report` on hand-written run folders: grouping, mean/std over seeds, unfinished runs
left out, the plot written."""
import csv
import json

import pytest

from spt_dist.cli import main
from spt_dist.study.report import backbone_params_m, collect, table

RUNS = [  # method, deep, backbone, fraction, seed, top1, status
    ("vpt", True, "vit_micro_p4_16", 1.0, 0, 60.0, "finished"),
    ("vpt", True, "vit_micro_p4_16", 1.0, 1, 62.0, "finished"),
    ("spt", True, "vit_micro_p4_16", 1.0, 0, 70.0, "finished"),
    ("spt", True, "vit_tiny_p7_28", 1.0, 0, 80.0, "finished"),
    ("spt", True, "vit_tiny_p7_28", 0.1, 0, 50.0, "finished"),
    ("spt", True, "vit_tiny_p7_28", 0.5, 0, 99.0, "interrupted"),
]


@pytest.fixture
def runs(tmp_path):
    for i, (method, deep, backbone, fraction, seed, top1, status) in enumerate(RUNS):
        run = tmp_path / "runs" / f"group{i % 2}" / f"run{i}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(
            f"model:\n  name: {backbone}\nmethod:\n  name: {method}\n  deep: {str(deep).lower()}\n"
            f"data:\n  fraction: {fraction}\nrun:\n  seed: {seed}\n")
        (run / "results.json").write_text(json.dumps({"status": status, "top1": top1, "seed": seed}))
    return tmp_path / "runs"


def test_table_groups_and_averages_seeds(runs):
    rows = table(collect(str(runs)), ["method", "backbone", "data_fraction"])
    assert len(rows) == 4  # the interrupted run is left out
    vpt = [r for r in rows if r["method"] == "vpt-deep"][0]
    assert vpt["top1"] == 61.0 and vpt["runs"] == 2 and vpt["std"] == pytest.approx(1.414, abs=1e-3)
    assert all(r["std"] is None for r in rows if r["runs"] == 1) and any(r["runs"] == 1 for r in rows)


def test_report_command_writes_table_csv_and_plot(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--by", "method,backbone", "-o", str(out)]) == 0
    md = (out / "report.md").read_text().splitlines()
    assert "std: sample standard deviation (n-1)" in md[0]
    assert md[2] == "| method | backbone | top1 | std | runs | differs |" and len(md) == 4 + 3
    assert "| spt-deep | vit_tiny_p7_28 | 65.0 | 21.213 | 2 | data.fraction |" in md  # pooled: flagged
    with open(out / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["backbone"], float(r["top1"])) for r in rows} >= {("spt-deep", "vit_tiny_p7_28", 65.0)}
    assert (out / "scaling.png").stat().st_size > 5000
    assert "not in the table" in capsys.readouterr().out


def test_capacity_grows_with_backbone():
    sizes = [backbone_params_m(n) for n in ("vit_micro_p4_16", "vit_tiny_p7_28", "vit_b16", "vit_l16")]
    assert sizes == sorted(sizes) and 80 < sizes[2] < 90  # ViT-B/16 has ~86 M parameters


def test_empty_folder_is_an_error(tmp_path):
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "out")]) == 2


def test_metric_names_the_column(runs, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--by", "method,backbone,data_fraction", "--metric", "seed", "-o", str(out)]) == 0
    assert (out / "report.md").read_text().splitlines()[2] == "| method | backbone | data_fraction | seed | std | runs |"


def test_group_pooling_other_configs_is_flagged(runs, tmp_path, capsys):
    lr_run = runs / "group0" / "run0" / "config.yaml"  # a vpt-deep seed with another lr
    lr_run.write_text(lr_run.read_text() + "optim:\n  lr: 0.5\n")
    out = tmp_path / "report"
    assert main(["report", str(runs), "--by", "method,backbone,data_fraction", "-o", str(out)]) == 0
    warning = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warning) == 1 and "method=vpt-deep" in warning[0] and "optim.lr" in warning[0]
    md = (out / "report.md").read_text().splitlines()
    assert md[2].endswith("| differs |") and any("vpt-deep" in line and "optim.lr" in line for line in md)
    assert "run.seed" not in (out / "report.md").read_text()


def test_unknown_by_key_is_an_error(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--by", "method,optim.lr", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "available:" in err and "model.name" in err


def test_fixed_fraction_is_stated():
    from spt_dist.study.report import fixed_note

    assert fixed_note("data fraction", {"spt-deep": 0.5, "vpt-deep": 0.5}) == "data fraction = 0.5"
    assert fixed_note("data fraction", {"spt-deep": 1.0, "vpt-deep": 0.5}) == "data fraction: spt-deep 1, vpt-deep 0.5"


def test_unknown_metric_is_an_error_listing_the_available_ones(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--metric", "val_top", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--metric val_top: no run's results.json has a numeric 'val_top'" in err and "top1" in err


def test_plot_never_averages_runs_that_differ_in_more_than_the_seed(runs):
    from spt_dist.study.report import plot_series

    series, _ = plot_series(collect(str(runs)), "data.fraction", "params_m")
    # spt-deep runs differ in the backbone only at fraction 1.0: each gets its own line.
    assert sorted(series) == ["spt-deep model.name=vit_micro_p4_16", "spt-deep model.name=vit_tiny_p7_28",
                              "vpt-deep"]
    assert series["vpt-deep"] == [(1.0, 61.0, pytest.approx(1.414, abs=1e-3))]
