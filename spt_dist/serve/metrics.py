"""Serving counters: requests by status and task, batch sizes, tasks per batch, latency percentiles.

Invariant: every answered request is counted once, under the status code it got; latencies
(arrival to answer, successful classifications only) and batch figures cover the last
`window` of each, so a long-running server reports its recent behaviour in constant memory.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Dict, Sequence

import numpy as np


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> Dict[str, float]:
    if not values:
        return {f"p{q:g}": None for q in qs}
    got = np.percentile(np.asarray(values, dtype=np.float64), qs)
    return {f"p{q:g}": round(float(v), 3) for q, v in zip(qs, got)}


class ServeMetrics:
    def __init__(self, window: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.status: Counter = Counter()
        self.tasks: Counter = Counter()
        self.batch_sizes: Counter = Counter()
        self.tasks_per_batch: Counter = Counter()
        self.batches = 0
        self.images = 0
        self._latency_ms: deque = deque(maxlen=window)
        self._model_ms: deque = deque(maxlen=window)

    def request(self, status: int, task: str = "", latency_s: float = -1.0) -> None:
        with self._lock:
            self.status[status] += 1
            if task and status == 200:
                self.tasks[task] += 1
            if latency_s >= 0:
                self._latency_ms.append(latency_s * 1000.0)

    def batch(self, tasks: Sequence[str], model_s: float) -> None:
        with self._lock:
            self.batches += 1
            self.images += len(tasks)
            self.batch_sizes[len(tasks)] += 1
            self.tasks_per_batch[len(set(tasks))] += 1
            self._model_ms.append(model_s * 1000.0)

    def snapshot(self, queued: int = 0) -> Dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": {"total": sum(self.status.values()), "by_status": {str(k): v for k, v in
                                                                              sorted(self.status.items())},
                             "classified_by_task": dict(sorted(self.tasks.items()))},
                "batches": {"count": self.batches, "images": self.images,
                            "mean_size": round(self.images / self.batches, 3) if self.batches else None,
                            "max_size": max(self.batch_sizes, default=0),
                            "sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                            "tasks_per_batch": {str(k): v for k, v in sorted(self.tasks_per_batch.items())},
                            "model_ms": percentiles(list(self._model_ms))},
                "latency_ms": {**percentiles(list(self._latency_ms)), "count": len(self._latency_ms)},
                "queued": queued,
            }
