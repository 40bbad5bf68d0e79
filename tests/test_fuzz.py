"""Hostile input: random and mutated frames through the whole pipeline, fragment
floods against the reassembly memory limit, ICMP floods against the rate limit.

In-process (perf/fuzz_pipeline.py's `Pipeline`: a forwarding worker's `process` and
the slow path's `poll` on a real engine segment and FIB) for volume, plus one
end-to-end run of `fwd run` on pcap ports. The million-frame run is
`perf/fuzz_pipeline.py --frames 1000000` (see perf/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption, fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from engine.counters import Icmp, Snmp, Unsent, index
from engine.io.pcap import read_pcap, write_pcap

from conftest import MAC, Lab, no_shm_leak

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from fuzz_pipeline import FRAME, T0, Pipeline, fuzz, make_frames  # noqa: E402


def check(result) -> None:
    assert result.balanced, result
    assert result.internal_errors == 0
    assert result.pool_free == result.pool_size
    assert result.reasm_high_water <= result.high_thresh


def test_numpy_fuzz_50k_frames_balance_and_return_every_buffer():
    r = fuzz(50_000, seed=11)
    check(r)
    assert r.frames == 50_000
    # the mutations reach every ending: forwarded, dropped, the slow path's three
    assert min(r.forwarded, r.dropped, r.slow_forwarded, r.slow_delivered,
               r.slow_dropped) > 100


def test_make_frames_covers_the_hostile_cases():
    rows, lengths = make_frames(20_000, np.random.default_rng(3))
    ihl = rows[:, 14] & 0xF
    tot = rows[:, 16].astype(int) << 8 | rows[:, 17]
    frag = (rows[:, 20].astype(int) << 8 | rows[:, 21]) & 0x3FFF
    assert (lengths == 0).any() and (lengths < 14).sum() > 10  # zero and runt frames
    assert (ihl < 5).sum() > 100 and (ihl == 15).sum() > 100  # bad and huge IHL
    assert (tot == 0).sum() > 10 and (tot == 65535).sum() > 10
    assert (frag != 0).sum() > 1000
    assert ((rows[:, 12] == 8) & (rows[:, 13] == 6)).sum() > 1000  # ARP


TEMPLATES = [
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2") / UDP()
    / Raw(b"x" * 40),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.1.1") / TCP(dport=22),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.1.1") / ICMP()
    / Raw(b"p" * 20),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1) / UDP(),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", flags="MF",
                                             id=7) / Raw(b"f" * 64),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", frag=8,
                                             id=7) / Raw(b"g" * 64),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", options=[
        IPOption(b"\x07\x0b\x04" + bytes(8) + b"\x00")]) / UDP(),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.1.1", options=[
        IPOption(b"\x44\x0c\x05\x00" + bytes(8))]) / ICMP(),
    Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.3.2", flags="DF")
    / UDP() / Raw(b"d" * 1450),
    Ether(src=MAC["h1"], dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.2", pdst="10.0.1.1"),
]


def ip_checksum_fixed(frame: bytearray) -> None:
    """Recompute the IPv4 header checksum over whatever IHL says (if there is room)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return
    hlen = max(20, (frame[14] & 0xF) * 4)
    if len(frame) < 14 + hlen:
        return
    frame[24:26] = b"\0\0"
    s = sum(int.from_bytes(frame[i : i + 2], "big") for i in range(14, 14 + hlen, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    frame[24:26] = (~s & 0xFFFF).to_bytes(2, "big")


mutation = st.tuples(st.integers(0, 63), st.integers(0, 255))
fuzzed_frame = st.builds(
    lambda t, muts, cut, fix: (t, muts, cut, fix),
    st.sampled_from(range(len(TEMPLATES))), st.lists(mutation, max_size=8),
    st.one_of(st.none(), st.integers(0, 120)), st.booleans())


def build(spec) -> bytes:
    t, muts, cut, fix = spec
    frame = bytearray(bytes(TEMPLATES[t]))
    for pos, value in muts:
        if pos < len(frame):
            frame[pos] = value
    if fix:
        ip_checksum_fixed(frame)
    if cut is not None:
        frame = frame[:cut]
    return bytes(frame)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    p = Pipeline(tmp_path_factory.mktemp("fuzz"), batch=32, nbufs=2048)
    yield p
    p.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzzed_frame, min_size=1, max_size=32))
