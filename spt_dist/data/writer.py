"""Write a Source as webdataset tar shards (`<key>.jpg|png` + `<key>.cls`) plus index.json.

Every split is permuted with a seeded permutation (the seed is recorded in the index as
`source.shuffle_seed`) before it is cut into shards: sources list images class by class,
and class-ordered shards would hold two or three classes each. Which samples are in which
split is the split seed's alone (`source.split_seed`: the source's carve-out and the
`max_per_class` caps), so a reshuffle changes the shard order, never a split's members or
keys. The same source and seeds give the same bytes. Shards are encoded in worker processes,
one shard per task, so the output does not depend on the worker count. Each tar is written to
a temporary name and renamed when complete: an interrupted build never leaves a truncated
shard under a final name. A rebuild into an existing folder first removes its index.json,
so a rebuild that fails half-way leaves a folder without an index (refused by readers),
never an old index over new tars.
"""
from __future__ import annotations

import io
import multiprocessing as mp
import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from spt_dist.io import atomic_path

from .index import INDEX_NAME, DataError, ShardIndex, ShardInfo, SplitInfo
from .order import mix
from .sources.common import Sample, Source, cap_per_class, check_labels
from .tarscan import scan_shard

PASS_THROUGH = {"JPEG": "jpg", "PNG": "png"}


def encode(sample: Sample) -> Tuple[bytes, str]:
    """Image bytes and extension; JPEG/PNG files are kept byte-exact, the rest become PNG."""
    if sample.array is not None:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(sample.array)).save(buf, format="PNG")
        return buf.getvalue(), "png"
    try:
        data = Path(sample.path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            img.load()  # decodes fully: a truncated file fails here, not in training
            if fmt in PASS_THROUGH:
                return data, PASS_THROUGH[fmt]
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
            return buf.getvalue(), "png"
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {sample.path}: {exc}") from None


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed metadata: reproducible hashes
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, records: List[Tuple[str, bytes, str, bytes]]) -> ShardInfo:
    """Atomically write (key, image bytes, ext, cls bytes) records; returns the shard's index
    entry, read back from the written tar (offsets, digests, sha256, size)."""
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, img, ext, cls in records:
                _add(tar, f"{key}.{ext}", img)
                _add(tar, f"{key}.cls", cls)
    info = scan_shard(path)
    if info.keys != [r[0] for r in records]:
        raise DataError(f"{path}: the written tar does not read back as written (keys differ)")
    return info


def _write_shard(job: Tuple[Path, str, List[Sample], bool]) -> Tuple[str, ShardInfo, List[str]]:
    path, split, samples, skip_bad = job
    records, bad = [], []
    for s in samples:
        try:
            img, ext = encode(s)
        except DataError as exc:
            if not skip_bad:
                raise
            bad.append(str(exc))
            continue
        records.append((s.key, img, ext, str(s.label).encode()))
    info = write_tar(path, records) if records else ShardInfo(path.name, [], [])
    return split, info, bad


def _jobs(out: Path, source: Source, shard_size: int, skip_bad: bool) -> Iterator[Tuple[Path, str, List[Sample], bool]]:
    for split, samples in source.splits.items():
        for i, start in enumerate(range(0, len(samples), shard_size)):
            yield out / f"{split}-{i:06d}.tar", split, samples[start:start + shard_size], skip_bad


def permuted(samples: List[Sample], seed: int, split: str) -> List[Sample]:
    """`samples` in a seeded random order (numpy's PCG64: the same on every platform)."""
    order = np.random.default_rng(mix("write", seed, split)).permutation(len(samples))
    return [samples[i] for i in order]


def membership_seed(source: Source, split_seed: Optional[int]) -> int:
    """The seed of the splits' members: the source's carve-out seed, which the caps use too."""
    carved = source.args.get("split_seed")
    if split_seed is None:
        return 0 if carved is None else int(carved)
    if carved is not None and carved != split_seed:
        raise DataError(f"the {source.kind} source carved its splits with split seed {carved} but the shards were "
                        f"asked for split seed {split_seed}; give both the same")
    return split_seed


def write_shards(source: Source, out_dir: str, shard_size: int = 1000, workers: int = 1,
                 skip_bad: bool = False, max_per_class: int = 0, seed: int = 0,
                 progress: bool = True, log: Callable[[str], None] = print,
                 shuffle: bool = True, split_seed: Optional[int] = None) -> ShardIndex:
    """Write every split of `source` into `out_dir`; returns the saved index.

    `seed` drives the per-split permutation only; `split_seed` the caps (`max_per_class`):
    by default the seed the source carved its splits with (0 for a source that carves none).
    `shuffle=False` keeps the source's order (class-ordered shards, as foreign shards may be:
    for tests).
    """
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}")
    check_labels(source)
    split_seed = membership_seed(source, split_seed)
    if max_per_class:
        source.splits = {s: cap_per_class(v, max_per_class, split_seed) for s, v in source.splits.items()}
    if shuffle:
        source.splits = {s: permuted(v, seed, s) for s, v in source.splits.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_NAME).unlink(missing_ok=True)  # before any tar is replaced: see the module docstring
    jobs = list(_jobs(out, source, shard_size, skip_bad))
    shards: Dict[str, Dict[str, ShardInfo]] = {s: {} for s in source.splits}
    bad: List[str] = []
    bar = tqdm(total=sum(len(j[2]) for j in jobs), unit="img", desc=f"shards {out.name}", disable=not progress)
    pool: Optional[mp.pool.Pool] = mp.get_context("fork").Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.imap_unordered(_write_shard, jobs) if pool else map(_write_shard, jobs)
        for split, info, shard_bad in results:
            shards[split][info.name] = info
            bad.extend(shard_bad)
            bar.update(info.num_samples + len(shard_bad))
    finally:
        bar.close()
        if pool:
            pool.terminate()
    for msg in bad:
        log(f"skipped: {msg}")
    splits = {s: SplitInfo(s, [v[n] for n in sorted(v) if v[n].num_samples]) for s, v in shards.items()}
    empty = [s for s, sp in splits.items() if not sp.num_samples]
    if empty:
        raise DataError(f"split '{empty[0]}' has no readable images left")
    args = dict(source.args, shard_size=shard_size, max_per_class=max_per_class, skipped=len(bad),
                split_seed=split_seed, shuffle_seed=seed if shuffle else None)
    index = ShardIndex(out, source.classes, splits, {"kind": source.kind, **args})
    index.save()
    return index
