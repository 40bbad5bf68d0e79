"""ICMP errors and echo replies for a run of packets at once: what `Kernel.ip_forward`/
`ip_error` and `icmp_send` do for a packet the fast path found to need an error (TTL
exceeded, fragmentation needed, an error route), and `icmp_rcv`/`icmp_echo` for an
echo request to us, over the pool rows of a burst.

Per packet, the Python path (kernel.py) costs some 20 µs, nearly all of it in the
interpreter: a `Packet`, a dozen calls, `struct` and `bytes` objects, a transmit
item. Here the same work is split by what it depends on:

    per burst     numba over the pool rows (`read_headers`, `echo_requests`): which
                  rows are plain IPv4 without options, their addresses, their
                  frame's packet type; which hold a whole echo request whose ICMP
                  checksum verifies
    per address   the routing answers (`RouteCache`, asked for the run's addresses
                  together): the route type of the destination (RTCF_BROADCAST,
                  RTCF_LOCAL), the output route back to the source, the source
                  address `__icmp_send` picks (`icmp_error_source`)
    per packet    numba (`may_send_errors`): the checks of `__icmp_send` and RFC 1812
                  §4.3.2.7, as `icmp.may_send_error`; then, in Python and in arrival
                  order, only what keeps state: `ip_error`'s per-source budget,
                  `icmp_ratelimit`/`icmp_global_allow` (`IcmpRateLimiter`) and the IP
                  ID (`IpIdGenerator`), the very methods the Python path calls
    per run       numba (`build_errors`, `build_echo_replies`): every answer's
                  Ethernet and IP header and ICMP message (an error quotes as much
                  of the original as fits in 576 bytes: `__icmp_send` +
                  `icmp_push_reply`; a reply is the request's message, type 0),
                  checksums included, into one block, handed to
                  `Output.transmit_rows`

Nothing but the cost differs from the packets going one at a time through
`Kernel.take` (`SlowPath.icmp_bursts = False`; tests/test_icmp_burst.py compares
frames, counters, rate-limiter and IP ID state over random bursts). For that a run
is only taken when no reassembly or neighbour timer falls due inside it, every
packet in it is answered by a route with its next hop's MAC (the neighbour table's
routes go one at a time: ARP may hold them) and, for a reply, in one frame (a
reply longer than the route's MTU is fragmented one at a time); a packet with
options (to echo), too short to read, an echo request to a broadcast or multicast
address, with a bad checksum, or a fragment goes one at a time. The clock moves
packet by packet as `Kernel.take` moves it, and what the run sends is queued where
the run stands among the burst's other output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit, types

from engine.counters import ICMP_OUT, Icmp, Misc, Slow, SlowDrop, Snmp, Unsent
from engine.pipeline.verdict import SLOW
from engine.proto import ETH_HLEN, IPHDR_LEN, IPPROTO_ICMP
from engine.shm.memory import NH_BROADCAST, NH_LOCAL
from engine.slowpath.icmp import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_ERROR_TYPES,
    ICMP_EXC_TTL,
    ICMP_FRAG_NEEDED,
    ICMP_HDR_LEN,
    ICMP_MAX_LEN,
    ICMP_PARAMETERPROB,
    ICMP_TIME_EXCEEDED,
    ICMP_TTL,
    INADDR_DUMMY,
    IPTOS_PREC_INTERNETCONTROL,
    IPTOS_TOS_MASK,
    NR_ICMP_TYPES,
    select_source,
)
from engine.slowpath.packet import OutRoute

if TYPE_CHECKING:
    from engine.slowpath.kernel import Kernel

# the Slow reasons answered here: (ICMP type, code, drop reason, ip_error's route)
ERRORS = {
    Slow.ttl_exceeded: (ICMP_TIME_EXCEEDED, ICMP_EXC_TTL, SlowDrop.ttl_exceeded, False),
    Slow.frag_needed: (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, SlowDrop.frag_needed, False),
    Slow.no_route: (ICMP_DEST_UNREACH, 0, SlowDrop.no_route, True),  # ICMP_NET_UNREACH
    Slow.unreachable: (ICMP_DEST_UNREACH, 1, SlowDrop.unreachable, True),  # HOST_UNREACH
    Slow.prohibit: (ICMP_DEST_UNREACH, 13, SlowDrop.prohibit, True),  # PKT_FILTERED
}
# by verdict code: type, code, route error (0/1); type 0 for codes not answered here
_BY_CODE = np.zeros((256, 3), dtype=np.int64)
for _reason, (_type, _code, _, _route) in ERRORS.items():
    _BY_CODE[SLOW + _reason] = (_type, _code, _route)
# by (type, code, route error): the number of the drop reason in _DROPS
_DROPS = [drop for _, _, drop, _ in ERRORS.values()]
_REASON_OF = np.zeros((NR_ICMP_TYPES + 1, 16, 2), dtype=np.int64)
for _n, (_type, _code, _, _route) in enumerate(ERRORS.values()):
    _REASON_OF[_type, _code, int(_route)] = _n
ERROR_TYPES_MASK = sum(1 << t for t in ICMP_ERROR_TYPES)  # icmp_pointers[].error
FRAME_MAX = ETH_HLEN + ICMP_MAX_LEN  # the longest error frame
# what an error counts once it leaves (`ip_local_out`, `icmp_out_count`), by type
SENT = {t: (Misc.created, Snmp.OutRequests, Icmp.OutMsgs, ICMP_OUT[t])
        for t in (ICMP_TIME_EXCEEDED, ICMP_DEST_UNREACH, ICMP_ECHOREPLY)}
LOCAL = SLOW + Slow.local
_CANDIDATE = (_BY_CODE[:, 0] != 0) | (np.arange(256) == LOCAL)  # by verdict code

_u8_2d = types.Array(types.uint8, 2, "C")
_u8_2d_any = types.Array(types.uint8, 2, "A")
_i64 = types.Array(types.int64, 1, "C")
_u32 = types.Array(types.uint32, 1, "C")
_b1 = types.Array(types.boolean, 1, "C")
_OPTS = {"cache": True, "nogil": True}


@njit(types.Tuple((_b1, _u32, _u32, _b1))(_u8_2d_any, _i64, _i64, _i64, _u8_2d_any), **_OPTS)
def read_headers(data, bufs, lengths, in_ports, port_macs):  # type: ignore[no-untyped-def]
    """For each pool row (a frame trimmed to the IP total length): is it an IPv4
    header without options, whole (`plain`); its source and destination; was its
    frame addressed to the ingress port's MAC (`eth_type_trans`: PACKET_HOST)."""
    n = len(bufs)
    plain = np.zeros(n, dtype=np.bool_)
    saddr = np.zeros(n, dtype=np.uint32)
    daddr = np.zeros(n, dtype=np.uint32)
    host = np.zeros(n, dtype=np.bool_)
    for k in range(n):
        if lengths[k] < ETH_HLEN + IPHDR_LEN:
            continue
        f = data[bufs[k]]
        if f[ETH_HLEN] != 0x45:
            continue
        plain[k] = True
        ip = ETH_HLEN
        saddr[k] = ((np.uint32(f[ip + 12]) << 24) | (np.uint32(f[ip + 13]) << 16)
                    | (np.uint32(f[ip + 14]) << 8) | np.uint32(f[ip + 15]))
        daddr[k] = ((np.uint32(f[ip + 16]) << 24) | (np.uint32(f[ip + 17]) << 16)
                    | (np.uint32(f[ip + 18]) << 8) | np.uint32(f[ip + 19]))
        mac = port_macs[in_ports[k]]
        same = True
        for b in range(6):
            if f[b] != mac[b]:
                same = False
                break
        host[k] = same
    return plain, saddr, daddr, host


