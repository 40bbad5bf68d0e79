"""Differential test: the running Linux kernel against `fwd run`, on the same frames.

The conftest topology is built in network namespaces: a router namespace (forwarding
on, the sysctls of KERNEL-NOTES.md but `accept_source_route=0`, as the engine's
config here, and the kernel's default ICMP rate limits, as the engine's) with three
veths to three host namespaces whose ends carry the hosts' MACs and no address (so
the hosts' own stacks stay silent). Each case's frames are injected from the host
side with AF_PACKET, at a recorded time, and everything the kernel sends out of its
ports is captured there. `fwd run` then gets the same frames on pcap ports, stamped
with the times they were sent to the kernel, so that rate limits see the same
clock. The two outputs must be equal byte for byte, case by case and port by port,
after normalising the IP ID (and header checksum) of packets the router originates.

Needs root and iproute2 (`ip netns`); skipped, saying what is missing, otherwise.
Namespaces are the test's own (unique names) and are deleted afterwards; no traffic
leaves them.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet import fragment as scapy_fragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import checksum

from engine.counters import Icmp

from conftest import BCAST, MAC, Lab
from test_slowpath import norm, run_bounded

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SETTLE_S = 0.25  # how long the kernel gets to answer a case
ETH_P_IP, ETH_P_ARP = b"\x08\x00", b"\x08\x06"
HOSTS = {"p0": "h1", "p1": "h2", "p2": "h3"}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=30)


class KernelRouter:
    """The conftest topology around a Linux router, in namespaces named `prefix-*`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.router = f"{prefix}-r"
        self.hosts = {p: f"{prefix}-{h}" for p, h in HOSTS.items()}
        self.created: list[str] = []
        self.socks: dict[str, socket.socket] = {}

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        r = self.router
        for ns in (r, *self.hosts.values()):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            self.sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1")
        mtu = {"p0": 1500, "p1": 1500, "p2": 1400}
        for i, (port, ns) in enumerate(self.hosts.items()):
            end = f"e{i}"
            sh("ip", "-n", r, "link", "add", port, "type", "veth", "peer", "name", end,
               "netns", ns)
            sh("ip", "-n", r, "link", "set", port, "address", MAC[port], "mtu", str(mtu[port]))
            sh("ip", "-n", ns, "link", "set", end, "address", MAC[HOSTS[port]],
               "mtu", str(mtu[port]))
            for dev, where in ((port, r), (end, ns)):
                if shutil.which("ethtool"):  # offloads off: frames are seen as sent
                    subprocess.run(["ip", "netns", "exec", where, "ethtool", "-K", dev, "tx",
                                    "off", "rx", "off", "gso", "off", "gro", "off", "tso",
                                    "off", "sg", "off"], capture_output=True, timeout=30)
                sh("ip", "-n", where, "link", "set", dev, "up")
        sh("ip", "-n", r, "link", "set", "lo", "up")
        for port, addr in (("p0", "10.0.1.1/24"), ("p1", "10.0.2.1/24"), ("p2", "10.0.3.1/24")):
            sh("ip", "-n", r, "addr", "add", addr, "dev", port)
        neighbours = [(ip_, MAC[name], port) for ip_, name, port in (
            ("10.0.1.2", "h1", "p0"), ("10.0.2.2", "h2", "p1"), ("10.0.2.254", "gw", "p1"),
            ("10.0.3.2", "h3", "p2"))]
        neighbours += [(ip_, mac, "p0") for ip_, mac in BURST_HOSTS.items()]
        for ip_, mac, port in neighbours:
            sh("ip", "-n", r, "neigh", "replace", ip_, "lladdr", mac, "dev", port,
               "nud", "permanent")
        for route in (["10.9.0.0/16", "via", "10.0.2.254"], ["10.9.8.0/24", "via", "10.0.1.2"],
                      ["10.9.8.128/25", "via", "10.0.3.2"], ["blackhole", "10.66.0.0/16"],
                      ["unreachable", "10.67.0.0/16"], ["prohibit", "10.68.0.0/16"],
                      ["10.69.0.0/16", "dev", "p1"]):
            sh("ip", "-n", r, "route", "add", *route)
        conf = [f"net.ipv4.conf.{d}.{k}={v}" for d in ("all", "default", "p0", "p1", "p2")
                for k, v in (("rp_filter", 0), ("accept_source_route", 0),
                             ("send_redirects", 1), ("shared_media", 1))]
        self.sysctl(r, "net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=1000",
                    "net.ipv4.icmp_echo_ignore_broadcasts=1",
                    "net.ipv4.icmp_errors_use_inbound_ifaddr=0", *conf)
        for i, (port, ns) in enumerate(self.hosts.items()):
            self.socks[port] = self._packet_socket(ns, f"e{i}")

    @staticmethod
    def sysctl(ns: str, *settings: str) -> None:
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", *settings)

    def snmp(self) -> dict[str, dict[str, int]]:
        """The router's /proc/net/snmp: {section: {name: value}} (a section's lines
        come in pairs, names then values; IcmpMsg has none until a type is counted)."""
        text = subprocess.run(["ip", "netns", "exec", self.router, "cat", "/proc/net/snmp"],
                              check=True, capture_output=True, text=True, timeout=30).stdout
        lines: dict[str, list[list[str]]] = {}
        for line in text.splitlines():
            section, *fields = line.split()
            lines.setdefault(section.rstrip(":"), []).append(fields)
        return {section: {k: int(v) for names, values in zip(rows[::2], rows[1::2], strict=True)
                          for k, v in zip(names, values, strict=True)}
                for section, rows in lines.items()}

    def _packet_socket(self, ns: str, dev: str) -> socket.socket:
        """An AF_PACKET socket on `dev` inside namespace `ns` (a socket stays in the
        namespace it was made in, so this thread goes there and comes back)."""
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            try:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                s.bind((dev, 0))
                s.setblocking(False)
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(home)
            os.close(there)
        return s

    def teardown(self) -> None:
        for s in self.socks.values():
            s.close()
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    # ------------------------------------------------------------------ a case

    def exchange(self, frames: list[tuple[str, bytes]], *, settle: float = SETTLE_S,
                 types: tuple[bytes, ...] = (ETH_P_IP,)) -> tuple[list[float],
                                                                  dict[str, list[bytes]]]:
        """Send (port, frame) from the hosts' side, in order; the times they were sent
        (time.time()) and what the router sent on each port (ethertypes `types`: IPv4
        unless told) within `settle` seconds, in order."""
        self._drain()
        sent = []
        for port, frame in frames:
            sent.append(time.time())
            self.socks[port].send(frame)
            time.sleep(0.002)
        deadline = time.monotonic() + settle
        out: dict[str, list[bytes]] = {p: [] for p in self.socks}
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(self.socks.values()), [], [], left)
            for port, s in self.socks.items():
                if s in ready:
                    out[port] += self._read(s, types)
        return sent, out

    @staticmethod
    def _read(s: socket.socket, types: tuple[bytes, ...] = (b"\x08\x00",)) -> list[bytes]:
        got = []
        while True:
            try:
                data, addr = s.recvfrom(65535)
            except BlockingIOError:
                return got
            if addr[2] != PACKET_OUTGOING and data[12:14] in types:
                got.append(data)

    def _drain(self) -> None:
        for s in self.socks.values():
            self._read(s)


