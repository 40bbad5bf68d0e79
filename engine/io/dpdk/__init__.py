"""The project's own binding to the system DPDK (Debian 22.11): EAL, ports, bursts.

Whole bursts move in C (`_build.SOURCE`): RX copies each mbuf into a row of the
engine's shared-memory buffer pool and frees the mbuf; TX copies rows into fresh
mbufs, sends them and frees what the device did not take. Python handles arrays of
buffer indices, never packets one by one.

Zero copy (`Dpdk.pool_mbufs`, `DpdkPort(rx_pool=...)`): the RX queues take their
mbufs from a mempool whose buffers are one agent's partition of the engine's pool,
row i being the data of mbuf i, and whose free list is that partition's free stack
(a mempool driver over it). RX then hands over row numbers and TX sends the rows'
own mbufs: no byte is copied either way, and a row is free in one place only.

Importing this package never needs DPDK; the compiled module is built (into a
per-user cache, see `_build.cache_root`) the first time `Dpdk` is used, or ahead of
time with `python -m engine.io.dpdk build`. Without the DPDK development files that
raises `DpdkUnavailable`, naming the Debian packages to install.

EAL can be initialised once per process. Without reserved hugepages use
`no_huge_args()` (`--no-huge -m 1024 --no-pci --no-shconf`); DPDK's multi-process
mode (a primary plus secondaries attaching with `--proc-type=secondary
--file-prefix X`) needs hugepages, reserved as root with:

    echo 512 > /proc/sys/vm/nr_hugepages
    mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.io.dpdk._build import MISSING_HINT, DpdkUnavailable, build, cache_root, load

if TYPE_CHECKING:
    from engine.shm.memory import EngineMemory
    from engine.shm.pool import Buffers

__all__ = ["Dpdk", "DpdkError", "DpdkPort", "DpdkUnavailable", "MISSING_HINT", "PoolMbufs",
           "build", "cache_root", "hugepages_reserved", "no_huge_args"]

STATS_FIELDS = ("ipackets", "opackets", "ibytes", "obytes", "imissed", "ierrors", "oerrors",
                "rx_nombuf")


class DpdkError(RuntimeError):
    """A DPDK call failed; the message names the call, the device and DPDK's reason."""


def no_huge_args(memory_mb: int = 1024) -> list[str]:
    """EAL arguments for a machine without hugepages (single process only). Not
    `--in-memory`: it conflicts with `--no-huge`'s legacy memory mode."""
    return ["--no-huge", "-m", str(memory_mb), "--no-pci", "--no-shconf"]


def hugepages_reserved() -> bool:
    """True when free hugepages exist and a hugetlbfs is mounted."""
    try:
        with open("/proc/meminfo") as f:
            free = next((int(line.split()[1]) for line in f
                         if line.startswith("HugePages_Free:")), 0)
        with open("/proc/mounts") as f:
            mounted = any(line.split()[2] == "hugetlbfs" for line in f)
    except OSError:
        return False
    return free > 0 and mounted


def parse_mac(mac: str | bytes) -> bytes:
    if isinstance(mac, bytes):
        raw = mac
    else:
        raw = bytes(int(x, 16) for x in mac.split(":"))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return raw


def _check_rows(idx: np.ndarray, data: np.ndarray) -> None:
    # the C side indexes the pool with these: one bad index would scribble on (or leak)
    # shared memory, so check them once per burst (a max over the burst is cheap)
    if len(idx) and int(idx.max()) >= data.shape[0]:
        raise IndexError(f"buffer index {int(idx.max())} outside a pool of {data.shape[0]}")


