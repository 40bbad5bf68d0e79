"""DPDK ports in the engine: EAL set-up, queue layout, and the two process models.

Multi-process mode (DPDK's primary/secondary model, the default when it can run):

- the control process is the DPDK primary: it initialises EAL, configures every port
  with one RX queue per forwarding worker and one TX queue more (RSS over IPv4, TCP
  and UDP where the device offers it; MAC and MTU from the config) and starts it;
- forwarding worker w is a secondary (`--proc-type=secondary`, same `--file-prefix`,
  lcore w+1 on the worker's CPU): it polls RX queue w of every port straight into its
  partition of the engine's pool and sends its `tx.<p>.<w>` rings on TX queue w
  (`engine.io.ports.WorkerPorts`, with `DpdkQueue` as the port driver);
- the slow path's output leaves through the extra TX queue (number `workers`), sent
  by the control process (`SenderPorts`, as for AF_PACKET): the slow-path worker
  stays a plain Python process, and no two processes ever share a TX queue.

It needs hugepages (DPDK shares memory between processes only through hugepage
files) and devices whose queues a secondary can drive (devices.py: not `net_pcap`,
not `net_af_packet`).

Single-process mode (the fallback, or `[dpdk] mode = "single-process"`): the control
process alone talks to DPDK, with one queue pair per port, as the pcap driver plays
the NIC: it receives bursts into the pool, spreads them over the workers' RX rings by
the Toeplitz hash of engine/io/rss.py (one flow always on one worker, in order), and
sends what the workers and the slow path queued. Workers never touch DPDK. It runs
with or without hugepages (`--no-huge -m memory_mb --no-shconf`). With zero copy that
whole pass over the workers' rings is one C call (`SingleProcessAgent`,
`_build.fwd_agent_pass`): Python runs once per pass of many bursts, not per burst.

Zero copy (`[dpdk] zero_copy`, on by default; single-process mode on vdevs): the
control process's RX queues take their mbufs from a mempool over its own pool
partition (`Dpdk.pool_mbufs`): a frame arrives in a pool row, goes to a worker as the
row's index, and leaves as that row's mbuf; DPDK's free list for those mbufs is the
partition's free stack, so a row is free in one place only. Frames of the slow path
(its own partition) are still copied into mbufs on TX. Not in multi-process mode:
there an mbuf lives in hugepages shared by every process and holds one virtual
address for its data, while the engine's pool is mapped at a different address in
each process; and a worker's rows could be freed by another process (net_ring hands
the very mbufs from one port to the other), which the single-writer free stacks do
not allow. Not for PCI devices either: a NIC would DMA into the rows, which would
need them registered (`rte_extmem_register`) and mapped for the device
(`rte_dev_dma_map`) with their IOVAs, which is not done (nor testable here).

Live semantics: a DPDK port, `net_pcap` on a capture file included, has no end; the
engine runs until SIGINT/SIGTERM (the pcap vdev simply stops delivering at the end
of its file, and writes and flushes its output capture burst by burst).

Reserve hugepages (as root) with:

    echo 512 > /proc/sys/vm/nr_hugepages
    mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import Config, PortConfig
from engine.counters import MISC_BASE, Misc
from engine.io.dpdk import Dpdk, DpdkError, DpdkPort, PoolMbufs, hugepages_reserved
from engine.io.dpdk._build import build
from engine.io.dpdk.devices import is_pci, single_process_reason
from engine.io.ports import (
    RX_BYTES,
    RX_DROPS,
    RX_PACKETS,
    TX_BYTES,
    TX_DROPS,
    TX_PACKETS,
    Sender,
    SenderPorts,
    WorkerPorts,
)
from engine.io.rss import DEFAULT_KEY, TUPLE_LEN, rss_queues, toeplitz_tables
from engine.shm.memory import AGENT_IO, CTL_STOP, EngineMemory, Geometry
from engine.shm.pool import Buffers
from engine.shm.ring import Ring

MULTI = "multi-process"
SINGLE = "single-process"
RXD = 512  # descriptors per RX queue
TXD = 512  # ... per TX queue
MBUF_CACHE = 128
HUGEPAGE_COMMAND = ("echo 512 > /proc/sys/vm/nr_hugepages; mkdir -p /dev/hugepages; "
                    "mount -t hugetlbfs nodev /dev/hugepages")
MBUF_BYTES = 128 + 128 + 64  # an mbuf's header, headroom and mempool overhead, roughly
AGENT_ROUNDS = 16  # rounds of the single-process zero-copy pass per call, while frames move
RETA_SIZE = 128  # entries of the RSS redirection table (engine/io/rss.py rss_queue)
DEVICE_STATS = ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors",
                "oerrors", "rx_nombuf")


class DpdkSetupError(RuntimeError):
    """DPDK cannot run as configured (library, hugepages, device); a message for people."""


@dataclass(frozen=True)
class DpdkPlan:
    """How this run uses DPDK: the mode, why, and each process's EAL arguments."""

    mode: str
    why: str
    hugepages: bool
    workers: int
    eal_args: tuple[str, ...]  # the config's, given to every process
    memory_mb: int
    no_pci: bool
    cpus: tuple[int, ...]

    @property
    def multi(self) -> bool:
        return self.mode == MULTI

    @property
    def rx_queues(self) -> int:
        return self.workers if self.multi else 1

    @property
    def tx_queues(self) -> int:
        return self.workers + 1 if self.multi else 1

    @property
    def slow_tx_queue(self) -> int:
        return self.workers if self.multi else 0

    def primary_args(self, prefix: str) -> list[str]:
        cpus = ",".join(map(str, self.cpus))
        # lcore 0 may run on every CPU we may use: EAL pins its main thread to its
        # lcore's set, and the control process must not squeeze the workers' CPUs
        args = ["--file-prefix", prefix, f"--lcores=0@({cpus})"]
        if self.no_pci:
            args.append("--no-pci")
        if not self.hugepages:
            args += ["--no-huge", "-m", str(self.memory_mb), "--no-shconf"]
        return args + list(self.eal_args)

    def zero_copy_off(self, cfg: Config) -> str | None:
        """Why this run copies frames between mbufs and the pool, or None (zero copy)."""
        if not cfg.dpdk.zero_copy:
            return "dpdk.zero_copy is false"
        if self.multi:
            return ("multi-process mode (an mbuf holds one address for its data, the "
                    "pool is mapped at another in every process)")
        if not self.no_pci:
            return "PCI devices (the pool's rows are not mapped for DMA)"
        return None

    def mbufs(self, nports: int) -> int:
        """Enough mbufs for every descriptor of every queue, the per-lcore caches and a
        burst in flight per process, with room to spare."""
        lcores = self.workers + 1
        n = nports * (self.rx_queues * RXD + self.tx_queues * TXD)
        return n + lcores * (MBUF_CACHE * 3 // 2 + 256) + 2048


def secondary_args(config: Config, geometry: Geometry, worker: int,
                   cpu: int | None) -> list[str]:
    """EAL arguments of forwarding worker `worker` (a secondary, on lcore worker+1)."""
    where = str(cpu) if cpu is not None else "(" + ",".join(
        map(str, sorted(os.sched_getaffinity(0)))) + ")"
    args = ["--proc-type=secondary", "--file-prefix", eal_prefix(geometry),
            f"--lcores={worker + 1}@{where}"]
    if not any(is_pci(p.device or "") for p in config.ports):
        args.append("--no-pci")
    return args + list(config.dpdk.eal_args)


def eal_prefix(geometry: Geometry) -> str:
    """The run's EAL file prefix: unique per run, as the segment names are."""
    return geometry.name.replace("-", "")


def workers_receive(geometry: Geometry) -> bool:
    """Multi-process mode: the workers own pool partitions (they receive)."""
    start, end = geometry.partitions[geometry.worker_agent(0)]
    return end > start


def free_hugepage_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info.get("HugePages_Free", 0)) * int(info.get("Hugepagesize", 0)) // 1024
    except (OSError, ValueError, IndexError):
        return 0


