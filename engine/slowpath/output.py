"""What the slow path sends: Ethernet frames onto the ports' slow TX rings
(`slowtx.<port>`), the kernel's `dev_queue_xmit` as far as the slow path goes.

Frames go out as new buffers from the worker's own pool partition, in the order they
were sent, at the end of the burst (`transmit`, `flush_tx`: one allocation for the
burst; counters move at the same time; `transmit_rows`: many packets' frames built
in one block, engine/slowpath/icmp_burst.py, copied with one call); whole datagrams
(engine/slowpath/whole.py) leave in the buffers they came in (`transmit_whole`).
Each frame carries the triggering packet's time and arrival number, so the pcap
agent's (time, arrival) order places it where the kernel would have sent it. With
pcap ports a full ring or an empty pool is waited out (the pcap agent always drains,
so waiting is safe and replays stay lossless); with live ports it drops
(`ring_full`, `pool_empty`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.counters import Drop, Misc, Snmp
from engine.shm.fib import FibReader
from engine.shm.memory import EngineMemory
from engine.shm.pool import Buffers
from engine.slowpath.counts import Counts

if TYPE_CHECKING:
    from engine.slowpath.whole import WholeBurst

WAIT_S = 0.00005  # a lossless (pcap) port waits this long for ring or pool room


@dataclass
class Rows:
    """What `transmit_rows` queued: frame k is frames[k, :lengths[k]]."""

    frames: np.ndarray
    lengths: np.ndarray
    ports: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    sent: list[Sequence[IntEnum]]
    refused: Callable[[Drop], None]


class Output:
    """The slow TX rings of every port and the frames queued for them this burst."""

    def __init__(self, mem: EngineMemory, tx: list[Any], buffers: Buffers, counts: Counts, *,
                 lossless: bool, fib: FibReader | None = None, reader: int = 0) -> None:
        self.mem = mem
        self.tx = tx  # slowtx.<port>, by port
        self.buffers = buffers  # the worker's pool partition
        # a pcap port is a file: waiting for room is safe, and keeps replays lossless
        self.lossless = lossless
        self.fib = fib  # a wait lets FIB writers know this reader holds nothing
        self.reader = reader
        self.count = counts.count
        self.drop = counts.drop
        # what transmit queued for the end of the burst: (frames, port, ts, seq,
        # counters when sent, call when refused), or (None, WholeBurst, d0, d1): its
        # datagrams d0..d1-1, in the buffers they came in, or (Rows,): one frame
        # each for many packets
        self._txq: list[tuple[Any, ...]] = []

    def transmit(self, frames: list[bytes], port: int, ts: int, seq: int,
                 sent: Sequence[IntEnum], refused: Callable[[Drop], None]) -> None:
        """`send`, at the end of the burst (`flush_tx`): then `sent` is counted, or
        `refused` called with the reason. One allocation, a copy per frame and one
        enqueue per ring serve the whole burst, where `send` pays each per call."""
        if max(map(len, frames)) > self.mem.geometry.bufsize:  # as `send` would refuse it
            raise ValueError("a frame longer than a pool buffer")
        self._txq.append((frames, port, ts, seq, sent, refused))

    def transmit_rows(self, frames: np.ndarray, lengths: np.ndarray, ports: np.ndarray,
                      ts: np.ndarray, seq: np.ndarray, sent: list[Sequence[IntEnum]],
                      refused: Callable[[Drop], None]) -> None:
        """`transmit` of one frame each for many packets, the frames built in the rows
        of one block (frame k: frames[k, :lengths[k]], to port ports[k], with time
        ts[k] and number seq[k], counting sent[k] when sent): copied into the pool at
        the end of the burst with one call, and refused one by one as `transmit`'s
        are when the pool or a ring has no room."""
        if int(lengths.max()) > self.mem.geometry.bufsize:  # as `send` would refuse it
            raise ValueError("a frame longer than a pool buffer")
        self._txq.append((Rows(frames, lengths, ports, ts, seq, sent, refused),))

    def transmit_whole(self, w: WholeBurst, d0: int, d1: int) -> None:
        """Whole datagrams d0..d1-1 of `w`, in the buffers they came in, at the end of
        the burst (`flush_tx`), where they count as forwarded."""
        queue = self._txq
        if queue and queue[-1][0] is None and queue[-1][1] is w and queue[-1][3] == d0:
            queue[-1] = (None, w, queue[-1][2], d1)
        else:
            queue.append((None, w, d0, d1))

    def flush_tx(self) -> None:
        """Send what `transmit` queued, in order. When the pool or a ring has no room
        for all of it, each packet goes through `send` in turn (which waits for room
        with pcap ports, or is refused)."""
        queue = self._txq
        if not queue:
            return
        self._txq = []
        ports: list[int] = []
        copies = 0  # frames to copy into new buffers (the rest leave in their own)
        for item in queue:
            if item[0] is None:
                w, d0, d1 = item[1:]
                ports += w.ports[w.bounds[d0] : w.bounds[d1]].tolist()
            elif len(item) == 1:
                rows = item[0]
                ports += rows.ports.tolist()
                copies += len(rows.ports)
            else:
                ports += [item[1]] * len(item[0])
                copies += len(item[0])
        n = len(ports)
        idx = self.buffers.alloc(copies)
        per_port = Counter(ports)
        room = len(idx) == copies and all(self.tx[p].free_space() >= k
                                          for p, k in per_port.items())
        if not room:
            self.buffers.free(idx)
            for item in queue:
                if item[0] is None:
                    self._send_whole_alone(*item[1:])
                    continue
                if len(item) == 1:
                    self._send_rows_alone(item[0])
                    continue
                frames, port, ts, seq, sent, refused = item
                reason = self.send(frames, port, ts, seq)
                if reason is not None:
                    refused(reason)
                    continue
                for counter in sent:
                    self.count(counter)
            return
        mem = self.mem
        data = memoryview(mem.data).cast("B")  # one flat view: row i at i * bufsize
        size = mem.geometry.bufsize
        buffers = idx.tolist()
        order: list[int] = []  # every buffer, in the order sent
        lengths: list[int] = []
        stamps: list[int] = []
        seqs: list[int] = []
        copy_ports: list[int] = []
        for item in queue:
            if item[0] is None:
                w, d0, d1 = item[1:]
                order += w.buffers[w.bounds[d0] : w.bounds[d1]].tolist()
                self.count(Snmp.ForwDatagrams, d1 - d0)
                self.count(Misc.forwarded, d1 - d0)
                continue
            if len(item) == 1:
                rows = item[0]
                m = len(rows.ports)
                bufs = idx[len(lengths) : len(lengths) + m]
                width = int(rows.lengths.max())
                mem.data[bufs, :width] = rows.frames[:, :width]
                lengths += rows.lengths.tolist()
                order += bufs.tolist()
                stamps += rows.ts.tolist()
                seqs += rows.seq.tolist()
                copy_ports += rows.ports.tolist()
                kinds = {id(sent): sent for sent in rows.sent}  # a few tuples, shared
                for key, k in Counter(map(id, rows.sent)).items():
                    for counter in kinds[key]:
                        self.count(counter, k)
                continue
            frames, port, ts, seq, sent, _ = item
            for frame in frames:
                buf = buffers[len(lengths)]
                start = buf * size
                data[start : start + len(frame)] = frame
                lengths.append(len(frame))
                order.append(buf)
            stamps += [ts] * len(frames)
            seqs += [seq] * len(frames)
            copy_ports += [port] * len(frames)
            for counter in sent:
                self.count(counter)
        data.release()
        if copies:
            mem.length[idx] = lengths
            mem.port[idx] = copy_ports
            mem.ts[idx] = stamps
            mem.seq[idx] = seqs
        sent_idx = np.array(order, dtype=idx.dtype)
        if len(per_port) == 1:
            self.tx[ports[0]].enqueue(sent_idx)
        else:
            egress = np.array(ports)
            for p in per_port:  # each ring gets its frames in order (first seen first)
                self.tx[p].enqueue(sent_idx[egress == p])
        self.count(Misc.tx_frames, n)

    def _send_rows_alone(self, rows: Rows) -> None:
        """`transmit_rows`' frames when the burst's output has no room: each through
        `send` in turn, as a `transmit` of its own would go."""
        for k in range(len(rows.ports)):
            frame = rows.frames[k, : rows.lengths[k]].tobytes()
            reason = self.send([frame], int(rows.ports[k]), int(rows.ts[k]), int(rows.seq[k]))
            if reason is not None:
                rows.refused(reason)
                continue
            for counter in rows.sent[k]:
                self.count(counter)

    def _send_whole_alone(self, w: WholeBurst, d0: int, d1: int) -> None:
        """Whole datagrams d0..d1-1 when the rings have no room for the burst's output:
        each enqueued when its ring has room for all its fragments (waiting, with pcap
        ports), else dropped (`ring_full`) and its buffers freed, as `send` would."""
        for d in range(d0, d1):
            idx = w.buffers[w.bounds[d] : w.bounds[d + 1]]
            ring = self.tx[int(w.ports[w.bounds[d]])]
            while ring.free_space() < len(idx):
                if not self.lossless:
                    self.buffers.free(idx)
                    if d in w.learned:  # ip_forward_finish counts it before neigh_output
                        self.count(Snmp.ForwDatagrams)
                    self.drop(Drop.ring_full)
                    break
                self._wait()
            else:
                ring.enqueue(idx)
                self.count(Misc.tx_frames, len(idx))
                self.count(Snmp.ForwDatagrams)
                self.count(Misc.forwarded)

    def send(self, frames: list[bytes], port: int, ts: int, seq: int) -> Drop | None:
        """Frames (Ethernet and all) to port `port`'s slow TX ring, all or none, in new
        buffers from our partition, now (after what `transmit` queued). Returns the
        drop reason if refused."""
        self.flush_tx()
        n = len(frames)
        ring = self.tx[port]
        while True:
            idx = self.buffers.alloc(n)
            if len(idx) == n:
                break
            self.buffers.free(idx)
            if not self.lossless:
                return Drop.pool_empty
            self._wait()
        while ring.free_space() < n:
            if not self.lossless:
                self.buffers.free(idx)
                return Drop.ring_full
            self._wait()
        mem = self.mem
        for i, frame in zip(idx.tolist(), frames, strict=True):
            mem.data[i, : len(frame)] = np.frombuffer(frame, dtype=np.uint8)
            mem.length[i] = len(frame)
        mem.port[idx] = port
        mem.ts[idx] = ts
        mem.seq[idx] = seq
        ring.enqueue(idx)
        self.count(Misc.tx_frames, n)
        return None

    def _wait(self) -> None:
        if self.fib is not None:
            self.fib.quiescent(self.reader)
        time.sleep(WAIT_S)

