"""What the fast path reads besides the packets: FIB, next hops, ports, local addresses.

Workers build one `Tables` over the shared-memory arrays (so a control-process write
is seen at once) and pass it to the stages; tests build one over plain arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Resolver(Protocol):
    """Answers which MAC a next-hop address has on an egress port (`neigh_output`):
    a worker's `NeighCache` (engine/pipeline/neigh_cache.py) in front of the shared
    `NeighbourTable` (engine/shm/neigh_table.py), or the table itself."""

    def resolve(self, keys: np.ndarray,
                egress: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # (usable, mac48)


@dataclass
class Tables:
    lookup: Callable[[np.ndarray], np.ndarray]  # daddr (uint32) → next-hop index
    nh_type: np.ndarray  # (NH,) uint8, NH_* of engine.shm.memory
    nh_flags: np.ndarray  # (NH,) uint8, NHF_*
    nh_port: np.ndarray  # (NH,) uint16 egress port
    nh_mtu: np.ndarray  # (NH,) uint16: the egress MTU for a unicast next hop on a port
    #                     that is up, else 0 (one compare tells a plain forward)
    nh_group: np.ndarray  # (NH,) uint32: first member of an ECMP group in nhg_members
    nh_group_n: np.ndarray  # (NH,) uint8: members of an ECMP group (0 or 1: not a group)
    nhg_members: np.ndarray  # next-hop indexes of every group's members, back to back
    nh_mac48: np.ndarray  # (NH,) uint64, next hop's MAC, byte 0 lowest (see rcv.mac48);
    #                       0 for a next hop without NHF_RESOLVED
    port_mac48: np.ndarray  # (P,) uint64, our MAC per port, the same way
    port_mtu: np.ndarray  # (P,) uint16
    port_up: np.ndarray  # (P,) bool
    local_addrs: np.ndarray  # sorted uint32: the router's own addresses
    reassemble_transit: bool = True  # [reassembly] mode = "full"
    send_redirects: bool = True
    # next hops without NHF_RESOLVED (a connected route, a gateway learned by ARP):
    # their MAC comes from `neigh`, keyed by the destination or by `nh_gw` (gateway
    # rows); with no resolver, they all go to the slow path as neigh_unresolved
    nh_gw: np.ndarray | None = None  # (NH,) uint32, the gateway of NHF_GATEWAY rows
    neigh: Resolver | None = None

    def __post_init__(self) -> None:
        if self.neigh is not None and self.nh_gw is None:
            raise ValueError("Tables.neigh needs Tables.nh_gw (gateway rows are resolved "
                             "by their gateway's address)")
