"""The slow-path worker's neighbour resolver: ARP (net/ipv4/arp.c) and the neighbour
state machine, hold queues and timers of net/core/neighbour.c, for `arp_tbl`.

The shared `NeighbourTable` (engine/shm/neigh_table.py) is what the forwarding workers read;
this resolver is its only writer once the engine runs, and keeps beside it what the
kernel keeps in `struct neighbour` and the workers never need: timers, probe counts,
the confirmation times and the hold queue (`arp_queue`). Every change of an entry's
state, MAC or port is written through to the table at once (`NeighbourTable.put`),
so the fast path forwards to a neighbour from the moment it is resolved, and stops
(its caches flushed by the table's generation) from the moment it is not.

What the kernel does, and so what this does, method by method:

    arp_rcv         arp_rcv + arp_process: header checks, replies for our addresses
                    (arp_ignore=0: any local address, on the port asked), the
                    requester learned (`neigh_event_ns`: STALE), replies and requests
                    update an existing entry only (arp_accept=0), REACHABLE for a reply
                    unicast to us, a different MAC accepted only after `locktime` unless
                    the message is gratuitous
    output          neigh_resolve_output + __neigh_event_send: send through a VALID
                    entry; else create an INCOMPLETE one, send the first request at once,
                    and queue the packet (at most `unres_qlen_bytes` of truesize, the
                    oldest dropped first)
    tick            the timers (neigh_timer_handler) due on the slow path's clock:
                    retransmissions every retrans_time, FAILED after mcast_solicit
                    broadcast requests (INCOMPLETE) or ucast_solicit unicast ones (PROBE)
    _update         neigh_update: the state and MAC rules, the queue sent on VALID
    _invalidate     neigh_invalidate + arp_error_report: every held packet answered
                    with ICMP host unreachable (ipv4_link_failure) and dropped

Re-confirmation. The kernel re-confirms an entry only when it is used: a STALE entry
that sends a packet goes DELAY, and a REACHABLE one whose timer finds it used
recently goes DELAY instead of STALE; DELAY becomes PROBE after delay_probe_time
(unicast requests to the known MAC), PROBE becomes REACHABLE on a unicast reply or
FAILED after ucast_solicit requests, and an entry that is never used stays STALE
until garbage collection. Here the forwarding workers use entries without telling
anyone (a per-packet write to shared memory would cost the fast path what it saves),
so every entry counts as used: REACHABLE goes DELAY when reachable_time runs out, a
STALE entry goes DELAY at once, and so on as above. This is what a Linux router does
for every neighbour it forwards to; the difference is that an idle neighbour is
probed too (three unicast requests per reachable_time + delay_probe_time, about every
35 s, while it answers). An entry whose probes fail goes FAILED and stays, as in the
kernel: unusable (the fast path hands its packets over, and a new packet starts a new
resolution), but still an entry that ARP from its address updates. Garbage
collection is then the kernel's for entries with no timer running, which here means
FAILED ones (every other entry is in a timer): `neigh_periodic_work` every
base_reachable_time/2 once the table holds gc_thresh1 (128) entries, and
`neigh_forced_gc` when a new entry finds the table full; if nothing can go, the new
entry is not made (the kernel's gc_thresh3 overflow) and the packet is dropped
(`neigh_table_full`). Static `[[neighbor]]` entries are PERMANENT: ARP never changes
them.

Held packets and accounting. A held packet is a packet ready to leave (forwarded: TTL
decremented, options forwarded, fragmented to the egress MTU; or one the router
originated), kept as its IP datagrams; the kernel queues each fragment of a
fragmented packet separately, here a packet's fragments are held, sent and dropped
together (one packet, one ending). A received packet held counts in the slow path's
`held` level until it leaves (forwarded), overflows the queue (`neigh_queue_full`,
the kernel's unres_discards), its resolution fails (`neigh_failed`, after an ICMP host
unreachable about it: the kernel quotes the packet as queued, TTL already
decremented), or a pcap replay ends (`neigh_flush`: resolutions still pending when
the capture clock stops are never failed early). Packets the router originated (ICMP
errors, echo replies, TCP resets) end the same ways under `Unsent` reasons; an ICMP
error about one of them would be addressed to the router itself, so none is sent.
Each packet is charged its frames' truesize (`truesize`) against unres_qlen_bytes.

Known difference: an ICMP host unreachable about a held packet that carries IP
options echoes none of them (the kernel recompiles the queued header's options in
`ipv4_send_dest_unreach` and echoes them).

Time: `tick(now)` runs every timer due by `now` in the order they fall due, each at
its own time (what it sends carries that time), so a replay's capture clock that
jumps ahead fires them as the kernel's jiffies would have.

Replays: the pcap driver feeds each port's capture on its own and a worker takes a
burst per port in turn, so frames from different ports can reach this resolver out
of capture order (a reply before the packet that needed it: the reply then finds no
entry), and the fast path can forward a packet of a later time before this worker
has taken an earlier ARP frame (a new MAC reaching it a batch late). Frames from one
port through one worker keep their order; a packet released by an ARP frame that
came in before it (by capture time) leaves no earlier than its own time.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any, Protocol

import numpy as np

from engine.counters import Arp, Drop, Misc, SlowDrop, Unsent, index
from engine.pipeline.verdict import PACKET_HOST
from engine.proto import ETH_HLEN, ETH_TYPE_IP
from engine.shm.neigh_table import NUD_VALID, NeighbourEntry, NeighbourTable, Nud
from engine.slowpath import arp
from engine.slowpath.icmp import ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, select_source

LBCAST = 0xFFFF_FFFF
MS = 1_000_000
S = 1_000_000_000
MIN_TIMER_NS = 10 * MS  # HZ/100: the shortest timer the handler arms
GC_THRESH1 = 128  # below this many entries the periodic gc leaves the table alone
REACH_REDRAW_NS = 300 * S  # neigh_periodic_work redraws reachable_time this often

# states with a running timer (NUD_IN_TIMER) and the "connected" ones (NUD_CONNECTED)
IN_TIMER = frozenset({Nud.INCOMPLETE, Nud.REACHABLE, Nud.DELAY, Nud.PROBE})
CONNECTED = frozenset({Nud.REACHABLE, Nud.PERMANENT})

# truesize of a received frame: the kernel charges a queued skb its truesize, which
# for a NIC's receive buffer is a 2 KiB fragment (data after NET_SKB_PAD headroom,
# skb_shared_info at the end) plus the sk_buff itself. Measured on a veth (Linux 6.18):
# 92 frames of 1042 bytes fit the default 212992 bytes, 212992 // 2304 = 92.
SKB_FRAG = 2048
NET_SKB_PAD = 64
SKB_SHINFO = 320  # SKB_DATA_ALIGN(sizeof(struct skb_shared_info))
SKB_STRUCT = 256  # SKB_DATA_ALIGN(sizeof(struct sk_buff))


def truesize(frame_len: int) -> int:
    """What a frame of `frame_len` bytes costs a hold queue: whole 2 KiB fragments
    for the data, its headroom and skb_shared_info, plus the sk_buff."""
    frags = -(-(frame_len + NET_SKB_PAD + SKB_SHINFO) // SKB_FRAG)
    return frags * SKB_FRAG + SKB_STRUCT


@dataclass(frozen=True)
class NeighParams:
    """`arp_tbl.parms`, the kernel's defaults (net.ipv4.neigh.default.*)."""

    retrans_time_ns: int = 1 * S  # retrans_time_ms
    mcast_solicit: int = 3  # broadcast requests while resolving
    ucast_solicit: int = 3  # unicast requests while re-confirming (and first, if known)
    base_reachable_time_ns: int = 30 * S  # reachable_time is drawn in [½, 1½) of it
    delay_probe_time_ns: int = 5 * S  # delay_first_probe_time
    locktime_ns: int = 1 * S  # a different MAC is taken only this long after a change
    unres_qlen_bytes: int = 212992  # SK_WMEM_DEFAULT: the hold queue, in truesize


