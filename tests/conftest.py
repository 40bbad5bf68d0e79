"""Shared test topology: a router with three pcap ports and hosts behind them.

    h1 10.0.1.2 ── p0 10.0.1.1/24                 ┌─ p1 10.0.2.1/24 ── h2 10.0.2.2, gw 10.0.2.254
                                      router ─────┤
                                                  └─ p2 10.0.3.1/24 (MTU 1400) ── h3 10.0.3.2
"""

from __future__ import annotations

import os
import re
import struct
import textwrap
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap, wrpcap

MAC = {
    "p0": "02:00:00:00:00:01",
    "p1": "02:00:00:00:00:02",
    "p2": "02:00:00:00:00:03",
    "h1": "02:00:00:00:01:02",
    "h2": "02:00:00:00:02:02",
    "gw": "02:00:00:00:02:fe",
    "h3": "02:00:00:00:03:02",
    "stranger": "02:00:00:00:99:99",
}
BCAST = "ff:ff:ff:ff:ff:ff"

TOPOLOGY = """
[engine]
workers = {workers}
batch = {batch}
datapath = "{datapath}"

[[port]]
name = "p0"
driver = "pcap"
rx = "in/p0.pcap"
tx = "out/p0.pcap"
mac = "02:00:00:00:00:01"
mtu = 1500
addresses = ["10.0.1.1/24"]

[[port]]
name = "p1"
driver = "pcap"
rx = "in/p1.pcap"
tx = "out/p1.pcap"
mac = "02:00:00:00:00:02"
mtu = 1500
addresses = ["10.0.2.1/24"]

[[port]]
name = "p2"
driver = "pcap"
rx = "in/p2.pcap"
tx = "out/p2.pcap"
mac = "02:00:00:00:00:03"
mtu = 1400
addresses = ["10.0.3.1/24"]

[[route]]
prefix = "10.9.0.0/16"
via = "10.0.2.254"

[[route]]
prefix = "10.9.8.0/24"
via = "10.0.1.2"

[[route]]
prefix = "10.9.8.128/25"
via = "10.0.3.2"

[[route]]
prefix = "10.66.0.0/16"
type = "blackhole"

[[route]]
prefix = "10.67.0.0/16"
type = "unreachable"

[[route]]
prefix = "10.68.0.0/16"
type = "prohibit"

[[route]]
prefix = "10.69.0.0/16"
port = "p1"

[[route]]
prefix = "10.77.0.0/16"
nexthops = [{{via = "10.0.2.254"}}, {{via = "10.0.3.2"}}]

[[neighbor]]
ip = "10.0.1.2"
mac = "02:00:00:00:01:02"
port = "p0"

[[neighbor]]
ip = "10.0.2.2"
mac = "02:00:00:00:02:02"
port = "p1"

[[neighbor]]
ip = "10.0.2.254"
mac = "02:00:00:00:02:fe"
port = "p1"

[[neighbor]]
ip = "10.0.3.2"
mac = "02:00:00:00:03:02"
port = "p2"

[reassembly]
mode = "{reassembly}"
"""

PORTS = ("p0", "p1", "p2")
# the workers' datapath in every Lab: `make test` runs the end-to-end suites again with
# FWD_TEST_DATAPATH=numpy, the readable reference beside the compiled default
DATAPATH = os.environ.get("FWD_TEST_DATAPATH", "compiled")


class Lab:
    """A deployment in a temporary folder: write inputs, run, read outputs."""

    def __init__(self, root: Path, workers: int = 1, batch: int = 64,
                 reassembly: str = "full"):
        self.root = root
        (root / "in").mkdir(exist_ok=True)
        self.config_path = root / "router.toml"
        self.config_path.write_text(textwrap.dedent(TOPOLOGY.format(
            workers=workers, batch=batch, reassembly=reassembly, datapath=DATAPATH)))
        for port in PORTS:
            self.write_input(port, [])

    def write_input(self, port: str, frames: list) -> None:
        path = self.root / "in" / f"{port}.pcap"
        if frames:
            wrpcap(str(path), frames)
        else:  # an empty capture: just the global header (microseconds, Ethernet)
            path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

    def config(self):
        from engine.config import load_config

        return load_config(self.config_path)

    def run(self, inputs: dict[str, list]):
        from engine.control.supervisor import run

        for port, frames in inputs.items():
            self.write_input(port, frames)
        result = run(self.config())
        outputs = {}
        for port in PORTS:
            path = self.root / "out" / f"{port}.pcap"
            outputs[port] = list(rdpcap(str(path))) if path.stat().st_size > 24 else []
        return result.stats, outputs


