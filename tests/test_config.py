"""Config composition, overrides and rejection of bad values (each message names the key)."""
import argparse
from pathlib import Path

import pytest

from spt_dist.config import ConfigError, compose, load_config, to_yaml
from spt_dist.config.load import CONFIG_ROOT

DEMO = str(CONFIG_ROOT / "demo.yaml")


def test_demo_composes_base_model_method_data():
    cfg = load_config(DEMO)
    assert cfg.model.name == "vit_tiny_p7_28"          # from model/vit_tiny_p7_28.yaml
    assert cfg.method.name == "spt" and cfg.method.deep  # from method/spt_deep.yaml
    assert cfg.method.prompt_length == 8                 # the run file wins over the method file
    assert cfg.data.root == "data/fmnist_tune"           # from data/fmnist_tune.yaml
    assert cfg.run.checkpoint_every == 50                # from base.yaml
    assert cfg.optim.name == "adamw"


def test_overrides_win_and_are_typed():
    cfg = load_config(DEMO, ["method.prompt_length=20", "optim.lr=0.5", "data.fraction=0.25"])
    assert cfg.method.prompt_length == 20
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.data.fraction == 0.25


def test_later_defaults_override_earlier(tmp_path: Path):
    run = tmp_path / "run.yaml"
    run.write_text("defaults: [method/vpt_deep, method/spt_shallow]\n")
    cfg = load_config(str(run))
    assert cfg.method.name == "spt" and not cfg.method.deep and cfg.method.prompt_length == 100


def test_defaults_relative_to_the_file(tmp_path: Path):
    (tmp_path / "mine.yaml").write_text("optim:\n  epochs: 7\n  warmup_epochs: 1\n")
    run = tmp_path / "run.yaml"
    run.write_text("defaults: [mine, method/linear]\n")
    cfg = load_config(str(run))
    assert cfg.optim.epochs == 7 and cfg.method.name == "linear"


