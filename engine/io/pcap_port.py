"""The pcap driver: ports whose wire is a pair of capture files.

Plays the NIC for every pcap port: reads the `rx` capture, spreads its frames over
the workers' RX queues by the Toeplitz hash a NIC computes (so one flow always lands
on one worker), DMAs them into pool buffers, and collects what the workers and the
slow path put on the port's TX queues into the `tx` capture. Replays are lossless:
when a ring or the pool is full the driver waits, as a reader of a file can.

The capture's timestamps are the clock: a frame's buffer carries its capture time,
frames created from it carry the same time, and the output is ordered by (time,
arrival order), which makes the output the same for any number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.config import PortConfig
from engine.counters import MISC_BASE, Drop, Misc, index
from engine.io.afpacket import c_helper  # the drivers' C helper: copies in and out of the pool
from engine.io.pcap import PcapError, PcapFrames, check_writable, read_pcap, write_pcap
from engine.io.rss import rss_queue, rss_tuple, toeplitz_hash
from engine.shm.memory import (
    AGENT_IO,
    PORT_RX_BYTES,
    PORT_RX_DROPS,
    PORT_RX_PACKETS,
    PORT_TX_BYTES,
    PORT_TX_PACKETS,
    EngineMemory,
)
from engine.shm.pool import Buffers


@dataclass
class _Output:
    ts: list[np.ndarray] = field(default_factory=list)
    seq: list[np.ndarray] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    data: list[np.ndarray] = field(default_factory=list)


def gather_frames(src: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows of width max(lengths) holding each frame; `src` must be padded by that width.
    Two fancy-index operations whatever the number of frames."""
    width = int(lengths.max())
    return src[offsets[:, None] + np.arange(width)]


