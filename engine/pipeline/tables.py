"""What the fast path reads besides the packets: FIB, next hops, ports, local addresses.

Workers build one `Tables` over the shared-memory arrays (so a control-process write
is seen at once) and pass it to the stages; tests build one over plain arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Tables:
    lookup: Callable[[np.ndarray], np.ndarray]  # daddr (uint32) → next-hop index
    nh_type: np.ndarray  # (NH,) uint8, NH_* of engine.shm.memory
    nh_flags: np.ndarray  # (NH,) uint8, NHF_*
    nh_port: np.ndarray  # (NH,) uint16 egress port
    nh_mtu: np.ndarray  # (NH,) uint16: the egress MTU for a resolved unicast next hop on a
    #                     port that is up, else 0 (one compare tells a plain forward)
    nh_group: np.ndarray  # (NH,) uint32: first member of an ECMP group in nhg_members
    nh_group_n: np.ndarray  # (NH,) uint8: members of an ECMP group (0 or 1: not a group)
    nhg_members: np.ndarray  # next-hop indexes of every group's members, back to back
    nh_mac48: np.ndarray  # (NH,) uint64, next hop's MAC, byte 0 lowest (see rcv.mac48)
    port_mac48: np.ndarray  # (P,) uint64, our MAC per port, the same way
    port_mtu: np.ndarray  # (P,) uint16
    port_up: np.ndarray  # (P,) bool
    local_addrs: np.ndarray  # sorted uint32: the router's own addresses
    reassemble_transit: bool = True  # [reassembly] mode = "full"
    send_redirects: bool = True
