"""TrainData / EvalData / DrawnData: shards in, equal batches on every rank out.

Stages (order.py decides who reads what, from the index alone):
- exact (default): one uniform permutation of the whole split per epoch, shared by all
  ranks -> rank's slice of every global batch -> dealt to DataLoader workers -> random
  access by offset -> decode + transform -> batch.
- stream: shard list shuffled with a shared per-epoch seed -> split by rank -> split by
  worker -> sequential tar reads, several shards interleaved -> seeded shuffle buffer ->
  decode + transform -> batch.
Every rank yields exactly `batches_per_epoch` batches: full ones, and with
data.drop_last=false (one rank only) a short last one holding the remainder.
DrawnData reads each draw of drawn samples once across ranks through the training transform,
seeded per draw, so a draw's pixels do not depend on the rank that reads it.

Bad samples (data.on_bad_sample=skip) keep their position: in training a bad sample is
replaced by a repeat of a good sample of the same batch, so batch counts and resume
points stay exact; a batch with no good sample at all is an error. In evaluation bad
samples are dropped (and counted).
"""
from __future__ import annotations

import dataclasses
import itertools
import multiprocessing as mp
import random
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config.schema import DataConfig
from ..config.validate import drop_last_problem
from .fraction import select_fraction
from .index import DataError, ShardIndex
from .mixing import MixingReport, check_mixing, mixing_report
from .order import (Draw, Loc, batches_per_epoch, by_key, deal, draw_name, drawn_batches, eval_batches, exact_batches,
                    kept_last_problem, locations, mix, pad_batch, stream_order, stream_parts)
from .cache import DecodedCache, Fresh, Offers
from .reader import BadSampleError, RawSample, SampleReader, decode_sample, read_segment
from .transforms import ImageTransform, build_transform

Batch = Tuple[torch.Tensor, torch.Tensor, List[str]]


def _worker() -> int:
    info = get_worker_info()
    return info.id if info else 0


class _Decoder:
    """Decode a list of raw samples into tensors; bad ones raise or are reported. With a
    cache, a kept sample is not decoded again, and what is decoded is offered to the cache."""

    def __init__(self, transform: ImageTransform, num_classes: int, skip: bool,
                 cache: Optional[DecodedCache] = None):
        self.transform, self.num_classes, self.skip, self.cache = transform, num_classes, skip, cache

    def _prepared(self, raw: RawSample, offers: Optional[Offers], fresh: Fresh) -> Tuple[np.ndarray, int]:
        kept = self.cache.get(raw.key) if self.cache is not None else None
        if kept is not None:
            return kept
        prepared, label = decode_sample(raw, self.transform, self.num_classes)
        if offers is not None:
            offers.take(raw.key, prepared, label, fresh)
        return prepared, label

    def __call__(self, raws: Sequence[RawSample], seeds: Optional[Sequence[int]] = None,
                 offers: Optional[Offers] = None, fresh: Optional[Fresh] = None):
        good, bad = [], 0
        for i, raw in enumerate(raws):
            rng = random.Random(seeds[i]) if seeds is not None else None
            try:
                prepared, label = self._prepared(raw, offers, fresh if fresh is not None else [])
            except BadSampleError as exc:
                if not self.skip:
                    raise BadSampleError(f"{exc}; set data.on_bad_sample=skip to skip such samples") from None
                bad += 1
                continue
            good.append((self.transform.finish(prepared, rng), label, raw.key))
        return good, bad

    def train_batch(self, raws: Sequence[RawSample], seed: int, epoch: int, rank: int, offers: Optional[Offers]):
        # Augmentation seed per (seed, epoch, sample key): a key is read once per epoch.
        fresh: Fresh = []
        good, bad = self(raws, [mix("aug", seed, epoch, r.key) for r in raws], offers, fresh)
        if not good:
            raise BadSampleError(f"rank {rank}: every sample of a training batch is bad "
                                 f"(first: shard {raws[0].shard}, key '{raws[0].key}'); cannot pad it")
        return _stack(pad_batch(good, len(raws)), self.transform) + (bad, fresh)

    def offers(self) -> Optional[Offers]:
        return self.cache.offers() if self.cache is not None else None


def _stack(good, transform: ImageTransform) -> Batch:
    pixels = torch.from_numpy(np.stack([g[0] for g in good]))
    return (transform.normalize(pixels), torch.tensor([g[1] for g in good], dtype=torch.int64),
            [g[2] for g in good])


