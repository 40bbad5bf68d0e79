"""Single-producer/single-consumer descriptor ring over shared memory.

A ring carries buffer indices (uint32), never bytes. The producer writes slots and
then publishes by advancing `tail`; the consumer reads slots and then releases them by
advancing `head`. Both counters only grow (uint64, never wrap in practice); the slot
is `counter & mask`. On x86 (TSO) a store is never reordered with an earlier store,
so the slots are visible before the tail that publishes them, as in DPDK's
`rte_ring` SP/SC mode with its release/acquire pairs.
"""

from __future__ import annotations

import numpy as np

from engine.shm.layout import Field

EMPTY = np.zeros(0, dtype=np.uint32)


def ring_fields(name: str, size: int) -> list[Field]:
    if size & (size - 1):
        raise ValueError(f"ring size {size} is not a power of two")
    return [
        Field(f"{name}.head", np.dtype(np.uint64), (1,)),
        Field(f"{name}.tail", np.dtype(np.uint64), (1,)),
        Field(f"{name}.slots", np.dtype(np.uint32), (size,)),
    ]


class Ring:
    __slots__ = ("name", "head", "tail", "slots", "size", "mask")

    def __init__(self, name: str, views: dict[str, np.ndarray]):
        self.name = name
        self.head = views[f"{name}.head"]
        self.tail = views[f"{name}.tail"]
        self.slots = views[f"{name}.slots"]
        self.size = len(self.slots)
        self.mask = self.size - 1

    def count(self) -> int:
        return int(self.tail[0]) - int(self.head[0])

    def free_space(self) -> int:
        return self.size - self.count()

    def enqueue(self, indices: np.ndarray) -> int:
        """Enqueue as many of `indices` as fit, in order; return how many."""
        tail = int(self.tail[0])
        n = min(len(indices), self.size - (tail - int(self.head[0])))
        if n <= 0:
            return 0
        start = tail & self.mask
        first = min(n, self.size - start)
        self.slots[start : start + first] = indices[:first]
        if first < n:
            self.slots[: n - first] = indices[first:n]
        self.tail[0] = tail + n
        return n

    def dequeue(self, max_count: int) -> np.ndarray:
        """Dequeue up to `max_count` indices (a copy, safe after release)."""
        head = int(self.head[0])
        n = min(max_count, int(self.tail[0]) - head)
        if n <= 0:
            return EMPTY
        start = head & self.mask
        first = min(n, self.size - start)
        if first == n:
            out = self.slots[start : start + n].copy()
        else:
            out = np.concatenate((self.slots[start:], self.slots[: n - first]))
        self.head[0] = head + n
        return out
