"""IPv4 options on the slow path, with the semantics of the kernel's net/ipv4/ip_options.c.

Pure functions over bytes, called once per packet by the slow-path worker:

- `compile_options`: what `ip_rcv_options` does on receive: `__ip_options_compile`
  (validate, fill in record route and timestamps), the `accept_source_route` switch,
  and `ip_options_rcv_srr` (source routes). Returns `Options` (the kernel's
  `struct ip_options` plus the header as the kernel leaves it), `ParamProblem`
  (ICMP 12/0 with the kernel's `pp_ptr`), or `Drop` (silently dropped).
- `forward_options`: `ip_forward_options`, after the route is known: the egress
  address goes into record route and into the source-route slot, then `ip_send_check`.
- `echo_options`: `__ip_options_echo`, the options an ICMP error or reply carries
  back; `EchoedOptions.build` is `ip_options_build` for that reply.
- `fragment_options`: `ip_options_fragment`, the options of the second and later
  fragments.

Offsets (`Options.rr`, `.ts`, `.srr`, `ParamProblem.pointer`) count from the first
byte of the IP header, as the kernel's do; 0 means "absent". Addresses are ints in
host byte order. Times are milliseconds since the Unix epoch; options carry the
milliseconds since midnight UT (RFC 791), as `inet_current_timestamp` writes them.

What the kernel writes where (checked against Linux 6.18, see KERNEL-NOTES.md):
at receive time `__ip_options_compile` writes the *incoming* address
(`fib_compute_spec_dst`: the packet's destination when it is for us, else the
address the router would use towards the packet's source) into record route and
timestamp-with-address, and writes every timestamp. `ip_forward_options` then
overwrites the record-route slot with the *outgoing* address. ICMP errors quote the
header as it is between the two, with its original checksum: the kernel does not
recompute it after compiling (only `ip_forward_options` calls `ip_send_check`).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field

from engine.pipeline.checksum import set_ip_checksum
from engine.proto import IPHDR_LEN
from engine.shm.memory import NH_LOCAL, NH_UNICAST

# Option types (include/uapi/linux/ip.h). Bit 7 of the type is the "copied" flag.
IPOPT_END = 0
IPOPT_NOOP = 1
IPOPT_RR = 7
IPOPT_TIMESTAMP = 68
IPOPT_SEC = 130
IPOPT_LSRR = 131
IPOPT_CIPSO = 134
IPOPT_SID = 136
IPOPT_SSRR = 137
IPOPT_RA = 148
IPOPT_COPIED = 0x80

# Timestamp flags (low nibble of the option's fourth byte; RFC 791).
IPOPT_TS_TSONLY = 0
IPOPT_TS_TSANDADDR = 1
IPOPT_TS_PRESPEC = 3

MS_PER_DAY = 86_400_000
# `ip_options_rcv_srr` answers a strict source route through a router that is not
# the packet's destination with a parameter problem at this fixed pointer, wherever
# the option is (the kernel's `htonl(16<<24)`: the byte after the IP header's
# destination address). KERNEL-NOTES.md saw it on 6.18.
SSRR_NOT_LOCAL_POINTER = 16


@dataclass
class Options:
    """The kernel's `struct ip_options` after receive, and the header it describes.

    `header` is the IP header (IHL*4 bytes) as `ip_rcv_options` leaves it: record
    route and timestamps filled in, bytes after an end-of-options byte zeroed, the
    destination address replaced when a source route hops through our own
    addresses. Its checksum is the one the packet came with (see the module doc).
    """

    header: bytes
    optlen: int = 0
    srr: int = 0  # offset of LSRR/SSRR
    is_strictroute: bool = False
    srr_is_hit: bool = False  # the next hop comes from the source route
    nexthop: int = 0  # that next hop (valid when srr_is_hit)
    rr: int = 0
    rr_needaddr: bool = False  # we took a record-route slot
    ts: int = 0
    ts_needtime: bool = False  # we stamped a time
    ts_needaddr: bool = False  # we stamped an address
    router_alert: int = 0  # offset of a router alert with value 0
    cipso: int = 0
    end: int = 0  # offset of the end-of-options byte
    is_changed: bool = False
    # The local table the options were compiled against (prespecified timestamps);
    # echo_options uses it too.
    local_addrs: Container[int] = field(default=frozenset(), repr=False, compare=False)

    @property
    def options(self) -> bytes:
        return self.header[IPHDR_LEN:]


@dataclass(frozen=True)
class ParamProblem:
    """Malformed options: ICMP parameter problem (12/0) pointing at `pointer`.

    `header` and `opts` are what the kernel has when it calls `icmp_send`: the header
    as far as compilation got (options before the bad one already filled in) and
    the options compiled so far, which `echo_options` turns into the error's options.
    """

    pointer: int
    header: bytes
    opts: Options


@dataclass(frozen=True)
class Drop:
    """Dropped without an ICMP answer. `reason` names the kernel's check."""

    reason: str


