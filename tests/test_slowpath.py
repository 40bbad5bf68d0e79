"""The slow-path worker end to end: scapy-built frames through `fwd run` (pcap ports),
one named test per behaviour, every output byte compared with scapy's rendering of
the packet the kernel would send (KERNEL-NOTES.md). Only the IP ID of packets the
router originates is normalised (with the header checksum it changes); their
header checksum is checked first. Every run's counters must balance.

Topology: tests/conftest.py (h1 10.0.1.2 on p0, h2 10.0.2.2 and a gateway on p1,
h3 10.0.3.2 on p2 with MTU 1400).
"""

from __future__ import annotations

import signal
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption, IPOption_NOP
from scapy.layers.inet import fragment as scapy_fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import checksum

from engine.control.stats import format_snapshot

from conftest import BCAST, MAC, Lab, routed

T0 = 1_700_000_000  # the capture clock of every test, seconds since the epoch
ROUTER = {"10.0.1.1", "10.0.2.1", "10.0.3.1"}
PORTS = ("p0", "p1", "p2")


# ------------------------------------------------------------------ helpers


def at(frame: Ether, t: float) -> Ether:
    frame.time = T0 + t
    return frame


def h1(dst: str, **ip) -> Ether:
    ip.setdefault("src", "10.0.1.2")
    return Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(dst=dst, **ip)


def h2(dst: str, **ip) -> Ether:
    ip.setdefault("src", "10.0.2.2")
    return Ether(src=MAC["h2"], dst=MAC["p1"]) / IP(dst=dst, **ip)


def aton(addr: str) -> bytes:
    return socket.inet_aton(addr)


def norm(frame: bytes) -> bytes:
    """The frame with the IP ID of a router-originated packet zeroed and its header
    checksum recomputed; that checksum must have verified before."""
    b = bytearray(frame)
    if b[12:14] == b"\x08\x00" and socket.inet_ntoa(bytes(b[26:30])) in ROUTER:
        ihl = (b[14] & 0xF) * 4
        assert checksum(bytes(b[14 : 14 + ihl])) == 0, "bad header checksum"
        b[18:20] = b"\0\0"
        b[24:26] = b"\0\0"
        b[24:26] = struct.pack("!H", checksum(bytes(b[14 : 14 + ihl])))
    return bytes(b)


def icmp_error(orig: bytes | Ether, icmp: ICMP, *, src: str = "10.0.1.1", port: str = "p0",
               to: str = "h1", options: list | None = None, dst: str | None = None,
               eth_dst: str | None = None) -> bytes:
    """What the router sends about `orig` (an IP packet as the kernel quotes it, or a
    frame): TTL 64, no DF, TOS 0xc0 | (TOS & 0x1e), the quote cut to 576 bytes."""
    quote = bytes(orig[IP]) if isinstance(orig, Ether) else orig
    ip = IP(quote)
    opts = options or []
    optlen = len(bytes(IP(options=opts))) - 20
    frame = (Ether(src=MAC[port], dst=eth_dst or MAC[to])
             / IP(src=src, dst=dst or ip.src, tos=0xC0 | (ip.tos & 0x1E), ttl=64, id=0,
                  options=opts)
             / icmp / Raw(quote[: 576 - 20 - optlen - 8]))
    return norm(bytes(frame))


def echo_reply(request: Ether, *, src: str | None = None, port: str = "p0",
               to: str = "h1") -> bytes:
    req = request[IP]
    icmp = bytes(req[ICMP])
    reply = (Ether(src=MAC[port], dst=MAC[to])
             / IP(src=src or req.dst, dst=req.src, tos=req.tos, ttl=64, id=0, proto=1)
             / ICMP(type=0, code=icmp[1], id=req[ICMP].id, seq=req[ICMP].seq) / Raw(icmp[8:]))
    return norm(bytes(reply))


def lab(tmp_path: Path, workers: int = 1, reassembly: str = "full", reasm: str = "",
        extra: str = "") -> Lab:
    """The conftest topology, with more [reassembly] keys and more tables appended."""
    lb = Lab(tmp_path, workers=workers, batch=8, reassembly=reassembly)
    with lb.config_path.open("a") as f:
        f.write(reasm + "\n" + extra + "\n")  # the file ends inside [reassembly]
    return lb


def run(lb: Lab, inputs: dict[str, list]) -> tuple:
    """Run, check the books, and return (stats, {port: [normalised frames]})."""
    stats, outputs = run_bounded(lb, inputs)
    check_books(stats)
    return stats, {p: [norm(bytes(f)) for f in outputs[p]] for p in PORTS}


