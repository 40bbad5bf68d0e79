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
    arp                         neigh.arp_rcv           arp_rcv, arp_process

Whole datagrams (`take_whole`, "whole datagrams" below): before that, a burst's
fragments that make up complete datagrams on their own and are plainly forwarded
are found over arrays and sent as they came, each with its datagram's header (the
kernel's frag_list fast path), in the buffers they came in; only the rest is taken a
packet at a time. Nothing but the cost differs (tests/test_slowpath_whole.py).

Routing decisions are the fast path's own (`route_checks`, `forward_checks`), so a
packet the slow path has reassembled or whose options it has compiled is routed in
the kernel's order by the same code. They run over arrays, once per burst for the
questions its packets will ask (`prefetch`: numpy costs per call, ~100 µs for a batch
of one); each packet then takes its answer in turn ("routing, a burst at a time"
below). ICMP errors go
through `icmp_send` (RFC 1812 §4.3.2.7 rules, the kernel's source address, echoed
options, rate limits, hashed IP IDs) and leave by the route back to their
destination, with the next hop's MAC.

Neighbours (`self.neigh`, workers/neighbours.py): a next hop whose MAC is in neither
its next-hop row nor the shared neighbour table (`neigh_unresolved` from the fast
path, or a packet the router originates) is resolved with ARP as the kernel does
(`neigh_resolve_output`): an INCOMPLETE entry, broadcast requests every retrans_time,
the packet held meanwhile, then sent with the learned MAC, or answered with ICMP host
unreachable when nobody answers. ARP frames for our MAC or broadcast (`Slow.arp`) are
answered and learned from there, and the neighbour timers run on the clock below
(`tick`, on every packet and every pass).

What the worker sends goes out as new buffers from its own pool partition, enqueued
on `slowtx.<port>` in the order it was sent, at the end of the burst (`transmit`,
`flush_tx`: one allocation for the burst; counters move at the same time, and
before `rx_frames` says the burst is done); each carries the triggering packet's
time and arrival number, so the pcap agent's (time, arrival) order places it where
the kernel would have sent it. Every input buffer is freed once, at the end of its
batch. What it costs per packet: perf/bench_slowpath.py, perf/README.md. With pcap ports a
full ring or an empty pool is waited out (the pcap agent always drains, so waiting
is safe and replays stay lossless); with live ports it would drop (`ring_full`,
`pool_empty`).

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
of a replay (`finish`) the clock moves to the last input frame
(`SlowPathSpec.end_clock_ns`), the queues and resolutions due by then time out and
what is still queued or held is flushed and counted, never timed out early.

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

import signal
import struct
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import numpy as np

from engine.config import Config
from engine.counters import (
    ICMP_IN,
    ICMP_OUT,
    SECTIONS,
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
from engine.pipeline.checksum import inet_checksum, set_ip_checksum
from engine.pipeline.forward import (
    forward_checks,
    next_hop_addr,
    set_ethernet,
    source_on_link,
)
from engine.pipeline.rcv import mac48
from engine.pipeline.route import (
    LBCAST,
    is_local,
    plain_route,
    route_checks,
    select_multipath,
)
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import (
    FORWARD,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    SLOW,
)
from engine.proto import (
    ETH_BROADCAST,
    ETH_HLEN,
    ETH_TYPE_IP,
    IP_DF,
    IP_MF,
    IP_OFFSET,
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
    Geometry,
)
from engine.shm.neigh_table import NeighbourTable
from engine.shm.pool import Buffers
from engine.slowpath import reasm as R
from engine.slowpath.frag import fraglist_headers, fragment
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
    Options,
    ParamProblem,
    compile_options,
    echo_options,
    forward_options,
    strict_route_failed,
)
from engine.workers.loop import pin, poll_loop

INET_ECN_MASK = 3
TCP_TTL = 64  # the TCP control socket's TTL: sysctl ip_default_ttl
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
WAIT_S = 0.00005  # a lossless (pcap) port waits this long for ring or pool room
SLOW_BURST = 1024  # the most a burst takes from one slow ring (see SlowPath.batch)

# ip_error: the route's error, its ICMP code, its drop reason, its Ip: counter
ROUTE_ERRORS = {
    Slow.no_route: (ICMP_NET_UNREACH, SlowDrop.no_route, Snmp.InNoRoutes),
    Slow.unreachable: (ICMP_HOST_UNREACH, SlowDrop.unreachable, Snmp.InAddrErrors),
    Slow.prohibit: (ICMP_PKT_FILTERED, SlowDrop.prohibit, None),
}
# what prefetch foresees: ip_forward on the fast path's verdict needs the next hop; an
# ICMP answer the route type of the destination and the route back to the source
FORWARD_REASONS = frozenset({Slow.ttl_exceeded, Slow.frag_needed, Slow.fragment,
                             Slow.redirect, Slow.neigh_unresolved})
ANSWERED_REASONS = frozenset({Slow.local, Slow.no_route, Slow.unreachable, Slow.prohibit,
                              Slow.ttl_exceeded, Slow.frag_needed, Slow.redirect})
FORESEEN_REASONS = FORWARD_REASONS | ANSWERED_REASONS
NEIGH_UNRESOLVED = SLOW + Slow.neigh_unresolved
SLOW_REASONS = {int(r): r for r in Slow}  # Slow(n) without the enum call
FORWARDED = (Snmp.ForwDatagrams, Misc.forwarded)  # counted once a forward is sent
# A routing question `route_input` asks: (saddr, daddr, ihl in words, is a fragment,
# pkt_type, options done, ttl, size for the MTU, frag_off, ingress port), every input of
# route_checks and forward_checks besides the tables; and the dtypes they take
RouteKey = tuple[int, int, int, bool, int, bool, int, int, int, int]
ROUTE_FIELDS = struct.Struct("!B5xHB3xII")  # ver_ihl, frag_off, ttl, saddr, daddr
ADDRESSES = struct.Struct("!II")  # saddr, daddr at offset 12
U32 = struct.Struct("!I")
ROUTE_KEY_DTYPES = (np.uint32, np.uint32, np.uint8, bool, np.uint8, bool, np.uint8, np.uint32,
                    np.uint16, np.uint16)
