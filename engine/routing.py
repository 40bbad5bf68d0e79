"""Control plane: the next-hop table and the FIB built from the config.

Run only in the control process. What the kernel keeps in its local and main tables
becomes FIB entries pointing at next-hop rows (the way VPP points routes at
adjacencies):

- each port address: a /32 `local` entry; its subnet: a connected (on-link,
  unresolved) entry on the port; the subnet's directed broadcast (prefixes up to
  /30): a `broadcast` entry, as the kernel's local table has;
- each static neighbour: a /32 resolved entry carrying its MAC (hidden from route
  listings: it is neighbour state, not a route);
- each `[[route]]`: a gateway next hop (resolved when the gateway is a static
  neighbour), an on-link next hop on a port, or one of the fixed error rows.

ECMP routes use their first next hop until the FIB work adds next-hop groups.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from engine.config import Config
from engine.pipeline.tables import Tables
from engine.shm.memory import (
    NH_BLACKHOLE,
    NH_BROADCAST,
    NH_LOCAL,
    NH_NOROUTE,
    NH_PROHIBIT,
    NH_UNICAST,
    NH_UNREACHABLE,
    NHF_GATEWAY,
    NHF_RESOLVED,
    EngineMemory,
)

ROUTE_TYPE_NH = {"blackhole": NH_BLACKHOLE, "unreachable": NH_UNREACHABLE,
                 "prohibit": NH_PROHIBIT}


@dataclass
class NextHops:
    """Allocator of next-hop rows in shared memory; identical next hops share a row."""

    mem: EngineMemory
    rows: dict[tuple, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for nh_type in (NH_NOROUTE, NH_BLACKHOLE, NH_UNREACHABLE, NH_PROHIBIT):
            self.get(nh_type)
        assert self.rows[(NH_NOROUTE, 0, 0, 0, b"")] == 0  # a FIB miss reads row 0

    def get(self, nh_type: int, flags: int = 0, port: int = 0, gw: int = 0,
            mac: bytes = b"") -> int:
        key = (nh_type, flags, port, gw, mac)
        if key not in self.rows:
            i = len(self.rows)
            if i >= len(self.mem.nh_type):
                raise RuntimeError("next-hop table is full")
            self.mem.nh_flags[i] = flags
            self.mem.nh_port[i] = port
            self.mem.nh_gw[i] = gw
            self.mem.nh_mac[i, :] = 0
            self.mem.nh_mac[i, : len(mac)] = np.frombuffer(mac, dtype=np.uint8)
            self.mem.nh_type[i] = nh_type  # the row is complete when typed
            plain = nh_type == NH_UNICAST and flags & NHF_RESOLVED
            self.mem.nh_mtu[i] = self.mem.port_mtu[port] if plain else 0
            self.rows[key] = i
        return self.rows[key]


def build_routing(cfg: Config, mem: EngineMemory, fib) -> NextHops:
    """Fill the next-hop table and the FIB from the config."""
    nhs = NextHops(mem)
    for p, port in enumerate(cfg.ports):
        mem.port_mac[p, :] = 0
        mem.port_mac[p, :6] = np.frombuffer(port.mac, dtype=np.uint8)
        mem.port_mtu[p] = port.mtu
    neighbours = {n.ip: (cfg.port_index(n.port), n.mac) for n in cfg.neighbors}

    def gateway_nh(gw: int, port: int) -> int:
        if gw in neighbours:
            return nhs.get(NH_UNICAST, NHF_GATEWAY | NHF_RESOLVED, port, gw, neighbours[gw][1])
        return nhs.get(NH_UNICAST, NHF_GATEWAY, port, gw)

    for r in cfg.routes:
        if r.type in ROUTE_TYPE_NH:
            nh = nhs.get(ROUTE_TYPE_NH[r.type])
        elif r.nexthops:
            first = r.nexthops[0]
            nh = gateway_nh(first.via, cfg.port_index(first.port or _port_of(cfg, first.via)))
        elif r.via is not None:
            nh = gateway_nh(r.via, cfg.port_index(r.port or _port_of(cfg, r.via)))
        else:
            nh = nhs.get(NH_UNICAST, 0, cfg.port_index(r.port))
        fib.add(r.prefix, r.prefix_len, nh)
    # connected and local entries after [[route]]s: the kernel's local table wins
    for p, port in enumerate(cfg.ports):
        for a in port.addresses:
            net = ipaddress.IPv4Network((a.address, a.prefix_len), strict=False)
            fib.add(int(net.network_address), a.prefix_len, nhs.get(NH_UNICAST, 0, p))
            if a.prefix_len <= 30:
                fib.add(int(net.broadcast_address), 32, nhs.get(NH_BROADCAST, 0, p))
    for ip, (p, mac) in neighbours.items():
        fib.add(ip, 32, nhs.get(NH_UNICAST, NHF_RESOLVED, p, ip, mac))
    for p, port in enumerate(cfg.ports):
        for a in port.addresses:
            fib.add(a.address, 32, nhs.get(NH_LOCAL, 0, p))
    return nhs


def _port_of(cfg: Config, gw: int) -> str:
    for port in cfg.ports:
        for a in port.addresses:
            net = ipaddress.IPv4Network((a.address, a.prefix_len), strict=False)
            if ipaddress.IPv4Address(gw) in net:
                return port.name
    raise ValueError(f"gateway {ipaddress.IPv4Address(gw)} is not on any port's subnet")


def local_addresses(cfg: Config) -> np.ndarray:
    return np.array(sorted({a.address for p in cfg.ports for a in p.addresses}),
                    dtype=np.uint32)


def make_tables(cfg: Config, mem: EngineMemory, lookup) -> Tables:
    """Tables over the shared arrays, for a worker (or a test) of this deployment."""
    nports = len(cfg.ports)
    return Tables(
        lookup=lookup,
        nh_type=mem.nh_type,
        nh_flags=mem.nh_flags,
        nh_port=mem.nh_port,
        nh_mtu=mem.nh_mtu,
        # live views: bytes 6 and 7 of each 8-byte MAC slot stay zero
        nh_mac48=mem.nh_mac.view("<u8")[:, 0],
        port_mac48=mem.port_mac[:nports].view("<u8")[:, 0],
        port_mtu=mem.port_mtu[:nports],
        port_up=np.ones(nports, dtype=bool),
        local_addrs=local_addresses(cfg),
        reassemble_transit=cfg.reassembly.mode == "full",
        send_redirects=cfg.icmp.send_redirects,
    )