def run_bounded(lb: Lab, inputs: dict[str, list], seconds: int = 120) -> tuple:
    """`Lab.run`, failing instead of hanging if the engine never settles."""
    def expired(signum, frame):
        raise TimeoutError(f"fwd run did not finish in {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        return lb.run(inputs)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_books(stats) -> None:
    assert stats.balanced, stats.as_dict()
    assert stats.to_slowpath == stats.slow_taken
    assert stats.slow_drop["internal_error"] == 0
    # every drop under one named reason: the slow path's drop reasons add up
    slow_reasons = sum(stats.slow_drop.values())
    assert stats.dropped + stats.slow_dropped == sum(stats.drop.values()) + slow_reasons


def nonzero(d: dict) -> dict:
    return {k: v for k, v in d.items() if v}


# ------------------------------------------------------------------ time exceeded


@pytest.mark.parametrize("workers", [1, 2])
def test_ttl_1_gets_time_exceeded_with_source_quote_and_tos(tmp_path, workers):
    f1 = at(h1("10.0.2.2", ttl=1, tos=0xB9, id=77) / UDP(sport=1000, dport=2000)
            / Raw(b"x" * 40), 0)
    f2 = at(h2("10.0.1.2", ttl=1, id=78) / UDP(sport=1, dport=2) / Raw(b"y" * 1000), 10)
    f3 = at(h1("10.0.3.2", ttl=1, flags="DF") / Raw(b"z" * 1500), 20)  # TTL before MTU
    stats, out = run(lab(tmp_path, workers), {"p0": [f1, f3], "p1": [f2]})
    assert out["p0"] == [icmp_error(f1, ICMP(type=11, code=0)),
                         icmp_error(f3, ICMP(type=11, code=0))]
    # answered from the address of the port the error leaves by, quote cut at 576
    assert out["p1"] == [icmp_error(f2, ICMP(type=11, code=0), src="10.0.2.1", port="p1",
                                    to="h2")]
    assert len(out["p1"][0]) == 14 + 576
    assert out["p0"][0][15] == 0xC0 | (0xB9 & 0x1E)
    assert out["p2"] == []
    assert nonzero(stats.slow_drop) == {"ttl_exceeded": 3}
    assert stats.snmp["InHdrErrors"] == 3 and stats.snmp["OutRequests"] == 3
    assert nonzero(stats.icmp) == {"OutMsgs": 3, "OutTimeExcds": 3}


def test_ttl_1_from_a_subnet_broadcast_source_is_answered_by_broadcast(tmp_path):
    f = at(h1("10.0.2.2", src="10.0.1.255", ttl=1) / UDP(), 0)
    _, out = run(lab(tmp_path), {"p0": [f]})
    assert out["p0"] == [icmp_error(f, ICMP(type=11, code=0), eth_dst=BCAST)]


def test_ttl_1_to_an_unresolved_source_waits_for_arp_and_is_flushed_at_the_end(tmp_path):
    f = at(h2("10.0.2.2", src="10.0.2.77", ttl=1) / UDP(), 0)  # no neighbour entry
    stats, out = run(lab(tmp_path), {"p1": [f]})
    # the error waits for ARP (tests/test_arp.py); the replay ends first
    who_has = Ether(src=MAC["p1"], dst=BCAST) / ARP(op=1, hwsrc=MAC["p1"], psrc="10.0.2.1",
                                                    pdst="10.0.2.77")
    assert out == {"p0": [], "p1": [bytes(who_has)], "p2": []}
    assert nonzero(stats.unsent) == {"neigh_flush": 1}
    assert nonzero(stats.slow_drop) == {"ttl_exceeded": 1}


# ------------------------------------------------------------------ unreachable


def test_no_route_unreachable_and_prohibit_routes_answer_their_codes(tmp_path):
    frames = [at(h1(dst, id=i) / UDP(sport=7, dport=9) / Raw(b"q" * 20), 10 * i)
              for i, dst in enumerate(["192.0.2.1", "10.67.0.1", "10.68.0.1", "10.66.0.1"])]
    stats, out = run(lab(tmp_path), {"p0": frames})
    assert out["p0"] == [icmp_error(frames[0], ICMP(type=3, code=0)),
                         icmp_error(frames[1], ICMP(type=3, code=1)),
                         icmp_error(frames[2], ICMP(type=3, code=13))]  # blackhole: silent
    assert nonzero(stats.slow_drop) == {"no_route": 1, "unreachable": 1, "prohibit": 1}
    assert stats.drop["blackhole"] == 1
    assert stats.snmp["InNoRoutes"] == 1 and stats.snmp["InAddrErrors"] == 1
    assert stats.icmp["OutDestUnreachs"] == 3


def test_route_errors_share_the_kernels_per_source_limit(tmp_path):
    # ip_error's tokens (1 s each, burst 5 s) and icmp_ratelimit share one peer: two
    # unreachables in a burst, then one per two seconds
    frames = [at(h1("192.0.2.1", id=i) / UDP(), i / 1000) for i in range(5)]
    frames.append(at(h1("192.0.2.1", id=9) / UDP(), 2.5))
    stats, out = run(lab(tmp_path), {"p0": frames})
    assert out["p0"] == [icmp_error(frames[k], ICMP(type=3, code=0)) for k in (0, 1, 5)]
    assert nonzero(stats.unsent) == {"ratelimited": 3}
    assert stats.slow_drop["no_route"] == 6


def test_frag_needed_carries_the_egress_mtu(tmp_path):
    f = at(h1("10.0.3.2", flags="DF", id=9) / UDP(sport=3, dport=4) / Raw(b"z" * 1373), 0)
    assert len(f[IP]) == 1401
    stats, out = run(lab(tmp_path), {"p0": [f]})
    assert out["p0"] == [icmp_error(f, ICMP(type=3, code=4, nexthopmtu=1400))]
    assert out["p2"] == []
    assert stats.snmp["FragFails"] == 1 and nonzero(stats.slow_drop) == {"frag_needed": 1}


# ------------------------------------------------------------------ fragmentation


def test_fragmentation_at_the_p2_mtu(tmp_path):
    f = at(h1("10.0.3.2", id=4242) / UDP(sport=5, dport=6) / Raw(bytes(range(256)) * 5
                                                                + b"e" * 192), 0)
    assert len(f[IP]) == 1500  # the most p0 carries; p2 carries 1400
    stats, out = run(lab(tmp_path), {"p0": [f]})
    step = (1400 - 20) & ~7
    want = [bytes(Ether(src=MAC["p2"], dst=MAC["h3"]) / q)
            for q in scapy_fragment(IP(routed(f, "p2", "h3")[14:]), fragsize=step)]
    assert out["p2"] == want and len(want) == 2
    assert len(want[0]) == 14 + 1396  # 20 + 1376: the payload a multiple of 8
    assert stats.snmp["FragOKs"] == 1 and stats.snmp["FragCreates"] == 2
    assert stats.snmp["ForwDatagrams"] == 1 and stats.slow_forwarded == 1


def test_fragmentation_copies_copied_options_and_nops_the_others(tmp_path):
    rr = b"\x07\x0b\x04" + b"\0" * 8  # record route, two slots (not copied)
    ra = b"\x94\x04\x00\x00"  # router alert (copied)
    payload = bytes(range(256)) * 5 + b"o" * 176
    f = at(h1("10.0.3.2", id=4243, options=[IPOption(rr), IPOption(ra)])
           / UDP(sport=5, dport=6) / Raw(payload), 0)
    assert len(f[IP]) == 1500
    stats, out = run(lab(tmp_path), {"p0": [f]})
    ihl = 36
    step = (1400 - ihl) & ~7
    data = bytes(f[IP])[ihl:]
    first = [IPOption(b"\x07\x0b\x08" + aton("10.0.3.1") + b"\0" * 4), IPOption(ra)]
    later = [IPOption_NOP()] * 11 + [IPOption(ra)]
    want = []
    for k, off in enumerate(range(0, len(data), step)):
        last = off + step >= len(data)
        ip = IP(src="10.0.1.2", dst="10.0.3.2", id=4243, ttl=63, proto=17,
                flags=0 if last else "MF", frag=off // 8, options=first if k == 0 else later)
        want.append(bytes(Ether(src=MAC["p2"], dst=MAC["h3"]) / ip / Raw(data[off:off + step])))
    assert all(len(w) - 14 <= 1400 for w in want)
    assert out["p2"] == want
    assert stats.snmp["FragCreates"] == len(want)


# ------------------------------------------------------------------ local delivery


@pytest.mark.parametrize("workers", [1, 2])
def test_ping_to_the_router_gets_an_echo_reply(tmp_path, workers):
    p1 = at(h1("10.0.1.1", tos=0x10) / ICMP(id=0x1234, seq=7) / Raw(b"ping" * 10), 0)
    p2 = at(h1("10.0.2.1") / ICMP(id=0x1234, seq=8) / Raw(b"pong"), 1)  # our other address
    stats, out = run(lab(tmp_path, workers), {"p0": [p1, p2]})
    assert out["p0"] == [echo_reply(p1), echo_reply(p2)]
    assert out["p0"][0][14 + 1] == 0x10  # the request's TOS
    assert stats.slow_delivered == 2 and stats.snmp["InDelivers"] == 2
    assert nonzero(stats.icmp) == {"InMsgs": 2, "InEchos": 2, "OutMsgs": 2, "OutEchoReps": 2}


def fragmented_ping(size: int, ident: int, fragsize: int = 1480) -> tuple[list[Ether], bytes]:
    req = IP(src="10.0.1.2", dst="10.0.1.1", id=ident) / ICMP(id=ident, seq=1) / Raw(
        bytes((i * 7) & 0xFF for i in range(size)))
    frames = [Ether(src=MAC["h1"], dst=MAC["p0"]) / q for q in scapy_fragment(req, fragsize)]
    return frames, bytes(req)


def reply_fragments(request: bytes, mtu: int = 1500) -> list[bytes]:
    req = IP(request)
    reply = IP(src="10.0.1.1", dst="10.0.1.2", ttl=64, id=0) / ICMP(
        type=0, id=req[ICMP].id, seq=req[ICMP].seq) / Raw(bytes(req[ICMP])[8:])
    return [norm(bytes(Ether(src=MAC["p0"], dst=MAC["h1"]) / q))
            for q in scapy_fragment(reply, fragsize=(mtu - 20) & ~7)]


@pytest.mark.parametrize("mode", ["full", "forward"])
@pytest.mark.parametrize("workers", [1, 2])
def test_fragmented_ping_gets_a_fragmented_reply(tmp_path, mode, workers):
    frames, request = fragmented_ping(4000, 501)
    frames = [at(f, k / 1000) for k, f in enumerate(reversed(frames))]  # out of order too
    stats, out = run(lab(tmp_path, workers, reassembly=mode), {"p0": frames})
    assert out["p0"] == reply_fragments(request) and len(out["p0"]) == 3
    assert stats.snmp["ReasmReqds"] == 3 and stats.snmp["ReasmOKs"] == 1
    assert stats.slow_merged == 3 and stats.slow_reassembled == 1 and stats.slow_delivered == 1
    assert stats.snmp["FragOKs"] == 1 and stats.snmp["FragCreates"] == 3
    assert stats.snmp["OutRequests"] == 1


def test_udp_to_the_router_gets_port_unreachable(tmp_path):
    u1 = at(h1("10.0.1.1") / UDP(sport=1234, dport=9) / Raw(b"hi"), 0)
    u2 = at(h1("10.0.2.1") / UDP(sport=1234, dport=9) / Raw(b"hi"), 1)
    bad = h1("10.0.1.1") / UDP(sport=1234, dport=9, chksum=0x1234) / Raw(b"hi")
    bad = at(Ether(bytes(bad)), 2)
    stats, out = run(lab(tmp_path), {"p0": [u1, u2, bad]})
    # a datagram that was for us is answered from the address it was sent to
    assert out["p0"] == [icmp_error(u1, ICMP(type=3, code=3)),
                         icmp_error(u2, ICMP(type=3, code=3), src="10.0.2.1")]
    assert nonzero(stats.udp) == {"NoPorts": 2, "InErrors": 1, "InCsumErrors": 1}
    assert stats.slow_delivered == 3 and stats.snmp["InDelivers"] == 3


def test_unknown_protocol_gets_protocol_unreachable(tmp_path):
    f = at(h1("10.0.1.1", proto=200) / Raw(b"abcdefgh"), 0)
    stats, out = run(lab(tmp_path), {"p0": [f]})
    assert out["p0"] == [icmp_error(f, ICMP(type=3, code=2))]
    assert stats.snmp["InUnknownProtos"] == 1 and stats.snmp["InDelivers"] == 0
    assert nonzero(stats.slow_drop) == {"unknown_protocol": 1}


def test_broadcasts_get_no_errors_and_broadcast_pings_are_ignored(tmp_path):
    frames = [
        h1("10.0.1.255") / UDP(sport=1, dport=9),  # no port unreachable
        h1("10.0.1.255", proto=200) / Raw(b"x" * 8),  # no protocol unreachable
        h1("10.0.1.255") / ICMP(id=1, seq=1),  # icmp_echo_ignore_broadcasts
        Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="255.255.255.255")
        / ICMP(id=2, seq=2),
        # our unicast address in a broadcast frame: delivered, answered by unicast
        Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="10.0.1.1") / ICMP(id=3, seq=3),
        # ... but no error about it (icmp_send answers PACKET_HOST frames only)
        Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="10.0.1.1") / UDP(dport=9),
    ]
    frames = [at(f, k) for k, f in enumerate(frames)]
    stats, out = run(lab(tmp_path), {"p0": frames})
    assert out["p0"] == [echo_reply(frames[4])]
    assert stats.icmp["InErrors"] == 2 and stats.icmp["InEchos"] == 3
    assert stats.snmp["InUnknownProtos"] == 1
    assert nonzero(stats.unsent) == {"suppressed": 2}  # the two errors icmp_send refused


