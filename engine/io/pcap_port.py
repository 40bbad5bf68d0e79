"""The pcap driver: ports whose wire is a pair of capture files.

Plays the NIC for every pcap port: reads the `rx` capture a chunk at a time, spreads
its frames over the workers' RX queues by the Toeplitz hash a NIC computes (so one
flow always lands on one worker), DMAs them into pool buffers, and collects what the
workers and the slow path put on the port's TX queues into the `tx` capture, written
as the replay goes. Replays are lossless: when a ring or the pool is full the driver
waits, as a reader of a file can. Memory is bounded by the pool, the rings, a few
chunks of read-ahead per port and the output not yet in order, whatever the
capture's size.

The capture's timestamps are the clock. It never goes back: a frame stamped earlier
than one before it on its port is taken at the clock's time (`late` counts them). A
frame's buffer carries its capture time and its arrival number (`seq`: by time, then
port, then position, over every port), frames created from it carry the same, and
each output is ordered by (time, arrival) — the same output for any number of
workers.

Writing in that order as the replay goes: a frame can be written once nothing older
can still come out of the engine. What can is (a) a frame in flight, whose buffer
carries its time (a free buffer's `ts` is FREE_TS, engine/shm/memory.py), so the
pool's smallest (ts, seq) bounds it; (b) a frame not yet fed; (c) what the slow
path's timers send, stamped with their due time, which it publishes (ST_NEXT_TIMER).
The smallest of the three is the watermark; output below it is written. The slow
path runs its timers as the capture clock passes them (CTL_REPLAY_CLOCK, the oldest
frame still in flight or unread), so the watermark follows the replay.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.config import PortConfig
from engine.counters import MISC_BASE, Drop, Misc, index
from engine.io.afpacket import c_helper  # the drivers' C helper: copies in and out of the pool
from engine.io.pcap import (
    READ_CHUNK,
    RECORD_HEADER,
    PcapError,
    PcapFileWriter,
    PcapFrames,
    PcapReader,
    cannot_write,
    check_writable,
    gather_records,
    rows_to_records,
)
from engine.io.rss import rss_queues
from engine.shm.memory import (
    AGENT_IO,
    CTL_END_CLOCK,
    CTL_REPLAY_CLOCK,
    CTL_UNFED_SEQ,
    FREE_TS,
    PORT_RX_BYTES,
    PORT_RX_DROPS,
    PORT_RX_PACKETS,
    PORT_TX_BYTES,
    PORT_TX_PACKETS,
    ST_NEXT_TIMER,
    EngineMemory,
)
from engine.shm.pool import Buffers
from engine.shm.ring import Ring

CHUNK_BYTES = READ_CHUNK  # bytes read from a capture at a time
READ_AHEAD_FRAMES = 1 << 17  # a port reads on while fewer of its frames wait to be fed
MAX_CHUNKS = 4  # ... and while it holds fewer chunks
WRITE_FRAMES = 1 << 16  # output frames held before the watermark is looked at again
WRITE_BYTES = 16 << 20  # ... or bytes collected since it was last looked at
FEED_MAX = 2048  # frames given to one RX ring in a pass (half a ring: the worker takes on)
NO_KEY = (FREE_TS, 0)


@dataclass(eq=False)
class _Chunk:
    """A chunk of one port's capture: its frames, their arrival numbers as they are
    given, and each worker's frames (by RSS) with how many of them were fed."""

    frames: PcapFrames
    seq: np.ndarray
    by_worker: list[np.ndarray]
    numbered: int = 0  # frames [0, numbered) have their arrival number
    fed: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    def unfed(self) -> int:
        return len(self) - sum(self.fed)

    def feedable(self, w: int) -> np.ndarray:
        """Worker w's next frames (positions in the chunk) that have their number."""
        mine = self.by_worker[w]
        end = int(np.searchsorted(mine, self.numbered))
        return mine[self.fed[w] : end]


@dataclass(eq=False)
class _Input:
    """One port's `rx` capture as it is read."""

    reader: PcapReader
    chunks: deque[_Chunk] = field(default_factory=deque)
    clock: int = -1  # the latest capture time read (ns); -1 before the first frame
    eof: bool = False
    late: int = 0  # frames stamped earlier than a frame before them


