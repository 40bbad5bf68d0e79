"""Routing for the slow path, a burst at a time: `ip_route_input_slow` and
`ip_forward`'s checks (the fast path's own `route_checks` and `forward_checks`, so a
packet the slow path has reassembled or whose options it has compiled is routed in
the kernel's order by the same code), the FIB's next hops, and `ip_route_output` for
what the router sends itself.

A routing question (a packet's input route and ip_forward's verdict, a next hop, the
FIB's answer for an address, the output route of an answer) is answered over arrays,
which costs numpy's overhead per call, not per packet: on a batch of one that
overhead is nearly all the cost. So `prefetch` asks, for the whole burst at once,
the questions its packets will ask, and each packet finds its answer here when it
gets there, in order; a question nobody foresaw (a source route's next hop, a
datagram whose first fragment was not its largest) is asked alone, of the same
functions. The answers are those of the tables as the burst starts, as the fast path
reads them once per batch; they are forgotten at the next burst, and as soon as a
control word moves (a port up or down, next hops or neighbours changed, possibly by
this worker: `stale`). An unresolved neighbour is never kept: an entry that becomes
usable moves no control word.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from engine.counters import Slow, Unsent
from engine.pipeline.forward import forward_checks
from engine.pipeline.route import is_local, plain_route, route_checks, select_multipath
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import FORWARD, PACKET_HOST, SLOW
from engine.proto import ETH_BROADCAST, IP_DF, IP_MF, IP_OFFSET
from engine.shm.memory import (
    NH_BROADCAST,
    NH_UNICAST,
    NHF_GATEWAY,
    NHF_RESOLVED,
    EngineMemory,
)
from engine.slowpath.packet import OutRoute, Packet
from engine.slowpath.reasm import Reassembler

# what prefetch foresees: ip_forward on the fast path's verdict needs the next hop; an
# ICMP answer the route type of the destination and the route back to the source
FORWARD_REASONS = frozenset({Slow.ttl_exceeded, Slow.frag_needed, Slow.fragment,
                             Slow.redirect, Slow.neigh_unresolved})
ANSWERED_REASONS = frozenset({Slow.local, Slow.no_route, Slow.unreachable, Slow.prohibit,
                              Slow.ttl_exceeded, Slow.frag_needed, Slow.redirect})
FORESEEN_REASONS = FORWARD_REASONS | ANSWERED_REASONS
NEIGH_UNRESOLVED = SLOW + Slow.neigh_unresolved
ROUTE_FIELDS = struct.Struct("!B5xHB3xII")  # ver_ihl, frag_off, ttl, saddr, daddr
ADDRESSES = struct.Struct("!II")  # saddr, daddr at offset 12


class RouteKey(NamedTuple):
    """A routing question `route_input` asks: every input of route_checks and
    forward_checks besides the tables. A tuple, so it keys the burst's answers."""

    saddr: int
    daddr: int
    ihl: int  # in 32-bit words
    fragment: bool
    pkt_type: int
    options_done: bool
    ttl: int
    size: int  # for the MTU: frag_max_size of a reassembled datagram
    frag_off: int
    in_port: int


# the dtypes route_checks and forward_checks take RouteKey's fields in, in its order
ROUTE_KEY_DTYPES = (np.uint32, np.uint32, np.uint8, bool, np.uint8, bool, np.uint8, np.uint32,
                    np.uint16, np.uint16)


def route_key(pkt: Packet, daddr: int | None, options_done: bool) -> RouteKey:
    """What `route_input` asks about `pkt` (to `daddr` if given): one unpack of the
    header rather than ten properties."""
    ver_ihl, frag_off, ttl, saddr, dst = ROUTE_FIELDS.unpack_from(pkt.ip)
    return RouteKey(saddr, dst if daddr is None else daddr, ver_ihl & 0xF,
                    bool(frag_off & (IP_MF | IP_OFFSET)), pkt.pkt_type, options_done, ttl,
                    pkt.frag_max or len(pkt.ip), frag_off, pkt.in_port)


