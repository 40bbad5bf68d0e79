"""The engine's shared memory: buffer pool, descriptor rings, next hops, counters.

One segment holds everything but the FIB (which has its own, see `fib.py`). Its
layout is a pure function of a `Geometry`, which is small and picklable: the control
process creates the segment, every other process rebuilds the same views from the
geometry and attaches by name.

Agents: 0 is the I/O agent (the control process moving frames for pcap ports), 1..W
the forwarding workers, W+1 the slow-path worker. Each agent that allocates buffers
owns a contiguous partition of the pool; whoever frees a buffer returns it to its
owner through a return ring (one per freeing agent and owner), so every ring has one
producer and one consumer and no lock is ever taken.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.counters import NCOUNTERS, PORT_DROP_PORTS
from engine.shm.journal import Journal, journal_fields
from engine.shm.layout import Field, Layout, attach_segment, create_segment
from engine.shm.ring import Ring, ring_fields
from engine.shm.trace_capture import observe_fields

AGENT_IO = 0
MAX_PORTS = 16
assert MAX_PORTS <= PORT_DROP_PORTS  # every port has its drop columns in a counters row
# DPDK's RTE_PKTMBUF_HEADROOM: an mbuf's data starts this far into its buffer. For
# zero-copy DPDK I/O (engine/io/dpdk) row i is the data of an mbuf whose buffer starts
# this many bytes before it, so the pool keeps that much room before its first row.
MBUF_HEADROOM = 128

# Next-hop types (the FIB maps a prefix to a next-hop index; the index's row says
# what to do). Values mirror the kernel's RTN_* where one exists.
NH_NOROUTE = 0  # index 0: no route (ENETUNREACH)
NH_UNICAST = 1
NH_LOCAL = 2
NH_BROADCAST = 3
NH_BLACKHOLE = 6
NH_UNREACHABLE = 7
NH_PROHIBIT = 8
NH_TYPE_NAMES = {NH_NOROUTE: "noroute", NH_UNICAST: "unicast", NH_LOCAL: "local",
                 NH_BROADCAST: "broadcast", NH_BLACKHOLE: "blackhole",
                 NH_UNREACHABLE: "unreachable", NH_PROHIBIT: "prohibit"}

# Next-hop flags
NHF_GATEWAY = 1  # the next hop is a gateway (else the destination is on-link)
NHF_RESOLVED = 2  # `mac` holds the next hop's MAC

# Per-port counter columns.
PORT_RX_PACKETS, PORT_RX_BYTES, PORT_TX_PACKETS, PORT_TX_BYTES, PORT_RX_DROPS, PORT_TX_DROPS = (
    range(6)
)
PORT_COUNTER_NAMES = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_drops", "tx_drops")

# Control words
CTL_STOP = 0  # 1: finish what is queued and exit
CTL_PORT_UP = 1  # bit mask of ports that are up
CTL_NH_GEN = 2  # bumped when next hops change or a port goes down (flush caches)
CTL_NEIGH_GEN = 3  # bumped when a usable neighbour entry changes or goes (see shm/neigh_table.py)
CTL_PAUSE = 4  # nonzero: a pause epoch; every agent acks it in ST_PAUSED and idles
#               (control/recovery.py)

# Per-agent state words
ST_PID = 0
ST_LOOPS = 1  # loop iterations, bumped every pass (liveness)
ST_FREE = 2  # free buffers held by this owner (locally)
ST_IDLE = 3  # 1 when the agent's last pass found nothing to do
ST_PAUSED = 4  # the CTL_PAUSE epoch this agent has acknowledged (holding no buffer)
ST_WARMUP_NS = 5  # how long a forwarding worker took to get its compiled datapath ready
ST_NEXT_TIMER = 6  # slow path, pcap replays: when its next timer falls due (capture clock, ns)
ST_SLEEPING = 7  # 1: the agent is about to block; ring its doorbell (workers/doorbell.py)
CTL_REPLAY_CLOCK = 5  # pcap replays: every frame older than this (ns) has left the workers
CTL_END_CLOCK = 6  # pcap replays: the latest capture time read, where the slow path's clock stops
CTL_UNFED_SEQ = 7  # pcap replays: 1 + the arrival number of the oldest frame not yet fed (0: none)

# `pool.ts` of a free buffer: a buffer in flight carries its frame's capture time, so
# the oldest frame anywhere in the engine is the pool's smallest `ts` (a replay's
# output is written up to it, engine/io/pcap_port.py). Every free writes it.
FREE_TS = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Geometry:
    name: str
    nports: int
    nworkers: int
    nbufs: int = 32768
    bufsize: int = 2048
    ring_size: int = 4096
    max_nexthops: int = 65536
    # neighbour entries the shared table holds at most (see shm/neigh_table.py: the kernel's
    # default hard limit, gc_thresh3, is 1024 per table); it has twice as many slots
    neigh_capacity: int = 4096
    # pool partitions (start, end) per agent; agents with no allocations get (0, 0)
    partitions: tuple[tuple[int, int], ...] = ()

    @property
    def nagents(self) -> int:
        return self.nworkers + 2

    @property
    def slowpath_agent(self) -> int:
        return self.nworkers + 1

    def worker_agent(self, worker: int) -> int:
        return 1 + worker

    @staticmethod
    def new(nports: int, nworkers: int, *, nbufs: int = 32768, bufsize: int = 2048,
            ring_size: int = 4096, io_share: float = 0.75,
            neigh_capacity: int = 4096, workers_receive: bool = False) -> Geometry:
        """Partition the pool between the receivers and the slow-path worker. Receivers:
        the I/O agent (pcap ports), or with `workers_receive` (live ports, where each
        worker reads its own queues) each worker, an equal share of `io_share`."""
        name = f"fwd-{os.getpid()}-{secrets.token_hex(3)}"
        io_end = int(nbufs * io_share)
        if workers_receive:
            share = io_end // nworkers
            parts = [(0, 0)] + [(w * share, (w + 1) * share) for w in range(nworkers)]
            parts.append((nworkers * share, nbufs))
        else:
            parts = [(0, io_end)] + [(0, 0)] * nworkers + [(io_end, nbufs)]
        return Geometry(name, nports, nworkers, nbufs, bufsize, ring_size,
                        neigh_capacity=neigh_capacity, partitions=tuple(parts))


def engine_layout(g: Geometry) -> Layout:
    """The one declaration of the engine segment."""
    u1, u2, u4, u8, i8 = (np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64,
                                                np.int64))
    fields = [
        Field("ctl", u8, (8,)),
        Field("state", u8, (g.nagents, 8)),
        Field("counters", u8, (g.nagents, NCOUNTERS)),
        Field("port_counters", u8, (g.nagents, g.nports, len(PORT_COUNTER_NAMES))),
        # the buffer pool: frames start at byte 0 of their buffer; the pad before it is
        # the DPDK headroom of row 0 (see MBUF_HEADROOM), never written
        Field("pool.headroom", u1, (MBUF_HEADROOM,)),
        Field("pool.data", u1, (g.nbufs, g.bufsize)),
        Field("pool.length", u4, (g.nbufs,)),
        Field("pool.port", u2, (g.nbufs,)),  # ingress port, then egress port
        Field("pool.ts", i8, (g.nbufs,)),  # ns; pcap ports: the capture's clock
        Field("pool.seq", u8, (g.nbufs,)),  # arrival order, for a deterministic output order
        Field("pool.code", u1, (g.nbufs,)),  # verdict code handed to the slow path
        # ports
        Field("port.mac", u1, (MAX_PORTS, 8)),
        Field("port.mtu", u2, (MAX_PORTS,)),
        # next hops
        Field("nh.type", u1, (g.max_nexthops,)),
        Field("nh.flags", u1, (g.max_nexthops,)),
        Field("nh.port", u2, (g.max_nexthops,)),
        Field("nh.gw", u4, (g.max_nexthops,)),
        Field("nh.mtu", u2, (g.max_nexthops,)),  # see Tables.nh_mtu
        # ECMP: a group row has nh.group_n > 1 members at nhg.members[nh.group:]
        Field("nh.group", u4, (g.max_nexthops,)),
        Field("nh.group_n", u1, (g.max_nexthops,)),
        Field("nhg.members", u4, (g.max_nexthops,)),
        Field("nh.mac", u1, (g.max_nexthops, 8)),
        # the neighbour table (shm/neigh_table.py): open addressing keyed by IPv4 address,
        # one seqlock sequence number per slot for lock-free readers
        Field("neigh.seq", u4, (neigh_slots(g),)),
        Field("neigh.ip", u4, (neigh_slots(g),)),
        Field("neigh.port", u2, (neigh_slots(g),)),
        Field("neigh.state", u1, (neigh_slots(g),)),  # Nud; 0 (NONE) in a free slot
        Field("neigh.used", u1, (neigh_slots(g),)),  # 1: the slot holds an entry
        Field("neigh.mac", u8, (neigh_slots(g),)),  # mac48, byte 0 lowest
        Field("neigh.updated", i8, (neigh_slots(g),)),  # ns of the last state change
    ]
    # `fwd trace` and `fwd capture` (shm/trace_capture.py): one word the workers check per batch
    fields += observe_fields(g.nagents, g.bufsize)
    # each owner's free stack (shm/pool.py) and each worker's batch journal (shm/journal.py):
    # in shared memory so that a SIGKILLed worker's buffers and counts can be recovered
    fields += pool_fields(g)
    fields += journal_fields(g.nworkers, g.ring_size)
    for name, size in ring_specs(g):
        fields += ring_fields(name, size)
    return Layout(fields)


def pool_fields(g: Geometry) -> list[Field]:
    """`pool.free`: owner a's free stack is `pool.free[start:end]` of its partition, its
    depth `state[a, ST_FREE]`."""
    return [Field("pool.free", np.dtype(np.uint32), (g.nbufs,))]


def neigh_slots(g: Geometry) -> int:
    """Slots of the neighbour table: a power of two at least twice its capacity, so
    that the table is never more than half full (short probe windows)."""
    return 1 << max(4, (2 * g.neigh_capacity - 1).bit_length())


def ring_specs(g: Geometry) -> list[tuple[str, int]]:
    """(name, size) of every ring. A return ring holds a whole partition, so that
    giving a buffer back to its owner can never fail."""
    specs = []
    for p in range(g.nports):
        for w in range(g.nworkers):
            specs += [(f"rx.{p}.{w}", g.ring_size), (f"tx.{p}.{w}", g.ring_size)]
        specs.append((f"slowtx.{p}", g.ring_size))
    for w in range(g.nworkers):
        specs.append((f"slow.{w}", g.ring_size))
    for a in range(g.nagents):
        for owner, (start, end) in enumerate(g.partitions):
            if end > start and a != owner:
                specs.append((f"ret.{a}.{owner}", 1 << max(0, (end - start - 1).bit_length())))
    return specs


class EngineMemory:
    """Views over the engine segment. `create` in the control process, `attach` elsewhere."""

    def __init__(self, geometry: Geometry, shm, owner: bool):
        self.geometry = geometry
        self.shm = shm
        self.owner = owner
        # the agents' doorbells (engine/workers/doorbell.py), in the processes that have
        # them: None where nobody blocks (pcap replays, tests)
        self.doorbells: Any = None
        layout = engine_layout(geometry)
        v = layout.views(shm.buf)
        self._views = v
        self.ctl = v["ctl"]
        self.state = v["state"]
        self.counters = v["counters"]
        self.port_counters = v["port_counters"]
        self.data = v["pool.data"]
        self.words = self.data.view("<u8")  # the same bytes as 64-bit words
        self.length = v["pool.length"]
        self.port = v["pool.port"]
        self.ts = v["pool.ts"]
        self.seq = v["pool.seq"]
        self.code = v["pool.code"]
        self.port_mac = v["port.mac"]
        self.port_mtu = v["port.mtu"]
        self.nh_type = v["nh.type"]
        self.nh_flags = v["nh.flags"]
        self.nh_port = v["nh.port"]
        self.nh_gw = v["nh.gw"]
        self.nh_mtu = v["nh.mtu"]
        self.nh_group = v["nh.group"]
        self.nh_group_n = v["nh.group_n"]
        self.nhg_members = v["nhg.members"]
        self.nh_mac = v["nh.mac"]
        self.neigh_seq = v["neigh.seq"]
        self.neigh_ip = v["neigh.ip"]
        self.neigh_port = v["neigh.port"]
        self.neigh_state = v["neigh.state"]
        self.neigh_used = v["neigh.used"]
        self.neigh_mac = v["neigh.mac"]
        self.neigh_updated = v["neigh.updated"]
        self.obs_ctl = v["obs.ctl"]
        self.trace_count = v["trace.count"]
        self.trace_rec = v["trace.rec"]
        self.cap_head = v["cap.head"]
        self.cap_lost = v["cap.lost"]
        self.cap_tail = v["cap.tail"]
        self.cap_meta = v["cap.meta"]
        self.cap_data = v["cap.data"]
        self.free_stack = v["pool.free"]
        self.journal = Journal(v)
        self.rings = {name: Ring(name, v) for name, _ in ring_specs(geometry)}
        self._part_starts = np.array([s if e > s else np.iinfo(np.int64).max
                                      for s, e in geometry.partitions], dtype=np.int64)

    @classmethod
    def create(cls, geometry: Geometry) -> EngineMemory:
        shm = create_segment(geometry.name, engine_layout(geometry).size)
        mem = cls(geometry, shm, owner=True)
        for agent, (start, end) in enumerate(geometry.partitions):  # every buffer free
            mem.free_stack[start:end] = np.arange(end - 1, start - 1, -1, dtype=np.uint32)
            mem.state[agent, ST_FREE] = end - start
        mem.ts[:] = FREE_TS
        return mem

    @classmethod
    def attach(cls, geometry: Geometry) -> EngineMemory:
        return cls(geometry, attach_segment(geometry.name), owner=False)

    def owner_of(self, indices: np.ndarray) -> np.ndarray:
        """Agent owning each buffer index (partitions are contiguous and sorted)."""
        order = np.argsort(self._part_starts, kind="stable")
        pos = np.searchsorted(self._part_starts[order], indices, side="right") - 1
        return order[pos]

    def close(self) -> None:
        # drop our views before closing the mapping, or close() raises BufferError
        self._views.clear()
        for attr in ("ctl", "state", "counters", "port_counters", "data", "words", "length", "port",
                     "ts", "seq", "code", "port_mac", "port_mtu", "nh_type", "nh_flags", "nh_port",
                     "nh_gw", "nh_mtu", "nh_group", "nh_group_n", "nhg_members", "nh_mac",
                     "neigh_seq", "neigh_ip", "neigh_port", "neigh_state", "neigh_used",
                     "neigh_mac", "neigh_updated", "obs_ctl", "trace_count", "trace_rec",
                     "cap_head", "cap_lost", "cap_tail", "cap_meta", "cap_data", "free_stack",
                     "journal"):
            setattr(self, attr, None)
        self.rings = {}
        try:
            self.shm.close()
        except BufferError:
            pass
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass
