"""The slow-path worker: everything that is not a plain forward, as the kernel does it.

It drains the slow ring of every forwarding worker (buffer indices, zero copy). Each
buffer carries, in `mem.code`, why the fast path handed it over (verdict.SLOW + a
`Slow` reason), its ingress port in `mem.port`, its capture time in `mem.ts` and its
arrival order in `mem.seq`. Per packet, in Python, the worker then follows the
kernel function the reason leads to; each method is named after the function it
mirrors:

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

Routing decisions are the fast path's own (`route_checks`, `forward_checks` on
one-element arrays), so a packet the slow path has reassembled or whose options it
has compiled is routed in the kernel's order by the same code. ICMP errors go
through `icmp_send` (RFC 1812 §4.3.2.7 rules, the kernel's source address, echoed
options, rate limits, hashed IP IDs) and leave by the route back to their
destination, with the next hop's MAC.

What the worker sends goes out as new buffers from its own pool partition, enqueued
on `slowtx.<port>`; each carries the triggering packet's time and arrival number, so
the pcap agent's (time, arrival) order places it where the kernel would have sent
it. Every input buffer is freed once, at the end of its batch. With pcap ports a
full ring or an empty pool is waited out (the pcap agent always drains, so waiting
is safe and replays stay lossless); with live ports it would drop (`ring_full`,
`pool_empty`).

Accounting: every packet taken ends once as forwarded, delivered, dropped (a `Drop`
or `SlowDrop` reason), held in a reassembly queue or merged into a reassembled
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
a multi-core kernel. Reassembly timers run on every packet; at the end of a replay
(`finish`) the clock moves to the last input frame (`SlowPathSpec.end_clock_ns`),
the queues due by then time out and what is still queued is flushed and counted,
never timed out early.

ICMP limits are the kernel's (icmp.IcmpRateLimiter: icmp_ratelimit per host, the
global bucket, ip_error's own budget for unreachables, the redirect backoff) with
`[icmp] ratelimit_ms`; 0 turns all but the redirect backoff off, as DESIGN.md says
(the kernel's icmp_ratelimit=0 would still leave ip_error's budget on).

Not done here: ICMP timestamp replies, and ARP: a next hop without a MAC drops the
packet as `neigh_unresolved` until the live-ports work brings ARP.
"""

from __future__ import annotations

import signal
import struct
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