@pytest.fixture(scope="module")
def kernel():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, AF_PACKET)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 (`ip`)")
    # the pid and a random part: no other session's namespaces share the name
    k = KernelRouter(f"fwdk{os.getpid()}-{secrets.token_hex(3)}")
    try:
        try:
            k.setup()
        except (subprocess.CalledProcessError, OSError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            pytest.skip(f"cannot build the namespace lab (`ip netns`): {detail.strip()}")
        yield k
    finally:
        k.teardown()


# ------------------------------------------------------------------ the cases


def h1(dst: str, eth_dst: str = MAC["p0"], **ip) -> Ether:
    ip.setdefault("src", "10.0.1.2")
    return Ether(src=MAC["h1"], dst=eth_dst) / IP(dst=dst, **ip)


def udp(n: int = 20) -> UDP:
    return UDP(sport=4321, dport=9) / Raw(bytes((i * 7) & 0xFF for i in range(n)))


def ping_fragments() -> list[Ether]:
    req = IP(src="10.0.1.2", dst="10.0.1.1", id=4000) / ICMP(id=77, seq=1) / Raw(b"P" * 3500)
    return [Ether(src=MAC["h1"], dst=MAC["p0"]) / q for q in scapy_fragment(req, 1480)]


RR2 = IPOption(b"\x07\x0b\x04" + b"\0" * 8)  # record route, two empty slots
RA = IPOption(b"\x94\x04\x00\x00")  # router alert

# Rate limits. The kernel's ICMP limits (icmp_ratelimit, and ip_error's own budget
# for unreachables, which shares the per-host tokens) count jiffies (HZ=250 here) while
# the engine counts the capture clock in ms: equal decisions, but for one made within
# a tick of its threshold. So cases keep far from thresholds: a quiet second before
# each (it refills what an ICMP error costs), three before a route error (it costs two
# seconds: ip_error's and icmp_ratelimit's), and the bursts, which test the limits
# themselves, come from hosts of their own with a full budget.
QUIET_S = 0.75
ROUTE_ERROR_QUIET_S = 3.0
BURST_HOSTS = {"10.0.1.3": "02:00:00:00:01:03", "10.0.1.4": "02:00:00:00:01:04"}

# name: (seconds of quiet before, frames)
CASES: dict[str, tuple[float, list[Ether]]] = {
    "ttl_1": (QUIET_S, [h1("10.0.2.2", ttl=1, tos=0xB9) / udp()]),
    "ttl_1_from_subnet_broadcast": (QUIET_S, [h1("10.0.2.2", src="10.0.1.255", ttl=1) / udp()]),
    "no_route": (ROUTE_ERROR_QUIET_S, [h1("192.0.2.1") / udp()]),
    "unreachable_route": (ROUTE_ERROR_QUIET_S, [h1("10.67.0.1") / udp()]),
    "prohibit_route": (ROUTE_ERROR_QUIET_S, [h1("10.68.0.1") / udp()]),
    "blackhole_route": (QUIET_S, [h1("10.66.0.1") / udp()]),
    "frag_needed": (QUIET_S, [h1("10.0.3.2", flags="DF") / udp(1373)]),
    "fragmentation": (QUIET_S, [h1("10.0.3.2", id=7) / udp(1472)]),
    "fragmentation_with_options": (QUIET_S, [h1("10.0.3.2", id=8, options=[RR2, RA])
                                             / udp(1456)]),
    "record_route": (QUIET_S, [h1("10.0.2.2", id=9, options=[RR2]) / udp()]),
    "record_route_ttl_1": (QUIET_S, [h1("10.0.2.2", ttl=1, options=[RR2]) / udp(10)]),
    "bad_option_pointer": (QUIET_S, [h1("10.0.2.2", options=[IPOption(b"\x07\x07\x03\0\0\0\0")])
                                     / udp()]),
    "lsrr_not_accepted": (QUIET_S, [h1("10.0.1.1", options=[IPOption(b"\x83\x07\x04\x0a\x00"
                                                                     b"\x02\x02")]) / udp()]),
    "redirect": (QUIET_S, [h1("10.9.8.5", id=10) / udp()]),
    "ping": (QUIET_S, [h1("10.0.1.1", tos=0x10) / ICMP(id=5, seq=6) / Raw(b"hello")]),
    "ping_other_address": (QUIET_S, [h1("10.0.2.1") / ICMP(id=5, seq=7) / Raw(b"hello")]),
    "fragmented_ping": (QUIET_S, ping_fragments()),
    "udp_to_router": (QUIET_S, [h1("10.0.2.1") / udp()]),
    "unknown_protocol": (QUIET_S, [h1("10.0.1.1", proto=200) / Raw(b"x" * 12)]),
    "broadcast_ping_ignored": (QUIET_S, [h1("10.0.1.255") / ICMP(id=5, seq=8)]),
    # an ICMP message of 4 bytes is answered (KERNEL-NOTES.md says not), one of 0 is not
    "short_icmp_ttl_1": (QUIET_S, [h1("10.0.2.2", ttl=1, proto=1) / Raw(b"\x08\x00\xf7\xff")]),
    "empty_icmp_ttl_1": (QUIET_S, [h1("10.0.2.2", ttl=1, proto=1)]),
    "tcp_syn_to_router": (QUIET_S, [h1("10.0.1.1", tos=0xB9)
                                    / TCP(sport=1234, dport=80, flags="S", seq=1000)]),
    "tcp_ack_with_data_to_router": (QUIET_S, [h1("10.0.2.1") / TCP(
        sport=1234, dport=22, flags="PA", seq=7, ack=555) / Raw(b"data")]),
    "tcp_rst_to_router": (QUIET_S, [h1("10.0.1.1") / TCP(sport=1234, dport=80, flags="R")]),
    # six time exceeded in a burst (XRLIM_BURST_FACTOR), then nothing
    "ttl_1_burst": (QUIET_S, [h1("10.0.2.2", src="10.0.1.3", ttl=1, id=k) / udp()
                              for k in range(8)]),
    # two unreachables in a burst: ip_error's second plus icmp_ratelimit's second each
    "route_errors_in_a_burst": (QUIET_S, [h1("192.0.2.1", src="10.0.1.4", id=k) / udp()
                                          for k in range(4)]),
}


@pytest.fixture(scope="module")
def kernel_outputs(kernel):
    """Every case through the kernel router, in order: (send times, outputs)."""
    out = {}
    for name, (quiet, frames) in CASES.items():
        time.sleep(quiet)
        out[name] = kernel.exchange([("p0", bytes(f)) for f in frames])
    return out


@pytest.fixture(scope="module")
def engine_outputs(kernel_outputs, tmp_path_factory):
    """One `fwd run` over every case, each frame stamped with the time it went to the
    kernel; outputs split back by case (by the time of the frame they answer)."""
    root = tmp_path_factory.mktemp("kdiff")
    # one worker: the slow path then sees the frames in capture order, as the kernel
    # did, and its rate limits decide as the kernel's did
    lab = Lab(root, workers=1, batch=8)
    with lab.config_path.open("a") as f:
        for ip_, mac in BURST_HOSTS.items():
            f.write(f'\n[[neighbor]]\nip = "{ip_}"\nmac = "{mac}"\nport = "p0"\n')
    inputs: list[Ether] = []
    starts: list[tuple[float, str]] = []
    for name, (_, frames) in CASES.items():
        stamps, _ = kernel_outputs[name]
        starts.append((stamps[0], name))
        for frame, t in zip(frames, stamps, strict=True):
            f = Ether(bytes(frame))
            f.time = t
            inputs.append(f)
    stats, outputs = run_bounded(lab, {"p0": inputs})
    assert stats.balanced
    by_case: dict[str, dict[str, list[bytes]]] = {n: {p: [] for p in HOSTS} for n in CASES}
    for port, frames in outputs.items():
        for f in frames:
            name = max(s for s in starts if s[0] <= float(f.time) + 1e-6)[1]
            by_case[name][port].append(bytes(f))
    return by_case


@pytest.mark.parametrize("name", list(CASES))
def test_engine_answers_like_the_kernel(kernel_outputs, engine_outputs, name):
    _, got = kernel_outputs[name]
    kernel_out = {p: [norm(f) for f in frames] for p, frames in got.items()}
    ours = {p: [norm(f) for f in frames] for p, frames in engine_outputs[name].items()}
    assert ours == kernel_out


# ------------------------------------------------------------------ ARP

ARP_HOST = ("10.0.1.77", "02:00:00:00:01:77")  # on p0, in no neighbour table
P1_HOST = ("10.0.2.77", "02:00:00:00:02:77")  # on p1, likewise


def who_has(mac: str, sip: str, tip: str, dst: str = "ff:ff:ff:ff:ff:ff") -> Ether:
    return Ether(src=mac, dst=dst) / ARP(op=1, hwsrc=mac, psrc=sip, pdst=tip)


# name: steps of (seconds of quiet first, port, frames sent back to back); what the
# router sends is collected until the next step (the kernel's timers run meanwhile)
ARP_CASES: dict[str, list[tuple[float, str, list[Ether]]]] = {
    "arp_requests_for_the_router": [(1.0, "p0", [
        who_has(ARP_HOST[1], ARP_HOST[0], "10.0.1.1"),
        who_has(ARP_HOST[1], ARP_HOST[0], "10.0.2.1"),  # another port's address
        who_has(ARP_HOST[1], "0.0.0.0", "10.0.1.1"),  # duplicate address detection
        who_has(ARP_HOST[1], ARP_HOST[0], "10.0.1.50"),  # not ours: no answer
        who_has(MAC["h1"], "10.0.1.2", "10.0.1.1", dst=MAC["p0"]),  # a static neighbour
    ])],
    # a next hop nobody answers for: three broadcast requests a second apart, then
    # ICMP host unreachable about each packet held meanwhile
    "arp_resolution_fails": [
        (ROUTE_ERROR_QUIET_S, "p0", [h1("10.69.0.5", ttl=9, id=50) / udp(),
                                     h1("10.69.0.5", ttl=9, id=51) / udp(30)]),
        (4.0, "p0", [who_has(MAC["h1"], "10.0.1.2", "10.0.1.50")]),  # the clock goes on
    ],
    # the router's own packet (an echo reply) to a host it has no entry for: the
    # requests say the reply's source, another port's address (arp_announce=0)
    "arp_for_the_router_s_own_packet": [
        (1.0, "p1", [Ether(src=P1_HOST[1], dst=MAC["p1"]) / IP(src=P1_HOST[0], dst="10.0.1.1")
                     / ICMP(id=9, seq=1) / Raw(b"arp")]),
        (4.0, "p1", [who_has("02:00:00:00:02:78", "10.0.2.78", "10.0.2.50")]),
    ],
}


@pytest.fixture(scope="module")
def kernel_arp_outputs(kernel, kernel_outputs):
    """Every ARP case through the kernel router (after the IPv4 ones): (send times,
    outputs, IPv4 and ARP)."""
    out = {}
    for name, steps in ARP_CASES.items():
        stamps: list[float] = []
        got: dict[str, list[bytes]] = {p: [] for p in HOSTS}
        for k, (quiet, port, frames) in enumerate(steps):
            if k == 0:
                time.sleep(quiet)
            settle = steps[k + 1][0] if k + 1 < len(steps) else SETTLE_S
            sent, seen = kernel.exchange([(port, bytes(f)) for f in frames], settle=settle,
                                         types=(ETH_P_IP, ETH_P_ARP))
            stamps += sent
            for p, frames_out in seen.items():
                got[p] += frames_out
        out[name] = (stamps, got)
    return out


@pytest.mark.parametrize("name", list(ARP_CASES))
def test_engine_does_arp_like_the_kernel(kernel_arp_outputs, tmp_path, name):
    """The same frames at the same times through `fwd run` (one run per case: the
    engine probes the neighbours it learns, which a kernel does only for the ones it
    sends to): the same ARP replies and requests, and the same ICMP errors."""
    stamps, got = kernel_arp_outputs[name]
    lab = Lab(tmp_path, workers=1, batch=8)
    with lab.config_path.open("a") as f:
        for ip_, mac in BURST_HOSTS.items():
            f.write(f'\n[[neighbor]]\nip = "{ip_}"\nmac = "{mac}"\nport = "p0"\n')
    inputs: dict[str, list[Ether]] = {}
    frames = [(port, f) for _, port, step in ARP_CASES[name] for f in step]
    for (port, frame), t in zip(frames, stamps, strict=True):
        e = Ether(bytes(frame))
        e.time = t
        inputs.setdefault(port, []).append(e)
    stats, outputs = run_bounded(lab, inputs)
    assert stats.balanced
    ours = {p: [norm(bytes(f)) for f in outputs[p]] for p in HOSTS}
    kernel_out = {p: [norm(f) for f in frames] for p, frames in got.items()}
    assert any(kernel_out.values())  # the case made the kernel say something
    assert ours == kernel_out


# ------------------------------------------------------------------ the router's own addresses

# What the kernel counts for a packet to one of its own addresses, as /proc/net/snmp
# names them; the engine's counters of the same names (a name it does not keep is 0
# there: the kernel must not move it either, having no sockets).
SNMP_COMPARED: dict[str, tuple[str, ...]] = {
    "Ip": ("InDelivers", "InUnknownProtos", "ReasmReqds", "ReasmOKs", "ReasmFails"),
    "Icmp": tuple(m.name for m in Icmp),
    "Udp": ("InDatagrams", "NoPorts", "InErrors", "InCsumErrors", "IgnoredMulti"),
    "Tcp": ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "InSegs", "OutSegs",
            "InErrs", "OutRsts", "InCsumErrors"),
}
ENGINE_SECTION = {"Ip": "snmp", "Icmp": "icmp", "Udp": "udp", "Tcp": "tcp"}
ALL_HOSTS_MAC = "01:00:5e:00:00:01"  # 224.0.0.1, which every interface joins
GROUP_MAC = "01:00:5e:01:02:03"  # 239.1.2.3, which nobody here joined