def test_tcp_to_the_router_gets_a_reset(tmp_path):
    syn = at(h1("10.0.1.1", tos=0xB9) / TCP(sport=1234, dport=80, flags="S", seq=1000), 0)
    ack = at(h1("10.0.2.1") / TCP(sport=1234, dport=22, flags="PA", seq=7, ack=555)
             / Raw(b"data"), 1)
    rst = at(h1("10.0.1.1") / TCP(sport=1234, dport=80, flags="R"), 2)  # never about a reset
    bad = at(Ether(bytes(h1("10.0.1.1") / TCP(dport=80, chksum=0x1234))), 3)
    bcast = at(Ether(src=MAC["h1"], dst=BCAST) / IP(src="10.0.1.2", dst="10.0.1.1")
               / TCP(dport=80), 4)  # tcp_v4_rcv: PACKET_HOST only
    stats, out = run(lab(tmp_path), {"p0": [syn, ack, rst, bad, bcast]})

    def reset(src: str, tos: int, tcp: TCP) -> bytes:
        # IP ID 0 and DF (ip_send_unicast_reply), TOS without its ECN bits
        return norm(bytes(Ether(src=MAC["p0"], dst=MAC["h1"])
                          / IP(src=src, dst="10.0.1.2", tos=tos, ttl=64, id=0, flags="DF")
                          / tcp))
    assert out["p0"] == [
        reset("10.0.1.1", 0xB8, TCP(sport=80, dport=1234, seq=0, ack=1001, flags="RA",
                                    window=0)),
        reset("10.0.2.1", 0, TCP(sport=22, dport=1234, seq=555, ack=0, flags="R", window=0))]
    # InSegs: the four frames for our MAC, the bad one too (tcp_v4_rcv)
    assert nonzero(stats.tcp) == {"InSegs": 4, "OutSegs": 2, "OutRsts": 2, "InErrs": 1,
                                  "InCsumErrors": 1}
    assert stats.slow_delivered == 5 and stats.snmp["OutRequests"] == 2