def plan_for(cfg: Config, bufsize: int = 2048) -> DpdkPlan:
    """Decide the mode from the config, the devices and the machine; check that the
    binding builds (a clear error naming the packages when DPDK is not installed)."""
    from engine.io.dpdk._build import DpdkUnavailable

    try:
        build()
    except DpdkUnavailable as err:
        raise DpdkSetupError(f"dpdk ports need the DPDK library: {err}") from None
    d = cfg.dpdk
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    single_only = [(p, why) for p in cfg.ports
                   if (why := single_process_reason(p.device or "")) is not None]
    nports = len(cfg.ports)
    probe = DpdkPlan(MULTI, "", True, cfg.engine.workers, d.eal_args, d.memory_mb, True, cpus)
    need_mb = probe.mbufs(nports) * (bufsize + MBUF_BYTES) // (1 << 20) + 64
    reserved = hugepages_reserved()
    enough = reserved and free_hugepage_mb() >= need_mb
    if d.hugepages == "on" and not enough:
        have = (f"{free_hugepage_mb()} MiB of hugepages free" if reserved
                else "no hugepages are reserved (or no hugetlbfs is mounted)")
        raise DpdkSetupError(
            f"dpdk.hugepages is 'on' but {have}; this deployment needs about {need_mb} MiB. "
            f"Reserve them as root: {HUGEPAGE_COMMAND} (or set dpdk.hugepages = 'off', "
            "single-process mode)")
    huge = d.hugepages == "on" or (d.hugepages == "auto" and enough)
    if d.mode == SINGLE:
        mode, why = SINGLE, "dpdk.mode is 'single-process'"
    elif single_only:
        p, reason = single_only[0]
        mode, why = SINGLE, f"port {p.name}'s device {p.device!r}: its driver {reason}"
        if d.mode == MULTI:  # `fwd check` refuses this already (devices.check_config)
            raise DpdkSetupError(f"dpdk.mode is 'multi-process' but {why}")
    elif not huge:
        if d.mode == MULTI:
            raise DpdkSetupError(
                "dpdk.mode is 'multi-process', which needs hugepages, but "
                + ("dpdk.hugepages is 'off'" if d.hugepages == "off" else
                   f"only {free_hugepage_mb()} MiB are free (about {need_mb} MiB needed)")
                + f". Reserve them as root: {HUGEPAGE_COMMAND}")
        mode, why = SINGLE, "no hugepages (DPDK's multi-process mode needs them)"
    else:
        mode, why = MULTI, "every device serves secondary processes and hugepages are reserved"
    no_pci = not any(is_pci(p.device or "") for p in cfg.ports)
    return DpdkPlan(mode, why, huge, cfg.engine.workers, d.eal_args, d.memory_mb, no_pci, cpus)


