"""Reassembly (`engine.slowpath.reasm`): named cases in the style of VPP's
test/test_reassembly.py, with Linux's answers (`ip_frag_queue`, KERNEL-NOTES), and
hypothesis properties on random fragment streams.

Fragments are built with scapy (its `fragment()` or by hand); reassembled datagrams
are compared byte for byte with the scapy-built original.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP, IPOption_LSRR, IPOption_RR
from scapy.layers.inet import fragment as scapy_fragment
from scapy.packet import Raw

from engine.pipeline.checksum import ip_checksum
from engine.slowpath.frag import fragment
from engine.slowpath.reasm import (
    COMPLETE,
    DROPPED,
    IPQ_SIZE,
    QUEUED,
    SKB_OVERHEAD,
    Reassembler,
)

SRC, DST = "10.0.1.2", "10.0.2.2"
SEC = 10**9


def data(n: int, seed: int = 0) -> bytes:
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


def datagram(n: int, ident: int = 1000, src: str = SRC, dst: str = DST, **ip) -> bytes:
    """A UDP datagram with an n-byte IP payload."""
    return bytes(
        IP(src=src, dst=dst, id=ident, ttl=63, **ip)
        / UDP(sport=1234, dport=5678)
        / Raw(data(n - 8, ident))
    )


def frags_of(pkt: bytes, size: int = 1480) -> list[bytes]:
    return [bytes(f) for f in scapy_fragment(IP(pkt), fragsize=size)]


def frag(
    offset: int,
    payload: bytes,
    mf: bool = True,
    ident: int = 1,
    src: str = SRC,
    dst: str = DST,
    proto: int = 17,
    df: bool = False,
    tos: int = 0,
    options=None,
) -> bytes:
    """A hand-made fragment: `offset` in bytes (a multiple of 8)."""
    flags = (1 if mf else 0) | (2 if df else 0)
    return bytes(
        IP(
            src=src,
            dst=dst,
            id=ident,
            proto=proto,
            flags=flags,
            frag=offset // 8,
            tos=tos,
            ttl=64,
            options=options or [],
        )
        / Raw(payload)
    )


def expected(payload: bytes, ident: int = 1, proto: int = 17, **ip) -> bytes:
    """The datagram reassembly should produce from hand-made fragments."""
    return bytes(IP(src=SRC, dst=DST, id=ident, proto=proto, ttl=64, **ip) / Raw(payload))


def new(**kw) -> Reassembler:
    args = dict(high_thresh=4 << 20, low_thresh=3 << 20, timeout_ns=30 * SEC)
    args.update(kw)
    return Reassembler(**args)


def feed(r: Reassembler, frags, now: int = 0):
    return [r.add(f, now, meta=i) for i, f in enumerate(frags)]


def with_id(f: bytes, ident: int) -> bytes:
    """`f` with another IP ID (and its checksum fixed): a cheap way to make floods."""
    h = bytearray(f[:20])
    h[4:6] = ident.to_bytes(2, "big")
    h[10:12] = b"\0\0"
    h[10:12] = ip_checksum(h).to_bytes(2, "big")
    return bytes(h) + f[20:]


def truesize(f: bytes) -> int:
    return len(f) + SKB_OVERHEAD


# -- in order, reversed, random (VPP: test_reassembly, test_reversed, test_random) --


def test_reassembly_in_order():
    pkt = datagram(9000)
    fr = frags_of(pkt)
    r = new()
    res = feed(r, fr)
    assert [x.status for x in res] == [QUEUED] * (len(fr) - 1) + [COMPLETE]
    assert res[-1].datagram == pkt
    assert res[-1].metas == list(range(len(fr)))
    assert res[-1].nfrags == len(fr) and res[-1].largest == 1500 and not res[-1].df
    assert r.counters() == {
        "ReasmReqds": len(fr),
        "ReasmOKs": 1,
        "ReasmFails": 0,
        "ReasmTimeout": 0,
        "ReasmOverlaps": 0,
    }
    assert r.mem == 0 and r.held == 0 and len(r) == 0 and r.consistent()


def test_reversed():
    pkt = datagram(9000)
    fr = frags_of(pkt)[::-1]
    res = feed(new(), fr)
    assert res[-1].status == COMPLETE and res[-1].datagram == pkt
    # metas in offset order: the last given was offset 0
    assert res[-1].metas == list(range(len(fr)))[::-1]


def test_random_interleaved():
    rng = random.Random(5)
    pkts = [datagram(rng.randint(1600, 20000), ident=i) for i in range(40)]
    stream = [(i, f) for i, p in enumerate(pkts) for f in frags_of(p, rng.choice([64, 512, 1480]))]
    rng.shuffle(stream)
    # Interleaving this much from one source would trip ipfrag_max_dist (see
    # test_too_far): off here, with room for everything.
    r = new(high_thresh=64 << 20, low_thresh=48 << 20, max_dist=0)
    done = {}
    for i, f in stream:
        res = r.add(f, 0)
        if res.status == COMPLETE:
            done[i] = res.datagram
        else:
            assert res.status == QUEUED
    assert done == dict(enumerate(pkts))
    assert r.mem == 0 and r.consistent()


def test_long_fragment_chain():
    """The largest datagram in 8-byte fragments: 8,190 fragments, any order."""
    pkt = datagram(65515)
    fr = frags_of(pkt, 8)
    assert len(fr) == 8190
    random.Random(1).shuffle(fr)
    res = feed(new(high_thresh=64 << 20, low_thresh=48 << 20), fr)
    assert res[-1].status == COMPLETE and res[-1].datagram == pkt
    assert all(x.status == QUEUED for x in res[:-1])


def test_largest_datagram_is_accepted():
    pkt = frag(0, data(65512), mf=True), frag(65512, data(3), mf=False)
    res = feed(new(), pkt)
    assert res[-1].status == COMPLETE
    assert len(res[-1].datagram) == 65535
    assert res[-1].datagram == expected(data(65512) + data(3))


# -- duplicates (VPP: test_duplicates) ----------------------------------------------


def test_duplicates_are_harmless():
    pkt = datagram(5000)
    fr = frags_of(pkt)
    stream = [f for f in fr[:-1] for _ in range(3)] + [fr[-1]]
    r = new()
    res = feed(r, stream)
    assert res[-1].status == COMPLETE and res[-1].datagram == pkt
    dups = [x for x in res if x.status == DROPPED]
    assert len(dups) == 2 * (len(fr) - 1)
    assert all(x.reason == "duplicate" and x.nfrags == 1 for x in dups)
    assert r.drops["duplicate"] == len(dups)
    c = r.counters()
    assert c["ReasmFails"] == 0 and c["ReasmOKs"] == 1 and c["ReasmReqds"] == len(stream)
    assert r.consistent()


def test_duplicate_with_other_bytes_inside_run_is_a_duplicate():
    """`inet_frag_queue_insert` calls a fragment lying inside a run of adjacent data a
    duplicate, even when it spans two fragments and its bytes differ: the held bytes
    win."""
    r = new()
    a, b, c = data(16, 1), data(16, 2), data(8, 3)
    assert r.add(frag(0, a), 0).status == QUEUED
    assert r.add(frag(16, b), 0).status == QUEUED  # appended to the same run
    res = r.add(frag(8, b"\xee" * 16), 0)  # 8..24: across the two
    assert (res.status, res.reason) == (DROPPED, "duplicate")
    res = r.add(frag(32, c, mf=False), 0)
    assert res.datagram == expected(a + b + c)


def test_same_span_across_two_runs_is_an_overlap():
    """The same spanning fragment when the two pieces arrived out of order (separate
    runs): an overlap, the whole queue goes."""
    r = new()
    r.add(frag(16, data(16)), 0)
    r.add(frag(0, data(16)), 0)  # before the tail: a run of its own
    res = r.add(frag(8, data(16)), 0)
    assert (res.status, res.reason, res.nfrags) == (DROPPED, "overlap", 3)
    assert r.counters()["ReasmOverlaps"] == 1 and r.counters()["ReasmFails"] == 1
    assert len(r) == 0 and r.mem == 0


def test_duplicate_after_completion_starts_a_new_queue():
    """A completed queue is gone from the table: a late copy opens a new one, which
    then times out (with ICMP, when it is the first fragment)."""
    pkt = datagram(3000)
    fr = frags_of(pkt)
    r = new()
    feed(r, fr)
    assert r.add(fr[0], SEC).status == QUEUED
    (gone,) = r.expire(31 * SEC)
    assert gone.reason == "timeout" and gone.first == fr[0]


# -- overlaps (VPP: test_overlap1/2, test_5737, test_44924) -------------------------


def test_overlap_with_tail_drops_whole_queue():
    r = new()
    r.add(frag(0, data(16)), 0, meta="a")
    r.add(frag(16, data(16)), 0, meta="b")
    res = r.add(frag(24, data(16)), 0, meta="c")  # 24..40 overlaps 16..32
    assert (res.status, res.reason) == (DROPPED, "overlap")
    assert res.nfrags == 3 and res.metas == ["a", "b", "c"]
    assert r.drops["overlap"] == 3 and len(r) == 0 and r.consistent()
    # What comes next for the same datagram starts afresh and cannot complete alone.
    assert r.add(frag(32, data(8), mf=False), 0).status == QUEUED
    (gone,) = r.expire(30 * SEC)
    assert gone.first is None and gone.nfrags == 1


def test_overlap_superset_drops_whole_queue():
    r = new()
    r.add(frag(8, data(8)), 0)
    r.add(frag(32, data(8), mf=False), 0)
    res = r.add(frag(0, data(24)), 0)  # covers 8..16 entirely: still an overlap
    assert (res.status, res.reason, res.nfrags) == (DROPPED, "overlap", 3)


def test_overlap_filling_hole_into_next():
    r = new()
    r.add(frag(0, data(8)), 0)
    r.add(frag(16, data(8), mf=False), 0)
    res = r.add(frag(8, data(16)), 0)  # would need 8..24: overlaps 16..24
    assert res.reason == "overlap"


def test_overlap_differing_bytes_never_delivered():
    """RFC 5722 style: no mix of old and new bytes ever comes out."""
    pkt = datagram(3000)
    fr = frags_of(pkt)
    evil = frag(1472, data(16, 99), ident=1000)  # straddles the first/second fragment boundary
    r = new()
    res = feed(r, [fr[0], evil, *fr[1:]])
    assert res[1].reason == "overlap"
    assert all(x.status != COMPLETE for x in res)


def test_5737_offset_past_65535_does_not_crash():
    """VPP 5737: a last fragment whose end lies past 65,535 (offset 65,520). Linux
    holds it; a valid datagram alongside is unaffected."""
    bad = frag(65520, data(116), mf=False, ident=0x2CF8, proto=1)
    pkt = datagram(1000, ident=1000)
    r = new()
    assert r.add(bad, 0).status == QUEUED
    res = feed(r, frags_of(pkt, 400))
    assert res[-1].datagram == pkt
    (gone,) = r.expire(30 * SEC)
    assert gone.key[2] == 0x2CF8


def test_too_big_dropped_on_completion():
    """`ip_frag_reasm`: ihl + len > 65,535 fails the datagram once it is complete."""
    r = new()
    assert r.add(frag(65512, data(24), mf=False), 0).status == QUEUED
    res = r.add(frag(0, data(65512)), 0)
    assert (res.status, res.reason, res.nfrags) == (DROPPED, "too_big", 2)
    assert r.counters()["ReasmFails"] == 1 and r.mem == 0 and r.consistent()


def test_44924_tiny_overlapping_fragments_dropped():
    """VPP 44924's three tiny ICMP fragments (0..24, 24..56, 48..75): the last overlaps
    the second; VPP reassembles them, Linux drops the datagram."""
    common = dict(src=SRC, dst=DST, id=24339, ttl=64)
    icmp = ICMP(type="echo-request", code=0, id=0x1FE6, seq=0x2407)
    pkts = [
        IP(flags="MF", frag=0, **common) / icmp / Raw(b"Test-group: IPv4"),
        IP(flags="MF", frag=3, **common) / icmp / Raw(b".IPv4.Fragmentation.vali"),
        IP(frag=6, **common) / icmp / Raw(b"d; Test-case: 44924"),
    ]
    res = feed(new(), [bytes(p) for p in pkts])
    assert [x.status for x in res] == [QUEUED, QUEUED, DROPPED]
    assert res[2].reason == "overlap" and res[2].nfrags == 3


# -- the last fragment ----------------------------------------------------------------


def test_conflicting_last_fragments():
    r = new()
    r.add(frag(8, data(8)), 0)
    r.add(frag(16, data(8), mf=False), 0)
    res = r.add(frag(24, data(8), mf=False), 0)
    assert (res.status, res.reason, res.nfrags) == (DROPPED, "conflicting_end", 3)
    assert r.counters()["ReasmFails"] == 1


def test_data_beyond_end():
    r = new()
    r.add(frag(16, data(8), mf=False), 0)  # ends at 24
    res = r.add(frag(24, data(8)), 0)  # MF data past the end
    assert res.reason == "conflicting_end"
    r.add(frag(32, data(8)), 0)  # MF: extends the known length to 40
    res = r.add(frag(8, data(8), mf=False), 0)  # a last fragment ending before that
    assert res.reason == "conflicting_end"


def test_same_last_fragment_twice_is_a_duplicate():
    r = new()
    r.add(frag(16, data(8), mf=False), 0)
    res = r.add(frag(16, data(8), mf=False), 0)
    assert res.reason == "duplicate"
    assert r.add(frag(0, data(16)), 0).datagram == expected(data(16) + data(8))


def test_mf_fragment_trimmed_to_8_bytes():
    """`end &= ~7` for MF fragments: the tail of a 13-byte MF fragment is ignored."""
    r = new()
    r.add(frag(0, data(13)), 0)
    res = r.add(frag(8, data(4, 7), mf=False), 0)
    assert res.datagram == expected(data(8) + data(4, 7))
    assert res.largest == 28  # the trimmed size counts (fragsize after the trim)


def test_empty_fragment_drops_queue():
    """`end == offset` (an MF fragment under 8 bytes, or no payload) kills the queue."""
    r = new()
    r.add(frag(0, data(8)), 0)
    res = r.add(frag(8, data(5)), 0)
    assert (res.status, res.reason, res.nfrags) == (DROPPED, "bad_fragment", 2)
    res = r.add(frag(16, b"", mf=False), 0)
    assert res.reason == "bad_fragment" and res.nfrags == 1


# -- header of the result -------------------------------------------------------------


def test_first_fragments_header_with_options_is_kept():
    rr = IPOption_RR(routers=["10.0.1.1", "0.0.0.0"])
    lsrr = IPOption_LSRR(routers=["10.9.0.1"])
    first = frag(0, data(24), options=[rr, lsrr, Raw(b"\x01\x01")])
    later = frag(24, data(16, 5), mf=False, options=[lsrr, Raw(b"\x01")])
    res = feed(new(), [later, first])[-1]
    exp = expected(data(24) + data(16, 5), options=[rr, lsrr, Raw(b"\x01\x01")])
    assert res.datagram == exp
    assert IP(res.datagram).ihl == 10


def test_ttl_and_tos_from_first_fragment():
    r = new()
    a = IP(frag(0, data(8)))
    a.ttl, a.tos = 9, 0x10
    del a.chksum
    r.add(frag(8, data(8), mf=False, tos=0x20), 0)
    res = r.add(bytes(a), 0)
    assert res.datagram == bytes(
        IP(src=SRC, dst=DST, id=1, proto=17, ttl=9, tos=0x10) / Raw(data(8) + data(8))
    )
    assert ip_checksum(res.datagram[:20]) == 0


def test_ecn_ce_is_merged():
    """RFC 3168 §5.3 (`ip_frag_ecn_table`): CE on any fragment of an ECT datagram."""
    r = new()
    r.add(frag(0, data(8), tos=0x02), 0)  # ECT(0)
    res = r.add(frag(8, data(8), mf=False, tos=0x03), 0)  # CE
    assert res.datagram == expected(data(8) + data(8), tos=0x03)


def test_ecn_not_ect_mixed_with_ect_dropped():
    r = new()
    r.add(frag(0, data(8), tos=0x00), 0)
    res = r.add(frag(8, data(8), mf=False, tos=0x01), 0)
    assert (res.status, res.reason, res.nfrags) == (DROPPED, "ecn", 2)


def test_df_kept_when_largest_fragment_had_df():
    """`ip_frag_reasm`: DF on the result iff the largest fragment had DF (then the
    kernel refragments with DF kept: Result.df)."""
    r = new()
    r.add(frag(0, data(16), df=True), 0)
    res = r.add(frag(16, data(8), mf=False), 0)
    assert res.df and res.largest == 36
    assert res.datagram == expected(data(16) + data(8), flags="DF")
    r.add(frag(0, data(8), df=True, ident=2), 0)
    res = r.add(frag(8, data(16), mf=False, ident=2), 0)
    assert not res.df and res.datagram == expected(data(8) + data(16), ident=2)


def test_keys_are_separate():
    """(src, dst, id, protocol): the same ID in another protocol or from another
    source is another datagram."""
    r = new()
    r.add(frag(0, data(8)), 0)
    r.add(frag(8, data(8, 1), mf=False, proto=6), 0)
    r.add(frag(8, data(8, 2), mf=False, src="10.0.1.3"), 0)
    r.add(frag(8, data(8, 3), mf=False, dst="10.0.2.3"), 0)
    r.add(frag(8, data(8, 4), mf=False, ident=2), 0)
    assert len(r) == 5
    res = r.add(frag(8, data(8, 9), mf=False), 0)
    assert res.datagram == expected(data(8) + data(8, 9))


def test_mutable_input_is_copied():
    buf = bytearray(frag(0, data(8)))
    r = new()
    r.add(buf, 0)
    buf[20:28] = b"\xff" * 8  # the caller reuses its buffer
    res = r.add(memoryview(bytearray(frag(8, data(8), mf=False))), 0)
    assert res.datagram == expected(data(8) + data(8))


def test_malformed_input_counted_not_raised():
    r = new()
    for junk in [b"", b"\x45", bytes(30), datagram(100), b"\x60" + bytes(39)]:
        res = r.add(junk, 0, meta="j")
        assert (res.status, res.reason, res.metas) == (DROPPED, "malformed", ["j"])
    assert r.drops["malformed"] == 5 and r.consistent()


# -- timeouts (VPP: test_timeout_inline, test_timeout_cleanup) ----------------------


def test_timeout_with_first_fragment():
    pkt = datagram(5000)
    fr = frags_of(pkt)
    r = new()
    r.add(fr[0], 1 * SEC, meta=0)
    r.add(fr[2], 20 * SEC, meta=2)  # later fragments do not extend the timer
    assert r.expire(31 * SEC - 1) == []
    (gone,) = r.expire(31 * SEC)
    assert gone.reason == "timeout" and gone.first_in and gone.first == fr[0]
    assert gone.nfrags == 2 and gone.metas == [0, 2]
    c = r.counters()
    assert c["ReasmTimeout"] == 1 and c["ReasmFails"] == 1
    assert r.mem == 0 and r.consistent()


def test_timeout_without_first_fragment():
    fr = frags_of(datagram(5000))
    r = new()
    r.add(fr[1], 0)
    (gone,) = r.expire(30 * SEC)
    assert not gone.first_in and gone.first is None


def test_timeout_first_is_trimmed_as_held():
    """The quoted first fragment is what was queued (MF payload cut to 8 bytes)."""
    r = new()
    f0 = frag(0, data(13))
    r.add(f0, 0)
    (gone,) = r.expire(30 * SEC)
    assert gone.first == f0[:28]


def test_due_queue_expires_when_next_fragment_arrives():
    """A fragment arriving after its queue's timer is due finds it expired (reported
    in `side`, ICMP due) and starts a new one."""
    fr = frags_of(datagram(5000))
    r = new()
    r.add(fr[0], 0, meta="old")
    res = r.add(fr[1], 30 * SEC, meta="new")
    assert res.status == QUEUED
    (gone,) = res.side
    assert gone.reason == "timeout" and gone.metas == ["old"] and gone.first == fr[0]
    assert r.held == 1 and r.counters()["ReasmTimeout"] == 1


def test_expire_order_and_partial():
    r = new(timeout_ns=10)
    for i in range(5):
        r.add(frag(0, data(8), ident=i), i)
    assert [g.key[2] for g in r.expire(12)] == [0, 1, 2]
    assert len(r) == 2


def test_flush():
    r = new()
    for i in range(4):
        r.add(frag(8, data(8), ident=i), 0, meta=i)
    gone = r.flush()
    assert sorted(m for g in gone for m in g.metas) == [0, 1, 2, 3]
    assert all(g.reason == "flush" for g in gone)
    assert r.drops["flush"] == 4 and r.counters()["ReasmTimeout"] == 0
    assert r.counters()["ReasmFails"] == 4 and len(r) == 0 and r.mem == 0


# -- ipfrag_max_dist ------------------------------------------------------------------


@pytest.mark.parametrize("between, reinit", [(63, False), (64, True)])
def test_too_far(between, reinit):
    """`ip_frag_too_far`: with 64 fragments from the same source in between, the queue
    is emptied (its old fragments dropped, ReasmFails + 1) and continues with the new
    one, timer restarted."""
    r = new()
    r.add(frag(0, data(8)), 0, meta="first")
    for i in range(between):
        r.add(frag(0, data(8), ident=100 + i), 0)
    res = r.add(frag(8, data(8), mf=False), 5 * SEC, meta="second")
    if reinit:
        assert res.status == QUEUED
        (gone,) = res.side
        assert (gone.reason, gone.metas) == ("too_far", ["first"])
        assert r.counters()["ReasmFails"] == 1
        # the timer restarted at 5 s: not due at 30 s
        assert all(g.key[2] != 1 for g in r.expire(30 * SEC))
        assert any(g.key[2] == 1 for g in r.expire(35 * SEC))
    else:
        assert res.status == COMPLETE
    assert r.consistent()


def test_too_far_disabled_and_other_sources():
    r = new(max_dist=0)
    r.add(frag(0, data(8)), 0)
    for i in range(200):
        r.add(frag(0, data(8), ident=100 + i), 0)
    assert r.add(frag(8, data(8), mf=False), 0).status == COMPLETE
    r = new()
    r.add(frag(0, data(8)), 0)
    for i in range(200):
        r.add(frag(0, data(8), ident=i, src="10.0.1.99"), 0)
    assert r.add(frag(8, data(8), mf=False), 0).status == COMPLETE


# -- memory ---------------------------------------------------------------------------


def test_memory_accounting():
    f = frag(0, data(1480))
    r = new()
    r.add(f, 0)
    assert r.mem == truesize(f) + IPQ_SIZE == 1500 + SKB_OVERHEAD + IPQ_SIZE
    r.add(frag(1480, data(1480)), 0)
    assert r.mem == 2 * truesize(f) + IPQ_SIZE
    r.add(frag(2960, data(8), mf=False), 0)
    assert r.mem == 0


def test_eviction_oldest_first_down_to_low():
    per = truesize(frag(0, data(1480))) + IPQ_SIZE  # one queue of one fragment
    r = new(high_thresh=5 * per, low_thresh=3 * per)
    for i in range(4):
        assert r.add(frag(0, data(1480), ident=i), i, meta=i).status == QUEUED
    # touch queue 0: it becomes the most recently used
    r.add(frag(2960, data(8), ident=0), 4, meta="0b")
    res = r.add(frag(0, data(1480), ident=9), 5, meta=9)
    assert res.status == QUEUED
    assert [g.key[2] for g in res.side] == [1, 2, 3]
    assert all(g.reason == "mem_limit" for g in res.side)
    assert r.mem == 2 * per + truesize(frag(2960, data(8))) <= r.low_thresh
    assert r.counters()["ReasmFails"] == 3 and r.drops["mem_limit"] == 3
    assert len(r) == 2 and r.consistent()


def test_high_water_mark_keeps_the_most_held():
    """`mem_high` is the most memory held between calls: it stays when the datagram
    completes and memory goes back to 0."""
    f = frag(0, data(1480))
    r = new()
    assert r.mem_high == 0
    r.add(f, 0)
    assert r.mem_high == r.mem == truesize(f) + IPQ_SIZE
    r.add(frag(1480, data(1480)), 0)
    assert r.mem_high == r.mem == 2 * truesize(f) + IPQ_SIZE
    assert r.add(frag(2960, data(8), mf=False), 0).status == COMPLETE
    assert r.mem == 0 and r.mem_high == 2 * truesize(f) + IPQ_SIZE == 4344
    assert r.consistent()


def test_high_water_mark_is_taken_after_eviction():
    """Memory reaches high_thresh exactly, then a fragment takes it over: eviction
    brings it down to low_thresh before `add` returns, and the mark stays at the
    threshold (the instant over it is no level anyone sees)."""
    per = truesize(frag(0, data(1480))) + IPQ_SIZE  # 2268: one queue of one fragment
    r = new(high_thresh=5 * per, low_thresh=3 * per)
    for i in range(5):
        assert r.add(frag(0, data(1480), ident=i), i).status == QUEUED
    assert r.mem == r.mem_high == r.high_thresh == 11340
    res = r.add(frag(0, data(1480), ident=5), 5)
    assert res.status == QUEUED and len(res.side) == 3
    assert r.mem == 3 * per and r.mem_high == 5 * per
    assert r.consistent()


def test_high_water_mark_ignores_what_is_not_held():
    """Fragments that leave in the call that brought them (an empty fragment, one
    larger than high_thresh, an overlap) never raise the mark."""
    r = new(high_thresh=1000, low_thresh=500)
    assert r.add(frag(0, data(1480)), 0).reason == "mem_limit"
    assert r.add(frag(0, b"", ident=2), 0).reason == "bad_fragment"
    assert r.mem_high == 0
    r.add(frag(0, data(16), ident=3), 0)
    held = truesize(frag(0, data(16))) + IPQ_SIZE  # 804
    assert r.mem_high == held
    assert r.add(frag(8, data(16), ident=3), 0).reason == "overlap"
    assert r.mem == 0 and r.mem_high == held == 804 and r.consistent()


def test_fragment_larger_than_high_thresh():
    r = new(high_thresh=1000, low_thresh=500)
    res = r.add(frag(0, data(1480)), 0, meta="x")
    assert (res.status, res.reason, res.metas, res.side) == (DROPPED, "mem_limit", ["x"], [])
    assert r.mem == 0 and r.consistent()


def test_disabled_when_high_thresh_zero():
    """high_thresh 0: nothing is kept (the kernel's `!high_thresh` check)."""
    r = new(high_thresh=0, low_thresh=0)
    res = feed(r, frags_of(datagram(3000)))
    assert all(x.reason == "mem_limit" for x in res)


def test_flood_with_random_ids_keeps_memory_bounded_and_legit_completes():
    """A flood of first fragments with random IDs never takes memory past high_thresh;
    a datagram whose fragments come every 50 flood fragments still completes."""
    rng = random.Random(7)
    high, low = 256 << 10, 192 << 10
    r = new(high_thresh=high, low_thresh=low)
    pkt = datagram(9000, src="10.0.1.50")
    legit = frags_of(pkt)
    flood = frag(0, data(1480), src="10.0.9.9")
    done = None
    n = 0
    for k in range(20000):
        res = r.add(with_id(flood, rng.randrange(1 << 16)), k, meta=n)
        n += 1
        assert r.mem <= high
        if k % 50 == 25 and legit:
            res = r.add(legit.pop(0), k, meta=n)
            n += 1
            assert r.mem <= high
            if res.status == COMPLETE:
                done = res.datagram
    assert done == pkt
    assert r.counters()["ReasmFails"] > 0 and r.consistent()
    assert r.reasm_reqds == n
    # the flood took memory up to the threshold: within one flood queue of it
    assert high - (truesize(flood) + IPQ_SIZE) < r.mem_high <= high


@settings(max_examples=40, deadline=None)
@given(
    high=st.integers(16 << 10, 1 << 20),
    gap_frac=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
    order=st.sampled_from(["in-order", "reversed", "shuffled"]),
)
def test_flood_property(high, gap_frac, seed, order):
    """Random-ID floods never push memory past high_thresh, and a datagram whose
    fragments come every `gap` flood fragments completes whenever the thresholds
    leave room for `gap` flood queues next to it (LRU keeps the recently touched)."""
    rng = random.Random(seed)
    low = high * 3 // 4
    flood = frag(0, data(1480), src="10.0.9.9")
    per_flood = truesize(flood) + IPQ_SIZE
    pkt = datagram(9000, src="10.0.1.50")
    legit = frags_of(pkt)
    if order == "reversed":
        legit.reverse()
    elif order == "shuffled":
        rng.shuffle(legit)
    legit_mem = IPQ_SIZE + sum(truesize(f) for f in legit)
    room = (low - legit_mem) // per_flood
    assume(room >= 1)
    gap = max(1, int(room * gap_frac))
    r = new(high_thresh=high, low_thresh=low)
    done = None
    for k in range(gap * (len(legit) + 2)):
        r.add(with_id(flood, rng.randrange(1 << 16)), k)
        assert r.mem <= r.mem_high <= high
        if k % gap == gap - 1 and legit:
            res = r.add(legit.pop(0), k)
            assert r.mem <= high
            if res.status == COMPLETE:
                done = res.datagram
    assert done == pkt and r.consistent()


# -- properties -----------------------------------------------------------------------


@st.composite
def streams(draw):
    """A random fragment stream: fragments of a few datagrams (IDs from a small set,
    so keys collide), some lost, some duplicated, hand-made overlapping or odd
    fragments and junk mixed in, in any order, at random times."""
    ndg = draw(st.integers(1, 4))
    items = []
    for _ in range(ndg):
        size = draw(st.integers(1, 6000))
        mtu = draw(st.sampled_from([28, 68, 300, 576, 1500]))
        ident = draw(st.integers(0, 2))
        pkt = datagram(max(size, 8), ident=ident, src=draw(st.sampled_from([SRC, "10.0.1.3"])))
        for f in fragment(pkt, mtu):
            if draw(st.integers(0, 9)) == 0:
                continue  # lost
            items.append(f)
            if draw(st.integers(0, 9)) == 0:
                items.append(f)  # duplicated
    extra = draw(
        st.lists(
            st.tuples(
                st.integers(0, 800),  # offset / 8
                st.integers(0, 600),  # length
                st.booleans(),  # MF
                st.integers(0, 2),  # id
                st.integers(0, 3),  # tos
                st.booleans(),  # DF
            ),
            max_size=10,
        )
    )
    for off, ln, mf, ident, tos, df in extra:
        items.append(frag(off * 8, data(ln, off), mf=mf, ident=ident, tos=tos, df=df))
    items += draw(st.lists(st.binary(max_size=40), max_size=2))
    order = draw(st.permutations(range(len(items))))
    steps = draw(st.lists(st.integers(0, 3 * SEC), min_size=len(items), max_size=len(items)))
    return [items[i] for i in order], steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=streams(),
    high=st.sampled_from([0, 3000, 20000, 60000, 4 << 20]),
    low_frac=st.floats(0, 1),
    timeout_s=st.integers(1, 30),
    max_dist=st.sampled_from([0, 2, 64]),
    expire_every=st.integers(1, 10),
)
def test_random_streams_account_for_every_fragment(
    stream, high, low_frac, timeout_s, max_dist, expire_every
):
    items, steps = stream
    r = Reassembler(high, int(high * low_frac), timeout_s * SEC, max_dist=max_dist)
    seen: list[int] = []
    now = 0
    for i, (f, step) in enumerate(zip(items, steps, strict=True)):
        now += step
        res = r.add(f, now, meta=i)
        assert r.mem <= high
        assert res.status in (QUEUED, COMPLETE, DROPPED)
        if res.status != QUEUED:
            assert res.nfrags == len(res.metas)
            seen += res.metas
        for g in res.side:
            assert g.nfrags == len(g.metas)
            seen += g.metas
        if res.status == COMPLETE:
            ip = IP(res.datagram)
            assert ip.len == len(res.datagram) <= 65535 and ip.frag == 0 and not ip.flags.MF
            assert ip_checksum(res.datagram[: ip.ihl * 4]) == 0
        if i % expire_every == 0:
            seen += [m for g in r.expire(now) for m in g.metas]
        assert r.consistent()
    held = r.held
    assert r.reasm_reqds == len(items)
    assert len(seen) + held == len(items)
    seen += [m for g in r.flush() for m in g.metas]
    assert sorted(seen) == list(range(len(items)))  # each exactly once
    assert r.mem == 0 and r.held == 0 and r.consistent()


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12000), min_size=1, max_size=4),
    mtu=st.sampled_from([28, 68, 576, 1006, 1500]),
    dup=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_clean_permutation_gives_back_the_datagram(sizes, mtu, dup, seed):
    rng = random.Random(seed)
    pkts = [
        datagram(max(n, mtu), ident=rng.randrange(1 << 16) & ~3 | i) for i, n in enumerate(sizes)
    ]
    stream = [(i, f) for i, p in enumerate(pkts) for f in fragment(p, mtu)]
    if dup:
        stream += rng.sample(stream, len(stream) // 3)
    rng.shuffle(stream)
    # One datagram is safe from ipfrag_max_dist in any order (the distance between
    # two of its fragments is 1); several from one source interleaved are not.
    r = Reassembler(64 << 20, 48 << 20, 30 * SEC, max_dist=64 if len(pkts) == 1 else 0)
    out = {}
    for i, f in stream:
        res = r.add(f, 0)
        assert res.status != DROPPED or res.reason == "duplicate"
        if res.status == COMPLETE:
            # Duplicates arriving after completion open a fresh queue, which may
            # complete again (as in the kernel): the same bytes either way.
            assert out.setdefault(i, res.datagram) == res.datagram
    r.flush()
    assert out == dict(enumerate(pkts))
