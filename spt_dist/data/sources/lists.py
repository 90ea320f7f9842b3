"""List-file sources: VTAB-1k text lists and VPT's FGVC JSON files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..index import DataError
from .common import Source, make_keys


def _image_root(root: Path, image_root: Optional[str], default: str) -> Path:
    if image_root:
        return Path(image_root)
    return root / default if (root / default).is_dir() else root


def _check_exists(split_file: Path, paths: List[Tuple[int, str]]) -> None:
    missing = [p for _, p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"{split_file}: {len(missing)} listed image(s) not found, first: {missing[0]}")


def vtab_source(root: str, image_root: Optional[str] = None) -> Source:
    """Every `*.txt` in `root` with lines `relative/path label` becomes a split (file stem)."""
    base = Path(root)
    files = sorted(base.glob("*.txt"))
    if not files:
        raise DataError(f"VTAB folder '{root}' has no list files (*.txt with lines 'relative/path label')")
    images = Path(image_root) if image_root else base
    parsed: Dict[str, List[Tuple[int, str]]] = {}
    for f in files:
        rows = []
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{f}:{n}: expected 'relative/path label', got {line!r}")
            rows.append((int(parts[1]), str(images / parts[0])))
        _check_exists(f, rows)
        parsed[f.stem] = rows
    return _remapped("vtab", parsed, {"root": str(base.resolve()), "image_root": str(images)})


def fgvc_source(root: str, image_root: Optional[str] = None) -> Source:
    """VPT's FGVC files: every `*.json` mapping image path -> label becomes a split."""
    base = Path(root)
    files = sorted(p for p in base.glob("*.json") if p.name != "index.json")
    if not files:
        raise DataError(f"FGVC folder '{root}' has no split files (train.json, val.json, test.json)")
    images = _image_root(base, image_root, "images")
    parsed: Dict[str, List[Tuple[int, str]]] = {}
    for f in files:
        try:
            mapping = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{f}: not valid JSON ({exc})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise DataError(f"{f}: expected a JSON object mapping image path -> integer label")
        rows = [(label, str(images / path)) for path, label in mapping.items()]  # file order
        _check_exists(f, rows)
        parsed[f.stem] = rows
    return _remapped("fgvc", parsed, {"root": str(base.resolve()), "image_root": str(images)})


def _remapped(kind: str, parsed: Dict[str, List[Tuple[int, str]]], args: dict) -> Source:
    """Labels as published may start at 1 or have gaps; map the sorted set onto 0..C-1."""
    original = sorted({label for rows in parsed.values() for label, _ in rows})
    to_new = {old: new for new, old in enumerate(original)}
    splits = {s: make_keys(s, [(to_new[label], p) for label, p in rows]) for s, rows in parsed.items() if rows}
    return Source(kind, [str(c) for c in original], splits, args)