class RouteCache:
    """The slow path's routing questions and the burst's answers to them."""

    def __init__(self, mem: EngineMemory, tables: Tables, reasm: Reassembler) -> None:
        self.mem = mem
        self.t = tables
        self.reasm = reasm  # `prefetch` looks at the first fragments its queues hold
        self._in_routes: dict[RouteKey, tuple[int, int]] = {}
        self._nexthops: dict[tuple[int, int], int] = {}
        self._fib_nh: dict[int, int] = {}
        self._out_routes: dict[int, OutRoute | Unsent] = {}
        self._ports_up: list[bool] | None = None
        self._memo_ctl = b""  # the control words the answers were given under

    def stale(self) -> bool:
        """A control word moved since the answers were given: they must be asked again."""
        return self.mem.ctl.tobytes() != self._memo_ctl

    def forget(self) -> None:
        """Drop the burst's routing answers (a new burst, or a control word moved)."""
        self._in_routes.clear()
        self._nexthops.clear()
        self._fib_nh.clear()
        self._out_routes.clear()
        self._ports_up = None
        self._memo_ctl = self.mem.ctl.tobytes()

    def prefetch(self, burst: Sequence[tuple[Packet, Slow]]) -> None:
        """Answer together the routing questions a burst's packets will ask: the input
        route of each packet with options and of each datagram a first fragment starts
        (`RouteKey`s, as `route_input` will ask them), the next hop of each packet the
        fast path found to forward, and what an ICMP answer needs (the route type of
        the destination, the route back to the source)."""
        self.forget()
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
                    key = first._replace(fragment=False, frag_off=first.frag_off & IP_DF)
                    inputs[key] = None
                    if key.ihl > 5:  # then ip_rcv_options routes it once more
                        inputs[key._replace(options_done=True)] = None
                continue
            if reason == Slow.options:
                key = route_key(pkt, None, True)
                inputs[key] = None
                addrs[key.saddr] = None  # pref_src: the route back to the source
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

    def route_inputs(self, keys: Sequence[RouteKey]) -> list[tuple[int, int]]:
        """(next hop, verdict code) of each packet a `RouteKey` describes:
        `route_checks`, then `forward_checks` where it says forward, over arrays; the
        answers are kept for the burst."""
        columns = zip(*keys, strict=True)
        nh, code = self.route_arrays(*(np.array(col, dtype=dtype) for col, dtype
                                       in zip(columns, ROUTE_KEY_DTYPES, strict=True)))
        answers = list(zip(nh.tolist(), code.tolist(), strict=True))
        for key, answer in zip(keys, answers, strict=True):
            self._nexthops[(key.saddr, key.daddr)] = answer[0]
            if answer[1] != NEIGH_UNRESOLVED:
                self._in_routes[key] = answer
        return answers

    def route_arrays(self, saddr: np.ndarray, daddr: np.ndarray, ihl: np.ndarray,
                     fragment: np.ndarray, pkt_type: np.ndarray, options_done: np.ndarray,
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
        plain = (self.plain(saddr, daddr, size, nh, source_local, ttl, in_port,
                            pkt_type == PACKET_HOST)
                 & ~fragment & ((ihl == 5) | options_done)
                 & ((t.nh_flags[nh] & NHF_RESOLVED) != 0))
        if np.count_nonzero(plain) == len(plain):
            return nh, code
        for done in (False, True):  # route_checks takes options_done for its batch
            rows = np.flatnonzero(options_done == done)
            if len(rows):
                code[rows] = route_checks(saddr[rows], daddr[rows], ihl[rows], fragment[rows],
                                          pkt_type[rows], t.nh_type[nh[rows]], source_local[rows],
                                          t.reassemble_transit, done)
        fwd = np.flatnonzero(code == FORWARD)
        if len(fwd):
            code[fwd] = forward_checks(pkt_type[fwd], ttl[fwd], size[fwd], frag_off[fwd],
                                       saddr[fwd], nh[fwd], in_port[fwd], t)
        return nh, code

    def plain(self, saddr: np.ndarray, daddr: np.ndarray, size: np.ndarray, nh: np.ndarray,
              source_local: np.ndarray, ttl: np.ndarray, in_port: np.ndarray,
              host: np.ndarray) -> np.ndarray:
        """The fast path's plain forward (route.plain_route, then ip_forward's TTL,
        another port and a frame for us), the neighbour left to the caller."""
        return (plain_route(saddr, daddr, size, nh, source_local, self.t) & (ttl > 1)
                & (self.t.nh_port[nh] != in_port) & host)

    def nexthop(self, saddr: int, daddr: int) -> int:
        """The next hop of (saddr, daddr): the FIB's, an ECMP group's member chosen."""
        nh = self._nexthops.get((saddr, daddr))
        if nh is None:
            nh = self.nexthops([(saddr, daddr)])[0]
        return nh

    def nexthops(self, pairs: Sequence[tuple[int, int]]) -> list[int]:
        """`nexthop` of many (saddr, daddr) pairs over arrays, kept for the burst."""
        saddr = np.array([s for s, _ in pairs], dtype=np.uint32)
        daddr = np.array([d for _, d in pairs], dtype=np.uint32)
        nh = select_multipath(self.t.lookup(daddr), saddr, daddr, self.t).tolist()
        self._nexthops.update(zip(pairs, nh, strict=True))
        return nh

    def lookup(self, addr: int) -> int:
        """The FIB's next-hop row for `addr` (an ECMP group as such)."""
        nh = self._fib_nh.get(addr)
        if nh is None:
            nh = self.lookups([addr])[0]
        return nh

    def lookups(self, addrs: Sequence[int]) -> list[int]:
        """`lookup` of many addresses at once, kept for the burst."""
        nh = self.t.lookup(np.array(addrs, dtype=np.uint32)).tolist()
        self._fib_nh.update(zip(addrs, nh, strict=True))
        return nh

    def port_up(self, port: int) -> bool:
        """Port `port` is up (`port_up`, read once per burst)."""
        if self._ports_up is None:
            self._ports_up = np.asarray(self.t.port_up[:]).tolist()
        return self._ports_up[port]

    def route_type(self, addr: int) -> int:
        """The type (NH_*) of the FIB's route to `addr`."""
        return int(self.t.nh_type[self.lookup(addr)])

    def target(self, nh: int, daddr: int) -> int:
        """`rt_nexthop`: the gateway of a gateway route, else the destination itself."""
        if int(self.t.nh_flags[nh]) & NHF_GATEWAY:
            return int(self.mem.nh_gw[nh])
        return daddr

    def output_route(self, daddr: int) -> OutRoute | Unsent:
        """`ip_route_output`, kept for the burst unless it leaves the next hop's MAC
        to the neighbour table."""
        route = self._out_routes.get(daddr)
        if route is None:
            route = self.ip_route_output(daddr)
            if not isinstance(route, OutRoute) or route.mac is not None:
                self._out_routes[daddr] = route  # not the neighbour table's
        return route

    def ip_route_output(self, daddr: int) -> OutRoute | Unsent:
        """The route of a packet the router sends to `daddr`: a resolved unicast next
        hop (its MAC), or a subnet broadcast (an Ethernet broadcast)."""
        t = self.t
        nh = self.lookup(daddr)
        kind = int(t.nh_type[nh])
        if kind == NH_UNICAST:
            nh = self.nexthop(0, daddr)  # an ECMP group's member for source 0
        elif kind != NH_BROADCAST:
            return Unsent.no_route
        port = int(t.nh_port[nh])
        if not self.port_up(port):
            return Unsent.port_down
        if kind == NH_BROADCAST:
            return OutRoute(port, ETH_BROADCAST, daddr)
        if not int(t.nh_flags[nh]) & NHF_RESOLVED:
            return OutRoute(port, None, self.target(nh, daddr))  # the neighbour table's
        return OutRoute(port, self.mem.nh_mac[nh, :6].tobytes(), self.target(nh, daddr))

