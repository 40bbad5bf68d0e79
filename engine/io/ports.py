"""Live ports: how the engine's processes use AF_PACKET (and DPDK) ports.

With pcap ports one agent (the control process) feeds every worker's RX rings and
collects every TX ring. Live ports have no such agent in the data path: as a NIC's
queues would be, each forwarding worker owns its own queue on every port —

- `WorkerPorts`: receives a burst per port straight into the worker's pool
  partition, and sends what the fast path queued on the worker's own `tx.<p>.<w>`
  rings (the worker is then both producer and consumer of those rings);
- `SenderPorts`: the control process sends what the slow path queued on
  `slowtx.<p>` through send-only sockets (never in a fanout group, so they take no
  frame away from the workers).

Frames a driver cannot take now (every TX slot in flight) wait in a short per-port
backlog and go first on the next pass; past `BACKLOG_BURSTS` bursts the oldest are
dropped and counted in the port's `tx_drops`, as a full qdisc would (the packets were
already counted as forwarded, which the kernel also does before `dev_queue_xmit`).
"""

from __future__ import annotations

import select
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from engine.config import PortConfig
from engine.counters import MISC_BASE, Drop, Misc, index
from engine.shm.memory import (
    PORT_COUNTER_NAMES,
    EngineMemory,
)
from engine.shm.pool import Buffers
from engine.shm.ring import Ring

RX_PACKETS, RX_BYTES, TX_PACKETS, TX_BYTES, RX_DROPS, TX_DROPS = (
    PORT_COUNTER_NAMES.index(n) for n in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes",
                                          "rx_drops", "tx_drops"))
BACKLOG_BURSTS = 4  # bursts a port may hold back while its TX ring is busy
KERNEL_STATS_EVERY = 1024  # passes between two reads of the kernel's per-socket drops


class LivePort(Protocol):
    """What the engine asks of one queue of a live port (engine/io/afpacket.py,
    engine/io/dpdk/engine.py)."""

    def rx_burst(self, buffers: Buffers, mem: EngineMemory, port: int,
                 max_frames: int) -> np.ndarray: ...

    def tx_burst(self, mem: EngineMemory, idx: np.ndarray) -> int: ...
    # the first `sent` of idx went; the caller frees them, unless the driver has an
    # attribute `owns_sent` that is true (zero copy: they are the device's now)

    def fileno(self) -> int: ...

    def wait(self, timeout: float, /) -> bool: ...  # frames ready (0: without waiting)

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class OpenQueue(Protocol):
    """Opens this process's queue on a live port (`receive=False`: send only); `queue`
    is a worker's queue number, None for the slow path's output. One per driver, in
    engine/io/registry.py."""

    def __call__(self, port: PortConfig, index: int, mem: EngineMemory, *, receive: bool,
                 queue: int | None) -> LivePort: ...


class Sender:
    """Send what is queued on rings through drivers, with a short backlog per port."""

    def __init__(self, mem: EngineMemory, agent: int, drivers: Sequence[Any],
                 rings: Sequence[Sequence[Ring]], burst: int):
        self.mem = mem
        self.drivers = list(drivers)
        self.rings = [list(r) for r in rings]  # per port: the rings to send from
        self.burst = burst
        self.buffers = Buffers(mem, agent)
        self.counters = mem.counters[agent]
        self.port_counters = mem.port_counters[agent]
        self.backlog: list[np.ndarray] = [np.zeros(0, np.uint32) for _ in self.drivers]

    def send(self) -> int:
        """One pass: every port's backlog, then its rings. Returns frames sent."""
        mem = self.mem
        sent_total = 0
        for p, driver in enumerate(self.drivers):
            if driver is None:
                continue
            parts = [self.backlog[p]] if len(self.backlog[p]) else []
            parts += [idx for ring in self.rings[p] if len(idx := ring.dequeue(ring.size))]
            if not parts:
                continue
            idx = parts[0] if len(parts) == 1 else np.concatenate(parts)
            sent = driver.tx_burst(mem, idx) if len(idx) else 0
            done, rest = idx[:sent], idx[sent:]
            limit = BACKLOG_BURSTS * self.burst
            if len(rest) > limit:  # the oldest go: a full queue drops at its tail here
                over = len(rest) - limit
                self.port_counters[p, TX_DROPS] += over
                self.buffers.free(rest[:over])
                rest = rest[over:]
            self.backlog[p] = rest
            if sent:
                self.port_counters[p, TX_PACKETS] += sent
                self.port_counters[p, TX_BYTES] += int(mem.length[done].sum())
                self.counters[MISC_BASE + Misc.tx_frames] += sent
                # a zero-copy driver (DPDK) owns what it sent: the device frees it
                if not getattr(driver, "owns_sent", False):
                    self.buffers.free(done)
                sent_total += sent
        return sent_total

    def pending(self) -> int:
        return sum(len(b) for b in self.backlog) + sum(
            r.count() for rings in self.rings for r in rings)

    def drop_backlog(self) -> None:
        """At exit: what could not be sent is dropped and counted, its buffers freed."""
        for p, rest in enumerate(self.backlog):
            if len(rest):
                self.port_counters[p, TX_DROPS] += len(rest)
                self.buffers.free(rest)
                self.backlog[p] = rest[:0]


