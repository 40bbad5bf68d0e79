"""The slow path's kernel: everything that is not a plain forward, one packet at a
time, as net/ipv4 does it. Each method is named after the kernel function it mirrors;
`take` follows the one the fast path's `Slow` reason leads to:

    Slow reason                 method                  kernel
    local                       ip_local_deliver        ip_local_deliver(_finish), icmp_rcv,
                                                        icmp_echo, udp_rcv, tcp_v4_rcv
    no_route/unreachable/prohibit  ip_error             ip_error → icmp_send 3/0, 3/1, 3/13
    ttl_exceeded, frag_needed,  ip_forward              ip_forward, ip_forward_finish,
    fragment, redirect,                                 ip_rt_send_redirect, ip_output,
    neigh_unresolved                                    ip_fragment
    reassemble (mode "full")    ip_defrag               ip_defrag (netfilter's, before routing),
                                                        then ip_rcv_finish on the datagram
    options                     ip_rcv_options          ip_rcv_options, ip_options_rcv_srr,
                                                        then dst_input
    arp                         neigh.arp_rcv           arp_rcv, arp_process

Routing decisions are the fast path's own, asked a burst at a time (`RouteCache`,
engine/slowpath/route_cache.py). ICMP errors go through `icmp_send` (RFC 1812
§4.3.2.7 rules, the kernel's source address, echoed options, rate limits, hashed IP
IDs) and leave by the route back to their destination, with the next hop's MAC.
What is sent leaves through `Output` (engine/slowpath/output.py).

Neighbours (`self.neigh`, engine/slowpath/neigh_resolver.py): a next hop whose MAC is
in neither its next-hop row nor the shared neighbour table (`neigh_unresolved` from
the fast path, or a packet the router originates) is resolved with ARP as the kernel
does (`neigh_resolve_output`): an INCOMPLETE entry, broadcast requests every
retrans_time, the packet held meanwhile, then sent with the learned MAC, or answered
with ICMP host unreachable when nobody answers. ARP frames for our MAC or broadcast
(`Slow.arp`) are answered and learned from there, and the neighbour timers run on the
clock below (`tick`, on every packet and every pass).

Accounting: every packet taken ends once as forwarded, delivered (an ARP frame taken
too, without InDelivers), dropped (a `Drop` or `SlowDrop` reason), held (in a
reassembly queue or a neighbour's hold queue) or merged into a reassembled
datagram; each reassembled datagram is a new packet that ends once in turn. So
`taken + reassembled == forwarded + delivered + dropped + held + merged`
(stats.Snapshot.balanced checks it). The kernel counters the fast path already
counted for its own verdict (InHdrErrors for TTL, InNoRoutes, InAddrErrors,
FragFails) are counted here only for verdicts reached here.

Time is the capture clock: the latest `mem.ts` taken. Rate limits, IP ID jumps and
reassembly timers run on it, so it never goes backwards even when two workers hand
over packets out of capture order (options stamp each packet's own time, as the
kernel stamps at receive). With one worker a replay is then exactly reproducible;
with more, the packets of different flows may reach this worker in another order,
and what depends on that order (the router's own IP IDs, which count per
destination, and rate-limit decisions in a burst) may differ from run to run, as on
a multi-core kernel. Reassembly and neighbour timers run on every packet; at the end
of a replay (`finish`) the clock moves to the last input frame, the queues and
resolutions due by then time out and what is still queued or held is flushed and
counted, never timed out early.

ICMP limits are the kernel's (icmp.IcmpRateLimiter: icmp_ratelimit per host, the
global bucket, ip_error's own budget for unreachables, the redirect backoff) with
`[icmp] ratelimit_ms`; 0 turns all but the redirect backoff off, as DESIGN.md says
(the kernel's icmp_ratelimit=0 would still leave ip_error's budget on).

Not done here: ICMP timestamp replies; proxy ARP and the arp_ignore/arp_announce/
arp_accept/arp_filter sysctls other than their defaults; the IP options of a held
packet are not echoed in the ICMP host unreachable sent about it when its resolution
fails (the kernel recompiles and echoes them).
"""

from __future__ import annotations

import struct
import traceback
from dataclasses import replace
from enum import IntEnum

import numpy as np

