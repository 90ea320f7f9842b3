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


def test_report_command_writes_table_csv_and_plot(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--by", "method,backbone", "-o", str(out)]) == 0
    md = (out / "report.md").read_text().splitlines()
    assert md[0] == "| method | backbone | top1 | std | runs |" and len(md) == 2 + 3
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