def udp_raw(dst: str, n: int = 20, *, ulen: int | None = None, csum: int | None = None,
            spoil: bool = False, src: str = "10.0.1.2") -> Raw:
    """A UDP header and `n` bytes whose length field says `ulen` (default: its size)
    and whose checksum is `csum` (default: the right one over `ulen` bytes, or a
    wrong one if `spoil`)."""
    data = bytes((i * 7) & 0xFF for i in range(n))
    ulen = 8 + n if ulen is None else ulen
    seg = struct.pack("!HHHH", 4321, 9, ulen, 0) + data
    if csum is None:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, ulen)
        csum = checksum(pseudo + seg[:ulen]) or 0xFFFF
        csum = wrong(csum) if spoil else csum
    return Raw(seg[:6] + struct.pack("!H", csum) + seg[8:])


def wrong(right: int) -> int:
    """A checksum that is not `right` (nor its other zero, 0 for 0xFFFF)."""
    return right ^ 0x5555


def udp_to(dst: str, eth_dst: str = MAC["p0"], n: int = 20, **ip) -> Ether:
    return h1(dst, eth_dst, proto=17, **ip) / udp_raw(dst, n)


def tcp_to(dst: str = "10.0.1.1", eth_dst: str = MAC["p0"], flags: str = "S", data: bytes = b"",
           **tcp) -> Ether:
    return h1(dst, eth_dst) / TCP(sport=1234, dport=80, flags=flags, seq=1000, ack=4242,
                                  **tcp) / Raw(data)


