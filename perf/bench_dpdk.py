"""DPDK binding benchmark (issue 6, first part): burst I/O rate through the engine's pool.

For each batch size, one core, 64-byte frames:
  rx     `DpdkPort.rx_burst` into the engine's shared-memory pool (buffer alloc, C copy
         of every mbuf into its row, free of the mbufs, unused buffers given back),
         then the buffers freed;
  rx+tx  the same, then `tx_burst` of those rows (mbuf alloc, copy, send) and free:
         a forwarder that does no forwarding work, i.e. the I/O cost the engine pays.

Devices: `net_null` (no wire at all: the binding's own cost) and `net_pcap` with
`infinite_rx=1` replaying 64-byte frames, TX to a null device (`tx_iface` would be a
syscall per frame). EAL runs with `--no-huge` unless hugepages are reserved.

    .venv/bin/python perf/bench_dpdk.py [--seconds 0.5] [--runs 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from engine.io.dpdk import Dpdk, DpdkPort, hugepages_reserved, no_huge_args
from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
from engine.shm.pool import Buffers

BATCHES = (32, 64, 256, 1024)


def write_64b_pcap(path: Path, n: int = 1024) -> None:
    """n distinct 64-byte UDP frames (written with scapy, a test dependency)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    frames = [Ether(src="02:00:00:00:01:02", dst="02:00:00:00:00:01")
              / IP(src="10.0.1.2", dst=f"10.9.{i % 256}.{i // 256}")
              / UDP(sport=1024 + i, dport=9) / (b"\0" * 18) for i in range(n)]
    assert all(len(f) == 60 for f in frames)  # 64 on the wire with the FCS
    wrpcap(str(path), frames)


def run_once(port: DpdkPort, tx: DpdkPort, mem: EngineMemory, buffers: Buffers, batch: int,
             seconds: float, with_tx: bool) -> float:
    frames = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        for _ in range(64):  # check the clock every 64 bursts, not every burst
            idx = port.rx_burst(0, mem, buffers, 0, batch)
            if with_tx:
                tx.tx_burst(0, mem, idx)
            buffers.free(idx)
            frames += len(idx)
        now = time.perf_counter()
        if now >= deadline:
            return frames / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 runs of 0.05 s")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.seconds = 2, 0.05

    tmpdir = tempfile.TemporaryDirectory(prefix="fwd-bench-dpdk-")
    tmp = Path(tmpdir.name)
    write_64b_pcap(tmp / "in.pcap")
    # one process: --huge-unlink leaves no hugepage files behind
    prefix = f"fwdbench{os.getpid()}"
    mem_args = (["--no-pci", "--huge-unlink", "--file-prefix", prefix]
                if hugepages_reserved() else no_huge_args(512))
    dpdk = Dpdk(["-l", "0", "--log-level=*:error", *mem_args, "--vdev", "net_null0",
                 "--vdev", "net_null1",
                 "--vdev", f"net_pcap0,rx_pcap={tmp / 'in.pcap'},infinite_rx=1"],
                mbufs=16383)
    null_rx = dpdk.port("net_null0")
    null_tx = dpdk.port("net_null1")
    pcap = dpdk.port("net_pcap0")
    mem = EngineMemory.create(Geometry.new(1, 1, nbufs=4096, ring_size=64))
    buffers = Buffers(mem, AGENT_IO)
    rows = []
    try:
        for device, rx in (("net_null", null_rx), ("net_pcap infinite_rx", pcap)):
            for with_tx in (False, True):
                for batch in BATCHES:
                    rates = [run_once(rx, null_tx, mem, buffers, batch, args.seconds, with_tx)
                             for _ in range(args.runs)]
                    rows.append({"device": device, "mode": "rx+tx" if with_tx else "rx",
                                 "batch": batch, "mpps": statistics.median(rates) / 1e6,
                                 "spread": (max(rates) - min(rates)) / statistics.median(rates)})
                    r = rows[-1]
                    print(f"{device:22s} {r['mode']:6s} batch {batch:5d}  "
                          f"{r['mpps']:7.2f} Mfps  (spread {r['spread']:.0%})", flush=True)
        stats = {"null_rx": null_rx.stats(), "null_tx": null_tx.stats(), "pcap": pcap.stats()}
    finally:
        dpdk.close()
        mem.close()
        tmpdir.cleanup()
        # EAL leaves its runtime directory behind (root: /var/run/dpdk)
        runtime = os.environ.get("XDG_RUNTIME_DIR", "/tmp") if os.geteuid() else "/var/run"
        shutil.rmtree(f"{runtime}/dpdk/{prefix}", ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({
            "what": "dpdk binding burst I/O, one core, 64-byte frames",
            "host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "dpdk": dpdk.version, "hugepages": hugepages_reserved(), "seconds": args.seconds,
            "runs": args.runs, "rows": rows, "stats": stats}, indent=1))


if __name__ == "__main__":
    main()
