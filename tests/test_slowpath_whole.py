"""Whole datagrams of a burst: the slow path forwards a datagram whose fragments all
came in one burst as the kernel's frag_list fast path does (the fragments again, as
they came, with the datagram's header), over arrays and in the buffers they came in
(`reasm.whole_datagrams`, `WholeDatagrams.take`). It must change nothing but the
cost: the same frames, times, arrival numbers and order on every ring, the same
counters and the same reassembler state as when every fragment goes through
`Reassembler.add` one at a time (`whole_bursts = False`).

Named cases for `whole_datagrams` (headers built with scapy), then the differential
test: random fragment streams (orders, duplicates, overlaps, holes, trimmed
fragments, ECN mixes, DF, TTL 1, every kind of route, key collisions, short timers,
little reassembly memory, a table change mid-burst) cut into random bursts, through
two workers, compared.
"""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet import fragment as scapy_fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from test_slowpath_burst import Rig

from engine.counters import Slow
from engine.slowpath import reasm as R
from engine.workers import slowpath

from conftest import MAC, Lab, routed

T0 = 1_700_000_000 * 10**9
TIMEOUT = 30 * 10**9


def frags(ident: int, size: int, mtu: int, *, src: str = "10.0.1.2", dst: str = "10.0.2.2",
          **ip) -> list[IP]:
    d = IP(src=src, dst=dst, id=ident, **ip) / UDP(sport=7, dport=9) / Raw(
        bytes(k & 0xFF for k in range(size)))
    return list(scapy_fragment(d, mtu))


def headers(packets: list[IP]) -> np.ndarray:
    return np.array([list(bytes(p)[:20]) for p in packets], dtype=np.uint8)


def whole(packets: list[IP], candidate=None, clock=None, timeout=TIMEOUT, max_dist=64):
    ip = headers(packets)
    n = len(packets)
    cand = np.ones(n, bool) if candidate is None else np.asarray(candidate)
    clk = np.arange(n, dtype=np.int64) * 1000 if clock is None else np.asarray(clock)
    return R.whole_datagrams(ip, cand, clk, timeout, max_dist)


def datagrams(w: R.Whole) -> list[list[int]]:
    """Each whole datagram's rows, in offset order."""
    b = w.bounds.tolist()
    return [w.rows[b[d] : b[d + 1]].tolist() for d in range(len(w))]


# -- whole_datagrams: named cases ------------------------------------------------------

def test_in_order():
    a = frags(1, 3000, 1500)
    w = whole(a)
    assert datagrams(w) == [[0, 1, 2]]
    assert w.head.tolist() == [0] and w.last.tolist() == [2] and w.first.tolist() == [0]
    assert w.largest.tolist() == [1516] and w.length.tolist() == [3008]  # 1,496 + 20
    assert w.df.tolist() == [False] and w.ecn.tolist() == [0]


def test_reversed_completes_with_its_first_fragment():
    a = frags(1, 3000, 1500)[::-1]
    w = whole(a)
    assert datagrams(w) == [[2, 1, 0]]  # offset order
    assert w.head.tolist() == [2] and w.last.tolist() == [2] and w.first.tolist() == [0]


def test_interleaved_datagrams_in_the_order_they_complete():
    a, b = frags(1, 3000, 1500), frags(2, 1000, 600)
    stream = [a[0], b[0], a[1], b[1], a[2]]
    w = whole(stream)
    assert datagrams(w) == [[1, 3], [0, 2, 4]]  # b completes at row 3, a at row 4


@pytest.mark.parametrize("case", ["hole", "duplicate", "overlap", "no_last", "no_first",
                                  "trimmed", "empty", "not_candidate", "one_source_too_far"])
