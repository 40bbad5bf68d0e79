"""engine.io.rss: the Toeplitz hash against Microsoft's published verification vectors,
the hash input built from scapy frames, and the redirection table."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from engine.io.pcap import PcapFrames, read_pcap, write_pcap
from engine.io.rss import DEFAULT_KEY, rss_queue, rss_tuple, toeplitz_hash

# Microsoft, "Verifying the RSS Hash Calculation", IPv4 table:
# (destination address, port), (source address, port), IPv4 only, IPv4 with TCP
MS_IPV4 = [
    (("161.142.100.80", 1766), ("66.9.149.187", 2794), 0x323E8FC2, 0x51CCC178),
    (("65.69.140.83", 4739), ("199.92.111.2", 14230), 0xD718262A, 0xC626B0EA),
    (("12.22.207.184", 38024), ("24.19.198.95", 12898), 0xD2D0A5DE, 0x5C2B394A),
    (("209.142.163.6", 2217), ("38.27.205.30", 48228), 0x82989176, 0xAFC7327F),
    (("202.188.127.2", 1303), ("153.39.163.191", 44251), 0x5D1809C5, 0x10E828A2),
]


def reference_hash(data: bytes, key: bytes = DEFAULT_KEY) -> int:
    """The pseudocode of Microsoft's "RSS hashing functions", bit by bit."""
    k = int.from_bytes(key, "big")
    kbits = len(key) * 8
    result = 0
    for i in range(len(data) * 8):
        if data[i // 8] & (0x80 >> (i % 8)):
            result ^= (k >> (kbits - 32 - i)) & 0xFFFFFFFF
    return result


def tuple_bytes(src: str, dst: str, sport: int | None = None, dport: int | None = None) -> bytes:
    out = socket.inet_aton(src) + socket.inet_aton(dst)
    if sport is not None:
        out += struct.pack(">HH", sport, dport)
    return out


def as_arrays(frames: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    blobs = [bytes(f) for f in frames]
    lengths = np.array([len(b) for b in blobs], dtype=np.uint32)
    offsets = np.zeros(len(blobs), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets, lengths


def frame_hashes(frames: list) -> list[int]:
    return toeplitz_hash(rss_tuple(*as_arrays(frames))).tolist()


# ---------------------------------------------------------------- the hash


def test_default_key_is_microsofts():
    assert DEFAULT_KEY == bytes([
        0x6D, 0x5A, 0x56, 0xDA, 0x25, 0x5B, 0x0E, 0xC2, 0x41, 0x67, 0x25, 0x3D, 0x43, 0xA3,
        0x8F, 0xB0, 0xD0, 0xCA, 0x2B, 0xCB, 0xAE, 0x7B, 0x30, 0xB4, 0x77, 0xCB, 0x2D, 0xA3,
        0x80, 0x30, 0xF2, 0x0C, 0x6A, 0x42, 0xB7, 0x3B, 0xBE, 0xAC, 0x01, 0xFA])


def test_microsoft_vectors_ipv4_with_tcp():
    rows = np.array([list(tuple_bytes(s, d, sp, dp)) for (d, dp), (s, sp), _, _ in MS_IPV4],
                    dtype=np.uint8)
    assert rows.shape == (5, 12)
    assert toeplitz_hash(rows).tolist() == [tcp for *_, tcp in MS_IPV4]


def test_microsoft_vectors_ipv4_only():
    rows = np.array([list(tuple_bytes(s, d)) for (d, _), (s, _), _, _ in MS_IPV4],
                    dtype=np.uint8)
    assert rows.shape == (5, 8)
    assert toeplitz_hash(rows).tolist() == [ip for _, _, ip, _ in MS_IPV4]


def test_reference_implementation_agrees_with_microsoft():
    for (d, dp), (s, sp), ip_only, with_tcp in MS_IPV4:
        assert reference_hash(tuple_bytes(s, d)) == ip_only
        assert reference_hash(tuple_bytes(s, d, sp, dp)) == with_tcp


@settings(max_examples=100, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(0, 40), st.integers(0, 36))))
def test_batch_matches_bit_by_bit_reference(rows):
    got = toeplitz_hash(rows)
    assert got.dtype == np.uint32 and got.shape == (rows.shape[0],)
    assert got.tolist() == [reference_hash(bytes(r)) for r in rows]


def test_other_key_and_key_length_limit():
    key = bytes(range(1, 53))  # a 52-byte key, as some NICs take
    rows = np.arange(48, dtype=np.uint8).reshape(1, 48)
    assert toeplitz_hash(rows, key).tolist() == [reference_hash(bytes(rows[0]), key)]
    with pytest.raises(ValueError, match="at most 36 input bytes"):
        toeplitz_hash(np.zeros((1, 37), np.uint8))


def test_trailing_zero_bytes_do_not_change_the_hash():
    """Why one (N, 12) input can carry 8-byte (addresses only) hash inputs."""
    (d, _), (s, _), ip_only, _ = MS_IPV4[0]
    row = np.array([list(tuple_bytes(s, d)) + [0, 0, 0, 0]], dtype=np.uint8)
    assert toeplitz_hash(row).tolist() == [ip_only]
    assert toeplitz_hash(np.zeros((3, 12), np.uint8)).tolist() == [0, 0, 0]


# ---------------------------------------------------------------- the hash input


def test_tcp_and_udp_frames_hash_the_four_tuple():
    frames = [Ether() / IP(src=s, dst=d) / TCP(sport=sp, dport=dp) / Raw(b"x" * 10)
              for (d, dp), (s, sp), _, _ in MS_IPV4]
    frames += [Ether() / IP(src=s, dst=d) / UDP(sport=sp, dport=dp)
               for (d, dp), (s, sp), _, _ in MS_IPV4]
    expect = [tcp for *_, tcp in MS_IPV4]
    assert frame_hashes(frames) == expect + expect
    tup = rss_tuple(*as_arrays(frames))
    assert tup.shape == (10, 12) and tup.dtype == np.uint8
    (d, dp), (s, sp), _, _ = MS_IPV4[0]
    assert bytes(tup[0]) == tuple_bytes(s, d, sp, dp)


def test_other_ipv4_hashes_the_addresses():
    frames = []
    for (d, _), (s, _), _, _ in MS_IPV4:
        frames.append(Ether() / IP(src=s, dst=d) / ICMP())
    (d, dp), (s, sp), ip_only, _ = MS_IPV4[1]
    frames.append(Ether() / IP(src=s, dst=d, proto=47) / Raw(bytes(20)))  # GRE
    assert frame_hashes(frames) == [ip for _, _, ip, _ in MS_IPV4] + [ip_only]


def test_fragments_hash_the_addresses_so_they_stay_together():
    (d, dp), (s, sp), ip_only, with_tcp = MS_IPV4[2]
    datagram = Ether() / IP(src=s, dst=d, id=77) / UDP(sport=sp, dport=dp) / Raw(bytes(3000))
    frags = [Ether(bytes(Ether() / f)) for f in fragment(datagram[IP], fragsize=1000)]
    assert len(frags) >= 3
    assert frags[0][IP].flags.MF and frags[0][IP].frag == 0
    hashes = frame_hashes(frags)
    assert hashes == [ip_only] * len(frags)
    # a lone last fragment (MF clear, offset != 0) and an unfragmented DF packet
    last = Ether() / IP(src=s, dst=d, frag=100) / Raw(bytes(50))
    whole = Ether() / IP(src=s, dst=d, flags="DF") / UDP(sport=sp, dport=dp)
    assert frame_hashes([last, whole]) == [ip_only, with_tcp]


def test_ip_options_move_the_ports():
    (d, dp), (s, sp), _, with_tcp = MS_IPV4[3]
    for nopts in (4, 8, 40):
        frame = bytes(Ether() / IP(src=s, dst=d, options=b"\x01" * nopts)
                      / TCP(sport=sp, dport=dp))
        assert frame[14] == 0x40 | (5 + nopts // 4)
        assert frame_hashes([frame]) == [with_tcp]


def test_non_ipv4_and_broken_frames_hash_zero():
    (d, dp), (s, sp), ip_only, _ = MS_IPV4[4]
    tcp = bytes(Ether() / IP(src=s, dst=d) / TCP(sport=sp, dport=dp))
    frames = [
        Ether() / ARP(pdst=d),
        Ether() / IPv6() / TCP(),
        Ether() / Dot1Q(vlan=5) / IP(src=s, dst=d) / TCP(sport=sp, dport=dp),
        tcp[:14 + 19],  # IPv4 header cut before the destination address ends
        tcp[:14] + bytes([0x65]) + tcp[15:],  # version 6 in an IPv4 ethertype
        tcp[:14] + bytes([0x44]) + tcp[15:],  # IHL 4
        b"",
        tcp[:12],
    ]
    assert frame_hashes(frames) == [0] * len(frames)
    # ports cut off: addresses only, as a NIC that cannot parse L4
    assert frame_hashes([tcp[:14 + 20 + 3]]) == [ip_only]


def test_accepts_pcapframes_and_unordered_offsets(tmp_path):
    frames = [Ether() / IP(src=s, dst=d) / TCP(sport=sp, dport=dp)
              for (d, dp), (s, sp), _, _ in MS_IPV4]
    path = tmp_path / "in.pcap"
    write_pcap(path, frames)
    pf = read_pcap(path)
    expect = [tcp for *_, tcp in MS_IPV4]
    assert toeplitz_hash(rss_tuple(pf)).tolist() == expect
    rev = PcapFrames(pf.data, pf.offsets[::-1].copy(), pf.lengths[::-1].copy(),
                     pf.ts_ns[::-1].copy())
    assert toeplitz_hash(rss_tuple(rev)).tolist() == expect[::-1]
    empty = rss_tuple(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.uint32))
    assert empty.shape == (0, 12) and toeplitz_hash(empty).shape == (0,)


# ---------------------------------------------------------------- the queues


def test_reta_is_the_low_bits_modulo_queues():
    h = np.array([0, 1, 2, 3, 127, 128, 129, 0xFFFFFFFF, 0x51CCC178], dtype=np.uint32)
    for nq in (1, 2, 3, 4, 7):
        assert rss_queue(h, nq).tolist() == [(int(x) & 127) % nq for x in h]
    assert rss_queue(h, 3, reta_size=512).tolist() == [(int(x) & 511) % 3 for x in h]
    with pytest.raises(ValueError):
        rss_queue(h, 0)
    with pytest.raises(ValueError):
        rss_queue(h, 2, reta_size=100)


def random_flows(n: int, seed: int = 7) -> list[tuple[str, str, int, int, int]]:
    rng = np.random.default_rng(seed)
    flows = []
    for _ in range(n):
        a, b = rng.integers(1, 2**32 - 1, 2)
        sp, dp = rng.integers(1, 65535, 2)
        proto = int(rng.choice([6, 17]))
        flows.append((socket.inet_ntoa(struct.pack(">I", int(a))),
                      socket.inet_ntoa(struct.pack(">I", int(b))), int(sp), int(dp), proto))
    return flows


def flow_packet(flow, i: int) -> Ether:
    src, dst, sp, dp, proto = flow
    l4 = TCP(sport=sp, dport=dp, seq=i) if proto == 6 else UDP(sport=sp, dport=dp)
    return Ether() / IP(src=src, dst=dst, id=i, ttl=64 - i % 30, tos=i % 4) / l4 / Raw(
        bytes(i % 200))


@pytest.mark.parametrize("nqueues", [2, 4])
def test_one_flow_one_queue(nqueues):
    flows = random_flows(20, seed=3)
    frames = [flow_packet(f, i) for f in flows for i in range(25)]
    q = rss_queue(toeplitz_hash(rss_tuple(*as_arrays(frames))), nqueues).reshape(20, 25)
    assert (q == q[:, :1]).all()
    assert len(set(q[:, 0].tolist())) > 1


@pytest.mark.parametrize("nqueues", [2, 4])
def test_flows_spread_over_queues(nqueues):
    flows = random_flows(2000)
    q = rss_queue(toeplitz_hash(rss_tuple(*as_arrays([flow_packet(f, 0) for f in flows]))),
                  nqueues)
    counts = np.bincount(q, minlength=nqueues)
    assert len(counts) == nqueues
    share = 2000 / nqueues
    # binomial spread: 5 standard deviations is far beyond chance for this seed
    assert (np.abs(counts - share) < 5 * np.sqrt(share)).all(), counts


@pytest.mark.parametrize("nqueues, reta_size", [(1, 128), (2, 128), (3, 64), (5, 512)])
def test_compiled_queues_equal_the_numpy_reference(nqueues, reta_size):
    """rss_queues (one compiled pass, what the pcap driver uses) against rss_queue ∘
    toeplitz_hash ∘ rss_tuple on frames of every kind: TCP/UDP with and without IP
    options, fragments, other protocols, other versions and IHLs, non-IP, short."""
    from engine.io.rss import rss_queues

    rng = np.random.default_rng(11)
    n = 20_000
    sizes = rng.integers(10, 120, n)
    data = rng.integers(0, 256, int(sizes.sum()), dtype=np.uint8)
    offsets = np.zeros(n, dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    kind = rng.integers(0, 10, n)
    ip = offsets[kind < 8]
    data[ip + 12], data[ip + 13] = 0x08, 0x00  # IPv4 ethertype for most
    data[ip + 14] = rng.choice([0x45, 0x46, 0x4F, 0x44, 0x65], len(ip))
    data[ip + 23] = rng.choice([6, 17, 1, 47], len(ip))
    frag = rng.integers(0, 4, len(ip))
    data[ip + 20] = np.where(frag == 0, 0x40, np.where(frag == 1, 0x20, 0x00))
    data[ip + 21] = np.where(frag == 2, 0x10, 0x00)
    want = rss_queue(toeplitz_hash(rss_tuple(data, offsets, sizes)), nqueues, reta_size)
    got = rss_queues(data, offsets, sizes, nqueues, reta_size=reta_size)
    assert np.array_equal(got, want)
    assert len(np.unique(want)) == nqueues  # every queue used: the cases differ
