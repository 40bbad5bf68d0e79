"""The slow-path worker: a thin loop around the slow path's kernel (engine/slowpath).

It drains the slow ring of every forwarding worker (buffer indices, zero copy). Each
buffer carries, in `mem.code`, why the fast path handed it over (verdict.SLOW + a
`Slow` reason), its ingress port in `mem.port`, its capture time in `mem.ts` and its
arrival order in `mem.seq`. A burst goes, in arrival order, to:

    whole datagrams   WholeDatagrams (slowpath/whole.py): the fragments that make up
                      complete, plainly forwarded datagrams on their own, sent as they
                      came (the kernel's frag_list), in their own buffers
    ICMP runs         IcmpRuns (slowpath/icmp_burst.py): ICMP errors (TTL exceeded,
                      fragmentation needed, error routes) about plain IPv4 packets
                      and echo replies, for runs of such packets at once, between
                      the others (which go to `Kernel.take`), in arrival order
    routing           RouteCache.prefetch (slowpath/route_cache.py): the routing
                      questions the rest will ask, answered together
    the kernel        Kernel.take (slowpath/kernel.py): every other packet, one at a
                      time, through the kernel function its reason leads to
    output            Output.flush_tx (slowpath/output.py): what they sent, onto the
                      ports' slow TX rings at the end of the burst

Every input buffer is freed once, at the end of its burst; counters move then, and
before `rx_frames` says the burst is done.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import numpy as np

from engine.config import Config
from engine.counters import Misc, Slow, index
from engine.pipeline.tables import Tables, make_tables
from engine.pipeline.verdict import SLOW
from engine.proto import ETH_HLEN
from engine.shm.fib import FibReader
from engine.shm.memory import (
    AGENT_IO,
    CTL_END_CLOCK,
    CTL_PAUSE,
    CTL_REPLAY_CLOCK,
    CTL_STOP,
    CTL_UNFED_SEQ,
    FREE_TS,
    ST_NEXT_TIMER,
    EngineMemory,
    Geometry,
)
from engine.shm.pool import Buffers
from engine.slowpath.counts import Counts
from engine.slowpath.icmp_burst import IcmpRuns
from engine.slowpath.kernel import SLOW_REASONS, Kernel
from engine.slowpath.output import Output
from engine.slowpath.packet import Packet, pkt_type
from engine.slowpath.whole import WholeBurst, WholeDatagrams
from engine.workers.doorbell import Doorbells
from engine.workers.loop import exit_quickly, orphaned_at_start, pin, poll_loop

SLOW_BURST = 1024  # the most a burst takes from one slow ring (see SlowPath.batch)


@dataclass
class SlowPathSpec:
    geometry: Geometry
    fib_name: str
    config: Config
    batch: int
    cpu: int | None
    # pcap replays: the capture time of the last input frame (None: as the pcap agent
    # read it, CTL_END_CLOCK)
    end_clock_ns: int | None = None
    doorbells: Doorbells | None = None  # live engines: every agent's (workers/doorbell.py)


class SlowPath:
    """The slow-path worker: its rings and its pool partition around the kernel. A
    process calls `run`; `poll` is one pass, `finish` the end of a replay."""

    def __init__(self, mem: EngineMemory, tables: Tables, cfg: Config, batch: int, *,
                 end_clock_ns: int | None = None, fib: FibReader | None = None) -> None:
        g = mem.geometry
        self.mem = mem
        self.agent = g.slowpath_agent
        # a burst is what a slow ring holds, up to SLOW_BURST (or `batch`): when the
        # slow path falls behind, its per-burst costs (numpy calls: routing, whole
        # datagrams) spread over more packets and fewer datagrams are cut by a
        # burst's edge, as NAPI polls more when there is more to take
        self.batch = max(batch, SLOW_BURST)
        self.rings = [mem.rings[f"slow.{w}"] for w in range(g.nworkers)]
        self.buffers = Buffers(mem, self.agent)
        self.fib = fib  # this process's FIB reader handle (reader id: nworkers)
        self.reader = g.nworkers
        self.end_clock_ns = end_clock_ns
        self.counts = Counts(mem.counters[self.agent])
        self.out_rings = [mem.rings[f"slowtx.{p}"] for p in range(g.nports)]
        self.out = Output(mem, self.out_rings,
                          self.buffers, self.counts,
                          lossless=all(p.driver == "pcap" for p in cfg.ports),
                          fib=fib, reader=self.reader)
        self.kernel = Kernel(mem, tables, cfg, self.out, self.counts)
        self.whole = WholeDatagrams(self.kernel)
        self.whole_bursts = True  # False: every packet through `Kernel.take` (tests compare)
        self.icmp = IcmpRuns(self.kernel)
        self.icmp_bursts = True  # False: every ICMP error through `Kernel.take` (tests compare)
        self.waiting = np.zeros(0, dtype=np.uint32)  # replays: packets waiting for their turn

    def poll(self) -> int:
        """One pass over the slow rings; returns packets handled."""
        kernel = self.kernel
        handled = 0
        # read before the rings: every frame older than this has left the workers, so
        # once the rings are empty, none older can still come here
        replay_clock = int(self.mem.ctl[CTL_REPLAY_CLOCK])
        unfed = int(self.mem.ctl[CTL_UNFED_SEQ])
        if self.out.lossless and unfed:
            handled = self.take_in_order(unfed - 1)
        else:
            for ring in self.rings:
                idx = ring.dequeue(self.batch)
                if len(idx):
                    self.handle(idx)
                    handled += len(idx)
        if (self.out.lossless and replay_clock and not len(self.waiting)
                and all(r.count() == 0 for r in self.rings)):
            # a replay's timers run as its capture clock passes them, with or without
            # packets for us: at their due times, after every packet older than them (the
            # kernel's timers run in real time), and the pcap agent may write its output
            # up to the next one (`publish_next_timer`)
            if kernel.next_timer() < replay_clock:
                kernel.advance(replay_clock - 1)
        if not self.out.lossless:
            # a live port stamps the wall clock: timers must run while the link is quiet
            # (a replay's clock only moves with its frames)
            kernel.clock = max(kernel.clock, time.time_ns())
            kernel.routes.forget()
            kernel.expire()
            kernel.sync_reasm()
        kernel.neigh.tick(kernel.clock)
        self.out.flush_tx()
        self.publish_next_timer()
        self.counts.flush()
        if self.fib is not None:
            self.fib.quiescent(self.reader)
        return handled

    def take_in_order(self, unfed: int) -> int:
        """A pcap replay: the packets of every slow ring in arrival order, as far as no
        older one can still come (from a worker, or not yet fed), so that the kernel's
        clock, timers and queues see the same sequence whatever the number of workers.
        `unfed`: the arrival number of the oldest frame not yet fed. Seq order is time
        order for received frames (engine/io/pcap_port.py numbers them so). Returns
        packets handled; the rest wait in `waiting` (buffers in flight, not freed)."""
        mem = self.mem
        got = [self.waiting] + [ring.dequeue(ring.size) for ring in self.rings]
        waiting = np.concatenate(got) if len(got) > 1 else got[0]
        if len(waiting) == 0:
            return 0
        seq = mem.seq[waiting]
        order = np.argsort(seq, kind="stable")
        waiting, seq = waiting[order], seq[order]
        if mem.ctl[CTL_STOP] or mem.ctl[CTL_PAUSE]:
            ready = len(waiting)  # the end, or a worker being recovered: all of it now
        else:
            # the oldest packet anywhere else: a buffer in flight carries its number
            # (free ones are FREE_TS), the waiting ones aside
            live = mem.ts != FREE_TS
            live[waiting] = False
            bound = unfed
            if live.any():
                bound = min(bound, int(mem.seq[live].min()))
            ready = int(np.searchsorted(seq, np.uint64(bound), side="left"))
        done = 0
        while done < ready:
            burst = waiting[done : min(ready, done + self.batch)]
            self.handle(burst)
            done += len(burst)
        self.waiting = waiting[ready:]
        return done

    def settle(self) -> None:
        """Before a pause: what waits is taken now (the pause finds us holding nothing)."""
        if len(self.waiting):
            self.take_in_order(0)

    def publish_next_timer(self) -> None:
        """Tell the pcap agent when our next timer falls due: what a timer sends carries
        that time, so output older than it can be written (engine/io/pcap_port.py).
        Published after what the timers sent is on the TX rings, before the burst's
        buffers (which hold the time of what it sends) are freed."""
        due = self.kernel.next_timer()
        self.mem.state[self.agent, ST_NEXT_TIMER] = (
            FREE_TS if due == float("inf") else max(0, int(due)))

    def run(self) -> None:
        mem, bells, agent = self.mem, self.mem.doorbells, self.agent
        block = block_for = after = None
        if bells is not None and not self.out.lossless:
            # live ports: block on our doorbell (the workers ring it when they hand us
            # packets) until the next timer at the latest; the control process sends
            # what we queue on the slow TX rings: ring its doorbell when it sleeps
            def block(timeout: float) -> None:
                bells.wait(agent, timeout)

            def block_for() -> float:
                return (self.kernel.next_timer() - time.time_ns()) / 1e9

            slowtx = self.out_rings

            def after() -> bool:
                return bells.wake_if_sleeping(mem, AGENT_IO,
                                              lambda: any(r.count() for r in slowtx))
        poll_loop(mem, agent, self.poll, [*self.rings, _Waiting(self)], settle=self.settle,
                  block=block, block_for=block_for, after_pass=after)
        self.finish()

    def handle(self, idx: np.ndarray) -> None:
        """Take a burst: every packet to its kernel function, then free the buffers."""
        t0 = time.perf_counter_ns()
        mem = self.mem
        kernel = self.kernel
        whole = None
        if self.whole_bursts and len(idx) > 1 and kernel.t.reassemble_transit:
            try:
                whole = self.whole.take(idx)
            except Exception:  # then every packet goes one at a time
                kernel.log_error()
        rest = idx if whole is None else idx[whole.rest]
        n = len(rest)
        # ICMP errors about plain IPv4 packets and echo replies: in runs, between the
        # packets taken one at a time
        candidates = None
        if self.icmp_bursts and n:
            try:
                candidates = self.icmp.candidates(rest)
            except Exception:  # then every packet goes one at a time
                kernel.log_error()
        runs = candidates is not None and bool(candidates[0].any())
        lengths = mem.length[rest].tolist()
        ports = mem.port[rest].tolist()
        stamps = mem.ts[rest].tolist()
        seqs = mem.seq[rest].tolist()
        codes = mem.code[rest].tolist()
        alone = np.flatnonzero(~candidates[0]).tolist() if runs else range(n)
        burst: list[tuple[Packet, Slow] | None] = [None] * n
        rows = rest.tolist()
        for k in alone:
            burst[k] = self.packet(rows[k], lengths[k], ports[k], stamps[k], seqs[k], codes[k])
        try:
            kernel.routes.prefetch([b for b in burst if b is not None] if runs else burst)
        except Exception:  # a header prefetch cannot read: each packet asks alone
            kernel.routes.forget()
            kernel.log_error()
        if not runs:
            if whole is None:
                for pkt, reason in burst:
                    kernel.take(pkt, reason)
            else:
                for j, (pkt, reason) in enumerate(burst):
                    self.whole.send(whole, j)
                    kernel.take(pkt, reason)
        else:
            self.take_runs(rest, burst, candidates, whole, lengths, ports, stamps, seqs, codes)
        if whole is not None:
            self.whole.send(whole, n)
        # what the burst sent is on the TX rings before its buffers go: until then they
        # hold the capture time of what it sends (a replay's output order, pcap_port.py)
        self._flush()
        self.publish_next_timer()
        self.buffers.free(rest)  # every input buffer, once: what we keep are copies
        row = self.counts.row
        row[index(Misc.batches)] += 1
        row[index(Misc.busy_ns)] += time.perf_counter_ns() - t0
        # last: the control process takes "slow path taken == handed over" (with every
        # ring empty) as the sign that nothing more will come out of here
        row[index(Misc.rx_frames)] += len(idx)

    def packet(self, row: int, length: int, port: int, ts: int, seq: int,
               code: int) -> tuple[Packet, Slow]:
        """Pool row `row` as the kernel takes it, with the reason it was handed over."""
        frame = self.mem.data[row, :length].tobytes()  # trimmed to tot_len by the fast path
        pkt = Packet(frame[ETH_HLEN:], port, pkt_type(frame, self.kernel.port_mac[port]), ts,
                     seq)
        return pkt, SLOW_REASONS[code - SLOW]

    def take_runs(self, rest: np.ndarray, burst: list[tuple[Packet, Slow] | None],
                  candidates: tuple[np.ndarray, ...], whole: WholeBurst | None,
                  lengths: list[int], ports: list[int], stamps: list[int], seqs: list[int],
                  codes: list[int]) -> None:
        """The burst in arrival order: runs of ICMP candidates to `IcmpRuns.take`,
        every other packet (and a candidate it leaves) to `Kernel.take`. A run ends
        where a whole datagram is due to leave (`WholeDatagrams.send`)."""
        kernel = self.kernel
        mask, bufs, lens, vcodes, saddr, daddr, host, echo = candidates
        n = len(rest)
        ends = np.flatnonzero(~mask).tolist() + [n]  # where each run stops at the latest
        if whole is not None:  # and where a whole datagram leaves or its source counts
            upto = np.asarray(whole.upto[: n + 1])
            ends += (np.flatnonzero(upto[1:] != upto[:-1]) + 1).tolist() + list(whole.saw)
        ends = sorted(set(ends))
        j = 0
        stop = 0
        while j < n:
            if whole is not None:
                self.whole.send(whole, j)
            if mask[j]:
                while ends[stop] <= j:
                    stop += 1
                end = ends[stop]
                try:
                    taken = self.icmp.take(rest[j:end], bufs[j:end], lens[j:end],
                                           vcodes[j:end], saddr[j:end], daddr[j:end],
                                           host[j:end], echo[j:end])
                except Exception:  # failed before deciding anything (what `take`
                    kernel.log_error()  # decides, it counts): they go one at a time
                    taken = 0
                if taken:
                    j += taken
                    continue
                if burst[j] is None:
                    burst[j] = self.packet(int(rest[j]), lengths[j], ports[j], stamps[j],
                                           seqs[j], codes[j])
            pkt, reason = burst[j]  # type: ignore[misc]
            kernel.take(pkt, reason)
            j += 1

    def finish(self) -> None:
        """End of a pcap replay: the clock stops at the last input frame. Queues due by
        then time out (ICMP and all); the rest are flushed and counted."""
        end = self.end_clock_ns
        if end is None and self.out.lossless and self.mem.ctl[CTL_END_CLOCK]:
            end = int(self.mem.ctl[CTL_END_CLOCK])  # the pcap agent's, as it read
        self.kernel.finish(end)
        self._flush()

    def _flush(self) -> None:
        """What the burst sent, then its counts, into shared memory."""
        self.out.flush_tx()
        self.kernel.sync_reasm()
        self.counts.flush()


class _Waiting:
    """The packets a replay's slow path holds for their turn, as poll_loop counts what
    is still to do before it may stop."""

    def __init__(self, slow: SlowPath) -> None:
        self.slow = slow

    def count(self) -> int:
        return len(self.slow.waiting)


def slowpath_main(spec: SlowPathSpec) -> None:
    """Entry point of the slow-path process."""
    if orphaned_at_start():
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the control process decides when to stop
    pin(spec.cpu)
    mem = EngineMemory.attach(spec.geometry)
    mem.doorbells = spec.doorbells
    fib = FibReader.attach(spec.fib_name, reader_id=spec.geometry.nworkers)
    try:
        SlowPath(mem, make_tables(spec.config, mem, fib.lookup), spec.config, spec.batch,
                 end_clock_ns=spec.end_clock_ns, fib=fib).run()
    finally:
        fib.close()
        mem.close()
    exit_quickly()
