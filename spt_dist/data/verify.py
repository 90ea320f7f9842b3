"""Read checks before training: a bad image in the test split must not wait for the end.

`check_samples` reads samples by offset and checks each against the index (bytes, digest,
label) and opens its image header (no decode): what the training and evaluation passes would
trip over. `data.verify=headers` (default) checks every validation and test sample and a
seeded sample of the training split; `full` every training sample as well and each shard's
sha256; `none` nothing. Each rank checks its own share.
"""
from __future__ import annotations

import io
import random
from typing import Iterable, Sequence

from PIL import Image

from spt_dist.io import file_sha256

from .index import ShardIndex
from .order import Loc
from .reader import BadSampleError, SampleReader
from .tarscan import IMAGE_SUFFIXES, image_digest

TRAIN_SAMPLE = 256


def check_samples(index: ShardIndex, split: str, locs: Iterable[Loc]) -> int:
    """Raises BadSampleError for the first bad sample; returns how many were checked."""
    shards = index.split(split).shards
    reader = SampleReader(index)
    n = 0
    try:
        for i, j in locs:
            raw = reader.read(shards[i], j)
            where = f"bad sample in split '{split}', shard {raw.shard}, key '{raw.key}'"
            if raw.problem:
                raise BadSampleError(f"{where}: {raw.problem} (found before training: data.verify)")
            image = next(raw.fields[s] for s in IMAGE_SUFFIXES if s in raw.fields)
            if image_digest(image) != raw.digest:
                raise BadSampleError(f"{where}: image bytes differ from index.json's digest (found before "
                                     f"training; run `spt shards verify`)")
            try:
                label = int(raw.fields["cls"].decode().strip())
            except (UnicodeDecodeError, ValueError):
                label = None
            if label != raw.label:
                raise BadSampleError(f"{where}: the tar's .cls ({raw.fields['cls'][:20]!r}) differs from "
                                     f"index.json's label {raw.label} (found before training)")
            try:
                with Image.open(io.BytesIO(image)) as img:
                    img.size  # the header only
            except (OSError, ValueError, SyntaxError) as exc:
                raise BadSampleError(f"{where}: image cannot be decoded ({type(exc).__name__}: {exc}; found "
                                     f"before training: data.verify)") from None
            n += 1
    finally:
        reader.close()
    return n


def check_shards(index: ShardIndex, rank: int, world_size: int) -> None:
    """sha256 of this rank's share of every shard against the index."""
    from .index import DataError

    shards = [s for sp in index.splits.values() for s in sp.shards]
    for s in shards[rank::world_size]:
        if file_sha256(index.shard_path(s)) != s.sha256:
            raise DataError(f"{index.shard_path(s)}: sha256 differs from index.json (the tar changed after it "
                            f"was indexed; `spt shards verify {index.root}` lists what differs)")


def sample_of(locs: Sequence[Loc], limit: int, seed: int) -> Sequence[Loc]:
    if len(locs) <= limit:
        return locs
    return random.Random(seed).sample(list(locs), limit)


def verify_before_training(mode: str, train, evals: Sequence, seed: int) -> int:
    """data.verify for this rank: `train` a TrainData, `evals` EvalData objects (None skipped).
    Returns the number of samples checked."""
    if mode == "none":
        return 0
    if mode == "full":
        check_shards(train.index, train.rank, train.world_size)
    locs = train.locations()
    n = check_samples(train.index, train.cfg.train_split,
                      locs if mode == "full" else sample_of(locs, TRAIN_SAMPLE, seed))
    for ev in evals:
        if ev is not None:
            n += check_samples(ev.index, ev.split_name, ev.locations())
    return n