# Drop reasons
DROP_SOURCE_ROUTE = "source_route"  # accept_source_route = 0 (ip_rcv_options)
DROP_SRR_NOT_HOST = "srr_not_host"  # source route in a frame not for our MAC
DROP_SRR_ROUTE = "srr_route"  # destination (or a source-route hop) neither local nor unicast


def _addr(buf: bytes | bytearray, off: int) -> int:
    return int.from_bytes(buf[off : off + 4], "big")


def _put_addr(buf: bytearray, off: int, addr: int) -> None:
    buf[off : off + 4] = (addr & 0xFFFFFFFF).to_bytes(4, "big")


def midnight_ms(now_ms: int) -> int:
    """`inet_current_timestamp`: milliseconds since midnight UT."""
    return now_ms % MS_PER_DAY


def addr_is_unicast(addr: int, local_addrs: Container[int]) -> bool:
    """`inet_addr_type(net, addr) == RTN_UNICAST`: the address is neither ours nor a
    broadcast/multicast one. The kernel looks in its local table, which holds our
    addresses, our subnets' broadcast addresses and 127.0.0.0/8; 0.0.0.0/8 and
    255.255.255.255 count as broadcast, 224.0.0.0/4 as multicast."""
    top = addr >> 24
    if top == 0 or addr == 0xFFFFFFFF or top == 127 or 224 <= top <= 239:
        return False
    return addr not in local_addrs


def _martian_destination(addr: int) -> bool:
    """What `ip_route_input` refuses (or routes as broadcast/multicast) before any
    FIB lookup: 0.0.0.0, loopback, multicast, limited broadcast."""
    top = addr >> 24
    return addr == 0 or top == 127 or 224 <= top <= 239 or addr == 0xFFFFFFFF


