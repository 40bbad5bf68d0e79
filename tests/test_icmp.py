"""ICMP on the slow path (engine/slowpath/icmp.py), one named case per behaviour.

Inputs and expected packets are built with scapy, independently of the code under
test, and every byte is compared; only the IP ID of router-originated packets is
normalised. The last section replays exchanges captured from a Linux 6.18.44
router in network namespaces (h1 10.0.1.2 ── 10.0.1.1 router 10.0.2.1 ── h2
10.0.2.2, 10.9.0.0/16 via 10.0.2.254, accept_source_route=1, icmp_ratelimit=0):
the packet sent and the kernel's answer, byte for byte.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.packet import Raw
from scapy.utils import checksum

from engine.shm.memory import NH_LOCAL, NH_NOROUTE, NH_UNICAST
from engine.slowpath import icmp as I
from engine.slowpath import options as O
from engine.slowpath.icmp import (
    INADDR_DUMMY,
    IcmpRateLimiter,
    IpIdGenerator,
    build_echo_reply,
    build_error,
    icmp_error_source,
    is_echo_request,
    may_send_error,
    select_source,
)


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


H1, H2, P0, P1 = "10.0.1.2", "10.0.2.2", "10.0.1.1", "10.0.2.1"
P0_ADDRS = [(ip(P0), 24)]
P1_ADDRS = [(ip(P1), 24)]
LOCAL = frozenset({ip(P0), ip(P1), ip("10.0.1.255"), ip("10.0.2.255")})
MS = 1_000_000  # ns


def udp(dst: str = H2, src: str = H1, size: int = 8, **kw) -> bytes:
    return bytes(IP(src=src, dst=dst, **kw) / UDP(sport=1111, dport=2222) / Raw(b"y" * size))


def same_but_id(ours: bytes, want: bytes) -> None:
    """Compare two IP packets byte for byte, the IP ID (and so the header checksum)
    of router-originated packets normalised to 0."""
    def norm(b: bytes) -> bytes:
        p = IP(b)
        p.id = 0
        p.chksum = None
        return bytes(p)
    assert norm(ours).hex() == norm(want).hex()
    assert header_ok(ours)


def header_ok(packet: bytes) -> bool:
    """The IP header checksum verifies (scapy's RFC 1071 sum over the header)."""
    return checksum(packet[: (packet[0] & 0xF) * 4]) == 0


# ---------------------------------------------------------------- may_send_error


@pytest.mark.parametrize("inner", [3, 4, 5, 11, 12, 1, 2, 6, 7, 9, 10])
def test_no_error_about_an_icmp_error(inner):
    p = bytes(IP(src=H1, dst=H2, ttl=1) / ICMP(type=inner) / Raw(b"x" * 28))
    assert not may_send_error(p, True, icmp_type=I.ICMP_TIME_EXCEEDED)


@pytest.mark.parametrize("inner", [0, 8, 13, 14, 15, 16, 17, 18])
def test_errors_about_icmp_queries_are_allowed(inner):
    p = bytes(IP(src=H1, dst=H2, ttl=1) / ICMP(type=inner) / Raw(b"x" * 8))
    assert may_send_error(p, True, icmp_type=I.ICMP_TIME_EXCEEDED)


def test_no_error_about_unknown_icmp_types():
    p = bytes(IP(src=H1, dst=H2, ttl=1) / ICMP(type=40) / Raw(b"x" * 8))
    assert not may_send_error(p, True, icmp_type=I.ICMP_TIME_EXCEEDED)


def test_no_error_about_short_icmp_header_per_kernel_notes():
    short = bytes(IP(src=H1, dst=H2, ttl=1, proto=1) / Raw(b"\x08\x00\xf7\xff"))
    assert not may_send_error(short, True, icmp_type=I.ICMP_TIME_EXCEEDED)
    # ... as observed on a 6.18.44 router: only an empty ICMP part gets no error
    assert may_send_error(short, True, icmp_type=I.ICMP_TIME_EXCEEDED, min_icmp_len=1)
    empty = bytes(IP(src=H1, dst=H2, ttl=1, proto=1))
    assert not may_send_error(empty, True, icmp_type=I.ICMP_TIME_EXCEEDED, min_icmp_len=1)


def test_redirect_about_icmp_error_is_not_sent_but_echo_reply_could_be():
    p = bytes(IP(src=H1, dst=H2) / ICMP(type=3) / Raw(b"x" * 28))
    assert not may_send_error(p, True, icmp_type=I.ICMP_REDIRECT)
    assert may_send_error(p, True, icmp_type=I.ICMP_ECHOREPLY)  # not an error type


def test_no_error_about_non_first_fragment():
    assert not may_send_error(udp(frag=1, flags="MF"), True)
    assert not may_send_error(udp(frag=185), True)
    assert may_send_error(udp(flags="MF"), True)  # the first fragment


@pytest.mark.parametrize("dst", ["255.255.255.255", "224.0.0.5", "239.1.2.3"])
def test_no_error_about_broadcast_or_multicast_destination(dst):
    assert not may_send_error(udp(dst=dst), True)


def test_no_error_about_subnet_broadcast_destination():
    assert not may_send_error(udp(dst="10.0.2.255"), True, dst_broadcast=True)


@pytest.mark.parametrize("src", ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"])
def test_no_error_about_martian_source(src):
    assert not may_send_error(udp(src=src), True)


@pytest.mark.parametrize("src", ["10.0.1.255", "0.1.2.3"])
def test_errors_about_valid_unusual_sources(src):
    # KERNEL-NOTES: subnet-broadcast source still gets time exceeded; 0/8 is unicast
    assert may_send_error(udp(src=src, ttl=1), True, icmp_type=I.ICMP_TIME_EXCEEDED)


def test_no_error_about_frame_not_for_our_mac():
    assert not may_send_error(udp(ttl=1), False)


# ---------------------------------------------------------------- build_error


def test_time_exceeded_bytes():
    orig = udp(ttl=1, tos=0xbb)
    out = build_error(orig, 11, 0, 0, ip(P0), ip(H1), 0x1234)
    want = IP(src=P0, dst=H1, ttl=64, id=0x1234, tos=0xc0 | (0xbb & 0x1e)) / ICMP(type=11) / orig
    assert out == bytes(want)


def test_error_has_no_df_and_ttl_64():
    out = IP(build_error(udp(flags="DF"), 3, 0, 0, ip(P0), ip(H1), 1))
    assert out.flags == 0 and out.ttl == 64 and out.frag == 0


def test_frag_needed_carries_mtu():
    orig = udp(size=1472, flags="DF")
    out = build_error(orig, 3, 4, 1400, ip(P0), ip(H1), 7)
    want = IP(src=P0, dst=H1, ttl=64, id=7, tos=0xc0) / ICMP(type=3, code=4, nexthopmtu=1400)
    want = bytes(want / Raw(orig[: 576 - 28]))
    assert out == want and len(out) == 576


def test_redirect_carries_gateway():
    orig = udp(dst="10.9.1.1")
    out = build_error(orig, 5, 1, ip("10.0.1.254"), ip(P0), ip(H1), 9)
    want = IP(src=P0, dst=H1, ttl=64, id=9, tos=0xc0) / ICMP(type=5, code=1, gw="10.0.1.254") / orig
    assert out == bytes(want)


def test_parameter_problem_carries_pointer():
    orig = udp(options=[Raw(b"\x44\x08\x09\xf0" + b"\0" * 4)])
    out = build_error(orig, 12, 0, 23, ip(P0), ip(H1), 3)
    want = IP(src=P0, dst=H1, ttl=64, id=3, tos=0xc0) / ICMP(type=12, ptr=23) / orig
    assert out == bytes(want)


def test_quote_is_cut_to_576_with_echoed_options():
    orig = udp(size=1400, options=[IPOption_RR(pointer=8, routers=[P0, "0.0.0.0"])])
    echoed = bytes(IPOption_RR(pointer=12, routers=[P0, P0])) + b"\0"
    out = build_error(orig, 11, 0, 0, ip(P0), ip(H1), 5, echoed)
    assert len(out) == 576
    want = IP(src=P0, dst=H1, ttl=64, id=5, tos=0xc0,
              options=[IPOption_RR(pointer=12, routers=[P0, P0])]) / ICMP(type=11)
    want = bytes(want / Raw(orig[: 576 - 20 - 12 - 8]))
    assert out == want


def test_quote_is_cut_to_a_smaller_route_mtu_and_nothing_below_a_header():
    orig = udp(size=1000)
    out = build_error(orig, 3, 1, 0, ip(P0), ip(H1), 1, mtu=300)
    assert len(out) == 300 and IP(out)[ICMP].type == 3
    assert build_error(orig, 3, 1, 0, ip(P0), ip(H1), 1, mtu=68) is not None
    big_opts = bytes(IPOption_RR(pointer=4, routers=["0.0.0.0"] * 9)) + b"\0"
    assert build_error(orig, 3, 1, 0, ip(P0), ip(H1), 1, big_opts, mtu=68) is None


def test_port_unreachable_for_udp_to_router():
    orig = udp(dst=P1)
    src = icmp_error_source(orig, orig_is_local=True, egress_addrs=P0_ADDRS, target=ip(H1))
    assert src == ip(P1)  # answered from the address it was sent to
    out = build_error(orig, 3, 3, 0, src, ip(H1), 77)
    want = IP(src=P1, dst=H1, ttl=64, id=77, tos=0xc0) / ICMP(type=3, code=3) / orig
    assert out == bytes(want)


# ---------------------------------------------------------------- echo reply


def test_echo_reply_bytes():
    req = bytes(IP(src=H1, dst=P1, tos=0xb7, ttl=5, flags="DF")
                / ICMP(type=8, code=3, id=0x77, seq=9) / Raw(b"hello world"))
    assert is_echo_request(req)
    out = build_echo_reply(req, ip(P1), 0x4242)
    want = IP(src=P1, dst=H1, ttl=64, tos=0xb7, id=0x4242) / ICMP(type=0, code=3, id=0x77, seq=9)
    assert out == bytes(want / Raw(b"hello world"))


def test_echo_reply_with_record_route():
    req = bytes(IP(src=H1, dst=P0, options=[IPOption_RR(pointer=4, routers=["0.0.0.0"] * 2)])
                / ICMP(type=8, id=1, seq=2) / Raw(b"abc"))
    r = O.compile_options(req, is_local=True, accept_source_route=False, spec_dst=ip(P0),
                          now_ms=0, local_addrs=LOCAL)
    e = O.echo_options(r.header, r)
    out = build_echo_reply(req, ip(P0), 1, e.build(ip(P0), 0), dst=e.daddr)
    want = IP(src=P0, dst=H1, ttl=64, id=1, options=[IPOption_RR(pointer=12, routers=[P0, P0])])
    assert out == bytes(want / ICMP(type=0, id=1, seq=2) / Raw(b"abc"))


def test_large_echo_reply_is_one_datagram_to_fragment():
    req = bytes(IP(src=H1, dst=P0) / ICMP(type=8) / Raw(b"z" * 3000))
    out = build_echo_reply(req, ip(P0), 1)
    assert len(out) == len(req) and IP(out)[ICMP].type == 0


def test_is_echo_request_checks():
    good = bytes(IP(src=H1, dst=P0) / ICMP(type=8) / Raw(b"a"))
    bad_sum = bytes(IP(src=H1, dst=P0) / ICMP(type=8, chksum=1) / Raw(b"a"))
    short = bytes(IP(src=H1, dst=P0, proto=1) / Raw(b"\x08\x00\xf7\xff"))
    reply = bytes(IP(src=H1, dst=P0) / ICMP(type=0))
    tcp = bytes(IP(src=H1, dst=P0) / TCP())
    assert is_echo_request(good)
    assert not any(map(is_echo_request, (bad_sum, short, reply, tcp)))


# ---------------------------------------------------------------- source address


def test_source_for_connected_destination_is_that_subnets_address():
    addrs = [(ip("10.0.1.1"), 24), (ip("192.168.5.1"), 24)]
    assert select_source(addrs, ip("192.168.5.9")) == ip("192.168.5.1")
    assert select_source(addrs, ip("10.0.1.9")) == ip("10.0.1.1")


def test_source_for_gateway_route_matches_the_gateway():
    addrs = [(ip("10.0.1.1"), 24), (ip("192.168.5.1"), 24)]
    assert select_source(addrs, ip("192.168.5.254")) == ip("192.168.5.1")
    assert select_source(addrs, ip("172.16.0.1")) == ip("10.0.1.1")  # none matches: first


def test_source_on_link_route_without_gateway_is_first_primary():
    addrs = [(ip("10.0.1.1"), 24), (ip("192.168.5.1"), 24)]
    assert select_source(addrs, 0) == ip("10.0.1.1")


def test_secondary_address_is_never_chosen():
    addrs = [(ip("10.0.1.1"), 24), (ip("10.0.1.50"), 24), (ip("10.0.1.60"), 25)]
    assert select_source(addrs, ip("10.0.1.9")) == ip("10.0.1.1")
    assert I._primary_addresses(addrs) == [(ip("10.0.1.1"), 24), (ip("10.0.1.60"), 25)]


def test_source_fallbacks():
    assert select_source([], ip("10.0.1.9"), other_addrs=[ip(P0), ip(P1)]) == ip(P0)
    assert select_source([], ip("10.0.1.9")) == 0
    orig = udp(ttl=1)
    assert icmp_error_source(orig, orig_is_local=False, egress_addrs=[], target=0) == INADDR_DUMMY
    assert icmp_error_source(orig, orig_is_local=False, egress_addrs=P0_ADDRS,
                             target=ip(H1)) == ip(P0)


# ---------------------------------------------------------------- rate limiting


def sent(lim: IcmpRateLimiter, times_ms, dst=H1, t=11, code=0) -> list[int]:
    return [ms for ms in times_ms if lim.allow(ip(dst), t, code, ms * MS)]


def test_rate_limit_burst_of_six_then_one_per_interval():
    lim = IcmpRateLimiter(1000, global_limit=False)
    assert sent(lim, [0] * 10) == [0] * 6
    assert sent(lim, [500, 999, 1000, 1500, 2000, 2001]) == [1000, 2000]


def test_rate_limit_is_per_destination():
    lim = IcmpRateLimiter(1000, global_limit=False)
    assert len(sent(lim, [0] * 10, dst=H1)) == 6
    assert len(sent(lim, [0] * 10, dst="10.0.1.3")) == 6


def test_rate_limit_refills_to_full_burst():
    lim = IcmpRateLimiter(100, global_limit=False)
    assert len(sent(lim, [0] * 10)) == 6
    assert len(sent(lim, [10_000] * 10)) == 6
    assert len(sent(lim, [10_050] * 10)) == 0


def test_rate_limit_only_for_ratemask_types():
    lim = IcmpRateLimiter(1000, global_limit=False)
    for t, code in ((3, 1), (4, 0), (11, 0), (12, 0)):
        assert len(sent(lim, [0] * 10, dst=f"10.0.7.{t}", t=t, code=code)) == 6
    for t, code in ((3, 4), (0, 0), (5, 1), (8, 0), (14, 0), (40, 0)):
        assert len(sent(lim, [0] * 10, dst="10.0.7.99", t=t, code=code)) == 10


def test_rate_limit_zero_is_unlimited_per_destination():
    lim = IcmpRateLimiter(0, global_limit=False)
    assert len(sent(lim, [0] * 100)) == 100


def test_global_limit_bounds_a_burst_and_refills():
    lim = IcmpRateLimiter(0, seed=1)
    burst = [lim.allow(ip(f"10.1.{i // 250}.{i % 250 + 1}"), 11, 0, 0) for i in range(200)]
    n = sum(burst)
    assert 25 <= n <= 100 and not any(burst[n:])  # 50 credits, 0-2 taken per message
    assert not lim.allow(ip(H1), 11, 0, 19 * MS)  # refills no sooner than HZ/50
    assert lim.allow(ip(H1), 11, 0, 20 * MS)
    again = IcmpRateLimiter(0, seed=1)
    assert [again.allow(ip(f"10.1.{i // 250}.{i % 250 + 1}"), 11, 0, 0)
            for i in range(200)] == burst  # deterministic for a seed


def test_global_limit_skips_unlimited_types():
    lim = IcmpRateLimiter(0, seed=1)
    assert all(lim.allow(ip(H1), 0, 0, 0) for _ in range(500))  # echo replies


def test_route_error_limit_shares_the_peer():
    # A kernel router with icmp_ratelimit=1000 answered a burst of 10 packets with
    # no route from one host with exactly 2 net unreachables (ip_error's cost 1 s and
    # the ICMP limit take from the same inet_peer tokens), and a burst of 10 TTL-1
    # packets with 6 time exceeded.
    lim = IcmpRateLimiter(1000)
    out = [lim.allow_route_error(ip(H1), 0) and lim.allow(ip(H1), 3, 0, 0) for _ in range(10)]
    assert sum(out) == 2
    lim = IcmpRateLimiter(0, global_limit=False)
    assert sum(lim.allow_route_error(ip(H1), 0) for _ in range(10)) == 5


def test_redirects_back_off_then_stop_then_reset():
    lim = IcmpRateLimiter(1000)
    src = ip(H1)
    ok = [t for t in range(0, 20_000) if lim.allow_redirect(src, t * MS)]
    # first at once, then each after 20 ms << n: 0, 41, 82+... up to 9 redirects
    assert len(ok) == 9 and ok[0] == 0 and ok[1] == 41
    gaps = [b - a for a, b in zip(ok, ok[1:], strict=False)]
    assert gaps == [41, 81, 161, 321, 641, 1281, 2561, 5121]
    assert not lim.allow_redirect(src, 30_000 * MS)  # still ignored: silence restarts
    assert lim.allow_redirect(src, (30_000 + 20_481) * MS)


# ---------------------------------------------------------------- IP IDs


def test_ip_ids_are_deterministic_per_seed_and_not_a_global_counter():
    a = IpIdGenerator(7)
    b = IpIdGenerator(7)
    seq_a = [a.next_id(ip(H1), ip(P0), 1, 5 * MS) for _ in range(5)]
    seq_b = [b.next_id(ip(H1), ip(P0), 1, 5 * MS) for _ in range(5)]
    assert seq_a == seq_b
    starts = {IpIdGenerator(s).next_id(ip(H1), ip(P0), 1, 5 * MS) for s in range(20)}
    assert len(starts) > 15


def test_ip_ids_count_up_within_a_tick_and_jump_with_time():
    g = IpIdGenerator(3)
    first = g.next_id(ip(H1), ip(P0), 1, 5 * MS)
    assert [g.next_id(ip(H1), ip(P0), 1, 5 * MS) for _ in range(3)] == [
        (first + k) & 0xFFFF for k in (1, 2, 3)]
    after = g.next_id(ip(H1), ip(P0), 1, 105 * MS)
    assert 0 <= (after - first - 4) & 0xFFFF < 100  # a random jump below the 100 ms elapsed
    assert g.next_id(ip(H1), ip(P0), 1, 105 * MS, segs=3) == (after + 1) & 0xFFFF
    assert g.next_id(ip(H1), ip(P0), 1, 105 * MS) == (after + 4) & 0xFFFF


def test_ip_ids_are_per_flow():
    g = IpIdGenerator(3)
    a0 = g.next_id(ip(H1), ip(P0), 1, 0)
    others = [g.next_id(ip(f"10.3.0.{i}"), ip(P0), 1, 0) for i in range(1, 50)]
    assert g.next_id(ip(H1), ip(P0), 1, 0) == (a0 + 1) & 0xFFFF
    assert len(set(others)) > 40  # other destinations use other counters


# ---------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=1600), st.sampled_from([3, 5, 11, 12]),
       st.integers(0, 15), st.integers(0, 0xFFFFFFFF), st.integers(68, 9000),
       st.integers(0, 255))
def test_errors_always_verify(payload, t, code, info, mtu, tos):
    orig = bytes(IP(src=H1, dst=H2, tos=tos) / Raw(payload))
    out = build_error(orig, t, code, info, ip(P0), ip(H1), 1, mtu=mtu)
    assert out is not None and len(out) <= min(mtu, 576)
    assert header_ok(out)
    icmp = out[20:]
    assert checksum(icmp) == 0
    assert icmp[8:] == orig[: len(icmp) - 8]


# ---------------------------------------------------------------- a Linux 6.18 router

ROUTER_MIDNIGHT_MS = 0x02595E1D  # the router's clock when it stamped the prespec case


def fib(addr: int) -> int:
    if addr in (ip(P0), ip(P1)):
        return NH_LOCAL
    if addr >> 8 in (ip("10.0.1.0") >> 8, ip("10.0.2.0") >> 8) or addr >> 16 == 0x0A09:
        return NH_UNICAST
    return NH_NOROUTE


def router_error(sent_hex: str, icmp_type: int, code: int, info: int = 0) -> bytes | None:
    """What the slow path sends for a packet from h1 (port p0): compile the options,
    then the error of the given kind, as the kernel's ip_rcv_options and icmp_send."""
    raw = bytes.fromhex(sent_hex)
    daddr = int.from_bytes(raw[16:20], "big")
    local = fib(daddr) == NH_LOCAL
    spec_dst = daddr if local else select_source(P0_ADDRS, ip(H1))
    r = O.compile_options(raw, is_local=local, accept_source_route=True, spec_dst=spec_dst,
                          now_ms=ROUTER_MIDNIGHT_MS, local_addrs=LOCAL,
                          unicast_route=fib(daddr) == NH_UNICAST, route_type=fib)
    if isinstance(r, O.ParamProblem):
        icmp_type, code, info, opts = 12, 0, r.pointer, r.opts
    else:
        opts = r
    quoted = r.header + raw[len(r.header):]
    assert may_send_error(quoted, True, icmp_type=icmp_type, min_icmp_len=1)
    e = O.echo_options(r.header, opts)
    if e is None:
        return None
    src = icmp_error_source(quoted, orig_is_local=local, egress_addrs=P0_ADDRS, target=e.daddr)
    return build_error(quoted, icmp_type, code, info, src, e.daddr, 0,
                       e.build(src, ROUTER_MIDNIGHT_MS))


KERNEL = {
    # TTL 1 with record route: time exceeded carrying [10.0.1.1, 10.0.1.1]; the
    # quoted header has the receive-time address and its original, stale checksum
    "rr_ttl1": (
        "4800003200010000011194ac0a0001020a000202070b040000000000000000000001000200128e69"
        "78787878787878787878", (11, 0),
        "48c0005a9fcd00004001abf20a0001010a000102070b0c0a0001010a000101000b00071c00000000"
        "4800003200010000011194ac0a0001020a000202070b080a00010100000000000001000200128e69"
        "78787878787878787878"),
    "ssrr_transit_pointer_16": (
        "48000030000100004011cfa30a0001020a000202010101018907040a00020200045708ae0010f5df"
        "7979797979797979", None,
        "45c0004cb4bd00004001af310a0001010a0001020c00fb241000000048000030000100004011cfa3"
        "0a0001020a000202010101018907040a00020200045708ae0010f5df7979797979797979"),
    "rr_then_short_timestamp": (
        "4800003000010000401152680a0001020a000202070704000000004403050001045708ae0010f5df"
        "7979797979797979", None,
        "47c00054b520000040019cb40a0001010a0001020707080a000101000c00ea191c00000048000030"
        "00010000401152680a0001020a0002020707080a0001014403050001045708ae0010f5df79797979"
        "79797979"),
    "cipso": (
        "4700002c000100004011dbb30a0001020a0002028608000000010000045708ae0010f5df79797979"
        "79797979", None,
        "47c00050b5300000400126b10a0001010a00010286080000000100000c00f524160000004700002c"
        "000100004011dbb30a0001020a0002028608000000010000045708ae0010f5df7979797979797979"),
    "cipso_short": (
        "4700002c00010000401159370a0001020a0002020186060000000100045708ae0010f5df79797979"
        "79797979", None,
        "47c00050b5aa0000400126390a0001010a00010286060000000100000c00f524160000004700002c"
        "00010000401159370a0001020a0002020186060000000100045708ae0010f5df7979797979797979"),
    "timestamp_overflow_15": (
        "4700002c00010000401113c50a0001020a000202440809f000000000045708ae0010f5df79797979"
        "79797979", None,
        "45c00048b5e600004001ae0c0a0001010a0001020c00f424170000004700002c0001000040111"
        "3c50a0001020a000202440809f000000000045708ae0010f5df7979797979797979"),
    "ssrr_to_router_via_gateway": (
        "4700002c000100004011c7ac0a0001020a0001018907040a09000500045708ae0010f7d379797979"
        "79797979", (3, 5),
        "45c00048b64400004001adae0a0001010a0001020305122c000000004700002c000100004011c7ac"
        "0a0001020a0001018907040a09000500045708ae0010f7d37979797979797979"),
    "prespecified_timestamp_ttl1": (
        "4a0000380001000001113d980a0001020a000202441405030a000101000000000a00020100000000"
        "045708ae0010f5df7979797979797979", (11, 0),
        "4ac00068b7180000400176b40a0001010a000102441415030a00010102595e1d0a00020102595e1d"
        "0b00a3ae000000004a0000380001000001113d980a0001020a00020244140d030a00010102595e1d"
        "0a00020100000000045708ae0010f5df7979797979797979"),
    "ssrr_pointer_in_partial_slot": (
        "4700002c000100004011d5ab0a0001020a0001018906040a00020000045708ae0010f6e079797979"
        "79797979", None,
        "45c00048b75c00004001ac960a0001010a0001020c00f423160000004700002c000100004011d5ab"
        "0a0001020a0001018906040a00020000045708ae0010f6e07979797979797979"),
    "exhausted_lsrr_port_unreachable": (
        "480000300001000040113f1c0a0001020a00010101830b0c0a0001070a000108045708ae0010f6e0"
        "7979797979797979", (3, 3),
        "48c000585db50000400173060a0001010a000108830b040a0001070a000102000303132100000000"
        "480000300001000040113f1c0a0001020a00010101830b0c0a0001070a000108045708ae0010f6e0"
        "7979797979797979"),
    "exhausted_lsrr_first_hop_is_source": (
        "490000340001000040112f120a0001020a00010101830f100a0001020a0001070a000108045708ae"
        "0010f6e07979797979797979", (3, 3),
        "48c0005c5dc00000400172f70a0001010a000108830b040a0001070a000102000303132100000000"
        "490000340001000040112f120a0001020a00010101830f100a0001020a0001070a000108045708ae"
        "0010f6e07979797979797979"),
    "four_byte_icmp_ttl1": (
        "45000018000100000101a2e10a0001020a0002020800f7ff", (11, 0),
        "45c00034b6d000004001ad360a0001010a0001020b00f4ff0000000045000018000100000101a2e1"
        "0a0001020a0002020800f7ff"),
}


@pytest.mark.parametrize("name", sorted(KERNEL))
def test_matches_linux_router(name):
    sent_hex, kind, answer = KERNEL[name]
    t, code = kind or (12, 0)
    ours = router_error(sent_hex, t, code)
    same_but_id(ours, bytes.fromhex(answer))


def test_no_answer_like_linux_when_record_route_has_no_whole_slot():
    # RR of length 9: the kernel's __ip_options_echo fails, no time exceeded at all
    assert router_error("4800003000010000011194b00a0001020a000202070904000000000000000000"
                        "045708ae0010f5df7979797979797979", 11, 0) is None


def test_echo_reply_matches_linux_router():
    req = bytes.fromhex("45b7002100010000400164220a0001020a0001010803b41a0007000968656c6c6f")
    answer = bytes.fromhex("45b70021a01a00004001c4080a0001010a0001020003bc1a0007000968656c6c6f")
    same_but_id(build_echo_reply(req, ip(P0), 0), answer)