@njit(_b1(_u8_2d_any, _i64, _i64, _b1, _b1, _i64), **_OPTS)
def may_send_errors(data, bufs, lengths, host, dst_broadcast, icmp_type):  # type: ignore[no-untyped-def]
    """`icmp.may_send_error` for each row (its IP packet: the frame after the
    Ethernet header), with min_icmp_len 1 as `Kernel.icmp_send` calls it: the kernel
    reads only the inner type byte (`__icmp_send`)."""
    n = len(bufs)
    ok = np.zeros(n, dtype=np.bool_)
    for k in range(n):
        ip_len = lengths[k] - ETH_HLEN
        if ip_len < IPHDR_LEN or not host[k] or dst_broadcast[k]:
            continue
        f = data[bufs[k]]
        ip = ETH_HLEN
        daddr_top = f[ip + 16]
        if (f[ip + 16] == 0xFF and f[ip + 17] == 0xFF and f[ip + 18] == 0xFF
                and f[ip + 19] == 0xFF) or 224 <= daddr_top <= 239:
            continue  # multicast or limited broadcast destination
        if ((np.int64(f[ip + 6]) << 8) | f[ip + 7]) & 0x1FFF:
            continue  # RFC 1122 3.2.2: only about the first fragment
        top = f[ip + 12]
        if ((top == 0 and f[ip + 13] == 0 and f[ip + 14] == 0 and f[ip + 15] == 0)
                or (top == 0xFF and f[ip + 13] == 0xFF and f[ip + 14] == 0xFF
                    and f[ip + 15] == 0xFF)
                or top == 127 or 224 <= top <= 239):
            continue  # a martian source: not a unique host (RFC 1812 §4.3.2.7)
        t = icmp_type[k]
        if (ERROR_TYPES_MASK >> t) & 1 and f[ip + 9] == IPPROTO_ICMP:
            ihl = (f[ip] & 0xF) * 4
            tot_len = (np.int64(f[ip + 2]) << 8) | f[ip + 3]
            end = max(ihl, min(tot_len, ip_len))
            if end - ihl < 1:
                continue  # an empty ICMP part
            inner = f[ip + ihl]
            if inner > NR_ICMP_TYPES or (ERROR_TYPES_MASK >> inner) & 1:
                continue  # never an error about an error (RFC 1122 3.2.2)
        ok[k] = True
    return ok