def spoiled(frame: Ether, layer: type, value: int | None = None) -> Ether:
    """`frame` with `layer`'s checksum set to `value`, by default a wrong one."""
    f = Ether(bytes(frame))
    f[layer].chksum = wrong(f[layer].chksum) if value is None else value
    return f


def icmp_to(dst: str = "10.0.1.1", eth_dst: str = MAC["p0"], data: bytes = b"hello",
            **icmp) -> Ether:
    icmp.setdefault("id", 5)
    icmp.setdefault("seq", 9)
    return h1(dst, eth_dst) / ICMP(**icmp) / Raw(data)


def fragments(l4: IP, size: int = 1480) -> list[Ether]:
    """A datagram from h1 to 10.0.1.1 in fragments of `size` bytes of payload."""
    ip = IP(src="10.0.1.2", dst="10.0.1.1", id=4100) / l4
    return [Ether(src=MAC["h1"], dst=MAC["p0"]) / q for q in scapy_fragment(ip, size)]


# name: (seconds of quiet before, frames), all from h1 on p0
LOCAL_CASES: dict[str, tuple[float, list[Ether]]] = {
    # checksums: UDP's 0 is "none" (RFC 768), TCP's 0 is just wrong
    "udp_bad_checksum": (ROUTE_ERROR_QUIET_S, [h1("10.0.1.1", proto=17)
                                               / udp_raw("10.0.1.1", spoil=True)]),
    "udp_bad_checksum_long": (QUIET_S, [h1("10.0.1.1", proto=17)
                                        / udp_raw("10.0.1.1", 200, spoil=True)]),
    "udp_zero_checksum": (QUIET_S, [h1("10.0.1.1", proto=17) / udp_raw("10.0.1.1", csum=0)]),
    "tcp_bad_checksum": (QUIET_S, [spoiled(tcp_to(), TCP)]),
    "tcp_bad_checksum_long": (QUIET_S, [spoiled(tcp_to(data=b"d" * 200), TCP)]),
    "tcp_zero_checksum": (QUIET_S, [spoiled(tcp_to(), TCP, 0)]),
    # TCP flags: a reset for anything but a reset (tcp_v4_send_reset)
    "tcp_syn_fin": (QUIET_S, [tcp_to(flags="SF")]),
    "tcp_fin": (QUIET_S, [tcp_to(flags="F")]),
    "tcp_no_flags": (QUIET_S, [tcp_to(flags="", data=b"abc")]),
    "tcp_rst": (QUIET_S, [tcp_to(flags="R")]),
    "tcp_rst_ack": (QUIET_S, [tcp_to(flags="RA")]),
    "tcp_syn_rst": (QUIET_S, [tcp_to(flags="SR")]),
    "tcp_ack": (QUIET_S, [tcp_to(flags="A")]),
    "tcp_syn_ack": (QUIET_S, [tcp_to(flags="SA")]),
    "tcp_urg": (QUIET_S, [tcp_to(flags="U", urgptr=3, data=b"urgent")]),
    "tcp_psh": (QUIET_S, [tcp_to(flags="P", data=b"push")]),
    "tcp_fin_psh_urg": (QUIET_S, [tcp_to(flags="FPU", urgptr=1, data=b"xmas")]),
    "tcp_all_flags": (QUIET_S, [tcp_to(flags="FSRPAUEC")]),
    "tcp_data_offset_short": (QUIET_S, [tcp_to(dataofs=4)]),
    "tcp_data_offset_past_the_end": (QUIET_S, [tcp_to(dataofs=15)]),
    # UDP length against the IP payload
    "udp_length_longer": (QUIET_S, [h1("10.0.1.1", proto=17) / udp_raw("10.0.1.1", ulen=32)]),
    "udp_length_shorter": (QUIET_S, [h1("10.0.1.1", proto=17)
                                     / udp_raw("10.0.1.1", ulen=18)]),
    "udp_length_shorter_bad_checksum": (QUIET_S, [h1("10.0.1.1", proto=17)
                                                  / udp_raw("10.0.1.1", ulen=18, spoil=True)]),
    "udp_length_below_header": (QUIET_S, [h1("10.0.1.1", proto=17)
                                          / udp_raw("10.0.1.1", ulen=4)]),
    "udp_header_truncated": (QUIET_S, [h1("10.0.1.1", proto=17) / Raw(b"\x10\xe1\x00\x09")]),
    # broadcasts and multicast to the router
    "udp_subnet_broadcast": (QUIET_S, [udp_to("10.0.1.255")]),
    "udp_subnet_broadcast_l2": (QUIET_S, [udp_to("10.0.1.255", BCAST)]),
    "udp_other_subnet_broadcast": (QUIET_S, [udp_to("10.0.2.255")]),
    "udp_limited_broadcast": (QUIET_S, [udp_to("255.255.255.255", BCAST)]),
    "udp_broadcast_bad_checksum": (QUIET_S, [h1("10.0.1.255", BCAST, proto=17)
                                             / udp_raw("10.0.1.255", spoil=True)]),
    "udp_broadcast_bad_checksum_long": (QUIET_S, [h1("10.0.1.255", BCAST, proto=17)
                                                  / udp_raw("10.0.1.255", 200, spoil=True)]),
    "udp_all_hosts": (QUIET_S, [udp_to("224.0.0.1", ALL_HOSTS_MAC)]),
    "udp_all_hosts_unicast_frame": (QUIET_S, [udp_to("224.0.0.1")]),
    "udp_other_group": (QUIET_S, [udp_to("239.1.2.3", GROUP_MAC)]),
    "tcp_subnet_broadcast": (QUIET_S, [tcp_to("10.0.1.255")]),
    "tcp_subnet_broadcast_l2": (QUIET_S, [tcp_to("10.0.1.255", BCAST)]),
    "tcp_limited_broadcast": (QUIET_S, [tcp_to("255.255.255.255", BCAST)]),
    "tcp_all_hosts": (QUIET_S, [tcp_to("224.0.0.1", ALL_HOSTS_MAC)]),
    "tcp_all_hosts_unicast_frame": (QUIET_S, [tcp_to("224.0.0.1")]),
    "tcp_other_group": (QUIET_S, [tcp_to("239.1.2.3", GROUP_MAC)]),
    "ping_subnet_broadcast_l2": (QUIET_S, [icmp_to("10.0.1.255", BCAST)]),
    "ping_limited_broadcast": (QUIET_S, [icmp_to("255.255.255.255", BCAST)]),
    "ping_all_hosts": (QUIET_S, [icmp_to("224.0.0.1", ALL_HOSTS_MAC)]),
    "ping_other_group": (QUIET_S, [icmp_to("239.1.2.3", GROUP_MAC)]),
    "address_mask_request_broadcast": (QUIET_S, [icmp_to("10.0.1.255", BCAST, type=17,
                                                         data=b"\0" * 4)]),
    "timestamp_request_broadcast": (QUIET_S, [icmp_to("10.0.1.255", BCAST, type=13,
                                                      data=b"\0" * 12)]),
    "info_request_broadcast": (QUIET_S, [icmp_to("10.0.1.255", BCAST, type=15, data=b"")]),
    # ICMP the kernel takes in without answering
    "echo_reply": (QUIET_S, [icmp_to(type=0)]),
    "timestamp_reply": (QUIET_S, [icmp_to(type=14, data=b"\0" * 12)]),
    "info_request": (QUIET_S, [icmp_to(type=15, data=b"")]),
    "info_reply": (QUIET_S, [icmp_to(type=16, data=b"")]),
    "address_mask_request": (QUIET_S, [icmp_to(type=17, data=b"\0" * 4)]),
    "address_mask_reply": (QUIET_S, [icmp_to(type=18, data=b"\xff\xff\xff\0")]),
    "icmp_type_19": (QUIET_S, [icmp_to(type=19)]),
    "icmp_type_42": (QUIET_S, [icmp_to(type=42, code=0)]),
    "icmp_type_200": (QUIET_S, [icmp_to(type=200)]),
    "echo_code_1": (QUIET_S, [icmp_to(type=8, code=1)]),
    "echo_bad_checksum": (QUIET_S, [spoiled(icmp_to(), ICMP)]),
    "icmp_header_truncated": (QUIET_S, [h1("10.0.1.1", proto=1) / Raw(b"\x08\x00\xf7\xff")]),
    "icmp_empty": (QUIET_S, [h1("10.0.1.1", proto=1)]),
    "dest_unreach_about_udp": (QUIET_S, [icmp_to(type=3, code=3, data=bytes(
        IP(src="10.0.1.1", dst="10.0.1.2") / UDP(sport=9, dport=4321)))]),
    "time_exceeded_about_tcp": (QUIET_S, [icmp_to(type=11, data=bytes(
        IP(src="10.0.1.1", dst="10.0.1.2") / TCP(sport=80, dport=1234))[:28])]),
    "dest_unreach_short_quote": (QUIET_S, [icmp_to(type=3, code=1, data=b"\x45\0\0")]),
    # reassembled, then delivered
    "fragmented_udp": (QUIET_S, fragments(UDP(sport=4321, dport=9) / Raw(b"u" * 3000))),
    "fragmented_udp_bad_checksum": (QUIET_S, fragments(UDP(sport=4321, dport=9, chksum=0x1234)
                                                       / Raw(b"u" * 3000))),
    "fragmented_tcp": (QUIET_S, fragments(TCP(sport=1234, dport=80, flags="S", seq=7)
                                          / Raw(b"t" * 3000))),
    "fragmented_echo": (QUIET_S, fragments(ICMP(id=5, seq=10) / Raw(b"e" * 3000))),
    "fragmented_echo_bad_checksum": (QUIET_S, fragments(ICMP(id=5, seq=11, chksum=0x1234)
                                                        / Raw(b"e" * 3000))),
}