# --- this process's EAL and ports ------------------------------------------------------

_eal: Dpdk | None = None
_ports: dict[str, DpdkPort] = {}  # port name -> its ethdev in this process


def _open_eal(args: Sequence[str], *, mbufs: int, dataroom: int) -> Dpdk:
    global _eal
    if _eal is not None or Dpdk._initialised:
        raise DpdkSetupError("DPDK's EAL is already initialised in this process: a process "
                             "runs one engine with dpdk ports (run `fwd run` per engine)")
    _eal = Dpdk(list(args), mbufs=mbufs, mbuf_cache=MBUF_CACHE, dataroom=dataroom)
    return _eal


def _close_eal() -> None:
    global _eal
    _ports.clear()
    if _eal is not None:
        _eal.close()
        _eal = None


class DpdkQueue:
    """One queue of a DPDK port, as a live-port driver (engine/io/ports.py `LivePort`).

    DPDK ports are polled: there is no file descriptor to sleep on, so `fileno` is -1
    and an idle worker sleeps its back-off (engine/workers/loop.py)."""

    def __init__(self, port: DpdkPort, queue: int, buffers: Buffers | None = None):
        self.port = port
        self.queue = queue
        # zero copy: the rows a TX burst sent are the device's (it frees their mbufs
        # back to the pool); the rows it copied are freed to `buffers`
        self.buffers = buffers if port.zc is not None else None
        self.owns_sent = self.buffers is not None

    def rx_burst(self, buffers: Buffers, mem: EngineMemory, port: int,
                 max_frames: int) -> np.ndarray:
        idx = self.port.rx_burst(self.queue, mem, buffers, port, max_frames)
        if len(idx):
            mem.ts[idx] = time.time_ns()  # a live port's clock is the wall clock
        return idx

    def tx_burst(self, mem: EngineMemory, idx: np.ndarray) -> int:
        return self.port.tx_burst(self.queue, mem, idx, self.buffers)

    def fileno(self) -> int:
        return -1

    def wait(self, timeout_s: float) -> bool:
        return False

    def stats(self) -> dict[str, int]:
        return {"rx_oversize": self.port.rx_dropped, "rx_copied": self.port.rx_copied}

    def close(self) -> None:
        """Nothing: the port belongs to the process's EAL (closed with it)."""


