"""ARP in the slow path: answering, resolving, the hold queue, neighbour states, timers.

End to end through `fwd run` on pcap ports (the conftest topology, one worker), every
frame compared with scapy's rendering of what the kernel sends (tests/test_kernel_diff.py
checks the same frames against Linux itself), times included where they are the
point (retransmissions one retrans_time apart on the capture clock). Every run's
books must balance.

Replays and ordering: a pcap replay feeds each port's capture on its own, and a
worker takes a burst per port in turn, so the slow path may see a frame from one
port before an earlier one from another. ARP's answers depend on that order (a
reply only resolves an entry that exists), so every test whose outcome depends on
the order of two frames puts them on the same port: the hosts that resolve and the
packets that wait come in on p1, and leave by p1 ("router on a stick", redirects
off so that no ICMP redirect joins them). What the fast path does with a table entry
(used at once, a new MAC seen by the next batch) is checked in this process, with
the forwarding worker and the slow path run step by step over one engine segment.

Topology (tests/conftest.py): h1 10.0.1.2 on p0, h2 10.0.2.2 on p1 (static
neighbours); X 10.0.2.77 and Y 10.0.2.78 on p1 are learned by ARP.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from conftest import BCAST, MAC, Lab, routed
from test_slowpath import check_books, icmp_error, norm, run_bounded

T0 = 1_700_000_000
S = 1_000_000_000
ZERO = "00:00:00:00:00:00"
X, Y = "10.0.2.77", "10.0.2.78"
MAC_X, MAC_X2, MAC_Y = "02:00:00:00:02:77", "02:00:00:00:02:7a", "02:00:00:00:02:78"
NO_REDIRECTS = "[icmp]\nsend_redirects = false\n"


# ------------------------------------------------------------------ helpers


def at(frame: Ether, t: float) -> Ether:
    frame.time = T0 + t
    return frame


def arp(op: int, hwsrc: str, psrc: str, pdst: str, *, eth_dst: str = BCAST,
        eth_src: str | None = None, hwdst: str = ZERO) -> Ether:
    """An ARP message from a host (Ethernet source: its hardware address unless told)."""
    return (Ether(src=eth_src or hwsrc, dst=eth_dst)
            / ARP(op=op, hwsrc=hwsrc, psrc=psrc, hwdst=hwdst, pdst=pdst))


def who_has(hwsrc: str, psrc: str, pdst: str, **kw) -> Ether:
    return arp(1, hwsrc, psrc, pdst, **kw)


def is_at(hwsrc: str, psrc: str, *, to: str = "10.0.2.1", eth_dst: str = MAC["p1"],
          hwdst: str = MAC["p1"], **kw) -> Ether:
    """A reply from a host, unicast to p1 unless told."""
    return arp(2, hwsrc, psrc, to, eth_dst=eth_dst, hwdst=hwdst, **kw)


def router_reply(port: str, to_mac: str, asked: str, to_ip: str) -> bytes:
    """`arp_process`'s reply: to the requester's hardware address, ours as sender."""
    return bytes(Ether(src=MAC[port], dst=to_mac)
                 / ARP(op=2, hwsrc=MAC[port], psrc=asked, hwdst=to_mac, pdst=to_ip))


def router_request(port: str, sip: str, tip: str, dst: str = BCAST) -> bytes:
    """`arp_solicit`'s request: broadcast (or unicast to a MAC being re-confirmed),
    the target hardware address zero."""
    return bytes(Ether(src=MAC[port], dst=dst)
                 / ARP(op=1, hwsrc=MAC[port], psrc=sip, hwdst=ZERO, pdst=tip))


def raw_arp(hrd: int = 1, pro: int = 0x0800, hln: int = 6, pln: int = 4, op: int = 1,
            sip: str = X, tip: str = "10.0.2.1", tail: bytes = b"") -> Ether:
    """An ARP frame built field by field (scapy re-derives lengths from the addresses)."""
    mac = bytes.fromhex(MAC_X.replace(":", ""))
    body = (struct.pack("!HHBBH", hrd, pro, hln, pln, op) + mac.ljust(hln, b"\0")[:hln]
            + socket.inet_aton(sip) + b"\0" * hln + socket.inet_aton(tip) + tail)
    return Ether(bytes(Ether(src=MAC_X, dst=BCAST, type=0x0806)) + body)


def h2(dst: str, **ip) -> Ether:
    ip.setdefault("src", "10.0.2.2")
    return Ether(src=MAC["h2"], dst=MAC["p1"]) / IP(dst=dst, **ip)


def h1(dst: str, **ip) -> Ether:
    ip.setdefault("src", "10.0.1.2")
    return Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(dst=dst, **ip)


def forwarded(frame: Ether, port: str, mac: str) -> bytes:
    """`frame` as the router forwards it out of `port` to `mac` (TTL - 1)."""
    pkt = Ether(bytes(frame))
    pkt[Ether].src, pkt[Ether].dst = MAC[port], mac
    pkt[IP].ttl -= 1
    del pkt[IP].chksum
    return bytes(Ether(bytes(pkt)))


def lab(tmp_path: Path, extra: str = "") -> Lab:
    lb = Lab(tmp_path, workers=1, batch=8)
    with lb.config_path.open("a") as f:
        f.write("\n" + extra + "\n")  # the file ends inside [reassembly]
    return lb


def replay(lb: Lab, inputs: dict[str, list]) -> tuple:
    """Run; check the books; (stats, {port: [(seconds after T0, normalised frame)]})."""
    stats, outputs = run_bounded(lb, inputs)
    check_books(stats)
    assert stats.slow_held == 0  # a replay leaves nothing waiting
    return stats, {p: [(round(float(f.time) - T0, 6), norm(bytes(f))) for f in frames]
                   for p, frames in outputs.items()}


def frames(out: list[tuple[float, bytes]]) -> list[bytes]:
    return [f for _, f in out]


def nonzero(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


# ------------------------------------------------------------------ answering


def test_requests_for_our_addresses_are_answered_on_the_port_they_came_in(tmp_path):
    q = [
        at(who_has(MAC_X, X, "10.0.2.1"), 0),
        # another port's address (arp_ignore=0), from a frame whose Ethernet source is
        # not the sender's hardware address: the reply goes to the latter
        at(who_has(MAC_Y, Y, "10.0.1.1", eth_src="02:00:00:00:02:99"), 0.1),
        at(who_has(MAC_X, X, "10.0.2.50"), 0.2),  # not ours: nothing
        at(who_has(MAC_Y, "0.0.0.0", "10.0.2.1"), 0.3),  # duplicate address probe
        at(Ether(bytes(who_has(MAC_Y, Y, "10.0.2.1", eth_dst=MAC["p1"])) + b"\0" * 18),
           0.4),  # unicast to us, padded to 60 bytes
        at(who_has(MAC_X, X, "10.0.2.255"), 0.5),  # a broadcast address is not local
    ]
    stats, out = replay(lab(tmp_path), {"p1": q})
    assert out["p1"] == [
        (0.0, router_reply("p1", MAC_X, "10.0.2.1", X)),
        (0.1, router_reply("p1", MAC_Y, "10.0.1.1", Y)),
        (0.3, router_reply("p1", MAC_Y, "10.0.2.1", "0.0.0.0")),
        (0.4, router_reply("p1", MAC_Y, "10.0.2.1", Y)),
    ]
    assert out["p0"] == [] and out["p2"] == []
    assert stats.slow["arp"] == 6 and stats.slow_taken == 6
    # consumed: delivered, but not to IP
    assert stats.slow_delivered == 6 and stats.snmp["InDelivers"] == 0
    assert stats.snmp["InReceives"] == 0
    assert nonzero(stats.arp) == {"in_requests": 6, "out_replies": 4, "allocs": 2}


def test_the_reply_bytes_are_the_kernel_s():
    """`arp_create` of an Ethernet device, byte for byte (Linux 6.18 sent exactly this
    to 10.0.2.7 asking for 10.0.2.1, see tests/test_kernel_diff.py)."""
    from engine.slowpath import arp as A

    asked = A.parse(bytes(who_has("02:00:00:00:02:02", "10.0.2.7", "10.0.2.1"))[14:])
    assert isinstance(asked, A.ArpMessage)
    assert A.reply(bytes.fromhex("020000000002"), asked).hex() == (
        "020000000202020000000002080600010800060400020200000000020a000201"
        "020000000202" "0a000207")


def test_malformed_and_odd_arp_is_dropped_or_ignored_under_a_name(tmp_path):
    q = [
        at(Ether(bytes(who_has(MAC_X, X, "10.0.2.1"))[:14 + 27]), 0),  # 27 bytes of ARP
        at(raw_arp(hln=8), 0.01),  # hardware address length not the port's 6
        at(raw_arp(pln=16), 0.02),
        at(raw_arp(hrd=2), 0.03),  # experimental Ethernet: not ours
        at(raw_arp(pro=0x86DD), 0.04),
        at(raw_arp(op=3), 0.05),  # RARP request
        at(raw_arp(tip="224.0.0.1"), 0.06),
        at(raw_arp(tip="127.0.0.1"), 0.07),
        # accepted: IEEE 802 hardware type (RFC 2625), answered
        at(raw_arp(hrd=6, sip="10.0.2.80"), 0.08),
        # martian senders asking for us: ip_route_input fails, no answer, nothing learned
        at(raw_arp(sip="224.0.0.5"), 0.09),
        at(raw_arp(sip="127.0.0.1"), 0.10),
        at(raw_arp(sip="10.0.1.1"), 0.11),  # one of our own addresses
        at(raw_arp(sip="255.255.255.255"), 0.12),
        # a subnet broadcast sender is answered (a NOARP entry, nothing learned)
        at(raw_arp(sip="10.0.2.255"), 0.13),
    ]
    stats, out = replay(lab(tmp_path), {"p1": q})
    assert frames(out["p1"]) == [router_reply("p1", MAC_X, "10.0.2.1", "10.0.2.80"),
                                 router_reply("p1", MAC_X, "10.0.2.1", "10.0.2.255")]
    assert nonzero(stats.slow_drop) == {"arp_header": 3, "arp_unsupported": 3,
                                        "arp_bad_target": 2}
    assert stats.slow_delivered == 6
    assert stats.arp["allocs"] == 1  # 10.0.2.80 only


# ------------------------------------------------------------------ learning


def test_the_requester_is_learned_and_packets_to_it_leave_with_its_mac(tmp_path):
    q = at(who_has(MAC_X, X, "10.0.2.1"), 0)
    d1 = at(h2(X, id=1) / UDP(sport=5, dport=6) / Raw(b"a" * 10), 1)
    d2 = at(h2(X, id=2) / UDP(sport=5, dport=6) / Raw(b"b" * 10), 1.5)
    stats, out = replay(lab(tmp_path, NO_REDIRECTS), {"p1": [q, d1, d2]})
    assert out["p1"] == [(0.0, router_reply("p1", MAC_X, "10.0.2.1", X)),
                         (1.0, forwarded(d1, "p1", MAC_X)), (1.5, forwarded(d2, "p1", MAC_X))]
    assert stats.arp["out_requests"] == 0 and stats.arp["allocs"] == 1
    assert stats.forwarded + stats.slow_forwarded == 2


def test_unsolicited_and_gratuitous_arp_for_unknown_addresses_create_nothing(tmp_path):
    """arp_accept=0: replies and gratuitous messages only update an existing entry."""
    q = [
        at(is_at(MAC_X, X), 0),  # unsolicited reply, unicast to us
        at(who_has(MAC_Y, Y, Y), 0.1),  # gratuitous request
        at(arp(2, MAC_Y, Y, Y, hwdst=MAC_Y), 0.2),  # gratuitous reply (tha = sha)
        at(who_has(MAC_X, X, "10.0.2.50"), 0.3),  # a request for someone else
    ]
    dx = at(h2(X) / UDP(), 1)
    dy = at(h2(Y) / UDP(), 1.1)
    stats, out = replay(lab(tmp_path, NO_REDIRECTS), {"p1": [*q, dx, dy]})
    # nothing was learned: both next hops are resolved from scratch, and the replay
    # ends before any answer (the packets are flushed)
    assert out["p1"] == [(1.0, router_request("p1", "10.0.2.1", X)),
                         (1.1, router_request("p1", "10.0.2.1", Y))]
    assert nonzero(stats.slow_drop) == {"neigh_flush": 2}
    assert stats.arp["allocs"] == 2 and stats.arp["in_replies"] == 2


# ------------------------------------------------------------------ resolving


def test_an_unknown_next_hop_is_resolved_and_held_packets_leave_in_order(tmp_path):
    held = [at(h2(X, ttl=9, id=k) / UDP(sport=7, dport=8) / Raw(bytes([k]) * 20), k / 10)
            for k in range(3)]
    answer = at(is_at(MAC_X, X), 0.5)
    later = at(h2(X, ttl=9, id=3) / UDP(sport=7, dport=8), 0.7)
    stats, out = replay(lab(tmp_path, NO_REDIRECTS), {"p1": [*held, answer, later]})
    assert out["p1"] == [(0.0, router_request("p1", "10.0.2.1", X))] + [
        (0.5, forwarded(f, "p1", MAC_X)) for f in held] + [(0.7, forwarded(later, "p1", MAC_X))]
    assert nonzero(stats.slow_drop) == {}
    assert stats.snmp["ForwDatagrams"] == 4
    assert stats.arp["out_requests"] == 1 and stats.arp["in_replies"] == 1


def test_a_silent_next_hop_gets_three_requests_then_host_unreachable(tmp_path):
    """__neigh_event_send, neigh_timer_handler: a request at once, one every second
    (retrans_time) up to mcast_solicit=3, then FAILED: every held packet is answered
    with ICMP host unreachable, quoted as queued (TTL already decremented)."""
    lost = [at(h1(X, ttl=9, tos=0x1C, id=40 + k) / UDP(sport=1, dport=2) / Raw(b"x" * (10 + k)),
               k / 10) for k in range(2)]
    filler = at(h1("10.0.2.2") / UDP(), 5)  # the capture goes on: the clock reaches 5 s
    stats, out = replay(lab(tmp_path), {"p0": [*lost, filler]})
    req = router_request("p1", "10.0.2.1", X)
    assert out["p1"] == [(0.0, req), (1.0, req), (2.0, req),
                         (5.0, routed(filler, "p1", "h2"))]
    quotes = [bytes(Ether(forwarded(f, "p1", MAC_X))[IP]) for f in lost]
    assert out["p0"] == [(3.0, icmp_error(q, ICMP(type=3, code=1))) for q in quotes]
    assert nonzero(stats.slow_drop) == {"neigh_failed": 2}
    assert stats.icmp["OutDestUnreachs"] == 2
    assert nonzero(stats.arp) == {"allocs": 1, "res_failed": 1, "out_requests": 3}


def test_the_router_s_own_packets_wait_for_arp_too(tmp_path):
    """An echo reply to an unknown host waits on its neighbour like a forwarded packet;
    the request says the reply's source (arp_announce=0: any local address)."""
    ping = at(Ether(src=MAC_X, dst=MAC["p1"]) / IP(src=X, dst="10.0.1.1", id=9)
              / ICMP(id=3, seq=4) / Raw(b"ping"), 0)
    answer = at(is_at(MAC_X, X), 0.4)
    stats, out = replay(lab(tmp_path), {"p1": [ping, answer]})
    reply = (Ether(src=MAC["p1"], dst=MAC_X) / IP(src="10.0.1.1", dst=X, ttl=64, id=0)
             / ICMP(type=0, id=3, seq=4) / Raw(b"ping"))
    assert out["p1"] == [(0.0, router_request("p1", "10.0.1.1", X)),
                         (0.4, norm(bytes(reply)))]
    assert stats.icmp["OutEchoReps"] == 1 and nonzero(stats.unsent) == {}


