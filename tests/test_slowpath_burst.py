"""The slow-path worker takes its input a burst at a time: the routing questions of a
burst are answered together (`RouteCache.prefetch`), what it sends goes to the rings
at the burst's end (`transmit`/`flush_tx`) and its counts to the shared row then.
None of that may change what it does: the same packets give the same frames, in
the same order, and the same counters whether they come in one burst or one by one;
answers never outlive a burst or a change of the tables; when the rings have no
room, each packet is refused or sent as it would have been alone. And the TTL
decrement, now scalar, is the fast path's.

In-process, over a real engine segment and FIB (tests/conftest.py topology).
"""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPOption
from scapy.layers.inet import fragment as scapy_fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import checksum

from engine.counters import Misc, Slow, index

from conftest import MAC, Lab, routed

T0 = 1_700_000_000 * 10**9  # ns


class Rig:
    """A slow-path worker in this process, fed through its `slow.0` ring and `poll`,
    as the forwarding worker and the pcap agent would (nobody else drains: with a
    small ring, a test runs it as a live-port engine, which refuses rather than
    waits)."""

    def __init__(self, cfg, ring_size: int = 256) -> None:
        from engine.control.routing import build_routing
        from engine.pipeline.tables import make_tables
        from engine.shm.fib import FibWriter
        from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
        from engine.shm.pool import Buffers
        from engine.workers.slowpath import SlowPath

        self.mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=1024,
                                                    ring_size=ring_size))
        self.fib = FibWriter.create()
        self.routing = build_routing(cfg, self.mem, self.fib)
        self.io = Buffers(self.mem, AGENT_IO)
        self.sp = SlowPath(self.mem, make_tables(cfg, self.mem, self.fib.lookup), cfg, 256)
        self.seq = 0
        self.sent: list[list[bytes]] = [[] for _ in cfg.ports]  # everything, by port

    def close(self) -> None:
        self.fib.close()
        self.fib.unlink()
        self.mem.close()

    def give(self, items: list[tuple[Ether, Slow, int]]) -> list[bytes]:
        """Hand over (frame, reason, ingress port) items as one burst; return what the
        worker sent. Frame k of the whole run is stamped T0 + k ms."""
        from engine.pipeline.verdict import SLOW

        mem = self.mem
        idx = self.io.alloc(len(items))
        for i, (frame, reason, port) in zip(idx.tolist(), items, strict=True):
            raw = bytes(frame)
            mem.data[i, : len(raw)] = np.frombuffer(raw, np.uint8)
            mem.length[i] = len(raw)
            mem.port[i] = port
            mem.ts[i] = T0 + self.seq * 10**6
            mem.seq[i] = self.seq
            mem.code[i] = SLOW + int(reason)
            self.seq += 1
        assert mem.rings["slow.0"].enqueue(idx) == len(idx)
        assert self.sp.poll() == len(items)
        return self.collect()

    def collect(self) -> list[bytes]:
        """The pcap agent's part: take what the worker sent, port by port, and free it."""
        mem = self.mem
        sent = []
        for p in range(mem.geometry.nports):
            out = mem.rings[f"slowtx.{p}"].dequeue(1 << 20)
            frames = [mem.data[i, : mem.length[i]].tobytes() for i in out.tolist()]
            self.sent[p] += frames
            sent += frames
            self.io.free(out)
        self.io.reclaim()
        return sent

    def counters(self) -> dict[str, int]:
        from engine.counters import SECTIONS, Reasm

        row = self.mem.counters[self.sp.agent]
        # per burst, per run; and the high-water mark of reassembly memory: a datagram
        # a burst completes on its own is never held, one packet at a time it is
        skip = {index(Misc.batches), index(Misc.busy_ns), index(Reasm.memory_high)}
        return {f"{s.__name__}.{m.name}": int(row[index(m)]) for s in SECTIONS for m in s
                if int(row[index(m)]) and index(m) not in skip}


def config(tmp_path, **lab):
    lb = Lab(tmp_path, **lab)
    with lb.config_path.open("a") as f:  # the file ends inside [reassembly]
        f.write("\n[icmp]\nratelimit_ms = 0\n")
    return lb.config()


def h1(dst: str, **ip) -> Ether:
    ip.setdefault("src", "10.0.1.2")
    return Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(dst=dst, **ip)


def fragments(dst: str, ident: int, size: int, mtu: int, **ip) -> list[Ether]:
    d = IP(src="10.0.1.2", dst=dst, id=ident, **ip) / UDP(sport=9, dport=9) / Raw(
        bytes(k & 0xFF for k in range(size)))
    return [Ether(src=MAC["h1"], dst=MAC["p0"]) / q for q in scapy_fragment(d, mtu)]


