"""`spt train`, `spt pretrain` (`spt predict` applies packs through the serving stage's bank).

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
        if overrides:
            raise ConfigError(f"{folder} is a run folder: it resumes with its own config.yaml; "
                              f"overrides ({' '.join(overrides)}) are not allowed")
        if not (folder / "config.yaml").is_file():
            raise ConfigError(f"{folder} is a folder without config.yaml: not a run folder")
        return load_config(str(folder / "config.yaml")), str(folder)
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


def _pretrain(args: argparse.Namespace) -> int:
    from .pretrain import pretrain

    result = pretrain(args.shards, args.out, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, seed=args.seed, backbone=args.backbone,
                      progress=not args.no_progress and sys.stderr.isatty())
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

    p = sub.add_parser("pretrain", help="pretrain a small backbone (the embedded demo's)")
    p.add_argument("--shards", required=True, help="shard folder of the pretraining classes")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.add_argument("--backbone", default="vit_tiny_p7_28")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a terminal)")
    p.set_defaults(func=_pretrain)