def test_the_router_s_own_packets_to_a_silent_host_are_dropped_without_an_error(tmp_path):
    ping = at(Ether(src=MAC_X, dst=MAC["p1"]) / IP(src=X, dst="10.0.2.1") / ICMP(), 0)
    filler = at(who_has(MAC_Y, Y, "10.0.2.50"), 4)  # a request for someone else: the clock
    stats, out = replay(lab(tmp_path), {"p1": [ping, filler]})
    req = router_request("p1", "10.0.2.1", X)
    assert out["p1"] == [(0.0, req), (1.0, req), (2.0, req)]
    assert out["p0"] == []
    assert nonzero(stats.unsent) == {"neigh_failed": 1}
    assert stats.slow_delivered == 2  # the echo request, the ARP request


def test_hold_queue_overflow_drops_the_oldest(tmp_path):
    """unres_qlen_bytes (212992) of truesize: 92 frames of 1042 bytes fit, as on a
    Linux veth; the 93rd pushes the oldest out (unres_discards)."""
    flood = [at(h2(X, id=k) / UDP(sport=9, dport=9) / Raw(b"q" * 1000), k / 1000)
             for k in range(100)]
    answer = at(is_at(MAC_X, X), 0.5)
    stats, out = replay(lab(tmp_path, NO_REDIRECTS), {"p1": [*flood, answer]})
    assert out["p1"] == [(0.0, router_request("p1", "10.0.2.1", X))] + [
        (0.5, forwarded(f, "p1", MAC_X)) for f in flood[8:]]
    assert nonzero(stats.slow_drop) == {"neigh_queue_full": 8}
    assert stats.arp["unresolved_discards"] == 8


