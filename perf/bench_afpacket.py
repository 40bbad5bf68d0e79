"""The AF_PACKET driver alone: RX and TX options on a veth pair, 64-byte frames.

    .venv/bin/python perf/bench_afpacket.py [--runs 5] [--seconds 1] [--json FILE]

Needs root. Builds a veth pair `fwdbA`/`fwdbB`-style (unique names, root namespace,
IPv6 and offloads off), and removes it at the end. Measurements, each the median of
`--runs`:

1. `walk`: the per-frame next-offset chain of full TPACKET_V3 blocks, walked again
   and again without releasing them (C helper, numpy, pure Python), for 64-byte
   frames and for an IMIX-like mix (7:4:1 of 64, 576, 1500 bytes), where numpy's
   equal-step guess fails and the chain is walked in Python (`numpy`) or by pointer
   doubling (`numpy-doubling`).
2. `drain`: rx_burst(256) emptying a pre-filled ring into the shared pool (walk +
   copy + metadata + block release, buffers freed after each burst), per
   walker/copier pair: the receive capacity of one worker, generator excluded.
3. `live`: trafgen (pinned to CPU 0) sending 64-byte frames into the peer, one
   receiver (pinned to CPU 1) calling rx_burst for `--seconds`: frames/s received
   and frames the kernel dropped because the ring was full, and the share of the
   receiver's time spent in bursts that returned frames. veth does the receive work
   on the sending CPU, so this is bounded by the generator on 2 cores.
4. `tx`: tx_burst(256) of 64-byte frames from the pool for `--seconds` (TX ring
   filled by C or numpy, sendmmsg, one send() per frame), counted on the peer's
   interface counters. The peer drops the frames (not its MAC): on veth the
   sender's CPU pays for that receive too, so this is TX + veth + drop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.io import afpacket as A  # noqa: E402
from engine.shm.memory import AGENT_IO, EngineMemory, Geometry  # noqa: E402
from engine.shm.pool import Buffers  # noqa: E402

PORT_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000102")
# walk/drain: blocks retire when full, not on the 1 ms timer, as under load
FULL_BLOCKS_MS = 100


def sh(cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True).stdout


def make_veth() -> tuple[str, str]:
    tag = secrets.token_hex(2)
    a, b = f"fwdb{tag}a", f"fwdb{tag}b"
    sh(f"ip link add {a} type veth peer name {b}")
    for dev in (a, b):
        sh(f"sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
        if shutil.which("ethtool"):
            sh(f"ethtool -K {dev} tx off rx off gso off gro off tso off sg off", check=False)
        sh(f"ip link set {dev} up")
    return a, b


def rx_packets(dev: str) -> int:
    return int(Path(f"/sys/class/net/{dev}/statistics/rx_packets").read_text())


def udp_frame(size: int, sport: int = 1000) -> bytes:
    """A UDP/IPv4 frame of `size` bytes (no FCS), checksums left zero (not checked)."""
    ip_len = size - 14
    ip = bytearray(20)
    ip[0], ip[8], ip[9] = 0x45, 64, 17
    ip[2:4] = ip_len.to_bytes(2, "big")
    ip[12:16], ip[16:20] = bytes([10, 0, 1, 2]), bytes([10, 0, 2, 2])
    s = sum(int.from_bytes(ip[i : i + 2], "big") for i in range(0, 20, 2))
    s = (s & 0xFFFF) + (s >> 16)
    ip[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    udp = sport.to_bytes(2, "big") + (2000).to_bytes(2, "big") + (ip_len - 20).to_bytes(2, "big")
    udp += b"\0\0"
    return PORT_MAC + PEER_MAC + b"\x08\x00" + bytes(ip) + udp + bytes(ip_len - 28)


def load(mem: EngineMemory, idx: np.ndarray, frames: list[bytes]) -> None:
    for i, f in zip(idx.tolist(), frames, strict=False):
        mem.data[i, : len(f)] = np.frombuffer(f, np.uint8)
        mem.length[i] = len(f)


def fill_ring(sender: A.AfPacketPort, mem: EngineMemory, idx: np.ndarray, total: int) -> None:
    """Send `total` frames (cycling through the buffers idx) from the peer."""
    sent = 0
    while sent < total:
        k = sender.tx_burst(mem, idx[: min(len(idx), total - sent)])
        sent += k
        if k == 0:
            time.sleep(0.0005)


def ready_blocks(port: A.AfPacketPort) -> list[int]:
    return [b for b in range(port.ring_blocks) if port._block_status[b] & A.TP_STATUS_USER]


def bench_walk(port_dev: str, sender: A.AfPacketPort, mem: EngineMemory, idx: np.ndarray,
               runs: int) -> dict[str, float]:
    """Frames/s of each walker over the same full blocks (walked, never released)."""
    out: dict[str, float] = {}
    port = A.AfPacketPort(port_dev, ring_blocks=16, block_size=1 << 18, walker="python",
                          copier="numpy", tx_mode="ring-numpy", retire_ms=FULL_BLOCKS_MS)
    try:
        fill_ring(sender, mem, idx, 20_000)
        time.sleep(0.05)
        blocks = ready_blocks(port)
        w = A._Walk(port.block_size // 64)
        lib = A.c_helper()
        walkers = {"python": lambda base: A.walk_python(port._rx_map, base, w),
                   "numpy": lambda base: A.walk_numpy(port._r32, port._r8, base, w,
                                                      port._rx_map),
                   "numpy-doubling": lambda base: A.walk_numpy(port._r32, port._r8, base, w)}
        if lib is not None:
            ring = lib.ffi.from_buffer("uint8_t[]", port._r8)
            ptrs = [A._ptr(lib.ffi, a, t) for a, t in ((w.off, "int64_t *"),
                    (w.snap, "uint32_t *"), (w.len, "uint32_t *"), (w.ts, "int64_t *"),
                    (w.pkttype, "uint8_t *"))]
            walkers["c"] = lambda base: lib.lib.fwd_walk_block(ring + base, base, w.cap, *ptrs)
        for name, fn in walkers.items():
            rates = []
            for _ in range(runs):
                n = 0
                t0 = time.perf_counter()
                for _ in range(3 if name == "python" else 20):
                    for b in blocks:
                        n += fn(b * port.block_size)
                rates.append(n / (time.perf_counter() - t0))
            out[name] = statistics.median(rates)
        if lib is not None:
            lib.ffi.release(ring)
            del ptrs
        out["frames_per_block"] = float(np.mean([
            port._r32[b * port.block_size // 4 + A.BLK_NUM_PKTS // 4] for b in blocks]))
    finally:
        port.close()
    return out


def bench_drain(port_dev: str, sender: A.AfPacketPort, mem: EngineMemory, buffers: Buffers,
                idx: np.ndarray, runs: int, combos: list[tuple[str, str]]) -> dict[str, float]:
    out = {}
    for walker, copier in combos:
        rates = []
        for _ in range(runs):
            port = A.AfPacketPort(port_dev, ring_blocks=64, block_size=1 << 18, walker=walker,
                                  copier=copier, tx_mode="ring-numpy", retire_ms=FULL_BLOCKS_MS)
            try:
                fill_ring(sender, mem, idx, 60_000)
                time.sleep(0.05)
                got = 0
                t0 = time.perf_counter()
                while True:
                    r = port.rx_burst(buffers, mem, 0, 256)
                    if len(r) == 0:
                        break
                    got += len(r)
                    buffers.free(r)
                rates.append(got / (time.perf_counter() - t0))
            finally:
                port.close()
        out[f"{walker}/{copier}"] = statistics.median(rates)
    return out


def trafgen_conf(frame: bytes, flows: int = 16) -> str:
    """trafgen packets, one per flow (UDP source port varies), sent round robin."""
    lines = []
    for f in range(flows):
        b = bytearray(frame)
        b[34:36] = (1000 + f).to_bytes(2, "big")
        lines.append("{ " + ", ".join(f"0x{x:02x}" for x in b) + " }")
    return "\n".join(lines) + "\n"


def bench_live(port_dev: str, peer_dev: str, mem: EngineMemory, buffers: Buffers,
               seconds: float, runs: int, combos: list[tuple[str, str]]) -> dict[str, dict]:
    if shutil.which("trafgen") is None:
        return {"skipped": {"reason": "no trafgen (apt-get install netsniff-ng)"}}
    conf = tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False)
    conf.write(trafgen_conf(udp_frame(60)))
    conf.close()
    out: dict[str, dict] = {}
    try:
        for walker, copier in combos:
            rx, drops, busy_share = [], [], []
            for _ in range(runs):
                port = A.AfPacketPort(port_dev, ring_blocks=64, block_size=1 << 18,
                                      walker=walker, copier=copier, tx_mode="ring-numpy")
                gen = subprocess.Popen(["taskset", "-c", "0", "trafgen", "-o", peer_dev, "-i",
                                        conf.name, "-P", "1", "-Q", "-C"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
                try:
                    time.sleep(0.3)  # let it start
                    port.stats()  # reset the kernel's counters
                    got = 0
                    busy = 0.0
                    t0 = time.perf_counter()
                    while (t1 := time.perf_counter()) - t0 < seconds:
                        r = port.rx_burst(buffers, mem, 0, 256)
                        if len(r):
                            got += len(r)
                            buffers.free(r)
                            busy += time.perf_counter() - t1
                    dt = time.perf_counter() - t0
                    st = port.stats()
                    rx.append(got / dt)
                    drops.append(st["kernel_drops"] / dt)
                    busy_share.append(busy / dt)
                finally:
                    os.killpg(gen.pid, signal.SIGINT)
                    try:
                        gen.wait(5)
                    except subprocess.TimeoutExpired:
                        os.killpg(gen.pid, signal.SIGKILL)
                        gen.wait()
                    port.close()
            out[f"{walker}/{copier}"] = {"rx_fps": statistics.median(rx),
                                         "kernel_drops_fps": statistics.median(drops),
                                         "busy": statistics.median(busy_share)}
    finally:
        os.unlink(conf.name)
    return out


def bench_tx(port_dev: str, peer_dev: str, mem: EngineMemory, idx: np.ndarray,
             seconds: float, runs: int, modes: list[str]) -> dict[str, dict]:
    out = {}
    for mode in modes:
        sent_r, seen_r = [], []
        for _ in range(runs):
            port = A.AfPacketPort(port_dev, walker="numpy", copier="numpy", tx_mode=mode,
                                  tx_frames=1024)
            try:
                before = rx_packets(peer_dev)
                sent = 0
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    sent += port.tx_burst(mem, idx)
                dt = time.perf_counter() - t0
                time.sleep(0.05)
                sent_r.append(sent / dt)
                seen_r.append((rx_packets(peer_dev) - before) / dt)
            finally:
                port.close()
        out[mode] = {"tx_fps": statistics.median(sent_r), "peer_rx_fps": statistics.median(seen_r)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 runs of 0.2 s")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds = 2, 0.2
    if os.geteuid() != 0:
        sys.exit("needs root (veth pair, packet sockets)")
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the generator (and veth's receive work) on CPU 0
    lib = A.c_helper()
    combos = [("c", "c"), ("c", "numpy"), ("numpy", "numpy"), ("python", "numpy")]
    modes = ["ring", "ring-numpy", "sendmmsg", "send"]
    if lib is None:
        print(f"C helper unavailable ({A.c_helper_error()}): numpy and Python only")
        combos = [c for c in combos if "c" not in c]
        modes = ["ring-numpy", "send"]
    port_dev, peer_dev = make_veth()
    mem = EngineMemory.create(Geometry.new(1, 1, nbufs=8192, ring_size=64, io_share=0.9))
    results: dict = {"host": platform.node(), "kernel": platform.release(),
                     "python": platform.python_version(), "numpy": np.__version__,
                     "cpus": os.cpu_count(), "runs": args.runs, "seconds": args.seconds}
    try:
        buffers = Buffers(mem, AGENT_IO)
        small = buffers.alloc(256)
        load(mem, small, [udp_frame(60, 1000 + i % 16) for i in range(256)])
        imix = buffers.alloc(256)
        sizes = ([60] * 7 + [576] * 4 + [1500]) * 22
        load(mem, imix, [udp_frame(s, 1000 + i % 16) for i, s in enumerate(sizes[:256])])
        sender = A.AfPacketPort(peer_dev, tx_frames=2048, promisc=False)
        try:
            results["walk_64"] = bench_walk(port_dev, sender, mem, small, args.runs)
            results["walk_imix"] = bench_walk(port_dev, sender, mem, imix, args.runs)
            results["drain_64"] = bench_drain(port_dev, sender, mem, buffers, small, args.runs,
                                              combos)
            results["drain_imix"] = bench_drain(port_dev, sender, mem, buffers, imix,
                                                args.runs, combos)
        finally:
            sender.close()
        if not args.skip_live:
            results["live_64"] = bench_live(port_dev, peer_dev, mem, buffers, args.seconds,
                                            args.runs, combos)
        results["tx_64"] = bench_tx(port_dev, peer_dev, mem, small, args.seconds, args.runs,
                                    modes)
    finally:
        mem.close()
        sh(f"ip link del {port_dev}", check=False)
    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def report(r: dict) -> None:
    m = 1e6
    print(f"\nAF_PACKET driver, {r['host']}, Linux {r['kernel']}, Python {r['python']}, "
          f"numpy {r['numpy']}; median of {r['runs']} runs")
    print("\nBlock walk (Mframes/s; frames per 256 KiB block: "
          f"64 B {r['walk_64']['frames_per_block']:.0f}, "
          f"IMIX {r['walk_imix']['frames_per_block']:.0f})")
    print("| walker | 64 B | IMIX |\n|---|---:|---:|")
    for k in ("c", "numpy", "numpy-doubling", "python"):
        if k in r["walk_64"]:
            print(f"| {k} | {r['walk_64'][k] / m:.2f} | {r['walk_imix'][k] / m:.2f} |")
    print("\nrx_burst(256) draining a full ring into the pool (Mframes/s)")
    print("| walker/copier | 64 B | IMIX |\n|---|---:|---:|")
    for k, v in r["drain_64"].items():
        print(f"| {k} | {v / m:.2f} | {r['drain_imix'][k] / m:.2f} |")
    live = r.get("live_64")
    if live and "skipped" not in live:
        print(f"\nLive: trafgen (CPU 0) -> veth -> rx_burst (CPU 1), {r['seconds']} s (kframes/s)")
        print("| walker/copier | received | kernel ring drops | receiver busy |")
        print("|---|---:|---:|---:|")
        for k, v in live.items():
            print(f"| {k} | {v['rx_fps'] / 1e3:.0f} | {v['kernel_drops_fps'] / 1e3:.0f} "
                  f"| {100 * v['busy']:.0f} % |")
    elif live:
        print(f"\nLive: skipped ({live['skipped']['reason']})")
    print(f"\ntx_burst(256), 64 B frames, {r['seconds']} s (kframes/s)")
    print("| mode | accepted | seen by peer |\n|---|---:|---:|")
    for k, v in r["tx_64"].items():
        print(f"| {k} | {v['tx_fps'] / 1e3:.0f} | {v['peer_rx_fps'] / 1e3:.0f} |")


if __name__ == "__main__":
    main()
