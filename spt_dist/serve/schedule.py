"""Which waiting samples go into the next forward pass: samples of one prompt length together.

A pass over samples of k distinct prompt lengths costs k backbone passes (MultiPromptViT's
"group" mode), so a batch is filled group by group: first the waiting samples with the oldest
sample's key (its task's prompt length), as many as fit, then every other group that fits
whole into the slots left, the group whose oldest sample is oldest first. A group that would
have to be split to fill the batch waits for the next one: splitting it would cost a second
pass over its rest later, and each pass has a fixed cost (so the batches of a stream take
the fewest passes its per-length counts allow, or close to it). Within a group order is first
come, first served, and the oldest sample is always in the batch, so nothing waits behind
later arrivals for ever.
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
    first, *others = groups.values()
    chosen: List[int] = first[:size]
    for members in others:
        if len(chosen) == size:
            break
        if len(members) <= size - len(chosen):  # whole, or not at all
            chosen.extend(members)
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