def test_a_replay_ending_while_resolving_flushes_what_waits(tmp_path):
    waiting = [at(h1(X, id=k) / UDP(), k / 2) for k in range(2)]
    filler = at(h1("10.0.2.2") / UDP(), 1.5)
    stats, out = replay(lab(tmp_path), {"p0": [*waiting, filler]})
    req = router_request("p1", "10.0.2.1", X)
    assert out["p1"] == [(0.0, req), (1.0, req), (1.5, routed(filler, "p1", "h2"))]
    assert out["p0"] == []  # never failed early
    assert nonzero(stats.slow_drop) == {"neigh_flush": 2}
    assert stats.arp["res_failed"] == 0


# ------------------------------------------------------------------ worker and slow path, stepped


class Pipeline:
    """A forwarding worker and the slow path in this process over one engine segment:
    frames go in on a port at a time, then the worker runs, then the slow path."""

    def __init__(self, tmp_path: Path, neigh_capacity: int = 4096) -> None:
        from engine.control.routing import build_routing
        from engine.pipeline.tables import make_tables
        from engine.shm.fib import FibWriter
        from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
        from engine.shm.pool import Buffers
        from engine.workers.forwarder import Forwarder
        from engine.workers.slowpath import SlowPath

        cfg = Lab(tmp_path).config()
        self.mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=512,
                                                    ring_size=64,
                                                    neigh_capacity=neigh_capacity))
        self.fib = FibWriter.create()
        build_routing(cfg, self.mem, self.fib)
        self.io = Buffers(self.mem, AGENT_IO)
        self.fw = Forwarder(self.mem, make_tables(cfg, self.mem, self.fib.lookup), 0, 32)
        self.sp = SlowPath(self.mem, make_tables(cfg, self.mem, self.fib.lookup), cfg, 32)
        self.seq = 0

    def close(self) -> None:
        self.fib.close()
        self.fib.unlink()
        self.mem.close()

    def step(self, port: int, frames: list[Ether], t: float) -> dict[int, list[tuple]]:
        """Frames in on `port` at T0 + t; the worker's pass, then the slow path's.
        Returns what left each port: (sender, frame), sender "fast" or "slow"."""
        from engine.shm.memory import AGENT_IO, PORT_RX_BYTES, PORT_RX_PACKETS

        mem = self.mem
        idx = self.io.alloc(len(frames))
        for i, f in zip(idx.tolist(), frames, strict=True):
            raw = bytes(f)
            mem.data[i, : len(raw)] = np.frombuffer(raw, np.uint8)
            mem.length[i] = len(raw)
            mem.port[i] = port
            mem.ts[i] = T0 * S + round(t * S)
            mem.seq[i] = self.seq
            self.seq += 1
            mem.port_counters[AGENT_IO, port, PORT_RX_PACKETS] += 1
            mem.port_counters[AGENT_IO, port, PORT_RX_BYTES] += len(raw)
        mem.rings[f"rx.{port}.0"].enqueue(idx)
        self.fw.poll()
        self.sp.poll()
        return self.collect()

    def collect(self) -> dict[int, list[tuple]]:
        mem = self.mem
        sent: dict[int, list[tuple]] = {}
        for p in range(mem.geometry.nports):
            for who, ring in (("fast", f"tx.{p}.0"), ("slow", f"slowtx.{p}")):
                out = mem.rings[ring].dequeue(1 << 20)
                sent.setdefault(p, []).extend(
                    (who, mem.data[i, : mem.length[i]].tobytes()) for i in out.tolist())
                self.io.free(out)
        self.io.reclaim()
        return sent

    def stats(self):
        from engine.control.stats import snapshot

        return snapshot(self.mem, ["p0", "p1", "p2"])


