"""The fast path: its stages in order (`STAGES`), run over one batch, and its counters.

`fast_path` is a pure function of arrays: header rows in, verdict codes out, the
rows of forwarded packets rewritten in place. Workers gather the rows from the
shared buffer pool and scatter them back; tests and benchmarks call it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.counters import NCOUNTERS, PORT_DROP_BASE, Drop, Misc, Slow, Snmp, index
from engine.pipeline import forward, rcv, route
from engine.pipeline.forward import rewrite
from engine.pipeline.stage import Batch, Stage
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import FORWARD, NCODES, SLOW, drop, slow
from engine.proto import ETH_HLEN


@dataclass
class BatchResult:
    code: np.ndarray  # (N,) uint8 verdict code (see verdict.py)
    egress: np.ndarray  # (N,) egress port, meaningful where code == FORWARD
    frame_len: np.ndarray  # (N,) Ethernet frame length after trimming L2 padding
    forwarded: np.ndarray  # row numbers of forwarded packets, in batch order


# The kernel's order: ip_rcv_core, then ip_route_input_noref, then ip_forward (which
# ends in neigh_output). `fwd trace` runs this same list on the packets it traces.
STAGES: tuple[Stage, ...] = (rcv.STAGE, route.STAGE, forward.STAGE)


def run_stages(b: Batch, t: Tables,
               after: Callable[[Stage, Batch], None] | None = None) -> None:
    """Run every stage over the batch, in order; `after(stage, b)` (the tracer's) sees
    the batch state after each one."""
    for stage in STAGES:  # slow path: three vectorised stages a batch, not a packet
        stage.run(b, t)
        if after is not None:
            after(stage, b)


def rewrite_forwarded(b: Batch, t: Tables) -> np.ndarray:
    """Rewrite the rows of the packets the stages forward; return their row numbers."""
    hdr, code = b.hdr, b.code
    if np.count_nonzero(b.h.plain) == len(code):  # (a third of the cost of .all())
        rewrite(hdr, b.mac, b.egress, t)
        return np.arange(len(code))
    rows = np.flatnonzero(code == FORWARD)
    part = hdr[rows]
    rewrite(part, b.mac[rows], b.egress[rows], t)
    hdr[rows] = part
    return rows


def fast_path(hdr: np.ndarray, length: np.ndarray, in_port: np.ndarray,
              t: Tables) -> BatchResult:
    b = Batch(hdr, length, in_port, np.zeros(len(hdr), dtype=np.uint8))
    run_stages(b, t)
    rows = rewrite_forwarded(b, t)
    # ip_rcv_core's pskb_trim_rcsum: the frame ends where the IP datagram ends
    frame_len = np.minimum(length, ETH_HLEN + b.h.tot_len)
    return BatchResult(b.code, b.egress, frame_len, rows)


def _code_to_counters() -> np.ndarray:
    """Matrix M with counters += bincount(codes) @ M: every counter a code moves."""
    m = np.zeros((NCODES, NCOUNTERS), dtype=np.uint64)
    not_ip = {drop(Drop.otherhost), drop(Drop.not_ipv4), drop(Drop.runt), slow(Slow.arp)}
    hdr_errors = {drop(r) for r in (Drop.hdr_too_short, Drop.bad_version, Drop.bad_ihl,
                                    Drop.csum_error, Drop.bad_tot_len)}
    hdr_errors.add(slow(Slow.ttl_exceeded))  # ip_forward's too_many_hops counts it
    for c in range(NCODES):  # slow path: runs once, at import
        m[c, index(Misc.rx_frames)] = 1
        if c not in not_ip:
            m[c, index(Snmp.InReceives)] = 1
        if c in hdr_errors:
            m[c, index(Snmp.InHdrErrors)] = 1
    m[FORWARD, index(Snmp.ForwDatagrams)] = 1
    m[FORWARD, index(Misc.forwarded)] = 1
    for reason in Drop:  # slow path: runs once, at import
        if reason != Drop.none:
            m[drop(reason), index(reason)] = 1
            m[drop(reason), index(Misc.dropped)] = 1
    for reason in Slow:  # slow path: runs once, at import
        if reason != Slow.none:
            m[slow(reason), index(reason)] = 1
            m[slow(reason), index(Misc.to_slowpath)] = 1
    m[drop(Drop.csum_error), index(Snmp.InCsumErrors)] = 1
    m[drop(Drop.truncated), index(Snmp.InTruncatedPkts)] = 1
    m[slow(Slow.no_route), index(Snmp.InNoRoutes)] = 1  # ip_error, ENETUNREACH
    m[slow(Slow.unreachable), index(Snmp.InAddrErrors)] = 1  # ip_error, EHOSTUNREACH
    m[slow(Slow.frag_needed), index(Snmp.FragFails)] = 1  # ip_forward, DF and too big
    return m


CODE_TO_COUNTERS = _code_to_counters()
assert SLOW > max(Drop)


def count(code: np.ndarray, row: np.ndarray, in_port: np.ndarray | None = None) -> None:
    """Add a batch's verdicts to this agent's counters row; with `in_port` (the
    frames' ingress ports) its drops to the per-port drop section too."""
    if not np.count_nonzero(code):  # the common batch: everything forwarded
        row += CODE_TO_COUNTERS[FORWARD] * np.uint64(len(code))
        return
    hist = np.bincount(code, minlength=NCODES).astype(np.uint64)
    row += hist @ CODE_TO_COUNTERS
    if in_port is not None:
        dropped = (code != FORWARD) & (code < SLOW)
        if dropped.any():  # column PORT_DROP_BASE + port * len(Drop) + reason
            cols = (PORT_DROP_BASE + in_port[dropped].astype(np.int64) * len(Drop)
                    + code[dropped])
            np.add.at(row, cols, np.uint64(1))
