"""IP options on the slow path (engine/slowpath/options.py), one named case per behaviour.

Inputs and expected outputs are built with scapy, independently of the code under
test; every byte of the outputs is compared. The kernel references are
`__ip_options_compile`, `ip_options_rcv_srr`, `ip_forward_options`,
`__ip_options_echo`/`ip_options_build` and `ip_options_fragment`; the module
`test_icmp.py` replays whole exchanges captured from a Linux 6.18 router.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_LSRR, IPOption_RR, IPOption_SSRR
from scapy.packet import Raw

from engine.shm.memory import NH_BROADCAST, NH_LOCAL, NH_NOROUTE, NH_UNICAST
from engine.slowpath import options as O
from engine.slowpath.options import (
    Drop,
    EchoedOptions,
    Options,
    ParamProblem,
    compile_options,
    echo_options,
    forward_options,
    fragment_options,
    strict_route_failed,
)


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def b4(s: str) -> bytes:
    return ipaddress.IPv4Address(s).packed


# The test topology of conftest.py: h1 10.0.1.2 ── p0 10.0.1.1/24, p1 10.0.2.1/24 ── h2.
H1, H2, P0, P1 = "10.0.1.2", "10.0.2.2", "10.0.1.1", "10.0.2.1"
LOCAL = frozenset({ip(P0), ip(P1), ip("10.0.1.255"), ip("10.0.2.255")})
NOW_MS = 1_700_000_000_123  # ms since the epoch
STAMP = (NOW_MS % 86_400_000).to_bytes(4, "big")  # what the options carry
PAYLOAD = UDP(sport=1111, dport=2222) / Raw(b"y" * 8)


def route_type(addr: int) -> int:
    """The FIB of the test topology, as NH_* types."""
    if addr in (ip(P0), ip(P1)):
        return NH_LOCAL
    if addr in (ip("10.0.1.255"), ip("10.0.2.255")):
        return NH_BROADCAST
    if addr >> 8 in (ip("10.0.1.0") >> 8, ip("10.0.2.0") >> 8):
        return NH_UNICAST
    if addr >> 16 == ip("10.9.0.0") >> 16:  # 10.9.0.0/16 via 10.0.2.254
        return NH_UNICAST
    return NH_NOROUTE


def pkt(opts: bytes | list, src: str = H1, dst: str = H2, **kw) -> bytes:
    """A UDP packet with the given options: raw bytes (scapy pads them to 4) or
    scapy option objects."""
    options = [Raw(opts)] if isinstance(opts, bytes) else opts
    return bytes(IP(src=src, dst=dst, options=options, **kw) / PAYLOAD)


def compiled(raw: bytes, *, accept_source_route: bool = True, pkt_host: bool = True):
    """compile_options as the slow path calls it for a packet from h1 on p0."""
    daddr = int.from_bytes(raw[16:20], "big")
    kind = route_type(daddr)
    is_local = kind == NH_LOCAL
    return compile_options(raw, is_local=is_local, accept_source_route=accept_source_route,
                           spec_dst=daddr if is_local else ip(P0), now_ms=NOW_MS,
                           local_addrs=LOCAL, unicast_route=kind == NH_UNICAST,
                           pkt_host=pkt_host, route_type=route_type)


def header_of(raw: bytes) -> bytes:
    return raw[: (raw[0] & 0xF) * 4]


def expect_header(raw: bytes, opts: bytes | list, *, keep_checksum: bool = True,
                  dst: str | None = None, ttl: int | None = None) -> bytes:
    """The header scapy builds for `raw` with other options (and the original
    checksum kept, as the kernel does at receive time, unless told otherwise)."""
    p = IP(raw)
    options = [Raw(opts)] if isinstance(opts, bytes) else opts
    q = IP(src=p.src, dst=dst or p.dst, ttl=p.ttl if ttl is None else ttl, id=p.id,
           proto=p.proto, options=options, chksum=p.chksum if keep_checksum else None)
    q.len = p.len
    return header_of(bytes(q))


def verify_checksum(header: bytes) -> bool:
    """scapy's own rendering of the header must carry the same checksum."""
    p = IP(header)
    got = p.chksum
    p.chksum = None
    return IP(bytes(p)).chksum == got


# ---------------------------------------------------------------- compile: basics