def mixed_burst() -> list[tuple[Ether, Slow, int]]:
    """Every kind of slow-path work, with pairs that differ in one routing input only
    (TTL, DF), fragments of several datagrams interleaved, each item with the reason
    the fast path gives it."""
    rr = [IPOption(b"\x07\x0b\x04" + b"\0" * 8)]
    a = fragments("10.0.2.2", 1, 2800, 1480)  # forwarded
    a_ttl1 = fragments("10.0.2.2", 2, 2800, 1480, ttl=1)  # the same but TTL 1
    b = fragments("10.0.3.2", 3, 2900, 1480)  # refragmented to p2's MTU 1400
    c = fragments("10.0.1.1", 4, 1000, 600)  # for the router: port unreachable
    items = [(f, Slow.reassemble, 0) for f in a[:1] + a_ttl1[:1] + b[:1] + c[:1]]
    items += [
        (h1("10.0.2.2", ttl=1, id=10) / UDP() / Raw(b"t" * 30), Slow.ttl_exceeded, 0),
        (Ether(src=MAC["h2"], dst=MAC["p1"]) / IP(src="10.0.2.2", dst="10.0.1.2", ttl=1)
         / UDP(), Slow.ttl_exceeded, 1),
        (h1("10.0.1.1") / ICMP(id=7, seq=1) / Raw(b"ping"), Slow.local, 0),
        (h1("10.0.2.2", id=11, options=rr) / UDP() / Raw(b"rr"), Slow.options, 0),
        (h1("10.0.3.2", id=12, options=rr) / UDP() / Raw(b"r" * 1400), Slow.options, 0),
        (h1("10.0.3.2", id=13, options=rr, flags="DF") / UDP() / Raw(b"r" * 1400),
         Slow.options, 0),
        (h1("192.0.2.1", id=14) / UDP(), Slow.no_route, 0),
        (h1("10.9.8.5", id=15) / UDP(), Slow.redirect, 0),
        (h1("10.0.3.2", id=16, flags="DF") / Raw(b"z" * 1400), Slow.frag_needed, 0),
        (h1("10.0.3.2", id=17) / Raw(b"z" * 1400), Slow.fragment, 0),
    ]
    items += [(f, Slow.reassemble, 0) for f in a[1:] + a_ttl1[1:] + b[1:] + c[1:]]
    return items


def test_one_burst_does_what_one_packet_at_a_time_does(tmp_path):
    items = mixed_burst()
    runs = {}
    for mode in ("burst", "alone"):
        (tmp_path / mode).mkdir()
        rig = Rig(config(tmp_path / mode))
        try:
            if mode == "burst":
                rig.give(items)
            else:
                for item in items:
                    rig.give([item])
            rig.sp.finish()
            runs[mode] = (rig.sent, rig.counters())
        finally:
            rig.close()
    assert runs["burst"] == runs["alone"]
    by_port, counts = runs["burst"]
    sent = [f for frames in by_port for f in frames]
    # the work was done: nothing failed, every output verifies, each kind is there
    assert "SlowDrop.internal_error" not in counts
    assert all(checksum(f[14 : 14 + (f[14] & 0xF) * 4]) == 0 for f in sent)
    a = [routed(f, "p1", "h2") for f in fragments("10.0.2.2", 1, 2800, 1480)]
    assert len(a) == 2 and sent[sent.index(a[0]) + 1] == a[1]  # as it came
    assert counts["Snmp.ReasmOKs"] == 4 and counts["Misc.merged"] == 8
    # a, b, the RR packets to h2 and (without DF) to p2, the redirected packet, the
    # fragmented one
    assert counts["Snmp.ForwDatagrams"] == 6
    assert counts["Icmp.OutTimeExcds"] == 3  # two TTL 1, the reassembled TTL 1 datagram
    assert counts["Icmp.OutEchoReps"] == 1 and counts["Icmp.OutRedirects"] == 1
    # no route, port unreachable (datagram c), frag needed twice (DF alone and with RR)
    assert counts["Icmp.OutDestUnreachs"] == 4
    assert counts["SlowDrop.frag_needed"] == 2


def uneven_fragments(dst: str, ident: int) -> list[Ether]:
    """A datagram whose first fragment is not its largest: `prefetch` cannot foresee
    the question its routing asks."""
    payload = bytes(UDP(sport=9, dport=9) / Raw(b"u" * 1992))
    parts = [IP(src="10.0.1.2", dst=dst, id=ident, proto=17, flags="MF") / payload[:800],
             IP(src="10.0.1.2", dst=dst, id=ident, proto=17, frag=100) / payload[800:]]
    return [Ether(src=MAC["h1"], dst=MAC["p0"]) / q for q in parts]


@pytest.mark.parametrize("shape", [fragments, uneven_fragments])
def test_routing_answers_do_not_outlive_the_burst(tmp_path, shape):
    def datagram(ident: int) -> list[Ether]:
        return (shape("10.50.0.1", ident, 2800, 1480) if shape is fragments
                else shape("10.50.0.1", ident))

    rig = Rig(config(tmp_path))
    try:
        sent = rig.give([(f, Slow.reassemble, 0) for f in datagram(1)])
        assert len(sent) == 1 and IP(sent[0][14:])[ICMP].type == 3  # net unreachable
        rig.routing.add({"prefix": "10.50.0.0/16", "via": "10.0.2.254"})
        again = datagram(2)  # the same question, in a new burst
        sent = rig.give([(f, Slow.reassemble, 0) for f in again])
        assert sent == [routed(f, "p1", "gw") for f in again]
    finally:
        rig.close()


