"""`index.json` for WebDataset tars the project did not write, and a check of a folder's tars
against its index.

`index_shards` reads every tar of a folder (keys, `.cls` labels, image offsets, digests,
sha256) and writes a current index; an older or hand-edited index in the folder only lends
its class names and its shard-to-split assignment (labels always come from the tars).
`verify_shards` re-reads every tar and compares it with the index, sample by sample.
"""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from spt_dist.io import file_sha256

from .index import INDEX_NAME, DataError, ShardIndex, ShardInfo, SplitInfo
from .tarscan import scan_shard


def split_of_name(name: str) -> str:
    """`train-000012.tar` -> `train`; `val_3.tar` -> `val`; `test.tar` -> `test`; a bare number
    (`000012.tar`, webdataset's usual `%06d` naming) -> `train`."""
    stem = name[:-4] if name.endswith(".tar") else name
    if stem.isdigit():
        return "train"
    m = re.match(r"^(.*?)[-_.]?\d+$", stem)
    return m.group(1) if m and m.group(1) else stem


def _previous(root: Path) -> Dict:
    """Whatever an existing index.json (any format, even edited) says about classes and splits."""
    path = root / INDEX_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    splits = {}
    for split, sp in (raw.get("splits") or {}).items():
        for s in (sp or {}).get("shards", []) if isinstance(sp, dict) else []:
            if isinstance(s, dict) and isinstance(s.get("name"), str):
                splits[s["name"]] = split
    return {"classes": raw.get("classes"), "source": raw.get("source") or {}, "splits": splits}


def _assign(names: Sequence[str], patterns: Dict[str, str], previous: Dict[str, str]) -> Dict[str, str]:
    """Split of each tar: its --split pattern, else the older index's, else its file name. A
    pattern that matches no tar is an error: a typo would otherwise leave its tars to their names."""
    out = {}
    for name in names:
        hits = [split for split, pat in patterns.items() if fnmatch.fnmatch(name, pat)]
        if len(hits) > 1:
            raise DataError(f"{name} matches the patterns of splits {', '.join(hits)}; make them disjoint")
        out[name] = hits[0] if hits else previous.get(name) or split_of_name(name)
    empty = [f"{split}={pat}" for split, pat in patterns.items() if not any(fnmatch.fnmatch(n, pat) for n in names)]
    if empty:
        raise DataError(f"--split {' '.join(empty)} matches none of the {len(names)} tars; the tars are "
                        f"named like {', '.join(sorted(names)[:3])}")
    return out


def index_shards(root: str | Path, classes: Optional[List[str]] = None, patterns: Optional[Dict[str, str]] = None,
                 skip_bad: bool = False, log: Callable[[str], None] = print) -> ShardIndex:
    """Index every `*.tar` in `root` (splits by `patterns` {split: glob}, else by an older index,
    else by file name); returns the saved index."""
    root = Path(root)
    tars = sorted(p.name for p in root.glob("*.tar") if not p.name.startswith("."))
    if not tars:
        raise DataError(f"{root}: no .tar files to index")
    prev = _previous(root)
    split_of = _assign(tars, patterns or {}, prev.get("splits", {}))
    problems: List[str] = []
    shards: Dict[str, List[ShardInfo]] = {}
    for name in tars:
        info = scan_shard(root / name, skip_bad=skip_bad, problems=problems)
        if info.num_samples:
            shards.setdefault(split_of[name], []).append(info)
    for p in problems:
        log(f"skipped: {p}")
    labels = sorted({lab for infos in shards.values() for s in infos for lab in s.labels})
    if not labels:
        raise DataError(f"{root}: the tars hold no usable samples (<key>.jpg|png + <key>.cls)")
    names = classes or (prev["classes"] if isinstance(prev.get("classes"), list) else None)
    if names is None:
        names = [str(c) for c in range(labels[-1] + 1)]
    if labels[0] < 0 or labels[-1] >= len(names):
        given = ("from --classes" if classes else "from the folder's older index.json"
                 if isinstance(prev.get("classes"), list) else "")
        raise DataError(f"{root}: labels run {labels[0]}..{labels[-1]} but there are {len(names)} class names "
                        f"{given}; labels must be 0..C-1, with one name per label (one per line in "
                        f"--classes FILE)")
    source = dict(prev.get("source") or {"kind": "webdataset"})
    source["indexed_by"] = "spt shards index"
    index = ShardIndex(root, [str(n) for n in names], {s: SplitInfo(s, v) for s, v in sorted(shards.items())},
                       source)
    index.save()
    return index


def verify_shards(root: str | Path, progress: Callable[[str], None] = lambda _: None) -> List[str]:
    """Every problem found between the index and the tars' bytes (empty: all good)."""
    index = ShardIndex.load(root)
    problems: List[str] = []
    for split in index.splits.values():
        for s in split.shards:
            path = index.shard_path(s)
            progress(s.name)
            if file_sha256(path) != s.sha256:
                problems.append(f"{s.name}: sha256 differs from index.json (the tar's bytes changed)")
            try:
                found = scan_shard(path, skip_bad=True)
            except DataError as exc:
                problems.append(str(exc))
                continue
            for what in ("keys", "labels", "exts", "offsets", "digests"):
                have, want = getattr(found, what), getattr(s, what)
                if have != want:
                    at = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
                    key = s.keys[at] if at < len(s.keys) else "?"
                    problems.append(f"{s.name}: {what} differ from index.json from sample {at} on (key '{key}'): "
                                    f"tar {have[at] if at < len(have) else 'nothing'!r}, index "
                                    f"{want[at] if at < len(want) else 'nothing'!r}")
    return problems