def test_nop_and_eol_zero_the_bytes_after_end():
    raw = pkt(b"\x01\x00\x07\x05\x01\x02\x03\x04")
    r = compiled(raw)
    assert isinstance(r, Options)
    assert r.header == expect_header(raw, b"\x01\x00" + b"\0" * 6)
    assert r.end == 21 and r.is_changed


def test_eol_with_zeros_after_is_unchanged():
    raw = pkt(b"\x01\x01\x00\x00")
    r = compiled(raw)
    assert isinstance(r, Options) and r.header == header_of(raw) and not r.is_changed


def test_record_route_gets_incoming_address_at_receive():
    raw = pkt([IPOption_RR(pointer=4, routers=["0.0.0.0", "0.0.0.0"])])
    r = compiled(raw)
    assert isinstance(r, Options) and r.rr == 20 and r.rr_needaddr
    assert r.header == expect_header(raw, [IPOption_RR(pointer=8, routers=[P0, "0.0.0.0"])])


def test_record_route_to_router_records_the_destination():
    raw = pkt([IPOption_RR(pointer=4, routers=["0.0.0.0"])], dst=P1)
    r = compiled(raw)
    assert r.header == expect_header(raw, [IPOption_RR(pointer=8, routers=[P1])])


def test_full_record_route_passes_unchanged():
    raw = pkt([IPOption_RR(pointer=8, routers=["1.2.3.4"])])
    r = compiled(raw)
    assert isinstance(r, Options) and r.rr == 20 and not r.rr_needaddr
    assert r.header == header_of(raw)


@pytest.mark.parametrize("opt,pointer", [
    (b"\x07\x07\x03\0\0\0\0", 22),  # pointer < 4
    (b"\x07\x09\x08" + b"\0" * 6, 22),  # pointer into a partial slot
    (b"\x07\x02", 21),  # length < 3
    (b"\x07\x03\x04\x07\x03\x04", 23),  # a second record route
])
def test_malformed_record_route_is_a_parameter_problem(opt, pointer):
    r = compiled(pkt(opt))
    assert isinstance(r, ParamProblem) and r.pointer == pointer


def test_timestamp_only_records_time():
    raw = pkt(b"\x44\x0c\x05\x00" + b"\0" * 8)
    r = compiled(raw)
    assert isinstance(r, Options) and r.ts == 20 and r.ts_needtime and not r.ts_needaddr
    assert r.header == expect_header(raw, b"\x44\x0c\x09\x00" + STAMP + b"\0" * 4)


def test_timestamp_with_address_records_incoming_address_and_time():
    raw = pkt(b"\x44\x0c\x05\x01" + b"\0" * 8)
    r = compiled(raw)
    assert r.ts_needaddr and r.ts_needtime
    assert r.header == expect_header(raw, b"\x44\x0c\x0d\x01" + b4(P0) + STAMP)


def test_prespecified_timestamp_stamps_only_our_address():
    ours = pkt(b"\x44\x14\x05\x03" + b4(P0) + b"\0" * 4 + b4("10.9.9.9") + b"\0" * 4)
    r = compiled(ours)
    assert r.ts_needtime and not r.ts_needaddr
    assert r.header == expect_header(
        ours, b"\x44\x14\x0d\x03" + b4(P0) + STAMP + b4("10.9.9.9") + b"\0" * 4)
    other = pkt(b"\x44\x14\x05\x03" + b4("10.9.9.9") + b"\0" * 4 + b4(P0) + b"\0" * 4)
    r = compiled(other)
    assert isinstance(r, Options) and r.ts == 20 and not r.ts_needtime
    assert r.header == header_of(other)


def test_prespecified_timestamp_counts_broadcast_as_ours():
    raw = pkt(b"\x44\x0c\x05\x03" + b4("0.0.0.0") + b"\0" * 4)  # inet_addr_type: broadcast
    assert compiled(raw).header == expect_header(raw, b"\x44\x0c\x0d\x03" + b4("0.0.0.0") + STAMP)


def test_undefined_timestamp_flag_passes_unchanged():
    raw = pkt(b"\x44\x08\x05\x02" + b"\0" * 4)
    r = compiled(raw)
    assert isinstance(r, Options) and r.ts == 20 and r.header == header_of(raw)


def test_full_timestamp_increments_overflow():
    raw = pkt(b"\x44\x08\x09\x21" + b"\0" * 4)
    r = compiled(raw)
    assert r.header == expect_header(raw, b"\x44\x08\x09\x31" + b"\0" * 4)