def open_queue(port: PortConfig, index: int, mem: EngineMemory, *, receive: bool,
               queue: int | None) -> DpdkQueue:
    """This process's queue on a dpdk port (queue None: the slow path's TX queue, in the
    control process), once the process's EAL has the port."""
    if _eal is None or port.name not in _ports:
        raise DpdkSetupError(f"port {port.name!r}: DPDK is not set up in this process")
    dev = _ports[port.name]
    if queue is None:
        queue = dev.tx_queues - 1
    return DpdkQueue(dev, queue)


class DpdkWorkerPorts(WorkerPorts):
    """A forwarding worker in multi-process mode: a DPDK secondary polling its queue."""

    def __init__(self, config: Config, mem: EngineMemory, worker: int, burst: int,
                 cpu: int | None):
        g = mem.geometry
        eal = _open_eal(secondary_args(config, g, worker, cpu), mbufs=0, dataroom=g.bufsize)
        try:
            for p in config.ports:
                _ports[p.name] = eal.port(p.device or "", config.engine.workers)
            super().__init__(config.ports, mem, worker, burst, open_queue)
        except BaseException:
            _close_eal()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            _close_eal()


class SingleProcessAgent:
    """Single-process mode: the control process receives on every port's one queue,
    spreads by flow over the workers' RX rings, and sends every TX ring.

    With zero copy the whole pass over the workers' rings is one C call
    (`fwd_agent_pass`, engine/io/dpdk/_build.py): the rows given back reclaimed, every
    port received into the RX rings (the room below checked, the Toeplitz hash in C
    with several workers), every TX ring sent, the counters added, for up to
    `AGENT_ROUNDS` rounds while frames move. No Python runs per burst; what DPDK
    could not take stays in its TX ring, which is the port's queue (a worker that
    finds it full counts `ring_full` drops, as a full qdisc). The slow path's
    output (`slowtx.<p>`) goes through `Sender` in Python, on the passes it has any.
    Copying (`dpdk.zero_copy` false) the pass is Python's, burst by burst."""

    def __init__(self, ports: Sequence[DpdkPort], mem: EngineMemory, burst: int):
        g = mem.geometry
        self.mem = mem
        self.burst = burst
        self.nworkers = g.nworkers
        self.queues = [DpdkQueue(p, 0, Buffers(mem, AGENT_IO)) for p in ports]
        nports = len(ports)
        self.rx_rings = [[mem.rings[f"rx.{p}.{w}"] for w in range(g.nworkers)]
                         for p in range(nports)]
        self.tx_rings = [[mem.rings[f"tx.{p}.{w}"] for w in range(g.nworkers)]
                         for p in range(nports)]
        self.slow_rings = [mem.rings[f"slowtx.{p}"] for p in range(nports)]
        self.zero_copy = all(p.zc is not None for p in ports)
        # the C pass sends the workers' rings; Python only the slow path's
        rings = ([[r] for r in self.slow_rings] if self.zero_copy
                 else [tx + [slow]
                       for tx, slow in zip(self.tx_rings, self.slow_rings, strict=True)])
        self.sender = Sender(mem, AGENT_IO, self.queues, rings, burst)
        self.buffers = self.sender.buffers
        self.counters = mem.counters[AGENT_IO]
        self.port_counters = mem.port_counters[AGENT_IO]
        self.flat = mem.data.reshape(-1)  # the pool as one byte array, for the RSS gather
        self._oversize = [0] * nports
        self._pass = AgentPass(ports, mem, burst, self.rx_rings, self.tx_rings,
                               self.buffers) if self.zero_copy else None

    def _room(self, w: int) -> int:
        """Frames worker w may be given so that none of its TX rings can overflow (as
        the pcap driver: one frame in gives at most one frame out)."""
        queued = sum(rings[w].count() for rings in self.rx_rings)
        return (min(rings[w].free_space() for rings in self.tx_rings) - queued
                - self.burst * len(self.queues))

    def receive(self) -> int:
        """The copying pass's RX (the zero-copy pass does it in C)."""
        mem = self.mem
        if mem.ctl[CTL_STOP]:
            # stopping: the workers drain their RX rings and exit, so a frame taken in
            # now would sit in a ring nobody reads, received and never accounted (the
            # device keeps it instead, as the forwarder stops taking input)
            return 0
        got = 0
        for p, q in enumerate(self.queues):
            rings = self.rx_rings[p]
            # what every worker can take, whichever the hash picks: the rest waits in
            # the device's queue (and past its descriptors, the device drops: imissed)
            room = min(min(r.free_space() for r in rings),
                       min(self._room(w) for w in range(self.nworkers)),
                       self.burst * 4, self.buffers.available())
            if room <= 0:
                continue
            idx = q.rx_burst(self.buffers, mem, p, room)
            oversize = q.port.rx_dropped
            if oversize != self._oversize[p]:
                self.port_counters[p, RX_DROPS] += oversize - self._oversize[p]
                self._oversize[p] = oversize
            if not len(idx):
                continue
            lengths = mem.length[idx]
            self.port_counters[p, RX_PACKETS] += len(idx)
            self.port_counters[p, RX_BYTES] += int(lengths.sum())
            self.counters[MISC_BASE + Misc.rx_frames] += len(idx)
            got += len(idx)
            if self.nworkers == 1:
                rings[0].enqueue(idx)
                continue
            offsets = idx.astype(np.int64) * mem.geometry.bufsize
            queue = rss_queues(self.flat, offsets, lengths, self.nworkers)
            for w in range(self.nworkers):
                mine = idx[queue == w]
                if len(mine):
                    rings[w].enqueue(mine)  # room was checked: all of it goes
        return got

    def drain(self) -> int:
        if self._pass is None:
            return self.receive() + self.sender.send()
        moved = self._pass.run(receive=not self.mem.ctl[CTL_STOP])
        if self.sender.pending():
            moved += self.sender.send()
        return moved

    def close(self) -> None:
        self.sender.drop_backlog()
        if self._pass is not None:
            # what the device never took from the workers' TX rings: dropped, counted
            for p, rings in enumerate(self.tx_rings):
                for r in rings:
                    left = r.dequeue(r.size)
                    if len(left):
                        self.port_counters[p, TX_DROPS] += len(left)
                        self.buffers.free(left)