def test_not_whole(case):
    a = frags(1, 3000, 1000)  # 4 fragments: 976, 976, 976, 80 bytes of payload
    candidate = None
    max_dist = 64
    if case == "hole":
        stream = a[:1] + a[2:]
    elif case == "duplicate":
        stream = a + [a[1]]
    elif case == "overlap":
        b = a[1].copy()
        b.frag -= 1  # starts 8 bytes into the first
        stream = [a[0], b, a[2], a[3]]
    elif case == "no_last":
        stream = a[:3]
    elif case == "no_first":
        stream = a[1:]
    elif case == "trimmed":  # a fragment with MF whose payload is not a multiple of 8
        b = IP(bytes(a[1]))
        b.len -= 3
        b.remove_payload()
        b = IP(bytes(b) + bytes(a[1][IP].payload)[:-3])
        stream = [a[0], b, a[2], a[3]]
    elif case == "empty":
        e = a[3].copy()
        e.remove_payload()
        e.len, e.proto = 20, 17
        stream = a + [e]
    elif case == "not_candidate":
        stream = a
        candidate = [True, True, False, True]
    else:  # another datagram from the same source in between: 3 fragments from the
        # source from a[1] to a[2], over ipfrag_max_dist 2 (that one is whole)
        stream = a[:2] + frags(2, 100, 68) + a[2:]
        max_dist = 2
    w = whole(stream, candidate, max_dist=max_dist)
    assert datagrams(w) == ([[2, 3]] if case == "one_source_too_far" else [])


def test_another_source_does_not_count_for_too_far():
    a = frags(1, 3000, 1000)
    other = frags(2, 100, 68, src="10.0.2.2")
    w = whole(a[:2] + other + a[2:], max_dist=3)
    assert datagrams(w) == [[2, 3], [0, 1, 4, 5]]


def test_keys_are_source_destination_id_and_protocol():
    a = frags(7, 1000, 600)
    twins = [frags(7, 1000, 600, src="10.0.2.2"), frags(7, 1000, 600, dst="10.0.3.2"),
             frags(8, 1000, 600)]
    icmp = [IP(bytes(f)) for f in a]
    for f in icmp:
        f.proto = 1
        del f.chksum
    stream = [f for d in [a, *twins, icmp] for f in d]
    assert len(datagrams(whole(stream))) == 5


def test_ecn_and_df():
    a = frags(1, 3000, 1500, tos=1)  # ECT(1)
    a[1].tos = 3  # CE: ECT with CE -> CE on the datagram
    b = frags(2, 3000, 1500, tos=0)
    b[0].tos = 3  # Not-ECT with CE: the kernel drops the datagram
    c = frags(3, 3000, 1500)
    c[0].flags = "MF+DF"  # DF on the largest fragment: DF on the datagram
    w = whole(a + b + c)
    assert datagrams(w) == [[0, 1, 2], [6, 7, 8]]
    assert w.ecn.tolist() == [3, 0] and w.df.tolist() == [False, True]


def test_timer_and_size_limits():
    a = frags(1, 3000, 1500)
    assert datagrams(whole(a, clock=[0, 1, TIMEOUT])) == []
    assert datagrams(whole(a, clock=[0, 1, TIMEOUT - 1])) == [[0, 1, 2]]
    # over 65,535 bytes: headers alone (whole_datagrams reads nothing else)
    def huge(last_payload: int) -> list[IP]:
        head = [IP(src="10.0.1.2", dst="10.0.2.2", id=9, flags="MF", frag=k * 1023,
                   len=20 + 8184) for k in range(8)]
        return head + [IP(src="10.0.1.2", dst="10.0.2.2", id=9, frag=8 * 1023,
                          len=20 + last_payload)]

    assert datagrams(whole(huge(43))) == [list(range(9))]  # 65,535 bytes
    assert datagrams(whole(huge(44))) == []


# -- the worker: one whole datagram, byte for byte -----------------------------------

def config(tmp_path, extra: str = ""):
    lb = Lab(tmp_path, batch=256)
    with lb.config_path.open("a") as f:  # the file ends inside [reassembly]
        f.write(extra + "\n[icmp]\nratelimit_ms = 0\n")
    return lb.config()


