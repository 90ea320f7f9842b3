"""The dynamic batcher and the batch schedule: sizes, waiting, grouping by prompt length,
one answer per request (its own result or its own error), queued requests answered at stop."""
from __future__ import annotations

import asyncio
import time

import pytest

from spt_dist.serve.batcher import DynamicBatcher, ShuttingDown
from spt_dist.serve.schedule import scheduled, take_batch


def test_take_batch_fills_group_by_group_from_the_oldest():
    waiting = ["a1", "b1", "a2", "c1", "b2", "a3", "c2", "d1"]
    key = lambda s: s[0]  # noqa: E731
    batch, rest = take_batch(waiting, 4, key)
    assert batch == ["a1", "a2", "a3", "d1"] and rest == ["b1", "c1", "b2", "c2"]  # all of a; b, c not split
    batch, rest = take_batch(rest + ["a4"], 2, key)
    assert batch == ["b1", "b2"] and rest == ["c1", "c2", "a4"]  # the oldest (b1) decides
    batch, rest = take_batch(["c1", "c2", "c3", "a4", "a5", "b3"], 2, key)
    assert batch == ["c1", "c2"] and rest == ["c3", "a4", "a5", "b3"]  # the oldest group is split at the size
    assert take_batch(["x", "y"], 4, key) == (["x", "y"], [])
    assert take_batch(waiting, 3) == (waiting[:3], waiting[3:])  # no key: first come, first served
    # Offline: every item once, in batches of at most the size, mostly one key per batch.
    items = [f"{'abcd'[i % 4]}{i}" for i in range(64)]
    batches = list(scheduled(items, 8, key, window=32))
    assert sorted(x for b in batches for x in b) == sorted(items) and max(map(len, batches)) == 8
    assert sum(len({x[0] for x in b}) == 1 for b in batches) == len(batches)
    # Leftovers of several keys: no key's items are split over two batches when they fit in one.
    # Filling [a8, a9, b0-b4] up with c0 would cost a pass over c1-c4 later: 5 passes, not 4.
    items = [*(f"a{i}" for i in range(10)), *(f"b{i}" for i in range(5)), *(f"c{i}" for i in range(5))]
    batches = list(scheduled(items, 8, key, window=64))
    assert [sorted({x[0] for x in b}) for b in batches] == [["a"], ["a", "b"], ["c"]]
    assert sorted(x for b in batches for x in b) == sorted(items)


def test_batcher_batches_waits_and_answers_each_request_alone():
    seen = []

    def run(payloads):
        seen.append(list(payloads))
        return [ValueError(f"bad {p}") if p % 7 == 3 else p * 10 for p in payloads]

    async def main():
        b = DynamicBatcher(run, max_batch_size=4, max_wait_s=0.05, key=lambda p: p % 2)
        b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(10)), return_exceptions=True)
        t0 = time.monotonic()
        alone = await b.submit(100)  # nobody to wait for: answered once max_wait has passed
        waited = time.monotonic() - t0
        pending = [asyncio.ensure_future(b.submit(i)) for i in (200, 201)]
        await asyncio.sleep(0)
        await b.stop()  # what is queued is still answered
        # answered by the stop; each submit task still needs a turn of the loop to return it
        late = await asyncio.wait_for(asyncio.gather(*pending), timeout=5)
        return results, alone, waited, late

    results, alone, waited, late = asyncio.run(main())
    for i, r in enumerate(results):
        assert (isinstance(r, ValueError) and str(r) == f"bad {i}") if i % 7 == 3 else r == i * 10
    assert alone == 1000 and 0.04 <= waited < 5 and late == [2000, 2010]
    assert [len(s) for s in seen[:3]] == [4, 4, 2]
    assert seen[0] == [0, 2, 4, 6] and seen[1] == [1, 3, 5, 7]  # one prompt length (key) per batch


def test_stop_answers_the_batch_the_model_runs_and_refuses_later_requests():
    """stop() while a batch is on the model thread (taken from the queue: nothing is queued)
    waits for it and answers it; a request submitted once the stop began gets ShuttingDown."""
    import threading

    running = threading.Event()

    def run(payloads):
        running.set()
        time.sleep(0.3)
        return [p * 10 for p in payloads]

    async def main():
        b = DynamicBatcher(run, max_batch_size=2, max_wait_s=0.0)
        b.start()
        inflight = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        while not running.is_set():
            await asyncio.sleep(0.001)
        assert b.queued == 0
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0.01)
        with pytest.raises(ShuttingDown):
            await b.submit(3)
        await asyncio.wait_for(stopping, timeout=5)
        return await asyncio.wait_for(asyncio.gather(*inflight), timeout=5)

    assert asyncio.run(main()) == [10, 20]


def test_batcher_refuses_bad_settings():
    with pytest.raises(ValueError):
        DynamicBatcher(lambda p: p, max_batch_size=0)
