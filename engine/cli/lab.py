"""`fwd lab up|down`: a namespace lab where real Linux hosts talk through the engine.

    h1 (10.0.1.2/24)                 router namespace                 h2 (10.0.2.2/24)
    eth0 ───────────── veth ───────── p0   [ fwd ]   p1 ───────── veth ───────────── eth0
    default via 10.0.1.1                                          default via 10.0.2.1

The router namespace only holds the engine's two ports: no addresses, forwarding off,
IPv6 off, ARP replies off. Whatever h1 and h2 see answered or forwarded was done by
the engine, not by the router namespace's kernel (the engine's MACs, from
configs/lab.toml, differ from the veths' own, so that kernel sees the traffic as
PACKET_OTHERHOST and drops it before IP). Offloads are off on every veth end, so
frames are seen on the wire as the hosts built them (checksums included); with
`host_offloads` h1 and h2 keep the kernel's defaults (TSO/GSO super-frames, partial
checksums), which the engine's AF_PACKET driver finishes (engine/io/afpacket.py).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

DEFAULT_PREFIX = "fwdlab"
# the router-side veths' own MACs: not the engine's (see the module docstring)
ROUTER_VETH_MACS = ("02:00:00:00:ff:00", "02:00:00:00:ff:01")
HOSTS = (("h1", "p0", "10.0.1.2/24", "10.0.1.1"), ("h2", "p1", "10.0.2.2/24", "10.0.2.1"))
OFFLOADS = ("tx", "rx", "gso", "gro", "tso", "sg")


ENGINE_MACS = ("02:00:00:00:01:01", "02:00:00:00:02:01")  # configs/lab.toml's


def engine_config(lab: Lab, control_socket: str, *, workers: int = 2, batch: int = 1024,
                  p1_mtu: int = 1500, extra: str = "", datapath: str = "compiled") -> str:
    """The engine's config for `lab` (configs/lab.toml with this lab's namespace):
    AF_PACKET ports p0 and p1 with the hosts' gateway addresses; `extra` is appended."""
    ports = "".join(f"""
[[port]]
name = "{port}"
driver = "afpacket"
iface = "{port}"
mac = "{mac}"
mtu = {p1_mtu if port == "p1" else 1500}
addresses = ["{gateway}/24"]
""" for (_, port, _, gateway), mac in zip(HOSTS, ENGINE_MACS, strict=True))
    return f"""[engine]
workers = {workers}
batch = {batch}
datapath = "{datapath}"
netns = "{lab.router}"
control_socket = "{control_socket}"
{ports}{extra}"""


class LabError(RuntimeError):
    """The lab could not be built or removed."""


@dataclass(frozen=True)
class Lab:
    prefix: str

    @property
    def router(self) -> str:
        return f"{self.prefix}-r"

    def host(self, name: str) -> str:
        """The namespace of host `name` ("h1" or "h2")."""
        return f"{self.prefix}-{name}"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.router,) + tuple(self.host(h) for h, *_ in HOSTS)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise LabError(f"`{' '.join(args)}` failed: {r.stderr.strip() or r.stdout.strip()}")
    return r


def existing_namespaces() -> set[str]:
    r = _run("ip", "netns", "list", check=False)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def _sysctl(ns: str, key: str, value: str) -> None:
    _run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")


def _quiet(ns: str, dev: str, offloads_off: bool = True) -> None:
    """Offloads off (frames as built) and no IPv6 (quiet captures) on one veth end."""
    _sysctl(ns, f"net.ipv6.conf.{dev}.disable_ipv6", "1")
    if offloads_off and shutil.which("ethtool"):
        args = [x for o in OFFLOADS for x in (o, "off")]
        _run("ip", "netns", "exec", ns, "ethtool", "-K", dev, *args, check=False)


def up(prefix: str = DEFAULT_PREFIX, *, p1_mtu: int | None = None,
       host_offloads: bool = False) -> Lab:
    """Build the lab; `p1_mtu` sets a smaller MTU on the h2 side's link (both ends);
    `host_offloads` leaves h1's and h2's eth0 with the kernel's default offloads (TSO,
    GSO, tx-checksumming on: the engine gets super-frames and partial checksums)."""
    if shutil.which("ip") is None:
        raise LabError("the `ip` command (iproute2) is not installed")
    lab = Lab(prefix)
    there = existing_namespaces() & set(lab.namespaces)
    if there:
        raise LabError(f"namespaces {', '.join(sorted(there))} exist already: "
                       f"`fwd lab down{'' if prefix == DEFAULT_PREFIX else ' --prefix ' + prefix}`"
                       " removes them")
    try:
        for ns in lab.namespaces:
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
            _sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        r = lab.router
        _sysctl(r, "net.ipv4.ip_forward", "0")
        _sysctl(r, "net.ipv4.conf.all.forwarding", "0")
        _sysctl(r, "net.ipv4.conf.all.arp_ignore", "8")  # never answer ARP
        for (host, port, address, gateway), mac in zip(HOSTS, ROUTER_VETH_MACS, strict=True):
            h = lab.host(host)
            _run("ip", "link", "add", port, "netns", r, "address", mac, "type", "veth",
                 "peer", "name", "eth0", "netns", h)
            mtu = p1_mtu if (port == "p1" and p1_mtu) else None
            for ns, dev in ((r, port), (h, "eth0")):
                _quiet(ns, dev, offloads_off=ns == r or not host_offloads)
                if mtu:
                    _run("ip", "-n", ns, "link", "set", dev, "mtu", str(mtu))
                _run("ip", "-n", ns, "link", "set", dev, "up")
            _sysctl(r, f"net.ipv4.conf.{port}.arp_ignore", "8")
            _run("ip", "-n", h, "addr", "add", address, "dev", "eth0")
            _run("ip", "-n", h, "route", "add", "default", "via", gateway)
    except BaseException:
        down(prefix)
        raise
    return lab


def down(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove the lab's namespaces (their veths go with them); returns those removed."""
    lab = Lab(prefix)
    removed = []
    for ns in lab.namespaces:
        if ns in existing_namespaces():
            _run("ip", "netns", "del", ns)
            removed.append(ns)
    return removed