@pytest.fixture
def pipeline(tmp_path):
    p = Pipeline(tmp_path)
    yield p
    p.close()


def test_a_learned_neighbour_is_used_by_the_fast_path_and_a_new_mac_reaches_it(pipeline):
    from engine.shm.neigh_table import NeighbourTable, Nud

    pl = pipeline
    table = NeighbourTable(pl.mem)
    out = pl.step(1, [who_has(MAC_X, X, "10.0.2.1")], 0)
    assert out[1] == [("slow", router_reply("p1", MAC_X, "10.0.2.1", X))]
    entry = table.get(int.from_bytes(socket.inet_aton(X), "big"))
    assert entry is not None and entry.mac == bytes.fromhex("020000000277")
    assert entry.port == 1 and entry.state in (Nud.STALE, Nud.DELAY)
    d1 = h1(X, id=1) / UDP()
    out = pl.step(0, [d1], 1)
    assert out[1] == [("fast", forwarded(d1, "p1", MAC_X))]  # from the table, at once
    # a new MAC, announced gratuitously (which overrides locktime): the table changes,
    # its generation moves, and the worker's next batch uses the new MAC
    gen = table.generation
    out = pl.step(1, [who_has(MAC_X2, X, X)], 1.2)
    assert out[1] == [] and table.generation > gen
    d2 = h1(X, id=2) / UDP()
    out = pl.step(0, [d2], 1.5)
    assert out[1] == [("fast", forwarded(d2, "p1", MAC_X2))]
    s = pl.stats()
    assert s.balanced and s.slow.get("neigh_unresolved", 0) == 0 and s.forwarded == 2


