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
    assert md[2] == "| method | backbone | top1 | std | runs | differs |" and md[4 + 3:][:2] == ["", "The lines of scaling.png:"]
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

    series, _, settings = plot_series(collect(str(runs)), "data.fraction", "params_m")
    # spt-deep runs differ in the backbone only at fraction 1.0: each gets its own line.
    assert sorted(series) == ["spt-deep backbone=vit_micro_p4_16", "spt-deep backbone=vit_tiny_p7_28", "vpt-deep"]
    assert settings["spt-deep backbone=vit_micro_p4_16"] == "model.name=vit_micro_p4_16" and settings["vpt-deep"] == ""
    assert series["vpt-deep"] == [(1.0, 61.0, pytest.approx(1.414, abs=1e-3))]


@pytest.fixture
def big_study(tmp_path):
    """3 methods x 2 backbones x 4 fractions x 2 seeds; the backbone's checkpoint path and image
    size change with it, the weight decay is the same everywhere, spt-deep ran two learning rates."""
    backbones = {"vit_micro_p4_16": 16, "vit_tiny_p7_28": 28}
    i = 0
    for method, deep, lrs in (("vpt", False, [0.1]), ("vpt", True, [0.1]), ("spt", True, [0.1, 0.5])):
        for backbone, size in backbones.items():
            for fraction in (0.1, 0.25, 0.5, 1.0):
                for lr in lrs:
                    for seed in (0, 1):
                        run = tmp_path / "runs" / f"run{i}"
                        run.mkdir(parents=True)
                        (run / "config.yaml").write_text(
                            f"model:\n  name: {backbone}\n  img_size: {size}\n  checkpoint: /datasets/weights/"
                            f"imagenet21k/augreg/{backbone}_in21k_augreg_ft_in1k.npz\nmethod:\n  name: {method}\n"
                            f"  deep: {str(deep).lower()}\ndata:\n  fraction: {fraction}\noptim:\n  lr: {lr}\n"
                            f"  weight_decay: 0.01\nrun:\n  seed: {seed}\n")
                        (run / "results.json").write_text(json.dumps({"status": "finished", "top1": 50 + i % 7}))
                        i += 1
    return tmp_path / "runs"


def test_scaling_labels_stay_short_and_name_only_what_tells_lines_apart(big_study):
    from spt_dist.study.report import MAX_LABEL, plot_series

    records = collect(str(big_study))
    series, _, settings = plot_series(records, "data.fraction", "params_m")
    assert sorted(series) == sorted([f"{m} backbone={b}" for m in ("vpt", "vpt-deep")
                                     for b in ("vit_micro_p4_16", "vit_tiny_p7_28")]
                                    + [f"spt-deep backbone={b} lr={lr}" for b in ("vit_micro_p4_16", "vit_tiny_p7_28")
                                       for lr in ("0.1", "0.5")])
    assert all(len(pts) == 4 for pts in series.values()) and max(map(len, series)) <= MAX_LABEL
    # The keys that go with the backbone or are equal everywhere are in the report's table only.
    full = settings["spt-deep backbone=vit_tiny_p7_28 lr=0.5"]
    assert full == ("model.checkpoint=/datasets/weights/imagenet21k/augreg/vit_tiny_p7_28_in21k_augreg_ft_in1k.npz, "
                    "model.img_size=28, model.name=vit_tiny_p7_28, optim.lr=0.5")
    # On the capacity axis the backbone is the x: one line per method (and lr), through both backbones.
    series, fixed_at, _ = plot_series(records, "params_m", "data.fraction")
    assert sorted(series) == ["spt-deep lr=0.1", "spt-deep lr=0.5", "vpt", "vpt-deep"]
    assert all(len(pts) == 2 for pts in series.values()) and set(fixed_at.values()) == {1.0}