def test_a_port_that_goes_down_during_a_burst_is_seen_at_the_next_packet(tmp_path):
    rig = Rig(config(tmp_path))
    try:
        prefetch = rig.sp.kernel.routes.prefetch

        def prefetch_then_port_down(burst):  # the control process, just after
            prefetch(burst)
            rig.routing.set_port("p1", False)

        rig.sp.kernel.routes.prefetch = prefetch_then_port_down
        frags = fragments("10.0.2.2", 1, 2800, 1480)
        ttl_1 = h1("10.0.2.2", ttl=1, id=5) / UDP()  # its answer goes back out of p0
        sent = rig.give([(f, Slow.reassemble, 0) for f in frags]
                        + [(ttl_1, Slow.ttl_exceeded, 0)])
        assert len(sent) == 1 and IP(sent[0][14:])[ICMP].type == 11
        counts = rig.counters()
        assert counts["Drop.port_down"] == 1 and counts["Misc.dropped"] == 2
        assert "Misc.forwarded" not in counts
    finally:
        rig.close()


@pytest.mark.parametrize("reason", ["ring", "pool"])
def test_no_room_for_the_burst_refuses_packet_by_packet(tmp_path, reason):
    """Live ports (no waiting): what fits is sent whole, in order; each packet that
    does not is refused whole and counted once; every buffer comes back."""
    rig = Rig(config(tmp_path), ring_size=8)
    try:
        rig.sp.out.lossless = False
        kept = rig.sp.buffers.count - 5 if reason == "pool" else 0
        rig.sp.buffers.alloc(kept)  # leaves the worker 5 buffers of its partition
        big = [h1("10.0.3.2", id=k) / Raw(b"z" * 1450) for k in range(5)]  # 2 frames each
        pings = [h1("10.0.1.1") / ICMP(id=k, seq=1) / Raw(b"p") for k in range(2)]
        sent = rig.give([(f, Slow.fragment, 0) for f in big]
                        + [(f, Slow.local, 0) for f in pings])
        counts = rig.counters()
        fragmented = [[bytes(Ether(src=MAC["p2"], dst=MAC["h3"]) / q)
                       for q in scapy_fragment(IP(routed(f, "p2", "h3")[14:]), 1376)]
                      for f in big]
        if reason == "ring":  # p2's ring takes 4 packets' frames, p0's both replies
            assert rig.sent[2] == [f for frames in fragmented[:4] for f in frames]
            assert len(rig.sent[0]) == 2 and len(sent) == 8 + 2
            assert counts["Misc.forwarded"] == 4 and counts["Drop.ring_full"] == 1
            assert counts["Icmp.OutEchoReps"] == 2 and counts["Misc.dropped"] == 1
        else:  # 5 buffers: two packets, two frames each, then one reply
            assert rig.sent[2] == [f for frames in fragmented[:2] for f in frames]
            assert len(rig.sent[0]) == 1 and len(sent) == 4 + 1
            assert counts["Misc.forwarded"] == 2 and counts["Drop.pool_empty"] == 3
            assert counts["Icmp.OutEchoReps"] == 1 and counts["Unsent.pool_empty"] == 1
            assert counts["Misc.dropped"] == 3
        assert counts["Misc.tx_frames"] == len(sent)
        assert counts["Snmp.ForwDatagrams"] == counts["Misc.forwarded"]
        assert counts["Misc.rx_frames"] == 7
        assert rig.io.available() == rig.io.size  # the inputs, freed once
        assert rig.sp.buffers.available() == rig.sp.buffers.size - kept
    finally:
        rig.close()


def test_the_scalar_ttl_decrement_is_the_fast_paths():
    from engine.pipeline import checksum
    from engine.slowpath.kernel import decrease_ttl

    every = np.arange(1 << 16, dtype=np.uint32)
    vector = checksum.ttl_decrement(every).tolist()
    assert [checksum.ttl_decrement(c) for c in range(1 << 16)] == vector
    for k in range(300):  # every TTL, options or not, against scapy's from-scratch sum
        opts = [IPOption(b"\x07\x07\x04" + bytes(4))] if k % 2 else []
        ip = IP(src="10.0.1.2", dst=f"10.{k % 256}.3.4", ttl=k % 254 + 2, id=k * 211,
                tos=k % 64, options=opts) / UDP() / Raw(b"x" * k)
        want = ip.copy()
        want.ttl -= 1
        del want.chksum
        assert decrease_ttl(bytes(ip)) == bytes(IP(bytes(want)))
