"""Which waiting samples go into the next forward pass: samples of one prompt length together.

A pass over samples of k distinct prompt lengths costs k backbone passes (MultiPromptViT's
"group" mode), so a batch is filled group by group: first every waiting sample with the oldest
sample's key (its task's prompt length), then the group whose oldest sample is next oldest,
and so on until the batch is full. Within a group order is first come, first served, and the
oldest sample is always in the batch, so nothing waits behind later arrivals for ever.
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Tuple, TypeVar

T = TypeVar("T")


def take_batch(waiting: List[T], size: int, key: Optional[Callable[[T], Hashable]] = None) -> Tuple[List[T], List[T]]:
    """(batch of at most `size` items, the rest), both in arrival order."""
    if key is None or len(waiting) <= size:
        return waiting[:size], waiting[size:]
    groups: Dict[Hashable, List[int]] = {}  # by first appearance: the oldest item's group first
    for i, item in enumerate(waiting):
        groups.setdefault(key(item), []).append(i)
    chosen: List[int] = []
    for members in groups.values():
        chosen.extend(members[:size - len(chosen)])
        if len(chosen) == size:
            break
    taken = set(chosen)
    return [waiting[i] for i in sorted(chosen)], [x for i, x in enumerate(waiting) if i not in taken]


def scheduled(items: Iterable[T], size: int, key: Optional[Callable[[T], Hashable]] = None,
              window: int = 0) -> Iterator[List[T]]:
    """Batches of an offline stream, looking `window` items ahead (default 8 batches)."""
    window = max(window or 8 * size, size)
    waiting: List[T] = []
    for item in items:
        waiting.append(item)
        if len(waiting) >= window:
            batch, waiting = take_batch(waiting, size, key)
            yield batch
    while waiting:
        batch, waiting = take_batch(waiting, size, key)
        yield batch