def test_hypothesis_mutated_frames_are_all_accounted_for(pipeline, specs):
    # one engine for every example: each batch must leave it balanced and whole
    frames = [build(s) for s in specs]
    rows = np.zeros((len(frames), 2048), np.uint8)
    for i, f in enumerate(frames):
        rows[i, : len(f)] = np.frombuffer(f, np.uint8)
    pipeline.feed(rows, np.array([len(f) for f in frames], np.uint32))
    r = pipeline.finish()
    check(r)


# -- fragment floods --------------------------------------------------------------------

def legit_datagrams(n: int) -> list:
    """n UDP datagrams h1 → h2 of 2,800 bytes, each fragmented by h1 (1,480-byte pieces)."""
    out = []
    for i in range(n):
        payload = bytes((i + k) & 0xFF for k in range(2792))
        out.append(IP(src="10.0.1.2", dst="10.0.2.2", id=40000 + i, ttl=64)
                   / UDP(sport=5000, dport=6000) / Raw(payload))
    return out


def flood_fragments(n: int, rng: np.random.Generator) -> np.ndarray:
    """n fragments of datagrams that never complete: random IDs and sources (the
    queue key), MF set, a random offset, 1,000 bytes of payload each."""
    rows = np.zeros((n, 14 + 20 + 1000), np.uint8)
    rows[:, 0:6] = np.frombuffer(bytes.fromhex(MAC["p0"].replace(":", "")), np.uint8)
    rows[:, 6:12] = np.frombuffer(bytes.fromhex(MAC["h1"].replace(":", "")), np.uint8)
    rows[:, 12:14] = [8, 0]
    ip = rows[:, 14:34]
    ip[:, 0] = 0x45
    ip[:, 2:4] = [(1020 >> 8), 1020 & 0xFF]
    ip[:, 4:6] = rng.integers(0, 256, (n, 2))
    off = rng.integers(0, 4000, n)
    flags = (1 << 13) | off
    ip[:, 6], ip[:, 7] = flags >> 8, flags & 0xFF
    ip[:, 8] = 64
    ip[:, 9] = 17
    ip[:, 12:16] = [10, 9, 8, 0]
    ip[:, 15] = rng.integers(1, 255, n)  # 10.9.8.0/24 routes back via p0's h1
    ip[:, 16:20] = [10, 0, 2, 2]
    w = ip.view(">u2").astype(np.uint32)
    s = w.sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    ip[:, 10], ip[:, 11] = (~s >> 8) & 0xFF, ~s & 0xFF
    return rows


def test_fragment_flood_stays_under_high_thresh_and_legit_flow_gets_through(tmp_path):
    high, low = 256 * 1024, 192 * 1024
    p = Pipeline(tmp_path, batch=64, high_thresh=high, low_thresh=low)
    p.keep_frames = True
    try:
        rng = np.random.default_rng(5)
        legit = legit_datagrams(40)
        flood = flood_fragments(40 * 400, rng)
        width = 1600
        fed = 0
        for i, dgram in enumerate(legit):
            # 400 flood fragments (far more than high_thresh holds) around each legit
            # datagram, 5 of them between its two fragments
            chunk = flood[i * 400 : (i + 1) * 400]
            pieces = [bytes(Ether(src=MAC["h1"], dst=MAC["p0"]) / f)
                      for f in fragment(dgram, fragsize=1480)]
            assert len(pieces) == 2
            frames = ([r.tobytes() for r in chunk[:200]] + [pieces[0]]
                      + [r.tobytes() for r in chunk[200:205]] + [pieces[1]]
                      + [r.tobytes() for r in chunk[205:]])
            rows = np.zeros((len(frames), width), np.uint8)
            for k, f in enumerate(frames):
                rows[k, : len(f)] = np.frombuffer(f, np.uint8)
            lengths = np.array([len(f) for f in frames], np.uint32)
            for start in range(0, len(frames), 64):
                p.feed(rows[start : start + 64], lengths[start : start + 64])
            fed += len(frames)
        r = p.finish()
        check(r)
        assert r.high_thresh == high
        assert low < r.reasm_high_water <= high  # the flood filled it, never past
        print(f"reassembly memory high-water mark {r.reasm_high_water} of {high}")
        fails = int(p.mem.counters[p.sp.agent, index(Snmp.ReasmFails)])
        assert fails > 1000  # the flood was evicted
        # every legit datagram was reassembled and went out on p1, fragmented again
        # for its MTU the way h1 had; what h2 reassembles is what h1 sent, TTL - 1
        from scapy.layers.inet import defragment

        out = [Ether(f) for f in p.out[1]]
        assert all(pkt[IP].src == "10.0.1.2" and pkt[IP].id >= 40000 for pkt in out)
        whole = {pkt[IP].id: pkt for pkt in defragment([pkt[IP] for pkt in out])}
        assert sorted(whole) == [d[IP].id for d in legit]
        for d in legit:
            got = whole[d[IP].id]
            assert got[IP].ttl == 63 and bytes(got[UDP].payload) == bytes(d[UDP].payload)
    finally:
        p.close()