def test_full_prespecified_timestamp_does_not_count_overflow():
    raw = pkt(b"\x44\x0c\x0d\x03" + b"\0" * 8)
    assert compiled(raw).header == header_of(raw)


def test_timestamp_overflow_15_is_a_parameter_problem():
    r = compiled(pkt(b"\x44\x08\x09\xf0" + b"\0" * 4))
    assert isinstance(r, ParamProblem) and r.pointer == 23


@pytest.mark.parametrize("opt,pointer", [
    (b"\x44\x03\x05", 21),  # length < 4
    (b"\x44\x08\x04\x00" + b"\0" * 4, 22),  # pointer < 5
    (b"\x44\x0a\x09\x00" + b"\0" * 6, 22),  # pointer into a partial slot
    (b"\x44\x0c\x09\x01" + b"\0" * 8, 22),  # address+time needs 8 bytes
    (b"\x44\x04\x05\x00\x44\x04\x05\x00", 24),  # a second timestamp
])
def test_malformed_timestamp_is_a_parameter_problem(opt, pointer):
    r = compiled(pkt(opt))
    assert isinstance(r, ParamProblem) and r.pointer == pointer


def test_router_alert_is_recorded_and_passed():
    raw = pkt(b"\x94\x04\x00\x00")
    r = compiled(raw)
    assert isinstance(r, Options) and r.router_alert == 20 and r.header == header_of(raw)


def test_router_alert_too_short_is_a_parameter_problem():
    r = compiled(pkt(b"\x01\x94\x03\x00"))
    assert isinstance(r, ParamProblem) and r.pointer == 22


def test_unknown_options_pass_unchanged():
    raw = pkt(b"\x1e\x04\xab\xcd\x82\x04\x00\x00")  # experimental, security
    r = compiled(raw)
    assert isinstance(r, Options) and r.header == header_of(raw) and not r.is_changed


@pytest.mark.parametrize("opt,pointer", [
    (b"\x1e\x01\x00\x00", 20),  # length < 2
    (b"\x1e\x09\x00\x00", 20),  # running past the header
    (b"\x01\x01\x01\x1e", 23),  # a type byte with no length byte
    (b"\x86\x08\x00\x00\x00\x01\x00\x00", 22),  # CIPSO with no DOI configured
    (b"\x01\x86\x06\x00\x00\x00\x01\x00", 22),  # CIPSO shorter than 8
])
def test_malformed_options_are_a_parameter_problem(opt, pointer):
    r = compiled(pkt(opt))
    assert isinstance(r, ParamProblem) and r.pointer == pointer


def test_parameter_problem_keeps_what_was_compiled_before():
    raw = pkt(b"\x07\x07\x04\0\0\0\0\x44\x03\x05\x00\x01")
    r = compiled(raw)
    assert isinstance(r, ParamProblem) and r.pointer == 28
    assert r.opts.rr == 20 and r.opts.rr_needaddr
    assert r.header == expect_header(raw, b"\x07\x07\x08" + b4(P0) + b"\x44\x03\x05\x00\x01")


# ---------------------------------------------------------------- source routes


def test_source_route_not_accepted_is_dropped_even_in_transit():
    for raw in (pkt([IPOption_LSRR(pointer=4, routers=["10.0.9.9"])]),
                pkt([IPOption_SSRR(pointer=4, routers=[H2])], dst=P0)):
        assert compiled(raw, accept_source_route=False) == Drop(O.DROP_SOURCE_ROUTE)


def test_malformed_source_route_not_accepted_is_still_a_parameter_problem():
    r = compiled(pkt(b"\x83\x07\x03\x0a\x00\x09\x09"), accept_source_route=False)
    assert isinstance(r, ParamProblem) and r.pointer == 22
    r = compiled(pkt(b"\x83\x03\x04\x89\x03\x04"), accept_source_route=False)
    assert isinstance(r, ParamProblem) and r.pointer == 23  # a second source route


def test_lsrr_in_transit_is_forwarded_untouched():
    raw = pkt(b"\x01" + bytes(IPOption_LSRR(pointer=4, routers=["10.0.9.9"])))
    r = compiled(raw)
    assert isinstance(r, Options) and r.srr == 21 and not r.srr_is_hit
    assert r.header == header_of(raw)
    out = forward_options(r.header, r, ip(P1), decrement_ttl=True)
    want = b"\x01" + bytes(IPOption_LSRR(pointer=4, routers=["10.0.9.9"]))
    assert out == expect_header(raw, want, keep_checksum=False, ttl=63)


