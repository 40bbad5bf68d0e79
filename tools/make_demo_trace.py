"""Write the demo trace that configs/default.toml replays (deterministic).

    .venv/bin/python tools/make_demo_trace.py configs/demo

Traffic on p0 (10.0.1.0/24, hosts .2-.9) and p1 (10.0.2.0/24, gateway .254 to
10.9.0.0/16): a few UDP, TCP and ICMP flows each way, a handful of frames the
router must drop (bad checksum, martian source, blackhole route, not addressed to
it at L2) and a handful for the slow path (TTL 1, no route, IP options, fragments,
a ping to the router).
"""

from __future__ import annotations

import sys
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

R0, R1 = "02:00:00:00:00:01", "02:00:00:00:00:02"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def host_mac(net: int, host: int) -> str:
    return f"02:00:00:00:{net:02x}:{host:02x}"


def frames() -> tuple[list, list]:
    p0, p1 = [], []
    t = START
    for i in range(400):
        t += 0.0005
        host = 2 + i % 8
        size = (64, 200, 576, 1400)[i % 4]
        fwd = (Ether(src=host_mac(1, host), dst=R0)
               / IP(src=f"10.0.1.{host}", dst=f"10.0.2.{2 + i % 3}", id=i)
               / UDP(sport=10000 + i % 16, dport=5001) / Raw(b"d" * size))
        fwd.time = t
        p0.append(fwd)
        if i % 3 == 0:
            tcp = (Ether(src=host_mac(1, host), dst=R0)
                   / IP(src=f"10.0.1.{host}", dst=f"10.9.{i % 5}.7", id=i)
                   / TCP(sport=40000 + host, dport=443, flags="A", seq=i * 1000)
                   / Raw(b"t" * 100))
            tcp.time = t + 0.0001
            p0.append(tcp)
        if i % 2 == 0:
            back = (Ether(src=host_mac(2, 254), dst=R1)
                    / IP(src=f"10.9.{i % 5}.7", dst=f"10.0.1.{host}", id=i)
                    / TCP(sport=443, dport=40000 + host, flags="A", seq=i) / Raw(b"r" * 60))
            back.time = t + 0.0002
            p1.append(back)
        if i % 50 == 0:
            ping = (Ether(src=host_mac(1, host), dst=R0)
                    / IP(src=f"10.0.1.{host}", dst="10.0.2.2") / ICMP(id=7, seq=i))
            ping.time = t + 0.0003
            p0.append(ping)
    t += 0.001
    odd = [
        # drops
        Ether(src=host_mac(1, 2), dst=R0) / IP(src="10.0.1.2", dst="10.0.2.2", chksum=0x1234)
        / UDP(),
        Ether(src=host_mac(1, 2), dst=R0) / IP(src="224.0.0.9", dst="10.0.2.2") / UDP(),
        Ether(src=host_mac(1, 2), dst=R0) / IP(src="10.0.1.2", dst="10.66.0.1") / UDP(),
        Ether(src=host_mac(1, 2), dst="02:00:00:00:99:99") / IP(src="10.0.1.2", dst="10.0.2.2")
        / UDP(),
        # slow path
        Ether(src=host_mac(1, 2), dst=R0) / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1) / UDP(),
        Ether(src=host_mac(1, 2), dst=R0) / IP(src="10.0.1.2", dst="192.0.2.1") / UDP(),
        Ether(src=host_mac(1, 2), dst=R0)
        / IP(src="10.0.1.2", dst="10.0.2.2", options=[IPOption_RR(routers=["0.0.0.0"] * 3)])
        / ICMP(),
        Ether(src=host_mac(1, 2), dst=R0) / IP(src="10.0.1.2", dst="10.0.1.1") / ICMP(),
    ]
    frag = IP(src="10.0.1.3", dst="10.0.2.2", id=999) / UDP(sport=7, dport=7) / Raw(b"f" * 2000)
    from scapy.layers.inet import fragment

    odd += [Ether(src=host_mac(1, 3), dst=R0) / f for f in fragment(frag, fragsize=1000)]
    for k, f in enumerate(odd):
        f.time = t + k * 0.0001
        p0.append(f)
    p0.sort(key=lambda f: float(f.time))
    p1.sort(key=lambda f: float(f.time))
    return p0, p1


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    p0, p1 = frames()
    wrpcap(str(out / "p0.pcap"), p0)
    wrpcap(str(out / "p1.pcap"), p1)
    print(f"{out}/p0.pcap: {len(p0)} frames, {out}/p1.pcap: {len(p1)} frames")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "configs/demo")