class AgentPass:
    """The C side of SingleProcessAgent's zero-copy pass: a `struct fwd_agent` over the
    engine's rings, counters and pool arrays, built once (every pointer in it stays
    valid as long as this object and the engine's memory live)."""

    def __init__(self, ports: Sequence[DpdkPort], mem: EngineMemory, burst: int,
                 rx_rings: Sequence[Sequence[Ring]], tx_rings: Sequence[Sequence[Ring]],
                 buffers: Buffers):
        zc = ports[0].zc
        assert zc is not None and all(p.zc is zc for p in ports)
        ffi, lib = ports[0].ffi, ports[0].lib
        self.ffi, self.lib = ffi, lib
        self.buffers = buffers
        g = mem.geometry
        nports, nworkers = len(ports), g.nworkers
        keep: list[object] = []  # what the struct points into: alive as long as we are

        def ptr(ctype: str, arr: np.ndarray) -> object:
            c = ffi.from_buffer(ctype, arr, require_writable=True)
            keep.append(c)
            return c

        def ring_array(rings: Sequence[Ring]) -> object:
            arr = ffi.new("struct fwd_ring[]", max(1, len(rings)))
            for i, r in enumerate(rings):
                arr[i].head = ptr("uint64_t[]", r.head)
                arr[i].tail = ptr("uint64_t[]", r.tail)
                arr[i].slots = ptr("uint32_t[]", r.slots)
                arr[i].size = r.size
            keep.append(arr)
            return arr

        a = ffi.new("struct fwd_agent *")
        a.zc = zc.zc
        a.copy_mp = ports[0].dpdk.pool
        a.nports, a.nworkers, a.burst = nports, nworkers, burst
        a.max_rx = burst * 4  # as the copying pass: at most 4 bursts a port a round
        # (the owning cdata kept, not the struct field read back: that owns nothing)
        owned = (ffi.new("uint16_t[]", [p.id for p in ports]),
                 ffi.new("uint64_t *[]", [p._dropped for p in ports]),
                 ffi.new("uint64_t *[]", [p._copied for p in ports]))
        keep += owned
        a.port_id, a.rx_dropped, a.rx_copied = owned
        a.pool_len = ptr("uint32_t[]", mem.length)
        a.pool_port = ptr("uint16_t[]", mem.port)
        a.pool_ts = ptr("int64_t[]", mem.ts)
        a.rx = ring_array([r for rings in rx_rings for r in rings])
        a.tx = ring_array([r for rings in tx_rings for r in rings])
        a.ret = ring_array(buffers.incoming)
        a.nret = len(buffers.incoming)
        counters = mem.port_counters[AGENT_IO]
        assert counters.dtype == np.uint64 and counters.flags.c_contiguous
        a.port_counters = ptr("uint64_t[]", counters)
        a.ncols = counters.shape[1]
        (a.col_rx_packets, a.col_rx_bytes, a.col_tx_packets, a.col_tx_bytes,
         a.col_rx_drops) = RX_PACKETS, RX_BYTES, TX_PACKETS, TX_BYTES, RX_DROPS
        row = mem.counters[AGENT_IO]
        a.rx_frames = ptr("uint64_t[]", row[MISC_BASE + Misc.rx_frames:][:1])
        a.tx_frames = ptr("uint64_t[]", row[MISC_BASE + Misc.tx_frames:][:1])
        self.rss_table = np.ascontiguousarray(toeplitz_tables(DEFAULT_KEY, TUPLE_LEN),
                                              dtype=np.uint32)
        self.reta = (np.arange(RETA_SIZE) % nworkers).astype(np.uint32)
        a.rss_table = ptr("uint32_t[]", self.rss_table)
        a.reta = ptr("uint32_t[]", self.reta)
        a.reta_size = RETA_SIZE
        self.rows = np.zeros(a.max_rx, dtype=np.uint32)
        self.queue = np.zeros(a.max_rx, dtype=np.uint8)
        self.to_free = np.zeros(4 * a.max_rx, dtype=np.uint32)
        a.rows = ptr("uint32_t[]", self.rows)
        a.queue = ptr("uint8_t[]", self.queue)
        a.to_free = ptr("uint32_t[]", self.to_free)
        a.to_free_cap = len(self.to_free)
        self.agent = a
        self._keep = keep

    def run(self, receive: bool) -> int:
        """One pass (up to AGENT_ROUNDS rounds in C); the frames moved."""
        moved = int(self.lib.fwd_agent_pass(self.agent, int(receive), AGENT_ROUNDS))
        if self.agent.nfree:  # rows of other partitions sent as copies: back to them
            self.buffers.free(self.to_free[:self.agent.nfree].copy())
        return moved