def snmp_delta(before: dict[str, dict[str, int]],
               after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The compared counters that moved (kernel: /proc/net/snmp)."""
    return {s: {n: d for n in names if (d := after[s][n] - before[s][n])}
            for s, names in SNMP_COMPARED.items()}


def engine_snmp(stats) -> dict[str, dict[str, int]]:
    """The same counters of an engine run, those that moved."""
    return {s: {n: v for n in names if (v := getattr(stats, ENGINE_SECTION[s]).get(n, 0))}
            for s, names in SNMP_COMPARED.items()}


@pytest.fixture(scope="module")
def kernel_local_outputs(kernel):
    """Every local case through the kernel router: (send times, outputs, counters moved)."""
    out = {}
    for name, (quiet, frames) in LOCAL_CASES.items():
        time.sleep(quiet)
        before = kernel.snmp()
        stamps, got = kernel.exchange([("p0", bytes(f)) for f in frames])
        out[name] = (stamps, got, snmp_delta(before, kernel.snmp()))
    return out


@pytest.mark.parametrize("name", list(LOCAL_CASES))
def test_own_addresses_answer_like_the_kernel(kernel_local_outputs, tmp_path, name):
    """The case alone through `fwd run`: the same frames out, and the same Ip:, Icmp:,
    Udp: and Tcp: counters moved."""
    stamps, got, kernel_counters = kernel_local_outputs[name]
    inputs = []
    for frame, t in zip(LOCAL_CASES[name][1], stamps, strict=True):
        e = Ether(bytes(frame))
        e.time = t
        inputs.append(e)
    stats, outputs = run_bounded(Lab(tmp_path, workers=1, batch=8), {"p0": inputs})
    assert stats.balanced
    ours = {p: [norm(bytes(f)) for f in outputs[p]] for p in HOSTS}
    kernel_out = {p: [norm(f) for f in frames] for p, frames in got.items()}
    assert (ours, engine_snmp(stats)) == (kernel_out, kernel_counters)