def concat_rows(rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The first lengths[i] bytes of every row, back to back (row-major mask order)."""
    return rows[np.arange(rows.shape[1])[None, :] < lengths[:, None]]


class PcapPorts:
    """The I/O agent for all pcap ports of a deployment."""

    def __init__(self, ports: list[PortConfig], port_ids: list[int], mem: EngineMemory,
                 burst: int):
        g = mem.geometry
        self.mem = mem
        self.burst = burst
        self.nworkers = g.nworkers
        self.buffers = Buffers(mem, AGENT_IO)
        self.counters = mem.counters[AGENT_IO]
        self.port_counters = mem.port_counters[AGENT_IO]
        self.ports = list(zip(port_ids, ports, strict=True))
        self.frames: dict[int, PcapFrames] = {}
        self.src: dict[int, np.ndarray] = {}
        self.pending: dict[tuple[int, int], np.ndarray] = {}
        self.pos: dict[tuple[int, int], int] = {}
        self.seq: dict[int, np.ndarray] = {}
        self.outputs = {p: _Output() for p, _ in self.ports}
        self.written: dict[int, int] = {}  # port: len(outputs[p].lengths) when last written
        self._c = c_helper()  # None without a compiler: numpy copies then
        for _, port in self.ports:  # before the first frame moves, not after the replay
            check_writable(port.tx)
        for p, port in self.ports:
            frames = read_pcap(port.rx)
            self.frames[p] = frames
            self.src[p] = np.concatenate((frames.data, np.zeros(g.bufsize, np.uint8)))
        self._number_arrivals()
        for p, _ in self.ports:
            self._spread(p)

    def _number_arrivals(self) -> None:
        """A global arrival order over all ports: by time, then port, then position."""
        ts = np.concatenate([self.frames[p].ts_ns for p, _ in self.ports] or [np.zeros(0)])
        port = np.concatenate([np.full(len(self.frames[p].ts_ns), p) for p, _ in self.ports]
                              or [np.zeros(0)])
        pos = np.concatenate([np.arange(len(self.frames[p].ts_ns)) for p, _ in self.ports]
                             or [np.zeros(0)])
        order = np.lexsort((pos, port, ts))
        seq = np.empty(len(order), dtype=np.uint64)
        seq[order] = np.arange(len(order), dtype=np.uint64)
        start = 0
        for p, _ in self.ports:
            n = len(self.frames[p].ts_ns)
            self.seq[p] = seq[start : start + n]
            start += n

    def _spread(self, p: int) -> None:
        frames = self.frames[p]
        queue = rss_queue(toeplitz_hash(rss_tuple(frames.data, frames.offsets, frames.lengths)),
                          self.nworkers)
        for w in range(self.nworkers):
            self.pending[p, w] = np.flatnonzero(queue == w)
            self.pos[p, w] = 0

    def feed(self) -> int:
        """Move the next frames of every port into its RX rings; frames moved."""
        mem = self.mem
        moved = 0
        for p, _ in self.ports:
            frames = self.frames[p]
            for w in range(self.nworkers):
                todo = self.pending[p, w]
                start = self.pos[p, w]
                ring = mem.rings[f"rx.{p}.{w}"]
                n = min(len(todo) - start, ring.free_space(), self.burst * 4,
                        self.buffers.available(), self._tx_room(w))
                if n <= 0:
                    continue
                numbers = todo[start : start + n]
                self.pos[p, w] = start + n
                moved += n
                self._count_rx(p, frames.lengths[numbers])
                oversize = frames.lengths[numbers] > mem.geometry.bufsize
                if oversize.any():
                    # a NIC cannot DMA a frame larger than its buffers (rx_length_errors)
                    k = int(oversize.sum())
                    self.port_counters[p, PORT_RX_DROPS] += k
                    self.counters[index(Drop.rx_oversize)] += k
                    self.counters[MISC_BASE + Misc.dropped] += k
                    numbers = numbers[~oversize]
                    if len(numbers) == 0:
                        continue
                idx = self.buffers.alloc(len(numbers))
                lengths = frames.lengths[numbers]
                if self._c is not None:
                    self._copy_in(p, idx, numbers)
                else:
                    mem.data[idx, : int(lengths.max())] = gather_frames(
                        self.src[p], frames.offsets[numbers], lengths)
                    mem.length[idx] = lengths
                    mem.port[idx] = p
                    mem.ts[idx] = frames.ts_ns[numbers]
                mem.seq[idx] = self.seq[p][numbers]
                ring.enqueue(idx)
        return moved

    def _tx_room(self, w: int) -> int:
        """Frames worker w may still be given so that none of its TX rings, nor its
        slow ring, can overflow: the fast path turns one received frame into at most
        one frame to send or one to hand over, so what it holds (queued on its RX
        rings) plus what waits on such a ring must fit in that ring. A file can wait;
        a replay never drops for want of room (the slow ring is emptied by the slow
        path, which a replay waits for as well)."""
        mem = self.mem
        queued = sum(mem.rings[f"rx.{p}.{w}"].count() for p, _ in self.ports)
        out = [mem.rings[f"tx.{p}.{w}"] for p in range(mem.geometry.nports)]
        out.append(mem.rings[f"slow.{w}"])
        in_hand = self.burst * len(self.ports)  # dequeued by the worker, not yet sent
        return min(r.free_space() for r in out) - queued - in_hand

    def _count_rx(self, p: int, lengths: np.ndarray) -> None:
        self.port_counters[p, PORT_RX_PACKETS] += len(lengths)
        self.port_counters[p, PORT_RX_BYTES] += int(lengths.sum())
        self.counters[MISC_BASE + Misc.rx_frames] += len(lengths)

    def drain(self) -> int:
        """Collect every frame queued for transmission on our ports; frames moved."""
        mem = self.mem
        moved = 0
        for p, _ in self.ports:
            rings = [mem.rings[f"tx.{p}.{w}"] for w in range(self.nworkers)]
            rings.append(mem.rings[f"slowtx.{p}"])
            for ring in rings:
                idx = ring.dequeue(ring.size)
                if len(idx) == 0:
                    continue
                lengths = mem.length[idx]
                out = self.outputs[p]
                out.data.append(self._copy_out(idx, lengths))
                out.lengths.append(lengths.copy())
                out.ts.append(mem.ts[idx])
                out.seq.append(mem.seq[idx])
                self.port_counters[p, PORT_TX_PACKETS] += len(idx)
                self.port_counters[p, PORT_TX_BYTES] += int(lengths.sum())
                self.counters[MISC_BASE + Misc.tx_frames] += len(idx)
                self.buffers.free(idx)
                moved += len(idx)
        return moved

    # Copies in and out of the pool: a frame at a time in C (the AF_PACKET driver's
    # helper) when it could be built, else numpy fancy indexing, whose index arrays
    # cost 8 bytes per byte copied. Bursts of 256 into the pool, one core: 60-byte
    # frames 24 M/s in C, 6.2 M/s numpy; 1,514-byte frames 9.5 M/s in C, 0.47 M/s numpy
    # (3.2 M/s a Python loop of memoryview slices).

    def _copy_in(self, p: int, idx: np.ndarray, numbers: np.ndarray) -> None:
        """Frames `numbers` of port p's capture into pool buffers `idx`, with their
        length, port and time (fwd_copy_rows)."""
        ffi, lib, mem = self._c.ffi, self._c.lib, self.mem
        frames = self.frames[p]
        off = np.ascontiguousarray(frames.offsets[numbers], dtype=np.int64)
        length = np.ascontiguousarray(frames.lengths[numbers], dtype=np.uint32)
        ts = np.ascontiguousarray(frames.ts_ns[numbers], dtype=np.int64)
        idx32 = np.ascontiguousarray(idx, dtype=np.uint32)
        lib.fwd_copy_rows(
            ffi.from_buffer("uint8_t[]", self.src[p]), ffi.from_buffer("int64_t[]", off),
            ffi.from_buffer("uint32_t[]", length), ffi.from_buffer("int64_t[]", ts),
            len(idx32), ffi.cast("uint8_t *", mem.data.ctypes.data), mem.geometry.bufsize,
            ffi.from_buffer("uint32_t[]", idx32), ffi.cast("uint32_t *", mem.length.ctypes.data),
            ffi.cast("uint16_t *", mem.port.ctypes.data),
            ffi.cast("int64_t *", mem.ts.ctypes.data), p)

    def _copy_out(self, idx: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The frames in pool buffers `idx`, back to back (fwd_pack_rows)."""
        mem = self.mem
        if self._c is None:
            return concat_rows(mem.data[idx, : int(lengths.max())], lengths)
        ffi = self._c.ffi
        length = np.ascontiguousarray(lengths, dtype=np.uint32)
        idx32 = np.ascontiguousarray(idx, dtype=np.uint32)
        out = np.empty(int(length.sum()), dtype=np.uint8)
        self._c.lib.fwd_pack_rows(
            ffi.cast("uint8_t *", mem.data.ctypes.data), mem.geometry.bufsize,
            ffi.from_buffer("uint32_t[]", idx32), ffi.from_buffer("uint32_t[]", length),
            len(idx32), ffi.from_buffer("uint8_t[]", out))
        return out

    def fed_all(self) -> bool:
        return all(self.pos[k] == len(v) for k, v in self.pending.items())

    def frames_fed(self) -> int:
        return sum(self.pos.values())

    def write(self) -> None:
        """Write each port's `tx` capture in (time, arrival) order. One that cannot be
        written does not keep the others from being written: PcapError, after, naming
        every one that failed. A port whose capture was written with everything it has
        collected is not written again (a kept engine's stop)."""
        failed: list[str] = []
        for p, port in self.ports:
            out = self.outputs[p]
            if self.written.get(p) == len(out.lengths):
                continue
            if out.lengths:
                lengths = np.concatenate(out.lengths)
                data = np.concatenate(out.data)
                ts = np.concatenate(out.ts)
                seq = np.concatenate(out.seq)
            else:
                lengths = np.zeros(0, np.uint32)
                data = np.zeros(0, np.uint8)
                ts = np.zeros(0, np.int64)
                seq = np.zeros(0, np.uint64)
            # one array each from now on: a later write concatenates only what came since
            out.lengths, out.data, out.ts, out.seq = [lengths], [data], [ts], [seq]
            offsets = np.zeros(len(lengths), dtype=np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])
            order = np.lexsort((seq, ts))
            try:  # the frames stay where they are: the writer reads them in this order
                write_pcap(port.tx, data, offsets[order], lengths[order], ts[order])
                self.written[p] = len(out.lengths)
            except PcapError as err:
                failed.append(str(err))
        if failed:
            raise PcapError("; ".join(failed))