def test_short_icmp_messages_are_still_quoted_like_linux(tmp_path):
    # Linux 6.18.44 answers about an ICMP message of 1..7 bytes, not about 0 bytes
    four = at(h1("10.0.2.2", ttl=1, proto=1) / Raw(b"\x08\x00\xf7\xff"), 0)
    empty = at(h1("10.0.2.2", ttl=1, proto=1), 10)
    error = at(h1("10.0.2.2", ttl=1) / ICMP(type=3, code=1) / Raw(b"q" * 28), 20)
    stats, out = run(lab(tmp_path), {"p0": [four, empty, error]})
    assert out["p0"] == [icmp_error(four, ICMP(type=11, code=0))]
    assert nonzero(stats.unsent) == {"suppressed": 2}


# ------------------------------------------------------------------ redirect


def redirect(frame: Ether, gw: str) -> bytes:
    """ICMP host redirect about `frame`, quoting it with its TTL decremented."""
    return icmp_error(routed(frame, "p0", "h1")[14:], ICMP(type=5, code=1, gw=gw))


@pytest.mark.parametrize("workers", [1, 2])
def test_redirect_and_forward_with_the_kernels_backoff(tmp_path, workers):
    # 10.9.8.0/24 is via 10.0.1.2 on p0: back out of the port it came in on
    frames = [at(h1("10.9.8.5", id=i, tos=0x08) / UDP(sport=11, dport=12) / Raw(b"r" * 30), t)
              for i, t in enumerate([0, 0.010, 0.100])]
    stats, out = run(lab(tmp_path, workers), {"p0": frames})
    fwd = [routed(f, "p0", "h1") for f in frames]
    # redirect first (ip_forward sends it before ip_forward_finish), then the packet;
    # the second one comes 10 ms after the first redirect (< 20 ms << 1): no redirect
    assert out["p0"] == [redirect(frames[0], "10.0.1.2"), fwd[0], fwd[1],
                         redirect(frames[2], "10.0.1.2"), fwd[2]]
    assert stats.icmp["OutRedirects"] == 2 and nonzero(stats.unsent) == {"ratelimited": 1}
    assert stats.slow_forwarded == 3 and stats.snmp["ForwDatagrams"] == 3


