"""ICMP errors and echo replies a run at a time (engine/slowpath/icmp_burst.py): the
slow-path worker answers the TTL-exceeded, fragmentation-needed and error-route
packets and the echo requests of a burst over its pool rows (compiled checks and
builders, the stateful decisions in arrival order). It must change nothing but the
cost: the same frames, times, arrival numbers and order on every ring, the same
counters, the same rate-limiter state (per-peer buckets, the global bucket, its
random draws) and IP ID state as when every packet goes through `Kernel.take`
(`icmp_bursts = False`).

The differential test: random bursts of error packets (sources on every port, via a
gateway, behind the neighbour table, with no route back, martian or broadcast ones;
destinations unicast, local, broadcast, multicast; ICMP inside of every kind,
fragments, options, frames for another MAC) mixed with other slow-path work (echo
requests, options, fragments, ARP), at random times (within a jiffy, across the
rate limits' refills), with the rate limits on or off, short reassembly timers, and
rings or a pool without room.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPOption
from scapy.layers.inet import fragment as scapy_fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from test_slowpath_burst import Rig
from test_slowpath_whole import FrozenWallClock, Tight, neigh_state

from engine.counters import Slow
from engine.workers import slowpath

from conftest import BCAST, MAC, Lab

T0 = 1_700_000_000 * 10**9
ERROR_REASONS = [Slow.ttl_exceeded, Slow.frag_needed, Slow.no_route, Slow.unreachable,
                 Slow.prohibit]
# (source, ingress port, its MAC)
SOURCES = [("10.0.1.2", 0, "h1"), ("10.0.2.2", 1, "h2"), ("10.0.3.2", 2, "h3"),
           ("10.9.8.5", 0, "h1"),  # answered through the gateway 10.0.1.2
           ("10.69.1.1", 1, "h2"),  # answered through the neighbour table (ARP)
           ("10.0.1.255", 0, "h1"),  # a subnet's broadcast: answered as a broadcast
           ("192.0.2.7", 0, "h1"),  # no route back
           ("10.66.0.1", 0, "h1"),  # a blackhole route back
           ("127.0.0.1", 0, "h1"), ("224.0.0.5", 0, "h1"), ("0.0.0.0", 0, "h1"),
           ("0.1.2.3", 0, "h1")]
DESTINATIONS = ["10.0.2.2", "10.0.3.2", "10.9.1.1", "10.0.1.1", "10.0.2.255",
                "255.255.255.255", "224.0.0.9", "192.0.2.1", "10.67.0.1", "10.68.0.1"]
GAPS = [0, 1_000, 1_000, 1_000_000, 1_000_000, 20_000_000, 1_100_000_000]  # ns


class TimedRig(Rig):
    """A Rig whose frames carry the times the test gives, and that keeps each sent
    frame's time and arrival number."""

    def __init__(self, cfg, ring_size: int = 1024) -> None:
        super().__init__(cfg, ring_size)
        self.clock = T0

    def give_timed(self, items: list[tuple[Ether, Slow, int, int]]) -> None:
        from engine.pipeline.verdict import SLOW

        mem = self.mem
        idx = self.io.alloc(len(items))
        for i, (frame, reason, port, gap) in zip(idx.tolist(), items, strict=True):
            raw = bytes(frame)
            self.clock += gap
            mem.data[i, : len(raw)] = np.frombuffer(raw, np.uint8)
            mem.length[i] = len(raw)
            mem.port[i] = port
            mem.ts[i] = self.clock
            mem.seq[i] = self.seq
            mem.code[i] = SLOW + int(reason)
            self.seq += 1
        assert mem.rings["slow.0"].enqueue(idx) == len(idx)
        assert self.sp.poll() == len(items)
        self.collect()

    def collect(self) -> list[bytes]:
        mem = self.mem
        sent = []
        for p in range(mem.geometry.nports):
            out = mem.rings[f"slowtx.{p}"].dequeue(1 << 20)
            for i in out.tolist():
                frame = (mem.data[i, : mem.length[i]].tobytes(), int(mem.ts[i]),
                         int(mem.seq[i]))
                self.sent[p].append(frame)
                sent.append(frame[0])
            self.io.free(out)
        self.io.reclaim()
        return sent


