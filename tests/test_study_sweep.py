"""Sweep expansion: grids, several run files, sweep YAML files, and the errors."""
import pytest

from spt_dist.config import ConfigError
from spt_dist.config.sweep import expand, load_sweep_file, parse_grid


def test_grid_product_with_distinct_suffixes():
    points = expand(["a.yaml"], parse_grid(["method.prompt_length=10,20", "optim.lr=0.1,0.01"]), ["optim.epochs=2"])
    assert len(points) == 4
    assert points[0].overrides == ["optim.epochs=2", "method.prompt_length=10", "optim.lr=0.1"]
    assert len({p.suffix for p in points}) == 4 and points[3].suffix == "__prompt_length-20_lr-0.01"


def test_several_run_files_are_crossed_with_the_grid():
    points = expand(["x/vpt.yaml", "y/spt.yaml"], parse_grid(["optim.lr=1,2"]))
    assert [p.config for p in points] == ["x/vpt.yaml"] * 2 + ["y/spt.yaml"] * 2
    assert points[2].suffix == "__spt_lr-1"


@pytest.mark.parametrize("axis", ["optim.lr", "=1,2", "optim.lr="])
def test_bad_grid_axis(axis):
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_grid([axis])


def test_sweep_file(tmp_path):
    (tmp_path / "run.yaml").write_text("optim:\n  lr: 0.1\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("config: run.yaml\noverrides: [optim.epochs=2]\ngrid:\n  method.prompt_length: [4, 8]\n")
    configs, grid, overrides = load_sweep_file(str(sweep))
    assert configs == [str(tmp_path / "run.yaml")] and grid == {"method.prompt_length": ["4", "8"]}
    assert overrides == ["optim.epochs=2"]
    sweep.write_text("grids: {}\n")
    with pytest.raises(ConfigError, match="unknown sweep key"):
        load_sweep_file(str(sweep))


def test_duplicate_run_folders_are_rejected(tmp_path):
    from spt_dist.config import load_config
    from spt_dist.study import submit_study

    cfg = load_config(None, ["run.name=same", f"launch.folder={tmp_path}", "launch.cluster=debug"])
    with pytest.raises(ConfigError, match="share a run folder"):
        submit_study([cfg, cfg])


def test_sweep_file_without_grid_is_a_sweep_file(tmp_path):
    from spt_dist.config.sweep import is_sweep_file

    (tmp_path / "run.yaml").write_text("optim:\n  lr: 0.1\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("config: run.yaml\noverrides: [optim.epochs=2]\n")
    assert is_sweep_file(str(sweep)) and not is_sweep_file(str(tmp_path / "run.yaml"))
    assert load_sweep_file(str(sweep))[0] == [str(tmp_path / "run.yaml")]
