"""Neighbour output (`neigh_output`): the next hop's MAC, from a per-worker cache.

A next hop whose row carries no MAC (a connected route, or a gateway that is not a
static neighbour) is resolved through the neighbour table, for each packet: the key is
the packet's destination on a connected route and the gateway on a gateway route
(`rt_nexthop`). Each forwarding worker keeps what it resolved in its own memory, as
the kernel keeps per-CPU `rt_uncached_list`s of routes that are not plain FIB
entries: no cross-process traffic and no lock on the fast path, and a batch whose
neighbours are all cached costs a handful of numpy calls.

Lookup order for a batch: this cache, then the shared `NeighbourTable` for what it
missed, then the cache is filled with what the table had. A packet whose neighbour
is in neither as a VALID entry on the route's egress port goes to the slow path
(`Slow.neigh_unresolved`), which resolves it (ARP) and holds the packet meanwhile.

The cache is keyed by (address, egress port): one array of addresses, one of ports,
one of MACs (mac48), in the worker's own memory. Open addressing: an address's home
slot is its low bits (next hops are mostly hosts of a few subnets, whose low bits
differ: the ideal hash for them, and the cheapest), and its window the `PROBES` slots
at triangular offsets from there; a fill takes the first empty slot of the window,
else evicts the home slot (it is a cache: an evicted entry is looked up again in the
shared table). The worker clears the whole cache when the control process moves
`CTL_NH_GEN` (next hops changed, a port went down or up) or the neighbour table's
writer moves `CTL_NEIGH_GEN` (an entry changed its MAC or port, or stopped being
usable): the kernel's `rt_flush_dev` and `rt_genid` bump.

Cost: a batch whose neighbours are all cached takes one hash, three gathers, two
compares and a count; numpy's per-call overhead, not memory, is what counts, so each
step is chosen for it (an intp index, `count_nonzero` rather than `.all()`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from engine.shm.neigh_table import mac_from_48

EMPTY = 0xFFFF  # the port of a free slot (ports are < MAX_PORTS)
PROBES = 4
OFFSETS = np.array([i * (i + 1) // 2 for i in range(PROBES)], dtype=np.intp)
CACHE_SLOTS = 1024  # per worker; twice a busy subnet's worth of neighbours


class Neighbours(Protocol):
    """What the cache asks the shared table (`engine.shm.neigh_table.NeighbourTable`)."""

    def lookup(self, ips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class NeighCache:
    """One worker's cache of resolved neighbours in front of the shared table; its
    `resolve` is what `Tables.neigh` asks."""

    def __init__(self, table: Neighbours, slots: int = CACHE_SLOTS) -> None:
        assert slots & (slots - 1) == 0 and slots >= PROBES
        self.table = table
        self.mask = np.intp(slots - 1)
        self.addr = np.zeros(slots, dtype=np.uint32)
        self.port = np.full(slots, EMPTY, dtype=np.uint16)
        self.mac = np.zeros(slots, dtype=np.uint64)
        # what the cache did since it was made (plain ints: one add per batch)
        self.lookups = 0
        self.misses = 0  # addresses asked of the shared table
        self.fills = 0
        self.clears = 0

    def resolve(self, keys: np.ndarray, egress: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(usable, mac48) for each next-hop address and its route's egress port."""
        self.lookups += len(keys)
        home = keys.astype(np.intp) & self.mask
        hit = self.addr[home] == keys
        hit &= self.port[home] == egress
        mac = self.mac[home]
        if np.count_nonzero(hit) == len(hit):  # the common batch
            return hit, mac
        rest = np.flatnonzero(~hit)
        window = (home[rest, None] + OFFSETS[1:]) & self.mask
        match = (self.addr[window] == keys[rest, None]) & (self.port[window] == egress[rest, None])
        inside = match.any(axis=1)
        if inside.any():
            at = window[np.arange(len(rest)), match.argmax(axis=1)]
            hit[rest[inside]] = True
            mac[rest[inside]] = self.mac[at[inside]]
            rest = rest[~inside]
        if len(rest):
            self.misses += len(rest)
            found, port, table_mac = self.table.lookup(keys[rest])
            ok = found & (port == egress[rest])
            hit[rest] = ok
            mac[rest] = table_mac
            if ok.any():
                self.fill(keys[rest[ok]], port[ok], table_mac[ok], home[rest[ok]])
        return hit, mac

    def fill(self, addr: np.ndarray, port: np.ndarray, mac: np.ndarray,
             home: np.ndarray) -> None:
        """Cache (address, port, mac) entries that are not in the cache; one slot per
        entry and per slot (a batch can ask for the same neighbour many times)."""
        _, first = np.unique(addr, return_index=True)
        addr, port, mac, home = addr[first], port[first], mac[first], home[first]
        window = (home[:, None] + OFFSETS) & self.mask
        empty = self.port[window] == EMPTY
        slot = np.where(empty.any(axis=1), window[np.arange(len(addr)), empty.argmax(axis=1)],
                        home)
        slot, first = np.unique(slot, return_index=True)
        self.addr[slot] = addr[first]
        self.port[slot] = port[first]
        self.mac[slot] = mac[first]
        self.fills += len(slot)

    def clear(self) -> None:
        """Forget everything (on a generation change)."""
        self.port[:] = EMPTY
        self.clears += 1

    def __len__(self) -> int:
        return int(np.count_nonzero(self.port != EMPTY))

    def held(self, port: int | None = None) -> list[tuple[int, int, bytes]]:
        """(address, port, MAC) of every cached neighbour, on `port` only if given:
        what a test (or a debugging session) looks at."""
        out = []
        for s in np.flatnonzero(self.port != EMPTY):  # slow path: a test's or a human's listing
            if port is None or int(self.port[s]) == port:
                out.append((int(self.addr[s]), int(self.port[s]), mac_from_48(int(self.mac[s]))))
        return sorted(out)
