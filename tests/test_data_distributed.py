"""Two real ranks (gloo): disjoint, equal-length training slices; eval covers every sample once."""
from __future__ import annotations

import json
import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from spt_dist.config.schema import DataConfig
from spt_dist.data import EvalData, ShardIndex, TrainData
from spt_dist.data.synthetic import tiny_shards

MEAN, STD = [0.5] * 3, [0.25] * 3
# (shard sizes, batch size, DataLoader workers): awkward combinations on purpose.
CASES = {
    "3shards_2workers": ([10, 7, 13], 4, 2),
    "1shard_0workers": ([9], 2, 0),
    "uneven_2workers": ([1, 25, 2, 6], 3, 2),
    "more_workers_than_batches": ([4, 4, 4, 4, 4, 4, 4], 5, 3),
}


def _rank_main(rank: int, world: int, root: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    out = {}
    for name, (_, batch, workers) in CASES.items():
        index = ShardIndex.load(f"{root}/{name}")
        cfg = DataConfig(batch_size=batch, eval_batch_size=4, num_workers=workers, shuffle_buffer=8)
        data = TrainData(cfg, index, 8, MEAN, STD, rank, world, seed=3)
        epochs = []
        for e in range(2):
            batches = [keys for images, labels, keys in data.epoch(e)]
            assert all(len(k) == batch for k in batches)
            epochs.append(batches)
        counts = [None] * world
        dist.all_gather_object(counts, [len(b) for b in epochs])  # a real collective per case
        ev = [k for _, _, keys in EvalData(cfg, index, "test", 8, MEAN, STD, rank, world) for k in keys]
        out[name] = {"bpe": data.batches_per_epoch, "epochs": epochs, "counts": counts, "eval": ev}
    with open(f"{root}/rank{rank}.json", "w") as f:
        json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    for name, (sizes, _, _) in CASES.items():
        tiny_shards(root / name, {"train": sizes, "test": [5, 6]})
    mp.spawn(_rank_main, args=(2, str(root)), nprocs=2, join=True)
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("case", list(CASES))
def test_ranks_disjoint_equal_and_cover_split(results, case):
    sizes, batch, _ = CASES[case]
    total, world = sum(sizes), 2
    bpe = total // (world * batch)
    for r in range(world):
        assert results[r][case]["bpe"] == bpe
        assert results[r][case]["counts"] == [[bpe, bpe]] * world
    for e in range(2):
        per_rank = [[k for b in results[r][case]["epochs"][e] for k in b] for r in range(world)]
        assert all(len(keys) == len(set(keys)) == bpe * batch for keys in per_rank)
        assert not set(per_rank[0]) & set(per_rank[1])
        read = set(per_rank[0]) | set(per_rank[1])
        # Everything read is in the split; only the documented remainder is missing.
        assert read <= {f"train-{i:07d}" for i in range(total)}
        assert total - len(read) == total % (world * batch)


@pytest.mark.parametrize("case", list(CASES))
def test_eval_covers_every_sample_once(results, case):
    keys = results[0][case]["eval"] + results[1][case]["eval"]
    assert sorted(keys) == [f"test-{i:07d}" for i in range(11)]