def _compile(h: bytearray, opts: Options, spec_dst: int, now_ms: int,
             local_addrs: Container[int]) -> int | None:
    """`__ip_options_compile` on the receive path (skb and its route present).

    Edits `h` in place and fills `opts`; returns the offending byte's offset (the
    kernel's `pp_ptr - iph`) or None when the options are well formed.
    """
    end = IPHDR_LEN + opts.optlen
    p = IPHDR_LEN
    while p < end:
        left = end - p
        kind = h[p]
        if kind == IPOPT_END:
            # RFC 791 leaves the bytes after END undefined; the kernel zeroes them.
            opts.end = p
            for q in range(p + 1, end):  # slow path: one packet's option bytes
                if h[q] != IPOPT_END:
                    h[q] = IPOPT_END
                    opts.is_changed = True
            return None
        if kind == IPOPT_NOOP:
            p += 1
            continue
        if left < 2:  # a type byte with no room for its length byte
            return p
        optlen = h[p + 1]
        if optlen < 2 or optlen > left:  # bad length, or running past the header
            return p
        if kind in (IPOPT_SSRR, IPOPT_LSRR):
            if optlen < 3:
                return p + 1
            if h[p + 2] < 4:
                return p + 2
            if opts.srr:  # RFC 1812 5.2.4.1: at most one source route
                return p
            opts.is_strictroute = kind == IPOPT_SSRR
            opts.srr = p
        elif kind == IPOPT_RR:
            if opts.rr:
                return p
            if optlen < 3:
                return p + 1
            ptr = h[p + 2]
            if ptr < 4:
                return p + 2
            if ptr <= optlen:  # room left: take the next slot (a full one stays as is)
                if ptr + 3 > optlen:
                    return p + 2
                _put_addr(h, p + ptr - 1, spec_dst)
                opts.is_changed = True
                h[p + 2] = ptr + 4
                opts.rr_needaddr = True
            opts.rr = p
        elif kind == IPOPT_TIMESTAMP:
            if opts.ts:
                return p
            if optlen < 4:
                return p + 1
            ptr = h[p + 2]
            if ptr < 5:
                return p + 2
            flag = h[p + 3] & 0xF
            if ptr <= optlen:
                if ptr + 3 > optlen:
                    return p + 2
                timeptr = None
                if flag == IPOPT_TS_TSONLY:
                    timeptr = p + ptr - 1
                    opts.ts_needtime = True
                    h[p + 2] = ptr + 4
                elif flag == IPOPT_TS_TSANDADDR:
                    if ptr + 7 > optlen:
                        return p + 2
                    _put_addr(h, p + ptr - 1, spec_dst)
                    timeptr = p + ptr + 3
                    opts.ts_needaddr = True
                    opts.ts_needtime = True
                    h[p + 2] = ptr + 8
                elif flag == IPOPT_TS_PRESPEC:
                    if ptr + 7 > optlen:
                        return p + 2
                    # Stamp only when the prespecified address is one of ours (or a
                    # broadcast one): inet_addr_type() != RTN_UNICAST.
                    if not addr_is_unicast(_addr(h, p + ptr - 1), local_addrs):
                        timeptr = p + ptr + 3
                        opts.ts_needtime = True
                        h[p + 2] = ptr + 8
                # Any other flag: received packets pass unchanged (KERNEL-NOTES).
                if timeptr is not None:
                    _put_addr(h, timeptr, midnight_ms(now_ms))
                    opts.is_changed = True
            elif flag != IPOPT_TS_PRESPEC:
                # Full: count the overflow (RFC 791); the 4-bit counter at 15 is an error.
                overflow = h[p + 3] >> 4
                if overflow == 15:
                    return p + 3
                h[p + 3] = flag | ((overflow + 1) << 4)
                opts.is_changed = True
            opts.ts = p
        elif kind == IPOPT_RA:
            if optlen < 4:
                return p + 1
            if h[p + 2] == 0 and h[p + 3] == 0:
                opts.router_alert = p
        elif kind == IPOPT_CIPSO:
            if opts.cipso:
                return p
            opts.cipso = p
            # cipso_v4_validate() with no CIPSO DOI configured (the default, and
            # Debian's kernels have CONFIG_NETLABEL=y): too short → length byte,
            # else the DOI field is unknown.
            return p + 1 if optlen < 8 else p + 2
        # IPOPT_SEC, IPOPT_SID and unknown types pass through on receive.
        p += optlen
    return None


def _rcv_srr(h: bytearray, opts: Options, *, is_local: bool, unicast_route: bool,
             pkt_host: bool, route_type: Callable[[int], int],
             ) -> ParamProblem | Drop | None:
    """`ip_options_rcv_srr`: a source-routed packet that the input route sent to us
    takes its next hop from the option; one routed elsewhere is forwarded as is
    (LSRR) or refused (SSRR)."""
    if not pkt_host:
        return Drop(DROP_SRR_NOT_HOST)
    if not is_local:
        if not unicast_route:  # broadcast, unreachable, prohibit, blackhole...
            return Drop(DROP_SRR_ROUTE)
        if not opts.is_strictroute:
            return None  # LSRR through us: forwarded untouched (KERNEL-NOTES)
        return ParamProblem(SSRR_NOT_LOCAL_POINTER, bytes(h), opts)
    o = opts.srr
    srrspace = h[o + 1]
    srrptr = h[o + 2]
    nexthop = 0
    while srrptr <= srrspace:
        if srrptr + 3 > srrspace:  # pointer into the last, partial slot
            return ParamProblem(o + 2, bytes(h), opts)
        nexthop = _addr(h, o + srrptr - 1)
        kind = 0 if _martian_destination(nexthop) else route_type(nexthop)
        if kind not in (NH_LOCAL, NH_UNICAST):
            return Drop(DROP_SRR_ROUTE)
        if kind != NH_LOCAL:
            break
        # "Superfast loopback forward": a hop that is ourselves again.
        _put_addr(h, 16, nexthop)
        opts.is_changed = True
        srrptr += 4
    if srrptr <= srrspace:
        opts.srr_is_hit = True
        opts.nexthop = nexthop
        opts.is_changed = True
    return None


