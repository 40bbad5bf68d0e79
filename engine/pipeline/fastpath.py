"""The fast path: rcv → route → forward over one batch, and its counters.

`fast_path` is a pure function of arrays: header rows in, verdict codes out, the
rows of forwarded packets rewritten in place. Workers gather the rows from the
shared buffer pool and scatter them back; tests and benchmarks call it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.counters import NCOUNTERS, Drop, Misc, Slow, Snmp, index
from engine.pipeline.forward import ip_forward, rewrite
from engine.pipeline.rcv import ip_rcv
from engine.pipeline.route import ip_route_input
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import FORWARD, NCODES, SLOW, drop, slow
from engine.proto import ETH_HLEN


@dataclass
class BatchResult:
    code: np.ndarray  # (N,) uint8 verdict code (see verdict.py)
    egress: np.ndarray  # (N,) egress port, meaningful where code == FORWARD
    frame_len: np.ndarray  # (N,) Ethernet frame length after trimming L2 padding
    forwarded: np.ndarray  # row numbers of forwarded packets, in batch order


def fast_path(hdr: np.ndarray, length: np.ndarray, in_port: np.ndarray,
              t: Tables) -> BatchResult:
    code = np.zeros(len(hdr), dtype=np.uint8)
    h = ip_rcv(hdr, length, in_port, t.port_mac48, code)
    nh = ip_route_input(h, t, code)
    egress, mac = ip_forward(h, nh, in_port, t, code)
    if np.count_nonzero(h.plain) == len(code):  # (a third of the cost of .all())
        rows = np.arange(len(code))
        rewrite(hdr, mac, egress, t)
    else:
        rows = np.flatnonzero(code == FORWARD)
        part = hdr[rows]
        rewrite(part, mac[rows], egress[rows], t)
        hdr[rows] = part
    # ip_rcv_core's pskb_trim_rcsum: the frame ends where the IP datagram ends
    frame_len = np.minimum(length, ETH_HLEN + h.tot_len)
    return BatchResult(code, egress, frame_len, rows)


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
    for reason in Drop:
        if reason != Drop.none:
            m[drop(reason), index(reason)] = 1
            m[drop(reason), index(Misc.dropped)] = 1
    for reason in Slow:
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


def count(code: np.ndarray, row: np.ndarray) -> None:
    """Add a batch's verdicts to this agent's counters row."""
    if not np.count_nonzero(code):  # the common batch: everything forwarded
        row += CODE_TO_COUNTERS[FORWARD] * np.uint64(len(code))
        return
    hist = np.bincount(code, minlength=NCODES).astype(np.uint64)
    row += hist @ CODE_TO_COUNTERS