class _ByOffset(IterableDataset):
    """Per worker: its batches of sample locations, read at random."""

    def __init__(self, index: ShardIndex, split: str, parts: List[List[List[Loc]]]):
        self.index, self.split, self.parts = index, split, parts

    def batches(self, kept: Optional[DecodedCache] = None) -> Iterator[List[RawSample]]:
        """Raw samples per batch; those in `kept` are named, not read."""
        shards = self.index.split(self.split).shards
        reader = SampleReader(self.index)
        try:
            for batch in self.parts[_worker()]:
                yield [RawSample(shards[i].keys[j], self.index.shard_path(shards[i]))
                       if kept is not None and shards[i].keys[j] in kept else reader.read(shards[i], j)
                       for i, j, *_ in batch]
        finally:
            reader.close()


class _ExactTrain(_ByOffset):
    def __init__(self, index, split, parts, decoder: _Decoder, seed: int, epoch: int, rank: int):
        super().__init__(index, split, parts)
        self.decoder, self.seed, self.epoch, self.rank = decoder, seed, epoch, rank

    def __iter__(self):
        offers = self.decoder.offers()
        for raws in self.batches(self.decoder.cache):
            yield self.decoder.train_batch(raws, self.seed, self.epoch, self.rank, offers)


class _StreamTrain(IterableDataset):
    def __init__(self, index: ShardIndex, parts, batch_size: int, buffer: int,
                 width: int, decoder: _Decoder, seed: int, epoch: int, rank: int):
        self.index, self.parts, self.batch_size = index, parts, batch_size
        self.buffer, self.width = buffer, width
        self.decoder, self.seed, self.epoch, self.rank = decoder, seed, epoch, rank

    def _segment(self, shard, positions: List[int]) -> Iterator[RawSample]:
        path, kept = self.index.shard_path(shard), self.decoder.cache
        if kept is not None and all(shard.keys[p] in kept for p in positions):
            return iter([RawSample(shard.keys[p], path) for p in positions])  # nothing to read
        return read_segment(shard, path, positions)

    def __iter__(self):
        part, offers = self.parts[_worker()], self.decoder.offers()
        segs = (self._segment(s, positions) for s, positions in part.segments)
        stream = stream_order(segs, self.width, self.buffer, self.seed, self.epoch, self.rank, part.worker)
        for b in range(part.num_batches):
            raws = list(itertools.islice(stream, self.batch_size))
            if b < part.skip_batches:
                continue  # resume: consumed in order, never decoded
            yield self.decoder.train_batch(raws, self.seed, self.epoch, self.rank, offers)


class _Eval(_ByOffset):
    def __init__(self, index, split, parts, decoder: _Decoder):
        super().__init__(index, split, parts)
        self.decoder = decoder

    def __iter__(self):
        for raws in self.batches():
            good, bad = self.decoder(raws)
            yield (_stack(good, self.decoder.transform) if good else (None, None, [])) + (bad,)


class _Drawn(_Eval):
    """Batches of draws (shard, sample, copy): each copy named and augmented on its own."""

    def __init__(self, index, split, parts, decoder: _Decoder, seed: int):
        super().__init__(index, split, parts, decoder)
        self.seed = seed

    def __iter__(self):
        shards = self.index.split(self.split).shards
        for batch, raws in zip(self.parts[_worker()], self.batches()):
            keys = [shards[i].keys[j] for i, j, _ in batch]
            raws = [dataclasses.replace(r, key=draw_name(k, c)) for r, k, (_, _, c) in zip(raws, keys, batch)]
            good, bad = self.decoder(raws, [mix("draw", self.seed, k, c) for k, (_, _, c) in zip(keys, batch)])
            yield (_stack(good, self.decoder.transform) if good else (None, None, [])) + (bad,)


def _loader(dataset: IterableDataset, num_workers: int) -> DataLoader:
    # Fork even where the default is spawn (inside mp.spawn ranks): spawned workers would
    # re-import torch for every epoch. Workers only decode on the CPU, never touch CUDA.
    # Its own generator: the workers seed themselves from (seed, epoch, key), and starting an
    # epoch must not draw from the global torch RNG that training uses (exact resume).
    context = "fork" if num_workers and "fork" in mp.get_all_start_methods() else None
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, multiprocessing_context=context,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      generator=torch.Generator().manual_seed(0))


def _check_keys(index: ShardIndex, split: str, keys: Sequence[str]) -> set:
    known = set(index.split(split).keys())
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise DataError(f"{index.root}: {len(unknown)} key(s) not in split '{split}', first: '{unknown[0]}'")
    return set(keys)


