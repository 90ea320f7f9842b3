"""The protocol presets resolve to the official recipes (tables written here, one row per setting,
each with the line of the official code it comes from), the two data stages switch with one
key, and `spt config show --protocol` lists exactly the departures."""
import json
from pathlib import Path

import pytest

from spt_dist.config import ConfigError, load_config, to_yaml
from spt_dist.config.load import CONFIG_ROOT
from spt_dist.config.protocol import ALWAYS, EXEMPT, GRIDS, departures, protocol_names, recipe_keys, treatment

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

# KMnP/vpt at 4410440.
VPT = {
    "method.name": "vpt",
    "method.init": "vpt",                 # src/models/vit_prompt/vit.py:56-62 uniform init
    "method.prompt_dropout": 0.1,         # demo.ipynb:126, 148, 171, 814, 830: every per-task deep command
    "model.mean": IMAGENET[0],            # src/data/transforms.py:8-10, src/data/datasets/tf_dataset.py:75
    "model.std": IMAGENET[1],             # src/data/transforms.py:9, src/data/datasets/tf_dataset.py:76
    "model.pool": "auto",                 # CLS; MAE: x[:, 1:].mean(1) (src/models/vit_prompt/vit_mae.py:122-124)
    "model.img_size": 224,                # src/configs/config.py:124 DATA.CROPSIZE
    "model.head_init": "kaiming",         # src/models/mlp.py:53-57, special_bias=True (vit_models.py:164)
    "model.mae_head_norm": "new",         # src/models/vit_backbones/vit_mae.py:21-26
    "data.batch_size": 128,               # configs/base-prompt.yaml:25; per task 64 or 128 (demo.ipynb:123, 145, 168)
    "data.drop_last": False,              # src/data/loader.py:55-58: drop_last=False on one GPU
    "data.shuffle": "exact",              # RandomSampler on one GPU (src/data/loader.py:39, 44); ours on any world size
    "optim.name": "sgd",                  # configs/base-prompt.yaml:14
    "optim.momentum": 0.9,                # configs/base-prompt.yaml:15
    "optim.lr_scaling": "linear",         # tune_vtab.py:100, tune_fgvc.py:31
    "optim.lr": 0.1,                      # a base lr of the grid (tune_vtab.py:100, tune_fgvc.py:31 scale it)
    "optim.weight_decay": 0.01,           # a grid point (tune_vtab.py:251, tune_fgvc.py:157)
    "optim.prompt_weight_decay": 0.0,     # SGD: one weight decay (src/solver/optimizer.py:52-69)
    "optim.sgd_no_decay": "head_bias",    # src/solver/optimizer.py:60-62
    "optim.epochs": 100,                  # configs/base-prompt.yaml:19
    "optim.warmup_epochs": 10.0,          # configs/base-prompt.yaml:18
    "optim.lr_schedule": "per_epoch",     # src/engine/trainer.py:221
    "optim.warmup_from_zero": True,       # src/solver/lr_scheduler.py:57-58
    "optim.min_lr": 0.0,                  # src/solver/lr_scheduler.py:62-65
    "optim.label_smoothing": 0.0,         # src/solver/losses.py:57-67
    "optim.grad_clip": 0.0,               # src/engine/trainer.py:116-119
    "optim.grad_accum": 1,                # src/engine/trainer.py:116-119
    "precision.dtype": "fp32",            # src/engine/trainer.py:85-86
}
VPT_VTAB = dict(VPT, **{
    "data.preset": "vtab",                # src/data/datasets/tf_dataset.py:148-156: 224 x 224, bilinear
    "data.tune.train": "train800",        # tune_vtab.py:155-162; src/data/datasets/tf_dataset.py:177-182
    "data.tune.val": "val200",
    "data.tune.test": None,               # tune_vtab.py:162: no test loader while tuning
    "data.final.train": "train800val200",  # tune_vtab.py:164-173
    "data.final.val": None,               # val200 lies inside train800val200: not a validation split
    "data.final.test": "test",
})
VPT_FGVC = dict(VPT, **{
    "data.preset": "fgvc",                # src/data/transforms.py:14-40
    "data.tune.train": "train",           # train.py:68-71 (non-VTAB: the train split)
    "data.tune.val": "val",               # train.py:75
    "data.tune.test": None,               # a choice of ours: no test pass while tuning
    "data.final.train": "train",          # train.py:68-71; json_dataset.py:20-25 has no train+val
    "data.final.val": None,
    "data.final.test": "test",            # train.py:81
})
# WangYZ1608/Self-Prompt-Tuning at ce0754f.
SPT = {
    "method.name": "spt",
    "method.init": "random_sample",       # README.md:78, 110 --prompt_sample_type "random"
    "method.window_layout": "spt",        # train.py:144-150, 169-175
    "method.init_replacement": True,      # train.py:105 torch.randint
    "method.init_images": 0,              # train.py:102-103: len(train_data) draws
    "method.prompt_dropout": 0.0,         # Models/vpt.py: no prompt dropout
    "model.mean": IMAGENET[0],            # Dataset/VTAB.py:55, Dataset/FGVC.py:51
    "model.std": IMAGENET[1],
    "model.pool": "auto",                 # Models/vpt.py:35-36; Models/MAE_vpt.py:38-40
    "model.img_size": 224,                # train.py:107; Dataset/VTAB.py:46, Dataset/FGVC.py:42
    "model.head_init": "trunc_normal",    # train.py:250-251
    "model.head_init_std": 0.02,          # train.py:250
    "model.mae_head_norm": "pretrained",  # Models/MAE_vit.py:14-19, 33-35
    "data.batch_size": 32,                # README.md:80, 112 (global: train.py:72)
    "data.drop_last": True,               # train.py:87
    "data.shuffle": "exact",              # train.py:76-77: DistributedSampler(shuffle=True)
    "optim.name": "adamw",                # train.py:288-289
    "optim.lr_scaling": "none",           # train.py:289
    "optim.lr": 0.001,                    # README.md:115
    "optim.prompt_weight_decay": 0.01,    # README.md:113 --weight_decay 1e-2
    "optim.weight_decay": 3.0,            # README.md:114 --wd_head 3.0
    "optim.epochs": 100,                  # README.md:111
    "optim.warmup_epochs": 10.0,          # README.md:117
    "optim.lr_schedule": "per_iteration",  # train.py:426
    "optim.warmup_from_zero": True,       # utils.py:66-67
    "optim.min_lr": 1e-8,                 # README.md:116
    "optim.label_smoothing": 0.0,         # train.py:291
    "optim.grad_clip": 0.0,               # train.py:443-445
    "optim.grad_accum": 1,                # train.py:443-445
    "precision.dtype": "fp32",            # train.py:433: no autocast
}
SPT_VTAB = dict(SPT, **{
    "data.preset": "spt_vtab",            # Dataset/VTAB.py:51-63
    "method.init_transform": "eval",      # train.py:101, 109: the training transform, VTAB's = its evaluation one
    "data.tune.train": "train800",        # a choice of ours (SPT has no validation)
    "data.tune.val": "val200",
    "data.tune.test": None,
    "data.final.train": "train800val200",  # Dataset/VTAB.py:48
    "data.final.val": None,
    "data.final.test": "test",            # Dataset/VTAB.py:49
})
SPT_FGVC = dict(SPT, **{
    "data.preset": "spt_fgvc",            # Dataset/FGVC.py:47-59
    "method.init_transform": "train",     # train.py:101, 109: train_data[i], random resized crops (FGVC.py:47-51)
    "data.tune.train": "train",           # a choice of ours (SPT has no validation)
    "data.tune.val": "val",
    "data.tune.test": None,
    "data.final.train": "train",          # Dataset/FGVC.py:43
    "data.final.val": None,
    "data.final.test": "test",            # Dataset/FGVC.py:44
})
OFFICIAL = {"vpt_vtab": VPT_VTAB, "vpt_fgvc": VPT_FGVC, "spt_vtab": SPT_VTAB, "spt_fgvc": SPT_FGVC}