def test_no_redirect_when_disabled(tmp_path):
    f = at(h1("10.9.8.5") / UDP(), 0)
    _, out = run(lab(tmp_path, extra="[icmp]\nsend_redirects = false"), {"p0": [f]})
    assert out["p0"] == [routed(f, "p0", "h1")]


def test_unresolved_next_hop_waits_for_arp_and_is_flushed_at_the_end(tmp_path):
    f = at(h1("10.0.2.77") / UDP(), 0)
    stats, out = run(lab(tmp_path), {"p0": [f]})
    who_has = Ether(src=MAC["p1"], dst=BCAST) / ARP(op=1, hwsrc=MAC["p1"], psrc="10.0.2.1",
                                                    pdst="10.0.2.77")
    assert out == {"p0": [], "p1": [bytes(who_has)], "p2": []}
    assert nonzero(stats.slow_drop) == {"neigh_flush": 1}


# ------------------------------------------------------------------ options


def test_record_route_through_the_router_holds_the_outgoing_address(tmp_path):
    f = at(h1("10.0.2.2", id=5, options=[IPOption(b"\x07\x0f\x04" + b"\0" * 12)])
           / UDP(sport=1, dport=2) / Raw(b"rr"), 0)
    stats, out = run(lab(tmp_path), {"p0": [f]})
    want = (Ether(src=MAC["p1"], dst=MAC["h2"])
            / IP(src="10.0.1.2", dst="10.0.2.2", id=5, ttl=63,
                 options=[IPOption(b"\x07\x0f\x08" + aton("10.0.2.1") + b"\0" * 8)])
            / UDP(sport=1, dport=2) / Raw(b"rr"))
    assert out["p1"] == [bytes(want)]
    assert stats.slow_forwarded == 1


def test_record_route_at_ttl_1_quotes_the_incoming_address(tmp_path):
    # KERNEL-NOTES: time exceeded carrying [10.0.1.1, 10.0.1.1]; the quote has the
    # receive-time address and the packet's original, now stale, checksum
    f = at(h1("10.0.2.2", ttl=1, options=[IPOption(b"\x07\x0b\x04" + b"\0" * 8)])
           / UDP(sport=1, dport=2) / Raw(b"x" * 10), 0)
    quote = bytearray(bytes(f[IP]))
    quote[22] = 8
    quote[23:27] = aton("10.0.1.1")
    _, out = run(lab(tmp_path), {"p0": [f]})
    opts = [IPOption(b"\x07\x0b\x0c" + aton("10.0.1.1") * 2)]
    assert out["p0"] == [icmp_error(bytes(quote), ICMP(type=11, code=0), options=opts)]


def test_timestamps_through_the_router(tmp_path):
    t = 12.345
    ms = (T0 * 1000 + 12345) % 86_400_000
    only = at(h1("10.0.2.2", id=1, options=[IPOption(b"\x44\x0c\x05\x00" + b"\0" * 8)])
              / UDP(sport=1, dport=2), t)
    addr = at(h1("10.0.2.2", id=2, options=[IPOption(b"\x44\x14\x05\x01" + b"\0" * 16)])
              / UDP(sport=1, dport=2), t)
    _, out = run(lab(tmp_path), {"p0": [only, addr]})
    stamp = struct.pack("!I", ms)

    def fwd(ident, opt):
        return bytes(Ether(src=MAC["p1"], dst=MAC["h2"])
                     / IP(src="10.0.1.2", dst="10.0.2.2", id=ident, ttl=63,
                          options=[IPOption(opt)]) / UDP(sport=1, dport=2))
    # timestamp with address records the incoming address (KERNEL-NOTES)
    assert out["p1"] == [fwd(1, b"\x44\x0c\x09\x00" + stamp + b"\0" * 4),
                         fwd(2, b"\x44\x14\x0d\x01" + aton("10.0.1.1") + stamp + b"\0" * 8)]


def lsrr_to_router() -> Ether:
    return h1("10.0.1.1", id=3, options=[IPOption(b"\x83\x07\x04" + aton("10.0.2.2"))]) \
        / UDP(sport=1, dport=2) / Raw(b"sr")


def test_source_route_is_dropped_with_accept_source_route_false(tmp_path):
    transit = h1("10.0.2.2", options=[IPOption(b"\x83\x07\x04" + aton("10.9.9.9"))]) / UDP()
    frames = [at(lsrr_to_router(), 0), at(transit, 1)]
    stats, out = run(lab(tmp_path), {"p0": frames})
    assert out == {"p0": [], "p1": [], "p2": []}  # silently, even just passing through
    assert nonzero(stats.slow_drop) == {"source_route": 2}