# counters.index of every counter, by identity (members are singletons; two IntEnum
# members of different sections with one value are equal, and so one dict key)
COLUMNS = {id(m): index(m) for section in SECTIONS for m in section}
# ip_route_input failing before ip_rcv_options looks at the options
ROUTE_INPUT_FAILED = frozenset({Drop.martian_source, Drop.martian_destination, Drop.multicast})
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

    def evolve(self, **changes: Any) -> Packet:
        """`dataclasses.replace` without its per-call field walk (5 µs): a copy with
        `changes` (field names only)."""
        new = object.__new__(Packet)
        new.__dict__.update(self.__dict__, **changes)
        return new

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
        return (self.ip[6] << 8) | self.ip[7]

    @property
    def saddr(self) -> int:
        return U32.unpack_from(self.ip, 12)[0]

    @property
    def daddr(self) -> int:
        return U32.unpack_from(self.ip, 16)[0]

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag_off & (IP_MF | IP_OFFSET))


@dataclass
class WholeBurst:
    """The whole datagrams of a burst (`SlowPath.take_whole`), in the order they
    completed, their fragments rewritten in place and ready to leave."""

    rest: np.ndarray  # rows of the burst taken one at a time (`take`)
    buffers: np.ndarray  # pool buffers of the datagrams' fragments, in the order sent
    ports: np.ndarray  # the egress port of each
    bounds: list[int]  # datagram d: buffers[bounds[d] : bounds[d + 1]]
    clock: list[int]  # the worker's clock when datagram d completed
    upto: list[int]  # datagrams completed before the j-th packet taken alone
    saw: dict[int, list[tuple[bytes, int]]]  # before that packet: (source, fragments)
    ctl: bytes  # the control words they were routed under
    # what rebuilding datagram d takes (`SlowPath._rebuilt`): its first fragment's
    # header as it came, each fragment's payload size (in buffers' order), and the
    # frame, time, number, largest fragment, DF and ECN of the datagram
    heads: np.ndarray
    sizes: list[int]
    in_port: list[int]
    ts: list[int]
    seq: list[int]
    largest: list[int]
    df: list[bool]
    ecn: list[int]
    # datagrams sent through an entry ARP resolved: (the entry, its MAC, port) then
    learned: dict[int, tuple[Any, bytes, int]]
    sent: int = 0  # datagrams taken so far