def test_ssrr_in_transit_is_a_parameter_problem_at_16():
    raw = pkt(b"\x01\x01\x01\x01" + bytes(IPOption_SSRR(pointer=4, routers=[H2])))
    r = compiled(raw)
    assert isinstance(r, ParamProblem) and r.pointer == 16


def test_source_route_to_router_takes_next_hop_from_the_list():
    raw = pkt(b"\x01" + bytes(IPOption_LSRR(pointer=4, routers=[H2, "10.0.9.9"])), dst=P0)
    r = compiled(raw)
    assert isinstance(r, Options) and r.srr_is_hit and r.nexthop == ip(H2)
    assert not r.is_strictroute
    out = forward_options(r.header, r, ip(P1), decrement_ttl=True)
    assert out == expect_header(
        raw, b"\x01" + bytes(IPOption_LSRR(pointer=8, routers=[P1, "10.0.9.9"])),
        keep_checksum=False, dst=H2, ttl=63)


def test_source_route_hop_through_our_other_address():
    # the first hop is the router again: "superfast loopback forward"
    raw = pkt(b"\x01" + bytes(IPOption_LSRR(pointer=4, routers=[P1, H2])), dst=P0)
    r = compiled(raw)
    assert r.srr_is_hit and r.nexthop == ip(H2)
    want = b"\x01" + bytes(IPOption_LSRR(pointer=4, routers=[P1, H2]))
    assert r.header == expect_header(raw, want, dst=P1)
    out = forward_options(r.header, r, ip(P1))
    assert out == expect_header(raw, b"\x01" + bytes(IPOption_LSRR(pointer=12, routers=[P1, P1])),
                                keep_checksum=False, dst=H2)


def test_exhausted_source_route_to_router_is_delivered():
    raw = pkt(b"\x01" + bytes(IPOption_LSRR(pointer=12, routers=["10.0.1.7", "10.0.1.8"])), dst=P0)
    r = compiled(raw)
    assert isinstance(r, Options) and r.srr == 21 and not r.srr_is_hit
    assert r.header == header_of(raw)


def test_ssrr_via_gateway_fails():
    raw = pkt([IPOption_SSRR(pointer=4, routers=["10.9.0.5"])], dst=P0)
    r = compiled(raw)
    assert r.srr_is_hit and r.is_strictroute and r.nexthop == ip("10.9.0.5")
    assert strict_route_failed(r, uses_gateway=True)
    assert not strict_route_failed(r, uses_gateway=False)
    lsrr = compiled(pkt([IPOption_LSRR(pointer=4, routers=["10.9.0.5"])], dst=P0))
    assert not strict_route_failed(lsrr, uses_gateway=True)


def test_source_route_pointer_into_partial_slot_is_a_parameter_problem():
    r = compiled(pkt(b"\x89\x06\x04\x0a\x00\x02", dst=P0))
    assert isinstance(r, ParamProblem) and r.pointer == 22  # the option's pointer byte


@pytest.mark.parametrize("hop", ["10.200.0.1", "10.0.2.255", "127.0.0.1", "224.0.0.1"])
def test_source_route_to_unroutable_hop_is_dropped(hop):
    r = compiled(pkt([IPOption_LSRR(pointer=4, routers=[hop])], dst=P0))
    assert r == Drop(O.DROP_SRR_ROUTE)


def test_source_route_in_transit_without_unicast_route_is_dropped():
    r = compiled(pkt([IPOption_LSRR(pointer=4, routers=[H2])], dst="10.200.0.1"))
    assert r == Drop(O.DROP_SRR_ROUTE)


def test_source_route_in_frame_not_for_us_is_dropped():
    r = compiled(pkt([IPOption_LSRR(pointer=4, routers=[H2])], dst=P0), pkt_host=False)
    assert r == Drop(O.DROP_SRR_NOT_HOST)


# ---------------------------------------------------------------- forward


def test_forward_record_route_holds_outgoing_address():
    raw = pkt([IPOption_RR(pointer=4, routers=["0.0.0.0", "0.0.0.0"])])
    r = compiled(raw)
    out = forward_options(r.header, r, ip(P1), decrement_ttl=True)
    assert out == expect_header(raw, [IPOption_RR(pointer=8, routers=[P1, "0.0.0.0"])],
                                keep_checksum=False, ttl=63)