class DpdkControl:
    """The control process's DPDK side (the primary): EAL, ports, and its share of I/O
    (multi-process: the slow path's TX queue; single-process: everything)."""

    def __init__(self, cfg: Config, plan: DpdkPlan, mem: EngineMemory, burst: int):
        g = mem.geometry
        self.plan = plan
        self.prefix = eal_prefix(g)
        self.names = [p.name for p in cfg.ports]
        self.closed = False
        self.final: dict[str, dict[str, int]] = {}
        self.io: SenderPorts | SingleProcessAgent | None = None
        self.rows: PoolMbufs | None = None  # zero copy: the I/O partition's mbufs
        self.copy_why = plan.zero_copy_off(cfg)
        try:
            eal = _open_eal(plan.primary_args(self.prefix), mbufs=plan.mbufs(len(cfg.ports)),
                            dataroom=g.bufsize)
        except DpdkError as err:
            self._remove_runtime_files()
            raise DpdkSetupError(f"DPDK: {err}") from None
        try:
            if self.copy_why is None:
                try:
                    self.rows = eal.pool_mbufs(mem, AGENT_IO)
                except DpdkError as err:
                    raise DpdkSetupError(f"DPDK zero copy (dpdk.zero_copy): {err}") from None
            for p in cfg.ports:
                try:
                    _ports[p.name] = eal.port(p.device or "", plan.rx_queues,
                                              tx_queues=plan.tx_queues, mac=p.mac, mtu=p.mtu,
                                              nrxd=RXD, ntxd=TXD, rx_pool=self.rows)
                except DpdkError as err:
                    raise DpdkSetupError(f"port {p.name!r}: {err}") from None
            if plan.multi:
                self.io = SenderPorts(list(cfg.ports), mem, AGENT_IO, burst, open_queue)
            else:
                self.io = SingleProcessAgent([_ports[p.name] for p in cfg.ports], mem, burst)
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        huge = "hugepages" if self.plan.hugepages else "--no-huge"
        copy = "zero copy" if self.copy_why is None else f"copying: {self.copy_why}"
        return (f"DPDK {self.plan.mode} ({self.plan.why}; {huge}; {copy}; "
                f"EAL prefix {self.prefix})")

    @property
    def backlog(self) -> list[np.ndarray]:
        """Buffers this process holds outside the pool's rings and stacks, for a pool
        audit (control/supervisor.py `held_by`): its TX backlogs, and with zero copy the
        rows DPDK has (in the devices' queues, or sent and not yet freed)."""
        held = list(getattr(self.io, "sender", self.io).backlog) if self.io is not None else []
        if self.rows is not None and not self.closed:
            held.append(self.rows.held_rows())
        return [b for b in held if len(b)]

    def drain(self) -> int:
        return self.io.drain() if self.io is not None and not self.closed else 0

    def device_stats(self) -> dict[str, dict[str, int]]:
        """Per port: `rte_eth_stats_get` and the extended statistics (xstats) by name."""
        if self.closed:
            return self.final
        out: dict[str, dict[str, int]] = {}
        for name in self.names:
            dev = _ports.get(name)
            if dev is None:
                continue
            try:
                st = {k: v for k, v in dev.stats().items() if k in DEVICE_STATS}
                st.update({f"x.{k}": v for k, v in dev.xstats().items()})
                if dev.zc is not None:
                    # frames RX copied all the same, and rows DPDK gave back twice
                    # (refused; the pool's, shown on every port): both 0 normally
                    st["zc.rx_copied"] = dev.rx_copied
                    st["zc.bad_puts"] = dev.zc.bad_puts
            except DpdkError:
                continue
            out[name] = st
        return out

    def close(self) -> None:
        if self.closed:
            return
        if self.io is not None:
            self.io.close()  # what could not be sent is dropped and counted
        if _eal is not None:
            self.final = self.device_stats()
        self.closed = True
        _close_eal()
        self._remove_runtime_files()

    def _remove_runtime_files(self) -> None:
        """EAL leaves its runtime directory and (multi-process) hugepage files behind."""
        runtime = "/var/run" if os.geteuid() == 0 else os.environ.get("XDG_RUNTIME_DIR", "/tmp")
        shutil.rmtree(Path(runtime, "dpdk", self.prefix), ignore_errors=True)
        for mount in _hugetlbfs_mounts():
            for f in Path(mount).glob(f"{self.prefix}map_*"):
                f.unlink(missing_ok=True)


def _hugetlbfs_mounts() -> list[str]:
    try:
        with open("/proc/mounts") as f:
            return [line.split()[1] for line in f if line.split()[2] == "hugetlbfs"]
    except (OSError, IndexError):
        return []


def worker_ports(config: Config, mem: EngineMemory, worker: int, burst: int,
                 cpu: int | None) -> DpdkWorkerPorts | None:
    """A worker's DPDK queues (multi-process), or None (single-process: the control
    process fills and empties the worker's rings)."""
    if not workers_receive(mem.geometry):
        return None
    return DpdkWorkerPorts(config, mem, worker, burst, cpu)