class Dpdk:
    """The EAL of this process plus one mbuf pool for transmission (and RX rings).

    `args` are EAL arguments without the program name, e.g. `["-l", "0",
    "--vdev", "net_null0", *no_huge_args()]`. A secondary process (`--proc-type=
    secondary`) looks the primary's mbuf pool up by name instead of creating it; it must
    run on its own lcore id (`--lcores N@CPU`), because the mempool keeps its per-lcore
    caches in shared memory. `dataroom` must be at least the engine's buffer size, so
    that every pool row fits one mbuf.
    """

    _initialised = False  # EAL allows one rte_eal_init per process

    def __init__(self, args: Sequence[str] = (), *, mbufs: int = 8191, mbuf_cache: int = 256,
                 dataroom: int = 2048, pool_name: str = "fwd_mbufs"):
        self._mod = load()
        self.ffi = self._mod.ffi
        self.lib = self._mod.lib
        if Dpdk._initialised:
            raise DpdkError("the EAL is already initialised in this process (DPDK allows "
                            "it once per process: use one Dpdk object, or a subprocess)")
        argv = ["fwd", *args]
        # the strings must outlive rte_eal_init: EAL keeps pointers into them
        self._argv_keep = [self.ffi.new("char[]", a.encode()) for a in argv]
        self._argv = self.ffi.new("char *[]", self._argv_keep + [self.ffi.NULL])
        ret = self.lib.fwd_eal_init(len(argv), self._argv)
        if ret < 0:
            raise DpdkError(f"rte_eal_init({' '.join(argv[1:])}) failed: {self._err()}")
        Dpdk._initialised = True
        self.args = list(args)
        self.dataroom = dataroom
        self.secondary = self.lib.rte_eal_process_type() == self.lib.RTE_PROC_SECONDARY
        name = pool_name.encode()
        if self.secondary:
            self.pool = self.lib.rte_mempool_lookup(name)
        else:
            self.pool = self.lib.fwd_pool_create(name, mbufs, mbuf_cache, dataroom, -1)
        if self.pool == self.ffi.NULL:
            raise DpdkError(f"mbuf pool {pool_name!r} ({mbufs} mbufs of {dataroom} bytes) "
                            f"could not be {'found' if self.secondary else 'created'}: "
                            f"{self._err()}")
        self.ports: list[DpdkPort] = []
        self.closed = False

    def _err(self, code: int | None = None) -> str:
        if code is None:
            code = self.lib.fwd_errno()
        code = abs(code)
        return f"{self.ffi.string(self.lib.rte_strerror(code)).decode()} (errno {code})"

    @property
    def version(self) -> str:
        return self.ffi.string(self.lib.rte_version()).decode()

    def port_id(self, device: str) -> int:
        """The port of a device: a PCI address or vdev name known to EAL, or a vdev string
        (`net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`) attached now if EAL lacks it."""
        name = device.split(",", 1)[0].strip()
        if not name:
            raise DpdkError(f"bad DPDK device string {device!r}: no device name")
        pid = self.ffi.new("uint16_t *")
        if self.lib.rte_eth_dev_get_port_by_name(name.encode(), pid) == 0:
            return int(pid[0])
        if self.secondary:
            raise DpdkError(f"DPDK device {name!r} is not known to the primary process")
        ret = self.lib.rte_dev_probe(device.encode())
        if ret < 0:
            raise DpdkError(f"cannot attach DPDK device {device!r}: {self._err(ret)}")
        if self.lib.rte_eth_dev_get_port_by_name(name.encode(), pid) != 0:
            raise DpdkError(f"DPDK device {device!r} attached but has no ethdev named "
                            f"{name!r}")
        return int(pid[0])

    def port(self, device: str, nqueues: int = 1, *, tx_queues: int | None = None,
             mac: str | bytes | None = None, mtu: int | None = None, nrxd: int = 1024,
             ntxd: int = 1024, promiscuous: bool = True, rx_offloads: int = 0,
             rx_pool: PoolMbufs | None = None) -> DpdkPort:
        """Configure and start a port (primary), or attach to a started one (secondary).
        `nqueues` RX queues and `tx_queues` (default: as many) TX queues. With
        `rx_pool` (see `pool_mbufs`) its RX queues receive straight into pool rows."""
        p = DpdkPort(self, device, nqueues, tx_queues=tx_queues, mac=mac, mtu=mtu, nrxd=nrxd,
                     ntxd=ntxd, promiscuous=promiscuous, rx_offloads=rx_offloads,
                     rx_pool=rx_pool)
        self.ports.append(p)
        return p

    def pool_mbufs(self, mem: EngineMemory, agent: int, name: str = "fwd_rows") -> PoolMbufs:
        """Agent `agent`'s partition of the engine's pool as a mempool of mbufs, for
        zero-copy RX and TX (see `PoolMbufs`). Only one process may use it: the agent's
        own (the stack it allocates from has a single writer)."""
        if self.secondary:
            raise DpdkError("the pool's mbufs are private to one process: not in a secondary")
        return PoolMbufs(self, mem, agent, name)

    def pool_available(self) -> int:
        return int(self.lib.rte_mempool_avail_count(self.pool))

    def close(self) -> None:
        """Stop and close our ports, then release the EAL (it cannot be re-initialised)."""
        if self.closed:
            return
        for p in self.ports:
            p.close()
        self.lib.rte_eal_cleanup()
        self.closed = True

    def __enter__(self) -> Dpdk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PoolMbufs:
    """One agent's partition of the engine's pool as DPDK mbufs: row r's data room is
    row r (from its byte 0, up to `max_frame` bytes), and DPDK's free list for them is
    the partition's free stack, so a row is free in exactly one place whoever frees it.

    `held` marks the rows DPDK has now (in a device's queues, or sent and not yet
    freed by the device): they are in no ring and on no stack, so a pool audit asks
    `held_rows()`. A row given back to the stack by DPDK that it did not have (a double
    free) is refused and counted in `bad_puts`."""

    def __init__(self, dpdk: Dpdk, mem: EngineMemory, agent: int, name: str):
        from engine.shm.memory import MBUF_HEADROOM, ST_FREE

        ffi, lib = dpdk.ffi, dpdk.lib
        if lib.FWD_MBUF_HEADROOM != MBUF_HEADROOM:
            raise DpdkError(f"this DPDK keeps {lib.FWD_MBUF_HEADROOM} bytes of mbuf headroom, "
                            f"the engine's pool layout {MBUF_HEADROOM}: no zero copy")
        g = mem.geometry
        start, end = g.partitions[agent]
        self.dpdk = dpdk
        self.mem = mem
        self.agent = agent
        self.first, self.nrows = start, end - start
        self.max_frame = g.bufsize - MBUF_HEADROOM
        self.held = np.zeros(self.nrows, dtype=np.uint8)
        # the C side keeps these pointers: the arrays must outlive it (they are ours,
        # and mem's views are kept by mem)
        self._keep = (ffi.from_buffer("uint8_t[]", mem.data, require_writable=True),
                      ffi.from_buffer("uint32_t[]", mem.free_stack[start:end],
                                      require_writable=True),
                      ffi.from_buffer("uint64_t[]", mem.state[agent, ST_FREE:ST_FREE + 1],
                                      require_writable=True),
                      ffi.from_buffer("uint8_t[]", self.held, require_writable=True))
        base, stack, depth, held = self._keep
        self.zc = lib.fwd_zc_create(name.encode(), base, g.bufsize, start, self.nrows, stack,
                                    depth, held, -1)
        if self.zc == ffi.NULL:
            raise DpdkError(f"mempool over the pool's rows {start}..{end - 1} could not be "
                            f"created: {dpdk._err()}")
        self.mempool = lib.fwd_zc_mempool(self.zc)

    def held_rows(self) -> np.ndarray:
        """Rows DPDK has now (absolute row numbers)."""
        return (self.first + np.flatnonzero(self.held)).astype(np.uint32)

    @property
    def bad_puts(self) -> int:
        return int(self.dpdk.lib.fwd_zc_bad_puts(self.zc))