class TrainData:
    """The training split for one rank; see the module docstring for the stages.

    `mixing`: how well the planned batches mix the classes (distinct classes per batch
    against a uniform permutation's); checked per `data.mixing_check` when built.
    """

    def __init__(self, data_cfg: DataConfig, index: ShardIndex, img_size: int, mean: Sequence[float],
                 std: Sequence[float], rank: int, world_size: int, seed: int, grad_accum: int = 1):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        problem = drop_last_problem(data_cfg.drop_last, world_size)
        if problem:
            raise DataError(problem)
        self.cfg, self.index, self.rank, self.world_size, self.seed = data_cfg, index, rank, world_size, seed
        self.split = index.split(data_cfg.train_split)
        if data_cfg.fraction < 1.0:
            self.selected_keys = select_fraction(index, data_cfg.train_split, data_cfg.fraction,
                                                 data_cfg.fraction_seed)
            self._selected: Optional[set] = set(self.selected_keys)
        else:
            self.selected_keys, self._selected = self.split.keys(), None
        self.num_samples = len(self.selected_keys)
        need = world_size * data_cfg.batch_size
        if self.num_samples < need:
            raise DataError(f"{index.root}: split '{data_cfg.train_split}' has {self.num_samples} samples "
                            f"(data.fraction={data_cfg.fraction}) but world_size {world_size} x "
                            f"data.batch_size {data_cfg.batch_size} = {need} are needed for one batch per rank; "
                            f"lower data.batch_size or use fewer ranks")
        problem = None if data_cfg.drop_last else kept_last_problem(self.num_samples, data_cfg.batch_size, grad_accum,
                                                                          data_cfg.global_batch)
        if problem:
            raise DataError(problem)
        self.grad_accum = grad_accum
        self.batches_per_epoch = batches_per_epoch(self.num_samples, world_size, data_cfg.batch_size,
                                                   data_cfg.drop_last, grad_accum)
        self.bad_samples = 0
        self.transform = build_transform(data_cfg.preset, img_size, mean, std, train=True)
        self.cache = DecodedCache(data_cfg.cache_mb * 2 ** 20) if data_cfg.cache_mb else None
        self._decoder = _Decoder(self.transform, index.num_classes, data_cfg.on_bad_sample == "skip", self.cache)
        self._locs = by_key(self.split.shards, self._selected) if data_cfg.shuffle == "exact" else []
        self.mixing: MixingReport = mixing_report(self)
        check_mixing(self.mixing, data_cfg)

    def locations(self) -> List[Loc]:
        """This rank's share of the selected training samples (every world_size-th)."""
        return list(locations(self.split.shards, self._selected))[self.rank::self.world_size]

    def label_batches(self, epoch: int, ranks: Sequence[int], limit: int) -> List[List[int]]:
        """Labels of up to `limit` planned batches per rank in `ranks` for `epoch`, from the
        index alone (the plan the reader follows; no tar is opened)."""
        shards, b = self.split.shards, self.cfg.batch_size
        if self.cfg.shuffle == "exact":
            plans = exact_batches(self._locs, self.seed, epoch, self.world_size, b, ranks, self.cfg.drop_last,
                                  self.grad_accum)
            return [[shards[i].labels[j] for i, j in batch] for plan in plans for batch in plan[:limit]]
        out: List[List[int]] = []
        for rank in ranks:
            mine: List[List[int]] = []
            for part in stream_parts(shards, self._selected, self.seed, epoch, rank, self.world_size, b,
                                     max(1, self.cfg.num_workers), 0, self.cfg.drop_last, self.grad_accum):
                labels = ([s.labels[p] for p in positions] for s, positions in part.segments)
                order = list(itertools.islice(stream_order(labels, self.cfg.stream_shards, self.cfg.shuffle_buffer,
                                                           self.seed, epoch, rank, part.worker),
                                              part.num_batches * b))
                mine.extend(order[i:i + b] for i in range(0, len(order), b))
            out.extend(mine[:limit])
        return out

    def _exact(self, epoch: int) -> List[List[Loc]]:
        cfg = self.cfg
        return exact_batches(self._locs, self.seed, epoch, self.world_size, cfg.batch_size, [self.rank],
                             cfg.drop_last, self.grad_accum)[0]

    def planned_keys(self, epoch: int) -> List[List[str]]:
        """This rank's batches of `epoch` as sample keys, from the index alone (data.shuffle=exact;
        in stream mode the order depends on the worker count and is known only when read)."""
        if self.cfg.shuffle != "exact":
            raise DataError("planned_keys needs data.shuffle=exact")
        shards = self.split.shards
        return [[shards[i].keys[j] for i, j in batch] for batch in self._exact(epoch)]

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        """This rank's batches of `epoch`; `skip_batches=k` yields exactly batches k, k+1, ..."""
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise DataError(f"skip_batches={skip_batches} outside 0..{self.batches_per_epoch}")
        workers, cfg = max(1, self.cfg.num_workers), self.cfg
        shards = self.split.shards
        if cfg.shuffle == "exact":
            stream: IterableDataset = _ExactTrain(self.index, cfg.train_split,
                                                  deal(self._exact(epoch), skip_batches, workers),
                                                  self._decoder, self.seed, epoch, self.rank)
        else:
            parts = stream_parts(shards, self._selected, self.seed, epoch, self.rank, self.world_size,
                                 cfg.batch_size, workers, skip_batches, cfg.drop_last, self.grad_accum)
            stream = _StreamTrain(self.index, parts, cfg.batch_size, cfg.shuffle_buffer, cfg.stream_shards,
                                  self._decoder, self.seed, epoch, self.rank)
        for images, labels, keys, bad, fresh in _loader(stream, cfg.num_workers):
            self.bad_samples += bad
            if fresh:
                self.cache.admit(fresh)
            yield images, labels, keys