def compile_options(
    header: bytes,
    *,
    is_local: bool,
    accept_source_route: bool,
    spec_dst: int,
    now_ms: int,
    local_addrs: Container[int] = frozenset(),
    unicast_route: bool = True,
    pkt_host: bool = True,
    route_type: Callable[[int], int] | None = None,
) -> Options | ParamProblem | Drop:
    """`ip_rcv_options` for a received packet with IHL > 5, after its input route.

    header: the IP header (or the whole packet: only IHL*4 bytes are read).
    is_local: the input route delivers locally (RTN_LOCAL).
    accept_source_route: the sysctl; when False a well-formed LSRR/SSRR is dropped
        silently, forwarded or not (malformed options still get a parameter problem).
    spec_dst: the address recorded at receive time (`fib_compute_spec_dst`): the
        packet's destination when `is_local`, else the source address the router
        would use towards the packet's source (`icmp.select_source`).
    now_ms: the clock, milliseconds since the epoch, for timestamps.
    local_addrs: the addresses of the kernel's local table (ours and our subnets'
        broadcast addresses), for prespecified timestamps.
    unicast_route: when not local, the input route forwards (RTN_UNICAST); False for
        broadcast, unreachable, prohibit, blackhole and no-route destinations.
    pkt_host: the frame was addressed to our MAC (PACKET_HOST).
    route_type: NH_* type of the input route for an address (the FIB lookup), used
        for the hops of a source route addressed to us. Without it, `local_addrs`
        are NH_LOCAL and anything else NH_UNICAST.

    Returns `Options` (then: `srr_is_hit` → forward to `nexthop`, see
    `strict_route_failed`; else route as before), `ParamProblem` or `Drop`.
    """
    ihl = (header[0] & 0xF) * 4
    if ihl < IPHDR_LEN or len(header) < ihl:
        raise ValueError("compile_options needs a whole IP header with IHL >= 5")
    h = bytearray(header[:ihl])
    opts = Options(header=b"", optlen=ihl - IPHDR_LEN, local_addrs=local_addrs)
    bad = _compile(h, opts, spec_dst, now_ms, local_addrs)
    if bad is not None:
        opts.header = bytes(h)
        return ParamProblem(bad, opts.header, opts)
    if opts.srr:
        if not accept_source_route:
            return Drop(DROP_SOURCE_ROUTE)
        def default_route_type(addr: int) -> int:
            return NH_LOCAL if addr in local_addrs else NH_UNICAST

        verdict = _rcv_srr(h, opts, is_local=is_local, unicast_route=unicast_route,
                           pkt_host=pkt_host, route_type=route_type or default_route_type)
        if verdict is not None:
            if isinstance(verdict, ParamProblem):
                opts.header = verdict.header
            return verdict
    opts.header = bytes(h)
    return opts


def strict_route_failed(opts: Options, uses_gateway: bool) -> bool:
    """`ip_forward`: a strict source route may not be forwarded through a gateway;
    the kernel answers ICMP 3/5 (source route failed) and drops the packet."""
    return opts.is_strictroute and uses_gateway