def test_a_whole_datagram_leaves_as_it_came_in_its_own_buffers(tmp_path):
    a = [Ether(src=MAC["h1"], dst=MAC["p0"]) / f
         for f in frags(1, 3000, 1480, tos=1, ttl=9)[::-1]]
    a[0][IP].tos = 3  # CE on one fragment: the datagram is CE
    rig = Rig(config(tmp_path))
    try:
        allocated = []
        alloc = rig.sp.buffers.alloc
        rig.sp.buffers.alloc = lambda n: allocated.append(n) or alloc(n)
        sent = rig.give([(f, Slow.reassemble, 0) for f in a])
        counts = rig.counters()
    finally:
        rig.close()
    expect = []
    for f in frags(1, 3000, 1480, tos=3, ttl=9):  # offset order, the datagram's header
        expect.append(routed(Ether(src=MAC["h1"], dst=MAC["p0"]) / f, "p1", "h2"))
    assert sent == expect
    assert sum(allocated) == 0  # no copy: they left in the buffers they came in
    assert counts["Snmp.ReasmReqds"] == 3 and counts["Snmp.ReasmOKs"] == 1
    assert counts["Snmp.FragOKs"] == 1 and counts["Snmp.FragCreates"] == 3
    assert counts["Snmp.ForwDatagrams"] == 1 and counts["Misc.forwarded"] == 1
    assert counts["Misc.merged"] == 3 and counts["Misc.reassembled"] == 1
    assert counts["Misc.tx_frames"] == 3 and "Misc.dropped" not in counts
    assert rig.sp.kernel.reasm.held == 0


# -- the worker: the same with and without whole datagrams ------------------------------

SOURCES = [("10.0.1.2", 0, "h1"), ("10.0.2.2", 1, "h2")]
DESTINATIONS = ["10.0.2.2", "10.9.1.1", "10.77.3.4", "10.0.3.2", "10.9.8.5", "10.69.1.1",
                "10.0.1.1", "10.67.1.1", "10.66.1.1", "10.0.2.255", "10.0.1.2"]


class RecordingRig(Rig):
    """A Rig that also keeps each sent frame's time and arrival number."""

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


@st.composite
def streams(draw):
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    destinations = rnd.sample(DESTINATIONS, k=rnd.choice([1, 2, 4, len(DESTINATIONS)]))
    items = []
    for _ in range(draw(st.integers(1, 12))):
        src, port, host = rnd.choice(SOURCES)
        dst = rnd.choice(destinations)
        size = rnd.choice([40, 300, 1000, 1472, 2000, 3000, 4000])
        mtu = rnd.choice([300, 504, 1000, 1480, 1480, 1496])  # payload per fragment
        ip = dict(ttl=rnd.choice([1, 2, 64, 64]), tos=rnd.choice([0, 0, 1, 2, 3]))
        if rnd.random() < 0.1:
            ip["flags"] = "DF"
        pieces = frags(rnd.randrange(2), size, mtu, src=src, dst=dst, **ip)
        if len(pieces) < 2:
            continue
        pieces = [IP(bytes(f)) for f in pieces]
        for f in pieces:
            if rnd.random() < 0.05:
                f.tos ^= rnd.choice([1, 2, 3])
            if rnd.random() < 0.05:
                f.flags = int(f.flags) | 2  # DF on a fragment
            del f.chksum
        mutation = rnd.random()
        if mutation < 0.1:
            pieces.pop(rnd.randrange(len(pieces)))  # a hole
        elif mutation < 0.2:
            pieces.append(pieces[rnd.randrange(len(pieces))])  # a duplicate
        elif mutation < 0.25:
            f = pieces[rnd.randrange(1, len(pieces))]
            f.frag -= 1  # an overlap
        l2 = MAC["p0"] if port == 0 else MAC["p1"]
        if rnd.random() < 0.05:
            l2 = MAC["stranger"]
        frames = [(Ether(src=MAC[host], dst=l2) / f, Slow.reassemble, port) for f in pieces]
        if rnd.random() < 0.3:
            rnd.shuffle(frames)
        items.append(frames)
        if rnd.random() < 0.2:  # something else the slow path has to do
            items.append([(Ether(src=MAC[host], dst=l2) / IP(src=src, dst="10.0.2.2", ttl=1)
                           / ICMP(), Slow.ttl_exceeded, port)])
        if rnd.random() < 0.3:  # 10.69.1.1 answers ARP (it may have a new MAC)
            items.append([(arp_reply(rnd.choice(["02:00:00:00:69:01", "02:00:00:00:69:02"]),
                                     gratuitous=rnd.random() < 0.3), Slow.arp, 1)])
    # datagrams interleave a little: each stream starts while the previous one runs
    flat: list = []
    for frames in items:
        at = rnd.randint(max(0, len(flat) - 3), len(flat))
        flat[at:at] = frames
    cuts = sorted(rnd.sample(range(1, len(flat) + 1), k=min(len(flat), draw(
        st.integers(0, 4)))))
    bursts, start = [], 0
    for cut in cuts + [len(flat)]:
        if cut > start:
            bursts.append(flat[start:cut])
            start = cut
    extra = draw(st.sampled_from(["", "timeout_s = 0.004\n", "timeout_s = 0.02\n",
                                  "high_thresh = 12000\nlow_thresh = 6000\n",
                                  "high_thresh = 40000\nlow_thresh = 30000\n"]))
    table_change = draw(st.booleans())
    max_dist = draw(st.sampled_from([64, 3, 0]))
    tight = draw(st.sampled_from([False, False, True]))
    return bursts, extra, table_change, max_dist, tight