class EvalData:
    """Every sample of `split` (or of `keys`) exactly once across ranks, in index order.

    `bad_samples`: samples this rank dropped (data.on_bad_sample=skip) in the latest pass.
    Reset when a pass starts, final once the pass is iterated to the end (dropped samples at
    the end of the split are counted even when no batch follows them). Per rank: sum it over
    ranks for the split's total.
    """

    def __init__(self, data_cfg: DataConfig, index: ShardIndex, split: str, img_size: int,
                 mean: Sequence[float], std: Sequence[float], rank: int, world_size: int,
                 keys: Optional[Sequence[str]] = None):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.cfg, self.index, self.split_name = data_cfg, index, split
        self.rank, self.world_size = rank, world_size
        self._selected = _check_keys(index, split, keys) if keys is not None else None
        self.num_samples = len(self._selected) if keys is not None else index.split(split).num_samples
        self.bad_samples = 0
        transform = build_transform(data_cfg.preset, img_size, mean, std, train=False)
        self._decoder = _Decoder(transform, index.num_classes, data_cfg.on_bad_sample == "skip")

    def _batches(self) -> List[List[Loc]]:
        return eval_batches(self.index.split(self.split_name).shards, self._selected, self.rank,
                            self.world_size, self.cfg.eval_batch_size)

    def _dataset(self, parts: List[List[List[Loc]]]) -> IterableDataset:
        return _Eval(self.index, self.split_name, parts, self._decoder)

    def locations(self) -> List[Loc]:
        """The samples this rank evaluates."""
        return [loc for batch in self._batches() for loc in batch]

    def __iter__(self) -> Iterator[Batch]:
        """This rank's batches; `bad_samples` restarts at 0 with every pass (see the class doc)."""
        self.bad_samples = 0
        workers = max(1, self.cfg.num_workers)
        for images, labels, keys, bad in _loader(self._dataset(deal(self._batches(), 0, workers)),
                                                 self.cfg.num_workers):
            self.bad_samples += bad
            if keys:
                yield images, labels, keys


class DrawnData(EvalData):
    """Samples of `split` drawn `draws[key]` times each, every draw read once across ranks (rank
    r a contiguous share, index order) through the training transform of data.preset, its
    augmentation seeded by (seed, key, copy) alone: the same pixels on any number of ranks,
    batch size or worker count, and independent crops for the copies of one image. A batch's
    keys name its draws (order.draw_name: `key`, then `key#1`, `key#2`, ...).
    """

    def __init__(self, data_cfg: DataConfig, index: ShardIndex, split: str, img_size: int,
                 mean: Sequence[float], std: Sequence[float], rank: int, world_size: int,
                 draws: Mapping[str, int], seed: int):
        super().__init__(data_cfg, index, split, img_size, mean, std, rank, world_size, keys=list(draws))
        self.draws, self.seed = dict(draws), seed
        self.num_samples = sum(self.draws.values())
        transform = build_transform(data_cfg.preset, img_size, mean, std, train=True)
        self._decoder = _Decoder(transform, index.num_classes, data_cfg.on_bad_sample == "skip")

    def _batches(self) -> List[List[Draw]]:
        return drawn_batches(self.index.split(self.split_name).shards, self.draws, self.rank, self.world_size,
                             self.cfg.eval_batch_size)

    def _dataset(self, parts: List[List[List[Draw]]]) -> IterableDataset:
        return _Drawn(self.index, self.split_name, parts, self._decoder, self.seed)
