"""The fast path's verdicts, one named case at a time (scapy-built frames).

Each case runs `fast_path` on the real tables of the test topology (conftest.py)
and checks the verdict by name and, for forwarded frames, every output byte
against scapy's rendering of the expected packet.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from engine.control.routing import build_routing
from engine.counters import NCOUNTERS, Drop, Misc, Slow, Snmp, index
from engine.pipeline import checksum
from engine.pipeline import forward as forward_stage
from engine.pipeline.fastpath import STAGES, count, fast_path, run_stages
from engine.pipeline.neigh_cache import NeighCache
from engine.pipeline.stage import Batch, Stage
from engine.pipeline.tables import make_tables
from engine.pipeline.verdict import FORWARD, SLOW, slow
from engine.proto import HDR_BYTES
from engine.shm.fib import FibWriter
from engine.shm.memory import EngineMemory, Geometry
from engine.shm.neigh_table import NeighbourTable, Nud

from conftest import BCAST, MAC, PORTS, Lab, routed


class Router:
    def __init__(self, cfg):
        self.mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=64, ring_size=64))
        self.fib = FibWriter.create()
        self.routing = build_routing(cfg, self.mem, self.fib)
        self.tables = make_tables(cfg, self.mem, self.fib.lookup)

    def close(self):
        self.fib.close()
        self.fib.unlink()
        self.mem.close()

    def batch(self, frames: list[tuple[bytes, str]]):
        """Run frames (bytes, ingress port name) as one batch → [(verdict, egress, bytes)]."""
        n = len(frames)
        hdr = np.zeros((n, HDR_BYTES), dtype=np.uint8)
        length = np.zeros(n, dtype=np.uint32)
        for i, (raw, _) in enumerate(frames):
            head = raw[:HDR_BYTES]
            hdr[i, : len(head)] = np.frombuffer(head, dtype=np.uint8)
            length[i] = len(raw)
        in_port = np.array([PORTS.index(p) for _, p in frames], dtype=np.uint16)
        r = fast_path(hdr, length, in_port, self.tables)
        out = []
        for i, (raw, _) in enumerate(frames):
            code = int(r.code[i])
            if code == FORWARD:
                name = "forward"
            elif code >= SLOW:
                name = "slow:" + Slow(code - SLOW).name
            else:
                name = "drop:" + Drop(code).name
            frame = bytes(hdr[i, : min(HDR_BYTES, len(raw))]) + raw[HDR_BYTES:]
            out.append((name, PORTS[r.egress[i]], frame[: int(r.frame_len[i])]))
        return out

    def one(self, frame, port: str = "p0"):
        return self.batch([(bytes(frame), port)])[0]


@pytest.fixture(scope="module")
def router(tmp_path_factory):
    r = Router(Lab(tmp_path_factory.mktemp("router")).config())
    yield r
    r.close()


def h1(dst: str, **ip) -> Ether:
    ip.setdefault("src", "10.0.1.2")
    return Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(dst=dst, **ip)


def h2(dst: str, **ip) -> Ether:
    ip.setdefault("src", "10.0.2.2")
    return Ether(src=MAC["h2"], dst=MAC["p1"]) / IP(dst=dst, **ip)


# -- forwarding ----------------------------------------------------------------------

@pytest.mark.parametrize("frame, port, egress, nexthop", [
    (h1("10.0.2.2") / UDP(sport=1, dport=2) / Raw(b"x" * 30), "p0", "p1", "h2"),
    (h1("10.0.2.254", ttl=2) / TCP(), "p0", "p1", "gw"),
    (h2("10.0.1.2", tos=0xb8) / ICMP(), "p1", "p0", "h1"),
    (h1("10.9.1.1") / UDP(), "p0", "p1", "gw"),  # 10.9.0.0/16 via the gateway
    (h2("10.9.8.5") / UDP(), "p1", "p0", "h1"),  # the /24 inside it wins
    (h2("10.9.8.200") / UDP(), "p1", "p2", "h3"),  # the /25 inside that wins
    (h2("10.9.8.127") / UDP(), "p1", "p0", "h1"),  # just below the /25
    (h1("10.0.3.2", ttl=255) / UDP() / Raw(b"y" * 1372), "p0", "p2", "h3"),  # exactly MTU
], ids=["udp", "tcp-ttl2", "icmp-tos", "via-gateway", "lpm-24", "lpm-25", "lpm-edge",
        "at-mtu"])
def test_forwarded_bytes(router, frame, port, egress, nexthop):
    verdict, out_port, out = router.one(frame, port)
    assert verdict == "forward"
    assert out_port == egress
    assert out == routed(frame, egress, nexthop)


def test_l2_padding_is_trimmed(router):
    frame = h1("10.0.2.2") / UDP(sport=5, dport=6)  # 42 bytes
    padded = bytes(frame) + b"\x00" * 18  # as it arrives off a wire: 60 bytes
    verdict, _, out = router.batch([(padded, "p0")])[0]
    assert verdict == "forward"
    assert len(out) == 42 and out == routed(frame, "p1", "h2")


def test_zeronet_source_is_unicast_since_linux_5_3(router):
    frame = h1("10.0.2.2") / UDP()
    frame[IP].src = "0.1.2.3"
    assert router.one(frame)[0] == "forward"


def test_checksum_after_ttl_decrement_matches_scapy_for_every_ttl(router):
    frames = [(bytes(h1("10.0.2.2", ttl=t, id=t * 257) / UDP()), "p0") for t in range(2, 256)]
    for (raw, _), (verdict, _, out) in zip(frames, router.batch(frames), strict=True):
        assert verdict == "forward"
        assert out == routed(Ether(raw), "p1", "h2")


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 255), st.integers(0, 0xFFFF), st.integers(0, 255),
       st.integers(0, 0xFFFF), st.binary(min_size=8, max_size=8))
def test_rfc1624_update_equals_a_fresh_checksum(ttl, ident, tos, frag, addrs):
    ip = IP(ttl=ttl, id=ident, tos=tos, frag=frag & 0x1FFF, flags=frag >> 13, proto=17,
            src=".".join(map(str, addrs[:4])), dst=".".join(map(str, addrs[4:])))
    raw = bytes(ip)
    check = np.array([int.from_bytes(raw[10:12], "big")], dtype=np.uint16)
    ip.ttl = ttl - 1
    del ip.chksum
    expected = int.from_bytes(bytes(ip)[10:12], "big")
    assert int(checksum.ttl_decrement(check)[0]) == expected


# -- drops, in the kernel's order of checks ------------------------------------------

def raw_ip(ihl_version: int = 0x45, tot_len: int = 28, **fields) -> bytes:
    ip = IP(bytes(IP(src="10.0.1.2", dst="10.0.2.2") / UDP()))
    b = bytearray(bytes(ip))
    b[0] = ihl_version
    b[2:4] = tot_len.to_bytes(2, "big")
    b[10:12] = b"\x00\x00"
    ihl = (ihl_version & 0xF) * 4
    if ihl >= 20:
        words = np.frombuffer(bytes(b[:ihl]).ljust(ihl, b"\0"), dtype=">u2").astype(np.uint32)
        b[10:12] = int(checksum.compute(words[None, :])[0]).to_bytes(2, "big")
    return bytes(Ether(src=MAC["h1"], dst=MAC["p0"], type=0x0800)) + bytes(b)


DROP_CASES = [
    (Ether(src=MAC["h1"], dst=MAC["stranger"]) / IP(src="10.0.1.2", dst="10.0.2.2"),
     "otherhost"),
    (Ether(src=MAC["h1"], dst=MAC["p0"], type=0x86DD) / Raw(b"\x60" + b"\0" * 39),
     "not_ipv4"),  # IPv6
    (Ether(src=MAC["h1"], dst=MAC["p0"], type=0x88CC) / Raw(b"\0" * 46), "not_ipv4"),  # LLDP
    # arp_rcv ignores ARP for another host
    (Ether(src=MAC["h1"], dst=MAC["stranger"]) / ARP(pdst="10.0.1.9"), "otherhost"),
    (bytes(Ether(src=MAC["h1"], dst=MAC["p0"], type=0x0800)) + b"\x45" * 10, "hdr_too_short"),
    (raw_ip(0x65), "bad_version"),
    (raw_ip(0x44), "bad_ihl"),
    (raw_ip(0x4F)[:14 + 40], "hdr_too_short"),  # IHL 15 says 60 bytes, 40 are there
    (h1("10.0.2.2", chksum=0xBEEF) / UDP(), "csum_error"),
    (raw_ip(tot_len=500), "truncated"),
    (raw_ip(tot_len=19), "bad_tot_len"),
    (h1("224.0.0.5") / UDP(), "multicast"),
    (h1("10.0.2.2", src="224.1.1.1") / UDP(), "martian_source"),
    (h1("10.0.2.2", src="255.255.255.255") / UDP(), "martian_source"),
    (h1("10.0.2.2", src="0.0.0.0") / UDP(), "martian_source"),
    (h1("10.0.2.2", src="127.0.0.1") / UDP(), "martian_source"),
    (h1("10.0.2.2", src="10.0.2.1") / UDP(), "martian_source"),  # one of our addresses
    (h1("0.0.0.0") / UDP(), "martian_destination"),
    (h1("127.0.0.1") / UDP(), "martian_destination"),
    (Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="10.0.2.2") / UDP(),
     "l2_not_host"),
    (Ether(src=MAC["h1"], dst="01:00:5e:00:00:01") / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1)
     / UDP(), "l2_not_host"),  # no time exceeded either
    (Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="192.0.2.1") / UDP(),
     "l2_not_host"),  # no unreachable either: icmp_send answers PACKET_HOST only
    (h1("10.66.1.1") / UDP(), "blackhole"),
]


@pytest.mark.parametrize("frame, reason", DROP_CASES,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_drop_reason(router, frame, reason):
    assert router.one(frame)[0] == f"drop:{reason}"


# -- what goes to the slow path, and why -----------------------------------------------

SLOW_CASES = [
    (h1("10.0.1.1") / ICMP(), "p0", "local"),
    (h1("10.0.2.1") / ICMP(), "p0", "local"),  # any of our addresses
    (h1("10.0.1.255") / UDP(), "p0", "local"),  # directed broadcast
    (Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="255.255.255.255") / UDP(),
     "p0", "local"),
    (Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="10.0.1.1") / ICMP(),
     "p0", "local"),  # our address in a broadcast frame is still for us
    (h1("192.0.2.1") / UDP(), "p0", "no_route"),
    (h1("0.0.0.5") / UDP(), "p0", "no_route"),  # 0/8 is unicast: no route, not martian
    (h1("192.0.2.1", ttl=1) / UDP(), "p0", "no_route"),  # route lookup before TTL
    (h1("10.67.0.1") / UDP(), "p0", "unreachable"),
    (h1("10.68.0.1") / UDP(), "p0", "prohibit"),
    (h1("10.0.2.2", ttl=1) / UDP(), "p0", "ttl_exceeded"),
    (h1("10.0.2.2", ttl=0) / UDP(), "p0", "ttl_exceeded"),
    (h1("10.0.3.2", flags="DF", ttl=1) / Raw(b"z" * 1500), "p0", "ttl_exceeded"),  # TTL first
    (h1("10.0.3.2", flags="DF") / Raw(b"z" * 1381), "p0", "frag_needed"),  # 1401 > 1400
    (h1("10.0.3.2") / Raw(b"z" * 1381), "p0", "fragment"),
    (h1("10.0.2.2", flags="MF") / Raw(b"z" * 16), "p0", "reassemble"),
    (h1("10.0.2.2", frag=100) / Raw(b"z" * 16), "p0", "reassemble"),
    (h1("10.0.2.2", options=[IPOption_RR()]) / UDP(), "p0", "options"),
    (h1("10.9.8.5") / UDP(), "p0", "redirect"),  # back out of p0 to an on-link source
    (h1("10.69.0.5") / UDP(), "p0", "neigh_unresolved"),  # on-link route, no neighbour
    (h1("10.0.2.77") / UDP(), "p0", "neigh_unresolved"),  # connected, no neighbour
]


@pytest.mark.parametrize("frame, port, reason", SLOW_CASES,
                         ids=lambda v: v if isinstance(v, str) else "")
def test_slow_path_reason(router, frame, port, reason):
    assert router.one(frame, port)[0] == f"slow:{reason}"


# ARP: to our MAC, broadcast or multicast (arp_rcv takes every ARP frame but
# PACKET_OTHERHOST); the frame's contents are ARP's business, not ip_rcv's
ARP_CASES = [
    Ether(src=MAC["h1"], dst=MAC["p0"]) / ARP(op=2, psrc="10.0.1.2", pdst="10.0.1.1"),
    Ether(src=MAC["h1"], dst=BCAST) / ARP(psrc="10.0.1.2", pdst="10.0.1.1"),
    Ether(src=MAC["h1"], dst="01:00:5e:00:00:01") / ARP(pdst="10.0.1.1"),
    Ether(src=MAC["h1"], dst=BCAST) / ARP(ptype=0x0001, pdst="10.0.1.1"),  # not for IPv4
]


@pytest.mark.parametrize("frame", ARP_CASES, ids=["to-us", "broadcast", "multicast", "ptype"])
def test_arp_is_the_slow_paths(router, frame):
    assert router.one(frame)[0] == "slow:arp"


def test_no_redirect_for_off_link_source(router):
    frame = Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.9.8.9", dst="10.9.8.5") / UDP()
    assert router.one(frame)[0] == "forward"  # source is behind h1: forwarded back, no redirect


def test_forward_mode_forwards_transit_fragments(tmp_path):
    r = Router(Lab(tmp_path, reassembly="forward").config())
    try:
        frag = h1("10.0.2.2", flags="MF", id=5) / Raw(b"z" * 16)
        verdict, port, out = r.one(frag)
        assert verdict == "forward" and out == routed(frag, "p1", "h2")
        assert r.one(h1("10.0.1.1", flags="MF") / Raw(b"z" * 16))[0] == "slow:local"
    finally:
        r.close()


def test_a_mixed_batch_decides_each_packet_on_its_own(router):
    frames = [
        (bytes(h1("10.0.2.2") / UDP()), "p0"),
        (bytes(h1("10.0.2.2", chksum=1) / UDP()), "p0"),
        (bytes(h1("10.0.2.2", ttl=1) / UDP()), "p0"),
        (bytes(h2("10.0.1.2") / UDP()), "p1"),
        (bytes(h1("10.66.0.1") / UDP()), "p0"),
    ]
    verdicts = [v for v, _, _ in router.batch(frames)]
    assert verdicts == ["forward", "drop:csum_error", "slow:ttl_exceeded", "forward",
                        "drop:blackhole"]


def test_each_stage_decides_the_verdicts_it_declares(router):
    """Every named case as one batch, plus a runt and a port that is down: each verdict
    is decided by a stage that declares it, and every declared one is reached."""
    frames = [bytes(f) for f, _ in DROP_CASES] + [bytes(f) for f, _, _ in SLOW_CASES] \
        + [bytes(f) for f in ARP_CASES] + [bytes(h1("10.0.2.2") / UDP())[:10]]
    ports = [0] * len(DROP_CASES) + [PORTS.index(p) for _, p, _ in SLOW_CASES] \
        + [0] * (len(ARP_CASES) + 1)
    t = router.tables
    down = dataclasses.replace(t, port_up=np.zeros_like(t.port_up),
                               nh_mtu=np.zeros_like(t.nh_mtu))  # as the control plane does
    decided: dict[str, set[int]] = {stage.name: set() for stage in STAGES}
    steps: list[np.ndarray] = []  # the codes after each stage

    def after(stage: Stage, b: Batch) -> None:
        steps.append(b.code.copy())

    for batch, in_port, tables in ((frames, ports, t),
                                   ([bytes(h1("10.0.2.2") / UDP())], [0], down)):
        hdr = np.zeros((len(batch), HDR_BYTES), dtype=np.uint8)
        for i, raw in enumerate(batch):
            hdr[i, : min(len(raw), HDR_BYTES)] = np.frombuffer(raw[:HDR_BYTES], np.uint8)
        b = Batch(hdr, np.array([len(raw) for raw in batch], dtype=np.uint32),
                  np.array(in_port, dtype=np.uint16), np.zeros(len(batch), dtype=np.uint8))
        steps.clear()
        run_stages(b, tables, after)
        before = np.zeros(len(batch), dtype=np.uint8)
        for stage, code in zip(STAGES, steps, strict=True):
            decided[stage.name] |= {int(c) for c in code[code != before]}
            before = code
    assert decided == {stage.name: set(stage.reasons) for stage in STAGES}


def test_little_endian_checksum_update_is_eqn_3_for_every_value():
    check = np.arange(65536, dtype=np.uint32)
    swapped = ((check >> 8) | (check << 8)) & 0xFFFF
    le = checksum.ttl_decrement_le(swapped.astype(np.uint16)).astype(np.uint32)
    assert np.array_equal(((le >> 8) | (le << 8)) & 0xFFFF, checksum.ttl_decrement(check))


# -- ARP frames ------------------------------------------------------------------------

def test_arp_goes_to_the_slow_path_whole_and_counts_as_no_ip_packet(router):
    arp = Ether(src=MAC["h1"], dst=BCAST) / ARP(psrc="10.0.1.2", pdst="10.0.1.1")
    padded = bytes(arp) + b"\0" * 18  # 60 bytes, as off a wire: the slow path gets them all
    hdr = np.zeros((1, HDR_BYTES), dtype=np.uint8)
    hdr[0, :60] = np.frombuffer(padded, dtype=np.uint8)
    r = fast_path(hdr, np.array([60], dtype=np.uint32), np.array([0], dtype=np.uint16),
                  router.tables)
    assert r.code.tolist() == [slow(Slow.arp)] and r.frame_len.tolist() == [60]
    assert bytes(hdr[0, :60]) == padded  # untouched
    row = np.zeros(NCOUNTERS, dtype=np.uint64)
    count(r.code, row)
    assert row[index(Slow.arp)] == 1 and row[index(Misc.to_slowpath)] == 1
    assert row[index(Misc.rx_frames)] == 1 and row[index(Snmp.InReceives)] == 0


# -- neighbours learned by ARP: the shared table, through the fast path -----------------

LEARNED_MAC = "02:00:00:00:02:77"


@pytest.fixture
def fresh(tmp_path):
    """A router of its own: these tests change its neighbour table and routes."""
    r = Router(Lab(tmp_path).config())
    r.neigh = NeighbourTable(r.mem)
    yield r
    r.close()


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def to_mac(frame: Ether, port: str, dst_mac: str) -> bytes:
    """`routed`, to a MAC that is in no config."""
    pkt = frame.copy()
    pkt[Ether].src = MAC[port]
    pkt[Ether].dst = dst_mac
    pkt[IP].ttl -= 1
    del pkt[IP].chksum
    return bytes(Ether(bytes(pkt)))


class Spy:
    """A resolver that records what the fast path asks."""

    def __init__(self, inner):
        self.inner = inner
        self.asked: list[list[str]] = []

    def resolve(self, keys, egress):
        self.asked.append([str(ipaddress.IPv4Address(int(k))) for k in keys])
        return self.inner.resolve(keys, egress)


def test_packets_to_learned_neighbours_get_their_mac(fresh):
    fresh.neigh.put(ip_int("10.0.2.77"), 1, mac_bytes(LEARNED_MAC), Nud.REACHABLE, 1)
    fresh.neigh.put(ip_int("10.0.3.9"), 2, mac_bytes("02:00:00:00:03:09"), Nud.STALE, 1)
    frames = [h1("10.0.2.77", id=1) / UDP(sport=7, dport=9) / Raw(b"a" * 20),
              h1("10.0.3.9", id=2) / TCP(),
              h1("10.0.2.77", id=3, tos=0x10) / ICMP()]
    out = fresh.batch([(bytes(f), "p0") for f in frames])
    assert out == [("forward", "p1", to_mac(frames[0], "p1", LEARNED_MAC)),
                   ("forward", "p2", to_mac(frames[1], "p2", "02:00:00:00:03:09")),
                   ("forward", "p1", to_mac(frames[2], "p1", LEARNED_MAC))]


@pytest.mark.parametrize("entry", [None, ("p1", Nud.INCOMPLETE), ("p1", Nud.FAILED),
                                   ("p1", Nud.NONE), ("p2", Nud.REACHABLE)],
                         ids=["unknown", "incomplete", "failed", "none", "other-port"])
def test_a_neighbour_not_usable_on_the_egress_port_goes_to_the_slow_path(fresh, entry):
    if entry is not None:
        fresh.neigh.put(ip_int("10.0.2.77"), PORTS.index(entry[0]), mac_bytes(LEARNED_MAC),
                        entry[1], 1)
    assert fresh.one(h1("10.0.2.77") / UDP())[0] == "slow:neigh_unresolved"


def test_a_gateway_learned_by_arp_is_resolved_by_its_own_address(fresh):
    fresh.routing.add({"prefix": "10.55.0.0/16", "via": "10.0.2.200"})
    frame = h1("10.55.1.1") / UDP()
    assert fresh.one(frame)[0] == "slow:neigh_unresolved"
    fresh.neigh.put(ip_int("10.55.1.1"), 1, mac_bytes("02:00:00:00:55:01"), Nud.REACHABLE, 1)
    assert fresh.one(frame)[0] == "slow:neigh_unresolved"  # the destination is not the key
    fresh.neigh.put(ip_int("10.0.2.200"), 1, mac_bytes("02:00:00:00:02:c8"), Nud.DELAY, 1)
    assert fresh.one(frame) == ("forward", "p1", to_mac(frame, "p1", "02:00:00:00:02:c8"))


def test_learned_neighbours_stay_in_the_plain_tier(fresh, monkeypatch):
    """The namespace lab's common case (hosts on connected subnets, learned by ARP) is
    one whole-batch lookup, never the careful per-check tier."""
    for n in range(16):
        fresh.neigh.put(ip_int(f"10.0.2.{100 + n}"), 1, mac_bytes(f"02:00:00:00:02:{n:02x}"),
                        Nud.REACHABLE, 1)
    spy = Spy(NeighCache(fresh.neigh))
    fresh.tables.neigh = spy

    def careful(*args, **kwargs):
        raise AssertionError("a plain batch went through forward_checks")

    monkeypatch.setattr(forward_stage, "forward_checks", careful)
    frames = [h1(f"10.0.2.{100 + n % 16}", id=n) / UDP() for n in range(64)]
    out = fresh.batch([(bytes(f), "p0") for f in frames])
    assert [o[0] for o in out] == ["forward"] * 64
    assert out[17][2] == to_mac(frames[17], "p1", "02:00:00:00:02:01")
    assert len(spy.asked) == 1 and len(spy.asked[0]) == 64  # the whole batch, once


def test_the_neighbour_is_looked_up_last_in_the_kernels_order(fresh):
    """ip_forward's checks come first (neigh_output runs in ip_finish_output2): a
    packet they decide is never looked up, and nothing is cached for it."""
    spy = Spy(fresh.neigh)
    fresh.tables.neigh = spy
    fresh.routing.set_port("p2", up=False)
    cases = [
        (h1("10.0.2.77", ttl=1) / UDP(), "p0", "slow:ttl_exceeded"),
        (h1("10.0.3.77", flags="DF") / Raw(b"z" * 1500), "p0", "drop:port_down"),
        (Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="10.0.2.77") / UDP(),
         "p0", "drop:l2_not_host"),
        (h2("10.0.2.77") / UDP(), "p1", "slow:redirect"),  # back out of p1, on-link source
        (h1("10.0.2.78") / UDP(), "p0", "slow:neigh_unresolved"),
    ]
    out = fresh.batch([(bytes(f), p) for f, p, _ in cases])
    assert [o[0] for o in out] == [v for _, _, v in cases]
    assert spy.asked == [["10.0.2.78"]]


def test_a_mixed_batch_resolves_only_what_needs_it(fresh):
    fresh.neigh.put(ip_int("10.0.2.77"), 1, mac_bytes(LEARNED_MAC), Nud.REACHABLE, 1)
    frames = [(h1("10.0.2.77", id=1) / UDP(), "p0"), (h1("10.0.2.2", id=2) / UDP(), "p0"),
              (h1("10.0.2.88") / UDP(), "p0"), (h1("10.0.2.77", ttl=1) / UDP(), "p0"),
              (h1("10.0.2.77", chksum=5) / UDP(), "p0"), (h1("10.0.2.77", id=6) / UDP(), "p0")]
    out = fresh.batch([(bytes(f), p) for f, p in frames])
    assert out[0] == ("forward", "p1", to_mac(frames[0][0], "p1", LEARNED_MAC))
    assert out[1] == ("forward", "p1", routed(frames[1][0], "p1", "h2"))  # static
    assert [o[0] for o in out[2:5]] == ["slow:neigh_unresolved", "slow:ttl_exceeded",
                                        "drop:csum_error"]
    assert out[5] == ("forward", "p1", to_mac(frames[5][0], "p1", LEARNED_MAC))


def test_without_a_resolver_every_unresolved_next_hop_is_the_slow_paths(fresh):
    fresh.neigh.put(ip_int("10.0.2.77"), 1, mac_bytes(LEARNED_MAC), Nud.REACHABLE, 1)
    fresh.tables.neigh = None
    assert fresh.one(h1("10.0.2.77") / UDP())[0] == "slow:neigh_unresolved"
    assert fresh.one(h1("10.0.2.2") / UDP())[0] == "forward"


def ip_int(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))