class DpdkPort:
    """One ethdev with `nqueues` RX/TX queue pairs (plus TX queues up to `tx_queues`);
    queue q belongs to worker q."""

    def __init__(self, dpdk: Dpdk, device: str, nqueues: int = 1, *,
                 tx_queues: int | None = None, mac: str | bytes | None = None,
                 mtu: int | None = None, nrxd: int = 1024,
                 ntxd: int = 1024, promiscuous: bool = True, rx_offloads: int = 0,
                 rx_pool: PoolMbufs | None = None):
        self.dpdk = dpdk
        self.zc = rx_pool
        ffi, lib = dpdk.ffi, dpdk.lib
        self.ffi, self.lib = ffi, lib
        self.device = device
        self.name = device.split(",", 1)[0]
        self.id = dpdk.port_id(device)
        self.nqueues = nqueues
        self.tx_queues = nqueues if tx_queues is None else tx_queues
        # 68: IPv4's minimum MTU (RFC 791); not every PMD enforces a lower bound itself
        if (not 0 < nqueues <= 0xFFFF or not 0 < self.tx_queues <= 0xFFFF
                or (mtu is not None and not 68 <= mtu <= 0xFFFF)):
            raise DpdkError(f"DPDK device {self.name!r}: {nqueues} queue pair(s), MTU {mtu} "
                            "out of range")
        info = ffi.new("struct fwd_port_info *")
        if dpdk.secondary:
            ret = lib.fwd_port_info(self.id, info)
            what = "rte_eth_dev_info_get"
        else:
            mac_c = ffi.new("uint8_t[6]", parse_mac(mac)) if mac is not None else ffi.NULL
            pool = rx_pool.mempool if rx_pool is not None else dpdk.pool
            ret = lib.fwd_port_setup(self.id, nqueues, self.tx_queues, nrxd, ntxd, pool,
                                     mac_c, mtu or 0,
                                     lib.FWD_RSS_IPV4, rx_offloads, int(promiscuous), info)
            what = "port setup (configure, queue setup, start)"
        if ret != 0:
            raise DpdkError(f"{what} of DPDK device {self.name!r} with {nqueues} queue "
                            f"pair(s){f', MTU {mtu}' if mtu else ''} failed: {dpdk._err(ret)}")
        self.info = info
        self.mac = bytes(info.mac)
        self.mtu = int(info.mtu)
        self.mac_set = int(info.mac_set)
        self.rss_hf = int(info.rss_hf)
        self.driver = ffi.string(info.driver_name).decode()
        self.max_queues = min(int(info.max_rx_queues), int(info.max_tx_queues))
        self._dropped = ffi.new("uint64_t *")
        self._copied = ffi.new("uint64_t *")  # zero copy: frames RX had to copy anyway
        self._rows = np.zeros(0, dtype=np.uint32)  # zero copy: RX rows, TX rows to free
        self._nfree = ffi.new("uint32_t *")
        self._pool_arr: np.ndarray | None = None
        self._pool_ptr: Any = None
        self._len = np.zeros(0, dtype=np.uint32)
        self._mem_arrays: tuple[np.ndarray, tuple[Any, Any, Any]] | None = None
        self._started = not dpdk.secondary
        self.closed = False

    def _pool(self, data: np.ndarray) -> Any:
        # cache the pointer: from_buffer on every burst would cost more than the copy
        if self._pool_arr is not data:
            if data.dtype != np.uint8 or data.ndim != 2 or not data.flags.c_contiguous:
                raise ValueError("the pool must be a C-contiguous (nbufs, bufsize) uint8 array")
            self._pool_ptr = self.ffi.from_buffer("uint8_t[]", data, require_writable=True)
            self._pool_arr = data
        return self._pool_ptr

    @property
    def rx_dropped(self) -> int:
        """Frames received but dropped because they did not fit a pool buffer."""
        return int(self._dropped[0])

    def rx_burst(self, queue: int, mem: EngineMemory, buffers: Buffers, port_index: int,
                 max_frames: int) -> np.ndarray:
        """Receive up to `max_frames` frames from `queue` into buffers allocated from
        `buffers` (an engine `Buffers`); sets `mem.length` and `mem.port` of each and
        returns their indices in arrival order. Unused buffers go straight back.

        Zero copy (`rx_pool`): the frames are in the rows of the mbufs the device
        filled, taken from `buffers`' stack by the device itself; nothing is copied."""
        if self.zc is not None:
            if buffers.agent != self.zc.agent:
                raise ValueError(f"rows of agent {self.zc.agent}'s partition, not "
                                 f"{buffers.agent}'s")
            rows = self._row_space(max_frames)
            _, length, port = self._pool_arrays(mem)
            got = self.lib.fwd_rx_burst_zc(self.id, queue, self.zc.zc, length, port,
                                           port_index, self.ffi.from_buffer("uint32_t[]", rows),
                                           max_frames, self._dropped, self._copied)
            return rows[:got].copy()
        idx = buffers.alloc(max_frames)
        if len(idx) == 0:
            return idx
        data, length, port = self._pool_arrays(mem)
        got = self.lib.fwd_rx_burst_pool(self.id, queue, data, mem.data.shape[1], length, port,
                                         port_index, self.ffi.from_buffer("uint32_t[]", idx),
                                         len(idx), self._dropped)
        if got < len(idx):
            buffers.free(idx[got:])
        return idx[:got]

    def _row_space(self, n: int) -> np.ndarray:
        if len(self._rows) < n:
            self._rows = np.zeros(max(n, 256), dtype=np.uint32)
        return self._rows

    @property
    def rx_copied(self) -> int:
        """Zero copy: frames that RX copied all the same (not whole in one of our mbufs)."""
        return int(self._copied[0])

    def _pool_arrays(self, mem: EngineMemory) -> tuple[Any, Any, Any]:
        """C pointers to mem.data, mem.length and mem.port, made once per pool: the C
        side writes lengths and ports itself, sparing two numpy scatters per burst."""
        if self._mem_arrays is None or self._mem_arrays[0] is not mem.data:
            if mem.length.dtype != np.uint32 or mem.port.dtype != np.uint16:
                raise ValueError("mem.length must be uint32 and mem.port uint16")
            ptrs = (self._pool(mem.data), self.ffi.from_buffer("uint32_t[]", mem.length),
                    self.ffi.from_buffer("uint16_t[]", mem.port))
            self._mem_arrays = (mem.data, ptrs)
        return self._mem_arrays[1]

    def rx_into(self, queue: int, data: np.ndarray, idx: np.ndarray, length: np.ndarray,
                port: np.ndarray | None, port_index: int, release: Any = None) -> np.ndarray:
        """rx_burst over bare arrays: fill rows `idx` of `data`; `release` gets the rows
        left unused."""
        idx = np.ascontiguousarray(idx, dtype=np.uint32)
        n = len(idx)
        _check_rows(idx, data)
        if len(self._len) < n:
            self._len = np.zeros(n, dtype=np.uint32)
        got = self.lib.fwd_rx_burst(self.id, queue, self._pool(data), data.shape[1],
                                    self.ffi.from_buffer("uint32_t[]", idx),
                                    self.ffi.from_buffer("uint32_t[]", self._len), n,
                                    self._dropped)
        filled = idx[:got]
        if got:
            length[filled] = self._len[:got]
            if port is not None:
                port[filled] = port_index
        if release is not None and got < n:
            release(idx[got:])
        return filled

    def tx_burst(self, queue: int, mem: EngineMemory, idx: np.ndarray,
                 buffers: Buffers | None = None) -> int:
        """Send buffers `idx` (lengths from `mem.length`) on `queue`; how many went, in
        order. The rows are copied, so the caller frees all of `idx` afterwards and
        counts the rest as TX drops.

        Zero copy (`rx_pool`, and `buffers` given): the rows that went are no longer
        the caller's. Rows of the pool's partition went as their own mbufs (the device
        gives them back to the stack when done); the others (the slow path's) were
        copied, and are freed here to `buffers`. The rows that did not go stay the
        caller's, as without zero copy."""
        n = len(idx)
        if n == 0:
            return 0
        if idx.dtype != np.uint32 or not idx.flags.c_contiguous:
            idx = np.ascontiguousarray(idx, dtype=np.uint32)
        _check_rows(idx, mem.data)
        data, length, _ = self._pool_arrays(mem)
        if self.zc is not None and buffers is not None:
            to_free = self._row_space(n)
            sent = self.lib.fwd_tx_burst_zc(self.id, queue, self.zc.zc, self.dpdk.pool, length,
                                            self.ffi.from_buffer("uint32_t[]", idx), n,
                                            self.ffi.from_buffer("uint32_t[]", to_free),
                                            self._nfree)
            if self._nfree[0]:
                buffers.free(to_free[:self._nfree[0]].copy())
            return int(sent)
        sent = self.lib.fwd_tx_burst_pool(self.id, queue, self.dpdk.pool, data,
                                          mem.data.shape[1], length,
                                          self.ffi.from_buffer("uint32_t[]", idx), n)
        # < 0: the mbuf pool is exhausted; nothing went, as with a full TX queue
        return max(int(sent), 0)

    def tx_from(self, queue: int, data: np.ndarray, idx: np.ndarray,
                lengths: np.ndarray) -> int:
        n = len(idx)
        if n == 0:
            return 0
        idx = np.ascontiguousarray(idx, dtype=np.uint32)
        lengths = np.ascontiguousarray(lengths, dtype=np.uint32)
        _check_rows(idx, data)
        if len(lengths) != n:
            raise ValueError(f"{n} buffers but {len(lengths)} lengths")
        sent = self.lib.fwd_tx_burst(self.id, queue, self.dpdk.pool, self._pool(data),
                                     data.shape[1], self.ffi.from_buffer("uint32_t[]", idx),
                                     self.ffi.from_buffer("uint32_t[]", lengths), n)
        if sent < 0:
            # mbuf pool exhausted: nothing went, as a full TX queue would
            return 0
        return int(sent)

    def stats(self) -> dict[str, int]:
        """`rte_eth_stats_get`: ipackets, opackets, ibytes, obytes, imissed, ierrors,
        oerrors, rx_nombuf, plus rx_oversize counted by this binding."""
        st = self.ffi.new("struct rte_eth_stats *")
        ret = self.lib.rte_eth_stats_get(self.id, st)
        if ret != 0:
            raise DpdkError(f"rte_eth_stats_get({self.name}) failed: {self.dpdk._err(ret)}")
        out = {f: int(getattr(st, f)) for f in STATS_FIELDS}
        out["rx_oversize"] = self.rx_dropped
        return out

    def xstats(self) -> dict[str, int]:
        """Extended statistics by name (`rte_eth_xstats_get_names` / `_get`)."""
        n = self.lib.rte_eth_xstats_get_names(self.id, self.ffi.NULL, 0)
        if n < 0:
            raise DpdkError(f"rte_eth_xstats_get_names({self.name}) failed: "
                            f"{self.dpdk._err(n)}")
        if n == 0:
            return {}
        names = self.ffi.new("struct rte_eth_xstat_name[]", n)
        values = self.ffi.new("struct rte_eth_xstat[]", n)
        got_names = self.lib.rte_eth_xstats_get_names(self.id, names, n)
        got = self.lib.rte_eth_xstats_get(self.id, values, n)
        if got < 0 or got_names < 0:
            raise DpdkError(f"rte_eth_xstats_get({self.name}) failed")
        count = min(got, got_names, n)
        return {self.ffi.string(names[values[i].id].name).decode(): int(values[i].value)
                for i in range(count)}

    def close(self) -> None:
        """Stop and close the device (primary only: secondaries leave it to the primary)."""
        if self.closed:
            return
        self.closed = True
        self._pool_ptr = None
        self._pool_arr = None
        self._mem_arrays = None
        self.zc = None
        if self._started:
            self.lib.rte_eth_dev_stop(self.id)
            self.lib.rte_eth_dev_close(self.id)