def test_a_different_mac_within_locktime_is_ignored_then_taken(pipeline):
    """neigh_update without override: the first answer stands for locktime (1 s)."""
    pl = pipeline
    pl.step(1, [who_has(MAC_X, X, "10.0.2.1")], 0)
    pl.step(1, [is_at(MAC_X2, X)], 0.5)  # within locktime: ignored
    d1 = h1(X) / UDP()
    assert pl.step(0, [d1], 0.6)[1] == [("fast", forwarded(d1, "p1", MAC_X))]
    pl.step(1, [is_at(MAC_X2, X)], 1.5)  # after it: taken (REACHABLE)
    d2 = h1(X) / UDP()
    assert pl.step(0, [d2], 1.6)[1] == [("fast", forwarded(d2, "p1", MAC_X2))]
    assert pl.stats().balanced


def probes_in(sent: list[tuple]) -> list[bytes]:
    return [f for _, f in sent if f[12:14] == b"\x08\x06"]


def test_entries_are_reconfirmed_by_unicast_probes_and_removed_when_silent(pipeline):
    """REACHABLE for reachable_time (15..45 s), DELAY for delay_probe_time (5 s), then
    PROBE: ucast_solicit (3) unicast requests a second apart; an answer makes the
    entry REACHABLE again, silence makes it FAILED (the next packet resolves afresh)."""
    from engine.shm.neigh_table import NeighbourTable, Nud

    pl = pipeline
    table = NeighbourTable(pl.mem)
    x = int.from_bytes(socket.inet_aton(X), "big")
    pl.step(0, [h1(X) / UDP()], 0)
    pl.step(1, [is_at(MAC_X, X)], 0.1)
    assert table.get(x).state == Nud.REACHABLE
    # a frame that only moves the clock (a request for someone else) every second
    first = None
    for t in range(1, 60):
        got = probes_in(pl.step(1, [who_has(MAC_Y, Y, "10.0.2.50")], t)[1])
        if got:
            assert got == [router_request("p1", "10.0.2.1", X, dst=MAC_X)]
            assert table.get(x).state == Nud.PROBE
            first = t
            # answered: REACHABLE again, no more probes for reachable_time
            pl.step(1, [is_at(MAC_X, X)], t + 0.5)
            assert table.get(x).state == Nud.REACHABLE
            break
    assert first is not None and 0.1 + 15 + 5 <= first <= 0.1 + 45 + 5 + 1
    # now let the next round go unanswered: three probes a second apart, then FAILED
    again: list[float] = []
    t = first + 1
    while table.get(x).state != Nud.FAILED:
        t += 1
        assert t < first + 120
        sent = pl.step(1, [who_has(MAC_Y, Y, "10.0.2.50")], t)
        again += [t] * len(probes_in(sent[1]))
    assert len(again) == 3 and again[2] - again[0] == 2
    assert again[0] - first >= 15 + 5
    s = pl.stats()
    assert s.arp["res_failed"] == 1 and s.arp["destroys"] == 0 and s.balanced
    # the next packet starts from scratch: a broadcast request
    sent = pl.step(0, [h1(X) / UDP()], t + 1)
    assert probes_in(sent[1]) == [router_request("p1", "10.0.2.1", X)]
    assert table.get(x).state == Nud.INCOMPLETE


