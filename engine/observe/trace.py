"""`fwd trace N`: what happens to the next N packets, stage by stage (VPP's packet trace).

The control process arms a request (`arm`: N, an optional ingress port) in shared
memory (engine/shm/trace_capture.py); a forwarding worker sees it through the one shared
word it loads per batch, and `Tracer` does the rest, for that batch only:

- before the fast path, it picks the first packets of the batch still wanted (on the
  port asked for) and copies their header rows as received;
- after the batch is handed on, it runs the fast path's stages (`STAGES`) again on
  those copies alone (pure functions of the header and the tables, so they decide
  what they decided in the batch) and each stage records what it found (its
  `Stage.record`: the parsed header, the next hop, the neighbour), with the verdict
  code and tier after it; then the rewritten header and the final verdict of the
  batch itself (a full ring is decided after the stages);
- it writes one fixed-size record per packet into its own rows of `trace.rec` and
  publishes the count.

The control process collects every agent's records (`collect`), oldest first, and
disarms once N are in; `fwd trace` prints them (engine/cli/trace_format.py). Off, it
costs nothing but that word's load.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.pipeline.fastpath import run_stages
from engine.pipeline.stage import Batch, Stage
from engine.pipeline.tables import Tables
from engine.shm.memory import EngineMemory
from engine.shm.trace_capture import (
    OBS_ACTIVE,
    OBS_TRACE,
    OUT_BYTES,
    TRACE_GEN,
    TRACE_PORT,
    TRACE_RECORD,
    TRACE_SLOTS,
    TRACE_WANT,
)

MAX_TRACE = TRACE_SLOTS


class TraceError(ValueError):
    """A trace request that cannot be armed (the message says why)."""


# --------------------------------------------------------------------------- worker


class Tracer:
    """One agent's side of tracing: `begin` before the fast path, `finish` after."""

    def __init__(self, mem: EngineMemory, agent: int) -> None:
        self.mem = mem
        self.agent = agent
        self.gen = -1
        self.done = 0  # records written for `gen`

    def begin(self, idx: np.ndarray, hdr: np.ndarray) -> tuple | None:
        """The rows of this batch to trace, with copies of what finish needs."""
        ctl = self.mem.obs_ctl
        gen = int(ctl[TRACE_GEN])
        if gen != self.gen:
            self.gen, self.done = gen, 0
            self.mem.trace_count[self.agent, :2] = (0, gen)
        room = min(int(ctl[TRACE_WANT]), TRACE_SLOTS) - self.done
        if room <= 0:
            return None
        port = int(ctl[TRACE_PORT])
        mem = self.mem
        in_port = mem.port[idx]
        rows = np.arange(len(idx)) if not port else np.flatnonzero(in_port == port - 1)
        rows = rows[:room]
        if not len(rows):
            return None
        sel = idx[rows]
        return (rows, hdr[rows].copy(), mem.length[sel].copy(), in_port[rows].copy(),
                mem.ts[sel].copy(), mem.seq[sel].copy())

    def finish(self, picked: tuple, hdr_out: np.ndarray, code: np.ndarray,
               frame_len: np.ndarray, t: Tables) -> None:
        """Re-run the stages on the copies and write one record per packet; `hdr_out`,
        `code` and `frame_len` are the whole batch's after it was handed on."""
        rows, hdr_in, length, in_port, ts, seq = picked
        n = len(rows)
        rec = np.zeros(n, dtype=TRACE_RECORD)
        rec["gen"] = self.gen
        rec["clock"] = time.monotonic_ns()
        rec["ts"], rec["seq"], rec["agent"] = ts, seq, self.agent
        rec["in_port"], rec["length"] = in_port, length
        rec["hdr_in"] = hdr_in

        def record(stage: Stage, b: Batch) -> None:
            rec[stage.code_field], rec[stage.plain_field] = b.code, b.h.plain
            for name, value in stage.record(b, t).items():
                rec[name] = value

        b = Batch(hdr_in.copy(), length, in_port, np.zeros(n, dtype=np.uint8))
        run_stages(b, t, after=record)
        rec["final_code"] = code[rows]
        rec["frame_len"] = frame_len[rows]
        rec["hdr_out"] = hdr_out[rows, :OUT_BYTES]
        start = self.done
        self.mem.trace_rec[self.agent, start : start + n] = rec
        self.done += n
        # the records are written before the count that publishes them (x86 TSO)
        self.mem.trace_count[self.agent, 0] = self.done


# --------------------------------------------------------------------------- control


def arm(mem: EngineMemory, count: int, port: int | None) -> int:
    """Ask the workers to trace the next `count` packets (received on `port` when
    given); returns the request's generation."""
    if not 1 <= count <= MAX_TRACE:
        raise TraceError(f"trace: count must be between 1 and {MAX_TRACE}, got {count}")
    ctl = mem.obs_ctl
    ctl[OBS_ACTIVE] &= ~np.uint64(OBS_TRACE)
    ctl[TRACE_WANT] = count
    ctl[TRACE_PORT] = 0 if port is None else port + 1
    ctl[TRACE_GEN] += 1
    ctl[OBS_ACTIVE] |= np.uint64(OBS_TRACE)  # last: the parameters are in place
    return int(ctl[TRACE_GEN])


def disarm(mem: EngineMemory) -> None:
    mem.obs_ctl[OBS_ACTIVE] &= ~np.uint64(OBS_TRACE)


def collect(mem: EngineMemory, gen: int) -> np.ndarray:
    """The records of request `gen` every agent has published, oldest first, at most
    the count asked for; disarms the request once it has them all."""
    parts = []
    for agent in range(mem.geometry.nagents):
        n, agent_gen = (int(v) for v in mem.trace_count[agent, :2])
        if agent_gen == gen and n:
            part = mem.trace_rec[agent, :n].copy()
            parts.append(part[part["gen"] == gen])
    want = int(mem.obs_ctl[TRACE_WANT])
    if not parts:
        return np.zeros(0, dtype=TRACE_RECORD)
    rec = np.concatenate(parts)
    rec = rec[np.lexsort((rec["seq"], rec["clock"]))][:want]
    if len(rec) >= want and int(mem.obs_ctl[TRACE_GEN]) == gen:
        disarm(mem)
    return rec


def to_dicts(rec: np.ndarray) -> list[dict[str, Any]]:
    """Records as plain maps (msgpack-able): arrays of bytes become bytes."""
    out = []
    for r in rec:  # a few records for a person to read
        d: dict[str, Any] = {}
        for name in TRACE_RECORD.names:
            v = r[name]
            d[name] = v.tobytes() if isinstance(v, np.ndarray) else int(v)
        out.append(d)
    return out
