"""The neighbour table: IPv4 address → (port, MAC, NUD state), shared by every process.

The kernel keeps one neighbour table per protocol (`arp_tbl`), hashed by (address,
device), with NUD states (`include/uapi/linux/neighbour.h`) and timers; `neigh_output`
sends through an entry whose state is NUD_VALID and queues packets on the others. Here
the table lives in the engine segment (fields `neigh.*`, declared in memory.py) and
is keyed by address alone (an address is on one port: an entry's port says which).

Writers: one process at a time. The control process puts the static `[[neighbor]]`
entries (PERMANENT) before the workers start; from then on only the slow-path worker
writes (ARP). Readers: the forwarding workers, vectorised and lock-free, behind their
own caches (`engine/pipeline/neigh_cache.py`), which they flush when `CTL_NEIGH_GEN` moves.

Hashing: open addressing over a power-of-two number of slots (twice the capacity, so
the table is at most half full). An address has a home slot (Fibonacci hashing) and a
probe window of `PROBES` slots at triangular offsets 0, 1, 3, 6, ... from it (they are
distinct modulo a power of two and do not cluster as linear probing does); an entry
always sits in its address's window. A lookup therefore reads the whole window and
never stops early at an empty slot, which is what makes deletion plain: a removed
entry's slot is simply free again, with neither tombstones (needed when lookups stop
at the first empty slot) nor backward shifting (which moves live entries under the
readers' feet). DPDK's rte_hash deletes the same way from its fixed-size buckets.
`put` answers False when the table holds `capacity` entries or, much more rarely
(about 0.5^16 at half load), when the window has no free slot; the caller drops, as
the kernel does when `neigh_alloc` fails past gc_thresh3.

Capacity: `Geometry.neigh_capacity` entries (default 4096, in 8192 slots, 216 KiB).
The kernel's hard limit per table, `gc_thresh3`, defaults to 1024 entries (with
garbage collection starting above gc_thresh2 = 512); this table holds four times
that without any collection, and the slow path's timers free what goes stale.

Concurrent reads (a seqlock per slot): the writer makes a slot's sequence number odd,
writes the fields, then makes it even again. A reader gathers the sequence numbers,
then the fields, then the sequence numbers again, and takes a row only when both
reads are equal and even (and the address is the one it asked for): a row read
while it was being written counts as not found, never as a mix of two entries. Each
field is one aligned store and one aligned load; x86-64's TSO keeps the writer's
stores and the reader's loads in program order, so no fences are needed (numpy can
issue none; weakly ordered CPUs would need release/acquire barriers, as fib.py says).
Each numpy gather finishes before the next call starts, which gives the reader's
order.

Generation: `mem.ctl[CTL_NEIGH_GEN]` moves whenever an entry a reader may have
cached stops being true: a VALID entry's MAC or port changes, it stops being VALID,
or it is removed. New entries and changes between VALID states with the same MAC
and port (REACHABLE → STALE, say) do not move it: workers cache only VALID entries,
never the absence of one. The bump comes after the entry's write, and workers read
the generation at the start of each pass, before their lookups, so a cached copy
outlives its entry by at most one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from types import SimpleNamespace
from typing import Any

import numpy as np

from engine.shm.memory import CTL_NEIGH_GEN, EngineMemory


class Nud(IntEnum):
    """The kernel's NUD_* neighbour states (include/uapi/linux/neighbour.h); the
    values are ours (the kernel's are bits)."""

    NONE = 0
    INCOMPLETE = 1  # resolution in progress: an ARP request is out
    REACHABLE = 2  # confirmed recently
    STALE = 3  # not confirmed for a while: usable, to be re-confirmed on use
    DELAY = 4
    PROBE = 5
    FAILED = 6  # resolution failed: packets to it are dropped
    PERMANENT = 7  # static ([[neighbor]] in the config): never changes by itself


# the states an entry can be sent through (the kernel's NUD_VALID)
NUD_VALID = frozenset({Nud.REACHABLE, Nud.STALE, Nud.DELAY, Nud.PROBE, Nud.PERMANENT})
VALID = np.zeros(256, dtype=bool)  # indexed by a state byte
VALID[[int(s) for s in NUD_VALID]] = True

PROBES = 16  # slots in an address's probe window
OFFSETS = np.array([i * (i + 1) // 2 for i in range(PROBES)], dtype=np.uint32)
FIB_HASH = 0x9E37_79B1  # 2^32 / golden ratio (Fibonacci hashing)
SCALAR_TRIES = 100_000  # a scalar read gives up on a slot that stays odd this long


@dataclass(frozen=True)
class NeighbourEntry:
    ip: int  # host order
    port: int
    mac: bytes  # 6 bytes
    state: Nud
    updated_ns: int  # when the entry was last written

    @property
    def valid(self) -> bool:
        return self.state in NUD_VALID


def mac_to_48(mac: bytes) -> int:
    """6 MAC bytes → the mac48 integer of the arrays (byte 0 lowest)."""
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, not {len(mac)}")
    return int.from_bytes(mac, "little")


def mac_from_48(value: int) -> bytes:
    return int(value).to_bytes(8, "little")[:6]


def home_slots(ips: np.ndarray, bits: int) -> np.ndarray:
    """Home slot of each address (uint32): the top `bits` bits of ip * 2^32/phi (mod
    2^32)."""
    return (ips * np.uint32(FIB_HASH)) >> np.uint32(32 - bits)


def plain_memory(capacity: int = 4096) -> Any:
    """The attributes `NeighbourTable` reads, over ordinary (private) numpy arrays: for
    tests and benchmarks that run the fast path without a shared segment."""
    slots = 1 << max(4, (2 * capacity - 1).bit_length())
    return SimpleNamespace(
        ctl=np.zeros(8, dtype=np.uint64),
        neigh_seq=np.zeros(slots, dtype=np.uint32),
        neigh_ip=np.zeros(slots, dtype=np.uint32),
        neigh_port=np.zeros(slots, dtype=np.uint16),
        neigh_state=np.zeros(slots, dtype=np.uint8),
        neigh_used=np.zeros(slots, dtype=np.uint8),
        neigh_mac=np.zeros(slots, dtype=np.uint64),
        neigh_updated=np.zeros(slots, dtype=np.int64),
    )


class NeighbourTable:
    """Views over the engine segment's `neigh.*` fields (declared once in
    engine/shm/memory.py), or over `plain_memory()`."""

    def __init__(self, mem: EngineMemory) -> None:
        self.ctl = mem.ctl
        self.seq = mem.neigh_seq
        self.ip = mem.neigh_ip
        self.port = mem.neigh_port
        self.state = mem.neigh_state
        self.used = mem.neigh_used
        self.mac = mem.neigh_mac
        self.updated = mem.neigh_updated
        self.slots = len(self.ip)
        assert self.slots & (self.slots - 1) == 0 and self.slots >= PROBES
        self.bits = self.slots.bit_length() - 1
        self.mask = np.uint32(self.slots - 1)
        self.capacity = self.slots // 2

    # ------------------------------------------------------------------ writer side

    def _window(self, ip: int) -> list[int]:
        home = int(home_slots(np.array([ip], dtype=np.uint32), self.bits)[0])
        return [(home + int(o)) & (self.slots - 1) for o in OFFSETS]

    def _slot_of(self, ip: int) -> int | None:
        for s in self._window(ip):
            if self.used[s] and int(self.ip[s]) == ip:
                return s
        return None

    def _write(self, slot: int, ip: int, port: int, mac48: int, state: int, used: int,
               now_ns: int) -> None:
        """Rewrite one slot under its seqlock: odd, fields, even."""
        seq = int(self.seq[slot])
        self.seq[slot] = (seq + 1) & 0xFFFF_FFFF
        self.ip[slot] = ip
        self.port[slot] = port
        self.mac[slot] = mac48
        self.state[slot] = state
        self.used[slot] = used
        self.updated[slot] = now_ns
        self.seq[slot] = (seq + 2) & 0xFFFF_FFFF

    def _changed(self, slot: int, port: int, mac48: int, state: int) -> bool:
        """Would this write invalidate what a reader may have cached from the slot?"""
        if not VALID[self.state[slot]]:
            return False
        return (not VALID[state]) or int(self.mac[slot]) != mac48 or int(self.port[slot]) != port

    def _bump(self) -> None:
        self.ctl[CTL_NEIGH_GEN] += 1

    def put(self, ip: int, port: int, mac: bytes, state: Nud, now_ns: int) -> bool:
        """Insert or update the entry of `ip`. False when the table is full (nothing
        written). Moves CTL_NEIGH_GEN when a VALID entry's MAC or port changes or it
        stops being VALID."""
        mac48 = mac_to_48(mac)
        slot = self._slot_of(ip)
        if slot is not None:
            bump = self._changed(slot, port, mac48, int(state))
            self._write(slot, ip, port, mac48, int(state), 1, now_ns)
            if bump:
                self._bump()
            return True
        if len(self) >= self.capacity:
            return False
        for s in self._window(ip):
            if not self.used[s]:
                self._write(s, ip, port, mac48, int(state), 1, now_ns)
                return True
        return False

    def set_state(self, ip: int, state: Nud, now_ns: int) -> None:
        """Change the state of `ip`'s entry, keeping its port and MAC (nothing happens
        when there is no entry). Same generation rule as `put`."""
        slot = self._slot_of(ip)
        if slot is None:
            return
        port, mac48 = int(self.port[slot]), int(self.mac[slot])
        bump = self._changed(slot, port, mac48, int(state))
        self._write(slot, ip, port, mac48, int(state), 1, now_ns)
        if bump:
            self._bump()

    def remove(self, ip: int) -> None:
        """Forget `ip`'s entry; its slot is free at once (see the module docstring)."""
        slot = self._slot_of(ip)
        if slot is None:
            return
        bump = bool(VALID[self.state[slot]])
        self._write(slot, 0, 0, 0, int(Nud.NONE), 0, 0)
        if bump:
            self._bump()

    # ------------------------------------------------------------------ scalar reads

    def _read(self, slot: int) -> NeighbourEntry | None:
        """A consistent snapshot of one used slot (None: free), retrying while the
        writer is in it: safe from any process."""
        for _ in range(SCALAR_TRIES):
            seq = int(self.seq[slot])
            if seq & 1:
                continue
            used, ip, port = int(self.used[slot]), int(self.ip[slot]), int(self.port[slot])
            mac48, state = int(self.mac[slot]), int(self.state[slot])
            updated = int(self.updated[slot])
            if int(self.seq[slot]) == seq:
                break
        else:  # a writer that died inside a write: the slot is unreadable, as for lookup
            return None
        if not used:
            return None
        return NeighbourEntry(ip, port, mac_from_48(mac48), Nud(state), updated)

    def get(self, ip: int) -> NeighbourEntry | None:
        for s in self._window(ip):
            e = self._read(s)
            if e is not None and e.ip == ip:
                return e
        return None

    def entries(self) -> list[NeighbourEntry]:
        """Every entry, sorted by address."""
        out = [self._read(int(s)) for s in np.flatnonzero(self.used)]
        return sorted((e for e in out if e is not None), key=lambda e: e.ip)

    def __len__(self) -> int:
        return int(np.count_nonzero(self.used))

    @property
    def generation(self) -> int:
        return int(self.ctl[CTL_NEIGH_GEN])

    # ------------------------------------------------------------------ reader side

    def lookup(self, ips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, port, mac48) per address, found only for a VALID entry read whole.

        One gather at the home slots finds most entries (the table is at most half
        full); the rest read their whole probe window at once. Then the seqlock read
        of the chosen slots: sequence, fields, sequence again."""
        ips = np.asarray(ips, dtype=np.uint32)
        slot = home_slots(ips, self.bits)
        at_home = self.ip[slot] == ips
        if not at_home.all():
            rest = np.flatnonzero(~at_home)
            window = (slot[rest, None] + OFFSETS) & self.mask
            match = self.ip[window] == ips[rest, None]
            slot[rest] = window[np.arange(len(rest)), match.argmax(axis=1)]
        seq = self.seq[slot]
        ip = self.ip[slot]
        state = self.state[slot]
        port = self.port[slot]
        mac = self.mac[slot]
        found = (self.seq[slot] == seq) & ((seq & 1) == 0) & (ip == ips) & VALID[state]
        if not found.all():
            port[~found] = 0
            mac[~found] = 0
        return found, port, mac

    def resolve(self, keys: np.ndarray, egress: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fast path's question (see `Tables.neigh`): for each next-hop address and
        the egress port its route chose, (usable, mac48). An entry on another port is
        not usable: the packet goes to the slow path, as an unresolved one does."""
        found, port, mac = self.lookup(keys)
        ok = found & (port == egress)
        return ok, mac