def error_packet(rnd: random.Random) -> tuple[Ether, Slow, int]:
    """A packet the fast path hands over for an ICMP error, of a random kind."""
    src, port, host = rnd.choice(SOURCES)
    dst = rnd.choice(DESTINATIONS)
    ip = dict(src=src, dst=dst, ttl=rnd.choice([1, 1, 2, 64]), id=rnd.randrange(65536),
              tos=rnd.choice([0, 0, 0x1F, 0xE3, 0x10]))
    shape = rnd.random()
    if shape < 0.1:
        ip["flags"] = "MF"
    elif shape < 0.2:
        ip["frag"] = rnd.choice([1, 100])
    elif shape < 0.3:
        ip["flags"] = "DF"
    kind = rnd.random()
    if kind < 0.4:
        packet = IP(**ip) / UDP(sport=5, dport=7) / Raw(bytes(rnd.randrange(1400)))
    elif kind < 0.7:
        inner = rnd.choice([0, 3, 5, 8, 11, 12, 13, 18, 19, 40])
        packet = IP(**ip) / ICMP(type=inner, code=rnd.randrange(3)) / Raw(
            bytes(rnd.randrange(64)))
    elif kind < 0.8:  # an ICMP part of 0 to 7 bytes
        packet = IP(proto=1, **ip) / Raw(bytes([rnd.choice([0, 3, 8, 11])])
                                         * rnd.randrange(8))
    elif kind < 0.9:
        packet = IP(**ip) / Raw(bytes(rnd.randrange(2000)))  # quoted up to 576 bytes
    else:  # options: compiled and echoed, so one at a time
        packet = IP(options=[IPOption(b"\x07\x07\x04" + b"\0" * 4)], **ip) / UDP()
    l2 = rnd.choice([MAC[f"p{port}"]] * 8 + [MAC["stranger"], BCAST])
    return Ether(src=MAC[host], dst=l2) / packet, rnd.choice(ERROR_REASONS), port


def echo_request(rnd: random.Random) -> tuple[Ether, Slow, int]:
    """An echo request to the router, of a random kind (answered, broadcast, a bad
    checksum, a fragment, one whose reply must be fragmented, options...)."""
    src, port, host = rnd.choice(SOURCES)
    dst = rnd.choice(["10.0.1.1", "10.0.1.1", "10.0.2.1", "10.0.3.1", "10.0.1.255",
                      "255.255.255.255", "224.0.0.1", "10.0.2.2"])
    ip = dict(src=src, dst=dst, ttl=rnd.choice([1, 64]), id=rnd.randrange(65536),
              tos=rnd.choice([0, 0x1F, 0xE3]))
    shape = rnd.random()
    if shape < 0.05:
        ip["flags"] = "MF"
    elif shape < 0.1:
        ip["frag"] = 100
    elif shape < 0.15:
        ip["options"] = [IPOption(b"\x07\x07\x04" + b"\0" * 4)]
    icmp = ICMP(id=rnd.randrange(65536), seq=rnd.randrange(65536))
    if rnd.random() < 0.05:
        icmp.chksum = 0x1234
    elif rnd.random() < 0.05:
        icmp.type = 13  # a timestamp request: not answered
    packet = IP(**ip) / icmp / Raw(bytes(rnd.choice([0, 1, 56, 1399, 1460])))
    if rnd.random() < 0.05:
        packet = IP(bytes(packet)[:-1])  # shorter than its total length says
    l2 = rnd.choice([MAC[f"p{port}"]] * 8 + [BCAST])
    return Ether(src=MAC[host], dst=l2) / packet, Slow.local, port