def open_all(ports: Sequence[PortConfig], mem: EngineMemory, open_queue: OpenQueue, *,
             receive: bool, queue: int | None) -> list[LivePort]:
    """This process's queue on every port; all or none (what opened is closed again)."""
    drivers: list[LivePort] = []
    try:
        for p, port in enumerate(ports):
            drivers.append(open_queue(port, p, mem, receive=receive, queue=queue))
    except BaseException:
        for d in drivers:
            d.close()
        raise
    return drivers


class WorkerPorts(Sender):
    """A forwarding worker's queue on every live port."""

    def __init__(self, ports: Sequence[PortConfig], mem: EngineMemory, worker: int,
                 burst: int, open_queue: OpenQueue):
        g = mem.geometry
        drivers = open_all(ports, mem, open_queue, receive=True, queue=worker)
        super().__init__(mem, g.worker_agent(worker), drivers,
                         [[mem.rings[f"tx.{p}.{worker}"]] for p in range(len(ports))], burst)
        self._poller = select.poll()
        for d in drivers:
            if d.fileno() >= 0:  # polled drivers (DPDK) have none: the wait is a sleep
                self._poller.register(d.fileno(), select.POLLIN)
        # every port can wake us (AF_PACKET): an idle worker may block for long
        self.can_block = all(d.fileno() >= 0 for d in drivers)
        self._passes = 0
        self._oversize = [(0, 0)] * len(drivers)  # the drivers' rx_oversize, rx_offload_bad

    def receive(self, p: int, max_frames: int) -> np.ndarray:
        """Up to `max_frames` frames from port `p`'s queue, in pool buffers."""
        idx = self.drivers[p].rx_burst(self.buffers, self.mem, p, max_frames)
        if len(idx):
            self.port_counters[p, RX_PACKETS] += len(idx)
            self.port_counters[p, RX_BYTES] += int(self.mem.length[idx].sum())
        return idx

    def send(self) -> int:
        self._passes += 1
        if self._passes % KERNEL_STATS_EVERY == 0:
            self.count_kernel_drops()
        return super().send()

    def watch(self, fd: int) -> None:
        """`wait` also returns when `fd` is readable (the worker's doorbell)."""
        self._poller.register(fd, select.POLLIN)

    def wait(self, timeout_s: float) -> None:
        """Sleep until a port has frames, a watched fd is readable or `timeout_s`
        passes (an idle worker)."""
        if any(d.wait(0) for d in self.drivers):
            return
        self._poller.poll(max(0, int(timeout_s * 1000)))

    def count_kernel_drops(self) -> None:
        """Frames the kernel dropped for want of a free ring block, and frames we took
        but could not keep, into the port's rx_drops. Those too long for a buffer are
        also received packets dropped for a reason (Drop.rx_oversize), as the pcap
        ports count them: `fwd stats` names them instead of a bare rx_drops."""
        for p, d in enumerate(self.drivers):
            s = d.stats()  # kernel counters since the last call; ours cumulative
            oversize = s.get("rx_oversize", 0)
            bad = s.get("rx_offload_bad", 0)  # a GSO frame we cannot segment
            new = oversize - self._oversize[p][0]
            self.port_counters[p, RX_DROPS] += (s.get("kernel_drops", 0) + new
                                                + bad - self._oversize[p][1])
            if new:
                self.port_counters[p, RX_PACKETS] += new
                self.counters[index(Drop.rx_oversize)] += new
                self.counters[MISC_BASE + Misc.dropped] += new
            self._oversize[p] = (oversize, bad)

    def close(self) -> None:
        self.count_kernel_drops()
        self.drop_backlog()
        for d in self.drivers:
            d.close()


class SenderPorts(Sender):
    """The control process's send-only queue on every live port: the slow path's output."""

    def __init__(self, ports: Sequence[PortConfig], mem: EngineMemory, agent: int, burst: int,
                 open_queue: OpenQueue):
        drivers = open_all(ports, mem, open_queue, receive=False, queue=None)
        super().__init__(mem, agent, drivers,
                         [[mem.rings[f"slowtx.{p}"]] for p in range(len(ports))], burst)
        self.closed = False

    def drain(self) -> int:
        """Send what the slow path queued (the pcap agent's `drain`, for live ports)."""
        return self.send() if not self.closed else 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.drop_backlog()
        for d in self.drivers:
            d.close()