@dataclass(eq=False)
class _Output:
    """One port's `tx` capture: the writer, and what waits for the watermark, as
    pcap records already (blocks of records back to back, each record's start)."""

    writer: PcapFileWriter | None
    name: str
    blocks: list[np.ndarray] = field(default_factory=list)
    starts: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    seq: list[np.ndarray] = field(default_factory=list)
    held: int = 0  # frames waiting
    failed: str | None = None  # why it cannot be written (then nothing more is)

    def clear(self) -> None:
        self.blocks, self.starts, self.ts, self.seq, self.held = [], [], [], [], 0


def gather_frames(src: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows of width max(lengths) holding each frame; `src` must be padded by that width.
    Two fancy-index operations whatever the number of frames."""
    width = int(lengths.max())
    return src[offsets[:, None] + np.arange(width)]


class PcapPorts:
    """The I/O agent for all pcap ports of a deployment."""

    def __init__(self, ports: list[PortConfig], port_ids: list[int], mem: EngineMemory,
                 burst: int):
        g = mem.geometry
        self.mem = mem
        self.burst = burst
        self.nworkers = g.nworkers
        self.slow_agent = g.slowpath_agent
        self.buffers = Buffers(mem, AGENT_IO)
        self.counters = mem.counters[AGENT_IO]
        self.port_counters = mem.port_counters[AGENT_IO]
        self.ports = list(zip(port_ids, ports, strict=True))
        self._c = c_helper()  # None without a compiler: numpy copies then
        self.next_seq = 0
        self.fed = 0
        self.write_at = WRITE_FRAMES  # output frames held when the watermark is looked at
        self.collected = 0  # bytes collected since
        self.inputs: dict[int, _Input] = {}
        self.outputs: dict[int, _Output] = {}
        self.names = {p: port.name for p, port in self.ports}
        self.read_high: dict[int, int] = {p: 0 for p in port_ids}  # bytes of chunks held
        self.held_high: dict[int, int] = {p: 0 for p in port_ids}  # output frames held
        for _, port in self.ports:  # before the first frame moves, not after the replay
            check_writable(port.tx)
        try:
            for p, port in self.ports:
                # the padding lets numpy copy rows of a buffer's width (gather_frames)
                self.inputs[p] = _Input(PcapReader(port.rx, chunk_bytes=CHUNK_BYTES,
                                                   pad=g.bufsize))
            for p, port in self.ports:
                try:
                    writer = PcapFileWriter(port.tx)
                except OSError as e:
                    raise cannot_write(port.tx, e) from None
                self.outputs[p] = _Output(writer, port.tx)
        except PcapError:
            self.close()
            raise
        self._read_ahead()
        self._publish_unfed()

    # ------------------------------------------------------------------ reading

    def _read_ahead(self) -> None:
        """Read chunks for the ports running low, and number what can be numbered."""
        while True:
            read = False
            for p, inp in self.inputs.items():
                waiting = sum(c.unfed() for c in inp.chunks)
                if not inp.eof and waiting < READ_AHEAD_FRAMES and len(inp.chunks) < MAX_CHUNKS:
                    self._read(p, inp)
                    read = True
            numbered = self._number()
            if not (read or numbered):
                return

    def _read(self, p: int, inp: _Input) -> None:
        frames = inp.reader.read()
        if frames is None:
            inp.eof = True
            return
        n = len(frames)
        # the clock never goes back (module docstring)
        ts = np.maximum.accumulate(frames.ts_ns)
        if inp.clock > ts[0]:
            np.maximum(ts, inp.clock, out=ts)
        inp.late += int(np.count_nonzero(ts != frames.ts_ns))
        frames.ts_ns = ts
        inp.clock = int(ts[-1])
        end = int(self.mem.ctl[CTL_END_CLOCK])
        self.mem.ctl[CTL_END_CLOCK] = max(end, inp.clock)  # where the slow path's clock stops
        if self.nworkers == 1:
            by_worker = [np.arange(n)]
        else:
            queue = rss_queues(frames.data, frames.offsets, frames.lengths, self.nworkers)
            by_worker = [np.flatnonzero(queue == w) for w in range(self.nworkers)]
        inp.chunks.append(_Chunk(frames, np.empty(n, dtype=np.uint64), by_worker,
                                 fed=[0] * self.nworkers))
        self.read_high[p] = max(self.read_high[p],
                                sum(len(c.frames.data) for c in inp.chunks))

    def _number(self) -> bool:
        """Give arrival numbers to the frames no later frame can come before: by (time,
        port, position), up to the smallest (clock, port) of the ports still being read
        (their next frames come no earlier). Returns whether any got one."""
        bound = min(((inp.clock, p) for p, inp in self.inputs.items() if not inp.eof),
                    default=None)
        taken: list[tuple[_Chunk, int, int]] = []  # chunk, first, end
        keys = []
        for p, inp in self.inputs.items():
            for chunk in inp.chunks:
                if chunk.numbered == len(chunk):
                    continue
                ts = chunk.frames.ts_ns[chunk.numbered :]
                if bound is None:
                    k = len(ts)
                else:  # (ts, p) <= bound
                    k = int(np.searchsorted(ts, bound[0], side="right" if p <= bound[1]
                                            else "left"))
                if k:
                    taken.append((chunk, chunk.numbered, chunk.numbered + k))
                    keys.append((ts[:k], np.full(k, p)))
                if k < len(ts):
                    break  # the port's later frames are later still
        if not taken:
            return False
        if len(taken) == 1:
            chunk, first, end = taken[0]
            chunk.seq[first:end] = self.next_seq + np.arange(end - first, dtype=np.uint64)
        else:
            ts = np.concatenate([t for t, _ in keys])
            port = np.concatenate([q for _, q in keys])
            order = np.lexsort((np.arange(len(ts)), port, ts))
            seq = np.empty(len(ts), dtype=np.uint64)
            seq[order] = self.next_seq + np.arange(len(ts), dtype=np.uint64)
            start = 0
            for chunk, first, end in taken:
                chunk.seq[first:end] = seq[start : start + end - first]
                start += end - first
        for chunk, _, end in taken:
            chunk.numbered = end
        self.next_seq += sum(end - first for _, first, end in taken)
        return True

    # ------------------------------------------------------------------ feeding

    def feed(self) -> int:
        """Move the next frames of every port into its RX rings; frames moved."""
        mem = self.mem
        moved = 0
        for p, inp in self.inputs.items():
            for w in range(self.nworkers):
                ring = mem.rings[f"rx.{p}.{w}"]
                room = min(ring.free_space(), FEED_MAX, self.buffers.available(),
                           self._tx_room(w))
                for chunk in inp.chunks:
                    if room <= 0:
                        break
                    numbers = chunk.feedable(w)[:room]
                    if len(numbers) == 0:
                        continue
                    chunk.fed[w] += len(numbers)
                    room -= len(numbers)
                    moved += len(numbers)
                    self._feed(p, chunk, numbers, ring)
            while inp.chunks and inp.chunks[0].unfed() == 0 and inp.chunks[0].numbered == len(
                    inp.chunks[0]):
                inp.chunks.popleft()  # every frame of it in the pool: its memory goes
        self.fed += moved
        self._read_ahead()
        self._publish_unfed()
        return moved

    def _publish_unfed(self) -> None:
        """Tell the slow path the arrival number of the oldest frame not yet fed: it
        takes its packets in arrival order up to there (workers/slowpath.py)."""
        ts, seq = self._oldest_unfed()
        self.mem.ctl[CTL_UNFED_SEQ] = 1 + (self.next_seq if ts == FREE_TS else seq)

    def _feed(self, p: int, chunk: _Chunk, numbers: np.ndarray, ring: Ring) -> None:
        mem = self.mem
        frames = chunk.frames
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
                return
        idx = self.buffers.alloc(len(numbers))
        if self._c is not None:
            self._copy_in(p, frames, idx, numbers)
        else:
            lengths = frames.lengths[numbers]
            mem.data[idx, : int(lengths.max())] = gather_frames(
                frames.data, frames.offsets[numbers], lengths)
            mem.length[idx] = lengths
            mem.port[idx] = p
            mem.ts[idx] = frames.ts_ns[numbers]
        mem.seq[idx] = chunk.seq[numbers]
        ring.enqueue(idx)

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

    # ------------------------------------------------------------------ collecting

    def drain(self) -> int:
        """Collect every frame queued for transmission on our ports, and write what
        is in order; frames moved."""
        mem = self.mem
        moved = 0
        held = 0
        for p, _ in self.ports:
            rings = [mem.rings[f"tx.{p}.{w}"] for w in range(self.nworkers)]
            rings.append(mem.rings[f"slowtx.{p}"])
            out = self.outputs[p]
            for ring in rings:
                idx = ring.dequeue(ring.size)
                if len(idx) == 0:
                    continue
                lengths = mem.length[idx]
                ts = mem.ts[idx]
                nbytes = int(lengths.sum())
                block, starts = self._records(idx, lengths, ts, nbytes)
                out.blocks.append(block)
                out.starts.append(starts)
                out.ts.append(ts)
                out.seq.append(mem.seq[idx])
                out.held += len(idx)
                self.port_counters[p, PORT_TX_PACKETS] += len(idx)
                self.port_counters[p, PORT_TX_BYTES] += nbytes
                self.collected += len(block)
                self.counters[MISC_BASE + Misc.tx_frames] += len(idx)
                self.buffers.free(idx)
                moved += len(idx)
            held += out.held
            self.held_high[p] = max(self.held_high[p], out.held)
        if held >= self.write_at or self.collected >= WRITE_BYTES:
            self.collected = 0
            self.write_ready()
            # what still waits is looked at again once as much more has come
            self.write_at = max(WRITE_FRAMES, 2 * sum(o.held for o in self.outputs.values()))
        return moved

    # Copies in and out of the pool: a frame at a time in C (the AF_PACKET driver's
    # helper) when it could be built, else numpy fancy indexing, whose index arrays
    # cost 8 bytes per byte copied. Bursts of 256 into the pool, one core: 60-byte
    # frames 24 M/s in C, 6.2 M/s numpy; 1,514-byte frames 9.5 M/s in C, 0.47 M/s numpy
    # (3.2 M/s a Python loop of memoryview slices).

    def _copy_in(self, p: int, frames: PcapFrames, idx: np.ndarray, numbers: np.ndarray) -> None:
        """Frames `numbers` of a chunk of port p's capture into pool buffers `idx`, with
        their length, port and time (fwd_copy_rows)."""
        ffi, lib, mem = self._c.ffi, self._c.lib, self.mem
        off = np.ascontiguousarray(frames.offsets[numbers], dtype=np.int64)
        length = np.ascontiguousarray(frames.lengths[numbers], dtype=np.uint32)
        ts = np.ascontiguousarray(frames.ts_ns[numbers], dtype=np.int64)
        idx32 = np.ascontiguousarray(idx, dtype=np.uint32)
        lib.fwd_copy_rows(
            ffi.from_buffer("uint8_t[]", frames.data), ffi.from_buffer("int64_t[]", off),
            ffi.from_buffer("uint32_t[]", length), ffi.from_buffer("int64_t[]", ts),
            len(idx32), ffi.cast("uint8_t *", mem.data.ctypes.data), mem.geometry.bufsize,
            ffi.from_buffer("uint32_t[]", idx32), ffi.cast("uint32_t *", mem.length.ctypes.data),
            ffi.cast("uint16_t *", mem.port.ctypes.data),
            ffi.cast("int64_t *", mem.ts.ctypes.data), p)

    def _records(self, idx: np.ndarray, lengths: np.ndarray, ts: np.ndarray,
                 nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        """The frames in pool buffers `idx` as pcap records back to back, and where each
        begins: one copy out of the pool, in C (fwd_pcap_records: a memcpy a frame)
        when the helper was built, else compiled (rows_to_records, 4x slower on IMIX:
        its slice copy is a loop, not a memcpy)."""
        mem = self.mem
        block = np.empty(nbytes + RECORD_HEADER * len(idx), dtype=np.uint8)
        length = lengths.astype(np.int64)
        if self._c is None:
            starts = np.empty(len(idx), dtype=np.int64)
            rows_to_records(mem.data, idx, lengths, ts, block, starts)
            return block, starts
        ffi = self._c.ffi
        off = idx.astype(np.int64) * mem.geometry.bufsize
        stamps = np.ascontiguousarray(ts, dtype=np.int64)
        self._c.lib.fwd_pcap_records(
            ffi.cast("uint8_t *", mem.data.ctypes.data), ffi.from_buffer("int64_t[]", off),
            ffi.from_buffer("int64_t[]", length), ffi.from_buffer("int64_t[]", stamps),
            len(idx), 0, ffi.from_buffer("uint8_t[]", block))
        starts = np.zeros(len(idx), dtype=np.int64)
        np.cumsum(length[:-1] + RECORD_HEADER, out=starts[1:])
        return block, starts

    # ------------------------------------------------------------------ writing

    def _oldest_unfed(self) -> tuple[int, int]:
        """The smallest (time, arrival number) of a frame not yet fed."""
        oldest = NO_KEY
        for inp in self.inputs.values():
            for chunk in inp.chunks:
                for w in range(self.nworkers):
                    mine = chunk.by_worker[w]
                    if chunk.fed[w] < len(mine):
                        i = int(mine[chunk.fed[w]])
                        if i < chunk.numbered:
                            oldest = min(oldest, (int(chunk.frames.ts_ns[i]), int(chunk.seq[i])))
                        else:  # not numbered yet: its number is next_seq or more
                            oldest = min(oldest, (int(chunk.frames.ts_ns[i]), self.next_seq))
            if not inp.eof:  # what is still to be read comes at the clock or later
                oldest = min(oldest, (max(inp.clock, 0), self.next_seq))
        return oldest

    def watermark(self) -> tuple[int, int]:
        """The smallest (time, arrival number) anything can still come out with (the
        module docstring's three sources); publishes the replay clock on the way."""
        mem = self.mem
        timer = int(mem.state[self.slow_agent, ST_NEXT_TIMER])  # first: see slowpath.py
        ts = mem.ts
        oldest = int(ts.min())
        if oldest == FREE_TS:
            in_flight = NO_KEY
        else:
            # the workers free buffers meanwhile: the oldest one may be gone by the time
            # its number is looked for; (time, 0) is then a bound below whatever is left
            seqs = mem.seq[ts == oldest]
            in_flight = (oldest, int(seqs.min()) if len(seqs) else 0)
        clock = min(in_flight, self._oldest_unfed())
        if clock[0] != FREE_TS:
            mem.ctl[CTL_REPLAY_CLOCK] = max(int(mem.ctl[CTL_REPLAY_CLOCK]), clock[0])
        return min(clock, (timer, 0))

    def write_ready(self) -> None:
        """Write each port's output up to the watermark, in (time, arrival) order."""
        self._write(self.watermark())

    def _write(self, below: tuple[int, int], *, again: bool = False) -> None:
        """Write what is below `below`. PcapError names the outputs that failed now
        (`again`: and those that failed before, whose frames are then let go)."""
        failed: list[str] = []
        for p, _ in self.ports:
            out = self.outputs[p]
            if out.failed is not None:  # the run stops: what it collects goes nowhere
                out.clear()
                if again:
                    failed.append(out.failed)
                continue
            if not out.held:
                continue
            try:
                self._write_port(out, below)
            except OSError as e:
                out.failed = str(cannot_write(out.name, e))
                failed.append(out.failed)
        if failed:
            raise PcapError("; ".join(failed))

    def _write_port(self, out: _Output, below: tuple[int, int]) -> None:
        """The records of `out` below the watermark, in (time, arrival) order; the
        others stay. As they came when they came in order (one worker, one port: the
        usual case): the blocks as they are, no copy."""
        ts = np.concatenate(out.ts)
        seq = np.concatenate(out.seq)
        ready = (ts < below[0]) | ((ts == below[0]) & (seq < np.uint64(below[1])))
        nready = int(np.count_nonzero(ready))
        if nready == 0:
            return
        writer = out.writer
        assert writer is not None
        if _in_order(ts, seq):  # ready is then a prefix
            left = nready
            while left:
                block, starts = out.blocks[0], out.starts[0]
                if left >= len(starts):
                    writer.write_records(memoryview(block), len(starts))
                    left -= len(starts)
                    del out.blocks[0], out.starts[0], out.ts[0], out.seq[0]
                    continue
                cut = int(starts[left])
                writer.write_records(memoryview(block)[:cut], left)
                out.blocks[0] = block[cut:]
                out.starts[0] = starts[left:] - cut
                out.ts[0], out.seq[0] = out.ts[0][left:], out.seq[0][left:]
                left = 0
        else:
            records = np.concatenate(out.blocks)
            bases = np.cumsum([0] + [len(b) for b in out.blocks[:-1]])
            starts = np.concatenate([s + b for s, b in zip(out.starts, bases, strict=True)])
            sizes = np.diff(np.append(starts, len(records)))
            order = np.lexsort((seq, ts))
            take, keep = order[ready[order]], np.flatnonzero(~ready)
            buf = np.empty(int(sizes[take].sum()), dtype=np.uint8)
            gather_records(records, starts, sizes, take, buf)
            writer.write_records(memoryview(buf), len(take))
            out.clear()
            if len(keep):
                rest = np.empty(int(sizes[keep].sum()), dtype=np.uint8)
                gather_records(records, starts, sizes, keep, rest)
                kept = np.zeros(len(keep), dtype=np.int64)
                np.cumsum(sizes[keep][:-1], out=kept[1:])
                out.blocks, out.starts, out.ts, out.seq = [rest], [kept], [ts[keep]], [seq[keep]]
        out.held = sum(len(s) for s in out.starts)
        writer.flush()

    def write(self) -> None:
        """Write everything collected (the end of a replay, or a kept engine's stop).
        One output that cannot be written does not keep the others from being
        written: PcapError, after, naming every one that failed."""
        self._write(NO_KEY, again=True)

    def close(self) -> None:
        for inp in self.inputs.values():
            inp.reader.close()
        for out in self.outputs.values():
            if out.writer is not None:
                try:
                    out.writer.close()
                except OSError:
                    pass  # said by the write that failed
                out.writer = None

    # ------------------------------------------------------------------ progress

    def fed_all(self) -> bool:
        return all(inp.eof and not inp.chunks for inp in self.inputs.values())

    def frames_fed(self) -> int:
        return self.fed

    def late_frames(self) -> dict[int, int]:
        """Per port, the frames whose time went back (taken at the clock's time)."""
        return {p: inp.late for p, inp in self.inputs.items() if inp.late}

    def progress(self) -> tuple[int, int, int]:
        """Frames fed, bytes of the inputs read, and the inputs' sizes."""
        return (self.fed, sum(inp.reader.offset for inp in self.inputs.values()),
                sum(inp.reader.size for inp in self.inputs.values()))

    def device_stats(self) -> dict[str, dict[str, int]]:
        """What the driver itself holds, per port (`fwd stats`, the final counters): how
        far its capture was read, the most bytes of read-ahead and the most output
        frames waiting for their turn it held at once, frames taken at the clock."""
        return {self.names[p]: {"read_bytes": inp.reader.offset, "size_bytes": inp.reader.size,
                                "read_ahead_high_bytes": self.read_high[p],
                                "output_held_high": self.held_high[p], "late_frames": inp.late}
                for p, inp in self.inputs.items()}


def _in_order(ts: np.ndarray, seq: np.ndarray) -> bool:
    """Whether (ts, seq) never goes back along the arrays."""
    if len(ts) < 2:
        return True
    step = np.diff(ts)
    if (step < 0).any():
        return False
    same = step == 0
    return not (same & (seq[1:] < seq[:-1])).any()