def other_work(rnd: random.Random) -> list[tuple[Ether, Slow, int]]:
    """Something else the slow path does between errors."""
    kind = rnd.random()
    h1 = Ether(src=MAC["h1"], dst=MAC["p0"])
    if kind < 0.25:
        return [(h1 / IP(src="10.0.1.2", dst="10.0.1.1") / ICMP(id=rnd.randrange(99))
                 / Raw(b"ping"), Slow.local, 0)]
    if kind < 0.5:
        rr = [IPOption(b"\x07\x07\x04" + b"\0" * 4)]
        return [(h1 / IP(src="10.0.1.2", dst="10.0.2.2", ttl=rnd.choice([1, 64]), options=rr)
                 / UDP(), Slow.options, 0)]
    if kind < 0.75:  # a datagram for the router, maybe never completed (its timer)
        d = IP(src="10.0.1.2", dst=rnd.choice(["10.0.1.1", "10.0.2.2"]),
               id=rnd.randrange(65536)) / UDP(dport=9) / Raw(bytes(1200))
        pieces = scapy_fragment(d, 600)
        if rnd.random() < 0.5:
            pieces = pieces[:-1]
        return [(h1 / f, Slow.reassemble, 0) for f in pieces]
    mac = rnd.choice(["02:00:00:00:69:01", "02:00:00:00:69:02"])
    return [(Ether(src=mac, dst=MAC["p1"]) / ARP(op=2, hwsrc=mac, psrc="10.69.1.1",
                                                   hwdst=MAC["p1"], pdst="10.0.2.1"),
             Slow.arp, 1)]


@st.composite
def streams(draw):
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    items: list[tuple[Ether, Slow, int, int]] = []
    mostly_errors = rnd.random() < 0.5
    for _ in range(draw(st.integers(1, 60))):
        if rnd.random() < (0.9 if mostly_errors else 0.6):
            group = [error_packet(rnd) if rnd.random() < 0.7 else echo_request(rnd)]
        else:
            group = other_work(rnd)
        gap = rnd.choice(GAPS)
        items += [(frame, reason, port, gap if k == 0 else 1000)
                  for k, (frame, reason, port) in enumerate(group)]
    cuts = sorted(rnd.sample(range(1, len(items) + 1), k=min(len(items), rnd.randrange(4))))
    bursts, start = [], 0
    for cut in cuts + [len(items)]:
        if cut > start:
            bursts.append(items[start:cut])
            start = cut
    ratelimit = draw(st.sampled_from([0, 1, 100, 1000]))
    timeout = draw(st.sampled_from(["", "timeout_s = 0.004\n"]))
    tight = draw(st.sampled_from([None, None, "ring", "pool"]))
    return bursts, ratelimit, timeout, tight


def config(folder, ratelimit: int, timeout: str = ""):
    lb = Lab(folder)
    with lb.config_path.open("a") as f:  # the file ends inside [reassembly]
        f.write(f"{timeout}\n[icmp]\nratelimit_ms = {ratelimit}\n")
    return lb.config()


def limiter_state(k) -> tuple:
    lim, ids = k.limiter, k.ids
    return (dict(lim._peers), lim._credit, lim._stamp, lim._rng.getstate(),
            dict(ids._idents), dict(ids._stamps), ids._rng.getstate(), k.clock)


def run(folder, bursts, ratelimit: int, timeout: str, tight: str | None,
        icmp_bursts: bool) -> tuple:
    rig = TimedRig(config(folder, ratelimit, timeout))
    monkeypatch = pytest.MonkeyPatch()
    try:
        rig.sp.icmp_bursts = icmp_bursts
        if tight:  # a live port: no waiting, refusals
            rig.sp.out.lossless = False
            monkeypatch.setattr(slowpath, "time", FrozenWallClock())
            if tight == "ring":
                rig.sp.out.tx = [Tight(ring) for ring in rig.sp.out.tx]
            else:  # the pool: the worker's partition down to 3 buffers
                rig.sp.buffers.alloc(rig.sp.buffers.count - 3)
        for burst in bursts:
            rig.give_timed(burst)
        state = limiter_state(rig.sp.kernel)
        neighbours = neigh_state(rig.sp.kernel.neigh)
        rig.sp.finish()
        rig.collect()
        return rig.sent, rig.counters(), state, neighbours
    finally:
        monkeypatch.undo()
        rig.close()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(streams())
