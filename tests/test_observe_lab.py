"""`fwd trace` and `fwd capture` on a live engine: AF_PACKET ports in the namespace lab.

Packets must arrive after the trace or capture is armed, so h1 sends them the whole
time the command runs: a sender in h1's namespace puts one UDP frame on the wire every
20 ms (scapy `sendp`), each with its number in the payload, addressed at L2 to the
engine's p0 and at L3 to h2. The test builds what each numbered frame is and what
the engine must make of it with scapy, on its own, and compares: the trace's records
(parsed fields, next hop, rewrite, verdict) and the capture file's frames byte for
byte (read by scapy, and by tcpdump when installed). Needs root, like test_lab.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from engine.cli.lab import Lab, down, up

FWD = [sys.executable, "-m", "engine.cli"]
P0_MAC, P1_MAC = "02:00:00:00:01:01", "02:00:00:00:02:01"


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET)"
    if shutil.which("ip") is None or shutil.which("ping") is None:
        return "needs iproute2 and ping"
    return None


pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

CONFIG = """
[engine]
workers = 2
batch = 64
netns = "{router}"
control_socket = "{sock}"

[metrics]
listen = "127.0.0.1:{metrics}"

[[port]]
name = "p0"
driver = "afpacket"
iface = "p0"
mac = "{p0}"
addresses = ["10.0.1.1/24"]

[[port]]
name = "p1"
driver = "afpacket"
iface = "p1"
mac = "{p1}"
addresses = ["10.0.2.1/24"]
"""

SENDER = textwrap.dedent("""
    import sys, time
    from scapy.all import Ether, IP, UDP, Raw, conf
    s = conf.L2socket(iface="eth0")
    src, dst = sys.argv[1], sys.argv[2]
    n = 0
    while True:
        s.send(Ether(src=src, dst=dst) / IP(src="10.0.1.2", dst="10.0.2.2", id=n)
               / UDP(sport=4000, dport=9) / Raw(b"obs%06d" % n))
        n += 1
        time.sleep(0.02)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          timeout=60)


def mac_of(ns: str) -> str:
    return json.loads(sh(ns, "ip", "-j", "link", "show", "eth0").stdout)[0]["address"]


def sent(n: int, h1: str) -> Ether:
    """What the sender's frame number n is (built here, independently)."""
    return Ether(bytes(Ether(src=h1, dst=P0_MAC) / IP(src="10.0.1.2", dst="10.0.2.2", id=n)
                       / UDP(sport=4000, dport=9) / Raw(b"obs%06d" % n)))


def forwarded(n: int, h1: str, h2: str) -> bytes:
    pkt = sent(n, h1)
    pkt[Ether].src, pkt[Ether].dst = P1_MAC, h2
    pkt[IP].ttl -= 1
    del pkt[IP].chksum
    return bytes(Ether(bytes(pkt)))