def test_source_route_is_followed_with_accept_source_route_true(tmp_path):
    f = at(lsrr_to_router(), 0)
    stats, out = run(lab(tmp_path, extra="[ipv4]\naccept_source_route = true"), {"p0": [f]})
    want = (Ether(src=MAC["p1"], dst=MAC["h2"])
            / IP(src="10.0.1.2", dst="10.0.2.2", id=3, ttl=63, proto=17,
                 options=[IPOption(b"\x83\x07\x08" + aton("10.0.2.1"))])
            / Raw(bytes(f[UDP])))  # its checksum is the sender's, for the last hop
    assert out["p1"] == [bytes(want)] and stats.slow_forwarded == 1


def test_malformed_options_get_a_parameter_problem(tmp_path):
    f = at(h1("10.0.2.2", options=[IPOption(b"\x07\x07\x03" + b"\0" * 4)]) / UDP(), 0)
    stats, out = run(lab(tmp_path), {"p0": [f]})
    assert out["p0"] == [icmp_error(f, ICMP(type=12, code=0, ptr=22))]
    assert stats.snmp["InHdrErrors"] == 1 and stats.icmp["OutParmProbs"] == 1
    assert nonzero(stats.slow_drop) == {"param_problem": 1}


# ------------------------------------------------------------------ reassembly


def transit_fragments(size: int = 2500, ident: int = 321, fragsize: int = 1000) -> list[Ether]:
    d = IP(src="10.0.1.2", dst="10.0.2.2", id=ident) / UDP(sport=9, dport=9) / Raw(
        bytes((i * 3) & 0xFF for i in range(size)))
    return [Ether(src=MAC["h1"], dst=MAC["p0"]) / q for q in scapy_fragment(d, fragsize)]


@pytest.mark.parametrize("workers", [1, 2])
def test_full_mode_reassembles_out_of_order_and_refragments_as_received(tmp_path, workers):
    frags = transit_fragments()
    frames = [at(f, k / 1000) for k, f in enumerate(reversed(frags))]
    stats, out = run(lab(tmp_path, workers), {"p0": frames})
    # the datagram leaves when complete, cut where it was cut (frag_max_size, frag_list)
    assert out["p1"] == [routed(f, "p1", "h2") for f in frags]
    assert stats.slow_forwarded == 1 and stats.slow_merged == 3
    assert stats.snmp["ReasmOKs"] == 1 and stats.snmp["ForwDatagrams"] == 1


def test_full_mode_refragments_to_the_egress_mtu_when_smaller(tmp_path):
    d = IP(src="10.0.1.2", dst="10.0.3.2", id=77) / UDP(sport=9, dport=9) / Raw(b"m" * 3000)
    frags = [at(Ether(src=MAC["h1"], dst=MAC["p0"]) / q, k / 1000)
             for k, q in enumerate(scapy_fragment(d, 1480))]
    _, out = run(lab(tmp_path), {"p0": frags})
    routed_whole = IP(bytes(d))
    routed_whole.ttl -= 1
    del routed_whole.chksum
    want = [bytes(Ether(src=MAC["p2"], dst=MAC["h3"]) / q)
            for q in scapy_fragment(IP(bytes(routed_whole)), (1400 - 20) & ~7)]
    assert out["p2"] == want


def test_a_reassembled_datagram_is_routed_like_a_received_one(tmp_path):
    def frags(t: float, **ip) -> list[Ether]:
        d = IP(dst="10.0.2.2", **ip) / UDP(sport=9, dport=9) / Raw(b"d" * 1200)
        return [at(Ether(src=MAC["h1"], dst=MAC["p0"]) / q, t + k / 1000)
                for k, q in enumerate(scapy_fragment(d, 600))]
    martian = frags(0, src="127.0.0.1", id=1)  # martian checks come after netfilter's defrag
    ttl_1 = frags(10, src="10.0.1.2", id=2, ttl=1)
    rr = frags(20, src="10.0.1.2", id=3, options=[IPOption(b"\x07\x07\x04\0\0\0\0")])
    stats, out = run(lab(tmp_path), {"p0": martian + ttl_1 + rr})
    whole = IP(src="10.0.1.2", dst="10.0.2.2", id=2, ttl=1) / UDP(sport=9, dport=9) / Raw(
        b"d" * 1200)
    # the time exceeded quotes the datagram, not a fragment; options are processed on the
    # whole datagram, which then leaves cut as it came (the second fragment's RR: NOPs)
    assert out["p0"] == [icmp_error(bytes(whole), ICMP(type=11, code=0))]
    rr_out = [IP(f[14:]) for f in out["p1"]]
    assert [f[14 + 20 : 14 + 28] for f in out["p1"]] == [
        b"\x07\x07\x08" + aton("10.0.2.1") + b"\0"] + [b"\x01" * 7 + b"\0"] * 2
    assert [p.frag for p in rr_out] == [0, 75, 150] and all(p.ttl == 63 for p in rr_out)
    assert stats.drop["martian_source"] == 1 and stats.slow_drop["ttl_exceeded"] == 1
    assert stats.slow_reassembled == 3 and stats.slow_merged == 9