def arp_reply(mac: str, gratuitous: bool = False) -> Ether:
    """10.69.1.1 (on p1's connected 10.69.0.0/16, no static neighbour) says its MAC:
    a reply to the router, or a gratuitous request to everyone."""
    if gratuitous:
        return Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=mac, psrc="10.69.1.1", hwdst="00:00:00:00:00:00", pdst="10.69.1.1")
    return Ether(src=mac, dst=MAC["p1"]) / ARP(op=2, hwsrc=mac, psrc="10.69.1.1",
                                               hwdst=MAC["p1"], pdst="10.0.2.1")


class FrozenWallClock:
    """`time` for the slow-path module with a wall clock stuck at 0."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def time_ns() -> int:
        return 0


class Tight:
    """A TX ring that says it has room for 3 frames (a live port, nearly full)."""

    def __init__(self, ring) -> None:
        self.ring = ring

    def free_space(self) -> int:
        return 3

    def enqueue(self, idx) -> int:
        return self.ring.enqueue(idx)


def run_rig(cfg, bursts, whole_bursts: bool, table_change: bool, max_dist: int,
            tight: bool, monkeypatch):
    rig = RecordingRig(cfg, ring_size=1024)
    try:
        rig.sp.whole_bursts = whole_bursts
        rig.sp.kernel.reasm.max_dist = max_dist
        if tight:  # a live port's rings with room for 3 frames each: refusals
            rig.sp.out.lossless = False
            rig.sp.out.tx = [Tight(ring) for ring in rig.sp.out.tx]
            # a live port's clock is also the wall clock's: held at 0 here, so that
            # both runs see the same times (the frames' own)
            monkeypatch.setattr(slowpath, "time", FrozenWallClock())
        if table_change:
            prefetch = rig.sp.kernel.routes.prefetch
            done = []

            def prefetch_then_change(burst):  # the control process, just after
                prefetch(burst)
                if not done:
                    rig.routing.set_port("p2", False)
                    done.append(1)

            rig.sp.kernel.routes.prefetch = prefetch_then_change
        for burst in bursts:
            rig.give(burst)
        state = reasm_state(rig.sp.kernel.reasm)
        neighbours = neigh_state(rig.sp.kernel.neigh)
        rig.sp.finish()
        rig.collect()
        return rig.sent, rig.counters(), state, neighbours
    finally:
        rig.close()


def neigh_state(resolver) -> tuple:
    """The ARP entries as the resolver holds them (state, MAC, port, timer, the last
    arrival number that went through each)."""
    return (sorted((ip, int(n.state), n.mac, n.port, n.due, n.seq, len(n.queue))
                   for ip, n in resolver.neigh.items()),)


def reasm_state(r: R.Reassembler) -> tuple:
    """What the reassembler holds, as it can be seen: its queues (in timer order) with
    their fragments and timers, and for ip_frag_too_far each queue's distance from its
    source's counter (only differences count: the counter's own value depends on
    which fragment made its entry, and no decision reads it alone)."""
    queues = [(key, q.start_ns, [(f[0], bytes(f[1])) for f in q.frags], q.peer[0] - q.rid,
               q.peer[1]) for key, q in r._queues.items()]
    return (queues, r.mem, r.held, r.counters(), dict(r.drops), r.consistent())


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(streams())
def test_whole_datagrams_change_nothing_but_the_cost(tmp_path_factory, example):
    bursts, extra, table_change, max_dist, tight = example
    cfg = config(tmp_path_factory.mktemp("whole"), extra)
    with pytest.MonkeyPatch.context() as monkeypatch:
        with_whole = run_rig(cfg, bursts, True, table_change, max_dist, tight, monkeypatch)
        alone = run_rig(cfg, bursts, False, table_change, max_dist, tight, monkeypatch)
    assert with_whole[0] == alone[0]  # frames, times, numbers, per port, in ring order
    assert with_whole[1] == alone[1]  # every counter
    assert with_whole[2] == alone[2]  # the reassembler
    assert with_whole[2][-1]  # and it is consistent
    assert with_whole[3] == alone[3]  # the ARP entries
    assert "SlowDrop.internal_error" not in with_whole[1]


def test_whole_datagrams_are_taken_in_the_common_case(tmp_path):
    """The differential test must not pass by never taking the whole path: a burst of
    back-to-back datagrams is taken whole, with one `Reassembler.add` for none of it."""
    items = [(Ether(src=MAC["h1"], dst=MAC["p0"]) / f, Slow.reassemble, 0)
             for k in range(20) for f in frags(k, 3000, 1000)]
    rig = Rig(config(tmp_path))
    try:
        adds = []
        add = rig.sp.kernel.reasm.add
        rig.sp.kernel.reasm.add = lambda *a, **k: adds.append(1) or add(*a, **k)
        sent = rig.give(items)
    finally:
        rig.close()
    assert len(sent) == 80 and adds == []


# -- the worker: what the reassembler holds from earlier bursts -----------------------

def both(tmp_path, bursts, extra: str = "", max_dist: int = 64, table_change: bool = False,
         tight: bool = False):
    """Run `bursts` with and without whole datagrams; both results, checked equal."""
    runs = []
    for whole_bursts in (True, False):
        folder = tmp_path / str(whole_bursts)
        folder.mkdir()
        rig = RecordingRig(config(folder, extra), ring_size=1024)
        monkeypatch = pytest.MonkeyPatch()
        try:
            if tight:  # as in run_rig
                rig.sp.out.lossless = False
                rig.sp.out.tx = [Tight(ring) for ring in rig.sp.out.tx]
                monkeypatch.setattr(slowpath, "time", FrozenWallClock())
            rig.sp.whole_bursts = whole_bursts
            rig.sp.kernel.reasm.max_dist = max_dist
            if table_change:
                prefetch = rig.sp.kernel.routes.prefetch

                def prefetch_then_change(burst, prefetch=prefetch, rig=rig):
                    prefetch(burst)  # then the control process takes p2 down
                    rig.routing.set_port("p2", False)

                rig.sp.kernel.routes.prefetch = prefetch_then_change
            for burst in bursts:
                rig.give(burst)
            drops = dict(rig.sp.kernel.reasm.drops)
            neighbours = neigh_state(rig.sp.kernel.neigh)
            rig.sp.finish()
            rig.collect()
            runs.append((rig.sent, rig.counters(), drops, neighbours))
        finally:
            monkeypatch.undo()
            rig.close()
    assert runs[0] == runs[1]
    return runs[0]


def from_h1(packets: list[IP]) -> list:
    return [(Ether(src=MAC["h1"], dst=MAC["p0"]) / f, Slow.reassemble, 0) for f in packets]


def from_h2(packets: list[IP]) -> list:
    return [(Ether(src=MAC["h2"], dst=MAC["p1"]) / f, Slow.reassemble, 1) for f in packets]


def test_a_datagram_whose_key_has_a_queue_joins_it(tmp_path):
    """A datagram sent again with the same ID while its first copy's queue is held:
    its first fragment is a duplicate there, the rest complete that queue."""
    a = frags(1, 3000, 1480)
    others = [f for k in range(2, 10) for f in frags(k, 1000, 600)]  # taken whole
    for burst in ([a], [others[:6], a, others[6:]]):  # few datagrams, and many
        folder = tmp_path / str(len(burst))
        folder.mkdir()
        sent, counts, drops, _ = both(folder, [from_h1(a[:1]),
                                               from_h1([f for d in burst for f in d])])
        assert drops["duplicate"] == 1
        assert counts["Snmp.ReasmOKs"] == 1 + (len(others) // 2 if len(burst) > 1 else 0)
        assert len(sent[1]) == 3 + (len(others) if len(burst) > 1 else 0)


def test_fragments_taken_whole_count_for_their_sources_queues(tmp_path):
    """ip_frag_too_far: a queue held while whole datagrams from its source go by
    (here 8 fragments, over ipfrag_max_dist 3) is emptied when its next fragment
    comes, as if they had gone through the reassembler."""
    a = frags(1, 3000, 1480)
    others = [f for k in range(2, 6) for f in frags(k, 1000, 600)]
    sent, counts, drops, _ = both(tmp_path, [from_h1(a[:1]), from_h1(others + a[1:])],
                               max_dist=3)
    assert drops["too_far"] == 1  # a's first fragment
    assert counts["Snmp.ReasmOKs"] == 4 and len(sent[1]) == 8


def test_a_timer_due_among_whole_datagrams_fires_in_its_place(tmp_path):
    """A queue for the router times out (ICMP time exceeded to h1) while whole
    datagrams from h2 to h1 go by: the ICMP leaves between them, where the clock
    passed its time, on the same ring."""
    local = frags(1, 1000, 600, dst="10.0.1.1")
    to_h1 = [f for k in range(2, 8) for f in frags(k, 1000, 600, src="10.0.2.2",
                                                  dst="10.0.1.2")]
    ttl_1 = (Ether(src=MAC["h2"], dst=MAC["p1"]) / IP(src="10.0.2.2", dst="10.0.2.9", ttl=1)
             / ICMP(), Slow.ttl_exceeded, 1)
    sent, counts, _, _ = both(tmp_path, [from_h1(local[:1]), from_h2(to_h1) + [ttl_1]],
                           extra="timeout_s = 0.005\n")
    icmp = [k for k, (frame, _, _) in enumerate(sent[0]) if IP(frame[14:]).proto == 1]
    assert counts["Snmp.ReasmTimeout"] == 1 and len(icmp) == 1
    assert 0 < icmp[0] < len(sent[0]) - 1  # among the whole datagrams' fragments


def test_tables_changed_mid_burst_route_the_rebuilt_datagram(tmp_path):
    """When the tables move after the burst was routed, each whole datagram is rebuilt
    as the reassembler makes it (ECN, DF, length, checksum) and routed then: the
    same bytes as one fragment at a time."""
    ce = frags(1, 3000, 1480, tos=2)
    ce[1].tos = 3  # ECT(0) with CE: CE
    df = frags(2, 3000, 1480)
    df[0].flags = "MF+DF"  # the largest with DF: DF on the datagram
    to_p2 = frags(3, 3000, 1480, dst="10.0.3.2")  # p2 goes down: dropped
    for f in ce + df:
        del f.chksum
    sent, counts, _, _ = both(tmp_path, [from_h1(ce + df + to_p2)], table_change=True)
    assert len(sent[1]) == 6 and not sent[2]
    assert [IP(f[14:]).tos for f, _, _ in sent[1][:3]] == [3, 3, 3]
    assert counts["Drop.port_down"] == 1


def test_a_neighbour_learned_by_arp_and_moved_mid_burst(tmp_path):
    """Whole datagrams to a next hop ARP resolved go out through its entry; when a
    gratuitous ARP gives it a new MAC mid-burst, the datagrams after it take the new
    MAC and the entry's state changes as `output` makes it."""
    first = frags(1, 3000, 1480, dst="10.69.1.1")
    after = [frags(k, 3000, 1480, dst="10.69.1.1") for k in range(2, 5)]
    old_mac, new_mac = "02:00:00:00:69:01", "02:00:00:00:69:02"
    bursts = [from_h1(first) + [(arp_reply(old_mac), Slow.arp, 1)],
              from_h1(after[0]) + [(arp_reply(new_mac, gratuitous=True), Slow.arp, 1)]
              + from_h1(after[1] + after[2])]
    sent, counts, _, _ = both(tmp_path, bursts)
    to_h = [Ether(f).dst for f, _, _ in sent[1] if Ether(f).haslayer(IP)]
    assert to_h == [old_mac] * 6 + [new_mac] * 6
    assert counts["Snmp.ReasmOKs"] == 4 and counts["Misc.forwarded"] == 4