def number(frame: bytes) -> int:
    m = re.search(rb"obs(\d{6})", frame)
    assert m, frame
    return int(m.group(1))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    prefix = f"ob{os.getpid() % 100000}"
    down(prefix)
    lab: Lab = up(prefix)
    d = tmp_path_factory.mktemp("oblab")
    sock = d / "fwd.sock"
    cfg = d / "lab.toml"
    metrics = free_port()
    cfg.write_text(CONFIG.format(router=lab.router, sock=sock, p0=P0_MAC, p1=P1_MAC,
                                 metrics=metrics))
    engine = subprocess.Popen([*FWD, "run", str(cfg)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    sender = None
    try:
        deadline = time.monotonic() + 60
        while True:
            assert engine.poll() is None, engine.communicate()[1]
            assert time.monotonic() < deadline, "engine did not start"
            r = subprocess.run([*FWD, "stats", "--json", "--socket", str(sock)],
                               capture_output=True, text=True)
            if r.returncode == 0 and all(w["loops"] for w in json.loads(r.stdout)["workers"]):
                break
            time.sleep(0.1)
        # the engine learns h2's MAC (ARP), so the sender's frames take the fast path
        ping = sh(lab.host("h1"), "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "10.0.2.2")
        assert " 0% packet loss" in ping.stdout, ping.stdout
        h1, h2 = mac_of(lab.host("h1")), mac_of(lab.host("h2"))
        sender = subprocess.Popen(["ip", "netns", "exec", lab.host("h1"), sys.executable, "-c",
                                   SENDER, h1, P0_MAC], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        yield sock, h1, h2, metrics
    finally:
        if sender is not None:
            sender.kill()
            sender.wait()
        engine.terminate()
        engine.communicate(timeout=60)
        down(prefix)


def test_trace_follows_live_packets_stage_by_stage(live):
    sock, h1, h2, _ = live
    r = subprocess.run([*FWD, "trace", "4", "--port", "p0", "--json", "--timeout", "30",
                        "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    assert len(records) == 4, r.stderr
    numbers = []
    for rec in records:
        hdr_in = bytes.fromhex(rec["hdr_in"])[: rec["length"]]
        n = number(hdr_in)
        numbers.append(n)
        expect = sent(n, h1)
        assert hdr_in == bytes(expect)[:80]
        ip = expect[IP]
        assert (rec["saddr"], rec["daddr"]) == (0x0A000102, 0x0A000202)
        assert (rec["ttl"], rec["tot_len"], rec["protocol"]) == (ip.ttl, ip.len, 17)
        assert rec["in_port"] == 0 and rec["length"] == len(expect)
        assert (rec["rcv_code"], rec["route_code"], rec["forward_code"],
                rec["final_code"]) == (0, 0, 0, 0)
        assert rec["egress"] == 1 and rec["neighbour"] == 0x0A000202
        assert bytes.fromhex(rec["hdr_out"]) == forwarded(n, h1, h2)[:34]
    assert numbers == sorted(numbers)
    r = subprocess.run([*FWD, "trace", "1", "--port", "p0", "--timeout", "30",
                        "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ipv4: 10.0.1.2 > 10.0.2.2 udp" in r.stdout
    assert r.stdout.rstrip().endswith("verdict: forward on p1, 51 bytes"), r.stdout


@pytest.mark.parametrize("point", ["rx", "tx"])
def test_capture_writes_the_frames_as_received_or_sent(live, tmp_path, point):
    sock, h1, h2, _ = live
    out = tmp_path / f"{point}.pcap"
    port = "p0" if point == "rx" else "p1"
    r = subprocess.run([*FWD, "capture", port, "--at", point, "-w", str(out), "--count", "5",
                        "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "5 frames written" in r.stderr, r.stderr
    frames = [bytes(p) for p in rdpcap(str(out))]
    assert len(frames) == 5
    numbers = [number(f) for f in frames]
    assert numbers == list(range(numbers[0], numbers[0] + 5))  # none missed, none twice
    for n, f in zip(numbers, frames, strict=True):
        assert f == (bytes(sent(n, h1)) if point == "rx" else forwarded(n, h1, h2))
    if shutil.which("tcpdump"):
        t = subprocess.run(["tcpdump", "-nn", "-r", str(out)], capture_output=True, text=True)
        assert t.returncode == 0, t.stderr
        assert len(t.stdout.splitlines()) == 5
        assert "10.0.1.2.4000 > 10.0.2.2.9: UDP" in t.stdout


def test_capture_drop_names_the_reason(live, tmp_path):
    sock, h1, _, _ = live
    out = tmp_path / "drop.pcap"
    # a blackhole route for h2's address: the sender's frames are now dropped
    subprocess.run([*FWD, "route", "add", "10.0.2.2/32", "--type", "blackhole",
                    "--socket", str(sock)], check=True, capture_output=True)
    try:
        r = subprocess.run([*FWD, "capture", "p0", "--at", "drop", "-w", str(out),
                            "--count", "3", "--socket", str(sock)],
                           capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run([*FWD, "route", "del", "10.0.2.2/32", "--socket", str(sock)],
                       check=True, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert "drop reasons: blackhole=3" in r.stderr
    frames = [bytes(p) for p in rdpcap(str(out))]
    assert frames == [bytes(sent(number(f), h1)) for f in frames]
    assert len(frames) == 3


def test_capture_path_is_a_pcap_tcpdump_reads(live, tmp_path):
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    sock, *_ = live
    out = Path(tmp_path) / "any.pcap"
    r = subprocess.run([*FWD, "capture", "any", "-w", str(out), "--count", "2",
                        "--socket", str(sock)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    t = subprocess.run(["tcpdump", "-nn", "-e", "-r", str(out)], capture_output=True, text=True)
    assert t.returncode == 0 and len(t.stdout.splitlines()) == 2, t.stdout + t.stderr


def test_capture_any_with_a_filter_writes_the_matching_frames_with_their_port(live,
                                                                              tmp_path):
    """tcpdump's words: odd IP IDs only (the sender numbers its frames with the ID);
    `any` writes pcapng, whose interface of each frame is the port it came in on."""
    sock, h1, _, _ = live
    out = tmp_path / "odd.pcapng"
    r = subprocess.run([*FWD, "capture", "any", "-w", str(out), "--count", "4",
                        "--socket", str(sock), "udp", "and", "ip[5]", "&", "1", "=", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "4 frames written" in r.stderr, r.stderr
    from test_capture_filter import pcapng_blocks

    blocks = pcapng_blocks(out.read_bytes())
    # each interface's first option is its if_name (code 2)
    names = [b[12: 12 + struct.unpack_from("<HH", b, 8)[1]].decode()
             for k, b in blocks if k == 1]
    assert names[:2] == ["p0", "p1"]
    got = [(struct.unpack_from("<I", b)[0], b[20: 20 + struct.unpack_from("<I", b, 12)[0]])
           for k, b in blocks if k == 6]
    numbers = [number(f) for _, f in got]
    assert [n % 2 for n in numbers] == [1, 1, 1, 1]
    assert numbers == list(range(numbers[0], numbers[0] + 8, 2))  # no odd one missed
    assert got == [(0, bytes(sent(n, h1))) for n in numbers]  # as received on p0


def test_metrics_are_scraped_from_the_host_namespace(live):
    """[metrics] listens where `fwd run` was started, not in [engine] netns: this test
    process, in the host namespace, scrapes it while the sender's frames flow."""
    import urllib.request

    *_, metrics = live
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    forwarded = [line for line in text.splitlines()
                 if line.startswith('fwd_ip_total{counter="ForwDatagrams"}')]
    assert forwarded and float(forwarded[0].split()[-1]) > 0, forwarded