# -- ICMP floods ------------------------------------------------------------------------

def test_icmp_flood_is_rate_limited_per_source(tmp_path):
    """TTL-1 floods from two sources (h1 on p0, h2 on p1) for 10 s of capture time:
    each source gets the token bucket's allowance of time exceeded (icmp_ratelimit
    1000 ms, a burst of six: 6 at once, then one a second, 6 + 9 in [0, 10 s)), the
    rest is counted unsent as rate limited. The global bucket (1000/s, burst 50)
    does not bind here."""
    p = Pipeline(tmp_path, batch=64, ratelimit_ms=1000)
    p.keep_frames = True
    try:
        n = 20_000
        a = bytes(Ether(src=MAC["h1"], dst=MAC["p0"])
                  / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1) / UDP())
        b = bytes(Ether(src=MAC["h2"], dst=MAC["p1"])
                  / IP(src="10.0.2.2", dst="10.0.1.2", ttl=1) / UDP())
        rows = np.zeros((n, 64), np.uint8)
        rows[0::2, : len(a)] = np.frombuffer(a, np.uint8)
        rows[1::2, : len(b)] = np.frombuffer(b, np.uint8)
        lengths = np.full(n, len(a), np.uint32)
        ports = np.arange(n) % 2
        ts = T0 + np.arange(n, dtype=np.int64) * 500_000  # one every 0.5 ms: 10 s
        for start in range(0, n, 64):
            stop = start + 64
            p.feed(rows[start:stop], lengths[start:stop], port=ports[start:stop],
                   ts=ts[start:stop])
        r = p.finish()
        check(r)
        row = p.mem.counters[p.sp.agent]
        by_dst: dict[str, int] = {}
        for port, mac_to in ((0, MAC["h1"]), (1, MAC["h2"])):
            for f in p.out[port]:
                pkt = Ether(f)
                assert pkt.dst == mac_to
                assert pkt[ICMP].type == 11 and pkt[ICMP].code == 0
                by_dst[pkt[IP].dst] = by_dst.get(pkt[IP].dst, 0) + 1
        assert by_dst == {"10.0.1.2": 15, "10.0.2.2": 15}
        assert int(row[index(Icmp.OutTimeExcds)]) == 30
        assert int(row[index(Unsent.ratelimited)]) == n - 30
    finally:
        p.close()


# -- end to end -------------------------------------------------------------------------

def test_fwd_run_on_fuzzed_pcaps_balances_and_leaks_nothing(tmp_path):
    lab = Lab(tmp_path, workers=2, batch=64)
    rng = np.random.default_rng(21)
    total = 0
    for name in ("p0", "p1", "p2"):
        rows, lengths = make_frames(10_000, rng)
        lengths = np.maximum(lengths, 1)  # a pcap record of 0 bytes is not a frame
        offsets = np.arange(len(rows), dtype=np.int64) * FRAME
        ts = 1_000_000_000 + np.arange(len(rows), dtype=np.int64) * 20_000
        write_pcap(tmp_path / "in" / f"{name}.pcap", rows.ravel(), offsets, lengths, ts)
        total += len(rows)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--json",
                             str(lab.config_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    s = json.loads(out)
    assert s["accounting"]["balanced"] and s["accounting"]["received"] == total
    assert "pool: 32768 of 32768 buffers free" in err
    assert "Traceback" not in err
    assert s["slow_drop"].get("internal_error", 0) == 0
    sent = sum(len(read_pcap(tmp_path / "out" / f"{n}.pcap").lengths)
               for n in ("p0", "p1", "p2"))
    assert sent == sum(p["tx_packets"] for p in s["ports"].values()) > 0
    assert no_shm_leak(proc.pid) == []
