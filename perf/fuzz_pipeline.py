"""Hostile input through the whole pipeline: the fast path of a forwarding worker and
the slow-path worker, in this process, on random and mutated frames.

    .venv/bin/python perf/fuzz_pipeline.py [--frames N] [--seed S] [--batch B] [--json FILE]

Frames are made in bulk with numpy: valid templates (UDP/TCP/ICMP through the router
and to it, fragments, IP options, ARP, TTL 1, too big with DF) and then, per frame,
any mix of: random bytes anywhere in the first 64, a random version/IHL (huge IHL
included), random total length (zero, short, huge), random fragment fields (MF, DF,
offsets), random option bytes, random addresses from an interesting set (the router's,
broadcast, multicast, loopback, zero, unrouted), random protocol and ethertype,
truncation to any length from 0, and in most frames a correct header checksum
over whatever IHL says (so that the mutations reach past `ip_rcv`).

Everything goes through `Forwarder.process` and `SlowPath.poll` as in a running
engine; the pcap agent's part (feeding, draining TX rings, freeing) is done here.
At the end: no exception was raised, every frame is accounted for exactly once
(`Snapshot.balanced`, the pcap agent's received count equal to what was fed), every
buffer is back in the pool, and the reassembly memory never went past `high_thresh`
(its high-water mark, kept by the reassembler and read from the counters as
`fwd stats` shows it, is reported). tests/test_fuzz.py runs this on a smaller
volume and with hypothesis.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from engine.control.recovery import audit_pool  # noqa: E402
from engine.control.routing import build_routing  # noqa: E402
from engine.control.stats import snapshot  # noqa: E402
from engine.counters import MISC_BASE, Misc  # noqa: E402
from engine.pipeline.tables import make_tables  # noqa: E402
from engine.shm.fib import FibWriter  # noqa: E402
from engine.shm.memory import AGENT_IO, PORT_RX_PACKETS, EngineMemory, Geometry  # noqa: E402
from engine.shm.pool import Buffers  # noqa: E402
from engine.workers.forwarder import Forwarder  # noqa: E402
from engine.workers.slowpath import SlowPath  # noqa: E402

FRAME = 192  # room for a 60-byte IP header (IHL 15) and a payload
T0 = 1_700_000_000 * 10**9

P0_MAC = bytes.fromhex("020000000001")
H1_MAC = bytes.fromhex("020000000102")
ADDRS = np.array([
    [10, 0, 2, 2], [10, 0, 3, 2], [10, 9, 1, 1], [10, 0, 1, 1], [10, 0, 2, 1],
    [10, 0, 1, 255], [255, 255, 255, 255], [224, 0, 0, 1], [127, 0, 0, 1], [0, 0, 0, 0],
    [192, 0, 2, 1], [10, 0, 1, 2], [10, 0, 1, 7], [10, 9, 8, 1],
], dtype=np.uint8)


def ip_checksum(ip: np.ndarray, ihl_bytes: np.ndarray) -> np.ndarray:
    """RFC 1071 checksum of each row's first ihl_bytes (even, <= 60) bytes, with the
    checksum field taken as zero."""
    words = ip[:, :60].astype(np.uint32)
    w = (words[:, 0::2] << 8) | words[:, 1::2]
    w[:, 5] = 0
    w = np.where(np.arange(30)[None, :] < (ihl_bytes[:, None] // 2), w, 0)
    s = w.sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (~s & 0xFFFF).astype(np.uint32)


def make_frames(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n mutated frames as rows of FRAME bytes, and their lengths (0..FRAME)."""
    rows = np.zeros((n, FRAME), np.uint8)
    rows[:, 0:6] = np.frombuffer(P0_MAC, np.uint8)
    rows[:, 6:12] = np.frombuffer(H1_MAC, np.uint8)
    rows[:, 12:14] = [0x08, 0x00]
    ip = rows[:, 14:]
    kind = rng.integers(0, 8, n)  # the template
    ihl = np.where(kind == 3, rng.integers(6, 16, n), 5)  # options
    ip[:, 0] = 0x40 | ihl
    ip[:, 1] = rng.integers(0, 256, n) * (rng.random(n) < 0.1)
    payload = rng.integers(8, FRAME - 14 - 60, n)
    tot = ihl * 4 + payload
    ip[:, 4:6] = rng.integers(0, 256, (n, 2))  # id
    ip[:, 8] = np.where(kind == 5, 1, rng.integers(2, 256, n))  # TTL (1: time exceeded)
    ip[:, 9] = rng.choice(np.array([1, 6, 17, 47, 0, 255], np.uint8), n,
                          p=[0.3, 0.25, 0.35, 0.04, 0.03, 0.03])
    ip[:, 12:16] = [10, 0, 1, 2]
    ip[:, 16:20] = ADDRS[rng.integers(0, len(ADDRS), n)]
    # options: random bytes, or well-formed-looking RR / TS / LSRR / SSRR / RA / NOP / EOL
    opt = rng.integers(0, 256, (n, 40)).astype(np.uint8)
    typ = rng.choice(np.array([7, 68, 131, 137, 148, 1, 0, 130], np.uint8), n)
    opt[:, 0] = np.where(rng.random(n) < 0.8, typ, opt[:, 0])
    opt[:, 1] = np.where(rng.random(n) < 0.7, (ihl - 5) * 4, opt[:, 1])
    opt[:, 2] = np.where(rng.random(n) < 0.7, 4 + 4 * rng.integers(0, 3, n), opt[:, 2])
    olen = (ihl - 5) * 4
    ip[:, 20:60] = np.where(np.arange(40)[None, :] < olen[:, None], opt, ip[:, 20:60])
    # fragments: MF and/or an offset, DF with big frames toward the 1400-MTU port
    frag = kind == 4
    off = np.where(frag, rng.integers(0, 8192, n) * (rng.random(n) < 0.6), 0)
    off = np.where(frag & (rng.random(n) < 0.5), rng.integers(0, 4, n) * (payload // 8), off)
    mf = frag & (rng.random(n) < 0.6)
    df = (kind == 6) | (rng.random(n) < 0.05)
    flags = (mf.astype(np.uint32) << 13) | (df.astype(np.uint32) << 14) | off.astype(np.uint32)
    ip[:, 6], ip[:, 7] = flags >> 8, flags & 0xFF
    ip[:, 16:20] = np.where((kind == 6)[:, None], [10, 0, 3, 2], ip[:, 16:20])
    # transport headers: ports, ICMP types (echo and errors), TCP flags
    l4 = ihl * 4
    r = np.arange(n)
    for k in range(8):
        ip[r, np.minimum(l4 + k, FRAME - 15)] = rng.integers(0, 256, n)
    icmp = ip[:, 9] == 1
    ip[r[icmp], l4[icmp]] = rng.choice(np.array([8, 0, 3, 11, 5, 13, 17], np.uint8),
                                       int(icmp.sum()))
    # ARP frames
    arp = kind == 7
    rows[arp, 12:14] = [0x08, 0x06]
    rows[arp, 14:22] = [0, 1, 8, 0, 6, 4, 0, 1]
    rows[arp, 22:28] = np.frombuffer(H1_MAC, np.uint8)
    rows[arp, 28:32] = [10, 0, 1, 2]
    rows[arp, 38:42] = ADDRS[rng.integers(0, len(ADDRS), int(arp.sum()))]
    rows[arp, 0:6] = np.where(rng.random((int(arp.sum()), 1)) < 0.5, 0xFF, rows[arp, 0:6])
    # mutations on top
    m = rng.random((n, 10))
    tot = np.where(m[:, 0] < 0.08, rng.choice([0, 1, 19, 20, 21, 65535], n), tot)
    ip[:, 2], ip[:, 3] = tot >> 8, tot & 0xFF
    ver_ihl = rng.integers(0, 256, n).astype(np.uint8)
    ip[:, 0] = np.where(m[:, 1] < 0.05, ver_ihl, ip[:, 0])
    ip[:, 0] = np.where(m[:, 2] < 0.05, 0x40 | rng.integers(0, 16, n), ip[:, 0])  # huge IHL
    flip = m[:, 3] < 0.15  # random bytes anywhere in the first 64
    k = int(flip.sum())
    pos = rng.integers(0, 64, (k, 4))
    rows[np.flatnonzero(flip)[:, None], pos] = rng.integers(0, 256, (k, 4))
    rows[m[:, 4] < 0.03, 0:6] = rng.integers(0, 256, (int((m[:, 4] < 0.03).sum()), 6))
    rows[m[:, 5] < 0.02, 12:14] = rng.integers(0, 256, (int((m[:, 5] < 0.02).sum()), 2))
    fr = m[:, 6] < 0.05  # random fragment fields on anything
    rows[fr, 20:22] = rng.integers(0, 256, (int(fr.sum()), 2))
    ihl_now = (ip[:, 0] & 0x0F).astype(np.int64) * 4
    good = m[:, 7] < 0.85
    csum = ip_checksum(ip, np.clip(ihl_now, 0, 60))
    ip[good, 10] = csum[good] >> 8
    ip[good, 11] = csum[good] & 0xFF
    lengths = np.minimum(14 + np.maximum(tot, 20), FRAME)
    trunc = m[:, 8] < 0.06
    lengths = np.where(trunc, rng.integers(0, FRAME + 1, n), lengths)
    lengths = np.where(m[:, 9] < 0.005, 0, lengths)  # zero-length frames
    return rows, lengths.astype(np.uint32)


@dataclass
class FuzzResult:
    frames: int
    seconds: float
    frames_per_s: float
    forwarded: int
    delivered: int
    dropped: int
    to_slowpath: int
    slow_forwarded: int
    slow_delivered: int
    slow_dropped: int
    internal_errors: int
    reasm_high_water: int
    high_thresh: int
    balanced: bool
    pool_free: int
    pool_size: int


class Pipeline:
    """A forwarding worker and the slow path in this process, on the test topology."""

    def __init__(self, root: Path, *, batch: int = 256, high_thresh: int | None = None,
                 low_thresh: int | None = None, ratelimit_ms: int | None = None,
                 nbufs: int = 8192):
        from conftest import Lab

        lab = Lab(root)
        extra = ""
        if high_thresh is not None:
            # the Lab's config ends inside [reassembly]
            extra += f"\nhigh_thresh = {high_thresh}\nlow_thresh = {low_thresh}\n"
        if ratelimit_ms is not None:
            extra += f"\n[icmp]\nratelimit_ms = {ratelimit_ms}\n"
        if extra:
            with lab.config_path.open("a") as f:
                f.write(extra)
        self.cfg = cfg = lab.config()
        self.batch = batch
        self.mem = mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=nbufs,
                                                          ring_size=4096))
        self.fib = FibWriter.create()
        build_routing(cfg, mem, self.fib)
        tables = make_tables(cfg, mem, self.fib.lookup)
        self.fw = Forwarder(mem, tables, 0, batch)
        self.sp = SlowPath(mem, tables, cfg, batch)
        self.io = Buffers(mem, AGENT_IO)
        self.fed = 0
        self.sent: list[list[int]] = [[] for _ in cfg.ports]  # lengths, by port
        self.keep_frames = False
        self.out: list[list[bytes]] = [[] for _ in cfg.ports]

    def close(self) -> None:
        self.fib.close()
        self.fib.unlink()
        self.mem.close()

    def feed(self, rows: np.ndarray, lengths: np.ndarray, port: int | np.ndarray = 0,
             ts: np.ndarray | None = None) -> None:
        """One batch through the worker, then the slow path until its ring is empty."""
        mem = self.mem
        n = len(rows)
        idx = self.io.alloc(n)
        assert len(idx) == n, "the fuzz pool ran dry: a buffer was not returned"
        mem.data[idx, : rows.shape[1]] = rows
        mem.length[idx] = lengths
        mem.port[idx] = port
        # the capture clock: 1 µs a frame unless given
        mem.ts[idx] = (T0 + (self.fed + np.arange(n)) * 1000) if ts is None else ts
        mem.seq[idx] = np.arange(self.fed, self.fed + n, dtype=np.uint64)
        self.fed += n
        np.add.at(mem.port_counters[AGENT_IO, :, PORT_RX_PACKETS],
                  np.broadcast_to(np.asarray(port), (n,)), 1)
        mem.counters[AGENT_IO, MISC_BASE + Misc.rx_frames] += n
        self.fw.process(idx)
        self.drain()

    def drain(self) -> None:
        mem = self.mem
        slow = mem.rings["slow.0"]
        while True:
            self.collect()
            if slow.count() == 0:
                break
            self.sp.poll()
        self.collect()

    def collect(self) -> None:
        """The pcap agent's part: empty every TX ring into the pool."""
        mem = self.mem
        for p in range(mem.geometry.nports):
            for name in (f"tx.{p}.0", f"slowtx.{p}"):
                out = mem.rings[name].dequeue(1 << 20)
                if len(out):
                    self.sent[p].append(len(out))
                    if self.keep_frames:
                        self.out[p] += [mem.data[i, : mem.length[i]].tobytes()
                                        for i in out.tolist()]
                    self.io.free(out)
        self.io.reclaim()

    def finish(self) -> FuzzResult:
        self.sp.finish()
        self.collect()
        self.sp.buffers.reclaim()
        s = snapshot(self.mem, [p.name for p in self.cfg.ports])
        audit = audit_pool(self.mem)
        from engine.counters import SlowDrop, index

        return FuzzResult(
            frames=self.fed, seconds=0.0, frames_per_s=0.0, forwarded=s.forwarded,
            delivered=s.delivered, dropped=s.dropped, to_slowpath=s.to_slowpath,
            slow_forwarded=s.slow_forwarded, slow_delivered=s.slow_delivered,
            slow_dropped=s.slow_dropped,
            internal_errors=int(self.mem.counters[self.sp.agent,
                                                  index(SlowDrop.internal_error)]),
            reasm_high_water=s.reassembly["memory_high"],
            high_thresh=s.reassembly["high_thresh"],
            balanced=s.balanced and s.received == self.fed, pool_free=audit.free,
            pool_size=audit.size)


def fuzz(frames: int, seed: int = 1, batch: int = 256, chunk: int = 65536,
         root: Path | None = None) -> FuzzResult:
    """Run `frames` mutated frames through the pipeline; the result (see module doc)."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        p = Pipeline(Path(root or tmp), batch=batch)
        try:
            t0 = time.perf_counter()
            done = 0
            while done < frames:
                n = min(chunk, frames - done)
                rows, lengths = make_frames(n, rng)
                ports = rng.integers(0, 3, n // batch + 1)
                for b, start in enumerate(range(0, n, batch)):
                    p.feed(rows[start : start + batch], lengths[start : start + batch],
                           port=int(ports[b]) if b % 7 == 0 else 0)
                done += n
            result = p.finish()
            result.seconds = round(time.perf_counter() - t0, 1)
            result.frames_per_s = round(result.frames / result.seconds)
            return result
        finally:
            p.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    r = fuzz(args.frames, args.seed, args.batch)
    print(json.dumps(asdict(r), indent=2))
    if args.json:
        args.json.write_text(json.dumps(asdict(r), indent=2) + "\n")
    ok = (r.balanced and r.pool_free == r.pool_size and r.internal_errors == 0
          and r.reasm_high_water <= r.high_thresh)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
