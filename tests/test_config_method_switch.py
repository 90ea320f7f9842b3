"""A method switch by override or in a later file carries the keys the method decides; what the
method leaves open is never guessed, and the error names every key to add; a contradiction
given in one place is an error naming both keys."""
from __future__ import annotations

import pytest

from spt_dist.config import ConfigError, load_config
from spt_dist.rundir import config_hash

DEEP = "configs/study/spt.yaml"  # SPT-deep: 8 prompts, deep, k-means


@pytest.mark.parametrize("method", ["linear", "full"])
def test_switching_to_a_method_without_prompts_needs_one_override(method):
    cfg = load_config(DEEP, [f"method.name={method}"])
    m = cfg.method
    assert (m.name, m.prompt_length, m.deep, m.init) == (method, 0, False, "vpt")
    # The same run as the method's own preset file gives: one run folder, not one per preset it came from.
    preset = load_config(DEEP, [f"method.name={method}", "method.prompt_length=0", "method.deep=false",
                                "method.init=vpt"])
    assert config_hash(cfg) == config_hash(preset)


def test_a_run_file_switching_method_after_its_defaults(tmp_path):
    run = tmp_path / "linear.yaml"
    run.write_text("defaults: [base, model/vit_tiny_p7_28, method/vpt_deep, data/fmnist_tune]\n"
                   "method: {name: linear}\n")
    m = load_config(str(run)).method
    assert (m.name, m.prompt_length, m.deep) == ("linear", 0, False)


def test_switching_spt_to_vpt_takes_vpts_initialisation():
    m = load_config(DEEP, ["method.name=vpt"]).method
    assert (m.name, m.init, m.prompt_length, m.deep) == ("vpt", "vpt", 8, True)  # the prompts are kept


@pytest.mark.parametrize("overrides, says", [
    (["method.name=linear", "method.prompt_length=4"], "config key 'method.prompt_length' = 4 contradicts "
                                                       "method.name=linear"),
    (["method.prompt_length=4", "method.name=linear"], "contradicts method.name=linear"),  # order does not matter
    (["method.name=full", "method.deep=true"], "config key 'method.deep' = True contradicts method.name=full"),
])
def test_a_contradiction_given_together_is_refused(overrides, says):
    with pytest.raises(ConfigError, match=says):
        load_config(DEEP, overrides)


def test_a_contradiction_in_the_same_file_is_refused(tmp_path):
    run = tmp_path / "bad.yaml"
    run.write_text("defaults: [base]\nmethod: {name: linear, prompt_length: 10}\n")
    with pytest.raises(ConfigError, match=f"{run}: config key 'method.prompt_length' = 10 contradicts"):
        load_config(str(run))


@pytest.mark.parametrize("method, adds", [
    ("vpt", "add method.prompt_length=N (the presets: 50"),
    ("spt", "add method.prompt_length=N and method.init=kmeans"),
])
def test_switching_to_prompts_names_every_key_to_add(method, adds):
    with pytest.raises(ConfigError, match="config key 'method.prompt_length'") as err:
        load_config("configs/method/linear.yaml", [f"method.name={method}"])
    assert adds in str(err.value)
    fixed = ["method.prompt_length=20"] + (["method.init=kmeans"] if method == "spt" else [])
    assert load_config("configs/method/linear.yaml", [f"method.name={method}", *fixed]).method.prompt_length == 20


@pytest.mark.parametrize("value, says", [
    ("[tb]", "'tb' is not allowed; allowed: a list of any of 'tensorboard', 'wandb', 'mlflow'"),
    ("[wandb,wandb]", "names 'wandb' twice"),
])
def test_run_loggers_are_checked(value, says):
    with pytest.raises(ConfigError, match=f"config key 'run.loggers'.*{says}"):
        load_config(DEEP, [f"run.loggers={value}"])
    assert load_config(DEEP, ["run.loggers=[]"]).run.loggers == []


def test_tracker_settings_do_not_change_the_run():
    base = load_config(DEEP)
    tracked = load_config(DEEP, ["run.loggers=[wandb,mlflow]", "run.wandb_project=p", "run.wandb_mode=online",
                                 "run.mlflow_tracking_uri=http://tracker:5000", "run.mlflow_experiment=e"])
    assert config_hash(tracked) == config_hash(base)  # a resume may add or drop a tracker