@njit(inline="always")
def _sum16(buf, start, length):  # type: ignore[no-untyped-def]
    """The one's complement sum (RFC 1071) of buf[start:start+length], an odd length
    padded with a zero byte, folded to 16 bits."""
    total = np.int64(0)
    end = start + length - 1
    p = start
    while p < end:
        total += (np.int64(buf[p]) << 8) | buf[p + 1]
        p += 2
    if length & 1:
        total += np.int64(buf[start + length - 1]) << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@njit(inline="always")
def _icmp_ip_header(o, ip, tos, total, ip_id):  # type: ignore[no-untyped-def]
    """The IPv4 header of an ICMP message we send (icmp_push_reply's ip_build_and_send):
    no options, no fragment bits, TTL 64, the checksum and addresses left to the caller."""
    o[ip] = 0x45
    o[ip + 1] = tos
    o[ip + 2] = total >> 8
    o[ip + 3] = total & 0xFF
    o[ip + 4] = (ip_id >> 8) & 0xFF
    o[ip + 5] = ip_id & 0xFF
    o[ip + 6] = 0
    o[ip + 7] = 0
    o[ip + 8] = ICMP_TTL
    o[ip + 9] = IPPROTO_ICMP
    o[ip + 10] = 0
    o[ip + 11] = 0


@njit(inline="always")
def _ip_checksum(o, ip):  # type: ignore[no-untyped-def]
    check = ~_sum16(o, ip, IPHDR_LEN) & 0xFFFF
    o[ip + 10] = check >> 8
    o[ip + 11] = check & 0xFF


@njit(types.void(_u8_2d_any, _i64, _i64, _u8_2d, _i64, _u8_2d, _i64, _i64, _i64, _i64, _i64,
                 _i64, _i64, _i64), **_OPTS)