@dataclass(frozen=True)
class OutRoute:
    """The output route of a packet the router originates: port, next hop MAC (None:
    the neighbour table's, ARP's), and the address `inet_select_addr` matches the
    source against and ARP resolves (gateway or destination)."""

    port: int
    mac: bytes | None
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
        # a burst is what a slow ring holds, up to SLOW_BURST (or `batch`): when the
        # slow path falls behind, its per-burst costs (numpy calls: routing, whole
        # datagrams) spread over more packets and fewer datagrams are cut by a
        # burst's edge, as NAPI polls more when there is more to take
        self.batch = max(batch, SLOW_BURST)
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
        # this burst's routing answers (see "routing, a burst at a time")
        self._in_routes: dict[RouteKey, tuple[int, int]] = {}
        self._nexthops: dict[tuple[int, int], int] = {}
        self._fib_nh: dict[int, int] = {}
        self._out_routes: dict[int, OutRoute | Unsent] = {}
        self._ports_up: list[bool] | None = None
        self._memo_ctl = b""  # the control words the answers were given under
        # what transmit queued for the end of the burst: (frames, port, ts, seq,
        # counters when sent, call when refused), or (None, WholeBurst, d0, d1): its
        # datagrams d0..d1-1, in the buffers they came in (see "whole datagrams")
        self._txq: list[tuple[Any, ...]] = []
        self.whole_bursts = True  # False: every packet through `take` (tests compare)
        # counter increments not yet added to the shared row (a column: its increment);
        # a Python dict is cheaper than a shared numpy scalar per increment
        self._counts: dict[int, int] = {}
        # ARP, neighbour states, hold queues (workers/neighbours.py): once the engine
        # runs, this worker is the only writer of the shared neighbour table
        self.neigh = resolver_for(NeighbourTable(mem), self, cfg)

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
            self._forget()
            self.expire()
            self._sync_reasm()
        self.neigh.tick(self.clock)
        self.flush_tx()
        self._flush_counts()
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
        whole = None
        if self.whole_bursts and len(idx) > 1 and self.t.reassemble_transit:
            try:
                whole = self.take_whole(idx)
            except Exception:  # then every packet goes one at a time
                self._log_error()
        rest = idx if whole is None else idx[whole.rest]
        lengths = mem.length[rest].tolist()
        ports = mem.port[rest].tolist()
        stamps = mem.ts[rest].tolist()
        seqs = mem.seq[rest].tolist()
        codes = mem.code[rest].tolist()
        burst = []
        for k, i in enumerate(rest.tolist()):
            frame = mem.data[i, : lengths[k]].tobytes()  # trimmed to tot_len by the fast path
            port = ports[k]
            pkt = Packet(frame[ETH_HLEN:], port, pkt_type(frame, self.port_mac[port]),
                         stamps[k], seqs[k])
            burst.append((pkt, SLOW_REASONS[codes[k] - SLOW]))
        try:
            self.prefetch(burst)
        except Exception:  # a header prefetch cannot read: each packet asks alone
            self._forget()
            self._log_error()
        if whole is None:
            for pkt, reason in burst:
                self.take(pkt, reason)
        else:
            for j, (pkt, reason) in enumerate(burst):
                self.send_whole(whole, j)
                self.take(pkt, reason)
            self.send_whole(whole, len(burst))
        self.buffers.free(rest)  # every input buffer, once: what we keep are copies
        self.flush_tx()
        self._sync_reasm()
        self._flush_counts()
        row = self.row
        row[index(Misc.batches)] += 1
        row[index(Misc.busy_ns)] += time.perf_counter_ns() - t0
        # last: the control process takes "slow path taken == handed over" (with every
        # ring empty) as the sign that nothing more will come out of here
        row[index(Misc.rx_frames)] += len(idx)

    # ------------------------------------------------------------------ whole datagrams

    # A burst often holds every fragment of a datagram (a host sending a large UDP
    # datagram sends its fragments back to back). When they fit together exactly and
    # the datagram is plainly forwarded (the route's verdict FORWARD for the
    # reassembled datagram: TTL, MTU to its largest fragment, a port that is up, no
    # redirect, a next hop with its MAC), the kernel with netfilter's defrag sends the
    # fragments again as they came, each with the datagram's header (`ip_do_fragment`'s
    # frag_list fast path). `take_whole` does that for all such datagrams of a burst
    # at once, over arrays and in the buffers they came in: their headers rewritten,
    # no copy, no `Reassembler.add` per fragment. Anything with a doubt goes one packet
    # at a time (`take`), which is where the odd cases are handled. What is the same
    # either way, and tests/test_slowpath_whole.py checks against `whole_bursts = False`:
    # frames, their time, arrival number, port and order on each ring; every counter;
    # the reassembler's queues, memory and ip_frag_too_far counters. For that each
    # datagram is taken where its last fragment came (`send_whole`, between the other
    # packets, with the timers run at its time), its fragments count for their
    # source's too_far counter where they came (`Reassembler.saw`), and a burst that
    # could push reassembly memory past high_thresh, or a datagram whose key has a
    # queue, is left to `take`.

    def take_whole(self, idx: np.ndarray) -> WholeBurst | None:
        """Find the datagrams a burst completes on its own and that are plainly
        forwarded; rewrite their fragments in place; None when there are none."""
        mem = self.mem
        reasm = self.reasm
        t = self.t
        codes = mem.code[idx]
        for_reasm = codes == SLOW + Slow.reassemble
        if np.count_nonzero(for_reasm) < 2:
            return None
        lengths = mem.length[idx]
        stamps = mem.ts[idx]
        hdr = mem.data[idx, : ETH_HLEN + 20]
        ip = hdr[:, ETH_HLEN:]
        words = ip.view(">u2")
        tot_len = words[:, 1].astype(np.uint32)
        frag_off = words[:, 3]
        candidate = for_reasm & (ip[:, 0] == 0x45) & (lengths == ETH_HLEN + tot_len)
        clock = np.maximum.accumulate(np.maximum(stamps, self.clock))
        w = R.whole_datagrams(ip, candidate, clock, reasm.timeout_ns, reasm.max_dist)
        if not len(w):
            return None
        # memory: with every fragment of the burst held at once, no eviction
        is_frag = (frag_off & (IP_MF | IP_OFFSET)) != 0
        worst = (reasm.mem + int(tot_len[is_frag].sum())
                 + int(np.count_nonzero(is_frag)) * (R.SKB_OVERHEAD + R.IPQ_SIZE))
        if worst > reasm.high_thresh:
            return None
        head, last = w.head, w.last
        addrs = ip[head, 12:20].view(">u4")
        saddr, daddr = addrs[:, 0].astype(np.uint32), addrs[:, 1].astype(np.uint32)
        # the reassembled datagram as ip_rcv_finish routes it (its first fragment's
        # header, in the frame of the fragment that completed it) and ip_forward
        # passes it: the fast path's plain forward, with the largest fragment for the
        # MTU (ip_exceeds_mtu on frag_max_size)
        nh = select_multipath(t.lookup(daddr), saddr, daddr, t)
        in_port = mem.port[idx[last]]
        egress = t.nh_port[nh]
        host = mac48(hdr[last, :6]) == t.port_mac48[in_port]
        keep = self._plain(saddr, daddr, w.largest, nh, is_local(saddr, t.local_addrs),
                           ip[head, 8], in_port, host)
        if len(reasm) and np.count_nonzero(keep):
            keep &= ~self._held_keys(ip, head)
        # neigh_output: the next hop's MAC in its row (static), else ARP's entry when
        # it sends at once until the burst's last datagram is done
        mac = t.nh_mac48[nh]
        learned = {}
        unresolved = np.flatnonzero(keep & (mac == 0))
        if len(unresolved):
            learned = self._learned(unresolved, daddr, nh, egress, mac, keep,
                                    int(clock[last].max()))
        kept = np.flatnonzero(keep)
        if not len(kept):
            return None
        counts = np.diff(w.bounds)[kept]
        bounds = np.zeros(len(kept) + 1, dtype=np.intp)
        np.cumsum(counts, out=bounds[1:])
        if len(kept) < len(w):
            rows = w.rows[np.repeat(w.bounds[kept], counts)
                          + (np.arange(bounds[-1]) - np.repeat(bounds[:-1], counts))]
            head, last, nh, egress, mac = head[kept], last[kept], nh[kept], egress[kept], mac[kept]
        else:
            rows = w.rows
        ndatagrams, nfrags = len(kept), len(rows)
        datagram = np.repeat(np.arange(ndatagrams), counts)
        # ip_forward on each datagram, then the frag_list: each fragment gets the
        # datagram's header (TTL - 1, ECN of the reassembly) with its own length
        # and offset, and the next hop's Ethernet header
        heads = ip[head]  # as they came: a datagram rebuilt late (`send_whole`) needs them
        dgram = heads.copy()
        ecn = w.ecn[kept]
        dgram[:, 1] |= ecn
        dgram[:, 8] -= 1  # ip_decrease_ttl; the checksum is recomputed per fragment
        out = np.empty((nfrags, ETH_HLEN + 20), dtype=np.uint8)
        out[:, ETH_HLEN:] = fraglist_headers(dgram, datagram, tot_len[rows], frag_off[rows])
        out[:, 12:14] = hdr[rows, 12:14]
        set_ethernet(out, mac[datagram], egress[datagram], t)
        buffers = idx[rows]
        mem.data[buffers, : ETH_HLEN + 20] = out
        ports = egress[datagram]
        mem.port[buffers] = ports
        # they leave with the time and number of the fragment that completed them
        ts, seq = stamps[last], mem.seq[idx[last]]
        mem.ts[buffers] = ts[datagram]
        mem.seq[buffers] = seq[datagram]
        reasm.took_whole(nfrags, ndatagrams)
        # where each datagram is taken among the packets taken one at a time
        alone = np.ones(len(idx), dtype=bool)
        alone[rows] = False
        rest = np.flatnonzero(alone)
        before = np.searchsorted(rest, last)  # packets taken alone before it completes
        upto = np.searchsorted(before, np.arange(len(rest) + 1), side="right")
        saw = {}
        if reasm.max_dist and (reasm.sources or np.count_nonzero(is_frag[rest])):
            saw = self._saw_where(ip, rows, rest, is_frag)
        number = {k: d for d, k in enumerate(kept.tolist())} if learned else {}
        return WholeBurst(rest, buffers, ports, bounds.tolist(), clock[last].tolist(),
                          upto.tolist(), saw, mem.ctl.tobytes(), heads,
                          (tot_len[rows] - 20).tolist(), in_port[kept].tolist(),
                          ts.tolist(), seq.tolist(), w.largest[kept].tolist(),
                          w.df[kept].tolist(), ecn.tolist(),
                          {number[k]: entry for k, entry in learned.items()})

    def _learned(self, rows: np.ndarray, daddr: np.ndarray, nh: np.ndarray,
                 egress: np.ndarray, mac: np.ndarray, keep: np.ndarray,
                 until: int) -> dict[int, tuple[Any, bytes, int]]:
        """For datagrams `rows` whose next hop ARP resolves: the entry each is sent
        through (its MAC written into `mac`), or `keep` cleared when `output` would
        do more than send (the packet then goes through it)."""
        t = self.t
        targets = next_hop_addr(daddr[rows], nh[rows], t.nh_flags[nh[rows]], t).tolist()
        found: dict[tuple[int, int], Any] = {}
        learned = {}
        for k, target, port in zip(rows.tolist(), targets, egress[rows].tolist(),
                                   strict=True):
            n = found.get((target, port), False)
            if n is False:
                n = found[(target, port)] = self.neigh.sends_at_once(target, port, until)
            if n is None:
                keep[k] = False
                continue
            mac[k] = int.from_bytes(n.mac, "little")
            learned[k] = (n, n.mac, port)
        return learned

    def _held_keys(self, ip: np.ndarray, head: np.ndarray) -> np.ndarray:
        """Which datagrams (by their first fragment's header) have a reassembly queue
        held: they are not of this burst alone."""
        reasm = self.reasm
        if len(reasm) * 4 < len(head):  # few queues: each compared with every datagram
            addrs = ip[head, 12:20].view(">u8")[:, 0]
            id_proto = (ip[head, 4:6].view(">u2")[:, 0].astype(np.uint32) << 8) | ip[head, 9]
            held = np.zeros(len(head), dtype=bool)
            for src, dst, ident, proto in reasm.keys():
                held |= (addrs == int.from_bytes(src + dst, "big")) & (
                    id_proto == (ident << 8 | proto))
            return held
        src, dst = ip[head, 12:16].tobytes(), ip[head, 16:20].tobytes()
        ident = ((ip[head, 4].astype(np.uint32) << 8) | ip[head, 5]).tolist()
        proto = ip[head, 9].tolist()
        holds = reasm.holds
        return np.array([holds((src[4 * k : 4 * k + 4], dst[4 * k : 4 * k + 4], ident[k],
                                proto[k])) for k in range(len(head))], dtype=bool)

    def _saw_where(self, ip: np.ndarray, rows: np.ndarray, rest: np.ndarray,
                   is_frag: np.ndarray) -> dict[int, list[tuple[bytes, int]]]:
        """For `Reassembler.saw`: before the j-th packet taken alone, how many fragments
        taken whole came from each source (only sources that can have queues held by
        then: those with queues now, or with fragments among the packets taken alone)."""
        src = ip[rows, 12:16].view(">u4")[:, 0]
        where = np.searchsorted(rest, rows)  # fragments: before packet `where` taken alone
        alone = rest[is_frag[rest]]
        sources = set(self.reasm.source_addrs()) | set(
            ip[alone, 12:16].view(">u4")[:, 0].tolist())
        saw: dict[int, list[tuple[bytes, int]]] = {}
        for addr in sources:
            mine = src == addr
            if not np.count_nonzero(mine):
                continue
            per = np.bincount(where[mine])
            for j in np.flatnonzero(per).tolist():
                saw.setdefault(j, []).append((addr.to_bytes(4, "big"), int(per[j])))
        return saw

    def send_whole(self, w: WholeBurst, j: int) -> None:
        """Take the whole datagrams completed before the `j`th packet taken alone (or,
        j = their number, after the last): each at its time, after the timers due."""
        for src, n in w.saw.get(j, ()):
            self.reasm.saw(src, n)
        start, end = w.sent, w.upto[j]
        if start == end:
            return
        w.sent = end
        if self.mem.ctl.tobytes() != w.ctl:
            # the tables changed since the burst was routed: each datagram is routed
            # now, as the one `Reassembler.add` would have made
            for d in range(start, end):
                self.clock = max(self.clock, w.clock[d])
                self.expire()
                self.neigh.tick(self.clock)
                self.ip_rcv_finish(self._rebuilt(w, d))
                self.buffers.free(w.buffers[w.bounds[d] : w.bounds[d + 1]])
            return
        if not w.learned and w.clock[end - 1] < self._next_timer():
            # no timer falls due before the last of them (the common case): together
            self.count(Snmp.FragOKs, end - start)
            self.count(Snmp.FragCreates, w.bounds[end] - w.bounds[start])
            self.clock = max(self.clock, w.clock[end - 1])
            self.neigh.tick(self.clock)
            self._txq.append((None, w, start, end))
            return
        for d in range(start, end):  # each after the timers due by its time
            self.clock = max(self.clock, w.clock[d])
            self.expire()
            self.neigh.tick(self.clock)
            entry = w.learned.get(d)
            if entry is not None:
                n, mac, port = entry
                if not self.neigh.unchanged(n, mac, port):  # ARP moved it: `output` decides
                    self.ip_rcv_finish(self._rebuilt(w, d))
                    self.buffers.free(w.buffers[w.bounds[d] : w.bounds[d + 1]])
                    continue
                n.seq = w.seq[d]  # as `output` marks the entry with what it sent last
            self.count(Snmp.FragOKs)
            self.count(Snmp.FragCreates, w.bounds[d + 1] - w.bounds[d])
            queue = self._txq
            if queue and queue[-1][0] is None and queue[-1][1] is w and queue[-1][3] == d:
                queue[-1] = (None, w, queue[-1][2], d + 1)
            else:
                queue.append((None, w, d, d + 1))

    def _next_timer(self) -> int | float:
        """When the next reassembly or neighbour timer falls due (the clock's value)."""
        return min(self.reasm.next_timer(), self.neigh.next_timer())

    def _rebuilt(self, w: WholeBurst, d: int) -> Packet:
        """Whole datagram d as `Reassembler._reasm` makes it (`ip_defrag`'s result)."""
        hdr = bytearray(w.heads[d].tobytes())
        start, end = w.bounds[d], w.bounds[d + 1]
        total = 20 + sum(w.sizes[start:end])
        hdr[1] |= w.ecn[d]
        hdr[2:4] = total.to_bytes(2, "big")
        hdr[6:8] = (IP_DF if w.df[d] else 0).to_bytes(2, "big")
        set_ip_checksum(hdr)
        data = self.mem.data
        payloads = [data[b, ETH_HLEN + 20 : ETH_HLEN + 20 + size].tobytes()
                    for b, size in zip(w.buffers[start:end].tolist(), w.sizes[start:end],
                                       strict=True)]
        return Packet(bytes(hdr) + b"".join(payloads), w.in_port[d], PACKET_HOST, w.ts[d], w.seq[d],
                      frag_max=w.largest[d], frag_sizes=w.sizes[start:end], frag_df=w.df[d])

    def take(self, pkt: Packet, reason: Slow) -> None:
        self.clock = max(self.clock, pkt.ts)
        if self.mem.ctl.tobytes() != self._memo_ctl:
            self._forget()  # tables changed: ask again (see "routing, a burst at a time")
        try:
            self.expire()
            self.neigh.tick(self.clock)
            self.dispatch(pkt, SLOW + reason, None, decided_here=False)
        except Exception:  # one packet must not take the worker down: count, say, go on
            self.drop(SlowDrop.internal_error)
            self._log_error()

    def _log_error(self) -> None:
        if not self.errors_logged:
            traceback.print_exc()
        self.errors_logged += 1

    def finish(self) -> None:
        """End of a pcap replay: the clock stops at the last input frame. Queues due by
        then time out (ICMP and all); the rest are flushed and counted."""
        if self.end_clock_ns is not None:
            self.clock = max(self.clock, self.end_clock_ns)
        self._forget()
        self.expire()
        self.neigh.tick(self.clock)
        self.reasm.flush()
        self.neigh.flush()
        self.flush_tx()
        self._sync_reasm()
        self._flush_counts()

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
        nh, code = self.route_input(pkt)
        self.dispatch(pkt, code, nh, decided_here=True)

    def route_input(self, pkt: Packet, *, daddr: int | None = None,
                    options_done: bool = False) -> tuple[int, int]:
        """`ip_route_input_slow` then, for a unicast route, `ip_forward`'s checks: the
        fast path's own functions (`route_inputs`; the burst's answer when `prefetch`
        foresaw the question). A reassembled datagram is checked against the MTU with
        its largest fragment (`ip_exceeds_mtu`, frag_max_size)."""
        key = route_key(pkt, daddr, options_done)
        answer = self._in_routes.get(key)
        if answer is None:
            answer = self.route_inputs([key])[0]
        return answer

    def _nh(self, pkt: Packet, daddr: int | None = None) -> int:
        return self._nexthop(pkt.saddr, pkt.daddr if daddr is None else daddr)

    # ------------------------------------------------------------------ routing, a burst at a time

    # A routing question (a packet's input route and ip_forward's verdict, a next hop,
    # the FIB's answer for an address; and, kept the same way by `reply_route`, the
    # output route of an answer) is answered by the fast path's functions over
    # arrays, which cost numpy's overhead per call (about 1 µs), not per packet: on a
    # batch of one, routing a packet cost ~100 µs. So `prefetch` asks, for the whole
    # burst at once, the questions its packets will ask, and each packet finds its
    # answer here when it gets there, in order; a question nobody foresaw (a source
    # route's next hop, a datagram whose first fragment was not its largest) is asked
    # alone, of the same functions. The answers are those of the tables as the burst
    # starts, as the fast path reads them once per batch; they are forgotten at the
    # next burst, and as soon as a control word moves (a port up or down, next hops or
    # neighbours changed, possibly by this worker). An unresolved neighbour is never
    # kept: an entry that becomes usable moves no control word.

    def prefetch(self, burst: Sequence[tuple[Packet, Slow]]) -> None:
        """Answer together the routing questions a burst's packets will ask: the input
        route of each packet with options and of each datagram a first fragment starts
        (`RouteKey`s, as `route_input` will ask them), the next hop of each packet the
        fast path found to forward, and what an ICMP answer needs (the route type of
        the destination, the route back to the source)."""
        self._forget()
        inputs: dict[RouteKey, None] = {}  # dicts as ordered sets
        pairs: dict[tuple[int, int], None] = {}
        addrs: dict[int, None] = {}
        transit = self.t.reassemble_transit
        for pkt, reason in burst:
            if reason == Slow.reassemble:
                # the datagram as ip_rcv_finish will route it if this fragment completes
                # it: its first fragment's header (this one, or the one its queue
                # holds), no fragment bits but DF, in this fragment's frame, the largest
                # fragment so far as the largest (a guess: a wrong one only costs a
                # question asked alone)
                head = pkt if not pkt.frag_off & IP_OFFSET else self._held_head(pkt)
                if transit and head is not None:
                    first = route_key(head, None, False)
                    key = first[:3] + (False,) + first[4:8] + (first[8] & IP_DF, first[9])
                    inputs[key] = None
                    if key[2] > 5:  # then ip_rcv_options routes it once more
                        inputs[key[:5] + (True,) + key[6:]] = None
                continue
            if reason == Slow.options:
                key = route_key(pkt, None, True)
                inputs[key] = None
                addrs[key[0]] = None  # pref_src: the route back to the source
                continue
            if reason not in FORESEEN_REASONS:
                continue
            saddr, daddr = ADDRESSES.unpack_from(pkt.ip, 12)
            if reason in FORWARD_REASONS:
                pairs[(saddr, daddr)] = None
            if reason in ANSWERED_REASONS:
                addrs[daddr] = None
                addrs[saddr] = None
                pairs[(0, saddr)] = None  # ip_route_output's multipath choice
        if inputs:
            self.route_inputs(list(inputs))
        if pairs:
            self.nexthops(list(pairs))
        if addrs:
            self.lookups(list(addrs))

    def _held_head(self, pkt: Packet) -> Packet | None:
        """`pkt` (a fragment) as the datagram it may complete starts: the first fragment
        its reassembly queue holds, with the largest fragment so far; None if none."""
        ip = pkt.ip
        held = self.reasm.held_head((ip[12:16], ip[16:20], (ip[4] << 8) | ip[5], ip[9]))
        if held is None:
            return None
        head, largest = held
        return pkt.evolve(ip=head, frag_max=max(largest, len(ip)))

    def route_inputs(self, keys: Sequence[RouteKey]) -> list[tuple[int, int]]:
        """(next hop, verdict code) of each packet a `RouteKey` describes:
        `route_checks`, then `forward_checks` where it says forward, over arrays; the
        answers are kept for the burst."""
        columns = zip(*keys, strict=True)
        nh, code = self.route_arrays(*(np.array(col, dtype=dtype) for col, dtype
                                       in zip(columns, ROUTE_KEY_DTYPES, strict=True)))
        answers = list(zip(nh.tolist(), code.tolist(), strict=True))
        for key, answer in zip(keys, answers, strict=True):
            self._nexthops[(key[0], key[1])] = answer[0]
            if answer[1] != NEIGH_UNRESOLVED:
                self._in_routes[key] = answer
        return answers

    def route_arrays(self, saddr: np.ndarray, daddr: np.ndarray, ihl: np.ndarray,
                     fragment: np.ndarray, ptype: np.ndarray, options_done: np.ndarray,
                     ttl: np.ndarray, size: np.ndarray, frag_off: np.ndarray,
                     in_port: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`route_inputs` over its columns (the fields of `RouteKey`, as arrays):
        (next hop, verdict code) arrays, nothing kept."""
        t = self.t
        nh = select_multipath(t.lookup(daddr), saddr, daddr, t).astype(np.int64)
        source_local = is_local(saddr, t.local_addrs)
        code = np.zeros(len(nh), dtype=np.uint8)
        # the fast path's plain tier: when every question is a plain forward (no
        # option left to compile, not a fragment, a plain route, TTL, another port,
        # a frame for us, a next hop with its MAC), the checks have nothing to say
        plain = (self._plain(saddr, daddr, size, nh, source_local, ttl, in_port,
                             ptype == PACKET_HOST)
                 & ~fragment & ((ihl == 5) | options_done)
                 & ((t.nh_flags[nh] & NHF_RESOLVED) != 0))
        if np.count_nonzero(plain) == len(plain):
            return nh, code
        for done in (False, True):  # route_checks takes options_done for its batch
            rows = np.flatnonzero(options_done == done)
            if len(rows):
                code[rows] = route_checks(saddr[rows], daddr[rows], ihl[rows], fragment[rows],
                                          ptype[rows], t.nh_type[nh[rows]], source_local[rows],
                                          t.reassemble_transit, done)
        fwd = np.flatnonzero(code == FORWARD)
        if len(fwd):
            code[fwd] = forward_checks(ptype[fwd], ttl[fwd], size[fwd], frag_off[fwd],
                                       saddr[fwd], nh[fwd], in_port[fwd], t)
        return nh, code

    def _plain(self, saddr: np.ndarray, daddr: np.ndarray, size: np.ndarray, nh: np.ndarray,
               source_local: np.ndarray, ttl: np.ndarray, in_port: np.ndarray,
               host: np.ndarray) -> np.ndarray:
        """The fast path's plain forward (route.plain_route, then ip_forward's TTL,
        another port and a frame for us), the neighbour left to the caller."""
        return (plain_route(saddr, daddr, size, nh, source_local, self.t) & (ttl > 1)
                & (self.t.nh_port[nh] != in_port) & host)

    def _nexthop(self, saddr: int, daddr: int) -> int:
        """The next hop of (saddr, daddr): the FIB's, an ECMP group's member chosen."""
        nh = self._nexthops.get((saddr, daddr))
        if nh is None:
            nh = self.nexthops([(saddr, daddr)])[0]
        return nh

    def nexthops(self, pairs: Sequence[tuple[int, int]]) -> list[int]:
        """`_nexthop` of many (saddr, daddr) pairs over arrays, kept for the burst."""
        saddr = np.array([s for s, _ in pairs], dtype=np.uint32)
        daddr = np.array([d for _, d in pairs], dtype=np.uint32)
        nh = select_multipath(self.t.lookup(daddr), saddr, daddr, self.t).tolist()
        self._nexthops.update(zip(pairs, nh, strict=True))
        return nh

    def _lookup(self, addr: int) -> int:
        """The FIB's next-hop row for `addr` (an ECMP group as such)."""
        nh = self._fib_nh.get(addr)
        if nh is None:
            nh = self.lookups([addr])[0]
        return nh

    def lookups(self, addrs: Sequence[int]) -> list[int]:
        """`_lookup` of many addresses at once, kept for the burst."""
        nh = self.t.lookup(np.array(addrs, dtype=np.uint32)).tolist()
        self._fib_nh.update(zip(addrs, nh, strict=True))
        return nh

    def _port_up(self, port: int) -> bool:
        if self._ports_up is None:
            self._ports_up = np.asarray(self.t.port_up[:]).tolist()
        return self._ports_up[port]

    def _forget(self) -> None:
        """Drop the burst's routing answers (a new burst, or a control word moved)."""
        self._in_routes.clear()
        self._nexthops.clear()
        self._fib_nh.clear()
        self._out_routes.clear()
        self._ports_up = None
        self._memo_ctl = self.mem.ctl.tobytes()

    # ------------------------------------------------------------------ options

    def ip_rcv_options(self, pkt: Packet) -> None:
        """`ip_rcv_options` after the input route: compile the options (recording the
        incoming address and the time), apply `accept_source_route`, take a source
        route's next hop (`ip_options_rcv_srr`), then go where the route says."""
        nh, code = self.route_input(pkt, options_done=True)
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
        pkt = pkt.evolve(ip=result.header + pkt.ip[pkt.ihl:], opts=result)
        if result.srr_is_hit:
            # ip_options_rcv_srr routes the packet again, to the next hop of the list
            nh, code = self.route_input(pkt, daddr=result.nexthop, options_done=True)
        self.dispatch(pkt, code, nh, decided_here=True)

    def route_type(self, addr: int) -> int:
        return int(self.t.nh_type[self._lookup(addr)])

    def pref_src(self, addr: int, fallback_port: int) -> int:
        """The preferred source of the route to `addr` (`fib_compute_spec_dst`,
        `ip_rt_get_source`): an address of its egress port matching its gateway or
        `addr`; with no route, one of `fallback_port` (`inet_select_addr`)."""
        nh = self._lookup(addr)
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
        self.icmp_send(pkt, ICMP_REDIRECT, ICMP_REDIR_HOST, self._target(nh, pkt.daddr))

    def ip_forward_finish(self, pkt: Packet, nh: int, egress: int) -> None:
        """`ip_forward_finish` + `ip_output`: options for the way out, fragmentation to
        the egress MTU, new Ethernet header, transmit."""
        t = self.t
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
        if not int(t.nh_flags[nh]) & NHF_RESOLVED:
            # neigh_output through the neighbour table: sent, or held while ARP
            # resolves the next hop of the header's (possibly source-routed) destination
            self.count(Snmp.ForwDatagrams)
            target = self._target(nh, int.from_bytes(ip[16:20], "big"))
            self.neigh.output(frames, egress, target, pkt, self.clock)
            return
        eth = self.mem.nh_mac[nh, :6].tobytes() + self.port_mac[egress] + ETH_TYPE_IP
        self.transmit([eth + f for f in frames], egress, pkt.ts, pkt.seq, FORWARDED,
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
        route = self._out_routes.get(echoed.daddr)
        if route is None:
            route = self.ip_route_output(echoed.daddr)
            if not isinstance(route, OutRoute) or route.mac is not None:
                self._out_routes[echoed.daddr] = route  # not the neighbour table's
        if isinstance(route, Unsent):
            self.unsent(route)
            return None
        return echoed, route

    def ip_route_output(self, daddr: int) -> OutRoute | Unsent:
        """The route of a packet the router sends to `daddr`: a resolved unicast next
        hop (its MAC), or a subnet broadcast (an Ethernet broadcast)."""
        t = self.t
        nh = self._lookup(daddr)
        kind = int(t.nh_type[nh])
        if kind == NH_UNICAST:
            nh = self._nexthop(0, daddr)  # an ECMP group's member for source 0
        elif kind != NH_BROADCAST:
            return Unsent.no_route
        port = int(t.nh_port[nh])
        if not self._port_up(port):
            return Unsent.port_down
        if kind == NH_BROADCAST:
            return OutRoute(port, ETH_BROADCAST, daddr)
        if not int(t.nh_flags[nh]) & NHF_RESOLVED:
            return OutRoute(port, None, self._target(nh, daddr))  # the neighbour table's
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
        if route.mac is None:  # sent through the neighbour table, or held for ARP
            self.neigh.output(frames, route.port, route.target, cause, self.clock,
                              originated=True)
            self.count(Snmp.OutRequests)
            if isinstance(counter, Icmp):
                self.count(Icmp.OutMsgs)
            self.count(counter)
        else:
            eth = route.mac + self.port_mac[route.port] + ETH_TYPE_IP
            sent = ((Misc.created, Snmp.OutRequests, Icmp.OutMsgs, counter)
                    if isinstance(counter, Icmp) else (Misc.created, Snmp.OutRequests, counter))
            self.transmit([eth + f for f in frames], route.port, cause.ts, cause.seq, sent,
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
        self.row[index(Misc.held)] = r.held + self.neigh.held

    # ------------------------------------------------------------------ output, counters

    def transmit(self, frames: list[bytes], port: int, ts: int, seq: int,
                 sent: Sequence[IntEnum], refused: Callable[[Drop], None]) -> None:
        """`send`, at the end of the burst (`flush_tx`): then `sent` is counted, or
        `refused` called with the reason. One allocation, a copy per frame and one
        enqueue per ring serve the whole burst, where `send` costs ~10 µs a call."""
        if max(map(len, frames)) > self.mem.geometry.bufsize:  # as `send` would refuse it
            raise ValueError("a frame longer than a pool buffer")
        self._txq.append((frames, port, ts, seq, sent, refused))

    def flush_tx(self) -> None:
        """Send what `transmit` queued, in order. When the pool or a ring has no room
        for all of it, each packet goes through `send` in turn (which waits for room
        with pcap ports, or is refused)."""
        queue = self._txq
        if not queue:
            return
        self._txq = []
        ports: list[int] = []
        copies = 0  # frames to copy into new buffers (the rest leave in their own)
        for item in queue:
            if item[0] is None:
                w, d0, d1 = item[1:]
                ports += w.ports[w.bounds[d0] : w.bounds[d1]].tolist()
            else:
                ports += [item[1]] * len(item[0])
                copies += len(item[0])
        n = len(ports)
        idx = self.buffers.alloc(copies)
        per_port = Counter(ports)
        room = len(idx) == copies and all(self.tx[p].free_space() >= k
                                          for p, k in per_port.items())
        if not room:
            self.buffers.free(idx)
            for item in queue:
                if item[0] is None:
                    self._send_whole_alone(*item[1:])
                    continue
                frames, port, ts, seq, sent, refused = item
                reason = self.send(frames, port, ts, seq)
                if reason is not None:
                    refused(reason)
                    continue
                for counter in sent:
                    self.count(counter)
            return
        mem = self.mem
        data = memoryview(mem.data).cast("B")  # one flat view: row i at i * bufsize
        size = mem.geometry.bufsize
        buffers = idx.tolist()
        order: list[int] = []  # every buffer, in the order sent
        lengths: list[int] = []
        stamps: list[int] = []
        seqs: list[int] = []
        copy_ports: list[int] = []
        for item in queue:
            if item[0] is None:
                w, d0, d1 = item[1:]
                order += w.buffers[w.bounds[d0] : w.bounds[d1]].tolist()
                self.count(Snmp.ForwDatagrams, d1 - d0)
                self.count(Misc.forwarded, d1 - d0)
                continue
            frames, port, ts, seq, sent, _ = item
            for frame in frames:
                buf = buffers[len(lengths)]
                start = buf * size
                data[start : start + len(frame)] = frame
                lengths.append(len(frame))
                order.append(buf)
            stamps += [ts] * len(frames)
            seqs += [seq] * len(frames)
            copy_ports += [port] * len(frames)
            for counter in sent:
                self.count(counter)
        data.release()
        if copies:
            mem.length[idx] = lengths
            mem.port[idx] = copy_ports
            mem.ts[idx] = stamps
            mem.seq[idx] = seqs
        sent_idx = np.array(order, dtype=idx.dtype)
        if len(per_port) == 1:
            self.tx[ports[0]].enqueue(sent_idx)
        else:
            egress = np.array(ports)
            for p in per_port:  # each ring gets its frames in order (first seen first)
                self.tx[p].enqueue(sent_idx[egress == p])
        self.count(Misc.tx_frames, n)

    def _send_whole_alone(self, w: WholeBurst, d0: int, d1: int) -> None:
        """Whole datagrams d0..d1-1 when the rings have no room for the burst's output:
        each enqueued when its ring has room for all its fragments (waiting, with pcap
        ports), else dropped (`ring_full`) and its buffers freed, as `send` would."""
        for d in range(d0, d1):
            idx = w.buffers[w.bounds[d] : w.bounds[d + 1]]
            ring = self.tx[int(w.ports[w.bounds[d]])]
            while ring.free_space() < len(idx):
                if not self.lossless:
                    self.buffers.free(idx)
                    if d in w.learned:  # ip_forward_finish counts it before neigh_output
                        self.count(Snmp.ForwDatagrams)
                    self.drop(Drop.ring_full)
                    break
                self._wait()
            else:
                ring.enqueue(idx)
                self.count(Misc.tx_frames, len(idx))
                self.count(Snmp.ForwDatagrams)
                self.count(Misc.forwarded)

    def send(self, frames: list[bytes], port: int, ts: int, seq: int) -> Drop | None:
        """Frames (Ethernet and all) to port `port`'s slow TX ring, all or none, in new
        buffers from our partition, now (after what `transmit` queued). Returns the
        drop reason if refused."""
        self.flush_tx()
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
        self.count(Misc.tx_frames, n)
        return None

    def _wait(self) -> None:
        if self.fib is not None:
            self.fib.quiescent(self.reader)  # type: ignore[attr-defined]
        time.sleep(WAIT_S)

    def count(self, counter: IntEnum, n: int = 1) -> None:
        col = COLUMNS[id(counter)]
        self._counts[col] = self._counts.get(col, 0) + n

    def drop(self, reason: Drop | SlowDrop) -> None:
        self.count(reason)
        self.count(Misc.dropped)

    def unsent(self, reason: Unsent) -> None:
        self.count(reason)

    def _flush_counts(self) -> None:
        """Add the counts kept since the last flush to the shared counters row (at the
        end of every burst and pass, before `rx_frames` says the burst is done)."""
        if self._counts:
            row = self.row
            for col, n in self._counts.items():
                row[col] += n
            self._counts.clear()


def pseudo_header(addrs: bytes, proto: int, length: int) -> bytes:
    """The IPv4 pseudo-header of TCP and UDP checksums (source and destination as on
    the wire, then zero, protocol, length)."""
    return addrs + struct.pack("!BBH", 0, proto, length)


def route_key(pkt: Packet, daddr: int | None, options_done: bool) -> RouteKey:
    """What `route_input` asks about `pkt` (to `daddr` if given): one unpack of the
    header rather than ten properties."""
    ver_ihl, frag_off, ttl, saddr, dst = ROUTE_FIELDS.unpack_from(pkt.ip)
    return (saddr, dst if daddr is None else daddr, ver_ihl & 0xF,
            bool(frag_off & (IP_MF | IP_OFFSET)), pkt.pkt_type, options_done, ttl,
            pkt.frag_max or len(pkt.ip), frag_off, pkt.in_port)


def decrease_ttl(ip: bytes) -> bytes:
    """`ip_decrease_ttl`: TTL - 1 with the incremental checksum update (RFC 1624)."""
    check = checksum.ttl_decrement((ip[10] << 8) | ip[11])
    return b"".join((ip[:8], bytes((ip[8] - 1, ip[9])), check.to_bytes(2, "big"),
                     memoryview(ip)[12:]))


def slowpath_main(spec: SlowPathSpec) -> None:
    """Entry point of the slow-path process."""
    from engine.pipeline.tables import make_tables
    from engine.shm.fib import FibReader as Fib

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