from engine.config import Config
from engine.counters import (
    ICMP_IN,
    ICMP_OUT,
    Drop,
    Icmp,
    Misc,
    Reasm,
    Slow,
    SlowDrop,
    Snmp,
    Tcp,
    Udp,
    Unsent,
    index,
)
from engine.pipeline import checksum
from engine.pipeline.checksum import inet_checksum, set_ip_checksum
from engine.pipeline.forward import source_on_link
from engine.pipeline.route import LBCAST
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import FORWARD, PACKET_HOST, SLOW
from engine.proto import (
    ETH_TYPE_IP,
    IP_DF,
    IP_OFFSET,
    IPHDR_LEN,
    IPPROTO_ICMP,
    IPPROTO_IGMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
)
from engine.shm.memory import (
    NH_BROADCAST,
    NH_LOCAL,
    NH_UNICAST,
    NHF_GATEWAY,
    NHF_RESOLVED,
    EngineMemory,
)
from engine.shm.neigh_table import NeighbourTable
from engine.slowpath import reasm as R
from engine.slowpath.counts import Counts
from engine.slowpath.frag import fragment
from engine.slowpath.icmp import (
    ICMP_DEST_UNREACH,
    ICMP_ECHO,
    ICMP_ECHOREPLY,
    ICMP_EXC_FRAGTIME,
    ICMP_EXC_TTL,
    ICMP_FRAG_NEEDED,
    ICMP_HOST_UNREACH,
    ICMP_NET_UNREACH,
    ICMP_PARAMETERPROB,
    ICMP_PKT_FILTERED,
    ICMP_PORT_UNREACH,
    ICMP_PROT_UNREACH,
    ICMP_REDIR_HOST,
    ICMP_REDIRECT,
    ICMP_SR_FAILED,
    ICMP_TIME_EXCEEDED,
    NR_ICMP_TYPES,
    IcmpRateLimiter,
    IpIdGenerator,
    build_echo_reply,
    build_error,
    icmp_error_source,
    may_send_error,
    select_source,
)
from engine.slowpath.neigh_resolver import resolver_for
from engine.slowpath.options import Drop as OptionsDrop
from engine.slowpath.options import (
    EchoedOptions,
    ParamProblem,
    compile_options,
    echo_options,
    forward_options,
    strict_route_failed,
)
from engine.slowpath.output import Output
from engine.slowpath.packet import OutRoute, Packet
from engine.slowpath.route_cache import RouteCache

INET_ECN_MASK = 3
CHECKSUM_BREAK = 76  # skbuff.h: a checksum this short is verified when first looked at
TCP_TTL = 64  # the TCP control socket's TTL: sysctl ip_default_ttl
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

# ip_error: the route's error, its ICMP code, its drop reason, its Ip: counter
ROUTE_ERRORS = {
    Slow.no_route: (ICMP_NET_UNREACH, SlowDrop.no_route, Snmp.InNoRoutes),
    Slow.unreachable: (ICMP_HOST_UNREACH, SlowDrop.unreachable, Snmp.InAddrErrors),
    Slow.prohibit: (ICMP_PKT_FILTERED, SlowDrop.prohibit, None),
}
SLOW_REASONS = {int(r): r for r in Slow}  # Slow(n) without the enum call
FORWARDED = (Snmp.ForwDatagrams, Misc.forwarded)  # counted once a forward is sent
# ip_route_input failing before ip_rcv_options looks at the options
ROUTE_INPUT_FAILED = frozenset({Drop.martian_source, Drop.martian_destination, Drop.multicast})
OPTIONS_DROPS = {"source_route": SlowDrop.source_route, "srr_not_host": SlowDrop.srr_not_host,
                 "srr_route": SlowDrop.srr_route}
# icmp_rcv: what a broadcast/multicast destination may still carry (RFC 1122 3.2.2.6)
ICMP_BROADCAST_OK = frozenset({8, 13, 17, 18})
ICMP_ECHO_LIKE = frozenset({8, 13})  # ignored from broadcasts: icmp_echo_ignore_broadcasts=1
ICMP_UNREACH_LIKE = frozenset({3, 4, 5, 11, 12})  # icmp_pointers: icmp_unreach, icmp_redirect
ICMP_EXT_ECHO = 42  # RFC 8335 PROBE, handled before the type check (icmp_rcv)
NR_ICMP_UNREACH = 15  # highest destination unreachable code icmp_unreach passes on