def test_forward_keeps_incoming_address_in_timestamp():
    raw = pkt(b"\x44\x0c\x05\x01" + b"\0" * 8)
    r = compiled(raw)
    out = forward_options(r.header, r, ip(P1))
    assert out == expect_header(raw, b"\x44\x0c\x0d\x01" + b4(P0) + STAMP, keep_checksum=False)


def test_forward_source_route_rewrites_timestamp_address():
    opts = (bytes(IPOption_LSRR(pointer=4, routers=[H2])) + b"\x44\x0c\x05\x01" + b"\0" * 8
            + bytes(IPOption_RR(pointer=4, routers=["0.0.0.0"])))
    raw = pkt(opts, dst=P0)
    r = compiled(raw)
    out = forward_options(r.header, r, ip(P1), decrement_ttl=True)
    want = (bytes(IPOption_LSRR(pointer=8, routers=[P1])) + b"\x44\x0c\x0d\x01" + b4(P1) + STAMP
            + bytes(IPOption_RR(pointer=8, routers=[P1])))
    assert out == expect_header(raw, want, keep_checksum=False, dst=H2, ttl=63)


def test_forward_without_changes_only_fixes_checksum():
    raw = pkt(b"\x94\x04\x00\x00")
    r = compiled(raw)
    assert forward_options(r.header, r, ip(P1)) == header_of(raw)


# ---------------------------------------------------------------- echo


def test_echo_record_route_takes_one_more_slot():
    raw = pkt([IPOption_RR(pointer=4, routers=["0.0.0.0", "0.0.0.0"])], ttl=1)
    r = compiled(raw)
    e = echo_options(r.header, r)
    assert e.daddr == ip(H1) and e.rr == 0 and e.rr_needaddr
    # KERNEL-NOTES: a TTL-1 packet with record route gets [10.0.1.1, 10.0.1.1] back
    want = bytes(IPOption_RR(pointer=12, routers=[P0, P0])) + b"\0"
    assert e.build(ip(P0), NOW_MS) == want


def test_echo_timestamp_takes_one_more_entry():
    raw = pkt(b"\x44\x14\x05\x01" + b"\0" * 16)
    r = compiled(raw)
    e = echo_options(r.header, r)
    assert e.build(ip(P0), NOW_MS) == b"\x44\x14\x15\x01" + b4(P0) + STAMP + b4(P0) + STAMP


def test_echo_prespecified_timestamp_stamps_next_entry_if_ours():
    raw = pkt(b"\x44\x14\x05\x03" + b4(P0) + b"\0" * 4 + b4(P1) + b"\0" * 4)
    r = compiled(raw)
    e = echo_options(r.header, r)
    assert e.build(ip(P0), NOW_MS) == b"\x44\x14\x15\x03" + b4(P0) + STAMP + b4(P1) + STAMP


def test_echo_full_options_are_copied():
    raw = pkt(b"\x44\x08\x09\x21" + b"\0" * 4 + bytes(IPOption_RR(pointer=8, routers=["1.2.3.4"])))
    r = compiled(raw)
    e = echo_options(r.header, r)
    assert e.build(ip(P0), NOW_MS) == (bytes(IPOption_RR(pointer=8, routers=["1.2.3.4"]))
                                       + b"\x44\x08\x09\x31" + b"\0" * 4 + b"\0")


def test_echo_reverses_source_route():
    raw = pkt(b"\x01" + bytes(IPOption_LSRR(pointer=12, routers=["10.0.1.7", "10.0.1.8"])), dst=P0)
    r = compiled(raw)
    e = echo_options(r.header, r)
    assert e.daddr == ip("10.0.1.8") and e.final_daddr == ip(H1)
    want = bytes(IPOption_LSRR(pointer=4, routers=["10.0.1.7", H1])) + b"\0"
    assert e.build(ip(P0), NOW_MS) == want


def test_echo_source_route_drops_first_hop_equal_to_source():
    raw = pkt(b"\x01" + bytes(IPOption_SSRR(pointer=16, routers=[H1, "10.0.1.7", "10.0.1.8"])),
              dst=P0)
    r = compiled(raw)
    e = echo_options(r.header, r)
    assert e.daddr == ip("10.0.1.8") and e.is_strictroute
    want = bytes(IPOption_SSRR(pointer=4, routers=["10.0.1.7", H1])) + b"\0"
    assert e.build(ip(P0), NOW_MS) == want


