"""Shared-memory layouts, declared once.

Every process maps the same segments and builds its numpy views from the layouts
here, never by hand: a `Layout` is an ordered list of named arrays (dtype, shape),
each starting on a 64-byte cache line so that two processes writing neighbouring
fields (a ring's head and tail) never share a line.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

CACHE_LINE = 64


@dataclass(frozen=True)
class Field:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class Layout:
    """An ordered set of cache-line aligned arrays inside one buffer."""

    def __init__(self, fields: list[Field]):
        self.fields = fields
        self.offsets: dict[str, int] = {}
        offset = 0
        for f in fields:
            offset = -(-offset // CACHE_LINE) * CACHE_LINE
            self.offsets[f.name] = offset
            offset += f.nbytes
        self.size = -(-offset // CACHE_LINE) * CACHE_LINE

    def views(self, buf: memoryview, base: int = 0) -> dict[str, np.ndarray]:
        return {
            f.name: np.ndarray(f.shape, dtype=f.dtype, buffer=buf,
                               offset=base + self.offsets[f.name])
            for f in self.fields
        }


def create_segment(name: str, size: int) -> shared_memory.SharedMemory:
    """Create a segment; the owner unlinks it (see engine.shm.Segments)."""
    return shared_memory.SharedMemory(name=name, create=True, size=max(size, 1))


def attach_segment(name: str) -> shared_memory.SharedMemory:
    """Attach to an existing segment without registering it with Python's
    resource tracker: only the creating process may unlink it, otherwise a
    worker exiting would destroy memory the others still use (bpo-38119)."""
    register = resource_tracker.register
    resource_tracker.register = lambda name, rtype: None  # Python < 3.13 has no track=False
    try:
        return shared_memory.SharedMemory(name=name, create=False)
    finally:
        resource_tracker.register = register
