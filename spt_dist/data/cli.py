"""`spt shards build SOURCE ... --out DIR`, `spt shards index DIR`, `spt shards verify DIR`,
`spt shards info DIR [--json]`. Input errors propagate to `spt` (one line, exit code 2)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

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
        return sources.folder_source(args.root, args.val_fraction, args.test_fraction, args.split_seed)
    if args.source == "vtab":
        return sources.vtab_source(args.root, args.image_root)
    if args.source == "fgvc":
        return sources.fgvc_source(args.root, args.image_root)
    if args.source == "fmnist":
        return sources.fmnist_source(args.classes, args.val_fraction, args.split_seed, args.fmnist_dir)
    return sources.digits_source(args.classes, args.val_fraction, args.test_fraction, args.split_seed)


def _build(args: argparse.Namespace) -> int:
    from .writer import write_shards

    index = write_shards(_source(args), args.out, shard_size=args.shard_size, workers=args.workers,
                         skip_bad=args.skip_bad, max_per_class=args.max_per_class, seed=args.seed,
                         split_seed=args.split_seed, progress=_progress(args))
    _print_info(index)
    return 0


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


CLASS_ROWS = 20  # more classes than this: the first and last EDGE_ROWS rows (--json lists every one)
EDGE_ROWS = 5


def _class_counts(index) -> Dict[str, List[int]]:
    """split -> samples of each class, in the order of index.classes (0 for a class the split lacks)."""
    return {name: [split.class_counts().get(str(c), 0) for c in range(index.num_classes)]
            for name, split in index.splits.items()}


def _class_lines(index) -> List[str]:
    """The class names of the index with each split's sample count per class, as a table; with
    more than CLASS_ROWS classes, the first and last EDGE_ROWS of them and how many are left out."""
    counts = _class_counts(index)
    rows = [[str(c), name] + [str(counts[s][c]) for s in counts] for c, name in enumerate(index.classes)]
    if len(rows) > CLASS_ROWS:
        gap = f"... {len(rows) - 2 * EDGE_ROWS} more classes (--json lists every one)"
        rows = rows[:EDGE_ROWS] + [[gap]] + rows[-EDGE_ROWS:]
    table = [["label", "class"] + list(counts)] + rows
    full = [r for r in table if len(r) > 1]
    widths = [max(len(r[i]) for r in full) for i in range(len(table[0]))]
    return ["  " + "  ".join(v.ljust(widths[i]) if i == 1 else v.rjust(widths[i]) for i, v in enumerate(r)).rstrip()
            if len(r) > 1 else f"  {r[0]}" for r in table]  # names left-aligned, numbers right


def info_record(index) -> Dict[str, Any]:
    """What `spt shards info --json` prints: every class name and each split's count per class."""
    counts = _class_counts(index)
    return {"root": str(index.root), "source": index.source, "content_hash": index.content_hash,
            "classes": list(index.classes),
            "splits": {name: {"num_samples": split.num_samples, "shards": len(split.shards),
                              "class_counts": counts[name],
                              "classes_per_shard": [len(s.class_counts()) for s in split.shards]}
                       for name, split in index.splits.items()}}


def _print_info(index) -> None:
    print(f"{index.root}: {index.source.get('kind', '?')}, {index.num_classes} classes, "
          f"content hash {index.content_hash[:16]}")
    for name, split in index.splits.items():
        per_shard = [len(s.class_counts()) for s in split.shards]
        print(f"  {name}: {split.num_samples} samples in {len(split.shards)} shard(s), "
              f"{len(split.class_counts())} classes; classes per shard: {min(per_shard)}..{max(per_shard)}, "
              f"mean {sum(per_shard) / len(per_shard):.1f}")
    print("\n".join(_class_lines(index)))


def _info(args: argparse.Namespace) -> int:
    from .index import ShardIndex

    index = ShardIndex.load(args.root)
    if args.json:
        print(json.dumps(info_record(index), indent=1))
    else:
        _print_info(index)
    return 0


def _patterns(items: List[str]) -> dict:
    from .index import DataError

    out = {}
    for item in items:
        split, sep, pattern = item.partition("=")
        if not sep or not split or not pattern:
            raise DataError(f"--split expects NAME=GLOB (e.g. train='train-*.tar'), got '{item}'")
        out[split] = pattern
    return out


def _index(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .indexer import index_shards

    classes = None
    if args.classes:
        classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    _print_info(index_shards(args.root, classes=classes, patterns=_patterns(args.split), skip_bad=args.skip_bad))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .indexer import verify_shards

    problems = verify_shards(args.root)
    for p in problems:
        print(f"  {p}")
    print(f"{args.root}: {'OK, every shard matches index.json' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def _common(p: argparse.ArgumentParser, splits: bool) -> None:
    p.add_argument("--out", required=True, help="shard folder to write (index.json + *.tar)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="encoding processes")
    p.add_argument("--max-per-class", type=int, default=0, help="cap samples per class in every split (0 = all)")
    p.add_argument("--skip-bad", action="store_true", help="skip images that cannot be decoded (listed)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the permutation of every split before sharding: the shard order only, never "
                        "which samples are in a split or their keys")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of which samples are in which split: the per-class val/test carve-out and "
                        "--max-per-class (recorded in index.json as source.split_seed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a terminal)")
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
    info = shards.add_parser("info", help="summarise a shard folder's index.json: splits, shards, and the class "
                                          "names with each split's samples per class")
    info.add_argument("root")
    info.add_argument("--json", action="store_true", help="print it as JSON, every class listed")
    info.set_defaults(func=_info)
    p = shards.add_parser("index", help="write index.json for a folder of WebDataset tars (<key>.jpg|png + "
                                        "<key>.cls), or upgrade an older index; the tars stay as they are")
    p.add_argument("root")
    p.add_argument("--classes", help="file with one class name per line (label i = line i); default: an "
                                     "existing index's names, else 0..C-1")
    p.add_argument("--split", nargs="+", default=[], metavar="NAME=GLOB",
                   help="which tars form which split, e.g. train='train-*.tar' (default: an existing index's "
                        "assignment, else the file name up to its number: train-000003.tar -> train)")
    p.add_argument("--skip-bad", action="store_true", help="leave out samples without image or label (listed)")
    p.set_defaults(func=_index)
    p = shards.add_parser("verify", help="re-read every tar: sha256, keys, labels, offsets and digests "
                                         "against index.json (exit code 1 on any difference)")
    p.add_argument("root")
    p.set_defaults(func=_verify)