def test_echo_unused_source_route_is_not_echoed():
    raw = pkt(b"\x01\x01\x01\x01" + bytes(IPOption_SSRR(pointer=4, routers=[H2])))
    r = compiled(raw)
    e = echo_options(r.header, r.opts)
    assert e.data == b"" and e.daddr == ip(H1)


def test_echo_skips_router_alert_and_nops():
    raw = pkt(b"\x94\x04\x00\x00\x01\x01\x01\x01")
    r = compiled(raw)
    assert echo_options(r.header, r).data == b""


def test_echo_refuses_record_route_with_no_whole_slot():
    raw = pkt(b"\x07\x09\x04" + b"\0" * 6, ttl=1)
    r = compiled(raw)
    assert isinstance(r, Options) and echo_options(r.header, r) is None


def test_echo_of_parameter_problem_about_cipso_copies_it():
    raw = pkt(b"\x86\x08\x00\x00\x00\x01\x00\x00")
    r = compiled(raw)
    cipso = b"\x86\x08\x00\x00\x00\x01\x00\x00"
    assert echo_options(r.header, r.opts).build(ip(P0), NOW_MS) == cipso


# ---------------------------------------------------------------- fragment


def test_fragment_options_nop_out_non_copied():
    rr = bytes(IPOption_RR(pointer=8, routers=[P1]))
    lsrr = bytes(IPOption_LSRR(pointer=4, routers=[H2]))
    ts = b"\x44\x08\x09\x00" + STAMP
    ra = b"\x94\x04\x00\x00"
    opts = rr + lsrr + ts + ra + b"\x01"
    assert fragment_options(opts) == b"\x01" * 7 + lsrr + b"\x01" * 8 + ra + b"\x01"


def test_fragment_options_stop_at_end_and_bad_length():
    assert fragment_options(b"\x00\x07\x03\x04") == b"\x00\x07\x03\x04"
    assert fragment_options(b"\x07\x09\x04\x00") == b"\x07\x09\x04\x00"


# ---------------------------------------------------------------- properties

option_bytes = st.integers(min_value=1, max_value=10).flatmap(
    lambda words: st.binary(min_size=4 * words, max_size=4 * words))
known = st.sampled_from([0, 1, 7, 68, 130, 131, 134, 136, 137, 148, 30])


@st.composite
def plausible_options(draw):
    """Option bytes biased towards real option types and plausible lengths."""
    out = b""
    while len(out) < 40 and draw(st.booleans()):
        kind = draw(known)
        if kind in (0, 1):
            out += bytes([kind])
            continue
        length = draw(st.integers(0, 14))
        ptr = draw(st.integers(0, 16))
        flag = draw(st.integers(0, 255))
        body = draw(st.binary(min_size=max(0, length - 4), max_size=max(0, length - 4)))
        out += bytes([kind, length, ptr, flag])[: max(2, min(length, 4))] + body
    out = out[:40]
    return out + b"\0" * (-len(out) % 4) if out else b"\x01\x01\x01\x01"


@settings(max_examples=400, deadline=None)
@given(st.one_of(option_bytes, plausible_options()), st.sampled_from([H2, P0, "10.200.0.1"]),
       st.booleans())
def test_compile_never_raises_and_outputs_verify(opts, dst, accept):
    raw = pkt(opts, dst=dst, ttl=2)
    r = compiled(raw, accept_source_route=accept)
    assert isinstance(r, Options | ParamProblem | Drop)
    if isinstance(r, Drop):
        return
    assert len(r.header) == len(header_of(raw))
    if isinstance(r, ParamProblem):
        assert 20 <= r.pointer < len(r.header) or r.pointer == 16
    if isinstance(r, Options):
        out = forward_options(r.header, r, ip(P1), decrement_ttl=True)
        assert len(out) == len(r.header) and verify_checksum(out + raw[len(out):])
        frag = fragment_options(r.options)
        assert len(frag) == len(r.options)
    base = r if isinstance(r, Options) else r.opts
    e = echo_options(r.header, base)
    if e is not None:
        assert isinstance(e, EchoedOptions)
        built = e.build(ip(P0), NOW_MS)
        assert len(built) % 4 == 0 and len(built) <= 40