from engine.config import Config
from engine.counters import (
    ICMP_IN,
    ICMP_OUT,
    Drop,
    Icmp,
    Misc,
    Slow,
    SlowDrop,
    Snmp,
    Tcp,
    Udp,
    Unsent,
    index,
)
from engine.pipeline import checksum
from engine.pipeline import reasm as R
from engine.pipeline.checksum import inet_checksum, set_ip_checksum
from engine.pipeline.forward import forward_checks, source_on_link
from engine.pipeline.frag import fragment
from engine.pipeline.icmp import (
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
from engine.pipeline.options import Drop as OptionsDrop
from engine.pipeline.options import (
    EchoedOptions,
    Options,
    ParamProblem,
    compile_options,
    echo_options,
    forward_options,
    strict_route_failed,
)
from engine.pipeline.rcv import ETH_HLEN, IP_MF, IP_OFFSET
from engine.pipeline.route import LBCAST, is_local, route_checks, select_multipath
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import (
    FORWARD,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    SLOW,
)
from engine.shm.memory import (
    NH_BROADCAST,
    NH_LOCAL,
    NH_UNICAST,
    NHF_GATEWAY,
    NHF_RESOLVED,
    EngineMemory,
    Geometry,
)
from engine.shm.pool import Buffers
from engine.workers.loop import pin, poll_loop

IPPROTO_ICMP, IPPROTO_IGMP, IPPROTO_TCP, IPPROTO_UDP = 1, 2, 6, 17
ETH_P_IP = b"\x08\x00"
IP_DF = 0x4000
INET_ECN_MASK = 3
TCP_TTL = 64  # the TCP control socket's TTL: sysctl ip_default_ttl
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
ETH_BROADCAST = b"\xff" * 6
WAIT_S = 0.00005  # a lossless (pcap) port waits this long for ring or pool room

# ip_error: the route's error, its ICMP code, its drop reason, its Ip: counter
ROUTE_ERRORS = {
    Slow.no_route: (ICMP_NET_UNREACH, SlowDrop.no_route, Snmp.InNoRoutes),
    Slow.unreachable: (ICMP_HOST_UNREACH, SlowDrop.unreachable, Snmp.InAddrErrors),
    Slow.prohibit: (ICMP_PKT_FILTERED, SlowDrop.prohibit, None),
}
OPTIONS_DROPS = {"source_route": SlowDrop.source_route, "srr_not_host": SlowDrop.srr_not_host,
                 "srr_route": SlowDrop.srr_route}
# icmp_rcv: what a broadcast/multicast destination may still carry (RFC 1122 3.2.2.6)
ICMP_BROADCAST_OK = frozenset({8, 13, 17, 18})
ICMP_ECHO_LIKE = frozenset({8, 13})  # ignored from broadcasts: icmp_echo_ignore_broadcasts=1


@dataclass
class SlowPathSpec:
    geometry: Geometry
    fib_name: str
    config: Config
    batch: int
    cpu: int | None
    end_clock_ns: int | None = None  # pcap replays: the capture time of the last input frame


@dataclass
class Packet:
    """One packet on the slow path, with what the kernel keeps beside it (skb, IPCB)."""

    ip: bytes  # IP header (as compiled, once `opts` is set) up to tot_len
    in_port: int
    pkt_type: int  # PACKET_* of the frame it came in
    ts: int  # capture clock (ns): what it triggers leaves with this time...
    seq: int  # ... and this arrival number
    opts: Options | None = None  # IPCB(skb)->opt, once ip_rcv_options has run
    frag_max: int = 0  # IPCB(skb)->frag_max_size of a reassembled datagram
    frag_sizes: Sequence[int] | None = None  # its fragments' payloads (the frag_list)
    frag_df: bool = False  # IPSKB_FRAG_PMTU: refragment with DF

    @property
    def ihl(self) -> int:
        return (self.ip[0] & 0xF) * 4

    @property
    def ttl(self) -> int:
        return self.ip[8]

    @property
    def protocol(self) -> int:
        return self.ip[9]

    @property
    def frag_off(self) -> int:
        return int.from_bytes(self.ip[6:8], "big")

    @property
    def saddr(self) -> int:
        return int.from_bytes(self.ip[12:16], "big")

    @property
    def daddr(self) -> int:
        return int.from_bytes(self.ip[16:20], "big")

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag_off & (IP_MF | IP_OFFSET))


@dataclass(frozen=True)
class OutRoute:
    """The output route of a packet the router originates: port, next hop MAC, and
    the address `inet_select_addr` matches the source against (gateway or destination)."""

    port: int
    mac: bytes
    target: int


def pkt_type(frame: bytes, port_mac: bytes) -> int:
    """`eth_type_trans`: what the frame's Ethernet destination says."""
    dst = frame[:6]
    if dst == port_mac:
        return PACKET_HOST
    if dst == ETH_BROADCAST:
        return PACKET_BROADCAST
    if dst[0] & 1:
        return PACKET_MULTICAST
    return PACKET_OTHERHOST


def _one(value: int, dtype: type) -> np.ndarray:
    return np.array([value], dtype=dtype)