def test_an_overlap_drops_the_whole_queue(tmp_path):
    frags = transit_fragments()
    overlap = frags[1].copy()
    overlap[IP].frag -= 1  # 8 bytes into the first fragment
    del overlap[IP].chksum
    frames = [at(frags[0], 0), at(Ether(bytes(overlap)), 0.001), at(frags[2], 0.002)]
    stats, out = run(lab(tmp_path), {"p0": frames})
    assert out == {"p0": [], "p1": [], "p2": []}
    # the last fragment starts a queue of its own, flushed when the replay ends
    assert nonzero(stats.slow_drop) == {"reasm_overlap": 2, "reasm_flush": 1}
    assert stats.snmp["ReasmFails"] == 2 and stats.snmp["ReasmTimeout"] == 0


def test_timeout_answers_only_for_a_first_fragment_to_the_router(tmp_path):
    ping, _ = fragmented_ping(3000, 600)
    transit = transit_fragments(ident=601)
    later = at(h1("10.0.2.2", id=1) / UDP(), 40)  # moves the clock past the timers
    frames = [at(ping[0], 0), at(transit[0], 0.001), at(ping[1].copy(), 0.002)]
    other, _ = fragmented_ping(3000, 602)
    frames.append(at(other[1], 0.003))  # for us, but its first fragment never came
    stats, out = run(lab(tmp_path), {"p0": frames + [later]})
    quote = bytes(ping[0][IP])
    assert out["p0"] == [icmp_error(quote, ICMP(type=11, code=1))]
    assert out["p1"] == [routed(later, "p1", "h2")]
    assert stats.snmp["ReasmTimeout"] == 3
    assert nonzero(stats.slow_drop) == {"reasm_timeout": 4}


def test_the_time_exceeded_leaves_when_the_timer_fires(tmp_path):
    ping, _ = fragmented_ping(3000, 610)
    frames = [at(ping[0], 0), at(h1("10.0.2.2") / UDP(), 50)]
    lb = lab(tmp_path, reasm="timeout_s = 5")
    run_bounded(lb, {"p0": frames})
    from scapy.utils import rdpcap
    (answer,) = rdpcap(str(tmp_path / "out" / "p0.pcap"))
    assert float(answer.time) == pytest.approx(T0 + 5)


def test_pending_fragments_are_flushed_when_the_replay_ends_never_timed_out(tmp_path):
    ping, _ = fragmented_ping(3000, 620)
    frames = [at(ping[0], 0), at(h1("10.0.2.2") / UDP(), 29.9)]  # the clock stops here
    stats, out = run(lab(tmp_path), {"p0": frames})
    assert out["p0"] == []
    assert nonzero(stats.slow_drop) == {"reasm_flush": 1}
    assert stats.snmp["ReasmTimeout"] == 0 and stats.snmp["ReasmFails"] == 1


def test_forward_mode_forwards_transit_fragments_one_by_one(tmp_path):
    frags = transit_fragments()
    frames = [at(f, k / 1000) for k, f in enumerate(reversed(frags))]
    stats, out = run(lab(tmp_path, reassembly="forward"), {"p0": frames})
    assert out["p1"] == [routed(f, "p1", "h2") for f in reversed(frags)]
    assert stats.snmp["ReasmReqds"] == 0


def test_reassembly_limits_come_from_the_config(tmp_path):
    # high_thresh smaller than two queued fragments: the older queue is evicted
    frames = [at(transit_fragments(ident=700 + k)[0], k / 1000) for k in range(3)]
    stats, _ = run(lab(tmp_path, reasm="high_thresh = 2000\nlow_thresh = 1000"),
                   {"p0": frames})
    assert stats.slow_drop["reasm_mem_limit"] == 2 and stats.slow_held == 0
    assert stats.slow_drop["reasm_flush"] == 1
    # one queue of one 1,020-byte fragment (truesize 1,020 + 576, the queue 192) was
    # the most held: a second one went over 2,000 and eviction took both
    assert stats.reassembly == {"inuse": 0, "memory": 0, "memory_high": 1788,
                                "high_thresh": 2000, "low_thresh": 1000}
    assert "reassembly: 0 queues, 0 bytes (high-water 1788; high_thresh 2000, " \
           "low_thresh 1000)" in format_snapshot(stats)


# ------------------------------------------------------------------ rate limits


@pytest.mark.parametrize("ratelimit_ms, answered", [(1000, [0, 1, 2, 3, 4, 5, 8]),
                                                    (0, list(range(9)))])
def test_icmp_rate_limit_follows_ratelimit_ms(tmp_path, ratelimit_ms, answered):
    # a burst of six per destination (XRLIM_BURST_FACTOR), then one per ratelimit_ms
    times = [k / 1000 for k in range(8)] + [1.1]
    frames = [at(h1("10.0.2.2", ttl=1, id=k) / UDP(), t) for k, t in enumerate(times)]
    extra = f"[icmp]\nratelimit_ms = {ratelimit_ms}"
    stats, out = run(lab(tmp_path, extra=extra), {"p0": frames})
    assert out["p0"] == [icmp_error(frames[k], ICMP(type=11, code=0)) for k in answered]
    assert stats.unsent.get("ratelimited", 0) == 9 - len(answered)


def test_frag_needed_is_never_rate_limited(tmp_path):
    frames = [at(h1("10.0.3.2", flags="DF", id=k) / Raw(b"z" * 1400), k / 1000)
              for k in range(8)]
    _, out = run(lab(tmp_path), {"p0": frames})
    assert len(out["p0"]) == 8


# ------------------------------------------------------------------ the worker alone