def build_errors(data, bufs, lengths, out, out_len, eth, eth_row, icmp_type, icmp_code,  # type: ignore[no-untyped-def]
                 info, src, dst, ip_id, room):
    """Frame k of `out` (its length in `out_len`): the ICMP error about pool row
    bufs[k] (`icmp.build_error` without echoed options, behind the Ethernet header
    eth[eth_row[k]]: next hop, our MAC, IPv4). TTL 64, no DF, TOS
    `0xc0 | (orig_tos & 0x1e)`, the quote cut to `room` bytes."""
    for k in range(len(bufs)):
        f = data[bufs[k]]
        o = out[k]
        quote = min(lengths[k] - ETH_HLEN, room[k])
        for b in range(12):
            o[b] = eth[eth_row[k], b]
        o[12] = 0x08
        o[13] = 0x00
        ip = ETH_HLEN
        total = IPHDR_LEN + ICMP_HDR_LEN + quote
        _icmp_ip_header(o, ip, IPTOS_PREC_INTERNETCONTROL | (f[ETH_HLEN + 1] & IPTOS_TOS_MASK),
                        total, ip_id[k])
        for b in range(4):
            o[ip + 12 + b] = (src[k] >> (24 - 8 * b)) & 0xFF
            o[ip + 16 + b] = (dst[k] >> (24 - 8 * b)) & 0xFF
        _ip_checksum(o, ip)
        icmp = ip + IPHDR_LEN
        word = info[k] & 0xFFFFFFFF
        if icmp_type[k] == ICMP_PARAMETERPROB:
            word = (info[k] & 0xFF) << 24  # htonl(pp_ptr << 24)
        o[icmp] = icmp_type[k]
        o[icmp + 1] = icmp_code[k]
        o[icmp + 2] = 0
        o[icmp + 3] = 0
        for b in range(4):
            o[icmp + 4 + b] = (word >> (24 - 8 * b)) & 0xFF
        for b in range(quote):
            o[icmp + ICMP_HDR_LEN + b] = f[ETH_HLEN + b]
        check = ~_sum16(o, icmp, ICMP_HDR_LEN + quote) & 0xFFFF
        o[icmp + 2] = check >> 8
        o[icmp + 3] = check & 0xFF
        out_len[k] = ETH_HLEN + total


@njit(_b1(_u8_2d_any, _i64, _i64), **_OPTS)
def echo_requests(data, bufs, lengths):  # type: ignore[no-untyped-def]
    """Which rows (plain IPv4 headers) hold a whole echo request that `icmp_rcv`
    answers: ICMP, not a fragment (`ip_local_deliver` would reassemble), an ICMP
    header of 8 bytes at least, type 8, a checksum that verifies over the ICMP part
    (`skb_checksum_simple_validate`), and (as the fast path trims frames) no byte
    beyond the total length."""
    n = len(bufs)
    ok = np.zeros(n, dtype=np.bool_)
    for k in range(n):
        ip_len = lengths[k] - ETH_HLEN
        f = data[bufs[k]]
        ip = ETH_HLEN
        tot_len = (np.int64(f[ip + 2]) << 8) | f[ip + 3]
        if (ip_len < IPHDR_LEN + ICMP_HDR_LEN or tot_len != ip_len or f[ip + 9] != IPPROTO_ICMP
                or ((np.int64(f[ip + 6]) << 8) | f[ip + 7]) & 0x3FFF
                or f[ip + IPHDR_LEN] != ICMP_ECHO):
            continue
        ok[k] = _sum16(f, ip + IPHDR_LEN, ip_len - IPHDR_LEN) == 0xFFFF
    return ok


@njit(types.void(_u8_2d_any, _i64, _i64, _u8_2d, _i64, _u8_2d, _i64, _i64), **_OPTS)
def build_echo_replies(data, bufs, lengths, out, out_len, eth, eth_row, ip_id):  # type: ignore[no-untyped-def]
    """Frame k of `out`: the echo reply to the request in pool row bufs[k]
    (`icmp.build_echo_reply` without echoed options, from the address the request
    was sent to, behind the Ethernet header eth[eth_row[k]]): TTL 64, the request's
    TOS, no DF, the request's ICMP message with type 0 and its checksum redone."""
    for k in range(len(bufs)):
        f = data[bufs[k]]
        o = out[k]
        length = lengths[k]
        for b in range(12):
            o[b] = eth[eth_row[k], b]
        o[12] = 0x08
        o[13] = 0x00
        ip = ETH_HLEN
        total = length - ETH_HLEN
        _icmp_ip_header(o, ip, f[ip + 1], total, ip_id[k])
        for b in range(4):
            o[ip + 12 + b] = f[ip + 16 + b]  # from the address it was sent to
            o[ip + 16 + b] = f[ip + 12 + b]
        _ip_checksum(o, ip)
        icmp = ip + IPHDR_LEN
        for b in range(icmp, length):
            o[b] = f[b]
        o[icmp] = ICMP_ECHOREPLY
        o[icmp + 2] = 0
        o[icmp + 3] = 0
        check = ~_sum16(o, icmp, length - icmp) & 0xFFFF
        o[icmp + 2] = check >> 8
        o[icmp + 3] = check & 0xFF
        out_len[k] = length


