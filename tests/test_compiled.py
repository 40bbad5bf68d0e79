"""The compiled datapath against the numpy stages: same verdicts, egress ports,
lengths, rewritten bytes, counters and neighbour cache, batch by batch.

Random batches (numpy-built frames, mutated) go through `fast_path` (on gathered
rows, as `fwd trace` and the numpy datapath run it) and through `forward_batch` (on
the pool rows in place) over the test topology (conftest.py): every route type,
ECMP, learned and unresolved neighbours, ports going down, both reassembly modes,
redirects on and off. The normal run takes `PACKETS` packets; set
`FWD_DIFF_PACKETS` (say 2000000) for a long run by hand:

    FWD_DIFF_PACKETS=2000000 .venv/bin/python -m pytest tests/test_compiled.py -k random

A hypothesis test adds scapy-built frames (options, fragments, every header field).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from engine.control.routing import build_routing
from engine.counters import NCOUNTERS, PORT_DROP_BASE, Drop, Misc, index
from engine.pipeline.compiled import CompiledPath, count_histogram
from engine.pipeline.fastpath import count, fast_path
from engine.pipeline.neigh_cache import NeighCache
from engine.pipeline.tables import make_tables
from engine.proto import HDR_BYTES
from engine.shm.fib import FibWriter
from engine.shm.memory import CTL_PORT_UP, EngineMemory, Geometry
from engine.shm.neigh_table import NeighbourTable, Nud

from conftest import MAC, Lab

PACKETS = int(os.environ.get("FWD_DIFF_PACKETS", "24000"))
ROW = 1600  # pool row: room for a frame up to the 1500-byte MTU and beyond
MAX_BATCH = 256


def ip_int(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def mac48(mac: str) -> int:
    return int.from_bytes(bytes.fromhex(mac.replace(":", "")), "little")


class Twin:
    """One topology, two datapaths: the numpy stages and the compiled kernel, each
    with its own neighbour cache in front of the same shared table."""

    def __init__(self, root, reassembly: str = "full", redirects: bool = True,
                 cache_slots: int = 1024):
        self.cfg = Lab(root, reassembly=reassembly).config()
        self.mem = EngineMemory.create(Geometry.new(3, 1, nbufs=64, ring_size=64))
        self.fib = FibWriter.create()
        self.routing = build_routing(self.cfg, self.mem, self.fib)
        self.table = NeighbourTable(self.mem)
        base = dataclasses.replace(make_tables(self.cfg, self.mem, self.fib.lookup),
                                   send_redirects=redirects)
        self.np_cache = NeighCache(self.table, cache_slots)
        self.jit_cache = NeighCache(self.table, cache_slots)
        self.np_tables = dataclasses.replace(base, neigh=self.np_cache)
        self.jit = CompiledPath(dataclasses.replace(base, neigh=self.jit_cache), MAX_BATCH)
        self.np_counters = np.zeros(NCOUNTERS, dtype=np.uint64)
        self.jit_counters = np.zeros(NCOUNTERS, dtype=np.uint64)
        self.packets = 0

    def close(self) -> None:
        self.fib.close()
        self.fib.unlink()
        self.mem.close()

    def compare(self, rows: np.ndarray, length: np.ndarray, in_port: np.ndarray) -> None:
        """Run one batch through both and require the same outcome."""
        n = len(rows)
        data = np.zeros((n + 3, ROW), dtype=np.uint8)  # a pool, the batch scattered in it
        idx = np.random.default_rng(n).permutation(n + 3)[:n].astype(np.uint32)
        data[idx, : rows.shape[1]] = rows
        pool_len = np.zeros(n + 3, dtype=np.uint32)
        pool_port = np.zeros(n + 3, dtype=np.uint16)
        pool_len[idx] = length
        pool_port[idx] = in_port

        hdr = data[idx, :HDR_BYTES]  # the numpy datapath: gather, stages, scatter
        r = fast_path(hdr, length.copy(), in_port.copy(), self.np_tables)
        count(r.code, self.np_counters)
        expect = data.copy()
        expect[idx, :HDR_BYTES] = hdr

        got = self.jit.run(data, pool_len, pool_port, idx)
        count_histogram(got.hist, self.jit_counters)

        assert np.array_equal(got.code, r.code), self.explain(got.code, r.code, rows, in_port)
        assert np.array_equal(got.egress, r.egress)
        assert got.forwarded == len(r.forwarded)
        assert np.array_equal(pool_len[idx], r.frame_len)
        assert np.array_equal(data, expect)
        assert np.array_equal(self.jit_counters, self.np_counters)
        for name in ("addr", "port", "mac"):
            assert np.array_equal(getattr(self.jit_cache, name), getattr(self.np_cache, name))
        for name in ("lookups", "misses", "fills"):
            assert getattr(self.jit_cache, name) == getattr(self.np_cache, name), name
        self.packets += n

    @staticmethod
    def explain(got, want, rows, in_port) -> str:
        bad = np.flatnonzero(got != want)[:3]
        return "; ".join(f"row {i} port {in_port[i]}: compiled {got[i]} numpy {want[i]} "
                         f"{bytes(rows[i, :40]).hex()}" for i in bad)


# -- random frames in bulk ------------------------------------------------------------

PORT_MACS = [MAC["p0"], MAC["p1"], MAC["p2"]]
DST_MACS = np.array([mac48(m) for m in PORT_MACS]
                    + [0xFFFF_FFFF_FFFF, mac48("01:00:5e:00:00:01"), mac48(MAC["stranger"])],
                    dtype=np.uint64)
SOURCES = [ip_int(a) for a in (
    "10.0.1.2", "10.0.1.7", "10.0.2.2", "10.0.2.9", "10.0.3.2", "10.9.1.1", "192.0.2.1",
    "0.1.2.3", "0.0.0.0", "127.0.0.1", "224.0.0.5", "255.255.255.255", "10.0.1.1",
    "10.0.2.1", "10.0.1.255")]
LEARNED = [ip_int(f"10.0.2.{100 + k}") for k in range(24)]  # in the table, some unusable
DESTINATIONS = [ip_int(a) for a in (
    "10.0.2.2", "10.0.3.2", "10.0.1.2", "10.9.1.1", "10.9.8.5", "10.9.8.200", "10.66.0.1",
    "10.67.0.1", "10.68.0.1", "10.69.3.4", "10.0.1.1", "10.0.2.1", "10.0.1.255",
    "255.255.255.255", "224.0.0.1", "239.1.1.1", "127.0.0.1", "0.0.0.0", "0.0.0.5",
    "192.0.2.1", "10.0.3.77", "10.55.1.1")] + LEARNED
ECMP_DESTINATIONS = 64  # hosts of 10.77.0.0/16 (ECMP over p1's gateway and h3)


def checksums(ip: np.ndarray, ihl_bytes: np.ndarray) -> np.ndarray:
    """RFC 1071 checksum of each row's first ihl_bytes bytes, the checksum field as 0."""
    w = (ip[:, :60:2].astype(np.uint32) << 8) | ip[:, 1:60:2]
    w[:, 5] = 0
    w = np.where(np.arange(30)[None, :] < (ihl_bytes[:, None] // 2), w, 0)
    s = w.sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def random_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.zeros((n, 128), dtype=np.uint8)
    in_port = rng.integers(0, 3, n).astype(np.uint16)
    dst_mac = np.where(rng.random(n) < 0.8, DST_MACS[in_port],
                       DST_MACS[rng.integers(0, len(DST_MACS), n)])
    rows[:, 0:8] = dst_mac.astype("<u8").view(np.uint8).reshape(n, 8)
    rows[:, 6:12] = [2, 0, 0, 0, 9, 9]
    rows[:, 12:14] = [0x08, 0x00]
    ip = rows[:, 14:]
    ihl = np.where(rng.random(n) < 0.1, rng.integers(6, 16, n), 5)
    ip[:, 0] = 0x40 | ihl
    ip[:, 1] = rng.integers(0, 256, n) * (rng.random(n) < 0.2)
    tot = np.where(rng.random(n) < 0.1, rng.integers(1300, 1700, n),
                   ihl * 4 + rng.integers(0, 60, n))
    ip[:, 4:6] = rng.integers(0, 256, (n, 2))
    frag = np.where(rng.random(n) < 0.1, rng.integers(0, 0x4000, n),
                    np.where(rng.random(n) < 0.3, 0x4000, 0))
    ip[:, 6], ip[:, 7] = frag >> 8, frag & 0xFF
    ip[:, 8] = np.where(rng.random(n) < 0.15, rng.integers(0, 3, n), rng.integers(2, 256, n))
    ip[:, 9] = rng.choice(np.array([1, 6, 17, 47], np.uint8), n)
    src = np.array(SOURCES, dtype=np.uint32)[rng.integers(0, len(SOURCES), n)]
    dst = np.array(DESTINATIONS, dtype=np.uint32)[rng.integers(0, len(DESTINATIONS), n)]
    ecmp = rng.random(n) < 0.15
    dst[ecmp] = ip_int("10.77.0.0") + rng.integers(0, ECMP_DESTINATIONS, int(ecmp.sum()))
    anywhere = rng.random(n) < 0.05
    dst[anywhere] = rng.integers(0, 2**32, int(anywhere.sum()), dtype=np.uint64)
    ip[:, 12:16] = src.astype(">u4").view(np.uint8).reshape(n, 4)
    ip[:, 16:20] = dst.astype(">u4").view(np.uint8).reshape(n, 4)
    ip[:, 20:60] = np.where(np.arange(40)[None, :] < ((ihl - 5) * 4)[:, None],
                            rng.integers(0, 256, (n, 40)), 0)
    # mutations: total length, version/IHL, random bytes, ethertype, ARP
    m = rng.random((n, 8))
    tot = np.where(m[:, 0] < 0.04, rng.choice([0, 1, 19, 20, 21, 65535], n), tot)
    ip[:, 2], ip[:, 3] = tot >> 8, tot & 0xFF
    ip[:, 0] = np.where(m[:, 1] < 0.03, rng.integers(0, 256, n), ip[:, 0])
    flip = np.flatnonzero(m[:, 2] < 0.05)
    rows[flip[:, None], rng.integers(0, 40, (len(flip), 2))] = rng.integers(0, 256, (len(flip), 2))
    rows[m[:, 3] < 0.02, 12:14] = rng.integers(0, 256, (int((m[:, 3] < 0.02).sum()), 2))
    arp = m[:, 4] < 0.03
    rows[arp, 12:14] = [0x08, 0x06]
    ihl_now = (ip[:, 0] & 0x0F).astype(np.int64) * 4
    good = m[:, 5] < 0.92
    csum = checksums(ip, np.clip(ihl_now, 0, 60))
    ip[good, 10], ip[good, 11] = csum[good] >> 8, csum[good] & 0xFF
    length = np.where(m[:, 6] < 0.05, rng.integers(0, 140, n), 14 + tot.astype(np.int64))
    length = np.where(m[:, 7] < 0.1, length + rng.integers(0, 30, n), length)  # L2 padding
    return rows, np.minimum(length, ROW).astype(np.uint32), in_port


def learn(twin: Twin, rng: np.random.Generator) -> None:
    """(Re)write the learned neighbours: most usable on p1, some not (state, port)."""
    for k, addr in enumerate(LEARNED):
        state = Nud.REACHABLE if rng.random() < 0.7 else Nud(int(rng.integers(0, 8)))
        port = 1 if rng.random() < 0.9 else 2
        twin.table.put(addr, port, bytes([2, 0, 0, 0, 0x77, k]), state, 1)
    twin.table.put(ip_int("10.69.3.4"), 1, bytes([2, 0, 0, 0, 0x69, 4]), Nud.STALE, 1)


def shake(twin: Twin, rng: np.random.Generator) -> None:
    """Between batches, what the control plane and ARP do: ports down and up (the
    kernel's rt_flush_dev: caches cleared), neighbours changing."""
    r = rng.random()
    if r < 0.05:
        port = str(rng.choice(["p1", "p2"]))
        twin.routing.set_port(port, up=bool(rng.random() < 0.5))
        twin.np_cache.clear()
        twin.jit_cache.clear()
    elif r < 0.10:  # the PortMask alone (nh_mtu not updated: the tiers disagree)
        twin.mem.ctl[CTL_PORT_UP] ^= np.uint64(1 << int(rng.integers(0, 3)))
    elif r < 0.15:
        learn(twin, rng)
        twin.np_cache.clear()
        twin.jit_cache.clear()


@pytest.mark.parametrize("reassembly,redirects,slots", [
    ("full", True, 1024), ("forward", False, 1024), ("forward", True, 16)],
    ids=["full-redirects", "forward-no-redirects", "forward-tiny-cache"])
def test_random_batches_agree(tmp_path, reassembly, redirects, slots):
    twin = Twin(tmp_path, reassembly, redirects, slots)
    rng = np.random.default_rng({"full": 1, "forward": 2}[reassembly] + slots)
    try:
        learn(twin, rng)
        budget = PACKETS // 3
        while twin.packets < budget:
            n = int(rng.choice([1, 2, 7, 32, 64, 255, 256]))
            twin.compare(*random_batch(n, rng))
            shake(twin, rng)
        assert twin.packets >= budget
    finally:
        twin.close()


def test_every_verdict_is_reached(tmp_path):
    """The random traffic reaches every code the fast path can decide."""
    twin = Twin(tmp_path, "full")
    rng = np.random.default_rng(7)
    seen = np.zeros(64, dtype=bool)
    try:
        learn(twin, rng)
        for _ in range(40):
            rows, length, in_port = random_batch(256, rng)
            twin.compare(rows, length, in_port)
            seen[twin.jit.code[:256]] = True
            shake(twin, rng)
        twin.routing.set_port("p2", up=False)
        rows, length, in_port = random_batch(256, rng)
        twin.compare(rows, length, in_port)
        seen[twin.jit.code[:256]] = True
    finally:
        twin.close()
    from engine.pipeline.fastpath import STAGES

    every = set().union(*(s.reasons for s in STAGES)) | {0}
    missing = sorted(c for c in every if not seen[c])
    assert not missing, f"codes never reached: {missing}"


# -- scapy-built frames, one field at a time -----------------------------------------

@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    out = [Twin(tmp_path_factory.mktemp(mode), mode) for mode in ("full", "forward")]
    for t in out:
        learn(t, np.random.default_rng(3))
    yield out
    for t in out:
        t.close()


addresses = st.sampled_from(["10.0.1.2", "10.0.2.2", "10.0.3.2", "10.9.8.200", "10.66.1.1",
                             "10.67.1.1", "10.68.1.1", "10.69.3.4", "10.77.1.2", "10.77.9.9",
                             "10.0.2.105", "10.0.1.1", "255.255.255.255", "224.0.0.9",
                             "127.0.0.1", "0.0.0.0", "0.1.2.3", "10.0.2.255"])
frames = st.builds(
    lambda port, l2, src, dst, ttl, flags, frag, ihl_opts, tos, proto, pad, csum: (
        Ether(src="02:00:00:00:09:09",
              dst=[MAC[port], "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:09", MAC["stranger"]][l2])
        / IP(src=src, dst=dst, ttl=ttl, flags=flags, frag=frag, tos=tos, proto=proto,
             options=[IPOption_RR()] * ihl_opts, **({"chksum": csum} if csum else {}))
        / Raw(b"p" * pad), port),
    st.sampled_from(["p0", "p1", "p2"]), st.sampled_from([0, 0, 0, 1, 2, 3]), addresses,
    addresses, st.integers(0, 255), st.sampled_from([0, 1, 2]), st.sampled_from([0, 0, 1, 185]),
    st.sampled_from([0, 0, 0, 1]), st.integers(0, 255), st.sampled_from([1, 6, 17]),
    st.sampled_from([0, 10, 1400, 1480]), st.sampled_from([0, 0, 0, 0, 1]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(frames, min_size=1, max_size=24), trim=st.integers(0, 3))
def test_scapy_frames_agree(twins, batch, trim):
    raws = [bytes(f) for f, _ in batch]
    if trim == 1:  # truncated frames
        raws = [r[: max(0, len(r) - 7)] for r in raws]
    elif trim == 2:  # L2 padding
        raws = [r + b"\0" * 18 for r in raws]
    rows = np.zeros((len(raws), ROW), dtype=np.uint8)
    for i, r in enumerate(raws):
        rows[i, : len(r)] = np.frombuffer(r[:ROW], dtype=np.uint8)
    length = np.array([min(len(r), ROW) for r in raws], dtype=np.uint32)
    in_port = np.array([int(p[1]) for _, p in batch], dtype=np.uint16)
    for twin in twins:
        twin.compare(rows, length, in_port)


def test_named_frames_agree(twins):
    """ARP, ICMP, TCP and the runt: whatever the random frames may miss."""
    h1 = Ether(src=MAC["h1"], dst=MAC["p0"])
    raws = [h1 / ARP(pdst="10.0.1.1"), Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(),
            h1 / IP(src="10.0.1.2", dst="10.0.2.2") / ICMP(),
            h1 / IP(src="10.0.1.2", dst="10.77.3.3") / TCP(), b"\x02\x00\x00",
            h1 / IP(src="10.0.1.2", dst="10.0.2.107", ttl=2) / UDP()]
    raws = [bytes(r) for r in raws]
    rows = np.zeros((len(raws), 128), dtype=np.uint8)
    for i, r in enumerate(raws):
        rows[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
    length = np.array([len(r) for r in raws], dtype=np.uint32)
    for twin in twins:
        twin.compare(rows, length, np.zeros(len(raws), dtype=np.uint16))


def test_every_checksum_value_agrees(twins):
    """The RFC 1624 update at every checksum value (0xFFFE and 0xFFFF read
    little-endian are its edge): one header, its IP ID swept over all 65,536 values."""
    frame = bytes(Ether(src=MAC["h1"], dst=MAC["p0"])
                  / IP(src="10.0.1.2", dst="10.0.2.2", id=0) / UDP())
    rows = np.zeros((MAX_BATCH, 128), dtype=np.uint8)
    rows[:, : len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    ip = rows[:, 14:]
    length = np.full(MAX_BATCH, len(frame), dtype=np.uint32)
    in_port = np.zeros(MAX_BATCH, dtype=np.uint16)
    twin = twins[0]
    for start in range(0, 1 << 16, MAX_BATCH):
        ident = np.arange(start, start + MAX_BATCH)
        ip[:, 4], ip[:, 5] = ident >> 8, ident & 0xFF
        csum = checksums(ip, np.full(MAX_BATCH, 20))
        ip[:, 10], ip[:, 11] = csum >> 8, csum & 0xFF
        twin.compare(rows, length, in_port)


@pytest.mark.parametrize("ring_size", [1024, 16], ids=["room", "rings_full"])
def test_a_compiled_worker_hands_on_what_a_numpy_worker_does(tmp_path, ring_size):
    """`Forwarder.process` both ways on the same random frames: the same buffers on
    the same TX and slow rings, the same bytes in the pool, the same counters, the
    same free buffers (with small rings, never drained: `ring_full` drops too)."""
    from engine.workers.forwarder import Forwarder

    cfg = Lab(tmp_path).config()
    rng = np.random.default_rng(11)
    rows, length, in_port = random_batch(512, rng)
    seen = []
    for datapath in ("numpy", "compiled"):
        mem = EngineMemory.create(Geometry.new(3, 1, nbufs=1024, ring_size=ring_size))
        fib = FibWriter.create()
        try:
            build_routing(cfg, mem, fib)
            learn_table(NeighbourTable(mem))
            mem.data[:512, :128] = rows
            mem.length[:512] = length
            mem.port[:512] = in_port
            fw = Forwarder(mem, make_tables(cfg, mem, fib.lookup), 0, 64, datapath=datapath)
            fw.warm_up()
            for start in range(0, 512, 64):
                fw.process(np.arange(start, start + 64, dtype=np.uint32))
            rings = [r.dequeue(1024).tolist() for r in fw.tx] + [fw.slow.dequeue(1024).tolist()]
            rings += [r.dequeue(1024).tolist() for r in fw.buffers.outgoing.values()]
            seen.append((rings, mem.data[:512].copy(), mem.length[:512].copy(),
                         mem.code[:512].copy(), fw.counters.copy()))
        finally:
            fib.close()
            fib.unlink()
            mem.close()
    (rings_a, data_a, len_a, code_a, cnt_a), (rings_b, data_b, len_b, code_b, cnt_b) = seen
    assert rings_a == rings_b and any(rings_a[:3]) and rings_a[3] and any(rings_a[4:])
    assert np.array_equal(data_a, data_b) and np.array_equal(len_a, len_b)
    assert np.array_equal(code_a, code_b)
    cnt_a[index(Misc.busy_ns)] = cnt_b[index(Misc.busy_ns)] = 0  # a timing
    assert np.array_equal(cnt_a, cnt_b)
    assert (cnt_a[index(Drop.ring_full)] > 0) == (ring_size == 16)
    # the per-port drop section: every drop once, under its ingress port and reason
    per_port = cnt_a[PORT_DROP_BASE: PORT_DROP_BASE + 3 * len(Drop)].reshape(3, len(Drop))
    assert per_port.sum() == cnt_a[index(Misc.dropped)] and per_port.sum(axis=1).all()
    assert np.array_equal(per_port.sum(axis=0)[1:],
                          [cnt_a[index(r)] for r in Drop if r != Drop.none])


def learn_table(table: NeighbourTable) -> None:
    for k, addr in enumerate(LEARNED[:12]):
        table.put(addr, 1, bytes([2, 0, 0, 0, 0x77, k]), Nud.REACHABLE, 1)
