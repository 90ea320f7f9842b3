"""Which samples each rank and DataLoader worker reads, decided from index.json alone.

Training, `data.shuffle=exact` (the default): every epoch the selected samples of the split,
ordered by key, are put in a uniform random permutation seeded by (seed, epoch), the same on
every rank. Global batch g is permutation[g*W*B : (g+1)*W*B] (W ranks, B per-rank batch);
rank r takes its r-th B-slice, so a batch is a uniform draw from the whole split whatever
the order of the source or the layout of the shards. The remainder (fewer than W*B samples,
different ones every epoch) is dropped: every rank has the same number of full batches.
With data.drop_last=false (one rank only) it is the epoch's last, short batch instead, and the
epoch's ceil(N/B) batches must be whole accumulation windows (`kept_last_problem`).

Training, `data.shuffle=stream` (for data too large to read at random): the split's shards
are shuffled with a shared (seed, epoch) seed, laid end to end, rotated by a shared random
offset and cut into W contiguous slices of `batches_per_epoch * B` samples (with
data.drop_last=false, one rank: every sample, the last batch short). Each worker reads its part
sequentially, `data.stream_shards` segments at once (interleaved at random), then through a
seeded shuffle buffer (see loader.py).

In both, a rank's batches are dealt to its DataLoader workers in turn (worker w gets
batches w, w + NW, ...), because the DataLoader takes batches from its workers in turn;
after `skip_batches` the turn starts again at worker 0 with the first batch not skipped.

Evaluation: every sample once across ranks, in index order, rank r a contiguous share.
Drawn samples (prototype init): every draw of a sample once across ranks, the same way.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar

import numpy as np

from .index import ShardInfo

T = TypeVar("T")
Segment = Tuple[ShardInfo, List[int]]  # a shard and the positions to take from it, ascending
Loc = Tuple[int, int]                  # (shard position in the split, sample position in the shard)


def mix(*parts: object) -> int:
    """A 64-bit seed from any parts; stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def locations(shards: Sequence[ShardInfo], selected: Optional[Set[str]]) -> List[Loc]:
    """Every selected sample of the split, in index order."""
    return [(i, j) for i, s in enumerate(shards) for j, k in enumerate(s.keys) if selected is None or k in selected]


