"""Buffer allocation and release over the shared pool (DPDK's mempool, SPSC style).

An agent that allocates owns a partition of the pool and keeps its free buffers in a
private stack. Any agent releases a buffer by giving it back to its owner: directly
into its own stack, or through the return ring `ret.<self>.<owner>` that the owner
drains before allocating. A return ring holds a whole partition, so a release never
finds its ring full.

The stack lives in shared memory (`pool.free[start:end]`, its depth in
`state[owner, ST_FREE]`), written by its owner only, so that the control process can
see what a worker killed by SIGKILL left: every `Buffers` of an agent is a handle on
the same stack (a worker's forwarder and its live ports share it). A push writes the
slots, then publishes the depth; an allocation publishes the smaller depth, then hands
the buffers out. A kill between the two loses the buffers in between (neither free nor
anywhere else) and never counts one twice; engine/control/recovery.py finds and reclaims them.
"""

from __future__ import annotations

import numpy as np

from engine.shm.memory import FREE_TS, ST_FREE, EngineMemory


class Buffers:
    """One agent's handle on the pool: allocate from its partition, free to any owner."""

    def __init__(self, mem: EngineMemory, agent: int):
        self.mem = mem
        self.agent = agent
        start, end = mem.geometry.partitions[agent]
        self.stack = mem.free_stack[start:end]  # filled by EngineMemory.create
        self.size = end - start
        self._depth = mem.state[agent, ST_FREE : ST_FREE + 1]
        # return rings this agent drains (as owner) and feeds (as releaser)
        self.incoming = [r for name, r in mem.rings.items()
                         if name.startswith("ret.") and name.endswith(f".{agent}")]
        self.outgoing = {owner: mem.rings[f"ret.{agent}.{owner}"]
                         for owner, (s, e) in enumerate(mem.geometry.partitions)
                         if e > s and owner != agent}
        self.owners = [owner for owner, (s, e) in enumerate(mem.geometry.partitions) if e > s]
        self.bounds = {owner: mem.geometry.partitions[owner] for owner in self.owners}

    @property
    def count(self) -> int:
        """Free buffers in this owner's stack (the shared depth word)."""
        return int(self._depth[0])

    @count.setter
    def count(self, value: int) -> None:
        self._depth[0] = value

    def reclaim(self) -> None:
        for ring in self.incoming:
            got = ring.dequeue(ring.size)
            if len(got):
                self._push(got)

    def _push(self, indices: np.ndarray) -> None:
        n = len(indices)
        depth = self.count
        self.stack[depth : depth + n] = indices  # the slots first ...
        self.count = depth + n  # ... then the depth that publishes them

    def available(self) -> int:
        """Free buffers this owner can hand out now (after taking back returns)."""
        self.reclaim()
        return self.count

    def alloc(self, n: int) -> np.ndarray:
        """Up to `n` free buffers (fewer when the partition runs low)."""
        if self.count < n:
            self.reclaim()
        depth = self.count
        n = min(n, depth)
        out = self.stack[depth - n : depth][::-1].copy()
        self.count = depth - n
        return out

    def free(self, indices: np.ndarray) -> None:
        """Give buffers back to their owners (any mix of owners)."""
        if len(indices) == 0:
            return
        self.mem.ts[indices] = FREE_TS
        lo, hi = int(indices.min()), int(indices.max())
        for owner in self.owners:
            start, end = self.bounds[owner]
            if start <= lo and hi < end:  # the usual case: one owner, no masks
                self._give(owner, indices)
                return
        for owner in self.owners:
            start, end = self.bounds[owner]
            mine = indices[(indices >= start) & (indices < end)]
            if len(mine):
                self._give(owner, mine)

    def _give(self, owner: int, indices: np.ndarray) -> None:
        if owner == self.agent:
            self._push(indices)
        elif self.outgoing[owner].enqueue(indices) != len(indices):
            # cannot happen: a return ring holds its owner's whole partition
            raise RuntimeError(f"return ring to agent {owner} overflowed")
