"""A forwarding worker's hooks for `fwd trace` and `fwd capture`.

`Forwarder.process` loads one shared word per batch (`obs.ctl[OBS_ACTIVE]`); only
when it is not zero does it call these, at four points of the batch:

    received  before the fast path        trace: pick and copy; capture rx: copy
    routed    after the rewrite, before   capture tx: copy the rewritten frames while
              the TX rings                the worker still holds their buffers
    decided   after the TX rings, before  capture drop: copy what did not go out
              the slow ring and the pool
    finished  at the end                  trace: re-run the stages, write records;
                                          capture: publish what the verdicts keep
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.observe.capture import Capturer, wanted
from engine.observe.trace import Tracer
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import FORWARD
from engine.shm.memory import EngineMemory
from engine.shm.trace_capture import CAP_DROP, CAP_RX, CAP_TX, OBS_CAPTURE, OBS_TRACE


@dataclass
class Seen:
    """What one batch's hooks carry from one point to the next."""

    trace: tuple | None = None
    capture: tuple[int, int, int] | None = None  # (gen, port word, at)
    held: tuple | None = None  # frames copied for the capture


class Observer:
    def __init__(self, mem: EngineMemory, agent: int) -> None:
        self.mem = mem
        self.tracer = Tracer(mem, agent)
        self.capturer = Capturer(mem, agent)

    def received(self, watch: int, idx: np.ndarray, hdr: np.ndarray) -> Seen:
        seen = Seen()
        if watch & OBS_TRACE:
            seen.trace = self.tracer.begin(idx, hdr)
        if watch & OBS_CAPTURE:
            seen.capture = self.capturer.params()
            _, port, at = seen.capture
            if at == CAP_RX:
                ports = self.mem.port[idx]
                rows = wanted(port, ports)
                if len(rows):
                    seen.held = self.capturer.copy(idx, rows, ports[rows])
        return seen

    def routed(self, seen: Seen, idx: np.ndarray, hdr: np.ndarray, code: np.ndarray,
               egress: np.ndarray) -> None:
        if seen.capture is None or seen.capture[2] != CAP_TX:
            return
        fwd = np.flatnonzero(code == FORWARD)
        rows = fwd[wanted(seen.capture[1], egress[fwd])]
        if len(rows):
            rows, data, *rest = self.capturer.copy(idx, rows, egress[rows])
            data[:, : hdr.shape[1]] = hdr[rows]  # the rewritten header, as it is sent
            seen.held = (rows, data, *rest)

    def decided(self, seen: Seen, idx: np.ndarray, code: np.ndarray) -> None:
        if seen.capture is None or seen.capture[2] != CAP_DROP:
            return
        out = np.flatnonzero(code != FORWARD)
        if len(out):
            ports = self.mem.port[idx[out]]
            keep = wanted(seen.capture[1], ports)
            if len(keep):
                seen.held = self.capturer.copy(idx, out[keep], ports[keep])

    def finished(self, seen: Seen, hdr: np.ndarray, code: np.ndarray, frame_len: np.ndarray,
                 tables: Tables) -> None:
        if seen.trace is not None:
            self.tracer.finish(seen.trace, hdr, code, frame_len, tables)
        if seen.held is not None and seen.capture is not None:
            self.capturer.publish(seen.capture[0], seen.capture[2], seen.held, code)