def test_report_lists_the_lines_in_full(big_study, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(big_study), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    lines = md.split("The lines of scaling.png:\n\n", 1)[1].splitlines()
    assert lines[0] == "| panel | line | settings |" and len(lines) == 2 + 8 + 4
    assert "| training data fraction | vpt backbone=vit_micro_p4_16 | model.checkpoint=/datasets/weights/" in md
    assert "| backbone parameters | vpt | - |" in md and (out / "scaling.png").stat().st_size > 5000


def test_labels_too_long_or_alike_once_shortened_are_numbered():
    from spt_dist.study.report import MAX_LABEL, series_labels

    many = {f"method.key{k}": "x" * 12 for k in range(4)}  # only key0 tells the two spt lines apart
    both = [("linear", {"method.a": a * 20, "optim.b": b * 20}) for a in "vw" for b in "12"]  # 52 characters
    labels, full = series_labels([("spt", {**many, "method.key0": "a"}), ("spt", many), *both,
                                  ("vpt", {"model.checkpoint": "/w/a_long_name_1_weights.npz"}),
                                  ("vpt", {"model.checkpoint": "/w/a_long_name_2_weights.npz"}),
                                  ("vpt", {"model.checkpoint": "/w/b.npz"})])
    assert labels == ["spt key0=a", "spt key0=xxxxxxxxxxxx", "linear (1)", "linear (2)", "linear (3)", "linear (4)",
                      "vpt (1)", "vpt (2)", "vpt checkpoint=b.npz"]
    assert full[6] == "model.checkpoint=/w/a_long_name_1_weights.npz" and max(map(len, labels)) <= MAX_LABEL


def _lr_sweep(folder, runs):
    """Finished vpt runs given as (lr, data fraction, backbone, top1)."""
    for i, (lr, fraction, backbone, top1) in enumerate(runs):
        run = folder / f"run{i}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"model:\n  name: {backbone}\nmethod:\n  name: vpt\ndata:\n  fraction: "
                                         f"{fraction}\noptim:\n  lr: {lr}\n")
        (run / "results.json").write_text(json.dumps({"status": "finished", "top1": top1}))
    return collect(str(folder))


def test_a_setting_that_happens_to_pair_with_the_x_still_splits_the_lines(tmp_path):
    """An lr sweep where lr=0.1 finished only at fraction 1.0 and lr=0.01 only at 0.5 (each lr
    pairs one to one with the fraction), and one where each lr ran on one backbone only (one to
    one with the backbone's size): two lines on that panel each time, never one joined line;
    the backbone's own settings are what the capacity panel's x says, and split nothing there."""
    from spt_dist.study.report import plot_series

    records = _lr_sweep(tmp_path / "fractions", [(0.1, 1.0, "vit_tiny_p7_28", 70.0),
                                                 (0.01, 0.5, "vit_tiny_p7_28", 40.0)])
    series, _, settings = plot_series(records, "data.fraction", "params_m")
    assert series == {"vpt lr=0.01": [(0.5, 40.0, 0.0)], "vpt lr=0.1": [(1.0, 70.0, 0.0)]}
    assert settings == {"vpt lr=0.01": "optim.lr=0.01", "vpt lr=0.1": "optim.lr=0.1"}
    records = _lr_sweep(tmp_path / "backbones", [(0.1, 1.0, "vit_tiny_p7_28", 70.0),
                                                 (0.01, 1.0, "vit_micro_p4_16", 40.0),
                                                 (0.01, 1.0, "vit_micro_p4_16", 50.0)])
    series, _, settings = plot_series(records, "params_m", "data.fraction")
    micro, tiny = backbone_params_m("vit_micro_p4_16"), backbone_params_m("vit_tiny_p7_28")
    assert series == {"vpt lr=0.01": [(micro, 45.0, pytest.approx(7.071, abs=1e-3))],
                      "vpt lr=0.1": [(tiny, 70.0, 0.0)]}
    assert settings == {"vpt lr=0.01": "optim.lr=0.01", "vpt lr=0.1": "optim.lr=0.1"}


def test_a_model_setting_that_is_not_the_backbones_name_splits_the_capacity_lines(tmp_path):
    """tiny with pool=token and micro with pool=mean: the pool pairs one to one with the size but
    changes what is trained, so the capacity panel draws two lines, each labelled by its pool."""
    from spt_dist.study.report import plot_series

    for i, (backbone, pool, top1) in enumerate([("vit_tiny_p7_28", "token", 70.0), ("vit_micro_p4_16", "mean", 40.0)]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "config.yaml").write_text(f"model:\n  name: {backbone}\n  pool: {pool}\nmethod:\n  name: vpt\n")
        (run / "results.json").write_text(json.dumps({"status": "finished", "top1": top1}))
    series, _, settings = plot_series(collect(str(tmp_path)), "params_m", "data.fraction")
    assert sorted(settings.values()) == ["model.pool=mean", "model.pool=token"], settings
    assert len(series) == 2 and all(len(points) == 1 for points in series.values())
