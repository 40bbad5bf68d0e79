"""`fwd capture`'s filter expressions decide as tcpdump does on the same frames, and
`capture any`'s pcapng names each frame's port (read back by an independent parser
here and by tcpdump)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import rdpcap, wrpcap

from engine.cli.bpf import Filter, FilterError
from engine.io.pcap import PcapngWriter

ROOT = Path(__file__).resolve().parent.parent
H1, P0 = "02:00:00:00:01:02", "02:00:00:00:00:01"

FRAMES = [
    Ether(src=H1, dst=P0) / IP(src="10.0.1.2", dst="10.0.2.2", id=1) / UDP(sport=4000, dport=9),
    Ether(src=H1, dst=P0) / IP(src="10.0.1.2", dst="10.0.2.3", id=2) / UDP(sport=53, dport=53),
    Ether(src=H1, dst=P0) / IP(src="10.0.1.2", dst="10.0.2.2", id=3) / TCP(dport=80, flags="S"),
    Ether(src=H1, dst=P0) / IP(src="10.0.1.2", dst="10.0.1.1", id=4) / ICMP(type=8),
    Ether(src=H1, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.1.2", pdst="10.0.1.1"),
    Ether(src=H1, dst=P0) / IP(src="10.0.1.2", dst="10.0.2.2", id=5, flags="MF", frag=0)
    / UDP(sport=1, dport=2) / bytes(100),
    Ether(src=H1, dst=P0) / IP(src="10.0.1.2", dst="10.0.2.2", id=5, frag=16) / bytes(40),
]
EXPRESSIONS = ["udp", "udp and dst host 10.0.2.2", "tcp[tcpflags] & tcp-syn != 0",
               "icmp[icmptype] = icmp-echo", "arp", "ip[6:2] & 0x1fff != 0",
               "not ip", "ip[5] & 1 = 1", "net 10.0.2.0/24 and not port 9", "ether broadcast"]


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump (Debian: tcpdump)")
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_a_filter_keeps_what_tcpdump_keeps(tmp_path: Path, expression: str):
    src = tmp_path / "all.pcap"
    wrpcap(str(src), FRAMES)
    want = tmp_path / "tcpdump.pcap"
    r = subprocess.run(["tcpdump", "-r", str(src), "-w", str(want), expression],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    kept = [bytes(p) for p in rdpcap(str(want))]
    f = Filter(expression)
    assert [bytes(x) for x in FRAMES if f.matches(bytes(x))] == kept
    assert 0 < len(kept) < len(FRAMES) or expression == "not ip"  # each one decides


def test_a_bad_expression_is_libpcaps_message():
    with pytest.raises(FilterError, match=r"filter 'udp and': .*syntax error"):
        Filter("udp and")


def pcapng_blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(block type, body) of a little-endian pcapng, walked here from the spec."""
    out, pos = [], 0
    while pos < len(data):
        kind, size = struct.unpack_from("<II", data, pos)
        assert size % 4 == 0 and struct.unpack_from("<I", data, pos + size - 4)[0] == size
        out.append((kind, data[pos + 8: pos + size - 4]))
        pos += size
    return out


def test_pcapng_names_the_port_of_each_frame(tmp_path: Path):
    out = io.BytesIO()
    w = PcapngWriter(out, ["p0", "p1", "p2"])
    frames = [bytes(f) for f in FRAMES[:3]]
    w.write(frames, [1_700_000_000_123_456_789, 1_700_000_001_000_000_001, 5], [0, 2, 1])
    blocks = pcapng_blocks(out.getvalue())
    assert [k for k, _ in blocks] == [0x0A0D0D0A, 1, 1, 1, 6, 6, 6]
    names = []
    for _, body in blocks[1:4]:
        linktype, _, snaplen = struct.unpack_from("<HHI", body)
        assert linktype == 1
        opts, pos = {}, 8
        while pos < len(body):
            code, length = struct.unpack_from("<HH", body, pos)
            opts[code] = body[pos + 4: pos + 4 + length]
            pos += 4 + length + (-length % 4)
        names.append(opts[2].decode())
        assert opts[9] == b"\x09"  # nanoseconds
    assert names == ["p0", "p1", "p2"]
    got = []
    for _, body in blocks[4:]:
        iface, hi, lo, caplen, length = struct.unpack_from("<IIIII", body)
        got.append((iface, (hi << 32) | lo, body[20: 20 + caplen]))
    assert got == [(0, 1_700_000_000_123_456_789, frames[0]),
                   (2, 1_700_000_001_000_000_001, frames[1]), (1, 5, frames[2])]
    if shutil.which("tcpdump"):
        f = tmp_path / "any.pcapng"
        f.write_bytes(out.getvalue())
        r = subprocess.run(["tcpdump", "-nn", "-r", str(f), "udp"], capture_output=True,
                           text=True)
        assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stdout + r.stderr


def test_capture_refuses_a_bad_expression_before_asking_the_engine(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "engine.cli", "capture", "p0", "-w",
                        str(tmp_path / "x.pcap"), "udp", "and", "--socket",
                        str(tmp_path / "none.sock")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("fwd: capture: filter 'udp and': "), r
    assert not (tmp_path / "x.pcap").exists()