# ---------------------------------------------------------------- a Linux 6.18 router
# Packets sent by h1 10.0.1.2 through a Linux 6.18.44 router (p0 10.0.1.1/24, p1
# 10.0.2.1/24, accept_source_route=1) and what h2 10.0.2.2 received, byte for byte.
# Timestamps carry the router's clock (ms since midnight), given per case.

FORWARDED = {
    "record_route_outgoing": (
        "4800003000010000401155ae0a0001020a000202070b04000000000000000000045708ae0010f5df",
        "48000030000100003f1151a20a0001020a000202070b080a0002010000000000045708ae0010f5df",
        0),
    "timestamp_address_incoming": (
        "4800003000010000401117ac0a0001020a000202440c05010000000000000000045708ae0010f5df",
        "48000030000100003f1154ab0a0001020a000202440c0d010a000101025aaea5045708ae0010f5df",
        0x025AAEA5),
    "timestamp_only": (
        "4700002c00010000401118b50a0001020a0002024408050000000000045708ae0010f5df",
        "4700002c000100003f115f250a0001020a00020244080900025ab435045708ae0010f5df",
        0x025AB435),
    "timestamp_full_overflow": (
        "4700002c00010000401114950a0001020a0002024408092000000000045708ae0010f5df",
        "4700002c000100003f1115850a0001020a0002024408093000000000045708ae0010f5df",
        0),
    "timestamp_undefined_flag": (
        "4700002c00010000401118b30a0001020a0002024408050200000000045708ae0010f5df",
        "4700002c000100003f1119b30a0001020a0002024408050200000000045708ae0010f5df",
        0),
    "record_route_full": (
        "4700002c0001000040114cb20a0001020a0002020707080102030400045708ae0010f5df",
        "4700002c000100003f114db20a0001020a0002020707080102030400045708ae0010f5df",
        0),
    "end_zeroes_the_rest": (
        "4700002c00010000401155b20a0001020a0002020100070501020304045708ae0010f5df",
        "4700002c000100003f1161bd0a0001020a0002020100000000000000045708ae0010f5df",
        0),
    "router_alert": (
        "46000028000100004011cebc0a0001020a00020294040000045708ae0010f5df",
        "46000028000100003f11cfbc0a0001020a00020294040000045708ae0010f5df",
        0),
    "lsrr_to_router": (
        "4800003000010000401136280a0001020a00010101830b040a0002020a000909045708ae0010f6e0",
        "48000030000100003f1136240a0001020a00020201830b080a0002010a000909045708ae0010f6e0",
        0),
    "lsrr_transit_untouched": (
        "4700002c000100004011462d0a0001020a000202018307040a000909045708ae0010f5df",
        "4700002c000100003f11472d0a0001020a000202018307040a000909045708ae0010f5df",
        0),
    "lsrr_to_router_with_timestamp_and_rr": (
        "4c000040000100004011c0420a0001020a0001018307040a000202440c050100000000000000000707"
        "04000000000000045708ae0010f6e0",
        "4c000040000100003f11ac500a0001020a0002028307080a000201440c0d010a000201025ad5a90707"
        "080a0002010000045708ae0010f6e0",
        0x025AD5A9),
    "lsrr_hop_through_our_other_address": (
        "480000300001000040113d300a0001020a00010101830b040a0002010a000202045708ae0010f6e0",
        "48000030000100003f113d280a0001020a00020201830b0c0a0002010a000201045708ae0010f6e0",
        0),
}


@pytest.mark.parametrize("name", sorted(FORWARDED))
def test_forwarding_matches_linux_router(name):
    sent_hex, got_hex, clock = FORWARDED[name]
    payload = bytes.fromhex("7979797979797979")
    raw = bytes.fromhex(sent_hex) + payload
    daddr = int.from_bytes(raw[16:20], "big")
    local = route_type(daddr) == NH_LOCAL
    r = compile_options(raw, is_local=local, accept_source_route=True,
                        spec_dst=daddr if local else ip(P0), now_ms=clock, local_addrs=LOCAL,
                        unicast_route=route_type(daddr) == NH_UNICAST, route_type=route_type)
    assert isinstance(r, Options)
    out = forward_options(r.header, r, ip(P1), decrement_ttl=True) + raw[len(r.header):]
    assert out.hex() == (bytes.fromhex(got_hex) + payload).hex()


def test_echo_without_options_goes_back_to_source():
    e = echo_options(pkt([]))
    assert e.data == b"" and e.daddr == ip(H1) and e.build(ip(P0), NOW_MS) == b""
