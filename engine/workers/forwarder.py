"""A forwarding worker: a thin loop around the fast path.

Worker *w* owns RX queue *w* and TX queue *w* of every port. Each pass it takes a
burst from each of its RX rings, runs the fast path over it, and hands buffers on by
index: to the egress port's TX ring, to the slow-path ring, or back to their owner
(drops). `[engine] datapath = "compiled"` does all of a batch, from the RX ring to
the journal's last state, in one compiled call (workers/batch.py: the kernel on the
pool rows in place); "numpy" runs the numpy stages on gathered header rows,
scattered back, and the hand-off here. While a trace or capture is armed, batches
take the numpy way (the taps read the gathered rows).
Next hops without a MAC are resolved through the worker's own neighbour cache in
front of the shared neighbour table, flushed when a shared generation word moves
(see `Forwarder`).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numba import typeof

from engine.config import Config
from engine.counters import MISC_BASE, Drop, Misc
from engine.io.ports import WorkerPorts
from engine.io.registry import driver_for
from engine.observe.hooks import Observer
from engine.pipeline.compiled import CompiledPath
from engine.pipeline.fastpath import CODE_TO_COUNTERS, count, fast_path
from engine.pipeline.neigh_cache import NeighCache
from engine.pipeline.tables import Tables, make_tables
from engine.pipeline.verdict import FORWARD, SLOW, drop
from engine.proto import HDR_BYTES
from engine.shm.fib import FibReader
from engine.shm.journal import JOURNAL_COUNTED, JOURNAL_COUNTING, JOURNAL_IDLE, JOURNAL_TAKEN
from engine.shm.memory import (
    CTL_NEIGH_GEN,
    CTL_NH_GEN,
    CTL_STOP,
    ST_WARMUP_NS,
    EngineMemory,
    Geometry,
)
from engine.shm.neigh_table import NeighbourTable
from engine.shm.pool import Buffers
from engine.shm.ring import EMPTY, Ring
from engine.shm.trace_capture import OBS_ACTIVE
from engine.workers.batch import (
    MOVED,
    OBSERVED,
    RET_OVERFLOW,
    new_lane,
    sparse_counts,
    worker_batch,
    worker_pass,
)
from engine.workers.doorbell import Doorbells
from engine.workers.loop import exit_quickly, orphaned_at_start, pin, poll_loop

REWRITE_BYTES = 26  # Ethernet addresses, TTL and header checksum end at byte 26
REWRITE_WORDS = 4  # ... so the first four 64-bit words of a frame hold every change


@dataclass
class WorkerSpec:
    """Everything a worker process needs, picklable for a spawned process."""

    geometry: Geometry
    fib_name: str
    config: Config
    worker: int
    batch: int
    cpu: int | None
    doorbells: Doorbells | None = None  # live engines: every agent's (workers/doorbell.py)


class Forwarder:
    """The per-worker state and its one pass; a process calls `run`, tests call `poll`.

    `fib`, when given, is this worker's registered FIB reader handle (reader id =
    worker index): every pass ends with `fib.quiescent`, idle passes included, so
    that the control process can reuse tbl8 groups it released (see fib.py).

    The worker keeps its own caches of resolved destinations that are not plain FIB
    entries, the kernel's per-CPU `rt_uncached_list`, in its own memory: `neigh`, the
    neighbour cache the fast path resolves next-hop MACs through (pipeline/neigh_cache.py,
    put in front of the shared neighbour table of `tables.neigh`), and any others in
    `caches` (objects with clear()). All of them are cleared before the next batch
    once `CTL_NH_GEN` (a port went down or up, next hops changed: the control
    process) or `CTL_NEIGH_GEN` (a neighbour entry changed or went: the slow path's
    ARP) moves: two loads of shared words per pass, no lock, no message."""

    def __init__(self, mem: EngineMemory, tables: Tables, worker: int, batch: int,
                 fib: FibReader | None = None, ports: WorkerPorts | None = None,
                 datapath: str = "numpy"):
        g = mem.geometry
        self.mem = mem
        self.tables = tables
        self.worker = worker
        self.agent = g.worker_agent(worker)
        self.batch = batch
        self.rx = [mem.rings[f"rx.{p}.{worker}"] for p in range(g.nports)]
        self.tx = [mem.rings[f"tx.{p}.{worker}"] for p in range(g.nports)]
        self.slow = mem.rings[f"slow.{worker}"]
        self.buffers = Buffers(mem, self.agent)
        self.counters = mem.counters[self.agent]
        self.journal = mem.journal
        self.fib = fib
        # live ports: this worker's own queue on each (else the pcap agent fills our
        # RX rings and empties our TX rings)
        self.ports = ports
        self.neigh: NeighCache | None = None
        if isinstance(tables.neigh, NeighbourTable):
            self.neigh = NeighCache(tables.neigh)
            self.tables = replace(tables, neigh=self.neigh)
        self.caches: list[Any] = []  # more objects with clear() (PMTU, redirects: to come)
        self.nh_gen = int(mem.ctl[CTL_NH_GEN])
        self.neigh_gen = int(mem.ctl[CTL_NEIGH_GEN])
        self.flushes = 0
        # `fwd trace` / `fwd capture`: one shared word, loaded once per batch
        self.obs = mem.obs_ctl
        self.observer = Observer(mem, self.agent)
        self.slow_full = False  # the last plan_slow turned slow-path packets into drops
        # [engine] datapath = "compiled": the whole batch in one compiled call
        # (workers/batch.py) over this worker's tables, cache, rings and journal
        self.compiled: CompiledPath | None = None
        self.busy_ns = 0  # compiled passes' busy time not yet in the counters (`end_pass`)
        self.stop_at = 0  # tests: end the compiled batches at this STOP_* point
        if datapath == "compiled":
            self.compiled = CompiledPath(self.tables, max(batch, journal_rows(mem)))
            self.resume = np.zeros(2, dtype=np.int64)  # where worker_pass left the RX rings
            self.gens = np.array([self.nh_gen, self.neigh_gen], dtype=np.uint64)
            self.lane = self.bind_lane(self.compiled)
            # the dispatchers, until `compile` finds their entry points
            self.call_batch, self.call_pass = worker_batch, worker_pass

    def bind_lane(self, compiled: CompiledPath) -> Any:
        """Every array `worker_batch` touches, bound once."""
        mem, buffers = self.mem, self.buffers
        u4, i8 = np.dtype(np.uint32), np.dtype(np.int64)
        owners = buffers.owners
        # our own partition's free stack takes the place of a return ring to ourselves:
        # slots above its depth, published by the depth word
        rets = [(np.zeros(1, dtype=np.uint64), buffers._depth, buffers.stack)
                if o == self.agent else
                (buffers.outgoing[o].head, buffers.outgoing[o].tail, buffers.outgoing[o].slots)
                for o in owners]
        j = self.journal
        return new_lane(
            compiled.kernel, mem.data, mem.length, mem.port, mem.code, mem.ts,
            np.int64(self.worker), np.int64(self.batch), j.state, j.n, j.idx, j.code, j.before,
            self.counters,
            *sparse_counts(CODE_TO_COUNTERS), *(tuple(getattr(r, a) for r in rings)
                                for rings in (self.rx, self.tx) for a in ("head", "tail", "slots")),
            self.slow.head, self.slow.tail, self.slow.slots,
            np.int64(owners.index(self.agent) if self.agent in owners else -1),
            np.array([buffers.bounds[o][0] for o in owners], dtype=i8),
            np.array([buffers.bounds[o][1] for o in owners], dtype=i8),
            *(tuple(r[k] for r in rets) for k in range(3)),
            np.zeros(self.compiled.capacity if self.compiled else 0, dtype=u4),
            np.zeros(len(self.tx), dtype=i8), np.zeros(len(self.tx), dtype=i8),
            np.zeros(len(owners), dtype=i8), np.zeros(len(owners), dtype=i8),
            self.obs, self.resume, mem.ctl, self.gens,
            *(self.fib.quiescent_words(self.worker) if self.fib is not None
              else (np.zeros(1, dtype=np.uint64), np.zeros(1, dtype=np.uint64))))

    def compile(self) -> float:
        """Compile the compiled datapath's functions, or load them from numba's cache,
        and find the batch function's entry point; returns the seconds it took."""
        if self.compiled is None:
            return 0.0
        mem = self.mem
        t0 = time.perf_counter()
        self.compiled.warm_up(mem.data, mem.length, mem.port)
        self.call_batch = entry_point(worker_batch, self.lane, -1, EMPTY, 0)
        self.call_pass = entry_point(worker_pass, self.lane, 0)
        return time.perf_counter() - t0

    def warm_up(self) -> float:
        """`compile` before the first packet (never in the loop); the seconds it took
        go to this agent's ST_WARMUP_NS."""
        seconds = self.compile()
        if self.compiled is not None:
            self.mem.state[self.agent, ST_WARMUP_NS] = int(seconds * 1e9)
        return seconds

    def checked(self, got: int) -> int:
        """A compiled call's buffers taken (0 when a test stopped it early)."""
        if got == RET_OVERFLOW:  # cannot happen: a return ring holds a whole partition
            raise RuntimeError("a return ring overflowed")
        return max(got, 0)

    def end_pass(self, handled: int) -> None:
        """What compiled batches leave to do, once in a while: their busy time (at an
        idle pass, or once a millisecond of it: one numpy add, not one a batch) and
        the neighbour cache's statistics."""
        if self.busy_ns and (not handled or self.busy_ns >= 1_000_000):
            self.counters[MISC_BASE + Misc.busy_ns] += self.busy_ns
            self.busy_ns = 0
            if self.compiled is not None:
                self.compiled.sync_stats()

    def flush(self) -> None:
        """Forget every cached resolution (the kernel's rt_flush_dev / rt_genid bump)."""
        if self.neigh is not None:
            self.neigh.clear()
        for cache in self.caches:
            cache.clear()
        self.flushes += 1

    def process(self, idx: np.ndarray) -> None:
        """One batch. It is written to this worker's journal before anything else, its
        hand-off is decided (room on every ring checked: a full ring is a `ring_full`
        drop) before its counters are added, and the buffers move only then, so that
        the control process can finish the accounting of a killed worker's batch
        (JOURNAL_* states: engine/shm/journal.py; recovery: engine/control/recovery.py)."""
        w, journal = self.worker, self.journal
        n = len(idx)
        if n > journal.idx.shape[1]:  # larger than a ring (tests): journal it in parts
            for part in np.array_split(idx, -(-n // journal.idx.shape[1])):
                self.process(part)
            return
        if self.compiled is not None and not self.obs[OBS_ACTIVE]:
            if idx.dtype != np.uint32 or not idx.flags.c_contiguous:  # the one type compiled
                idx = np.ascontiguousarray(idx, dtype=np.uint32)
            t0 = time.perf_counter_ns()
            if self.checked(self.call_batch(self.lane, -1, idx, self.stop_at)):
                self.busy_ns += time.perf_counter_ns() - t0  # in the counters at `end_pass`
            return
        mem = self.mem
        t0 = time.perf_counter_ns()
        journal.idx[w, :n] = idx
        journal.n[w] = n
        journal.state[w] = JOURNAL_TAKEN  # published after the indices (x86 TSO)
        watch = self.obs[OBS_ACTIVE]  # 0 unless a trace or capture is armed
        sends: list[tuple[Ring, np.ndarray]] = []
        refused = False
        hdr = mem.data[idx, :HDR_BYTES]
        if watch:
            seen = self.observer.received(int(watch), idx, hdr)
        r = fast_path(hdr, mem.length[idx], mem.port[idx], self.tables)
        mem.length[idx] = r.frame_len
        code = r.code
        every = len(r.forwarded) == len(idx)
        if watch:
            self.observer.routed(seen, idx, hdr, code, r.egress)
        if len(r.forwarded):
            out = idx if every else idx[r.forwarded]
            rewritten = hdr.view("<u8")[:, :REWRITE_WORDS]
            mem.words[out, :REWRITE_WORDS] = rewritten if every else rewritten[r.forwarded]
            sends, refused = self.transmit(out, r.egress if every else r.egress[r.forwarded],
                                           r.forwarded, code)
        slow_rows = self.plan_slow(code) if (refused or not every) else None
        if watch:
            self.observer.decided(seen, idx, code)
        journal.code[w, :n] = code
        journal.before[w] = self.counters
        journal.state[w] = JOURNAL_COUNTING
        count(code, self.counters, mem.port[idx])  # drops by ingress port too
        self.counters[MISC_BASE + Misc.batches] += 1
        journal.state[w] = JOURNAL_COUNTED
        for ring, bufs in sends:
            ring.enqueue(bufs)  # room checked by transmit: we are the ring's only producer
        if slow_rows is not None:
            self.hand_on(idx, code, slow_rows)
        journal.state[w] = JOURNAL_IDLE
        if watch:
            self.observer.finished(seen, hdr, code, r.frame_len, self.tables)
        self.counters[MISC_BASE + Misc.busy_ns] += time.perf_counter_ns() - t0

    def transmit(self, out: np.ndarray, egress: np.ndarray, rows: np.ndarray,
                 code: np.ndarray) -> tuple[list[tuple[Ring, np.ndarray]], bool]:
        """Which forwarded buffers go on which egress port's TX ring, in batch order:
        what does not fit (the ring's free space now; it only grows until we enqueue)
        becomes a `ring_full` drop. Returns the (ring, buffers) to enqueue and whether
        any was refused."""
        per_port = np.bincount(egress, minlength=len(self.tx))
        refused = False
        sends = []
        for p in np.flatnonzero(per_port):
            sel = slice(None) if per_port[p] == len(out) else np.flatnonzero(egress == p)
            room = self.tx[p].free_space()
            bufs = out[sel]
            if room < per_port[p]:
                code[rows[sel][room:]] = drop(Drop.ring_full)
                bufs = bufs[:room]
                refused = True
            if len(bufs):
                sends.append((self.tx[p], bufs))
        return sends, refused

    def plan_slow(self, code: np.ndarray) -> np.ndarray:
        """Rows for the slow ring; those beyond its free space become `ring_full` drops."""
        slow_rows = np.flatnonzero(code >= SLOW)
        room = self.slow.free_space()
        self.slow_full = len(slow_rows) > room
        if self.slow_full:
            code[slow_rows[room:]] = drop(Drop.ring_full)
            slow_rows = slow_rows[:room]
        return slow_rows

    def hand_on(self, idx: np.ndarray, code: np.ndarray,
                slow_rows: np.ndarray | None = None) -> None:
        """Slow-path packets to the slow ring (with their reason), drops to the pool."""
        if slow_rows is None:
            slow_rows = self.plan_slow(code)
        if len(slow_rows):
            self.mem.code[idx[slow_rows]] = code[slow_rows]  # tells the slow path why
            self.slow.enqueue(idx[slow_rows])
        dropped = (code != FORWARD) & (code < SLOW)
        if dropped.any():
            self.buffers.free(idx[dropped])

    def generations(self) -> None:
        """Flush the caches when `CTL_NH_GEN` or `CTL_NEIGH_GEN` moved (no lock, no
        message: two loads of shared words a pass)."""
        ctl = self.mem.ctl
        nh_gen, neigh_gen = int(ctl[CTL_NH_GEN]), int(ctl[CTL_NEIGH_GEN])
        if nh_gen != self.nh_gen or neigh_gen != self.neigh_gen:
            self.flush()
            self.nh_gen, self.neigh_gen = nh_gen, neigh_gen
            if self.compiled is not None:
                self.gens[:] = nh_gen, neigh_gen

    def poll(self) -> int:
        """One pass over this worker's RX rings; returns packets handled."""
        if self.ports is None and self.compiled is not None:
            return self.poll_compiled()
        self.generations()
        handled = 0
        if self.ports is None:
            for ring in self.rx:
                handled += self.take(ring)
        else:
            if not self.mem.ctl[CTL_STOP]:  # stopping: take nothing more in, send the rest
                for p in range(len(self.rx)):
                    idx = self.ports.receive(p, self.batch)
                    if len(idx):
                        self.process(idx)
                        handled += len(idx)
            handled += self.ports.send()
        self.end_pass(handled)
        if self.fib is not None:
            # no table reference survives this point: tell the writer so
            self.fib.quiescent(self.worker)
        return handled

    def take(self, ring: Ring) -> int:
        idx = ring.dequeue(self.batch)
        if len(idx):
            self.process(idx)
        return len(idx)

    def poll_compiled(self) -> int:
        """`poll` as one compiled call (worker_pass), back here only to flush the
        caches or for the numpy stages while a trace or capture is armed."""
        t0 = time.perf_counter_ns()
        got = self.call_pass(self.lane, self.stop_at)
        while got == MOVED:
            self.generations()
            got = self.call_pass(self.lane, self.stop_at)
        if got == OBSERVED:
            got = int(self.resume[1])
            for ring in self.rx[int(self.resume[0]):]:
                got += self.take(ring)
            if self.fib is not None:
                self.fib.quiescent(self.worker)
        handled = self.checked(got)
        if handled:
            self.busy_ns += time.perf_counter_ns() - t0
        self.end_pass(handled)
        return handled

    def run(self) -> None:
        if self.ports is None:
            poll_loop(self.mem, self.agent, self.poll, self.rx)
            return
        mem, bells = self.mem, self.mem.doorbells
        block = after = None
        if bells is not None:
            if self.ports.can_block:  # AF_PACKET: poll() the sockets and our doorbell
                self.ports.watch(bells.fileno(self.agent))
                block = self.ports.wait
            slow, slow_agent = self.slow, mem.geometry.slowpath_agent

            def after() -> bool:  # we feed the slow path: wake it if it sleeps
                return bells.wake_if_sleeping(mem, slow_agent, lambda: slow.count() > 0)
        poll_loop(mem, self.agent, self.poll, self.tx, wait=self.ports.wait, block=block,
                  after_pass=after)


def prepare_compiled(cfg: Config, mem: EngineMemory, fib_name: str) -> float:
    """Compile the kernel for a worker's argument types (or load it from numba's cache)
    in the calling process, so that workers starting next only load it; returns the
    seconds it took."""
    fib = FibReader.attach(fib_name)  # the same read-only views a worker has
    try:
        return _warm(cfg, mem, fib)
    finally:
        fib.close()


def _warm(cfg: Config, mem: EngineMemory, fib: FibReader) -> float:
    tables = make_tables(cfg, mem, fib.lookup)
    return Forwarder(mem, tables, 0, cfg.engine.batch, datapath="compiled").compile()


def entry_point(dispatcher: Any, *args: Any) -> Any:
    """The compiled function `dispatcher` runs for `args` (compiled or loaded from the
    cache now, not run), to be called directly: without the dispatcher's type check of
    every argument, which costs more than a small batch. Only ever call it with
    arguments of these types."""
    sig = tuple(typeof(a) for a in args)
    dispatcher.compile(sig)
    return dispatcher.overloads[sig].entry_point


def journal_rows(mem: EngineMemory) -> int:
    """The most packets one `process` call handles at once (a journal's worth)."""
    return int(mem.journal.idx.shape[1])


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a forwarding worker process."""
    if orphaned_at_start():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the control process decides when to stop
    pin(spec.cpu)
    mem = EngineMemory.attach(spec.geometry)
    mem.doorbells = spec.doorbells
    fib = FibReader.attach(spec.fib_name, reader_id=spec.worker)  # close() unregisters it
    ports = None
    try:
        ports = driver_for(spec.config).worker_ports(spec.config, mem, spec.worker, spec.batch,
                                                    spec.cpu)
        fw = Forwarder(mem, make_tables(spec.config, mem, fib.lookup), spec.worker,
                       spec.batch, fib=fib, ports=ports, datapath=spec.config.engine.datapath)
        fw.warm_up()
        fw.run()
    finally:
        if ports is not None:
            ports.close()
        fib.close()
        mem.close()
    exit_quickly()
