"""Fragmentation (`engine.slowpath.frag`): every byte against scapy-built fragments.

scapy's own `fragment()` agrees with the kernel's `ip_do_fragment` for packets without
DF and without options (same split, offsets continued, MF kept on the last piece of a
refragmented non-last fragment), so it is the reference there; for DF and options the
expected fragments are built field by field with scapy from KERNEL-NOTES and
`ip_frag_next`/`ip_options_fragment`.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import (
    IP,
    UDP,
    IPOption_LSRR,
    IPOption_NOP,
    IPOption_Router_Alert,
    IPOption_RR,
    IPOption_Timestamp,
)
from scapy.layers.inet import fragment as scapy_fragment
from scapy.packet import Raw

from engine.pipeline.checksum import ip_checksum
from engine.slowpath.frag import fragment, ip_options_fragment
from engine.slowpath.reasm import COMPLETE, Reassembler


def payload(n: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def udp_packet(n: int, **ip) -> bytes:
    """An IPv4/UDP packet whose IP payload is n bytes."""
    fields = dict(src="10.0.1.2", dst="10.0.2.2", id=0x4242, ttl=63)
    fields.update(ip)
    return bytes(IP(**fields) / UDP(sport=1000, dport=2000) / Raw(payload(n - 8)))


def split_payload(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)]


# -- against scapy's fragment() ---------------------------------------------------


@pytest.mark.parametrize(
    "size, mtu",
    [
        (3000, 1500),  # 1480 + 1480 + 40
        (2960, 1500),  # exactly two full fragments
        (1481, 1500),  # one byte over
        (9000, 1500),
        (65515, 1500),  # the largest datagram
        (5000, 1006),  # (1006 - 20) & ~7 = 984: odd MTU rounds down
        (200, 68),  # the IPv4 minimum MTU: 48 bytes per fragment
        (100, 28),  # 8 bytes per fragment, the smallest possible
    ],
)
def test_matches_scapy(size, mtu):
    pkt = udp_packet(size)
    step = (mtu - 20) & ~7
    expected = [bytes(f) for f in scapy_fragment(IP(pkt), fragsize=step)]
    got = fragment(pkt, mtu)
    assert got == expected
    assert all(len(f) <= mtu for f in got)
    assert all(len(f) - 20 == step for f in got[:-1])


def test_fits_is_returned_unchanged():
    pkt = udp_packet(1480, flags="DF")
    assert fragment(pkt, 1500) == [pkt]
    # L2 padding past tot_len is not part of the packet
    assert fragment(pkt + b"\0" * 6, 1500) == [pkt]


def test_refragment_non_last_fragment_keeps_mf_and_offset():
    """A fragment that itself has MF and an offset (forwarded onto a smaller MTU)."""
    whole = udp_packet(4000)
    middle = [bytes(f) for f in scapy_fragment(IP(whole), fragsize=1480)][1]  # offset 1480, MF
    got = fragment(middle, 576)
    expected = [bytes(f) for f in scapy_fragment(IP(middle), fragsize=(576 - 20) & ~7)]
    assert got == expected
    assert all(IP(f).flags == "MF" for f in got)  # last piece keeps the original MF
    assert IP(got[0]).frag == 1480 // 8


def test_refragment_last_fragment():
    whole = udp_packet(4000)
    last = [bytes(f) for f in scapy_fragment(IP(whole), fragsize=1480)][-1]
    got = fragment(last, 600)
    assert got == [bytes(f) for f in scapy_fragment(IP(last), fragsize=576)]
    assert IP(got[-1]).flags == 0


def test_df_and_reserved_bit_are_cleared():
    """`ip_frag_next` writes the fragment field from scratch: DF (and the reserved bit)
    of the original are gone; the caller has already decided DF does not stop it."""
    pkt = udp_packet(3000, flags="DF+evil")
    got = fragment(pkt, 1500)
    plain = udp_packet(3000)
    assert got == fragment(plain, 1500)


def test_keep_df_marks_every_fragment():
    """IPSKB_FRAG_PMTU: a datagram reassembled from DF fragments is refragmented with
    DF on every piece."""
    pkt = udp_packet(3000)
    got = fragment(pkt, 1500, keep_df=True)
    exp = [IP(f) for f in fragment(pkt, 1500)]
    for e in exp:
        e.flags = e.flags | 2  # DF
        del e.chksum
    assert got == [bytes(e) for e in exp]


def test_fragment_fields_each():
    pkt = udp_packet(3000, tos=0xB8)
    frags = [IP(f) for f in fragment(pkt, 1500)]
    assert [f.frag for f in frags] == [0, 185, 370]
    assert [str(f.flags) for f in frags] == ["MF", "MF", ""]
    assert [f.len for f in frags] == [1500, 1500, 60]
    for f in frags:
        assert (f.id, f.ttl, f.tos, f.proto, f.src, f.dst) == (
            0x4242,
            63,
            0xB8,
            17,
            "10.0.1.2",
            "10.0.2.2",
        )
        redo = f.copy()
        del redo.chksum
        assert bytes(redo) == bytes(f)


# -- options ---------------------------------------------------------------------


def opt_packet(options, n=3000, **ip) -> bytes:
    fields = dict(src="10.0.1.2", dst="10.0.2.2", id=77, ttl=63, proto=17, options=options)
    fields.update(ip)
    return bytes(IP(**fields) / Raw(payload(n)))


def expected_fragments(pkt: bytes, mtu: int, first_opts, later_opts, more_last=False, base=0):
    """Fragments built by scapy: first carries first_opts, the rest later_opts."""
    ip = IP(pkt)
    ihl = ip.ihl * 4
    data = pkt[ihl : ip.len]
    step = (mtu - ihl) & ~7
    pieces = split_payload(data, step)
    out = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        out.append(
            bytes(
                IP(
                    src=ip.src,
                    dst=ip.dst,
                    id=ip.id,
                    ttl=ip.ttl,
                    tos=ip.tos,
                    proto=ip.proto,
                    flags="MF" if (not last or more_last) else 0,
                    frag=(base + i * step) // 8,
                    options=first_opts if i == 0 else later_opts,
                )
                / Raw(piece)
            )
        )
    return out


def test_options_non_copied_become_nops():
    """KERNEL-NOTES: record route and timestamp are not copied: NOPs in later
    fragments, header length unchanged; LSRR and router alert are repeated."""
    rr = IPOption_RR(routers=["10.0.1.1", "0.0.0.0"], pointer=8)  # 11 bytes
    lsrr = IPOption_LSRR(routers=["10.9.0.1"], pointer=4)  # 7 bytes
    ra = IPOption_Router_Alert()  # 4 bytes
    ts = IPOption_Timestamp(flg=0, timestamp=0, pointer=5)  # 8 bytes
    opts = [rr, lsrr, ra, ts, IPOption_NOP(), IPOption_NOP()]  # 32 bytes -> IHL 13
    pkt = opt_packet(opts)
    later = [IPOption_NOP()] * 11 + [lsrr, ra] + [IPOption_NOP()] * 8 + [IPOption_NOP()] * 2
    got = fragment(pkt, 1000)
    assert got == expected_fragments(pkt, 1000, opts, later)
    assert all(IP(f).ihl == 13 for f in got)
    assert all(len(f) - 52 == (1000 - 52) & ~7 for f in got[:-1])


def test_options_after_eol_untouched():
    """The walk stops at end-of-options, as `ip_options_fragment` does."""
    hdr = bytearray(opt_packet([IPOption_RR(routers=["1.1.1.1"])], 0)[:28])
    # RR (7 bytes) then EOL: bytes after EOL must stay even if they look like options.
    assert hdr[20] == 7 and hdr[27] == 0
    out = ip_options_fragment(bytes(hdr))
    assert out[20:27] == b"\x01" * 7 and out[27] == 0
    hdr2 = bytearray(24 + 8)
    hdr2[0] = 0x48
    hdr2[20:24] = b"\x00\x07\x07\x04"  # EOL first: nothing after it changes
    assert ip_options_fragment(bytes(hdr2)) == bytes(hdr2)


def test_options_malformed_length_stops_walk():
    hdr = bytearray(28)
    hdr[0] = 0x47
    hdr[20:28] = bytes([0x07, 0x01, 0x44, 0x20, 0, 0, 0, 0])  # RR with length 1
    assert ip_options_fragment(bytes(hdr)) == bytes(hdr)
    hdr[20:28] = bytes([0x01, 0x07, 0x09, 4, 0, 0, 0, 0])  # NOP, then RR overrunning
    assert ip_options_fragment(bytes(hdr)) == bytes(hdr)


def test_refragment_first_fragment_reduces_options():
    """An offset-0 fragment with MF: options are reduced (first fragmentation of its
    bytes), the last piece keeps MF."""
    rr = IPOption_RR(routers=["0.0.0.0"])
    lsrr = IPOption_LSRR(routers=["10.9.0.1"])
    opts = [rr, lsrr, IPOption_NOP(), IPOption_NOP()]  # 16 bytes
    pkt = opt_packet(opts, 2000, flags="MF")
    later = [IPOption_NOP()] * 7 + [lsrr] + [IPOption_NOP()] * 2
    assert fragment(pkt, 600) == expected_fragments(pkt, 600, opts, later, more_last=True)


def test_refragment_later_fragment_keeps_options():
    """A non-first fragment: its options were already reduced by whoever fragmented it
    first; the kernel leaves them alone (only offset 0 runs ip_options_fragment)."""
    rr = IPOption_RR(routers=["0.0.0.0"])
    opts = [rr, IPOption_NOP()]
    pkt = opt_packet(opts, 2000, flags="MF", frag=100)
    assert fragment(pkt, 600) == expected_fragments(pkt, 600, opts, opts, more_last=True, base=800)


def test_custom_fragment_options_hook():
    calls = []

    def hook(header: bytes) -> bytes:
        calls.append(header)
        return header[:20] + b"\x01" * (len(header) - 20)

    pkt = opt_packet([IPOption_LSRR(routers=["10.9.0.1"]), IPOption_NOP()], 2000)
    got = fragment(pkt, 600, fragment_options=hook)
    assert len(calls) == 1 and len(calls[0]) == 28
    assert all(IP(f).options == [IPOption_NOP()] * 8 for f in got[1:])
    assert IP(got[0]).options[0].option == 3
    with pytest.raises(ValueError):
        fragment(pkt, 600, fragment_options=lambda h: h[:24])


# -- the frag_list fast path (refragmenting a reassembled datagram) ----------------


def irregular_fragments(pkt: bytes, sizes: list[int], df: bool = False) -> list[bytes]:
    """`pkt` cut by hand into fragments with these payload sizes (scapy-built)."""
    ip = IP(pkt)
    body = pkt[ip.ihl * 4 :]
    out, off = [], 0
    for i, n in enumerate(sizes):
        last = i == len(sizes) - 1
        flags = (0 if last else 1) | (2 if df else 0)
        f = IP(pkt[: ip.ihl * 4])
        f.flags, f.frag, f.len, f.chksum = flags, off // 8, None, None
        if i:
            f.options = []
        out.append(bytes(f / Raw(body[off : off + n])))
        off += n
    return out


def test_geometry_follows_original_fragments():
    """A reassembled datagram goes out in its original fragments when they fit."""
    pkt = udp_packet(2400)
    originals = irregular_fragments(pkt, [600, 1000, 800])
    r = Reassembler(4 << 20, 3 << 20, 30 * 10**9)
    res = [r.add(f, 0) for f in originals][-1]
    assert res.datagram == pkt
    assert res.sizes == [600, 1000, 800] and res.largest == 1020
    assert fragment(res.datagram, 1500, geometry=res.sizes) == originals
    # even with room for the whole: the kernel refragments whenever frag_max_size is set
    assert fragment(res.datagram, 9000, geometry=res.sizes) == originals


def test_geometry_that_does_not_fit_takes_the_slow_path():
    pkt = udp_packet(2400)
    assert fragment(pkt, 800, geometry=[600, 1000, 800]) == fragment(pkt, 800)
    # a non-last size not a multiple of 8, or sizes that do not add up
    assert fragment(pkt, 1500, geometry=[604, 996, 800]) == fragment(pkt, 1500)
    assert fragment(pkt, 1500, geometry=[600, 1000]) == fragment(pkt, 1500)


def test_geometry_clears_df():
    """`ip_fraglist_init` writes MF alone into the first header: DF is gone."""
    pkt = udp_packet(2400, flags="DF")
    originals = irregular_fragments(pkt, [600, 1000, 800], df=True)
    r = Reassembler(4 << 20, 3 << 20, 30 * 10**9)
    res = [r.add(f, 0) for f in originals][-1]
    assert res.df and IP(res.datagram).flags == "DF"
    got = fragment(res.datagram, 1500, keep_df=res.df, geometry=res.sizes)
    assert got == irregular_fragments(udp_packet(2400), [600, 1000, 800])


def test_geometry_with_options():
    """Options on the fast path: the first keeps all, later ones get the reduced
    header (the fast path's ip_options_fragment on the second fragment)."""
    rr = IPOption_RR(routers=["0.0.0.0"])
    lsrr = IPOption_LSRR(routers=["10.9.0.1"])
    pkt = opt_packet([rr, lsrr, IPOption_NOP(), IPOption_NOP()], 2000)
    got = fragment(pkt, 1500, geometry=[1000, 1000])
    assert got == expected_fragments(
        pkt,
        1036,
        [rr, lsrr, IPOption_NOP(), IPOption_NOP()],
        [IPOption_NOP()] * 7 + [lsrr] + [IPOption_NOP()] * 2,
    )


# -- refusals ---------------------------------------------------------------------


def test_mtu_too_small():
    pkt = udp_packet(100)
    with pytest.raises(ValueError):
        fragment(pkt, 27)  # 7 bytes of room
    assert len(fragment(pkt, 28)) == 13  # 8 bytes each: 12 * 8 + 4
    opts = opt_packet([IPOption_LSRR(routers=["1.2.3.4"] * 9)], 100)  # IHL 15: 60 bytes
    with pytest.raises(ValueError):
        fragment(opts, 67)
    assert all(len(f) <= 68 for f in fragment(opts, 68))


def test_malformed_input():
    with pytest.raises(ValueError):
        fragment(b"\x45" + b"\0" * 10, 1500)
    pkt = bytearray(udp_packet(3000))
    pkt[2:4] = (4000).to_bytes(2, "big")  # tot_len past the buffer
    with pytest.raises(ValueError):
        fragment(bytes(pkt), 1500)
    with pytest.raises(ValueError):
        fragment(b"\x65" + bytes(udp_packet(3000))[1:], 1500)  # version 6


def test_offset_overflow_refused():
    """A fragment at offset 64,000 carrying 3,000 bytes would need offsets past 65,528."""
    frag = bytes(IP(id=1, flags="MF", frag=8000, proto=17) / Raw(payload(3000)))
    with pytest.raises(ValueError):
        fragment(frag, 1500)


# -- properties -------------------------------------------------------------------

OPTION_SETS = [
    [],
    [IPOption_RR(routers=["0.0.0.0"] * 3)],
    [IPOption_LSRR(routers=["10.9.0.1", "10.9.0.2"]), IPOption_Router_Alert()],
    [IPOption_Timestamp(flg=0, timestamp=0), IPOption_NOP(), IPOption_LSRR(routers=["1.1.1.1"])],
]


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 20000),
    mtu=st.integers(68, 9000),
    opts=st.sampled_from(range(len(OPTION_SETS))),
    tos=st.integers(0, 255),
    ident=st.integers(0, 0xFFFF),
)
def test_fragment_properties_and_round_trip(size, mtu, opts, tos, ident):
    pkt = opt_packet(OPTION_SETS[opts], size, tos=tos, id=ident)
    ihl = (pkt[0] & 0xF) * 4
    frags = fragment(pkt, mtu)
    if len(pkt) <= mtu:
        assert frags == [pkt]
        return
    step = (mtu - ihl) & ~7
    offset = 0
    for i, f in enumerate(frags):
        ip = IP(f)
        assert len(f) <= mtu and ip.len == len(f) and ip.ihl * 4 == ihl
        assert ip_checksum(f[:ihl]) == 0
        assert ip.frag * 8 == offset
        assert bool(ip.flags.MF) == (i < len(frags) - 1) and not ip.flags.DF
        assert f[:2] == pkt[:2] and f[4:6] == pkt[4:6] and f[8:10] == pkt[8:10]
        assert f[12:20] == pkt[12:20]
        if i < len(frags) - 1:
            assert len(f) - ihl == step
        offset += len(f) - ihl
    assert b"".join(f[ihl:] for f in frags) == pkt[ihl:]
    # Round trip: the reassembled datagram is the original, options and all (the
    # first fragment keeps every option).
    r = Reassembler(4 << 20, 3 << 20, 30 * 10**9)
    results = [r.add(f, 0) for f in reversed(frags)]
    assert results[-1].status == COMPLETE
    assert results[-1].datagram == pkt
    assert results[-1].largest == max(len(f) for f in frags)