def test_error_runs_change_nothing_but_the_cost(tmp_path_factory, example):
    bursts, ratelimit, timeout, tight = example
    folder = tmp_path_factory.mktemp("icmp")
    (folder / "runs").mkdir()
    (folder / "alone").mkdir()
    runs = run(folder / "runs", bursts, ratelimit, timeout, tight, True)
    alone = run(folder / "alone", bursts, ratelimit, timeout, tight, False)
    assert runs[0] == alone[0]  # frames, times, numbers, per port, in ring order
    assert runs[1] == alone[1]  # every counter
    assert runs[2] == alone[2]  # rate limiter and IP ID state, the clock
    assert runs[3] == alone[3]  # the ARP entries
    assert "SlowDrop.internal_error" not in runs[1]


def test_errors_are_taken_in_runs_in_the_common_case(tmp_path):
    """The differential test must not pass by never taking the runs: a burst of TTL-1
    packets is answered without `Kernel.icmp_send`, byte for byte as alone."""
    items = [(Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1,
                                                       id=k) / UDP() / Raw(bytes(k * 7)),
              Slow.ttl_exceeded, 0, 1000) for k in range(100)]
    results = []
    for icmp_bursts in (True, False):
        folder = tmp_path / str(icmp_bursts)
        folder.mkdir()
        rig = TimedRig(config(folder, 1000))
        try:
            rig.sp.icmp_bursts = icmp_bursts
            rig.give_timed(items[:1])  # the neighbour clock's first tick: alone
            calls = []
            send = rig.sp.kernel.icmp_send
            rig.sp.kernel.icmp_send = (lambda *a, calls=calls, send=send, **k:
                                       calls.append(1) or send(*a, **k))
            rig.give_timed(items[1:])
            results.append((rig.sent, rig.counters(), limiter_state(rig.sp.kernel)))
        finally:
            rig.close()
        if icmp_bursts:
            assert calls == []
    assert results[0] == results[1]
    sent = [f for frames in results[0][0] for f in frames]
    # 6 per host at first (XRLIM_BURST_FACTOR), then one per second: none in 100 µs
    assert len(sent) == 6
    reply = IP(sent[0][0][14:])
    assert reply[ICMP].type == 11 and reply.src == "10.0.1.1" and reply.dst == "10.0.1.2"
    assert results[0][1]["Unsent.ratelimited"] == 94


def test_echo_requests_are_taken_in_runs(tmp_path):
    """A burst of echo requests is answered without `Kernel.icmp_echo`, as alone."""
    items = [(Ether(src=MAC["h1"], dst=MAC["p0"])
              / IP(src="10.0.1.2", dst="10.0.1.1", id=k, tos=k & 0xFF)
              / ICMP(id=7, seq=k) / Raw(bytes(range(k % 200))), Slow.local, 0, 1000)
             for k in range(100)]
    results = []
    for icmp_bursts in (True, False):
        folder = tmp_path / str(icmp_bursts)
        folder.mkdir()
        rig = TimedRig(config(folder, 1000))
        try:
            rig.sp.icmp_bursts = icmp_bursts
            rig.give_timed(items[:1])
            calls = []
            echo = rig.sp.kernel.icmp_echo
            rig.sp.kernel.icmp_echo = (lambda *a, calls=calls, echo=echo, **k:
                                       calls.append(1) or echo(*a, **k))
            rig.give_timed(items[1:])
            results.append((rig.sent, rig.counters(), limiter_state(rig.sp.kernel)))
        finally:
            rig.close()
        if icmp_bursts:
            assert calls == []
    assert results[0] == results[1]
    sent = [f for frames in results[0][0] for f in frames]
    assert len(sent) == 100
    reply = Ether(sent[5][0])
    assert reply[ICMP].type == 0 and reply[ICMP].seq == 5 and reply[IP].tos == 5
    assert reply[IP].src == "10.0.1.1" and reply.dst == MAC["h1"]
    assert bytes(reply[ICMP].payload) == bytes(range(5))
    assert results[0][1]["Icmp.OutEchoReps"] == 100