@dataclass
class Held:
    """A packet waiting for its next hop's MAC (an skb on `arp_queue`)."""

    frames: list[bytes]  # the IP datagrams as they will leave (fragments of one packet)
    cause: Any  # the slow path's Packet: an ICMP host unreachable quotes it
    originated: bool = False  # the router's own (ICMP, TCP reset), not a received packet
    size: int = 0  # truesize of its frames

    def __post_init__(self) -> None:
        if not self.size:
            self.size = sum(truesize(ETH_HLEN + len(f)) for f in self.frames)


# entries `output` sends through without a state change (`sends_at_once`)
SENDS_AT_ONCE = frozenset({Nud.REACHABLE, Nud.DELAY, Nud.PROBE, Nud.PERMANENT})


@dataclass
class Neighbour:
    """What `struct neighbour` holds besides the table row."""

    ip: int
    port: int
    state: Nud = Nud.NONE
    mac: bytes = arp.ETH_ZERO
    confirmed: int = 0  # last reachability confirmation (ns)
    updated: int = 0  # last change of state or MAC (ns)
    probes: int = 0
    due: int | None = None  # the timer
    seq: int = 0  # arrival number of the last packet that concerned it (orders its frames)
    queue: deque[Held] = field(default_factory=deque)
    queue_bytes: int = 0