def batches_per_epoch(num_samples: int, world_size: int, batch_size: int, drop_last: bool = True,
                      grad_accum: int = 1) -> int:
    """Training micro-batches per rank and epoch: every optimizer step's W*B*A samples (A
    micro-batches of W*B), so an accumulation window never spans two epochs and an epoch is the
    same optimizer steps on every shape with that global batch. With drop_last false (one rank)
    every sample instead, ceil(N / B) micro-batches, the last one short; the windows stay inside
    the epoch only when that count is a multiple of A, which `kept_last_problem` requires before
    training (TrainData, and the engine's preflight on the login node)."""
    if not drop_last:
        full, rest = divmod(num_samples, world_size * batch_size)
        return full + int(bool(rest))
    return (num_samples // (world_size * batch_size * grad_accum)) * grad_accum


def _fills_windows(num_samples: int, batch_size: int, grad_accum: int) -> bool:
    return batches_per_epoch(num_samples, 1, batch_size, False) % grad_accum == 0


def _kept_last_sizes(num_samples: int, batch_size: int, grad_accum: int) -> List[int]:
    """The nearest batch sizes below and above `batch_size` whose drop_last=false epoch is whole
    accumulation windows (none above N / (A - 1): fewer than A micro-batches)."""
    below = range(batch_size - 1, 0, -1)
    above = range(batch_size + 1, num_samples // max(1, grad_accum - 1) + 1)
    found = (next((b for b in sizes if _fills_windows(num_samples, b, grad_accum)), None) for sizes in (below, above))
    return [b for b in found if b is not None]


def kept_last_divisors(per_epoch: int) -> str:
    """The accumulations a drop_last=false epoch of `per_epoch` micro-batches is whole windows of."""
    return ", ".join(str(a) for a in range(1, per_epoch + 1) if per_epoch % a == 0)


def kept_last_problem(num_samples: int, batch_size: int, grad_accum: int, global_batch: int = 0) -> Optional[str]:
    """Why data.drop_last=false (one rank) cannot accumulate `grad_accum` micro-batches of
    `batch_size` over an epoch of `num_samples`, or None. The engine counts accumulation windows
    across epochs (as DeepSpeed counts its micro-steps), so an epoch that is not whole windows
    would have a step take batches of two epochs and leave the run's last micro-batches unstepped.
    `global_batch`: data.global_batch, when it set the micro-batch and accumulation (the message
    then names it, since the two keys it derived are not the user's to change)."""
    per_epoch = batches_per_epoch(num_samples, 1, batch_size, False)
    if per_epoch % grad_accum == 0:
        return None
    if global_batch:
        return (f"config key 'data.global_batch' = {global_batch} with data.drop_last=false: it trains "
                f"{batch_size} x {grad_accum} (micro-batch x accumulation), and an epoch of {num_samples} samples "
                f"has ceil({num_samples} / {batch_size}) = {per_epoch} micro-batches (the last one short), not a "
                f"multiple of {grad_accum}, so an optimizer step would take batches of two epochs; allowed: "
                f"data.drop_last=true, or a data.global_batch (or data.batch_size) whose epoch is whole "
                f"accumulation windows")
    accums = kept_last_divisors(per_epoch)
    sizes = " or ".join(map(str, _kept_last_sizes(num_samples, batch_size, grad_accum)))
    return (f"config key 'optim.grad_accum' = {grad_accum} with data.drop_last=false: an epoch of {num_samples} "
            f"samples has ceil({num_samples} / data.batch_size {batch_size}) = {per_epoch} micro-batches (the last "
            f"one short), not a multiple of {grad_accum}, so an optimizer step would take batches of two epochs; "
            f"allowed: data.drop_last=true, optim.grad_accum {accums} (divisors of {per_epoch})"
            + (f", or data.batch_size {sizes} with optim.grad_accum {grad_accum}" if sizes else ""))


def deal(batches: Sequence[T], skip: int, num_workers: int) -> List[List[T]]:
    """Batches from `skip` on, dealt to `num_workers` workers in turn."""
    rest = list(batches[skip:])
    return [rest[w::num_workers] for w in range(num_workers)]


def pad_batch(good: Sequence[T], size: int) -> List[T]:
    """A training batch of `size` from its good samples, repeated in turn in place of the bad
    ones (data.on_bad_sample=skip): batch counts and resume points do not depend on bad data."""
    return [good[i % len(good)] for i in range(size)]


# -- exact shuffle ---------------------------------------------------------------------------

def by_key(shards: Sequence[ShardInfo], selected: Optional[Set[str]]) -> List[Loc]:
    """The selected samples ordered by key: the exact shuffle's starting order, so that the
    epochs do not depend on how the samples are laid out in shards."""
    locs = locations(shards, selected)
    locs.sort(key=lambda loc: shards[loc[0]].keys[loc[1]])
    return locs


def exact_batches(locs: Sequence[Loc], seed: int, epoch: int, world_size: int, batch_size: int,
                  ranks: Sequence[int], drop_last: bool = True, grad_accum: int = 1) -> List[List[List[Loc]]]:
    """Per rank in `ranks`: its B-slice of every global batch of W*B of the epoch's
    permutation of `locs` (from `by_key`); with `drop_last` false the last one may be short."""
    order = np.random.default_rng(mix("exact", seed, epoch)).permutation(len(locs))
    g = world_size * batch_size
    steps = batches_per_epoch(len(locs), world_size, batch_size, drop_last, grad_accum)
    return [[[locs[i] for i in order[s * g + r * batch_size: s * g + (r + 1) * batch_size]]
             for s in range(steps)] for r in ranks]


# -- streaming -------------------------------------------------------------------------------

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
    for pos, j, _ in seq:
        if out and last[0] == pos and j > last[1]:
            out[-1][1].append(j)
        else:
            out.append((shards[pos], [j]))
        last = (pos, j)
    return out


@dataclass
class WorkerPart:
    segments: List[Segment]
    num_batches: int
    skip_batches: int
    worker: int  # position in the unrotated order: seeds this part's interleave and buffer


def worker_batches(num_batches: int, num_workers: int) -> List[int]:
    return [num_batches // num_workers + (w < num_batches % num_workers) for w in range(num_workers)]


def skipped_per_worker(skip: int, num_workers: int) -> List[int]:
    """Batches among the rank's first `skip` that came from each worker (taken in turn)."""
    return [max(0, (skip - w + num_workers - 1) // num_workers) for w in range(num_workers)]


def stream_parts(shards: Sequence[ShardInfo], selected: Optional[Set[str]], seed: int, epoch: int,
                 rank: int, world_size: int, batch_size: int, num_workers: int,
                 skip_batches: int, drop_last: bool = True, grad_accum: int = 1) -> List[WorkerPart]:
    rng = random.Random(mix("shards", seed, epoch))
    order = list(shards)
    rng.shuffle(order)
    seq = sequence(order, selected)
    offset = rng.randrange(len(seq))
    seq = seq[offset:] + seq[:offset]
    num_batches = batches_per_epoch(len(seq), world_size, batch_size, drop_last, grad_accum)
    per_rank = min(num_batches * batch_size, len(seq) // world_size)
    mine = seq[rank * per_rank:(rank + 1) * per_rank]
    sizes = [nb * batch_size for nb in worker_batches(num_batches, num_workers)]
    # A short last batch is the last one the DataLoader takes: its worker's part is shorter.
    sizes[(num_batches - 1) % num_workers] -= num_batches * batch_size - per_rank
    parts, start = [], 0
    for w, (nb, skip) in enumerate(zip(worker_batches(num_batches, num_workers),
                                       skipped_per_worker(skip_batches, num_workers))):
        stop = start + sizes[w]
        parts.append(WorkerPart(segments(order, mine[start:stop]), nb, min(skip, nb), w))
        start = stop
    # The DataLoader always asks its worker 0 first; after skipping k batches the next one
    # is worker k % W's, so rotate the parts to keep the original turn order.
    first = skip_batches % num_workers
    return parts[first:] + parts[:first]


def interleave(sources: Iterable[Iterable[T]], width: int, rng: random.Random) -> Iterator[T]:
    """The items of `sources`, each read in order and at most `width` open at once; every
    next item comes from a randomly chosen open source. Mixes shards without a second read;
    the order depends only on the sources' lengths and `rng`."""
    pending, active = iter(sources), []
    while True:
        while len(active) < width:
            nxt = next(pending, None)
            if nxt is None:
                break
            active.append(iter(nxt))
        if not active:
            return
        i = rng.randrange(len(active))
        try:
            yield next(active[i])
        except StopIteration:
            active.pop(i)


def shuffle_buffer(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Seeded reservoir shuffle: the order depends on positions only, never on contents."""
    if size <= 1:
        yield from items
        return
    buf: List[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


def stream_order(items_per_segment: Iterable[Iterable[T]], width: int, buffer: int, seed: int, epoch: int,
                 rank: int, worker: int) -> Iterator[T]:
    """A worker part's read order in stream mode: interleave, then shuffle buffer."""
    mixed = interleave(items_per_segment, width, random.Random(mix("interleave", seed, epoch, rank, worker)))
    return shuffle_buffer(mixed, buffer, random.Random(mix("buffer", seed, epoch, rank, worker)))


# -- evaluation ------------------------------------------------------------------------------

def _share(items: Sequence[T], rank: int, world_size: int, batch_size: int) -> List[List[T]]:
    """Rank `rank`'s contiguous share of `items`, in batches (the last one short)."""
    n = len(items)
    mine = items[rank * n // world_size:(rank + 1) * n // world_size]
    return [list(mine[i:i + batch_size]) for i in range(0, len(mine), batch_size)]


def eval_batches(shards: Sequence[ShardInfo], selected: Optional[Set[str]], rank: int, world_size: int,
                 batch_size: int) -> List[List[Loc]]:
    """Rank `rank`'s contiguous share of the split in index order, in batches (last one short)."""
    return _share(locations(shards, selected), rank, world_size, batch_size)


Draw = Tuple[int, int, int]  # (shard position, sample position, copy)


def draw_name(key: str, copy: int) -> str:
    """The name of a sample's `copy`-th draw: the key itself for the first."""
    return key if copy == 0 else f"{key}#{copy}"


def drawn_batches(shards: Sequence[ShardInfo], draws: Mapping[str, int], rank: int, world_size: int,
                  batch_size: int) -> List[List[Draw]]:
    """Every draw of every drawn sample (key -> times drawn) in index order, copies together;
    rank `rank`'s contiguous share, in batches (last one short)."""
    items = [(i, j, c) for i, j in locations(shards, set(draws)) for c in range(draws[shards[i].keys[j]])]
    return _share(items, rank, world_size, batch_size)
