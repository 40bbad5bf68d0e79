"""A packet on the slow path, as the kernel holds it: the IP datagram with what the
skb and its IPCB carry beside it (`Packet`), the output route of a packet the router
originates (`OutRoute`), and `eth_type_trans`'s packet type (`pkt_type`)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.pipeline.verdict import (
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
)
from engine.proto import ETH_BROADCAST, IP_MF, IP_OFFSET
from engine.slowpath.options import Options

U32 = struct.Struct("!I")


@dataclass
class Packet:
    """One packet on the slow path, with what the kernel keeps beside it (skb, IPCB)."""

    ip: bytes  # IP header (as compiled, once `opts` is set) up to tot_len
    in_port: int
    pkt_type: int  # PACKET_* of the frame it came in
    ts: int  # capture clock (ns): what it triggers leaves with this time...
    seq: int  # ... and this arrival number
    opts: Options | None = None  # IPCB(skb)->opt, once ip_rcv_options has run
    frag_max: int = 0  # IPCB(skb)->frag_max_size of a reassembled datagram
    frag_sizes: Sequence[int] | None = None  # its fragments' payloads (the frag_list)
    frag_df: bool = False  # IPSKB_FRAG_PMTU: refragment with DF

    def evolve(self, **changes: Any) -> Packet:
        """`dataclasses.replace` without its per-call field walk, which costs more
        than the copy: a copy with `changes` (field names only)."""
        new = object.__new__(Packet)
        new.__dict__.update(self.__dict__, **changes)
        return new

    @property
    def ihl(self) -> int:
        return (self.ip[0] & 0xF) * 4

    @property
    def ttl(self) -> int:
        return self.ip[8]

    @property
    def protocol(self) -> int:
        return self.ip[9]

    @property
    def frag_off(self) -> int:
        return (self.ip[6] << 8) | self.ip[7]

    @property
    def saddr(self) -> int:
        return U32.unpack_from(self.ip, 12)[0]

    @property
    def daddr(self) -> int:
        return U32.unpack_from(self.ip, 16)[0]

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag_off & (IP_MF | IP_OFFSET))


@dataclass(frozen=True)
class OutRoute:
    """The output route of a packet the router originates: port, next hop MAC (None:
    the neighbour table's, ARP's), and the address `inet_select_addr` matches the
    source against and ARP resolves (gateway or destination)."""

    port: int
    mac: bytes | None
    target: int


def pkt_type(frame: bytes, port_mac: bytes) -> int:
    """`eth_type_trans`: what the frame's Ethernet destination says."""
    dst = frame[:6]
    if dst == port_mac:
        return PACKET_HOST
    if dst == ETH_BROADCAST:
        return PACKET_BROADCAST
    if dst[0] & 1:
        return PACKET_MULTICAST
    return PACKET_OTHERHOST
