"""Counter names: the kernel's `/proc/net/snmp` Ip: names, drop reasons, slow-path reasons.

Each process (the I/O agent, every forwarding worker, the slow-path worker) owns one
row of uint64 counters in shared memory and is its only writer; readers sum the rows.
A row is laid out as [Snmp | Drop | Slow | Misc]: `index(enum_member)` gives the
column.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Snmp(IntEnum):
    """RFC 4293 / `/proc/net/snmp` Ip: counters, plus the IpExt ones the kernel keeps."""

    InReceives = 0
    InHdrErrors = 1
    InAddrErrors = 2
    ForwDatagrams = 3
    InUnknownProtos = 4
    InDiscards = 5
    InDelivers = 6
    OutRequests = 7
    OutDiscards = 8
    OutNoRoutes = 9
    ReasmTimeout = 10
    ReasmReqds = 11
    ReasmOKs = 12
    ReasmFails = 13
    FragOKs = 14
    FragFails = 15
    FragCreates = 16
    InNoRoutes = 17
    InTruncatedPkts = 18
    InCsumErrors = 19
    InBcastPkts = 20
    InMcastPkts = 21


class Drop(IntEnum):
    """Why a frame was dropped. Exactly one reason per dropped frame."""

    none = 0  # not dropped (placeholder so that 0 means "no verdict yet")
    otherhost = 1  # L2 destination is not ours (PACKET_OTHERHOST)
    not_ipv4 = 2  # ethertype is not IPv4 (ARP arrives with the live-ports work)
    hdr_too_short = 3  # frame shorter than an IPv4 header or than IHL*4
    bad_version = 4
    bad_ihl = 5  # IHL < 5
    csum_error = 6
    truncated = 7  # tot_len > frame length
    bad_tot_len = 8  # tot_len < IHL*4
    martian_source = 9
    martian_destination = 10
    l2_not_host = 11  # unicast IP in a broadcast/multicast frame that would be forwarded
    multicast = 12  # IP multicast destination: not forwarded
    blackhole = 13
    rx_oversize = 14  # frame larger than the buffer size
    pool_empty = 15  # no free buffer
    ring_full = 16  # a descriptor ring was full
    port_down = 17
    slowpath_unimplemented = 18  # the slow-path worker cannot handle this yet
    tx_error = 19  # the driver could not send


class Slow(IntEnum):
    """Why a packet was handed to the slow-path worker (first matching reason)."""

    none = 0
    local = 1  # for one of the router's addresses, or a broadcast to it
    no_route = 2  # ICMP net unreachable
    unreachable = 3  # unreachable route: ICMP host unreachable
    prohibit = 4  # prohibit route: ICMP administratively prohibited
    ttl_exceeded = 5  # ICMP time exceeded
    frag_needed = 6  # DF and too big: ICMP fragmentation needed
    fragment = 7  # too big without DF: fragment on output
    reassemble = 8  # a fragment (MF or offset): reassembly
    options = 9  # IHL > 5: IP options processing
    redirect = 10  # egress == ingress: forward and send ICMP redirect
    neigh_unresolved = 11  # next hop has no MAC yet: ARP


class Misc(IntEnum):
    rx_frames = 0  # frames this agent took in (workers: from their rx queues)
    forwarded = 1  # frames the fast path forwarded
    delivered = 2  # packets delivered locally
    to_slowpath = 3  # frames handed to the slow path
    dropped = 4  # frames dropped (sum of the Drop columns)
    batches = 5
    busy_ns = 6  # time spent processing non-empty batches
    tx_frames = 7  # frames this agent handed to a port
    created = 8  # packets this agent created (ICMP, fragments)


SECTIONS: tuple[type[IntEnum], ...] = (Snmp, Drop, Slow, Misc)
_BASE: dict[type[IntEnum], int] = {}
_offset = 0
for _section in SECTIONS:
    _BASE[_section] = _offset
    _offset += len(_section)
NCOUNTERS = _offset

SNMP_BASE = _BASE[Snmp]
DROP_BASE = _BASE[Drop]
SLOW_BASE = _BASE[Slow]
MISC_BASE = _BASE[Misc]


def index(member: IntEnum) -> int:
    """Column of a counter in a counters row."""
    return _BASE[type(member)] + int(member)


def summarize(rows: np.ndarray) -> dict[str, dict[str, int]]:
    """Sum the per-agent rows into {section: {name: value}}."""
    total = rows.sum(axis=0, dtype=np.uint64)
    out: dict[str, dict[str, int]] = {}
    for section in SECTIONS:
        base = _BASE[section]
        out[section.__name__.lower()] = {m.name: int(total[base + m]) for m in section}
    out["drop"].pop("none")
    out["slow"].pop("none")
    return out
