"""`spt shards build SOURCE ... --out DIR` and `spt shards info DIR`."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

# The data package (and torch with it) is imported inside the commands, so that building the
# `spt` parser on a login node stays fast.


def _classes(text: Optional[str]) -> Optional[List[int]]:
    if not text:
        return None
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--classes expects comma-separated class ids, got '{text}'") from None


def _source(args: argparse.Namespace):
    from . import sources

    if args.source == "folder":
        return sources.folder_source(args.root, args.val_fraction, args.test_fraction, args.seed)
    if args.source == "vtab":
        return sources.vtab_source(args.root, args.image_root)
    if args.source == "fgvc":
        return sources.fgvc_source(args.root, args.image_root)
    if args.source == "fmnist":
        return sources.fmnist_source(args.classes, args.val_fraction, args.seed, args.fmnist_dir)
    return sources.digits_source(args.classes, args.val_fraction, args.test_fraction, args.seed)


def _build(args: argparse.Namespace) -> int:
    from .index import DataError
    from .writer import write_shards

    try:
        index = write_shards(_source(args), args.out, shard_size=args.shard_size, workers=args.workers,
                             skip_bad=args.skip_bad, max_per_class=args.max_per_class, seed=args.seed,
                             progress=not args.no_progress)
    except DataError as exc:
        print(f"spt shards: error: {exc}", file=sys.stderr)
        return 2
    _print_info(index)
    return 0


def _print_info(index) -> None:
    print(f"{index.root}: {index.source.get('kind', '?')}, {index.num_classes} classes, "
          f"content hash {index.content_hash[:16]}")
    for name, split in index.splits.items():
        print(f"  {name}: {split.num_samples} samples in {len(split.shards)} shard(s)")


def _info(args: argparse.Namespace) -> int:
    from .index import DataError, ShardIndex

    try:
        _print_info(ShardIndex.load(args.root))
    except DataError as exc:
        print(f"spt shards: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _common(p: argparse.ArgumentParser, splits: bool) -> None:
    p.add_argument("--out", required=True, help="shard folder to write (index.json + *.tar)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="encoding processes")
    p.add_argument("--max-per-class", type=int, default=0, help="cap samples per class in every split (0 = all)")
    p.add_argument("--skip-bad", action="store_true", help="skip images that cannot be decoded (listed)")
    p.add_argument("--seed", type=int, default=0, help="seed of deterministic splits and caps")
    p.add_argument("--no-progress", action="store_true")
    if splits:
        p.add_argument("--val-fraction", type=float, default=0.1, help="per-class share carved out as val")


def register(sub) -> None:
    shards = sub.add_parser("shards", help="build and inspect webdataset shards").add_subparsers(
        dest="action", required=True)
    build = shards.add_parser("build", help="write shards + index.json from a source").add_subparsers(
        dest="source", required=True, metavar="SOURCE")
    p = build.add_parser("folder", help="image tree root/<class>/* (or root/{train,val,test}/<class>/*)")
    p.add_argument("root")
    _common(p, splits=True)
    p.add_argument("--test-fraction", type=float, default=0.1, help="per-class share carved out as test")
    for name, what in (("vtab", "VTAB-1k folder: every *.txt list ('relative/path label') becomes a split"),
                       ("fgvc", "VPT FGVC folder: every *.json (image path -> label) becomes a split")):
        p = build.add_parser(name, help=what)
        p.add_argument("root")
        p.add_argument("--image-root", help="folder the listed paths are relative to "
                                            "(default: root, or root/images for fgvc when present)")
        _common(p, splits=False)
    p = build.add_parser("fmnist", help="Fashion-MNIST from Debian's IDX files (train/val/test)")
    p.add_argument("--classes", type=_classes, help="class subset, e.g. 5,6,7,8,9 (relabelled 0..k-1)")
    p.add_argument("--fmnist-dir", default="/usr/share/datasets/fashion-mnist")
    _common(p, splits=True)
    p = build.add_parser("digits", help="scikit-learn's 8x8 digits (train/val/test)")
    p.add_argument("--classes", type=_classes, help="class subset, e.g. 0,1,2 (relabelled 0..k-1)")
    _common(p, splits=True)
    p.add_argument("--test-fraction", type=float, default=0.2)
    for p in build.choices.values():
        p.set_defaults(func=_build)
    info = shards.add_parser("info", help="summarise a shard folder's index.json")
    info.add_argument("root")
    info.set_defaults(func=_info)