def test_a_gratuitous_arp_that_changes_nothing_mid_burst(tmp_path):
    """A gratuitous ARP with the MAC the entry has leaves it REACHABLE (as Linux
    does): the datagrams around it go out through it, the entry marked with the
    last one's arrival number as `output` marks it."""
    first = frags(1, 3000, 1480, dst="10.69.1.1")
    after = [frags(k, 3000, 1480, dst="10.69.1.1") for k in range(2, 5)]
    mac = "02:00:00:00:69:01"
    bursts = [from_h1(first) + [(arp_reply(mac), Slow.arp, 1)],
              from_h1(after[0]) + [(arp_reply(mac, gratuitous=True), Slow.arp, 1)]
              + from_h1(after[1] + after[2])]
    sent, counts, _, neighbours = both(tmp_path, bursts)
    assert sum(Ether(f).haslayer(IP) for f, _, _ in sent[1]) == 12
    assert counts["Misc.forwarded"] == 4
    (entry,) = neighbours[0]
    assert entry[1] == 2 and entry[5] == sent[1][-1][2]  # REACHABLE; the last seq


def test_whole_datagrams_through_a_learned_neighbour_are_taken_whole(tmp_path):
    first = frags(1, 3000, 1480, dst="10.69.1.1")
    after = [f for k in range(2, 12) for f in frags(k, 3000, 1480, dst="10.69.1.1")]
    rig = Rig(config(tmp_path))
    try:
        rig.give(from_h1(first) + [(arp_reply("02:00:00:00:69:01"), Slow.arp, 1)])
        adds = []
        add = rig.sp.kernel.reasm.add
        rig.sp.kernel.reasm.add = lambda *a, **k: adds.append(1) or add(*a, **k)
        sent = rig.give(from_h1(after))
    finally:
        rig.close()
    assert len(sent) == 30 and adds == []
    assert {Ether(f).dst for f in sent} == {"02:00:00:00:69:01"}


def test_a_live_ring_without_room_refuses_whole_datagrams_one_by_one(tmp_path):
    """Live ports: with room for 3 frames, each 4-fragment datagram is refused whole
    (ring_full, counted once) and each 2-fragment one sent, static or ARP's next hop
    alike (ip_forward_finish counts an ARP next hop's datagram as forwarded before
    neigh_output refuses it, as the kernel's ForwDatagrams does)."""
    first = frags(1, 1000, 600, dst="10.69.1.1")
    small = [frags(k, 1000, 600, dst=dst) for k, dst in ((2, "10.69.1.1"), (3, "10.0.2.2"))]
    large = [frags(k, 2000, 504, dst=dst) for k, dst in ((4, "10.69.1.1"), (5, "10.0.2.2"))]
    bursts = [from_h1(first) + [(arp_reply("02:00:00:00:69:01"), Slow.arp, 1)],
              from_h1([f for d in small + large for f in d])]
    sent, counts, _, _ = both(tmp_path, bursts, tight=True)
    assert counts["Drop.ring_full"] == 2
    assert counts["Snmp.ForwDatagrams"] == 3 + 1  # first, small x 2; large to 10.69.1.1
    assert counts["Misc.forwarded"] == 3