@pytest.fixture
def lab(tmp_path):
    return Lab(tmp_path)


def routed(frame: Ether, port: str, nexthop: str) -> bytes:
    """What scapy says a correctly forwarded copy of `frame` looks like."""
    pkt = frame.copy()
    pkt[Ether].src = MAC[port]
    pkt[Ether].dst = MAC[nexthop]
    pkt[IP].ttl -= 1
    del pkt[IP].chksum
    return bytes(Ether(bytes(pkt)))


def no_shm_leak(pid: int | None = None) -> list[str]:
    """Segments left by the engine run in process `pid` (default: this process).
    Engine segments are named fwd-<pid>-...; other runs on the machine are not ours."""
    prefix = f"fwd-{pid or os.getpid()}-"
    return [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]


def set_ip_checksums(frames):
    """Recompute the IPv4 header checksum (RFC 1071) of every row: a 20-byte header
    after a 14-byte Ethernet header. Written out here, independent of the engine's own."""
    import numpy as np

    words = frames[:, 14:34].view(">u2").astype(np.uint32)
    words[:, 5] = 0
    c = words.sum(axis=1)
    c = (c & 0xFFFF) + (c >> 16)
    c = (c & 0xFFFF) + (c >> 16)
    frames[:, 24] = (~c >> 8) & 0xFF
    frames[:, 25] = ~c & 0xFF


def flood(lab: Lab, n: int, dst: tuple[int, int, int, int], seed: int = 5) -> None:
    """n 64-byte UDP frames h1 → dst on p0, over many flows, written straight as a pcap
    (scapy is too slow for this many)."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))
    from engine.io.pcap import write_pcap

    from bench_fastpath import udp_frames

    frames = udp_frames(n, np.random.default_rng(seed))
    frames[:, 30:34] = dst
    set_ip_checksums(frames)
    offsets = np.arange(n, dtype=np.int64) * frames.shape[1]
    lengths = np.full(n, frames.shape[1], dtype=np.uint32)
    ts = 1_000_000_000 + np.arange(n, dtype=np.int64) * 1000
    write_pcap(lab.root / "in" / "p0.pcap", frames.ravel(), offsets, lengths, ts)


def load_frames(mem, io, frames, port: int = 0):
    """Frames (bytes or scapy packets) into buffers from `io`'s partition, as a driver
    would put them: data, length and ingress port. Returns the buffer indices."""
    import numpy as np

    idx = io.alloc(len(frames))
    for i, f in zip(idx, frames, strict=True):
        raw = bytes(f)
        mem.data[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        mem.length[i] = len(raw)
        mem.port[i] = port
    return idx


def remove_dpdk_runtime_dirs(prefix: str) -> None:
    """EAL runtime directories of file prefixes starting with `prefix` (a test's own)."""
    import shutil

    runtime = os.environ.get("XDG_RUNTIME_DIR", "/tmp") if os.geteuid() else "/var/run"
    for d in Path(runtime, "dpdk").glob(f"{prefix}*"):
        shutil.rmtree(d, ignore_errors=True)


def log_lines(stderr: str) -> list[str]:
    """The engine's log lines without the time and level a kept engine stamps them with
    (engine/cli/logs.py)."""
    return [re.sub(r"^\d{4}-\d\d-\d\dT[\d:.]+ [a-z]+ ", "", x)
            for x in stderr.strip().splitlines()]