class Host(Protocol):
    """What the resolver needs from the slow-path worker (`SlowPath` provides it)."""

    row: np.ndarray  # the worker's counters row

    def send(self, frames: list[bytes], port: int, ts: int, seq: int) -> Drop | None: ...

    def count(self, counter: IntEnum, n: int = 1) -> None: ...

    def drop(self, reason: Drop | SlowDrop) -> None: ...

    def unsent(self, reason: Unsent) -> None: ...

    def icmp_send(self, pkt: Any, icmp_type: int, code: int, info: int = 0) -> None: ...


class Resolver:
    """ARP and the neighbour state machine of the slow-path worker (module docstring)."""

    def __init__(self, table: NeighbourTable, host: Host, *, port_macs: Sequence[bytes],
                 port_addrs: Sequence[Sequence[tuple[int, int]]], all_addrs: Sequence[int],
                 broadcast_addrs: Sequence[int] = (), params: NeighParams | None = None,
                 seed: int = 0) -> None:
        self.table = table
        self.host = host
        self.port_macs = list(port_macs)
        self.port_addrs = [list(a) for a in port_addrs]
        self.all_addrs = list(all_addrs)
        self.local = frozenset(all_addrs)
        self.broadcasts = frozenset(broadcast_addrs)
        self.p = params or NeighParams()
        # reachable_time per port (each device has its own neigh_parms), drawn as
        # neigh_rand_reach_time does; a fixed seed keeps replays reproducible
        self.rng = random.Random(seed)
        self.reachable_ns = [self._draw() for _ in self.port_macs]
        self.last_rand: int | None = None
        self.next_gc: int | None = None
        self.neigh: dict[int, Neighbour] = {}
        # the static [[neighbor]] entries: the control process puts them before the
        # workers start and nobody changes them after (shm/neigh_table.py), so they are read
        # once here rather than looked up per packet
        self.static = {e.ip: e for e in table.entries() if e.state == Nud.PERMANENT}
        self.timers: list[tuple[int, int, int]] = []  # (due, order, ip), lazily pruned
        self.order = 0
        self.held = 0  # received packets in hold queues (the slow path's `held` level)
        self.queued = 0  # every packet in hold queues, originated ones too

    # ------------------------------------------------------------------ receive

    def arp_rcv(self, msg_bytes: bytes, port: int, pkt_type: int, ts: int, seq: int,
                now: int) -> None:
        """`arp_rcv` + `arp_process` for the ARP message of a frame that came in on
        `port` (a frame for our MAC or broadcast). Ends the frame: consumed, or dropped
        with a reason."""
        msg = arp.parse(msg_bytes)
        if isinstance(msg, str):
            self.host.drop(SlowDrop[msg])
            return
        self.host.count(Arp.in_requests if msg.is_request else Arp.in_replies)
        tip, sip = msg.tip, msg.sip
        if tip >> 28 == 0xE or tip >> 24 == 127:  # multicast, or loopback (no route_localnet)
            self.host.drop(SlowDrop.arp_bad_target)
            return
        self._consumed()
        if sip == 0:  # duplicate address detection (RFC 2131/5227): answer, learn nothing
            if msg.is_request and tip in self.local:
                self._send_reply(port, msg, ts, seq)
            return
        if msg.is_request and tip in self.local and self._source_ok(sip):
            # ip_route_input(tip, sip) is RTN_LOCAL: reply, and learn the requester
            # (`neigh_event_ns`); an entry ARP may not change (a subnet broadcast is a
            # NOARP one, a static one PERMANENT) is answered and left as it is
            if sip in self.broadcasts or self._static(sip) is not None:
                self._send_reply(port, msg, ts, seq)
                return
            n = self._lookup(sip, port, create=True, now=now)
            if n is not None:  # neigh_event_ns
                n.seq = seq
                self._update(n, msg.sha, Nud.STALE, override=True, now=now, ts=ts)
                self._send_reply(port, msg, ts, seq)
            return
        # a reply, or a request not for us: only an existing entry learns (arp_accept=0)
        n = self._lookup(sip, port, create=False, now=now)
        if n is None:
            return
        is_garp = sip == tip and (msg.is_request or msg.tha == msg.sha) \
            and self._addr_type_unicast(sip)
        override = now > n.updated + self.p.locktime_ns or is_garp
        # broadcast replies and requests do not assert reachability
        state = Nud.REACHABLE if not msg.is_request and pkt_type == PACKET_HOST else Nud.STALE
        n.seq = seq
        self._update(n, msg.sha, state, override=override, now=now, ts=ts)

    def _source_ok(self, sip: int) -> bool:
        """`ip_route_input_slow`'s source checks for an input route to a local address
        (rp_filter off): not multicast, limited broadcast, loopback or one of ours."""
        return not (sip >> 28 == 0xE or sip == LBCAST or sip >> 24 == 127 or sip in self.local)

    def _addr_type_unicast(self, addr: int) -> bool:
        """`inet_addr_type_dev_table(...) == RTN_UNICAST`: not in the local table (ours,
        our broadcasts), not 0, limited broadcast or multicast."""
        return not (addr == 0 or addr == LBCAST or addr >> 28 == 0xE or addr in self.local
                    or addr in self.broadcasts)

    def _consumed(self) -> None:
        """An ARP frame processed (`consume_skb`): ends as delivered, though not to IP
        (no InDelivers)."""
        self.host.count(Misc.delivered)

    def _send_reply(self, port: int, msg: arp.ArpMessage, ts: int, seq: int) -> None:
        self._xmit_arp(arp.reply(self.port_macs[port], msg), port, ts, seq, Arp.out_replies)

    # ------------------------------------------------------------------ output

    def output(self, frames: list[bytes], port: int, target: int, cause: Any, now: int, *,
               originated: bool = False) -> None:
        """`neigh_resolve_output` for a packet leaving by `port` to next hop `target`:
        sent at once through a VALID entry, else held while the entry resolves."""
        held = Held(frames, cause, originated)
        ts, seq = cause.ts, cause.seq
        n = self.neigh.get(target)
        if n is not None and n.port != port:
            # the route now leaves by another port: the entry is the route's (the
            # kernel keys entries by device; the shared table by address only)
            self._forget(n, now)
            n = None
        if n is None:
            static = self._static(target)
            if static is not None and static.port == port:
                self._transmit(held, port, static.mac, ts, seq)
                return
            n = self._lookup(target, port, create=True, now=now)
            if n is None:
                self._lose(held, SlowDrop.neigh_table_full, Unsent.neigh_table_full)
                return
        n.seq = seq
        self._event_send(n, held, now, ts)

    def _event_send(self, n: Neighbour, held: Held, now: int, ts: int) -> None:
        """`__neigh_event_send` (immediate probe allowed), then the output itself."""
        if n.state in NUD_VALID:
            if n.state == Nud.STALE:
                self._used(n, now)
            self._transmit(held, n.port, n.mac, ts, n.seq)
            return
        if n.state != Nud.INCOMPLETE:  # NONE or FAILED: start resolving
            n.probes = self.p.ucast_solicit
            self._set_state(n, Nud.INCOMPLETE, now)
            n.updated = now
            self._arm(n, now + max(self.p.retrans_time_ns, MIN_TIMER_NS))
            self._enqueue(n, held)
            self._probe(n, now, ts)  # immediate_probe
            return
        self._enqueue(n, held)

    def _enqueue(self, n: Neighbour, held: Held) -> None:
        """Queue on `arp_queue`, dropping the oldest while the bytes would overflow."""
        while n.queue and n.queue_bytes + held.size > self.p.unres_qlen_bytes:
            old = n.queue.popleft()
            self._dequeued(n, old)
            self.host.count(Arp.unresolved_discards)
            self._lose(old, SlowDrop.neigh_queue_full, Unsent.neigh_queue_full)
        n.queue.append(held)
        n.queue_bytes += held.size
        self.queued += 1
        if not held.originated:
            self.held += 1
        self._levels()

    def _dequeued(self, n: Neighbour, held: Held) -> None:
        n.queue_bytes -= held.size
        self.queued -= 1
        if not held.originated:
            self.held -= 1

    def _transmit(self, held: Held, port: int, mac: bytes, ts: int, seq: int) -> None:
        """`neigh_connected_output`: the Ethernet header, then to the port."""
        eth = mac + self.port_macs[port] + ETH_TYPE_IP
        refused = self.host.send([eth + f for f in held.frames], port, ts, seq)
        if held.originated:
            if refused is not None:
                self.host.unsent(Unsent.pool_empty if refused == Drop.pool_empty
                                 else Unsent.ring_full)
            else:
                self.host.count(Misc.created)
        elif refused is not None:
            self.host.drop(refused)
        else:
            self.host.count(Misc.forwarded)

    def _lose(self, held: Held, reason: SlowDrop, unsent: Unsent) -> None:
        if held.originated:
            self.host.unsent(unsent)
        else:
            self.host.drop(reason)

    # ------------------------------------------------------------------ the state machine

    def _lookup(self, ip: int, port: int, *, create: bool, now: int) -> Neighbour | None:
        """`__neigh_lookup(tbl, ip, dev, create)`: this port's entry for `ip`; a new one
        (state NONE, in the table) when `create` and the table has room. A static
        entry is answered as no entry: ARP never changes it."""
        n = self.neigh.get(ip)
        if n is not None:
            if n.port == port:
                return n
            if not create:
                return None
            self._forget(n, now)
        if not create or self._static(ip) is not None:
            return None
        n = Neighbour(ip, port, updated=now)
        if not self.table.put(ip, port, n.mac, Nud.NONE, now):
            self.host.count(Arp.forced_gc_runs)  # neigh_alloc: neigh_forced_gc first
            if not self._gc(now) or not self.table.put(ip, port, n.mac, Nud.NONE, now):
                self.host.count(Arp.table_fulls)
                return None
        self.neigh[ip] = n
        self.host.count(Arp.allocs)
        return n

    def _update(self, n: Neighbour, lladdr: bytes, new: Nud, *, override: bool, now: int,
                ts: int) -> None:
        """`neigh_update(n, lladdr, new, override ? NEIGH_UPDATE_F_OVERRIDE : 0)`."""
        old = n.state
        same = old in NUD_VALID and lladdr == n.mac
        if new in CONNECTED:
            n.confirmed = now
        if old in NUD_VALID:
            if not same and not override:
                return  # a different MAC within locktime: the first answer stands
            if same and new == Nud.STALE:
                new = old  # a valid entry with the same MAC keeps its state
        if new != old or not same:
            n.updated = now
        if new != old:
            n.due = None
            if new == Nud.PROBE:
                n.probes = 0
            if new in IN_TIMER:
                self._arm(n, now + (self.reachable_ns[n.port] if new == Nud.REACHABLE else 0))
            n.state = new
        if not same:
            n.mac = lladdr
            if new not in CONNECTED:
                n.confirmed = now - 2 * self.p.base_reachable_time_ns
        if new != old or not same:
            self._publish(n, now)
        if new == old:
            return
        if old not in NUD_VALID:  # resolved: what waited leaves, in order
            while n.queue and n.state in NUD_VALID:
                held = n.queue.popleft()
                self._dequeued(n, held)
                # never before the packet itself arrived (a replay may hand the slow
                # path an ARP frame after a later packet from another port)
                self._event_send(n, held, now, max(ts, held.cause.ts))
            self._levels()
        if n.state == Nud.STALE:
            self._used(n, now)

    def _used(self, n: Neighbour, now: int) -> None:
        """A STALE entry is used (module docstring: every entry is): DELAY, and a
        probe after delay_probe_time unless it is confirmed meanwhile."""
        n.state = Nud.DELAY
        n.updated = now
        self._arm(n, now + self.p.delay_probe_time_ns)
        self._publish(n, now)

    def sends_at_once(self, ip: int, port: int, until: int) -> Neighbour | None:
        """The entry `output` would send through at once, with nothing else to do,
        for next hop `ip` on `port` at any time up to `until` (the slow path's whole
        datagrams, `WholeDatagrams.take`): one in the port's table, VALID but not
        STALE (STALE goes DELAY when used), with no timer due by then. None
        otherwise (then the packet goes through `output`)."""
        n = self.neigh.get(ip)
        if (n is None or n.port != port or n.state not in SENDS_AT_ONCE
                or (n.due is not None and n.due <= until)):
            return None
        return n

    def unchanged(self, n: Neighbour, mac: bytes, port: int) -> bool:
        """`n`, found by `sends_at_once`, still is the entry for its address and still
        sends at once to `mac` on `port` (ARP may have moved it since)."""
        return (self.neigh.get(n.ip) is n and n.state in SENDS_AT_ONCE and n.mac == mac
                and n.port == port)

    def next_timer(self) -> int | float:
        """When `tick` next has something to do (the clock's value): a timer or the
        periodic work falls due; the first tick ever starts the clock."""
        if self.next_gc is None:
            return float("-inf")
        return min(self.next_gc, self.timers[0][0]) if self.timers else self.next_gc

    def tick(self, now: int) -> None:
        """Run the timers due by `now`, in order, each at its due time."""
        if self.last_rand is None or self.next_gc is None:
            self.last_rand = now
            self.next_gc = now + self.p.base_reachable_time_ns // 2
        elif now >= self.next_gc:  # neigh_periodic_work
            # on its fixed period from the first tick, at the last point `now` passed:
            # the same points however the clock got here (a replay's clock moves with
            # packets and with the capture's progress, workers/slowpath.py)
            period = self.p.base_reachable_time_ns // 2
            at = self.next_gc + (now - self.next_gc) // period * period
            self.next_gc = at + period
            if at > self.last_rand + REACH_REDRAW_NS:
                self.last_rand = at
                self.reachable_ns = [self._draw() for _ in self.port_macs]
            if len(self.table) >= GC_THRESH1:
                self._gc(at)
        while self.timers and self.timers[0][0] <= now:
            due, _, ip = heapq.heappop(self.timers)
            n = self.neigh.get(ip)
            if n is None or n.due != due:
                continue  # a timer deleted (neigh_del_timer) or moved since
            n.due = None
            self._timer(n, due)

    def _timer(self, n: Neighbour, now: int) -> None:
        """`neigh_timer_handler`, with the entry counted as used."""
        p = self.p
        nxt = now + S
        if n.state == Nud.REACHABLE:
            reach = self.reachable_ns[n.port]
            if now <= n.confirmed + reach:
                nxt = n.confirmed + reach
            else:  # used within delay_probe_time: DELAY (not STALE)
                n.state = Nud.DELAY
                n.updated = now
                nxt = now + p.delay_probe_time_ns
                self._publish(n, now)
        elif n.state == Nud.DELAY:
            if now <= n.confirmed + p.delay_probe_time_ns:
                n.state = Nud.REACHABLE
                n.updated = now
                nxt = n.confirmed + self.reachable_ns[n.port]
            else:
                n.state = Nud.PROBE
                n.updated = now
                n.probes = 0
                nxt = now + max(p.retrans_time_ns, MIN_TIMER_NS)
            self._publish(n, now)
        else:  # INCOMPLETE, PROBE
            nxt = now + max(p.retrans_time_ns, MIN_TIMER_NS)
        if n.state in (Nud.INCOMPLETE, Nud.PROBE) and n.probes >= self._max_probes(n):
            self._invalidate(n, now)
            return
        self._arm(n, max(nxt, now + MIN_TIMER_NS))
        if n.state in (Nud.INCOMPLETE, Nud.PROBE):
            self._probe(n, now, now)

    def _max_probes(self, n: Neighbour) -> int:
        """`neigh_max_probes`: ucast + app (0) + mcast_solicit, or mcast_resolicit (0)
        while re-confirming."""
        return self.p.ucast_solicit + (0 if n.state == Nud.PROBE else self.p.mcast_solicit)

    def _probe(self, n: Neighbour, now: int, ts: int) -> None:
        """`neigh_probe` → `arp_solicit`, about the newest packet waiting. The source
        address: that packet's, if it is one of ours (arp_announce=0), else the port's
        address for the target (`inet_select_addr`); broadcast while probes are past
        ucast_solicit (resolving), else unicast to the MAC being re-confirmed."""
        held = n.queue[-1] if n.queue else None
        saddr = 0
        if held is not None:
            src = int.from_bytes(held.frames[0][12:16], "big")
            if src in self.local:
                saddr = src
        if not saddr:
            saddr = select_source(self.port_addrs[n.port], n.ip, other_addrs=self.all_addrs)
        unicast = n.probes < self.p.ucast_solicit
        frame = arp.request(self.port_macs[n.port], saddr, n.ip, n.mac if unicast else None)
        self._xmit_arp(frame, n.port, ts, n.seq, Arp.out_probes if unicast else Arp.out_requests)
        n.probes += 1

    def _invalidate(self, n: Neighbour, now: int) -> None:
        """FAILED (`neigh_invalidate`): each held packet gets `arp_error_report` (ICMP
        host unreachable about it, at the time the timer fired) and is dropped. The
        entry stays, FAILED, until garbage collection (module docstring)."""
        self.host.count(Arp.res_failed)
        queue = list(n.queue)
        for held in queue:
            self._dequeued(n, held)
        n.queue.clear()
        n.state = Nud.FAILED
        n.updated = now
        n.due = None
        self._publish(n, now)  # from PROBE: no longer usable, the generation moves
        for held in queue:
            if held.originated:  # an error about it would go to the router itself
                self.host.unsent(Unsent.neigh_failed)
                continue
            self.host.icmp_send(replace(held.cause, ip=held.frames[0], opts=None, ts=now),
                                ICMP_DEST_UNREACH, ICMP_HOST_UNREACH)
            self.host.drop(SlowDrop.neigh_failed)
        self._levels()

    def _forget(self, n: Neighbour, now: int) -> None:
        """Remove an entry from the table (and its timer); packets still queued on it
        are dropped as failed, without an ICMP error."""
        while n.queue:
            held = n.queue.popleft()
            self._dequeued(n, held)
            self._lose(held, SlowDrop.neigh_failed, Unsent.neigh_failed)
        n.due = None
        self.neigh.pop(n.ip, None)
        self.table.remove(n.ip)
        self.host.count(Arp.destroys)
        self._levels()

    def _gc(self, now: int) -> int:
        """Remove the entries no timer holds (FAILED, and NONE: made, never used):
        `neigh_periodic_work` / `neigh_forced_gc`. Returns how many went."""
        gone = [n for n in self.neigh.values() if n.state in (Nud.FAILED, Nud.NONE)]
        for n in gone:
            self._forget(n, now)
        return len(gone)

    def flush(self) -> None:
        """End of a pcap replay: what still waits is dropped as flushed, never failed."""
        for n in self.neigh.values():
            while n.queue:
                held = n.queue.popleft()
                self._dequeued(n, held)
                self._lose(held, SlowDrop.neigh_flush, Unsent.neigh_flush)
        self._levels()

    # ------------------------------------------------------------------ helpers

    def _static(self, ip: int) -> NeighbourEntry | None:
        """The PERMANENT entry of `ip` (a `[[neighbor]]`), if it has one."""
        return self.static.get(ip)

    def _set_state(self, n: Neighbour, state: Nud, now: int) -> None:
        n.state = state
        self._publish(n, now)

    def _publish(self, n: Neighbour, now: int) -> None:
        """Write the entry through to the shared table (it has the slot already)."""
        self.table.put(n.ip, n.port, n.mac, n.state, now)

    def _arm(self, n: Neighbour, due: int) -> None:
        n.due = due
        self.order += 1
        heapq.heappush(self.timers, (due, self.order, n.ip))

    def _draw(self) -> int:
        """`neigh_rand_reach_time`: uniform in [base/2, 3·base/2)."""
        base = self.p.base_reachable_time_ns
        return self.rng.randrange(base) + base // 2 if base else 0

    def _xmit_arp(self, frame: bytes, port: int, ts: int, seq: int, counter: Arp) -> None:
        refused = self.host.send([frame], port, ts, seq)
        if refused is not None:
            self.host.unsent(Unsent.pool_empty if refused == Drop.pool_empty
                             else Unsent.ring_full)
            return
        self.host.count(counter)
        self.host.count(Misc.created)

    def _levels(self) -> None:
        self.host.row[index(Arp.queued)] = self.queued

    def entries(self) -> list[Neighbour]:
        """The dynamic entries (a test's or a debugging session's view)."""
        return sorted(self.neigh.values(), key=lambda n: n.ip)


def resolver_for(table: NeighbourTable, host: Host, cfg: Any,
                 params: NeighParams | None = None) -> Resolver:
    """A resolver for the ports of config `cfg`."""
    port_addrs = [[(a.address, a.prefix_len) for a in p.addresses] for p in cfg.ports]
    broadcasts = [int(a.network.broadcast_address) for p in cfg.ports for a in p.addresses
                  if a.prefix_len <= 30]
    return Resolver(table, host, port_macs=[p.mac for p in cfg.ports], port_addrs=port_addrs,
                    all_addrs=[a.address for p in cfg.ports for a in p.addresses],
                    broadcast_addrs=broadcasts, params=params)

