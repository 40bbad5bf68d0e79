"""`fwd capture PORT --at rx|tx|drop -w FILE`: frames of a running engine into a pcap.

The control process arms a capture (`arm`: a port, a point) in shared memory
(engine/shm/trace_capture.py); forwarding workers see it through the one shared word they
load per batch and copy the matching frames into their own capture ring:

- rx: as received, before any rewrite, on the ingress port;
- tx: as sent by the fast path (rewritten), on the egress port;
- drop: as received, on the ingress port, when the worker drops them; the reason (a
  `Drop` name) travels with each frame to the reader (classic pcap has no place for
  it: `fwd capture` prints the count per reason).

Frames are copied while the worker still holds their buffers (before they are handed
to a TX ring, the slow path or the pool) and published once the batch's verdicts are
final. A full ring never blocks forwarding: the frame is counted as lost. The control
process reads the rings (`drain`) for the client over the control socket; the client
writes the pcap (engine/io/pcap.py's format). What the slow path sends itself (ICMP,
fragments, ARP) is not captured at tx, and what it drops is not captured at drop:
the slow path's verdicts are in `fwd stats`.
"""

from __future__ import annotations

import time

import numpy as np

from engine.pipeline.verdict import FORWARD, SLOW
from engine.proto import HDR_BYTES
from engine.shm.memory import EngineMemory
from engine.shm.trace_capture import (
    CAP_AT,
    CAP_DROP,
    CAP_GEN,
    CAP_PORT,
    CAP_RX,
    CAP_TX,
    CAPTURE_META,
    CAPTURE_POINTS,
    CAPTURE_SLOTS,
    OBS_ACTIVE,
    OBS_CAPTURE,
)


class CaptureError(ValueError):
    """A capture request that cannot be armed."""


# --------------------------------------------------------------------------- worker


class Capturer:
    """One agent's side of a capture. `Forwarder.process` calls, while capturing:
    `received` before the fast path, `routed` before transmit, `decided` after
    transmit (before hand-on), `publish` at the end."""

    def __init__(self, mem: EngineMemory, agent: int) -> None:
        self.mem = mem
        self.agent = agent
        self.mask = CAPTURE_SLOTS - 1

    def params(self) -> tuple[int, int, int]:
        ctl = self.mem.obs_ctl
        return int(ctl[CAP_GEN]), int(ctl[CAP_PORT]), int(ctl[CAP_AT])

    def copy(self, idx: np.ndarray, rows: np.ndarray, ports: np.ndarray) -> tuple:
        """The frames of `rows` as they are now, with their metadata."""
        sel = idx[rows]
        mem = self.mem
        length = mem.length[sel].copy()
        # the longest frame's bytes (at least a header row, which tx capture overwrites)
        width = min(max(HDR_BYTES, int(length.max())), mem.data.shape[1])
        return (rows, mem.data[sel, :width], length, ports.copy(), mem.ts[sel].copy(),
                mem.seq[sel].copy())

    def publish(self, gen: int, at: int, held: tuple, code: np.ndarray) -> None:
        """Write what was copied into the ring: tx, the frames still forwarded; drop, the
        frames that ended dropped (with their reason); rx, all."""
        rows, data, length, ports, ts, seq = held
        final = code[rows]
        if at == CAP_TX:
            keep = final == FORWARD
        elif at == CAP_DROP:
            keep = (final != FORWARD) & (final < SLOW)
        else:
            keep = np.ones(len(rows), dtype=bool)
        if not keep.all():
            data, length, ports, ts, seq, final = (a[keep] for a in (data, length, ports, ts,
                                                                    seq, final))
        n = len(length)
        if not n:
            return
        mem, a = self.mem, self.agent
        head = int(mem.cap_head[a, 0])
        room = CAPTURE_SLOTS - (head - int(mem.cap_tail[a, 0]))
        if room < n:
            mem.cap_lost[a, 0] += n - max(room, 0)
            n = max(room, 0)
        if not n:
            return
        slots = (head + np.arange(n)) & self.mask
        width = min(data.shape[1], mem.cap_data.shape[2])
        mem.cap_data[a, slots, :width] = data[:n, :width]
        meta = np.zeros(n, dtype=CAPTURE_META)
        meta["gen"], meta["at"] = gen, at
        meta["ts"], meta["seq"], meta["length"] = ts[:n], seq[:n], length[:n]
        meta["port"] = ports[:n]
        meta["reason"] = np.where(at == CAP_DROP, final[:n], 0)
        mem.cap_meta[a, slots] = meta
        mem.cap_head[a, 0] = head + n  # last: the slots are written (x86 TSO)


# --------------------------------------------------------------------------- control


def arm(mem: EngineMemory, port: int | None, at: str) -> int:
    """Start capturing at `at` on `port` (None: every port); frames still in the rings
    from an earlier capture are discarded. Returns the capture's generation."""
    if at not in CAPTURE_POINTS:
        raise CaptureError(f"capture: at must be one of {', '.join(CAPTURE_POINTS)}, got {at!r}")
    ctl = mem.obs_ctl
    ctl[OBS_ACTIVE] &= ~np.uint64(OBS_CAPTURE)
    ctl[CAP_PORT] = 0 if port is None else port + 1
    ctl[CAP_AT] = CAPTURE_POINTS[at]
    ctl[CAP_GEN] += 1
    mem.cap_tail[:, 0] = mem.cap_head[:, 0]  # we are the consumer: skip what is there
    mem.cap_lost[:, 0] = 0  # a racing worker's add may be lost: it is a report, not a count
    ctl[OBS_ACTIVE] |= np.uint64(OBS_CAPTURE)
    return int(ctl[CAP_GEN])


def disarm(mem: EngineMemory) -> None:
    mem.obs_ctl[OBS_ACTIVE] &= ~np.uint64(OBS_CAPTURE)


def drain(mem: EngineMemory, gen: int, max_frames: int = 4096
          ) -> tuple[list[tuple[int, int, int, int, bytes]], int]:
    """Frames of capture `gen` from every agent's ring, in arrival order within each
    (ts, seq, port, reason, bytes), and the frames lost to full rings so far."""
    out: list[tuple[int, int, int, int, bytes]] = []
    for a in range(mem.geometry.nagents):
        head, tail = int(mem.cap_head[a, 0]), int(mem.cap_tail[a, 0])
        n = min(head - tail, max_frames - len(out))
        if n <= 0:
            continue
        slots = (tail + np.arange(n)) & (CAPTURE_SLOTS - 1)
        meta = mem.cap_meta[a, slots].copy()
        data = mem.cap_data[a, slots]
        for k in range(n):  # the frames a person asked for, one pcap record each
            m = meta[k]
            if int(m["gen"]) != gen:
                continue
            length = min(int(m["length"]), data.shape[1])
            out.append((int(m["ts"]) or time.time_ns(), int(m["seq"]), int(m["port"]),
                        int(m["reason"]), data[k, :length].tobytes()))
        mem.cap_tail[a, 0] = tail + n
    lost = int(mem.cap_lost[:, 0].sum())
    out.sort(key=lambda f: (f[0], f[1]))
    return out, lost


def wanted(gen_port: int, ports: np.ndarray) -> np.ndarray:
    """Rows whose port matches the capture's port word (0: every row)."""
    if not gen_port:
        return np.arange(len(ports))
    return np.flatnonzero(ports == gen_port - 1)


__all__ = ["CAP_RX", "CAP_TX", "CAP_DROP", "Capturer", "arm", "disarm", "drain", "wanted"]