def _path(name: str) -> str:
    return str(CONFIG_ROOT / "protocol" / f"{name}.yaml")


def _get(cfg, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def test_the_four_presets_exist():
    assert protocol_names() == sorted(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_resolves_to_the_official_values(name):
    cfg = load_config(_path(name))
    table = OFFICIAL[name]
    wrong = {k: (_get(cfg, k), v) for k, v in table.items() if _get(cfg, k) != v}
    assert not wrong, f"{name}: (resolved, official) {wrong}"
    # Every value the preset file sets is pinned above (a new recipe key needs a row here).
    assert set(recipe_keys(name)) == set(table)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_one_key_switches_the_data_stage(name):
    tune = load_config(_path(name))
    assert tune.data.stage == "tune"
    assert (tune.data.train_split, tune.data.val_split, tune.data.test_split) == \
        (OFFICIAL[name]["data.tune.train"], OFFICIAL[name]["data.tune.val"], None)
    final = load_config(_path(name), ["data.stage=final"])
    assert (final.data.train_split, final.data.val_split, final.data.test_split) == \
        (OFFICIAL[name]["data.final.train"], None, "test")
    assert departures(final, name) == []  # both stages are the protocol


def test_a_split_key_that_contradicts_the_stage_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"'data.train_split' = 'train800val200' contradicts data.stage=tune.*"
                                          r"data.tune.train = 'train800'"):
        load_config(_path("vpt_vtab"), ["data.train_split=train800val200"])
    run = tmp_path / "run.yaml"
    run.write_text("defaults: [protocol/vpt_vtab]\ndata:\n  val_split: val200\n")  # agrees: fine
    assert load_config(str(run)).data.val_split == "val200"
    cfg = load_config(_path("vpt_vtab"), ["data.stage=custom", "data.train_split=train800val200",
                                          "data.val_split=null", "data.test_split=test"])
    assert cfg.data.train_split == "train800val200"
    with pytest.raises(ConfigError, match="'data.test_split'.*nothing would be evaluated"):
        load_config(None, ["data.val_split=null", "data.test_split=null"])
    with pytest.raises(ConfigError, match="'data.stage'.*'custom', 'tune', 'final'"):
        load_config(None, ["data.stage=later"])


def test_resolved_preset_reloads_identically(tmp_path: Path):
    from spt_dist.config import to_yaml

    for stage in ("tune", "final"):
        cfg = load_config(_path("spt_fgvc"), [f"data.stage={stage}"])
        (tmp_path / "config.yaml").write_text(to_yaml(cfg))
        assert load_config(str(tmp_path / "config.yaml")) == cfg


def test_departures_are_listed_with_both_values():
    cfg = load_config(_path("vpt_fgvc"), ["optim.name=adamw", "model.head_init=trunc_normal",
                                          "data.preset=spt_fgvc", "optim.lr=0.3"])
    got = {d.key: (d.ours, d.official) for d in departures(cfg, "vpt_fgvc")}
    assert got == {"optim.name": ("adamw", "sgd"), "model.head_init": ("trunc_normal", "kaiming"),
                   "data.preset": ("spt_fgvc", "fgvc"), "optim.lr": (0.3, 0.1)}
    # VPT tunes lr and weight decay over grids: any grid value is the recipe.
    assert departures(load_config(_path("vpt_fgvc"), ["optim.lr=25", "optim.weight_decay=0"]), "vpt_fgvc") == []
    assert departures(load_config(_path("vpt_vtab"), ["optim.lr=0.05"]), "vpt_vtab") == []
    assert [d.key for d in departures(load_config(_path("vpt_fgvc"), ["optim.lr=0.05"]), "vpt_fgvc")] == ["optim.lr"]
    # SPT's values are single settings, not grids: one per backbone.
    assert [d.key for d in departures(load_config(_path("spt_vtab"), ["optim.lr=0.05"]), "spt_vtab")] == ["optim.lr"]


def test_vpts_lr_is_judged_by_the_lr_it_trains_at():
    # tune_vtab.py:100 / tune_fgvc.py:31 train grid point b at b x batch / 256; demo.ipynb's final
    # commands pass that value with no scaling (base 25 at batch 128 as SOLVER.BASE_LR 12.5).
    def got(name, overrides):
        return {d.key: (d.ours, d.official) for d in departures(load_config(_path(name), overrides), name)}

    grid = GRIDS["vpt_vtab"]["optim.lr"][0]
    for batch in (64, 128):
        for base in (max(grid), min(grid)):  # grid points written as the lr they train at: the recipe
            trains_at = base * batch / 256
            unscaled = [f"data.batch_size={batch}", "optim.lr_scaling=none", f"optim.lr={trains_at!r}"]
            assert got("vpt_vtab", unscaled) == {}
    for name in ("vpt_vtab", "vpt_fgvc"):
        assert got(name, ["optim.lr_scaling=none", "optim.lr=12.5"]) == {}
    # An lr that trains at no grid point departs, the official value shown in the config's own lr_scaling.
    off = departures(load_config(_path("vpt_vtab"), ["optim.lr_scaling=none", "optim.lr=0.3"]), "vpt_vtab")
    assert [(d.key, d.ours, d.official) for d in off] == [("optim.lr", 0.3, 0.05)]  # the preset's 0.1 x 128/256
    assert "trains at 0.3, the recipe at 0.05" in off[0].note and "12.5" in off[0].note
    # The preset's base lr 0.1 given unscaled trains at 0.1 = 0.2 x 128/256: no grid point.
    assert got("vpt_vtab", ["optim.lr_scaling=none", "optim.lr=0.1"]) == {"optim.lr": (0.1, 0.05)}
    # With the recipe's scaling the grid is of base lrs, as before.
    assert got("vpt_vtab", ["optim.lr=12.5"]) == {"optim.lr": (12.5, 0.1)}


def test_spts_lr_is_judged_by_the_lr_it_trains_at():
    # SPT's train.py:289 uses its lr as given: 1e-3 at batch 32 is 8e-3 x 32 / 256 under linear scaling.
    def got(overrides):
        return {d.key: (d.ours, d.official) for d in departures(load_config(_path("spt_vtab"), overrides), "spt_vtab")}

    assert got(["optim.lr_scaling=linear", "optim.lr=0.008", "optim.min_lr=8e-8"]) == {}
    assert got(["optim.lr_scaling=linear", "optim.lr=0.008"]) == {"optim.min_lr": (1e-8, 8e-8)}
    assert got(["optim.lr_scaling=linear"]) == {"optim.lr": (0.001, 0.008), "optim.min_lr": (1e-8, 8e-8)}
    assert got(["optim.lr_scaling=linear", "optim.lr=0.4", "optim.min_lr=8e-8", "model.checkpoint_format=mae",
                "optim.weight_decay=0.5"]) == {}  # MAE's 5e-2


@pytest.mark.parametrize("name", ["spt_vtab", "spt_fgvc"])
def test_spts_recipe_follows_the_backbone(name):
    # MAE: README.md:82-83 (--wd_head 0.5, --lr 5e-2); MoCo v3: train_MoCo.py:100 (one image), 260 (std .01).
    def got(overrides, **kw):
        return {d.key: (d.ours, d.official) for d in departures(load_config(_path(name), overrides), name, **kw)}

    mae_recipe = ["model.checkpoint_format=mae", "optim.lr=0.05", "optim.weight_decay=0.5"]
    assert got(mae_recipe) == {}
    assert got(["model.checkpoint_format=mae"]) == {"optim.lr": (0.001, 0.05), "optim.weight_decay": (3.0, 0.5)}
    assert got(["model.checkpoint_format=mocov3"]) == {"model.head_init_std": (0.02, 0.01),
                                                       "method.init_images": (0, 1)}
    assert got(["model.checkpoint_format=mocov3", "model.head_init_std=0.01", "method.init_images=1"]) == {}
    for fmt in ("timm", "npz"):  # supervised: the preset's values
        assert got([f"model.checkpoint_format={fmt}"]) == {}
    # With model.checkpoint_format=auto: supervised, unless the caller passes the format it read.
    assert list(got(mae_recipe[1:])) == ["optim.lr", "optim.weight_decay"]
    assert got(mae_recipe[1:], fmt="mae") == {}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_every_setting_of_the_schema_is_judged(name):
    # A new schema key must be pinned by the presets, compared always, or exempted with a reason.
    how = treatment(name)
    assert "unjudged" not in how.values(), [k for k, v in how.items() if v == "unjudged"]
    assert {how[k] for k in recipe_keys(name) if k in how} <= {"recipe", "by depth", "by world size",
                                                              "by backbone", "global batch", "effective lr",
                                                              "stage"}
    stale = [k for k in list(ALWAYS) + list(EXEMPT) if not any(x == k or x.startswith(k) for x in how)]
    assert not stale, stale


@pytest.mark.parametrize("name, overrides, expected", [
    # Settings no preset file set before: each changes what the run computes.
    ("vpt_fgvc", ["data.fraction=0.1", "model.img_size=384", "data.shuffle=stream"],
     {"data.fraction": (0.1, 1.0), "model.img_size": (384, 224), "data.shuffle": ("stream", "exact")}),
    ("spt_vtab", ["data.drop_last=false"], {"data.drop_last": (False, True)}),  # SPT's train.py:87 drops it
    # data.stage=custom naming the final stage's training split and validating on val200 inside it.
    ("vpt_vtab", ["data.stage=custom", "data.train_split=train800val200", "data.val_split=val200",
                  "data.test_split=test"], {"data.val_split": ("val200", None)}),
    ("vpt_vtab", ["data.stage=custom", "data.train_split=train800", "data.val_split=val200",
                  "data.test_split=null"], {}),  # the tuning stage's splits, written out
    ("spt_fgvc", ["data.tune.val=test"], {"data.val_split": ("test", "val")}),
    ("spt_fgvc", ["data.final.train=trainval"], {}),  # the final table is not read by a tuning run
    # k-means settings are compared once the run uses k-means (the preset resolves to our defaults).
    ("spt_vtab", ["method.init=kmeans", "method.kmeans_iters=5"],
     {"method.init": ("kmeans", "random_sample"), "method.kmeans_iters": (5, 30)}),
    ("spt_vtab", ["method.kmeans_iters=5"], {}),  # unused without k-means
    ("vpt_vtab", ["method.window_layout=spt", "model.head_init_std=0.5"], {}),  # unused by VPT's init and head
    # A conditional setting the run uses is compared though the preset's own init does not use it:
    # SPT's mean pooling uses its `spt` windows (train.py:144-150).
    ("spt_vtab", ["method.init=mean_pool", "method.window_layout=even"],
     {"method.init": ("mean_pool", "random_sample"), "method.window_layout": ("even", "spt")}),
    ("spt_vtab", ["method.init=max_pool"], {"method.init": ("max_pool", "random_sample")}),
    # SPT's README.md:89: 20 prompts deep, 100 shallow.
    ("spt_vtab", ["method.prompt_length=10"], {"method.prompt_length": (10, 20)}),
    ("spt_fgvc", ["method.deep=false", "method.prompt_length=100"], {}),
    ("spt_fgvc", ["method.deep=false"], {"method.prompt_length": (20, 100)}),
    ("spt_vtab", ["data.on_bad_sample=skip", "distributed.deepspeed_json=ds.json"],
     {"data.on_bad_sample": ("skip", "error"), "distributed.deepspeed_json": ("ds.json", None)}),
])
def test_settings_the_preset_files_leave_to_defaults_are_compared(name, overrides, expected):
    got = {d.key: (d.ours, d.official) for d in departures(load_config(_path(name), overrides), name)}
    assert got == expected


def test_global_batch_is_compared_not_the_per_rank_one():
    # What the presets tell users to do on 8 ranks: VPT 128 / 8 with drop_last (its code drops the
    # last batch on more than one GPU), SPT 32 / 8.
    eight = load_config(_path("vpt_vtab"), ["data.batch_size=16", "launch.tasks_per_node=8", "data.drop_last=true"])
    assert departures(eight, "vpt_vtab") == []
    assert departures(load_config(_path("spt_vtab"), ["data.batch_size=4", "launch.tasks_per_node=8"]),
                      "spt_vtab") == []
    assert departures(load_config(_path("spt_vtab"), ["data.batch_size=8", "optim.grad_accum=4"]), "spt_vtab") == []
    alone = departures(load_config(_path("spt_vtab"), ["data.batch_size=64"]), "spt_vtab")
    assert [(d.key, d.ours, d.official) for d in alone] == [("global batch", 64, 32)]
    assert alone[0].note == "data.batch_size 64 x optim.grad_accum 1 x world size 1"
    # The world size may come from the command line (torchrun): VPT keeps the last batch on one rank only.
    one = load_config(_path("vpt_vtab"), ["data.batch_size=16"])
    assert [(d.key, d.ours, d.official) for d in departures(one, "vpt_vtab", world_size=8)] == \
        [("data.drop_last", False, True)]
    assert [d.key for d in departures(one, "vpt_vtab")] == ["global batch"]  # 16 on one rank
    assert [d.key for d in departures(eight, "vpt_vtab", world_size=1)] == ["data.drop_last", "global batch"]


@pytest.mark.parametrize("name", ["vpt_vtab", "vpt_fgvc"])
def test_vpts_batch_size_is_set_per_task(name):
    # DATA.BATCH_SIZE "64" for dmlab and eurosat, "128" for sun397 (demo.ipynb:123, 168, 145).
    for batch in (64, 128):
        assert departures(load_config(_path(name), [f"data.batch_size={batch}"]), name) == []
    two = load_config(_path(name), ["data.batch_size=32", "launch.tasks_per_node=2", "data.drop_last=true"])
    assert departures(two, name) == []  # global 64: a task's
    odd = {d.key: d for d in departures(load_config(_path(name), ["data.batch_size=96"]), name)}
    assert list(odd) == ["global batch"]
    assert "per task, one of {64, 128} (demo.ipynb:123" in odd["global batch"].note
    assert (odd["global batch"].ours, odd["global batch"].official) == (96, 128)


@pytest.mark.parametrize("name", ["vpt_vtab", "vpt_fgvc"])
def test_vpts_prompt_dropout_follows_the_prompt_depth(name, tmp_path: Path):
    # demo.ipynb: MODEL.PROMPT.DROPOUT "0.1" in every per-task deep command, "0.0" in the generic
    # VPT-deep one (:19-25); "we don't use dropout for VPT-shallow" (:28-34).
    assert load_config(_path(name)).method.prompt_dropout == 0.1
    shallow = tmp_path / "shallow.yaml"
    shallow.write_text(f"defaults: [protocol/{name}, method/vpt_shallow]\n")
    cfg = load_config(str(shallow))
    assert (cfg.method.deep, cfg.method.prompt_dropout) == (False, 0.0)
    assert departures(cfg, name) == []
    wrong = {d.key: (d.ours, d.official) for d in departures(load_config(str(shallow), ["method.prompt_dropout=0.1"]),
                                                             name)}
    assert wrong == {"method.prompt_dropout": (0.1, 0.0)}
    assert departures(load_config(_path(name), ["method.prompt_dropout=0.0"]), name) == []
    deep = departures(load_config(_path(name), ["method.prompt_dropout=0.2"]), name)
    assert [(d.key, d.ours, d.official) for d in deep] == [("method.prompt_dropout", 0.2, 0.1)]
    assert deep[0].note.startswith("0.1 or 0.0 deep, 0.0 shallow (") and "demo.ipynb:19-25" in deep[0].note


def test_the_demo_departs_from_every_protocol():
    demo = load_config(str(CONFIG_ROOT / "demo.yaml"))
    for name in OFFICIAL:
        keys = {d.key for d in departures(demo, name)}
        assert {"optim.epochs", "data.preset", "model.mean"} <= keys


def test_cli_show_protocol(capsys):
    from spt_dist.cli import main

    assert main(["config", "show", _path("spt_vtab"), "--protocol", "spt_vtab"]) == 0
    assert capsys.readouterr().out == ("no departures from protocol spt_vtab (configs/protocol/spt_vtab.yaml) "
                                       "on 1 rank (launch.nodes x launch.tasks_per_node), supervised weights' recipe "
                                       "(model.checkpoint_format=auto: model.checkpoint is not set; set mae or "
                                       "mocov3 for those weights)\n")
    assert main(["config", "show", _path("spt_vtab"), "model.checkpoint_format=mae", "--protocol", "spt_vtab"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["optim.lr", "0.001", "0.05"]
    assert "MAE weights' recipe (model.checkpoint_format)" in lines[-1]
    assert main(["config", "show", _path("vpt_vtab"), "data.batch_size=16", "--protocol", "vpt_vtab",
                 "--world-size", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["data.drop_last", "false", "true"]
    assert lines[2].startswith("1 setting(s) depart from protocol vpt_vtab on 8 ranks (--world-size)")
    assert main(["config", "show", _path("vpt_vtab"), "--world-size", "8"]) == 2
    assert "--world-size judges a run against a protocol" in capsys.readouterr().err
    assert main(["config", "show", _path("spt_vtab"), "optim.epochs=30", "model.mae_head_norm=new",
                 "--protocol", "spt_vtab"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["setting", "this", "config", "spt_vtab"]
    assert lines[1].split() == ["model.mae_head_norm", "new", "pretrained"]
    assert lines[2].split() == ["optim.epochs", "30", "100"]
    assert lines[3].startswith("2 setting(s) depart from protocol spt_vtab on 1 rank")
    with pytest.raises(SystemExit):
        main(["config", "show", _path("spt_vtab"), "--protocol", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_cli_show_protocol_judges_a_run_folder_on_the_world_size_it_trained_on(tmp_path: Path, capsys):
    """A run folder is judged on the world size its results.json records (one launched with
    torchrun on 8 ranks: its launch section says 1), --world-size still wins, and a folder
    without results is judged on its launch settings."""
    from spt_dist.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(load_config(_path("vpt_vtab"), ["data.batch_size=16"])))

    def show(*extra):
        assert main(["config", "show", str(run), "--protocol", "vpt_vtab", *extra]) == 0
        return capsys.readouterr().out.splitlines()[-1]

    assert "on 1 rank (launch.nodes x launch.tasks_per_node)" in show()
    (run / "results.json").write_text(json.dumps({"status": "interrupted", "world_size": 8, "world_sizes": [8]}))
    assert show().startswith("1 setting(s) depart from protocol vpt_vtab on 8 ranks (run/results.json)")
    assert "on 2 ranks (--world-size)" in show("--world-size", "2")
    (run / "results.json").write_text("{cut")
    assert "on 1 rank (launch.nodes x launch.tasks_per_node)" in show()


def test_cli_show_protocol_reads_the_weights_format_under_auto(tmp_path: Path, capsys):
    """With model.checkpoint_format=auto the command reads the file as the engine does: the
    bundled MAE file gets MAE's recipe (README.md:82-83), the supervised one the preset's."""
    from spt_dist.cli import main
    from spt_dist.model import detect_format

    assets = CONFIG_ROOT.parent / "spt_dist" / "assets"
    mae, supervised = assets / "mae_vit_tiny_p7_28_fmnist04.pth", assets / "vit_tiny_p7_28_fmnist04.safetensors"
    assert (detect_format(mae), detect_format(supervised)) == ("mae", "timm")  # what the engine reads them as

    def show(checkpoint):
        assert main(["config", "show", _path("spt_vtab"), f"model.checkpoint={checkpoint}", "--protocol",
                     "spt_vtab"]) == 0
        return capsys.readouterr().out.splitlines()

    lines = show(mae)
    assert [line.split()[:3] for line in lines[1:3]] == [["optim.lr", "0.001", "0.05"],
                                                         ["optim.weight_decay", "3.0", "0.5"]]
    assert lines[-1].startswith("2 setting(s) depart") and \
        f"MAE weights' recipe (model.checkpoint_format=auto: {mae} reads as mae)" in lines[-1]
    assert show(supervised) == [f"no departures from protocol spt_vtab (configs/protocol/spt_vtab.yaml) on 1 rank "
                                f"(launch.nodes x launch.tasks_per_node), supervised weights' recipe "
                                f"(model.checkpoint_format=auto: {supervised} reads as timm)"]
    # A set format is not read over; VPT's recipes do not depend on the backbone (nothing read).
    assert main(["config", "show", _path("spt_vtab"), f"model.checkpoint={mae}", "model.checkpoint_format=timm",
                 "--protocol", "spt_vtab"]) == 0
    assert "supervised weights' recipe (model.checkpoint_format)" in capsys.readouterr().out
    # Missing or unreadable: judged as supervised, as without a reader, and the line says why.
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    for bad, why in ((tmp_path / "gone.pth", f"checkpoint file not found: {tmp_path / 'gone.pth'}"),
                     (tmp_path / "notes.pth", f"{tmp_path / 'notes.pth'}: ")):
        out = show(bad)
        assert len(out) == 2 and out[0].startswith(f"backbone recipe not judged: {bad} not read ({why}"), out
        assert out[1].startswith("no departures from protocol spt_vtab"), out
        assert f"supervised weights' recipe (model.checkpoint_format=auto: {bad} not read ({why}" in out[1]
        assert out[1].endswith("; set mae or mocov3 for those weights)")
    # Read but undecided (MAE's released pretraining layout: {'model': encoder}, no decoder, head
    # or fc_norm): the table opens saying the backbone recipe was not judged.
    import torch

    raw = torch.load(mae, map_location="cpu", weights_only=False)  # the bundled file (it holds its args)
    raw = raw.get("model", raw)
    encoder = {k: v for k, v in raw.items() if not k.startswith(("decoder", "mask_token", "head", "fc_norm"))}
    torch.save({"model": encoder}, tmp_path / "mae_encoder.pth")
    out = show(tmp_path / "mae_encoder.pth")
    assert out[0].startswith(f"backbone recipe not judged: {tmp_path / 'mae_encoder.pth'} read, but auto does not "
                             f"decide its format ("), out
    assert out[0].endswith("the supervised recipe is assumed (set model.checkpoint_format to judge it)")
    assert out[-1].startswith("no departures from protocol spt_vtab")