class Harness:
    """A slow path in this process over a real engine segment and FIB: frames are
    written into pool buffers and handed over by index, as a worker would."""

    def __init__(self, cfg) -> None:
        from engine.control.routing import build_routing
        from engine.pipeline.tables import make_tables
        from engine.shm.fib import FibWriter
        from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
        from engine.shm.pool import Buffers
        from engine.workers.slowpath import SlowPath

        self.mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=1024,
                                                    ring_size=256))
        self.fib = FibWriter.create()
        build_routing(cfg, self.mem, self.fib)
        self.io = Buffers(self.mem, AGENT_IO)
        self.sp = SlowPath(self.mem, make_tables(cfg, self.mem, self.fib.lookup), cfg, 64)

    def close(self) -> None:
        self.fib.close()
        self.fib.unlink()
        self.mem.close()

    def give(self, frames: list[bytes], reason, ts: list[int]) -> list[bytes]:
        from engine.pipeline.verdict import SLOW

        mem = self.mem
        idx = self.io.alloc(len(frames))
        for i, f, t in zip(idx.tolist(), frames, ts, strict=True):
            mem.data[i, : len(f)] = np.frombuffer(f, np.uint8)
            mem.length[i] = len(f)
            mem.port[i] = 0
            mem.ts[i] = t
            mem.seq[i] = i
        mem.code[idx] = SLOW + int(reason)
        self.sp.handle(idx)
        return self.collect()

    def collect(self) -> list[bytes]:
        """The pcap agent's part: take what the slow path sent, and free it."""
        mem = self.mem
        sent = []
        for p in range(mem.geometry.nports):
            out = mem.rings[f"slowtx.{p}"].dequeue(1 << 20)
            sent += [mem.data[i, : mem.length[i]].tobytes() for i in out.tolist()]
            self.io.free(out)
        self.io.reclaim()
        return sent


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=40), st.sampled_from(["10.0.2.2", "10.0.1.1",
                                                            "10.0.1.255", "192.0.2.1"]),
       st.integers(1, 3), st.booleans())
def test_random_options_never_raise_and_balance(tmp_path_factory, opts, dst, ttl, accept):
    """Random option bytes (any length, any content) to every kind of destination:
    the worker never raises, every packet ends once, every ICMP it sends verifies."""
    from engine.control.stats import snapshot
    from engine.counters import Slow

    extra = f"[icmp]\nratelimit_ms = 0\n[ipv4]\naccept_source_route = {str(accept).lower()}"
    h = Harness(lab(tmp_path_factory.mktemp("o"), extra=extra).config())
    try:
        opts = opts + b"\0" * (-len(opts) % 4)
        ip = bytearray(bytes(IP(src="10.0.1.2", dst=dst, ttl=ttl) / UDP(sport=1, dport=2)))
        ip[20:20] = opts
        ip[0] = 0x40 | (5 + len(opts) // 4)
        ip[2:4] = struct.pack("!H", len(ip))
        ip[10:12] = b"\0\0"
        ip[10:12] = struct.pack("!H", checksum(bytes(ip[: 20 + len(opts)])))
        frame = bytes(Ether(src=MAC["h1"], dst=MAC["p0"])) + bytes(ip)
        sent = h.give([frame], Slow.options, [T0 * 10**9])
        h.sp.finish()
        s = snapshot(h.mem, ["p0", "p1", "p2"])
        assert s.slow_taken == 1 and s.slow_balanced
        assert s.slow_forwarded + s.slow_delivered + s.slow_dropped == 1
        for f in sent:
            assert checksum(f[14 : 14 + (f[14] & 0xF) * 4]) == 0
    finally:
        h.close()


fragment_streams = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 40), st.integers(1, 30), st.booleans(),
              st.booleans()),
    min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(fragment_streams, st.booleans())
def test_random_fragment_streams_never_raise_and_balance(tmp_path_factory, stream, local):
    """Random orders, overlaps, duplicates and missing pieces, for the router and in
    transit: the worker never raises, memory stays bounded, every fragment is
    accounted for once (held, merged or dropped), and the books balance."""
    from engine.control.stats import snapshot
    from engine.counters import Slow

    cfg = lab(tmp_path_factory.mktemp("h"), reasm="high_thresh = 20000\nlow_thresh = 10000",
              extra="[icmp]\nratelimit_ms = 0").config()
    h = Harness(cfg)
    try:
        frames, ts = [], []
        for k, (ident, off8, len8, mf, icmp) in enumerate(stream):
            proto = 1 if icmp else 17
            ip = IP(src="10.0.1.2", dst="10.0.1.1" if local else "10.0.2.2", id=ident,
                    proto=proto, frag=off8, flags="MF" if mf else 0) / Raw(
                bytes((off8 * 8 + j) & 0xFF for j in range(len8 * 8)))
            frames.append(bytes(Ether(src=MAC["h1"], dst=MAC["p0"]) / ip))
            ts.append(T0 * 10**9 + k * 10**8)
        for k in range(0, len(frames), 7):
            h.give(frames[k : k + 7], Slow.reassemble, ts[k : k + 7])
            assert h.sp.kernel.reasm.mem <= 20000 and h.sp.kernel.reasm.consistent()
        h.sp.finish()
        s = snapshot(h.mem, ["p0", "p1", "p2"])
        assert s.slow_taken == len(frames) and s.slow_balanced and s.slow_held == 0
        reasm = sum(v for k, v in s.slow_drop.items() if k.startswith("reasm_"))
        assert reasm + s.slow_merged == len(frames)
    finally:
        h.close()