def forward_options(header: bytes, opts: Options, egress_addr: int, *,
                    decrement_ttl: bool = False) -> bytes:
    """`ip_forward_options`: the header to send, checksum recomputed (`ip_send_check`).

    header: the header after `compile_options` (`opts.header`), IHL*4 bytes.
    egress_addr: the address the kernel's `ip_rt_get_source` picks for the forward
        route (the preferred source of the route to the destination, i.e.
        `icmp.select_source` on the egress port).
    decrement_ttl: also do `ip_forward`'s `ip_decrease_ttl`, which comes first.

    No clock is needed: the kernel stamps times at receive time only.
    """
    h = bytearray(header[: (header[0] & 0xF) * 4])
    if decrement_ttl:
        h[8] = (h[8] - 1) & 0xFF
    if opts.rr_needaddr:
        # The slot compile_options took, now with the outgoing address.
        _put_addr(h, opts.rr + h[opts.rr + 2] - 5, egress_addr)
    if opts.srr_is_hit:
        o = opts.srr
        srrspace = h[o + 1]
        srrptr = h[o + 2]
        while srrptr <= srrspace:
            if srrptr + 3 > srrspace or _addr(h, o + srrptr - 1) == opts.nexthop:
                break
            srrptr += 4
        if srrptr + 3 <= srrspace:
            _put_addr(h, 16, opts.nexthop)  # the next hop becomes the destination
            _put_addr(h, o + srrptr - 1, egress_addr)  # and its slot records us
            h[o + 2] = srrptr + 4
        # else: the kernel logs "Destination lost!" and sends the packet as it is.
        if opts.ts_needaddr:
            _put_addr(h, opts.ts + h[opts.ts + 2] - 9, egress_addr)
    set_ip_checksum(h)
    return bytes(h)


@dataclass(frozen=True)
class EchoedOptions:
    """`__ip_options_echo`'s result: the options of a reply, before `ip_options_build`.

    data: the option bytes, padded with END to a multiple of 4. Slots the reply
        fills (`build`) still hold the original packet's bytes.
    daddr: where the reply goes: the first hop of the reversed source route (the
        kernel's `faddr`), else the original packet's source.
    final_daddr: the original packet's source, written as the last hop of the
        reversed source route.
    rr, ts, srr: offsets in `data` (-1 when absent).
    """

    data: bytes
    daddr: int
    final_daddr: int
    rr: int = -1
    rr_needaddr: bool = False
    ts: int = -1
    ts_needaddr: bool = False
    ts_needtime: bool = False
    srr: int = -1
    is_strictroute: bool = False

    def build(self, src: int, now_ms: int) -> bytes:
        """`ip_options_build` for the reply: the reply's source address goes into
        record route and timestamp-with-address, the time into timestamps, the
        original source at the end of a reversed source route."""
        d = bytearray(self.data)
        if self.srr >= 0:
            _put_addr(d, self.srr + d[self.srr + 1] - 4, self.final_daddr)
        if self.rr_needaddr:
            _put_addr(d, self.rr + d[self.rr + 2] - 5, src)
        if self.ts_needaddr:
            _put_addr(d, self.ts + d[self.ts + 2] - 9, src)
        if self.ts_needtime:
            _put_addr(d, self.ts + d[self.ts + 2] - 5, midnight_ms(now_ms))
        return bytes(d)


