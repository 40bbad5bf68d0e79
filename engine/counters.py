"""Counter names: the kernel's `/proc/net/snmp` names, drop reasons, slow-path reasons.

Each process (the I/O agent, every forwarding worker, the slow-path worker) owns one
row of uint64 counters in shared memory and is its only writer; readers sum the rows.
A row is laid out as [Snmp | Drop | Slow | Misc | SlowDrop | Icmp | Udp | Tcp | Unsent |
Arp | Reasm | port drops]: `index(enum_member)` gives the column, `port_drop_index(port,
reason)` one of the last section's: the fast path's drops again, by ingress port (what
`fwd port show` lists per port, as `ip -s link` and VPP's `show interface` do). Being
in the row, they are saved and restored with it when a killed worker's torn add is
undone (engine/control/recovery.py), so they never count a packet twice.

`Drop` reasons are also the fast path's verdict codes (1..31, see verdict.py), so the
slow path's own endings have a section of their own, `SlowDrop`; where the slow path
ends a packet for a reason the fast path also has (a martian source found after
reassembly, a full ring), it counts the `Drop` column in its own row.
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
    not_ipv4 = 2  # ethertype neither IPv4 nor ARP (ARP to us goes to the slow path: Slow.arp)
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
    tx_error = 18  # the driver could not send
    worker_killed = 19  # in the hand of a forwarding worker that was killed (control/recovery.py)
    runt = 20  # frame shorter than an Ethernet header (a NIC's rx_length_errors)


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
    # an ARP frame (ethertype 0x0806) for our MAC or broadcast (`arp_rcv`); not an IP
    # packet, so it counts in no Ip: counter
    arp = 12


class Misc(IntEnum):
    rx_frames = 0  # frames this agent took in (workers: from their rx queues)
    forwarded = 1  # frames the fast path forwarded
    delivered = 2  # packets delivered locally (ARP frames taken by the slow path too)
    to_slowpath = 3  # frames handed to the slow path
    dropped = 4  # frames dropped (sum of the Drop columns)
    batches = 5
    busy_ns = 6  # time spent processing non-empty batches
    tx_frames = 7  # frames this agent handed to a port
    created = 8  # packets this agent originated and sent (ICMP, TCP resets)
    # the slow path's reassembly, for its accounting equation (see stats.py)
    reassembled = 9  # datagrams made out of fragments (each a new packet to route)
    merged = 10  # fragments that went into those datagrams
    held = 11  # waiting now (a level, not a count): fragments in reassembly queues and
    #            packets in hold queues for their next hop's MAC (ARP)


class SlowDrop(IntEnum):
    """Why the slow path ended a packet without forwarding or delivering it (one reason
    per packet; fragments count one each). Most answer with an ICMP error, which may
    itself not go out (see `Unsent`)."""

    ttl_exceeded = 0  # ip_forward: TTL <= 1 (ICMP 11/0)
    no_route = 1  # ip_error, ENETUNREACH (ICMP 3/0)
    unreachable = 2  # ip_error, EHOSTUNREACH: unreachable route (ICMP 3/1)
    prohibit = 3  # ip_error, EACCES: prohibit route (ICMP 3/13)
    frag_needed = 4  # ip_forward: DF and too big (ICMP 3/4 with the MTU)
    sr_failed = 5  # ip_forward: strict source route through a gateway (ICMP 3/5)
    param_problem = 6  # ip_options_compile: malformed options (ICMP 12/0)
    source_route = 7  # ip_rcv_options: LSRR/SSRR with accept_source_route off
    srr_not_host = 8  # ip_options_rcv_srr: source route in a frame not for our MAC
    srr_route = 9  # ip_options_rcv_srr: a hop that is neither local nor unicast
    unknown_protocol = 10  # ip_local_deliver_finish: no handler (ICMP 3/2)
    neigh_table_full = 11  # no neighbour entry could be made: the table is full (ARP)
    frag_failed = 12  # ip_do_fragment refused (an MTU too small for the header)
    # fragments that left reassembly without completing (Reassembler.drops)
    reasm_malformed = 13
    reasm_bad_fragment = 14
    reasm_conflicting_end = 15
    reasm_overlap = 16
    reasm_duplicate = 17
    reasm_too_big = 18
    reasm_ecn = 19
    reasm_mem_limit = 20
    reasm_too_far = 21
    reasm_timeout = 22
    reasm_flush = 23  # still queued when a pcap replay ended: never timed out early
    internal_error = 24  # the worker raised on this packet (a bug: logged, never expected)
    # ARP frames (arp_rcv, arp_process) and packets held for their next hop's MAC
    arp_header = 25  # shorter than an Ethernet/IPv4 ARP message, or lengths not 6 and 4
    arp_unsupported = 26  # hardware type, protocol or operation not Ethernet/IPv4 request/reply
    arp_bad_target = 27  # the asked address is multicast or loopback
    neigh_queue_full = 28  # the oldest of a full hold queue (unres_qlen_bytes): unres_discards
    neigh_failed = 29  # its next hop never answered (ICMP host unreachable sent about it)
    neigh_flush = 30  # still held when a pcap replay ended: never failed early


class Icmp(IntEnum):
    """`/proc/net/snmp` Icmp: counters the router moves (the per-type ones are the
    kernel's IcmpMsg: InTypeN/OutTypeN, shown under their Icmp: names)."""

    InMsgs = 0
    InErrors = 1
    InCsumErrors = 2
    InDestUnreachs = 3
    InTimeExcds = 4
    InParmProbs = 5
    InSrcQuenchs = 6
    InRedirects = 7
    InEchos = 8
    InEchoReps = 9
    InTimestamps = 10
    InTimestampReps = 11
    InAddrMasks = 12
    InAddrMaskReps = 13
    OutMsgs = 14
    OutErrors = 15
    OutDestUnreachs = 16
    OutTimeExcds = 17
    OutParmProbs = 18
    OutSrcQuenchs = 19
    OutRedirects = 20
    OutEchos = 21
    OutEchoReps = 22
    OutTimestamps = 23
    OutTimestampReps = 24
    OutAddrMasks = 25
    OutAddrMaskReps = 26


class Udp(IntEnum):
    """`/proc/net/snmp` Udp: counters for datagrams to the router itself."""

    NoPorts = 0
    InErrors = 1
    InCsumErrors = 2
    IgnoredMulti = 3  # to a broadcast or multicast address: no socket, nothing said


class Tcp(IntEnum):
    """`/proc/net/snmp` Tcp: counters for segments to the router itself (no sockets:
    each well-formed one is answered with a reset)."""

    InErrs = 0
    InCsumErrors = 1
    OutRsts = 2
    InSegs = 3  # every segment in a frame for our MAC, counted "even if it's bad"
    OutSegs = 4  # the resets sent


class Unsent(IntEnum):
    """Why a packet the router originated (an ICMP error or reply, a TCP reset) was not
    sent. These are not received packets: they stay out of the accounting equations."""

    suppressed = 0  # icmp_send's rules (RFC 1812 4.3.2.7), or ip_options_echo refused
    ratelimited = 1  # icmp_ratelimit / ip_error's limit / redirect backoff
    no_route = 2  # no route back to the destination
    neigh_table_full = 3  # no neighbour entry could be made for the route back (table full)
    port_down = 4
    no_room = 5  # the route's MTU leaves no room for a quote (icmp_send sends nothing)
    pool_empty = 6
    ring_full = 7
    # held for the route back's next hop (ARP), then: (see SlowDrop.neigh_*)
    neigh_queue_full = 8
    neigh_failed = 9
    neigh_flush = 10


class Arp(IntEnum):
    """ARP and the neighbour table, as the slow path keeps them: the names of
    `/proc/net/stat/arp_cache` where the kernel counts the same thing, the ARP
    messages by kind otherwise."""

    allocs = 0  # entries made (a resolution started, a requester learned)
    destroys = 1  # entries removed (resolution or re-confirmation failed)
    res_failed = 2  # resolutions that failed (INCOMPLETE or PROBE to FAILED)
    unresolved_discards = 3  # held packets dropped from a full hold queue
    table_fulls = 4  # an entry could not be made: the table was full
    in_requests = 5  # ARP requests taken
    in_replies = 6  # ARP replies taken
    out_requests = 7  # broadcast requests sent (resolving)
    out_probes = 8  # unicast requests sent (re-confirming a known MAC)
    out_replies = 9  # replies sent for our addresses
    queued = 10  # packets in hold queues now, the router's own included (a level)
    forced_gc_runs = 11  # a new entry found the table full: FAILED entries were collected


class Reasm(IntEnum):
    """Reassembly memory, as levels the slow path sets (`Kernel.sync_reasm`): the
    kernel's `/proc/net/sockstat` FRAG: line (inuse, memory) and its ipfrag_*_thresh
    sysctls, with the high-water mark the kernel does not keep."""

    inuse = 0  # queues held now
    memory = 1  # bytes charged now (fqdir->mem: fragments' truesize and queues)
    memory_high = 2  # the most memory held since the start (Reassembler.mem_high)
    high_thresh = 3  # [reassembly] high_thresh: memory never stays above it
    low_thresh = 4  # [reassembly] low_thresh: where eviction stops


SECTIONS: tuple[type[IntEnum], ...] = (Snmp, Drop, Slow, Misc, SlowDrop, Icmp, Udp, Tcp,
                                       Unsent, Arp, Reasm)
_BASE: dict[type[IntEnum], int] = {}
_offset = 0
for _section in SECTIONS:
    _BASE[_section] = _offset
    _offset += len(_section)
# the per-port drop section: a Drop column per port, for every port a config may have
# (engine/shm/memory.py's MAX_PORTS, checked there: counters depend on nothing)
PORT_DROP_PORTS = 16
PORT_DROP_BASE = _offset
NCOUNTERS = _offset + PORT_DROP_PORTS * len(Drop)

SNMP_BASE = _BASE[Snmp]
DROP_BASE = _BASE[Drop]
SLOW_BASE = _BASE[Slow]
MISC_BASE = _BASE[Misc]
SLOWDROP_BASE = _BASE[SlowDrop]

# Icmp: counters by ICMP type (icmp_pointers / ICMPMSGIN_INC_STATS / icmp_out_count)
ICMP_IN = {0: Icmp.InEchoReps, 3: Icmp.InDestUnreachs, 4: Icmp.InSrcQuenchs,
           5: Icmp.InRedirects, 8: Icmp.InEchos, 11: Icmp.InTimeExcds, 12: Icmp.InParmProbs,
           13: Icmp.InTimestamps, 14: Icmp.InTimestampReps, 17: Icmp.InAddrMasks,
           18: Icmp.InAddrMaskReps}
ICMP_OUT = {0: Icmp.OutEchoReps, 3: Icmp.OutDestUnreachs, 4: Icmp.OutSrcQuenchs,
            5: Icmp.OutRedirects, 8: Icmp.OutEchos, 11: Icmp.OutTimeExcds,
            12: Icmp.OutParmProbs, 13: Icmp.OutTimestamps, 14: Icmp.OutTimestampReps,
            17: Icmp.OutAddrMasks, 18: Icmp.OutAddrMaskReps}


def index(member: IntEnum) -> int:
    """Column of a counter in a counters row."""
    return _BASE[type(member)] + int(member)


def port_drop_index(port: int, reason: Drop) -> int:
    """Column of the fast path's `reason` drops of frames received on `port`."""
    return PORT_DROP_BASE + port * len(Drop) + int(reason)


def port_drops(rows: np.ndarray, nports: int) -> dict[int, dict[str, int]]:
    """{port: {reason: count}} of the fast path's drops by ingress port, summed over the
    per-agent rows; only the reasons that moved."""
    total = rows.sum(axis=0, dtype=np.uint64)
    block = total[PORT_DROP_BASE: PORT_DROP_BASE + nports * len(Drop)].reshape(nports, len(Drop))
    return {p: {Drop(r).name: int(block[p, r]) for r in np.flatnonzero(block[p])}
            for p in range(nports)}


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