def test_a_file_included_twice_is_not_a_cycle(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("defaults: [base, model/vit_b16]\n")
    (tmp_path / "run.yaml").write_text("defaults: [a, base]\noptim:\n  epochs: 3\n  warmup_epochs: 0\n")
    cfg = load_config(str(tmp_path / "run.yaml"))
    assert cfg.model.name == "vit_b16" and cfg.optim.epochs == 3
    (tmp_path / "one.yaml").write_text("defaults: method/linear\n")  # a single name, not a list
    assert load_config(str(tmp_path / "one.yaml")).method.name == "linear"


def test_normalisation_and_cache_overrides(tmp_path: Path):
    from spt_dist.model import input_spec

    cfg = load_config(DEMO, ["model.mean=[0.1,0.2,0.3]", "model.std=[1,2,3]", "method.cache_dir="])
    assert input_spec(cfg) == (28, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    assert cfg.method.cache_dir is None  # no cache


def test_resolved_yaml_reloads_identically(tmp_path: Path):
    cfg = load_config(DEMO, ["method.init=mean_pool"])
    out = tmp_path / "config.yaml"
    out.write_text(to_yaml(cfg))
    assert load_config(str(out)) == cfg


@pytest.mark.parametrize("overrides, key, allowed", [
    (["model.nope=1"], "model.nope", "allowed keys under 'model'"),
    (["nope.x=1"], "nope", "allowed keys under the top level"),
    (["optim.lr=fast"], "optim.lr", "could not be converted"),
    (["method.deep=maybe"], "method.deep", "wrong type"),
    (["data.fraction=0"], "data.fraction", "(0.0, 1.0]"),
    (["data.fraction=1.01"], "data.fraction", "(0.0, 1.0]"),
    (["method.init=random"], "method.init", "'kmeans'"),
    (["distributed.zero_stage=4"], "distributed.zero_stage", "0, 1, 2, 3"),
    (["method.name=linear", "method.deep=true"], "method.deep", "contradicts method.name=linear"),
    (["method.name=vpt", "method.init=kmeans"], "method.init", "contradicts method.name=vpt"),
    (["method.prompt_length=0"], "method.prompt_length", "at least one prompt"),
    (["optim.warmup_epochs=20", "optim.epochs=5"], "optim.warmup_epochs", "must not exceed"),
    (["model.name=vit_giant"], "model.name", "vit_b16"),
    (["launch.gpus_per_node=4", "launch.tasks_per_node=1"], "launch.tasks_per_node", "one task per GPU"),
    (["data.val_split=test"], "data.val_split", "test split"),
    (["optim.lr=-1"], "optim.lr", "out of range"),
    (["method.prompt_length"], "method.prompt_length", "key=value"),
    (["data.fraction=nan"], "data.fraction", "not a finite number"),
    (["optim.weight_decay=inf"], "optim.weight_decay", "not a finite number"),
    (["model.in_chans=1"], "model.in_chans", "None, 3"),
    (["method.init_candidates=4"], "method.init_candidates", "at least method.prompt_length"),
    (["model.img_size=30"], "model.img_size", "patch size 7"),
    (["method.init=mean_pool", "method.prompt_length=20", "model.img_size=14"], "method.prompt_length",
     "at most 4"),
    (["model.mean=[0.5,0.5,0.5]"], "model.mean", "together"),
    (["model.mean=[0.5,0.5]", "model.std=[1,1]"], "model.mean", "3 finite values"),
    (["model.mean=[0.5,0.5,0.5]", "model.std=[1,0,1]"], "model.std", "> 0"),
    (["method=5"], "method", "is a section"),
    (["launch.timeout_min=2", "launch.signal_delay_s=120"], "launch.signal_delay_s", "less than half"),
])
def test_bad_values_name_the_key(overrides, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, overrides)
    message = str(err.value)
    assert f"'{key}'" in message and allowed in message, message


def test_missing_files_reported_when_checked(tmp_path: Path):
    cfg_args = [f"data.root={tmp_path}/nowhere", "model.checkpoint=/nonexistent/w.safetensors"]
    load_config(DEMO, cfg_args)  # fine on paper
    with pytest.raises(ConfigError, match="data.root"):
        load_config(DEMO, cfg_args, check_files=True)


def test_unknown_config_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(str(bad))
    loop = tmp_path / "loop.yaml"
    loop.write_text("defaults: [loop]\n")
    with pytest.raises(ConfigError, match="includes itself"):
        compose(str(loop))


def test_every_shipped_config_is_valid():
    """Run files load; study specs (a top-level `axes`) load as specs."""
    import yaml

    from spt_dist.study.spec import load_spec

    specs = 0
    for path in sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if not p.name.startswith(".")):
        raw = yaml.safe_load(path.read_text()) or {}
        if "grid" in raw or "config" in raw:
            continue  # a sweep file: the next test
        if "axes" in raw:
            load_spec(path)
            specs += 1
        elif "recipe" in raw:  # an options file of `spt pretrain --config`
            from spt_dist.engine.cli import PRETRAIN_DEFAULTS, pretrain_options
            opts = pretrain_options(argparse.Namespace(config=str(path), **dict.fromkeys(
                ("recipe", "shards", "out", *PRETRAIN_DEFAULTS["mae"]))))
            assert opts["recipe"] == raw["recipe"]
        else:
            load_config(str(path))
    assert specs >= 3


def test_cli_show_prints_resolved_config_and_rejects_bad(capsys):
    from spt_dist.cli import main

    assert main(["config", "show", DEMO, "method.prompt_length=33"]) == 0
    assert "prompt_length: 33" in capsys.readouterr().out
    assert main(["config", "show", DEMO, "method.pool=token"]) == 2
    assert "method.pool" in capsys.readouterr().err


def test_cli_show_reads_a_run_folders_config_and_survives_a_closed_pipe(tmp_path, capsys):
    import subprocess
    import sys

    from spt_dist.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config(DEMO, ["method.prompt_length=33"])))
    assert main(["config", "show", str(run)]) == 0
    assert "prompt_length: 33" in capsys.readouterr().out
    assert main(["config", "show", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder without config.yaml: not a run folder" in capsys.readouterr().err
    # output piped into a reader that is gone (`| head -1` once it has its line): no traceback, exit 0
    proc = subprocess.run(["bash", "-c", f"'{sys.executable}' -m spt_dist.cli config show '{run}' | true; "
                           "echo ${PIPESTATUS[0]}"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout == "0\n" and "Error" not in proc.stderr, proc.stderr


def test_every_shipped_sweep_expands_to_valid_runs():
    from spt_dist.config.sweep import expand, load_sweep_file

    sweeps = sorted(CONFIG_ROOT.rglob("*.sweep.yaml"))
    assert sweeps
    for sweep in sweeps:
        configs, grid, overrides = load_sweep_file(str(sweep))
        points = expand(configs, grid, overrides)
        assert len({p.suffix for p in points}) == len(points) > 1  # one run folder each
        for point in points:
            load_config(point.config, point.overrides)


def test_fast_composition_equals_the_source_by_source_one():
    """`compose` merges configs as plain data in one step; the result must be what merging file
    by file and override by override into the schema gives, for every shipped run file."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from spt_dist.config.load import compose, compose_by_source

    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(str(p) for p in root.rglob("*.yaml") if "defaults" in p.read_text() or p.parent.name == "protocol")
    assert len(files) >= 5
    overrides = ["optim.lr=0.3", "data.fraction=0.5", "model.mean=[0.5,0.5,0.5]", "model.std=[1,1,1]",
                 "launch.sbatch_extra.mail-type=END", "run.name=''"]
    for path in files:
        fast, slow = compose(path, overrides), compose_by_source(path, overrides)
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(slow), path