class SlowPath:
    """The slow-path worker's state and its per-packet methods. A process calls `run`;
    `poll` is one pass, `finish` the end of a replay."""

    def __init__(self, mem: EngineMemory, tables: Tables, cfg: Config, batch: int, *,
                 end_clock_ns: int | None = None, fib: object | None = None) -> None:
        g = mem.geometry
        self.mem = mem
        self.t = tables
        self.cfg = cfg
        self.agent = g.slowpath_agent
        self.batch = batch
        self.rings = [mem.rings[f"slow.{w}"] for w in range(g.nworkers)]
        self.tx = [mem.rings[f"slowtx.{p}"] for p in range(g.nports)]
        self.buffers = Buffers(mem, self.agent)
        self.row = mem.counters[self.agent]
        self.fib = fib  # this process's FIB reader handle (reader id: nworkers)
        self.reader = g.nworkers
        # a pcap port is a file: waiting for room is safe, and keeps replays lossless
        self.lossless = all(p.driver == "pcap" for p in cfg.ports)
        self.end_clock_ns = end_clock_ns
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

    # ------------------------------------------------------------------ the loop

    def poll(self) -> int:
        """One pass over the slow rings; returns packets handled."""
        handled = 0
        for ring in self.rings:
            idx = ring.dequeue(self.batch)
            if len(idx):
                self.handle(idx)
                handled += len(idx)
        if not self.lossless:
            # a live port stamps the wall clock: timers must run while the link is quiet
            # (a replay's clock only moves with its frames)
            self.clock = max(self.clock, time.time_ns())
            self.expire()
            self._sync_reasm()
        if self.fib is not None:
            self.fib.quiescent(self.reader)  # type: ignore[attr-defined]
        return handled

    def run(self) -> None:
        poll_loop(self.mem, self.agent, self.poll, self.rings)
        self.finish()

    def handle(self, idx: np.ndarray) -> None:
        """Take a burst: every packet to its kernel function, then free the buffers."""
        t0 = time.perf_counter_ns()
        mem = self.mem
        lengths = mem.length[idx].tolist()
        ports = mem.port[idx].tolist()
        stamps = mem.ts[idx].tolist()
        seqs = mem.seq[idx].tolist()
        codes = mem.code[idx].tolist()
        for k, i in enumerate(idx.tolist()):
            frame = mem.data[i, : lengths[k]].tobytes()  # trimmed to tot_len by the fast path
            port = ports[k]
            pkt = Packet(frame[ETH_HLEN:], port, pkt_type(frame, self.port_mac[port]),
                         stamps[k], seqs[k])
            self.take(pkt, Slow(codes[k] - SLOW))
        self.buffers.free(idx)  # every input buffer, once: what we keep are copies
        self._sync_reasm()
        row = self.row
        row[index(Misc.batches)] += 1
        row[index(Misc.busy_ns)] += time.perf_counter_ns() - t0
        # last: the control process takes "slow path taken == handed over" (with every
        # ring empty) as the sign that nothing more will come out of here
        row[index(Misc.rx_frames)] += len(idx)

    def take(self, pkt: Packet, reason: Slow) -> None:
        self.clock = max(self.clock, pkt.ts)
        try:
            self.expire()
            self.dispatch(pkt, SLOW + reason, None, decided_here=False)
        except Exception:  # one packet must not take the worker down: count, say, go on
            self.drop(SlowDrop.internal_error)
            if not self.errors_logged:
                traceback.print_exc()
            self.errors_logged += 1

    def finish(self) -> None:
        """End of a pcap replay: the clock stops at the last input frame. Queues due by
        then time out (ICMP and all); the rest are flushed and counted."""
        if self.end_clock_ns is not None:
            self.clock = max(self.clock, self.end_clock_ns)
        self.expire()
        self.reasm.flush()
        self._sync_reasm()

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
        reason = Slow(code - SLOW)
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
        else:  # ttl_exceeded, frag_needed, fragment, redirect, neigh_unresolved
            self.ip_forward(pkt, self._nh(pkt) if nh is None else nh, reason,
                            decided_here=decided_here)

    def ip_rcv_finish(self, pkt: Packet) -> None:
        """Route a packet the slow path made (a reassembled datagram) as a received one."""
        nh, code = self.route_input(pkt)
        self.dispatch(pkt, code, nh, decided_here=True)

    def route_input(self, pkt: Packet, *, daddr: int | None = None,
                    options_done: bool = False) -> tuple[int, int]:
        """`ip_route_input_slow` then, for a unicast route, `ip_forward`'s checks: the
        fast path's own functions on a batch of one. A reassembled datagram is checked
        against the MTU with its largest fragment (`ip_exceeds_mtu`, frag_max_size)."""
        t = self.t
        if daddr is None:
            daddr = pkt.daddr
        saddr = _one(pkt.saddr, np.uint32)
        nh = self._nh(pkt, daddr)
        code = int(route_checks(
            saddr, _one(daddr, np.uint32), _one(pkt.ihl >> 2, np.uint8),
            _one(pkt.is_fragment, bool), _one(pkt.pkt_type, np.uint8),
            t.nh_type[_one(nh, np.int64)], is_local(saddr, t.local_addrs),
            t.reassemble_transit, options_done)[0])
        if code == FORWARD:
            code = int(forward_checks(
                _one(pkt.pkt_type, np.uint8), _one(pkt.ttl, np.uint8),
                _one(pkt.frag_max or len(pkt.ip), np.uint32), _one(pkt.frag_off, np.uint16),
                saddr, _one(nh, np.int64), _one(pkt.in_port, np.uint16), t)[0])
        return nh, code

    def _nh(self, pkt: Packet, daddr: int | None = None) -> int:
        d = _one(pkt.daddr if daddr is None else daddr, np.uint32)
        return int(select_multipath(self.t.lookup(d), _one(pkt.saddr, np.uint32), d, self.t)[0])

    # ------------------------------------------------------------------ options

    def ip_rcv_options(self, pkt: Packet) -> None:
        """`ip_rcv_options` after the input route: compile the options (recording the
        incoming address and the time), apply `accept_source_route`, take a source
        route's next hop (`ip_options_rcv_srr`), then go where the route says."""
        nh, code = self.route_input(pkt, options_done=True)
        if code in (Drop.martian_source, Drop.martian_destination, Drop.multicast):
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
            route_type=self.route_type)
        if isinstance(result, ParamProblem):
            self.count(Snmp.InHdrErrors)
            bad = replace(pkt, ip=result.header + pkt.ip[pkt.ihl:], opts=result.opts)
            self.icmp_send(bad, ICMP_PARAMETERPROB, 0, result.pointer)
            self.drop(SlowDrop.param_problem)
            return
        if isinstance(result, OptionsDrop):
            self.drop(OPTIONS_DROPS[result.reason])
            return
        pkt = replace(pkt, ip=result.header + pkt.ip[pkt.ihl:], opts=result)
        if result.srr_is_hit:
            # ip_options_rcv_srr routes the packet again, to the next hop of the list
            nh, code = self.route_input(pkt, daddr=result.nexthop, options_done=True)
        self.dispatch(pkt, code, nh, decided_here=True)

    def route_type(self, addr: int) -> int:
        return int(self.t.nh_type[self.t.lookup(_one(addr, np.uint32))[0]])

    def pref_src(self, addr: int, fallback_port: int) -> int:
        """The preferred source of the route to `addr` (`fib_compute_spec_dst`,
        `ip_rt_get_source`): an address of its egress port matching its gateway or
        `addr`; with no route, one of `fallback_port` (`inet_select_addr`)."""
        nh = int(self.t.lookup(_one(addr, np.uint32))[0])
        kind = int(self.t.nh_type[nh])
        if kind == NH_LOCAL:
            return addr
        if kind in (NH_UNICAST, NH_BROADCAST):
            port = int(self.t.nh_port[nh])
            target = self._target(nh, addr)
        else:
            port, target = fallback_port, addr
        return select_source(self.port_addrs[port], target, other_addrs=self.all_addrs)

    def _target(self, nh: int, daddr: int) -> int:
        """`rt_nexthop`: the gateway of a gateway route, else the destination itself."""
        if int(self.t.nh_flags[nh]) & NHF_GATEWAY:
            return int(self.mem.nh_gw[nh])
        return daddr

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
        forwarded = replace(pkt, ip=decrease_ttl(pkt.ip))
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
        self.icmp_send(pkt, ICMP_REDIRECT, ICMP_REDIR_HOST, self._target(nh, pkt.daddr))

    def ip_forward_finish(self, pkt: Packet, nh: int, egress: int) -> None:
        """`ip_forward_finish` + `ip_output`: options for the way out, fragmentation to
        the egress MTU, new Ethernet header, transmit."""
        t = self.t
        if not int(t.nh_flags[nh]) & NHF_RESOLVED:
            self.drop(SlowDrop.neigh_unresolved)  # no ARP yet: see the module docstring
            return
        ip = pkt.ip
        if pkt.opts is not None and pkt.opts.optlen:
            # ip_rt_get_source: the forward route's preferred source (its destination is
            # a source route's next hop when the route came from the option)
            daddr = pkt.opts.nexthop if pkt.opts.srr_is_hit else pkt.daddr
            egress_addr = select_source(self.port_addrs[egress], self._target(nh, daddr),
                                        other_addrs=self.all_addrs)
            ip = forward_options(ip, pkt.opts, egress_addr) + ip[pkt.ihl:]
        mtu = int(t.port_mtu[egress])
        frames = self.ip_fragment(ip, mtu, pkt)
        if frames is None:
            self.drop(SlowDrop.frag_failed)
            return
        eth = self.mem.nh_mac[nh, :6].tobytes() + self.port_mac[egress] + ETH_P_IP
        refused = self.send([eth + f for f in frames], egress, pkt.ts, pkt.seq)
        if refused is not None:
            self.drop(refused)
            return
        self.count(Snmp.ForwDatagrams)
        self.count(Misc.forwarded)

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
        dst_kind = self.route_type(pkt.daddr)
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
        self.ip_local_out(packet, route, pkt, ICMP_OUT[icmp_type])

    def reply_route(self, pkt: Packet) -> tuple[EchoedOptions, OutRoute] | None:
        """`ip_options_echo`, then the output route to where an answer to `pkt` goes
        (the first hop of its reversed source route, else its source). None, counted,
        when either fails: the kernel then sends nothing."""
        echoed = echo_options(pkt.ip[: pkt.ihl], pkt.opts)
        if echoed is None:
            self.unsent(Unsent.suppressed)
            return None
        route = self.ip_route_output(echoed.daddr)
        if isinstance(route, Unsent):
            self.unsent(route)
            return None
        return echoed, route

    def ip_route_output(self, daddr: int) -> OutRoute | Unsent:
        """The route of a packet the router sends to `daddr`: a resolved unicast next
        hop (its MAC), or a subnet broadcast (an Ethernet broadcast)."""
        t = self.t
        nh = int(t.lookup(_one(daddr, np.uint32))[0])
        kind = int(t.nh_type[nh])
        if kind == NH_UNICAST:
            nh = int(select_multipath(_one(nh, np.int64), _one(0, np.uint32),
                                      _one(daddr, np.uint32), t)[0])
        elif kind != NH_BROADCAST:
            return Unsent.no_route
        port = int(t.nh_port[nh])
        if not t.port_up[_one(port, np.int64)][0]:
            return Unsent.port_down
        if kind == NH_BROADCAST:
            return OutRoute(port, ETH_BROADCAST, daddr)
        if not int(t.nh_flags[nh]) & NHF_RESOLVED:
            return Unsent.neigh_unresolved
        return OutRoute(port, self.mem.nh_mac[nh, :6].tobytes(), self._target(nh, daddr))

    def ip_local_out(self, ip: bytes, route: OutRoute, cause: Packet,
                     counter: IntEnum) -> None:
        """Send a packet the router built (an ICMP message of the type `counter` counts,
        or a TCP reset), fragmented at the route's MTU when it is longer
        (`ip_append_data` + `ip_fragment`), with `cause`'s time and number."""
        mtu = int(self.t.port_mtu[route.port])
        frames = [ip]
        if len(ip) > mtu:
            frames = fragment(ip, mtu)
            self.count(Snmp.FragOKs)
            self.count(Snmp.FragCreates, len(frames))
        eth = route.mac + self.port_mac[route.port] + ETH_P_IP
        refused = self.send([eth + f for f in frames], route.port, cause.ts, cause.seq)
        if refused is not None:
            self.unsent(Unsent.pool_empty if refused == Drop.pool_empty else Unsent.ring_full)
            return
        self.count(Snmp.OutRequests)
        self.count(Misc.created)
        if isinstance(counter, Icmp):
            self.count(Icmp.OutMsgs)
        self.count(counter)

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
        """The input route is RTCF_BROADCAST (limited or a subnet's broadcast)."""
        return pkt.daddr == LBCAST or self.route_type(pkt.daddr) == NH_BROADCAST

    def icmp_rcv(self, pkt: Packet) -> None:
        """`icmp_rcv`: checksum, header, type; echo requests to a unicast address of
        ours are answered, the rest is counted and dropped."""
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
        if kind > NR_ICMP_TYPES:
            self.count(Icmp.InErrors)
            return
        if self._broadcast(pkt) and (kind in ICMP_ECHO_LIKE or kind not in ICMP_BROADCAST_OK):
            self.count(Icmp.InErrors)  # RFC 1122 3.2.2.6, icmp_echo_ignore_broadcasts=1
            return
        if kind == ICMP_ECHO:
            self.icmp_echo(pkt)

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
        self.ip_local_out(reply, route, pkt, ICMP_OUT[ICMP_ECHOREPLY])

    def udp_rcv(self, pkt: Packet) -> None:
        """`__udp4_lib_rcv` with no socket bound: a well-formed datagram to a unicast
        address of ours gets a port unreachable (`UDP_MIB_NOPORTS`)."""
        udp = pkt.ip[pkt.ihl:]
        ulen = int.from_bytes(udp[4:6], "big") if len(udp) >= 8 else 0
        if len(udp) < 8 or ulen < 8 or ulen > len(udp):
            self.count(Udp.InErrors)  # short_packet
            return
        if udp[6:8] != b"\0\0":  # 0: the sender computed no checksum (RFC 768)
            if inet_checksum(pseudo_header(pkt.ip[12:20], IPPROTO_UDP, ulen) + udp[:ulen]):
                self.count(Udp.InCsumErrors)
                self.count(Udp.InErrors)
                return
        if self._broadcast(pkt):
            return  # __udp4_lib_mcast_deliver: no socket, nothing said
        self.count(Udp.NoPorts)
        self.icmp_send(pkt, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH)

    def tcp_v4_rcv(self, pkt: Packet) -> None:
        """`tcp_v4_rcv` with no socket: a well-formed segment in a frame for our MAC is
        answered with a reset (`tcp_v4_send_reset`)."""
        if pkt.pkt_type != PACKET_HOST:
            return  # discard_it
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
        if flags & TCP_RST or self.route_type(pkt.daddr) != NH_LOCAL:
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
        self.ip_local_out(bytes(hdr + rst), route, pkt, Tcp.OutRsts)

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
        return replace(pkt, ip=r.datagram, opts=opts, frag_max=r.largest,
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
        if self.route_type(int.from_bytes(first[16:20], "big")) != NH_LOCAL:
            return
        head, _ = next(m for m in gone.metas if not m[0].frag_off & IP_OFFSET)
        started = gone.metas[0][1]
        cause = replace(head, ip=first, ts=started + self.reasm.timeout_ns)
        self.icmp_send(cause, ICMP_TIME_EXCEEDED, ICMP_EXC_FRAGTIME)

    def _sync_reasm(self) -> None:
        """Move the reassembler's counts into our counters row (its fragments' drops
        by reason, the Ip: Reasm* counters, merged and held fragments)."""
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
        self.row[index(Misc.held)] = r.held

    # ------------------------------------------------------------------ output, counters

    def send(self, frames: list[bytes], port: int, ts: int, seq: int) -> Drop | None:
        """Frames (Ethernet and all) to port `port`'s slow TX ring, all or none, in new
        buffers from our partition. Returns the drop reason if refused."""
        n = len(frames)
        ring = self.tx[port]
        while True:
            idx = self.buffers.alloc(n)
            if len(idx) == n:
                break
            self.buffers.free(idx)
            if not self.lossless:
                return Drop.pool_empty
            self._wait()
        while ring.free_space() < n:
            if not self.lossless:
                self.buffers.free(idx)
                return Drop.ring_full
            self._wait()
        mem = self.mem
        for i, frame in zip(idx.tolist(), frames, strict=True):
            mem.data[i, : len(frame)] = np.frombuffer(frame, dtype=np.uint8)
            mem.length[i] = len(frame)
        mem.port[idx] = port
        mem.ts[idx] = ts
        mem.seq[idx] = seq
        ring.enqueue(idx)
        self.row[index(Misc.tx_frames)] += n
        return None

    def _wait(self) -> None:
        if self.fib is not None:
            self.fib.quiescent(self.reader)  # type: ignore[attr-defined]
        time.sleep(WAIT_S)

    def count(self, counter: IntEnum, n: int = 1) -> None:
        self.row[index(counter)] += n

    def drop(self, reason: Drop | SlowDrop) -> None:
        self.row[index(reason)] += 1
        self.row[index(Misc.dropped)] += 1

    def unsent(self, reason: Unsent) -> None:
        self.row[index(reason)] += 1


def pseudo_header(addrs: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header of TCP and UDP checksums (source and destination as on
    the wire, then zero, protocol, length)."""
    return addrs + struct.pack("!BBH", 0, proto, length)


def decrease_ttl(ip: bytes) -> bytes:
    """`ip_decrease_ttl`: TTL - 1 with the incremental checksum update (RFC 1624)."""
    h = bytearray(ip[:12])
    h[8] -= 1
    check = checksum.ttl_decrement(_one(int.from_bytes(h[10:12], "big"), np.uint32))
    h[10:12] = int(check[0]).to_bytes(2, "big")
    return bytes(h) + ip[12:]


def slowpath_main(spec: SlowPathSpec) -> None:
    """Entry point of the slow-path process."""
    from engine.routing import make_tables
    from engine.shm.fib import Fib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the control process decides when to stop
    pin(spec.cpu)
    mem = EngineMemory.attach(spec.geometry)
    fib = Fib.attach(spec.fib_name, reader_id=spec.geometry.nworkers)
    try:
        SlowPath(mem, make_tables(spec.config, mem, fib.lookup), spec.config, spec.batch,
                 end_clock_ns=spec.end_clock_ns, fib=fib).run()
    finally:
        fib.close()
        mem.close()
