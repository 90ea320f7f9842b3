"""`spt weights check TARGET [key=value ...] [--no-hash]`.

TARGET is a weight file, an hf-hub name, a run config (.yaml) or a run folder; with a run, its
model.checkpoint is checked and so is how the run feeds and pools it. Exit code 0 whatever
the findings (they are printed as warnings); 2 when the file cannot be read.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Tuple

from spt_dist.config import Config


def _target(args: argparse.Namespace):
    """(weights to check, the run's config or None)."""
    from spt_dist.config import ConfigError, load_config

    folder = Path(args.target)
    if folder.is_dir() and (folder / "config.yaml").is_file():
        if args.overrides:
            raise ConfigError(f"{folder} is a run folder; its config.yaml is checked as it is (no overrides)")
        cfg = load_config(str(folder / "config.yaml"))
    elif args.target.endswith((".yaml", ".yml")):
        cfg = load_config(args.target, args.overrides)
    else:
        if args.overrides:
            raise ConfigError(f"overrides ({' '.join(args.overrides)}) need a run config as TARGET, not a "
                              f"weight file")
        return args.target, None
    if not cfg.model.checkpoint:
        raise ConfigError(f"{args.target}: model.checkpoint is not set; there is no weight file to check")
    return cfg.model.checkpoint, cfg


def _check(args: argparse.Namespace) -> int:
    from .weights_check import check_weights

    weights, cfg = _target(args)
    report = check_weights(weights, cfg, md5=not args.no_hash)
    print("\n".join(report.lines))
    for text in report.warnings:
        print(f"warning: {text}")
    print(f"{len(report.warnings)} warning(s)")
    return 0


def auto_format(cfg: Config) -> Tuple[Optional[str], Optional[str]]:
    """(the format model.checkpoint_format=auto reads the run's weight file as, None) as the
    engine decides it (weights.checkpoint_format), or (None, why not): no file set, or one that is
    missing, unreadable or of a layout auto does not decide. For `spt config show --protocol`."""
    if not cfg.model.checkpoint:
        return None, "model.checkpoint is not set"
    from .weights import UndecidedFormatError, checkpoint_format

    try:
        return checkpoint_format(cfg), None
    except Exception as exc:  # noqa: BLE001 - a comparison that informs: judged as today, saying why
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, UndecidedFormatError):
            return None, f"{cfg.model.checkpoint} read, but auto does not decide its format ({first})"
        return None, f"{cfg.model.checkpoint} not read ({first})"


def register(sub) -> None:
    from spt_dist.config.cli import set_format_reader

    set_format_reader(auto_format)
    weights = sub.add_parser("weights", help="inspect backbone weight files").add_subparsers(
        dest="action", required=True)
    p = weights.add_parser("check", help="format, architecture and parameters of a weight file, which of the "
                                         "VPT / SPT papers' files it is, and how a run's settings compare")
    p.add_argument("target", help="weight file, hf-hub:<org>/<name>, run config (.yaml) or run folder")
    p.add_argument("overrides", nargs="*", help="dot-list overrides of a run config")
    p.add_argument("--no-hash", action="store_true", help="skip the md5 of files whose hash is published")
    p.set_defaults(func=_check)
