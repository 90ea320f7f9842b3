"""`spt config show CONFIG [key=value ...] [--protocol NAME [--world-size N]]`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .errors import ConfigError
from .load import load_config, to_yaml
from .schema import Config

# cfg -> (the format model.checkpoint_format=auto reads cfg's weight file as, or None and why not).
# Reading weight files is the model stage's: its cli.py hands its reader in (config imports
# nothing above it); without one, --protocol judges an `auto` run as supervised and says so.
FormatReader = Callable[[Config], Tuple[Optional[str], Optional[str]]]
_FORMAT_READER: List[FormatReader] = []


def set_format_reader(reader: FormatReader) -> None:
    _FORMAT_READER[:] = [reader]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The CONFIG + overrides arguments every run-taking subcommand shares."""
    parser.add_argument("config", help="YAML run file (composes its `defaults`)")
    parser.add_argument("overrides", nargs="*", help="dot-list overrides, e.g. method.prompt_length=20")


def _show(args: argparse.Namespace) -> int:
    if args.world_size is not None and not args.protocol:
        raise ConfigError("--world-size judges a run against a protocol: give it with --protocol NAME")
    config, world, world_source = args.config, args.world_size, "--world-size"
    if Path(config).is_dir():  # a run folder: its resolved config, judged on the world size it trained on
        if not (Path(config) / "config.yaml").is_file():
            raise ConfigError(f"{config} is a folder without config.yaml: not a run folder")
        if world is None:
            world, world_source = _trained_world_size(Path(config))
        config = str(Path(config) / "config.yaml")
    cfg = load_config(config, args.overrides, check_files=args.check_files)
    if args.protocol:
        from .protocol import BY_BACKBONE, departure_table

        detected = unread = None
        if args.protocol in BY_BACKBONE and cfg.model.checkpoint_format == "auto" and _FORMAT_READER:
            detected, unread = _FORMAT_READER[0](cfg)
        print(departure_table(cfg, args.protocol, world, detected, unread, world_source), end="")
    else:
        print(to_yaml(cfg), end="")
    return 0


def _trained_world_size(run_dir: Path) -> Tuple[Optional[int], str]:
    """The world size a run folder's results.json says it trained on last (an elastic run keeps
    its global batch on every one), with where it came from; (None, "") before any results."""
    try:
        results = json.loads((run_dir / "results.json").read_text())
        world = results.get("world_size") if isinstance(results, dict) else None
    except (OSError, ValueError):
        return None, ""
    if isinstance(world, int) and not isinstance(world, bool) and world >= 1:
        return world, f"{run_dir.name}/results.json"
    return None, ""


def _ranks(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of ranks >= 1, got {text!r}")
    return int(text)


def _backbones(args: argparse.Namespace) -> int:
    from .registry import BACKBONES

    print(f"{'name':26} {'patch':>5} {'width':>5} {'depth':>5} {'heads':>5} {'img':>4} {'prefix':>6}")
    for name in sorted(BACKBONES):
        s = BACKBONES[name]
        prefix = int(s.class_token) + s.reg_tokens
        print(f"{name:26} {s.patch_size:5d} {s.embed_dim:5d} {s.depth:5d} {s.num_heads:5d} {s.img_size:4d} {prefix:6d}")
    return 0


def register(sub) -> None:
    sub.add_parser("backbones", help="list the backbone registry").set_defaults(func=_backbones)
    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved, validated config")
    add_config_arguments(show)
    show.add_argument("--check-files", action="store_true", help="also check that data and weights exist")
    from .protocol import protocol_names

    show.add_argument("--protocol", metavar="NAME", choices=protocol_names(),
                      help="instead of the config, list where it departs from an official recipe "
                           f"(configs/protocol/NAME.yaml): {', '.join(protocol_names())}")
    show.add_argument("--world-size", metavar="N", type=_ranks, default=None,
                      help="with --protocol: the ranks the run trains on, for the global batch and VPT's "
                           "drop_last (default: launch.nodes x launch.tasks_per_node)")
    show.set_defaults(func=_show)