def test_a_failed_entry_is_revived_by_arp_from_its_address(pipeline):
    """A FAILED entry stays (until garbage collection) and, being an entry, learns from
    any ARP its address sends, a request for someone else included (arp_process)."""
    pl = pipeline
    pl.step(0, [h1(X) / UDP()], 0)
    pl.step(1, [who_has(MAC_Y, Y, "10.0.2.50")], 3.5)  # the clock: FAILED at 3 s
    from engine.shm.neigh_table import NeighbourTable, Nud

    x = int.from_bytes(socket.inet_aton(X), "big")
    assert NeighbourTable(pl.mem).get(x).state == Nud.FAILED
    assert pl.step(1, [who_has(MAC_X, X, "10.0.2.50")], 4)[1] == []
    d = h1(X, id=7) / UDP()
    assert pl.step(0, [d], 4.5)[1] == [("fast", forwarded(d, "p1", MAC_X))]
    assert pl.stats().balanced


def test_a_full_table_collects_failed_entries_and_else_drops(tmp_path):
    """neigh_alloc past the table's capacity: neigh_forced_gc takes FAILED entries; when
    there are none (every entry is resolving), the new one is not made and its packet
    is dropped under neigh_table_full."""
    pl = Pipeline(tmp_path, neigh_capacity=8)  # 8 entries, 4 of them the static ones
    try:
        hosts = [f"10.0.2.{100 + k}" for k in range(5)]
        sent = pl.step(0, [h1(h, id=k) / UDP() for k, h in enumerate(hosts)], 0)
        assert probes_in(sent[1]) == [router_request("p1", "10.0.2.1", h) for h in hosts[:4]]
        s = pl.stats()
        assert s.slow_drop["neigh_table_full"] == 1
        assert s.arp["table_fulls"] == 1 and s.arp["forced_gc_runs"] == 1
        pl.step(1, [who_has(MAC_Y, Y, "10.0.2.50")], 3.5)  # the four fail at 3 s
        sent = pl.step(0, [h1(hosts[4], id=9) / UDP()], 4)
        assert probes_in(sent[1]) == [router_request("p1", "10.0.2.1", hosts[4])]
        s = pl.stats()
        assert s.arp["forced_gc_runs"] == 2 and s.arp["destroys"] == 4
        assert s.arp["res_failed"] == 4 and s.icmp["OutDestUnreachs"] == 4
        assert s.balanced and s.slow_held == 1  # the last one still waits
    finally:
        pl.close()
