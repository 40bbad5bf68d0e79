"""Shared-memory layouts, declared once.

Every process maps the same segments and builds its numpy views from the layouts
here, never by hand: a `Layout` is an ordered list of named arrays (dtype, shape),
each starting on a 64-byte cache line so that two processes writing neighbouring
fields (a ring's head and tail) never share a line.
"""

from __future__ import annotations

import _posixshmem
import mmap
import os
from dataclasses import dataclass
from multiprocessing import shared_memory

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


class Mapping:
    """A mapping of an existing segment, made without multiprocessing's resource
    tracker. `SharedMemory(create=False)` registers the name with the tracker, and an
    attaching process can neither keep that (the tracker would unlink the segment when
    that process exits, bpo-38119) nor undo it (a spawned child shares its parent's
    tracker, which holds each name once: unregistering drops the owner's registration,
    and the owner's unlink then fails inside the tracker). Only the creator unlinks."""

    def __init__(self, name: str) -> None:
        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
        try:
            self.size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size)
        finally:
            os.close(fd)
        self.name = name.lstrip("/")
        self.buf = memoryview(self._mmap)

    def close(self) -> None:
        self.buf.release()
        self._mmap.close()


def attach_segment(name: str) -> Mapping:
    """Map a segment another process created (see `Mapping`)."""
    return Mapping(name)