def echo_options(header: bytes, opts: Options | None = None, *,
                 local_addrs: Container[int] | None = None) -> EchoedOptions | None:
    """`__ip_options_echo`: the options for an ICMP error about, or a reply to, the
    packet whose (compiled) header and options these are.

    Record route and timestamps are copied with room taken for one more entry; a
    source route is reversed (the hops recorded so far, last first; a first hop equal
    to the source is dropped, RFC 1812); router alert, NOP, unknown options are not
    echoed. None when the kernel refuses (-EINVAL: a slot that cannot be taken), in
    which case no ICMP is sent at all.

    header: the header the options were compiled into (`Options.header`, or
        `ParamProblem.header`). opts: None for a packet without options (then the
        reply just goes back to the source). local_addrs: defaults to the compile's.
    """
    if opts is None:
        opts = Options(header=bytes(header[:IPHDR_LEN]))
    if local_addrs is None:
        local_addrs = opts.local_addrs
    saddr = _addr(header, 12)
    out = bytearray()
    e: dict = {"daddr": saddr, "final_daddr": saddr}
    if opts.optlen == 0:
        return EchoedOptions(b"", saddr, saddr)
    sp = header
    if opts.rr:
        optlen = sp[opts.rr + 1]
        soffset = sp[opts.rr + 2]
        e["rr"] = len(out)
        d = bytearray(sp[opts.rr : opts.rr + optlen])
        if opts.rr_needaddr and soffset <= optlen:
            if soffset + 3 > optlen:
                return None
            d[2] = soffset + 4
            e["rr_needaddr"] = True
        out += d
    if opts.ts:
        optlen = sp[opts.ts + 1]
        soffset = sp[opts.ts + 2]
        e["ts"] = len(out)
        d = bytearray(sp[opts.ts : opts.ts + optlen])
        if soffset <= optlen:
            if opts.ts_needaddr:
                if soffset + 3 > optlen:
                    return None
                e["ts_needaddr"] = True
                soffset += 4
            if opts.ts_needtime:
                if soffset + 3 > optlen:
                    return None
                if d[3] & 0xF != IPOPT_TS_PRESPEC:
                    e["ts_needtime"] = True
                    soffset += 4
                elif soffset + 7 <= optlen:
                    # The reply stamps the next prespecified entry if it names us.
                    if not addr_is_unicast(_addr(d, soffset - 1), local_addrs):
                        e["ts_needtime"] = True
                        soffset += 8
            d[2] = soffset & 0xFF
        out += d
    if opts.srr:
        start = sp[opts.srr : opts.srr + sp[opts.srr + 1]]
        optlen = start[1]
        soffset = start[2]
        doffset = 0
        if soffset > optlen:
            soffset = optlen + 1
        soffset -= 4
        d = bytearray(optlen + 4)  # the kernel's dptr: type, length, pointer, hops
        faddr = 0
        if soffset > 3:
            faddr = _addr(start, soffset - 1)  # the last hop recorded: first hop back
            soffset -= 4
            doffset = 4
            while soffset > 3:
                d[doffset - 1 : doffset + 3] = start[soffset - 1 : soffset + 3]
                soffset -= 4
                doffset += 4
            # RFC 1812 requires to fix illegal source routes: don't route back
            # through the source itself.
            if _addr(start, soffset + 3) == saddr:
                doffset -= 4
        if doffset > 3:
            # The last slot (doffset - 1) is for the original source, see build().
            d[0] = start[0]
            d[1] = doffset + 3
            d[2] = 4
            e["srr"] = len(out)
            e["daddr"] = faddr
            e["is_strictroute"] = opts.is_strictroute
            out += d[: doffset + 3]
    if opts.cipso:
        # Only a parameter problem about the CIPSO option itself gets here (no DOI
        # is configured), and the kernel echoes the option as it came (seen on 6.18).
        optlen = sp[opts.cipso + 1]
        out += sp[opts.cipso : opts.cipso + optlen]
    while len(out) & 3:
        out.append(IPOPT_END)
    return EchoedOptions(bytes(out), **e)


def fragment_options(options: bytes) -> bytes:
    """`ip_options_fragment`: the options of the fragments after the first. Options
    without the copied flag (record route, timestamp) become NOPs; the length stays.
    The walk stops, leaving the rest as is, at END or at a malformed length."""
    d = bytearray(options)
    p = 0
    n = len(d)
    while p < n:
        kind = d[p]
        if kind == IPOPT_END:
            break
        if kind == IPOPT_NOOP:
            p += 1
            continue
        if p + 1 >= n:
            break
        optlen = d[p + 1]
        if optlen < 2 or optlen > n - p:
            break
        if not kind & IPOPT_COPIED:
            d[p : p + optlen] = bytes([IPOPT_NOOP]) * optlen
        p += optlen
    return bytes(d)

