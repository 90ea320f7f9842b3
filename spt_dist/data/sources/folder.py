"""An image folder tree: `root/<class>/*.jpg`, or `root/<split>/<class>/*.jpg`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from ..index import DataError
from .common import IMAGE_EXTS, Source, carve, check_fractions, make_keys

SPLIT_NAMES = ("train", "val", "test", "trainval")


def _hidden(path: Path, top: Path) -> bool:
    # Dot-files (macOS `._*` resource forks, .DS_Store) and anything in dot-folders are not images.
    return any(part.startswith(".") for part in path.relative_to(top).parts)


def _images(class_dir: Path) -> List[Path]:
    return sorted(p for p in class_dir.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not _hidden(p, class_dir))


def _class_dirs(root: Path) -> List[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _trees(base: Path) -> Dict[str, Path]:
    """{split: folder} for the split layout, or {"": base} when top-level folders are classes.

    The split layout needs every top-level folder to be a split name holding class folders;
    a class that happens to be called `train` must not switch the whole tree silently.
    """
    top = _class_dirs(base)
    named = [d for d in top if d.name in SPLIT_NAMES]
    nested = [d for d in named if _class_dirs(d)]
    if not nested:
        return {"": base}  # no split folder holds class folders: every top-level folder is a class
    if len(nested) == len(top):
        return {d.name: d for d in top}
    others = [d.name for d in top if d not in nested]
    raise DataError(f"image folder '{base}' mixes split folders holding class folders "
                    f"({', '.join(d.name for d in nested)}) with other top-level folders ({', '.join(others)}); "
                    f"use either root/<class>/<image>, or root/<split>/<class>/<image> with every top-level "
                    f"folder one of {', '.join(SPLIT_NAMES)}")


def folder_source(root: str, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  split_seed: int = 0) -> Source:
    """Split folders are used when every top-level folder is one (see `_trees`); otherwise a
    per-class split seeded by `split_seed` is made. Dot-files are skipped."""
    check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"image folder '{root}' does not exist")
    trees = _trees(base)
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
        test, val, train = carve(items, ids, [test_fraction, val_fraction], split_seed)
        listed = {"train": train, "val": val, "test": test}
    splits = {s: make_keys(s, items) for s, items in listed.items() if items}
    return Source("folder", classes, splits, {"root": str(base.resolve()), "val_fraction": val_fraction,
                                              "test_fraction": test_fraction, "split_seed": split_seed,
                                              "split_folders": "" not in trees})