def pseudo_header(addrs: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header of TCP and UDP checksums (source and destination as on
    the wire, then zero, protocol, length)."""
    return addrs + struct.pack("!BBH", 0, proto, length)


def decrease_ttl(ip: bytes) -> bytes:
    """`ip_decrease_ttl`: TTL - 1 with the incremental checksum update (RFC 1624)."""
    check = checksum.ttl_decrement((ip[10] << 8) | ip[11])
    return b"".join((ip[:8], bytes((ip[8] - 1, ip[9])), check.to_bytes(2, "big"),
                     memoryview(ip)[12:]))


def _one(value: int, dtype: type) -> np.ndarray:
    return np.array([value], dtype=dtype)


class Kernel:
    """The slow path's per-packet kernel functions and the state they keep: the
    capture clock, the reassembler, ICMP limits and IP IDs, the neighbour resolver,
    the burst's routing answers (`routes`). What it sends goes to `out`, what it
    counts to the worker's `Counts`."""

    def __init__(self, mem: EngineMemory, tables: Tables, cfg: Config, out: Output,
                 counts: Counts) -> None:
        self.mem = mem
        self.t = tables
        self.cfg = cfg
        self.out = out
        self.row = counts.row
        self.count = counts.count
        self.drop = counts.drop
        self.unsent = counts.unsent
        self.send = out.send  # the neighbour resolver's way out (`neigh_resolver.Host`)
        self.clock = 0  # ns, the latest capture time taken
        self.errors_logged = 0

        self.port_mac = [p.mac for p in cfg.ports]
        self.port_addrs = [[(a.address, a.prefix_len) for a in p.addresses] for p in cfg.ports]
        self.all_addrs = [a.address for p in cfg.ports for a in p.addresses]
        # the kernel's local table: our addresses and our subnets' broadcast addresses
        local = set(self.all_addrs)
        for p in cfg.ports:
            for a in p.addresses:
                if a.prefix_len <= 30:
                    local.add(int(a.network.broadcast_address))
        self.local_table = frozenset(local)

        rc = cfg.reassembly
        self.reasm = R.Reassembler(rc.high_thresh, rc.low_thresh, int(rc.timeout_s * 1e9))
        self._reasm_seen: dict[int, int] = {}
        # [icmp] ratelimit_ms = 0 turns every ICMP limit off (DESIGN.md), the kernel's
        # global bucket and ip_error's included; the redirect backoff always applies
        self.ratelimit = cfg.icmp.ratelimit_ms > 0
        self.limiter = IcmpRateLimiter(cfg.icmp.ratelimit_ms, global_limit=self.ratelimit)
        self.ids = IpIdGenerator()
        self.routes = RouteCache(mem, tables, self.reasm)
        # ARP, neighbour states, hold queues: once the engine runs, this worker is the
        # only writer of the shared neighbour table
        self.neigh = resolver_for(NeighbourTable(mem), self, cfg)

    # ------------------------------------------------------------------ taking packets

    def take(self, pkt: Packet, reason: Slow) -> None:
        """A packet the fast path handed over for `reason`, after the timers due by its
        time."""
        self.clock = max(self.clock, pkt.ts)
        if self.routes.stale():
            self.routes.forget()  # tables changed: ask again
        try:
            self.expire()
            self.neigh.tick(self.clock)
            self.dispatch(pkt, SLOW + reason, None, decided_here=False)
        except Exception:  # one packet must not take the worker down: count, say, go on
            self.drop(SlowDrop.internal_error)
            self.log_error()

    def advance(self, now: int) -> None:
        """Move the clock to `now` (never back) and run the timers due by then."""
        self.clock = max(self.clock, now)
        self.expire()
        self.neigh.tick(self.clock)

    def next_timer(self) -> int | float:
        """When the next reassembly or neighbour timer falls due (the clock's value)."""
        return min(self.reasm.next_timer(), self.neigh.next_timer())

    def log_error(self) -> None:
        """The first unexpected error's traceback, then only a count."""
        if not self.errors_logged:
            traceback.print_exc()
        self.errors_logged += 1

    def finish(self, end_clock_ns: int | None) -> None:
        """End of a pcap replay: the clock stops at `end_clock_ns`, the last input
        frame's time. Queues due by then time out (ICMP and all); the rest are flushed."""
        if end_clock_ns is not None:
            self.clock = max(self.clock, end_clock_ns)
        self.routes.forget()
        self.expire()
        self.neigh.tick(self.clock)
        self.reasm.flush()
        self.neigh.flush()

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, pkt: Packet, code: int, nh: int | None, *, decided_here: bool) -> None:
        """Act on a verdict code: the fast path's (`decided_here` False: it counted the
        kernel's counters for it) or one reached here."""
        if code == FORWARD:
            self.ip_forward(pkt, self._nh(pkt) if nh is None else nh, Slow.none,
                            decided_here=decided_here)
            return
        if code < SLOW:
            self.drop(Drop(code))
            return
        reason = SLOW_REASONS[code - SLOW]
        if reason == Slow.local:
            self.ip_local_deliver(pkt)
        elif reason in ROUTE_ERRORS:
            self.ip_error(pkt, reason, decided_here=decided_here)
        elif reason == Slow.reassemble:
            datagram = self.ip_defrag(pkt)
            if datagram is not None:
                self.ip_rcv_finish(datagram)
        elif reason == Slow.options:
            self.ip_rcv_options(pkt)
        elif reason == Slow.arp:
            self.neigh.arp_rcv(pkt.ip, pkt.in_port, pkt.pkt_type, pkt.ts, pkt.seq, self.clock)
        else:  # ttl_exceeded, frag_needed, fragment, redirect, neigh_unresolved
            self.ip_forward(pkt, self._nh(pkt) if nh is None else nh, reason,
                            decided_here=decided_here)

    def ip_rcv_finish(self, pkt: Packet) -> None:
        """Route a packet the slow path made (a reassembled datagram) as a received one."""
        nh, code = self.routes.route_input(pkt)
        self.dispatch(pkt, code, nh, decided_here=True)

    def _nh(self, pkt: Packet) -> int:
        """The next hop `pkt` is forwarded to (the fast path's verdict gave none)."""
        return self.routes.nexthop(pkt.saddr, pkt.daddr)

    # ------------------------------------------------------------------ options

    def ip_rcv_options(self, pkt: Packet) -> None:
        """`ip_rcv_options` after the input route: compile the options (recording the
        incoming address and the time), apply `accept_source_route`, take a source
        route's next hop (`ip_options_rcv_srr`), then go where the route says."""
        nh, code = self.routes.route_input(pkt, options_done=True)
        if code in ROUTE_INPUT_FAILED:
            self.drop(Drop(code))  # ip_route_input failed: options are never looked at
            return
        t = self.t
        route_type = int(t.nh_type[nh])
        local = route_type == NH_LOCAL
        result = compile_options(
            pkt.ip, is_local=local, accept_source_route=self.cfg.ipv4.accept_source_route,
            spec_dst=pkt.daddr if local else self.pref_src(pkt.saddr, pkt.in_port),
            now_ms=pkt.ts // 1_000_000, local_addrs=self.local_table,
            unicast_route=route_type == NH_UNICAST, pkt_host=pkt.pkt_type == PACKET_HOST,
            route_type=self.routes.route_type)
        if isinstance(result, ParamProblem):
            self.count(Snmp.InHdrErrors)
            bad = replace(pkt, ip=result.header + pkt.ip[pkt.ihl:], opts=result.opts)
            self.icmp_send(bad, ICMP_PARAMETERPROB, 0, result.pointer)
            self.drop(SlowDrop.param_problem)
            return
        if isinstance(result, OptionsDrop):
            self.drop(OPTIONS_DROPS[result.reason])
            return
        pkt = pkt.evolve(ip=result.header + pkt.ip[pkt.ihl:], opts=result)
        if result.srr_is_hit:
            # ip_options_rcv_srr routes the packet again, to the next hop of the list
            nh, code = self.routes.route_input(pkt, daddr=result.nexthop, options_done=True)
        self.dispatch(pkt, code, nh, decided_here=True)

    def pref_src(self, addr: int, fallback_port: int) -> int:
        """The preferred source of the route to `addr` (`fib_compute_spec_dst`,
        `ip_rt_get_source`): an address of its egress port matching its gateway or
        `addr`; with no route, one of `fallback_port` (`inet_select_addr`)."""
        nh = self.routes.lookup(addr)
        kind = int(self.t.nh_type[nh])
        if kind == NH_LOCAL:
            return addr
        if kind in (NH_UNICAST, NH_BROADCAST):
            port = int(self.t.nh_port[nh])
            target = self.routes.target(nh, addr)
        else:
            port, target = fallback_port, addr
        return select_source(self.port_addrs[port], target, other_addrs=self.all_addrs)

    # ------------------------------------------------------------------ forward

    def ip_forward(self, pkt: Packet, nh: int, reason: Slow, *, decided_here: bool) -> None:
        """`ip_forward`: TTL, strict source route, MTU, TTL decrement, redirect; then
        `ip_forward_finish`. `reason` is what `forward_checks` said (Slow.none: forward)."""
        if reason == Slow.ttl_exceeded:
            if decided_here:
                self.count(Snmp.InHdrErrors)  # too_many_hops
            self.icmp_send(pkt, ICMP_TIME_EXCEEDED, ICMP_EXC_TTL)
            self.drop(SlowDrop.ttl_exceeded)
            return
        t = self.t
        gateway = bool(int(t.nh_flags[nh]) & NHF_GATEWAY)
        if pkt.opts is not None and strict_route_failed(pkt.opts, gateway):
            self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_SR_FAILED)  # sr_failed
            self.drop(SlowDrop.sr_failed)
            return
        egress = int(t.nh_port[nh])
        if reason == Slow.frag_needed:
            if decided_here:
                self.count(Snmp.FragFails)
            self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, int(t.port_mtu[egress]))
            self.drop(SlowDrop.frag_needed)
            return
        forwarded = pkt.evolve(ip=decrease_ttl(pkt.ip))
        # IPSKB_DOREDIRECT, as the fast path decides it (forward_checks ranks a needed
        # fragmentation above it, but the kernel does both), and never with a source route
        if (egress == pkt.in_port and t.send_redirects
                and (pkt.opts is None or not pkt.opts.srr)
                and source_on_link(_one(pkt.saddr, np.uint32), _one(pkt.in_port, np.uint16),
                                   t)[0]):
            self.ip_rt_send_redirect(forwarded, nh)
        self.ip_forward_finish(forwarded, nh, egress)

    def ip_rt_send_redirect(self, pkt: Packet, nh: int) -> None:
        """`ip_rt_send_redirect`: a host redirect to the next hop, with the kernel's
        backoff per source; it quotes the packet with its TTL already decremented."""
        if not self.limiter.allow_redirect(pkt.saddr, self.clock):
            self.unsent(Unsent.ratelimited)
            return
        self.icmp_send(pkt, ICMP_REDIRECT, ICMP_REDIR_HOST, self.routes.target(nh, pkt.daddr))

    def ip_forward_finish(self, pkt: Packet, nh: int, egress: int) -> None:
        """`ip_forward_finish` + `ip_output`: options for the way out, fragmentation to
        the egress MTU, new Ethernet header, transmit."""
        t = self.t
        ip = pkt.ip
        if pkt.opts is not None and pkt.opts.optlen:
            # ip_rt_get_source: the forward route's preferred source (its destination is
            # a source route's next hop when the route came from the option)
            daddr = pkt.opts.nexthop if pkt.opts.srr_is_hit else pkt.daddr
            egress_addr = select_source(self.port_addrs[egress], self.routes.target(nh, daddr),
                                        other_addrs=self.all_addrs)
            ip = forward_options(ip, pkt.opts, egress_addr) + ip[pkt.ihl:]
        mtu = int(t.port_mtu[egress])
        frames = self.ip_fragment(ip, mtu, pkt)
        if frames is None:
            self.drop(SlowDrop.frag_failed)
            return
        if not int(t.nh_flags[nh]) & NHF_RESOLVED:
            # neigh_output through the neighbour table: sent, or held while ARP
            # resolves the next hop of the header's (possibly source-routed) destination
            self.count(Snmp.ForwDatagrams)
            target = self.routes.target(nh, int.from_bytes(ip[16:20], "big"))
            self.neigh.output(frames, egress, target, pkt, self.clock)
            return
        eth = self.mem.nh_mac[nh, :6].tobytes() + self.port_mac[egress] + ETH_TYPE_IP
        self.out.transmit([eth + f for f in frames], egress, pkt.ts, pkt.seq, FORWARDED,
                      self.drop)

    def ip_fragment(self, ip: bytes, mtu: int, pkt: Packet) -> list[bytes] | None:
        """`ip_finish_output`'s choice: a reassembled datagram is always refragmented,
        to no more than its largest fragment (its original boundaries where they
        fit); anything else only when it is longer than the MTU. None: FragFails."""
        if pkt.frag_max:
            mtu = min(mtu, pkt.frag_max)
        elif len(ip) <= mtu:
            return [ip]
        try:
            frames = fragment(ip, mtu, geometry=pkt.frag_sizes, keep_df=pkt.frag_df)
        except ValueError:
            self.count(Snmp.FragFails)
            return None
        self.count(Snmp.FragOKs)
        self.count(Snmp.FragCreates, len(frames))
        return frames

    # ------------------------------------------------------------------ errors

    def ip_error(self, pkt: Packet, reason: Slow, *, decided_here: bool) -> None:
        """`ip_error`: an error route answers with the matching unreachable, after its
        own per-source limit (`ip_rt_error_cost`/`burst`)."""
        code, drop_reason, counter = ROUTE_ERRORS[reason]
        if decided_here and counter is not None:
            self.count(counter)
        if self.ratelimit and not self.limiter.allow_route_error(pkt.saddr, self.clock):
            self.unsent(Unsent.ratelimited)
        else:
            self.icmp_send(pkt, ICMP_DEST_UNREACH, code)
        self.drop(drop_reason)

    def icmp_send(self, pkt: Packet, icmp_type: int, code: int, info: int = 0) -> None:
        """`__icmp_send`: an ICMP error about `pkt` (its bytes as the kernel holds them
        when it decides, its compiled options echoed back)."""
        quote = pkt.ip
        dst_kind = self.routes.route_type(pkt.daddr)
        # min_icmp_len=1: Linux 6.18.44 answers about an ICMP message of 1 to 7 bytes (not
        # 0), whatever KERNEL-NOTES.md says; tests/test_kernel_diff.py checks it
        if not may_send_error(quote, pkt.pkt_type == PACKET_HOST, icmp_type=icmp_type,
                              dst_broadcast=dst_kind == NH_BROADCAST, min_icmp_len=1):
            self.unsent(Unsent.suppressed)
            return
        reply = self.reply_route(pkt)
        if reply is None:
            return
        echoed, route = reply
        if not self.limiter.allow(echoed.daddr, icmp_type, code, self.clock):
            self.unsent(Unsent.ratelimited)
            return
        # a packet that was for us is answered from the address it was sent to
        src = icmp_error_source(quote, orig_is_local=dst_kind == NH_LOCAL,
                                egress_addrs=self.port_addrs[route.port],
                                target=route.target, other_addrs=self.all_addrs)
        ip_id = self.ids.next_id(echoed.daddr, src, IPPROTO_ICMP, self.clock)
        packet = build_error(quote, icmp_type, code, info, src, echoed.daddr, ip_id,
                             echoed.build(src, pkt.ts // 1_000_000),
                             mtu=int(self.t.port_mtu[route.port]))
        if packet is None:
            self.unsent(Unsent.no_room)
            return
        self.ip_local_out(packet, route, pkt, (ICMP_OUT[icmp_type],))

    def reply_route(self, pkt: Packet) -> tuple[EchoedOptions, OutRoute] | None:
        """`ip_options_echo`, then the output route to where an answer to `pkt` goes
        (the first hop of its reversed source route, else its source). None, counted,
        when either fails: the kernel then sends nothing."""
        echoed = echo_options(pkt.ip[: pkt.ihl], pkt.opts)
        if echoed is None:
            self.unsent(Unsent.suppressed)
            return None
        route = self.routes.output_route(echoed.daddr)
        if isinstance(route, Unsent):
            self.unsent(route)
            return None
        return echoed, route

    def ip_local_out(self, ip: bytes, route: OutRoute, cause: Packet,
                     counters: tuple[IntEnum, ...]) -> None:
        """Send a packet the router built (an ICMP message of the type `counters` says,
        or a TCP reset: Tcp: OutSegs and OutRsts), fragmented at the route's MTU when it
        is longer (`ip_append_data` + `ip_fragment`), with `cause`'s time and number."""
        mtu = int(self.t.port_mtu[route.port])
        frames = [ip]
        if len(ip) > mtu:
            frames = fragment(ip, mtu)
            self.count(Snmp.FragOKs)
            self.count(Snmp.FragCreates, len(frames))
        if isinstance(counters[0], Icmp):
            counters = (Icmp.OutMsgs, *counters)  # icmp_out_count
        if route.mac is None:  # sent through the neighbour table, or held for ARP
            self.neigh.output(frames, route.port, route.target, cause, self.clock,
                              originated=True)
            for counter in (Snmp.OutRequests, *counters):
                self.count(counter)
        else:
            eth = route.mac + self.port_mac[route.port] + ETH_TYPE_IP
            sent = (Misc.created, Snmp.OutRequests, *counters)
            self.out.transmit([eth + f for f in frames], route.port, cause.ts, cause.seq, sent,
                          self._not_sent)

    def _not_sent(self, refused: Drop) -> None:
        self.unsent(Unsent.pool_empty if refused == Drop.pool_empty else Unsent.ring_full)

    # ------------------------------------------------------------------ local delivery

    def ip_local_deliver(self, pkt: Packet) -> None:
        """`ip_local_deliver`: reassemble (`IP_DEFRAG_LOCAL_DELIVER`), then hand to the
        protocol."""
        if pkt.is_fragment:
            datagram = self.ip_defrag(pkt)
            if datagram is None:
                return
            pkt = datagram
        self.ip_local_deliver_finish(pkt)

    def ip_local_deliver_finish(self, pkt: Packet) -> None:
        """`ip_protocol_deliver_rcu`: ICMP, UDP, TCP and IGMP have handlers (counted as
        delivered, InDelivers, whatever the handler then does); anything else is
        answered with a protocol unreachable (InUnknownProtos)."""
        proto = pkt.protocol
        if proto == IPPROTO_ICMP:
            self.icmp_rcv(pkt)
        elif proto == IPPROTO_UDP:
            self.udp_rcv(pkt)
        elif proto == IPPROTO_TCP:
            self.tcp_v4_rcv(pkt)
        elif proto != IPPROTO_IGMP:  # IGMP: no multicast membership to update
            self.count(Snmp.InUnknownProtos)
            self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_PROT_UNREACH)
            self.drop(SlowDrop.unknown_protocol)
            return
        self.count(Snmp.InDelivers)
        self.count(Misc.delivered)

    def _broadcast(self, pkt: Packet) -> bool:
        """The input route is RTCF_BROADCAST (limited or a subnet's broadcast) or
        RTCF_MULTICAST (224.0.0.1, the only group we are in)."""
        return (pkt.daddr == LBCAST or pkt.daddr >> 28 == 0xE
                or self.routes.route_type(pkt.daddr) == NH_BROADCAST)

    def icmp_rcv(self, pkt: Packet) -> None:
        """`icmp_rcv`: checksum, header, type; echo requests to a unicast address of
        ours are answered, errors go to `icmp_unreach`, the rest is counted and
        dropped. An extended echo request (42, RFC 8335) is taken before the type
        check: with icmp_echo_enable_probe=0 it is not answered and is no error (the
        kernel counts it in IcmpMsg: InType42, which the engine does not keep)."""
        self.count(Icmp.InMsgs)
        icmp = pkt.ip[pkt.ihl:]
        if inet_checksum(icmp) != 0:
            self.count(Icmp.InCsumErrors)
            self.count(Icmp.InErrors)
            return
        if len(icmp) < 8:
            self.count(Icmp.InErrors)
            return
        kind = icmp[0]
        if kind in ICMP_IN:
            self.count(ICMP_IN[kind])
        if kind == ICMP_EXT_ECHO:
            return  # icmp_echo → icmp_build_probe: probes are off
        if kind > NR_ICMP_TYPES:
            self.count(Icmp.InErrors)
            return
        if self._broadcast(pkt) and (kind in ICMP_ECHO_LIKE or kind not in ICMP_BROADCAST_OK):
            self.count(Icmp.InErrors)  # RFC 1122 3.2.2.6, icmp_echo_ignore_broadcasts=1
            return
        if kind == ICMP_ECHO:
            self.icmp_echo(pkt)
        elif kind in ICMP_UNREACH_LIKE:
            self.icmp_unreach(kind, icmp[1], icmp[8:])

    def icmp_unreach(self, kind: int, code: int, quote: bytes) -> None:
        """`icmp_unreach` (3, 4, 11, 12) and `icmp_redirect` (5): an error about a
        packet we sent. A quote shorter than an IP header (or, but for a redirect, one
        with IHL < 5) is an InErrors; otherwise `icmp_socket_deliver` wants the header
        and 8 bytes more (InErrors without them; `icmp_unreach` gives up silently
        first), and UDP's and TCP's error handlers (`__udp4_lib_err`, `tcp_v4_err`)
        find no socket: InErrors again. ICMP's (`ping_err`) says nothing."""
        if len(quote) < IPHDR_LEN or (kind != ICMP_REDIRECT and quote[0] & 0xF < 5):
            self.count(Icmp.InErrors)
            return
        if kind == ICMP_DEST_UNREACH and code > NR_ICMP_UNREACH:
            return
        if len(quote) < (quote[0] & 0xF) * 4 + 8:
            if kind == ICMP_REDIRECT:
                self.count(Icmp.InErrors)
            return
        if quote[9] in (IPPROTO_UDP, IPPROTO_TCP):
            self.count(Icmp.InErrors)

    def icmp_echo(self, pkt: Packet) -> None:
        """`icmp_echo` + `icmp_reply`: from the address the request was sent to
        (`fib_compute_spec_dst`), options echoed, fragmented at the route's MTU."""
        answer = self.reply_route(pkt)
        if answer is None:
            return
        echoed, route = answer
        src = pkt.daddr
        if not self.limiter.allow(echoed.daddr, ICMP_ECHOREPLY, 0, self.clock):
            self.unsent(Unsent.ratelimited)  # never: echo replies are not in the ratemask
            return
        ip_id = self.ids.next_id(echoed.daddr, src, IPPROTO_ICMP, self.clock)
        reply = build_echo_reply(pkt.ip, src, ip_id, echoed.build(src, pkt.ts // 1_000_000),
                                 dst=echoed.daddr)
        self.ip_local_out(reply, route, pkt, (ICMP_OUT[ICMP_ECHOREPLY],))

    def udp_rcv(self, pkt: Packet) -> None:
        """`__udp4_lib_rcv` with no socket bound: a well-formed datagram to a unicast
        address of ours gets a port unreachable (`UDP_MIB_NOPORTS`), one to a broadcast
        or multicast address is counted in IgnoredMulti (`__udp4_lib_mcast_deliver`).

        The datagram ends where its length field says (`pskb_trim_rcsum`): the bytes
        after it are neither summed nor quoted in the port unreachable. Its checksum
        (0: none, RFC 768) is verified at once by `udp4_csum_init` only when it is at
        most CHECKSUM_BREAK bytes long (a device without receive checksum offload,
        as the veths the kernel is compared on), else by `udp_lib_checksum_complete`
        just before NoPorts: a longer broadcast with a bad checksum is ignored, not
        counted as an error."""
        udp = pkt.ip[pkt.ihl:]
        ulen = int.from_bytes(udp[4:6], "big") if len(udp) >= 8 else 0
        if len(udp) < 8 or ulen < 8 or ulen > len(udp):
            self.count(Udp.InErrors)  # short_packet
            return
        broadcast = self._broadcast(pkt)
        if udp[6:8] != b"\0\0" and (ulen <= CHECKSUM_BREAK or not broadcast):
            if inet_checksum(pseudo_header(pkt.ip[12:20], IPPROTO_UDP, ulen) + udp[:ulen]):
                self.count(Udp.InCsumErrors)
                self.count(Udp.InErrors)
                return
        if broadcast:
            self.count(Udp.IgnoredMulti)
            return
        self.count(Udp.NoPorts)
        if ulen < len(udp):  # the header still says the IP length it came with
            pkt = pkt.evolve(ip=pkt.ip[: pkt.ihl + ulen])
        self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)

    def tcp_v4_rcv(self, pkt: Packet) -> None:
        """`tcp_v4_rcv` with no socket: a well-formed segment in a frame for our MAC is
        answered with a reset (`tcp_v4_send_reset`). Every segment in such a frame
        counts in InSegs, a bad one or one to a broadcast too; no flag combination is
        refused here (SYN+FIN, none at all: a reset all the same)."""
        if pkt.pkt_type != PACKET_HOST:
            return  # discard_it
        self.count(Tcp.InSegs)  # "Count it even if it's bad"
        tcp = pkt.ip[pkt.ihl:]
        if len(tcp) < 20:
            return
        doff = (tcp[12] >> 4) * 4
        if doff < 20:
            self.count(Tcp.InErrs)  # bad_packet
            return
        if len(tcp) < doff:
            return
        if inet_checksum(pseudo_header(pkt.ip[12:20], IPPROTO_TCP, len(tcp)) + tcp):
            self.count(Tcp.InCsumErrors)
            self.count(Tcp.InErrs)
            return
        self.tcp_v4_send_reset(pkt, tcp, doff)

    def tcp_v4_send_reset(self, pkt: Packet, tcp: bytes, doff: int) -> None:
        """`tcp_v4_send_reset` + `ip_send_unicast_reply`: never about a reset, only for
        a unicast address of ours; from that address, the segment's TOS without ECN,
        TTL 64, DF and IP ID 0 (`ip_select_ident` on an unconnected DF socket), the
        segment's options echoed. RFC 793: seq = its ack if it had one, else ack = its
        seq + SYN + FIN + data."""
        flags = tcp[13]
        if flags & TCP_RST or self.routes.route_type(pkt.daddr) != NH_LOCAL:
            return
        sport, dport, seq, ack_seq = struct.unpack("!HHII", tcp[:12])
        if flags & TCP_ACK:
            r_seq, r_ack, r_flags = ack_seq, 0, TCP_RST
        else:
            data = len(tcp) - doff + bool(flags & TCP_SYN) + bool(flags & TCP_FIN)
            r_seq, r_ack, r_flags = 0, (seq + data) & 0xFFFFFFFF, TCP_RST | TCP_ACK
        answer = self.reply_route(pkt)
        if answer is None:
            return
        echoed, route = answer
        src = pkt.daddr
        addrs = struct.pack("!II", src, echoed.daddr)
        rst = bytearray(struct.pack("!HHIIBBHHH", dport, sport, r_seq, r_ack, 5 << 4,
                                    r_flags, 0, 0, 0))
        rst[16:18] = inet_checksum(pseudo_header(addrs, IPPROTO_TCP, 20) + rst).to_bytes(2, "big")
        options = echoed.build(src, pkt.ts // 1_000_000)
        hdr = bytearray(struct.pack("!BBHHHBBH", 0x40 | (5 + len(options) // 4),
                                    pkt.ip[1] & ~INET_ECN_MASK & 0xFF, 40 + len(options), 0,
                                    IP_DF, TCP_TTL, IPPROTO_TCP, 0)) + addrs + options
        set_ip_checksum(hdr)
        self.ip_local_out(bytes(hdr + rst), route, pkt, (Tcp.OutSegs, Tcp.OutRsts))

    # ------------------------------------------------------------------ reassembly

    def ip_defrag(self, pkt: Packet) -> Packet | None:
        """`ip_defrag`: queue a fragment; the datagram when it completes (a new packet
        that came in with the fragment that completed it, as the kernel's head skb)."""
        r = self.reasm.add(pkt.ip, self.clock, (pkt, self.clock))
        for gone in r.side:
            self.ip_expire(gone)
        if r.status != R.COMPLETE:
            return None
        assert r.datagram is not None
        head = next((p for p, _ in r.metas if not p.frag_off & IP_OFFSET), pkt)
        # netfilter's defrag runs before ip_rcv_options: a datagram reassembled for
        # routing has its options compiled afterwards; one reassembled for local
        # delivery (mode "forward") keeps its first fragment's IPCB options
        opts = None if self.t.reassemble_transit else head.opts
        return pkt.evolve(ip=r.datagram, opts=opts, frag_max=r.largest,
                       frag_sizes=r.sizes, frag_df=r.df)

    def expire(self) -> None:
        """The reassembly timers, on the capture clock."""
        for gone in self.reasm.expire(self.clock):
            self.ip_expire(gone)

    def ip_expire(self, gone: R.Dropped) -> None:
        """`ip_expire`: a queue that timed out with its first fragment answers ICMP
        time exceeded (reassembly), only for a datagram to the router itself
        (`frag_expire_skip_icmp`: netfilter's queues stay silent for transit ones).
        It leaves at the time the timer fired."""
        if gone.reason != R.TIMEOUT or gone.first is None:
            return
        first = bytes(gone.first)
        if self.routes.route_type(int.from_bytes(first[16:20], "big")) != NH_LOCAL:
            return
        head, _ = next(m for m in gone.metas if not m[0].frag_off & IP_OFFSET)
        started = gone.metas[0][1]
        cause = replace(head, ip=first, ts=started + self.reasm.timeout_ns)
        self.icmp_send(cause, ICMP_TIME_EXCEEDED, ICMP_EXC_FRAGTIME)

    def sync_reasm(self) -> None:
        """Move the reassembler's counts into our counters row (its fragments' drops
        by reason, the Ip: Reasm* counters, merged and held fragments) and its memory
        levels (`Reasm`: queues, bytes now, the high-water mark, the thresholds)."""
        r = self.reasm
        values = {
            index(Snmp.ReasmReqds): r.reasm_reqds,
            index(Snmp.ReasmOKs): r.reasm_oks,
            index(Snmp.ReasmFails): r.reasm_fails,
            index(Snmp.ReasmTimeout): r.reasm_timeout,
            index(Misc.reassembled): r.reasm_oks,
            index(Misc.merged): r.reassembled,
        }
        dropped = 0
        for reason, n in r.drops.items():
            col = index(SlowDrop[f"reasm_{reason}"])
            dropped += n - self._reasm_seen.get(col, 0)
            values[col] = n
        for col, value in values.items():
            self.row[col] += value - self._reasm_seen.get(col, 0)
            self._reasm_seen[col] = value
        self.row[index(Misc.dropped)] += dropped
        self.row[index(Misc.held)] = r.held + self.neigh.held
        # levels, set (not added): what /proc/net/sockstat's FRAG: line and the
        # ipfrag_*_thresh sysctls show, and the high-water mark
        self.row[index(Reasm.inuse)] = len(r)
        self.row[index(Reasm.memory)] = r.mem
        self.row[index(Reasm.memory_high)] = r.mem_high
        self.row[index(Reasm.high_thresh)] = r.high_thresh
        self.row[index(Reasm.low_thresh)] = r.low_thresh

