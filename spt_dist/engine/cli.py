"""`spt train`, `spt pretrain` (`spt predict` applies packs through the serving stage's bank).

`spt pretrain --recipe supervised|mae` takes its options from flags, then a `--config` YAML
file of the same names (configs/pretrain/), then the recipe's defaults (PRETRAIN_DEFAULTS).

Exit codes of `spt train`: 0 when the run finished OR was interrupted by SIGTERM/SIGUSR2/SIGINT
after saving a checkpoint (run `spt train RUN_DIR` to resume); 2 for an input error (config,
data, checkpoint: spt_dist.errors.SptError);
1 for any other failure. With several ranks a failing rank exits at once (os._exit), so
torchrun / srun end the others instead of leaving them in a collective.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path


def _load(config: str, overrides):
    from spt_dist.config import ConfigError, load_config

    folder = Path(config)
    if folder.is_dir():
        # launch settings are not part of a run's identity (e.g. launch.elastic=true to continue
        # on another world size); anything else would train another run in this folder
        other = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("launch.")]
        if other:
            raise ConfigError(f"{folder} is a run folder: it resumes with its own config.yaml; overrides "
                              f"({' '.join(other)}) are not allowed, except launch.* settings")
        if not (folder / "config.yaml").is_file():
            raise ConfigError(f"{folder} is a folder without config.yaml: not a run folder")
        return load_config(str(folder / "config.yaml"), list(overrides)), str(folder)
    return load_config(config, overrides, check_files=True), None


def _train(args: argparse.Namespace) -> int:
    from spt_dist.errors import SptError

    from .train import train

    multi = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1
    try:
        if args.pack:
            results = _train_pack(args)
        else:
            cfg, run_dir = _load(args.config, args.overrides)
            if args.no_progress:  # a display setting: a run folder resumes with it too
                cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, progress=False))
            results = train(cfg, run_dir=run_dir)
    except SptError as exc:
        if not multi:
            raise  # one line from `spt`, exit code 2
        print(f"spt train: error on rank {os.environ.get('RANK', '0')}: {exc}", file=sys.stderr, flush=True)
        os._exit(2)
    except BaseException as exc:  # noqa: BLE001 - any failure must end every rank
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        traceback.print_exc()
        print(f"spt train: error on rank {os.environ.get('RANK', '0')}: {exc}", file=sys.stderr, flush=True)
        if multi:
            os._exit(1)  # no atexit / process-group teardown that could wait on dead peers
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results, indent=1, sort_keys=True))
    return 0


# Defaults of each recipe; a --config file overrides them, flags override the file.
PRETRAIN_DEFAULTS = {
    "supervised": {"backbone": "vit_tiny_p7_28", "epochs": 3, "batch_size": 128, "lr": 1e-3, "seed": 0},
    "mae": {"backbone": "vit_tiny_p7_28", "epochs": 5, "batch_size": 128, "lr": 1.5e-3, "seed": 0,
            "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 4, "dtype": "float16", "max_steps": 0},
}
_PRETRAIN_KEYS = ("recipe", "shards", "out") + tuple(PRETRAIN_DEFAULTS["mae"])


def _train_pack(args: argparse.Namespace) -> list:
    """`spt train CONFIG --pack FILE`: every member validated, as a whole, before any work."""
    from spt_dist.config import ConfigError
    from spt_dist.config.pack import load_pack

    from .pack import train_pack

    if Path(args.config).is_dir():
        raise ConfigError(f"{args.config} is a run folder; a pack resumes with the same `spt train CONFIG --pack "
                          f"FILE` command (or a member alone with `spt train RUN_DIR`)")
    cfgs = [m.cfg for m in load_pack(args.config, args.pack, args.overrides, check_files=True)]
    if args.no_progress:
        cfgs = [dataclasses.replace(c, run=dataclasses.replace(c.run, progress=False)) for c in cfgs]
    return train_pack(cfgs)


def pretrain_options(args: argparse.Namespace) -> dict:
    """The options of `spt pretrain`: flags, then the --config YAML file, then the recipe's defaults."""
    import yaml

    from spt_dist.config import ConfigError
    from spt_dist.config.registry import backbone_spec

    given = {k: getattr(args, k) for k in _PRETRAIN_KEYS if getattr(args, k, None) is not None}
    if args.config:
        with open(args.config) as f:
            file = yaml.safe_load(f) or {}
        unknown = sorted(set(file) - set(_PRETRAIN_KEYS))
        if unknown:
            raise ConfigError(f"{args.config}: unknown pretrain options {unknown}; "
                              f"allowed: {', '.join(_PRETRAIN_KEYS)}")
        given = {**file, **given}
    recipe = given.pop("recipe", "supervised")
    if recipe not in PRETRAIN_DEFAULTS:
        raise ConfigError(f"unknown pretrain recipe '{recipe}'; allowed: {', '.join(PRETRAIN_DEFAULTS)}")
    allowed = set(PRETRAIN_DEFAULTS[recipe]) | {"shards", "out"}
    extra = sorted(set(given) - allowed)
    if extra:
        raise ConfigError(f"pretrain options {extra} do not apply to recipe '{recipe}'")
    missing = [k for k in ("shards", "out") if k not in given]
    if missing:
        raise ConfigError(f"spt pretrain needs {' and '.join('--' + k for k in missing)} (a flag or in --config)")
    opts = {"recipe": recipe, **PRETRAIN_DEFAULTS[recipe], **given}
    try:
        spec = backbone_spec(opts["backbone"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if recipe == "mae" and (not spec.class_token or spec.reg_tokens or spec.no_embed_class):
        raise ConfigError(f"--recipe mae needs MAE's encoder layout (a class token with a position row, no "
                          f"register tokens); backbone '{spec.name}' differs")
    return opts


def _pretrain(args: argparse.Namespace) -> int:
    opts = pretrain_options(args)
    recipe = opts.pop("recipe")
    progress = not args.no_progress and sys.stderr.isatty()
    if recipe == "mae":
        from .pretrain_mae import pretrain_mae
        result = pretrain_mae(progress=progress, **opts)
    else:
        from .pretrain import pretrain
        result = pretrain(progress=progress, **opts)
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0


def register(sub) -> None:
    from spt_dist.config.cli import add_config_arguments

    p = sub.add_parser("train", help="train one run (CONFIG file, or a run folder to resume)")
    add_config_arguments(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar, as run.progress=false (also off when stderr is not a terminal)")
    p.add_argument("--pack", metavar="FILE", help="train the members of FILE (sweep format: overrides, grid, "
                   "members) in one job, one backbone pass per batch; each gets its own run folder (training.md)")
    p.set_defaults(func=_train)

    p = sub.add_parser("pretrain", help="pretrain a small backbone (the embedded demo's): supervised or MAE")
    p.add_argument("--config", help="YAML file of these options (e.g. configs/pretrain/mae_tiny.yaml); "
                   "flags override it")
    p.add_argument("--recipe", choices=tuple(PRETRAIN_DEFAULTS), default=None,
                   help="supervised (default: backbone + head, cross-entropy) or mae (masked-patch reconstruction)")
    p.add_argument("--shards", help="shard folder of the pretraining classes")
    p.add_argument("--out", help="output file: .safetensors (supervised) or MAE's .pth layout (mae)")
    p.add_argument("--backbone", help="registry name (default vit_tiny_p7_28)")
    p.add_argument("--epochs", type=int, help="default 3 (supervised), 5 (mae)")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--lr", type=float, help="peak lr, absolute; default 1e-3 (supervised), 1.5e-3 (mae)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--decoder-dim", type=int, help="mae: decoder width (default 64)")
    p.add_argument("--decoder-depth", type=int, help="mae: decoder blocks (default 2)")
    p.add_argument("--decoder-heads", type=int, help="mae: decoder heads (default 4)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   help="mae: tensors in the file (default float16)")
    p.add_argument("--max-steps", type=int, help="mae: stop after this many steps (0: all epochs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a terminal)")
    p.set_defaults(func=_pretrain)
