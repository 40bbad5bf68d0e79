"""What the fast path reads besides the packets: FIB, next hops, ports, local addresses.

Workers build one `Tables` over the shared-memory arrays with `make_tables` (so a
control-process write is seen at once) and pass it to the stages; tests also build
one over plain arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from engine.config import Config
from engine.shm.fib import FibReader
from engine.shm.memory import CTL_PORT_UP, EngineMemory
from engine.shm.neigh_table import NeighbourTable


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
    # the FIB's (tbl24, tbl8) behind `lookup`, for the compiled datapath (pipeline/compiled.py)
    dir24_8: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if self.neigh is not None and self.nh_gw is None:
            raise ValueError("Tables.neigh needs Tables.nh_gw (gateway rows are resolved "
                             "by their gateway's address)")


class PortMask:
    """A live, read-only per-port boolean view of the `CTL_PORT_UP` bit mask, for
    `Tables.port_up`: `mask[ports]` reads the shared word at every call, so a port the
    control process takes down is seen by the next batch without any refresh.

    (numpy cannot view single bits as a bool array; the fast path only indexes
    `port_up` with an array of egress ports, which this supports.)"""

    def __init__(self, ctl: np.ndarray, nports: int) -> None:
        self._ctl = ctl
        self._n = nports

    def __getitem__(self, ports: Any) -> Any:
        if isinstance(ports, slice):
            ports = np.arange(self._n)[ports]
        idx = np.asarray(ports)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self._n):
            raise IndexError(f"port index out of range 0..{self._n - 1}")
        bits = np.right_shift(self._ctl[CTL_PORT_UP], idx.astype(np.uint64)) & np.uint64(1)
        return bits.astype(bool)

    def __len__(self) -> int:
        return self._n

    def word(self) -> np.ndarray:
        """The shared word itself, as a one-element view (for the compiled datapath)."""
        return self._ctl[CTL_PORT_UP : CTL_PORT_UP + 1]

    def bits(self) -> int:
        """The mask itself, read now: bit p set when port p is up."""
        return int(self._ctl[CTL_PORT_UP]) & ((1 << self._n) - 1)

    def __iter__(self) -> Iterator[bool]:
        return iter(self[:].tolist())

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        return f"PortMask({self[:].tolist()})"


def local_addresses(cfg: Config) -> np.ndarray:
    """The router's own addresses (every port's), sorted, as uint32."""
    return np.array(sorted({a.address for p in cfg.ports for a in p.addresses}),
                    dtype=np.uint32)


def make_tables(cfg: Config, mem: EngineMemory,
                lookup: Callable[[np.ndarray], np.ndarray]) -> Tables:
    """Tables over the shared arrays, for a worker (or a test) of this deployment."""
    nports = len(cfg.ports)
    fib = getattr(lookup, "__self__", None)  # a FibReader's (or FibWriter's) bound lookup
    return Tables(
        lookup=lookup,
        nh_type=mem.nh_type,
        nh_flags=mem.nh_flags,
        nh_port=mem.nh_port,
        nh_mtu=mem.nh_mtu,
        nh_group=mem.nh_group,
        nh_group_n=mem.nh_group_n,
        nhg_members=mem.nhg_members,
        nh_gw=mem.nh_gw,
        # the shared table; a forwarding worker puts its own cache in front of it
        neigh=NeighbourTable(mem),
        # live views: bytes 6 and 7 of each 8-byte MAC slot stay zero
        nh_mac48=mem.nh_mac.view("<u8")[:, 0],
        port_mac48=mem.port_mac[:nports].view("<u8")[:, 0],
        port_mtu=mem.port_mtu[:nports],
        port_up=PortMask(mem.ctl, nports),  # type: ignore[arg-type]  # duck-typed live view
        local_addrs=local_addresses(cfg),
        reassemble_transit=cfg.reassembly.mode == "full",
        send_redirects=cfg.icmp.send_redirects,
        dir24_8=fib.dir24_8 if isinstance(fib, FibReader) else None,
    )
