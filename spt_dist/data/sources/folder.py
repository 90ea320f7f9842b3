"""An image folder tree: `root/<class>/*.jpg`, or `root/<split>/<class>/*.jpg`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from ..index import DataError
from .common import IMAGE_EXTS, Source, carve, make_keys

SPLIT_NAMES = ("train", "val", "test", "trainval")


def _images(class_dir: Path) -> List[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _class_dirs(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_source(root: str, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0) -> Source:
    """Split folders are used when present; otherwise a seeded per-class split is made."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"image folder '{root}' does not exist")
    split_dirs = [base / s for s in SPLIT_NAMES if (base / s).is_dir()]
    trees: Dict[str, Path] = {d.name: d for d in split_dirs} or {"": base}
    classes = sorted({c.name for tree in trees.values() for c in _class_dirs(tree)})
    if not classes:
        raise DataError(f"image folder '{root}' has no class folders (expected root/<class>/<image>)")
    label_of = {c: i for i, c in enumerate(classes)}
    listed: Dict[str, List[Tuple[int, str]]] = {}
    for split, tree in trees.items():
        listed[split] = [(label_of[c.name], str(p)) for c in _class_dirs(tree) for p in _images(c)]
        if not listed[split]:
            raise DataError(f"image folder '{tree}' has class folders but no images ({', '.join(IMAGE_EXTS)})")
    if "" in listed:
        items = listed.pop("")
        ids = [str(Path(p).relative_to(base)) for _, p in items]
        test, val, train = carve(items, ids, [test_fraction, val_fraction], seed)
        listed = {"train": train, "val": val, "test": test}
    splits = {s: make_keys(s, items) for s, items in listed.items() if items}
    return Source("folder", classes, splits, {"root": str(base.resolve()), "val_fraction": val_fraction,
                                              "test_fraction": test_fraction, "seed": seed,
                                              "split_folders": bool(split_dirs)})