class IcmpRuns:
    """ICMP errors and echo replies for runs of a burst's packets, over `kernel`'s
    state."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.mem = kernel.mem
        self.t = kernel.t
        mac = np.zeros((max(1, len(kernel.port_mac)), 8), dtype=np.uint8)
        for p, m in enumerate(kernel.port_mac):
            mac[p, :6] = np.frombuffer(m, dtype=np.uint8)
        self.port_macs = mac
        # a frame longer than a pool buffer would be refused by `Output.transmit`
        self.usable = FRAME_MAX <= self.mem.geometry.bufsize

    def candidates(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Which of a burst's pool rows (the ones not taken whole) a run may take: an
        error reason and a plain IPv4 header, or a whole echo request to us. Returns
        that mask with the rows' pool buffers, lengths, verdict codes, addresses,
        packet type (PACKET_HOST) and which are echo requests; the mask alone when
        none can be."""
        mem = self.mem
        codes = mem.code[rows].astype(np.int64)
        if not self.usable or not _CANDIDATE[codes].any():  # a burst of other work
            return (np.zeros(len(rows), dtype=bool),)
        bufs = rows.astype(np.int64)
        lengths = mem.length[rows].astype(np.int64)
        plain, saddr, daddr, host = read_headers(mem.data, bufs, lengths,
                                                 mem.port[rows].astype(np.int64),
                                                 self.port_macs)
        echo = np.zeros(len(rows), dtype=bool)
        local = np.flatnonzero(plain & (codes == LOCAL))
        if len(local):
            echo[local] = echo_requests(mem.data, bufs[local], lengths[local])
        mask = plain & (_BY_CODE[codes, 0] != 0) | echo
        return mask, bufs, lengths, codes, saddr, daddr, host, echo

    def take(self, rows: np.ndarray, bufs: np.ndarray, lengths: np.ndarray,
             codes: np.ndarray, saddr: np.ndarray, daddr: np.ndarray, host: np.ndarray,
             echo: np.ndarray) -> int:
        """Answer the first packets of a run of candidates (the arrays describe the
        run, in arrival order) as `Kernel.take` would, one after the other: as many
        as are of the first one's kind (errors, or echo requests), no timer falls due
        among, and a route with a MAC answers. Returns how many were taken (0: the
        first is for `Kernel.take`)."""
        k = self.kernel
        routes = k.routes
        if routes.stale():
            routes.forget()  # as Kernel.take does before each packet
        mem = self.mem
        other = np.flatnonzero(echo != echo[0])
        n = int(other[0]) if len(other) else len(rows)
        stamps = mem.ts[rows[:n]]
        clocks = np.maximum.accumulate(np.maximum(stamps, k.clock))
        # no reassembly or neighbour timer due before the last packet taken
        n = int(np.searchsorted(clocks, k.next_timer(), side="left"))
        if n == 0:
            return 0
        if echo[0]:
            n = self._echoes(n, rows, bufs, lengths, saddr, daddr, clocks)
        else:
            n = self._errors(n, rows, bufs, lengths, codes, saddr, daddr, host, clocks)
        if n:
            k.clock = int(clocks[n - 1])
            k.neigh.tick(k.clock)  # nothing due: as after each Kernel.take
        return n

    def _routes_back(self, addrs: list[int], fits: np.ndarray | None = None
                     ) -> tuple[int, dict[int, OutRoute | Unsent]]:
        """The output routes back to `addrs` (the packets' sources), as far as each
        has its next hop's MAC (the neighbour table's may hold it for ARP) and, where
        `fits` gives each packet's answer length, leaves it whole: how many packets
        that is, and the routes."""
        routes = self.kernel.routes
        mtu = self.t.port_mtu
        back: dict[int, OutRoute | Unsent] = {}
        for j, a in enumerate(addrs):
            route = back.get(a)
            if route is None:
                route = back[a] = routes.output_route(a)
            if isinstance(route, OutRoute) and (
                    route.mac is None or (fits is not None and fits[j] > mtu[route.port])):
                return j, back
        return len(addrs), back

    def _echoes(self, n: int, rows: np.ndarray, bufs: np.ndarray, lengths: np.ndarray,
                saddr: np.ndarray, daddr: np.ndarray, clocks: np.ndarray) -> int:
        """Echo requests to a unicast address of ours (`ip_local_deliver`, `icmp_rcv`,
        `icmp_echo`): the first `n` of the run, as far as they are answered here."""
        k = self.kernel
        t = self.t
        # icmp_rcv ignores echo requests to a broadcast or multicast address
        kind = t.nh_type[np.array(k.routes.lookups(daddr[:n].tolist()), dtype=np.int64)]
        odd = np.flatnonzero((kind != NH_LOCAL) | (daddr[:n] >> 28 == 0xE)
                             | (daddr[:n] == 0xFFFFFFFF))
        if len(odd):
            n = int(odd[0])
        src_list = saddr[:n].tolist()
        n, back = self._routes_back(src_list, lengths[:n] - ETH_HLEN)
        if n == 0:
            return 0
        limiter = k.limiter
        limited = (limiter.global_limit or limiter.timeout) and limiter.is_limited(
            ICMP_ECHOREPLY, 0)
        next_id = k.ids.next_id
        no_route: dict[Unsent, int] = {}
        ratelimited = 0
        built: list[int] = []
        ids: list[int] = []
        daddr_l = daddr[:n].tolist()
        clock_l = clocks[:n].tolist()
        failed = 0
        for j in range(n):
            try:
                dst = src_list[j]
                route = back[dst]
                if not isinstance(route, OutRoute):
                    no_route[route] = no_route.get(route, 0) + 1
                    continue
                if limited and not limiter.allow(dst, ICMP_ECHOREPLY, 0, clock_l[j]):
                    ratelimited += 1  # never: echo replies are not in the ratemask
                    continue
                built.append(j)
                ids.append(next_id(dst, daddr_l[j], IPPROTO_ICMP, clock_l[j]))
            except Exception:  # as Kernel.take: count, say, go on
                failed += 1
                k.drop(SlowDrop.internal_error)
                k.log_error()
        delivered = n - failed
        for counter in (Icmp.InMsgs, Icmp.InEchos, Snmp.InDelivers, Misc.delivered):
            k.count(counter, delivered)
        for reason, m in (*no_route.items(), (Unsent.ratelimited, ratelimited)):
            if m:
                k.count(reason, m)
        if built:
            try:
                self._send_echoes(np.array(built, dtype=np.int64), rows, bufs, lengths,
                                  saddr, ids, back)
            except Exception:  # every packet is counted: this loses only the replies
                k.log_error()
        return n

    def _send_echoes(self, built: np.ndarray, rows: np.ndarray, bufs: np.ndarray,
                     lengths: np.ndarray, saddr: np.ndarray, ids: list[int],
                     back: dict[int, OutRoute | Unsent]) -> None:
        """Build the run's echo replies in one call and queue them."""
        k = self.kernel
        eth, eth_row, port = self._ethernet(saddr[built].tolist(), back)
        m = len(built)
        width = int(lengths[built].max())
        out = np.empty((m, width), dtype=np.uint8)
        out_len = np.empty(m, dtype=np.int64)
        build_echo_replies(self.mem.data, bufs[built], lengths[built], out, out_len, eth,
                           eth_row, np.array(ids, dtype=np.int64))
        cause = rows[built]
        k.out.transmit_rows(out, out_len, port, self.mem.ts[cause], self.mem.seq[cause],
                            [SENT[ICMP_ECHOREPLY]] * m, k._not_sent)

    def _ethernet(self, to: list[int], back: dict[int, OutRoute | Unsent]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The Ethernet headers (next hop, our MAC) of the routes back to `to`, which
        row of them each packet's answer takes, and its egress port."""
        port_mac = self.kernel.port_mac
        where = {addr: e for e, addr in enumerate(dict.fromkeys(to))}
        routes = [back[addr] for addr in where]
        eth = np.array([list(r.mac + port_mac[r.port]) for r in routes],  # type: ignore[union-attr]
                       dtype=np.uint8)
        eth_row = np.array([where[a] for a in to], dtype=np.int64)
        port = np.array([r.port for r in routes], dtype=np.int64)[eth_row]  # type: ignore[union-attr]
        return eth, eth_row, port

    def _errors(self, n: int, rows: np.ndarray, bufs: np.ndarray, lengths: np.ndarray,
                codes: np.ndarray, saddr: np.ndarray, daddr: np.ndarray, host: np.ndarray,
                clocks: np.ndarray) -> int:
        """ICMP errors (`ip_forward`'s, `ip_error`'s): the first `n` of the run, as far
        as they are answered here."""
        k = self.kernel
        routes = k.routes
        mem = self.mem
        t = self.t
        # the routing answers: the destination's route type, the route back
        dst_nh = np.array(routes.lookups(daddr[:n].tolist()), dtype=np.int64)
        dst_kind = t.nh_type[dst_nh]
        src_list = saddr[:n].tolist()
        n, back = self._routes_back(src_list)
        if n == 0:
            return 0
        kinds = _BY_CODE[codes[:n]]
        icmp_type = np.ascontiguousarray(kinds[:, 0])
        dst_kind = dst_kind[:n]
        may = may_send_errors(mem.data, bufs[:n], lengths[:n], host[:n],
                              dst_kind == NH_BROADCAST, icmp_type)
        # fragmentation needed: the MTU of the egress port of the forward route
        info = np.zeros(n, dtype=np.int64)
        frag = np.flatnonzero(icmp_type == ICMP_DEST_UNREACH)
        frag = frag[kinds[frag, 1] == ICMP_FRAG_NEEDED]
        if len(frag):
            pairs = list(zip(saddr[frag].tolist(), daddr[frag].tolist(), strict=True))
            unique = list(dict.fromkeys(pairs))
            nh_of = dict(zip(unique, routes.nexthops(unique), strict=True))
            nh = np.array([nh_of[p] for p in pairs], dtype=np.int64)
            info[frag] = t.port_mtu[t.nh_port[nh]]
        self._decide_and_send(n, rows, bufs, lengths, kinds, saddr, daddr, clocks, dst_kind,
                              may, info, back, src_list)
        return n

    def _decide_and_send(self, n: int, rows: np.ndarray, bufs: np.ndarray,
                         lengths: np.ndarray, kinds: np.ndarray, saddr: np.ndarray,
                         daddr: np.ndarray, clocks: np.ndarray, dst_kind: np.ndarray,
                         may: np.ndarray, info: np.ndarray,
                         back: dict[int, OutRoute | Unsent], src_list: list[int]) -> None:
        """Per packet in arrival order, what keeps state (`ip_error`'s budget, the rate
        limits, the IP ID), then every error of the run built at once and queued."""
        k = self.kernel
        limiter = k.limiter
        next_id = k.ids.next_id
        allow = limiter.allow
        allow_route_error = limiter.allow_route_error
        # `allow` keeps no state, and says yes, for a type it does not limit or when
        # both its buckets are off: then it need not be asked
        stateless = not limiter.global_limit and not limiter.timeout
        limited = {key: not stateless and limiter.is_limited(key[0], key[1])
                   for key in set(map(tuple, kinds.tolist()))}
        ratelimit = k.ratelimit
        # per destination (the original source): its route back, the source address
        # `icmp_error_source` gives a packet not for us, the room for the quote
        dests = self._destinations(back)
        n_ratelimited = n_suppressed = n_no_room = 0
        no_route: dict[Unsent, int] = {}
        failed: list[int] = []
        built: list[int] = []
        srcs: list[int] = []
        ids: list[int] = []
        kinds_l = kinds.tolist()
        clock_l = clocks[:n].tolist()
        local_l = (dst_kind == NH_LOCAL).tolist()
        may_l = may.tolist()
        daddr_l = daddr[:n].tolist()
        for j in range(n):
            icmp_type, code, route_error = kinds_l[j]
            try:
                dst = src_list[j]
                clock = clock_l[j]
                if route_error and ratelimit and not allow_route_error(dst, clock):
                    n_ratelimited += 1
                    continue
                if not may_l[j]:
                    n_suppressed += 1
                    continue
                route, src, room = dests[dst]
                if route is not None:
                    no_route[route] = no_route.get(route, 0) + 1
                    continue
                if limited[(icmp_type, code, route_error)] and not allow(dst, icmp_type,
                                                                         code, clock):
                    n_ratelimited += 1
                    continue
                if local_l[j]:
                    src = daddr_l[j]  # a packet for us: from the address it was sent to
                ip_id = next_id(dst, src, IPPROTO_ICMP, clock)
                if room <= IPHDR_LEN:
                    n_no_room += 1
                    continue
                built.append(j)
                srcs.append(src)
                ids.append(ip_id)
            except Exception:  # as Kernel.take: count, say, go on
                failed.append(j)
                k.drop(SlowDrop.internal_error)
                k.log_error()
        self._count(kinds, failed, n_ratelimited, n_suppressed, n_no_room, no_route)
        if built:  # every packet is counted: a failure here loses only the frames
            try:
                self._send(np.array(built, dtype=np.int64), rows, bufs, lengths, kinds, info,
                           saddr, srcs, ids, dests, back)
            except Exception:
                k.log_error()

    def _destinations(self, back: dict[int, OutRoute | Unsent]
                      ) -> dict[int, tuple[Unsent | None, int, int]]:
        """For each address errors go back to: why none can go there (None: they can),
        the source address of an error about a packet not for us (`icmp_error_source`)
        and the room left for the quote by the route's MTU."""
        k = self.kernel
        dests: dict[int, tuple[Unsent | None, int, int]] = {}
        for addr, route in back.items():
            if not isinstance(route, OutRoute):
                dests[addr] = (route, 0, 0)
                continue
            src = select_source(k.port_addrs[route.port], route.target,
                                other_addrs=k.all_addrs) or INADDR_DUMMY
            room = (min(int(self.t.port_mtu[route.port]), ICMP_MAX_LEN) - IPHDR_LEN
                    - ICMP_HDR_LEN)
            dests[addr] = (None, src, room)
        return dests

    def _count(self, kinds: np.ndarray, failed: list[int], ratelimited: int, suppressed: int,
               no_room: int, no_route: dict[Unsent, int]) -> None:
        """The run's counts: every packet dropped with its reason (but those that
        failed: internal errors), and why errors were not sent."""
        k = self.kernel
        reasons = _REASON_OF[kinds[:, 0], kinds[:, 1], kinds[:, 2]]
        if failed:
            reasons = np.delete(reasons, failed)
        for r, m in zip(*np.unique(reasons, return_counts=True), strict=True):
            k.count(_DROPS[r], int(m))
            k.count(Misc.dropped, int(m))
        for reason, m in ((Unsent.ratelimited, ratelimited), (Unsent.suppressed, suppressed),
                          (Unsent.no_room, no_room), *no_route.items()):
            if m:
                k.count(reason, m)

    def _send(self, built: np.ndarray, rows: np.ndarray, bufs: np.ndarray, lengths: np.ndarray,
              kinds: np.ndarray, info: np.ndarray, saddr: np.ndarray, srcs: list[int],
              ids: list[int], dests: dict[int, tuple[Unsent | None, int, int]],
              back: dict[int, OutRoute | Unsent]) -> None:
        """Build the run's errors in one call and queue them for the end of the burst,
        each with its cause's time and number."""
        k = self.kernel
        to = saddr[built].tolist()
        eth, eth_row, port = self._ethernet(to, back)
        room = np.array([dests[a][2] for a in dict.fromkeys(to)], dtype=np.int64)[eth_row]
        m = len(built)
        out = np.empty((m, FRAME_MAX), dtype=np.uint8)
        out_len = np.empty(m, dtype=np.int64)
        icmp_type = np.ascontiguousarray(kinds[built, 0])
        build_errors(self.mem.data, bufs[built], lengths[built], out, out_len, eth, eth_row,
                     icmp_type, np.ascontiguousarray(kinds[built, 1]), info[built],
                     np.array(srcs, dtype=np.int64), saddr[built].astype(np.int64),
                     np.array(ids, dtype=np.int64), room)
        cause = rows[built]
        k.out.transmit_rows(out, out_len, port, self.mem.ts[cause], self.mem.seq[cause],
                            [SENT[t] for t in icmp_type.tolist()], k._not_sent)


