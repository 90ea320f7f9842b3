"""Dynamic batching across requests (and so across tasks): one model thread, batches of at most
`max_batch_size`, and no request waits for companions longer than `max_wait_s` after it came.
With a `key` (the task's prompt length), a batch takes waiting requests key group by key
group (schedule.take_batch), so that under load a pass holds one prompt length.

Invariant: every submitted request is answered exactly once, with its own result or its own
exception (an error of one item never fails its batch-mates); a batch is closed when it is
full or when its oldest request has waited max_wait_s; requests that arrive while the model
runs are taken together as the next batch, so batches grow with the load by themselves.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, List, Optional, Sequence

from .schedule import take_batch


@dataclass
class Pending:
    payload: Any
    arrived: float = field(default_factory=time.monotonic)
    future: Optional[asyncio.Future] = None


# run_batch(payloads) -> one result or Exception per payload, in order (runs on the model thread)
RunBatch = Callable[[Sequence[Any]], List[Any]]


class ShuttingDown(RuntimeError):
    """The server stopped before this request reached the model."""


class DynamicBatcher:
    def __init__(self, run_batch: RunBatch, max_batch_size: int = 32, max_wait_s: float = 0.005,
                 key: Optional[Callable[[Any], Hashable]] = None) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch_size >= 1 and max_wait_s >= 0 (got {max_batch_size}, {max_wait_s})")
        self.run_batch, self.max_batch_size, self.max_wait_s = run_batch, max_batch_size, max_wait_s
        self.key = None if key is None else (lambda item: key(item.payload))
        self._pending: List[Pending] = []
        self._running: List[Pending] = []  # the batch on the model thread now
        self._closing = False
        self._wake: Optional[asyncio.Event] = None
        self._full: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._model = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spt-model")

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._wake, self._full = asyncio.Event(), asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, payload: Any) -> Any:
        """The payload's result (raises its exception); call from the event loop."""
        if self._task is None or self._task.done() or self._closing:
            raise ShuttingDown("the server is shutting down")
        item = Pending(payload, future=asyncio.get_running_loop().create_future())
        self._pending.append(item)
        self._wake.set()
        if len(self._pending) >= self.max_batch_size:
            self._full.set()
        return await item.future

    async def stop(self) -> None:
        """Answer what is queued and what the model runs now (requests submitted from here on
        get ShuttingDown), then stop the loop and the model thread."""
        self._closing = True
        if self._task is not None:
            while (self._pending or self._running) and not self._task.done():
                await asyncio.sleep(0.001)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._pending + self._running:  # only if the loop itself ended early
            if not item.future.done():
                item.future.set_exception(ShuttingDown("the server is shutting down"))
        self._pending.clear()
        self._running = []
        self._model.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if not self._pending:
                self._wake.clear()
                continue
            wait = self._pending[0].arrived + self.max_wait_s - time.monotonic()
            if len(self._pending) < self.max_batch_size and wait > 0:
                try:
                    await asyncio.wait_for(self._full.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            batch, self._pending = take_batch(self._pending, self.max_batch_size, self.key)
            self._running = batch
            if len(self._pending) < self.max_batch_size:
                self._full.clear()
            if not self._pending:
                self._wake.clear()
            try:
                results = await loop.run_in_executor(self._model, self.run_batch, [p.payload for p in batch])
            except Exception as exc:  # noqa: BLE001 - a failing model answers each request with it
                results = [exc] * len(batch)
            for item, result in zip(batch, results):
                if item.future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            self._running = []
