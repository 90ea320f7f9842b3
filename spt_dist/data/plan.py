"""Which samples each rank and worker reads, decided from index.json alone.

Training: the split's shards are shuffled with a seed shared by all ranks (seed, epoch),
laid end to end as one sample sequence, rotated by a shared random offset, and cut into
`world_size` contiguous slices of `batches_per_epoch * batch_size` samples; the global
remainder (fewer than world_size * batch_size samples, different ones each epoch) is
dropped. A rank's slice is cut on batch boundaries into contiguous parts, one per
DataLoader worker: worker w gets batches w, w + W, ... of the rank's output order,
because the DataLoader takes batches from its workers in turn.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Set, Tuple

from .index import ShardInfo

Segment = Tuple[ShardInfo, List[str]]  # a shard and the keys to take from it, in tar order


def mix(*parts: object) -> int:
    """A 64-bit seed from any parts; stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


Entry = Tuple[int, int, str]  # (shard position, position inside the shard, key)


def sequence(shards: Sequence[ShardInfo], selected: Optional[Set[str]]) -> List[Entry]:
    """Every selected sample, shards end to end."""
    return [(i, j, k) for i, s in enumerate(shards) for j, k in enumerate(s.keys)
            if selected is None or k in selected]


def segments(shards: Sequence[ShardInfo], seq: Sequence[Entry]) -> List[Segment]:
    """Group runs of `seq` that go forward through one shard, so each run is one read pass
    (a slice that wraps around the rotated sequence may re-enter a shard from its start)."""
    out: List[Segment] = []
    last = (-1, -1)
    for pos, j, key in seq:
        if out and last[0] == pos and j > last[1]:
            out[-1][1].append(key)
        else:
            out.append((shards[pos], [key]))
        last = (pos, j)
    return out


@dataclass
class WorkerPart:
    segments: List[Segment]
    num_batches: int
    skip_batches: int
    worker: int  # position in the unrotated order: seeds this part's shuffle buffer


def worker_batches(num_batches: int, num_workers: int) -> List[int]:
    return [num_batches // num_workers + (w < num_batches % num_workers) for w in range(num_workers)]


def skipped_per_worker(skip: int, num_workers: int) -> List[int]:
    """Batches among the rank's first `skip` that came from each worker (taken in turn)."""
    return [max(0, (skip - w + num_workers - 1) // num_workers) for w in range(num_workers)]


def train_parts(shards: Sequence[ShardInfo], selected: Optional[Set[str]], seed: int, epoch: int,
                rank: int, world_size: int, batch_size: int, num_workers: int,
                skip_batches: int) -> List[WorkerPart]:
    rng = random.Random(mix("shards", seed, epoch))
    order = list(shards)
    rng.shuffle(order)
    seq = sequence(order, selected)
    offset = rng.randrange(len(seq))
    seq = seq[offset:] + seq[:offset]
    per_rank = (len(seq) // (world_size * batch_size)) * batch_size
    mine = seq[rank * per_rank:(rank + 1) * per_rank]
    parts, start = [], 0
    for w, (nb, skip) in enumerate(zip(worker_batches(per_rank // batch_size, num_workers),
                                       skipped_per_worker(skip_batches, num_workers))):
        stop = start + nb * batch_size
        parts.append(WorkerPart(segments(order, mine[start:stop]), nb, min(skip, nb), w))
        start = stop
    # The DataLoader always asks its worker 0 first; after skipping k batches the next one
    # is worker k % W's, so rotate the parts to keep the original turn order.
    first = skip_batches % num_workers
    return parts[first:] + parts[:first]


def eval_parts(shards: Sequence[ShardInfo], selected: Optional[Set[str]], rank: int, world_size: int,
               batch_size: int, num_workers: int) -> List[Tuple[List[Segment], List[int]]]:
    """Per worker: segments to read in one pass and its batch sizes. Each rank takes a
    contiguous 1/world_size of the split; worker w takes the rank's batches w, w + W, ..."""
    seq = sequence(shards, selected)
    n = len(seq)
    mine = seq[rank * n // world_size:(rank + 1) * n // world_size]
    starts = list(range(0, len(mine), batch_size))
    parts = []
    for w in range(num_workers):
        picked = [mine[i:i + batch_size] for i in starts[w::num_workers]]
        parts.append((segments(shards, [x for b in picked for x in b]), [len(b) for b in picked]))
    return parts
