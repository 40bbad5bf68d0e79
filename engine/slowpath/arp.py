"""ARP messages (RFC 826) as the kernel reads and writes them (net/ipv4/arp.c).

Pure functions, called once per frame by the slow-path worker: `parse` is the header
checks of `arp_rcv` and `arp_process` (Ethernet hardware, IPv4 protocol), `build` is
`arp_create` (Ethernet header and all), and `request`/`reply` are the two messages the
router sends: `arp_solicit`'s request (broadcast, or unicast to the known MAC while
re-confirming an entry) and `arp_process`'s reply.

Frames are never padded: the kernel hands its 42-byte ARP frames to the device as
they are (a NIC pads them to 60 bytes on the wire, a veth does not), and the engine
sends every frame as long as it is (DESIGN.md). A received ARP message may be
padded: only its first 28 bytes are read, as `pskb_may_pull(arp_hdr_len(dev))` does.

Addresses are ints in host byte order, MACs are 6 `bytes`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.proto import ETH_ALEN, ETH_BROADCAST, ETH_P_IP, ETH_TYPE_ARP

ETH_ZERO = b"\0" * ETH_ALEN
ARPHRD_ETHER = 1  # include/uapi/linux/if_arp.h
ARPHRD_IEEE802 = 6  # accepted on Ethernet devices too (RFC 2625, RFC 1390)
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ARP_HLEN = 8 + 2 * ETH_ALEN + 2 * 4  # `arp_hdr_len` of an Ethernet device: 28
_HEADER = struct.Struct("!HHBBH")  # ar_hrd, ar_pro, ar_hln, ar_pln, ar_op

# why `parse` refuses a message (each a SlowDrop reason of the slow path)
TOO_SHORT = "arp_header"  # arp_rcv: shorter than the 28 bytes of an Ethernet/IPv4 message
BAD_LENGTHS = "arp_header"  # arp_rcv: ar_hln is not the device's 6 or ar_pln is not 4
UNSUPPORTED = "arp_unsupported"  # arp_process: hardware, protocol or operation not ours


@dataclass(frozen=True)
class ArpMessage:
    """An ARP message for IPv4 over Ethernet: what `arp_process` extracts."""

    op: int  # ARPOP_REQUEST or ARPOP_REPLY
    sha: bytes  # sender hardware address
    sip: int  # sender IP address
    tha: bytes  # target hardware address
    tip: int  # target IP address

    @property
    def is_request(self) -> bool:
        return self.op == ARPOP_REQUEST


def parse(arp: bytes) -> ArpMessage | str:
    """The ARP message after the Ethernet header, or why it is dropped.

    `arp_rcv`: at least `arp_hdr_len` (28) bytes, ar_hln equal to the device's address
    length (6) and ar_pln 4; then `arp_process` for an Ethernet device: hardware type
    Ethernet (1) or IEEE 802 (6), protocol IPv4, and only requests and replies."""
    if len(arp) < ARP_HLEN:
        return TOO_SHORT
    hrd, pro, hln, pln, op = _HEADER.unpack_from(arp)
    if hln != ETH_ALEN or pln != 4:
        return BAD_LENGTHS
    if hrd not in (ARPHRD_ETHER, ARPHRD_IEEE802) or pro != ETH_P_IP:
        return UNSUPPORTED
    if op not in (ARPOP_REQUEST, ARPOP_REPLY):
        return UNSUPPORTED
    return ArpMessage(op, bytes(arp[8:14]), int.from_bytes(arp[14:18], "big"),
                      bytes(arp[18:24]), int.from_bytes(arp[24:28], "big"))


def build(op: int, *, eth_dst: bytes, eth_src: bytes, sha: bytes, sip: int, tha: bytes,
          tip: int) -> bytes:
    """`arp_create` on an Ethernet device: the Ethernet header (`dev_hard_header`, type
    ARP), then hardware type `dev->type` (Ethernet), protocol IPv4, lengths 6 and 4."""
    return (eth_dst + eth_src + ETH_TYPE_ARP
            + _HEADER.pack(ARPHRD_ETHER, ETH_P_IP, ETH_ALEN, 4, op)
            + sha + sip.to_bytes(4, "big") + tha + tip.to_bytes(4, "big"))


def request(port_mac: bytes, sip: int, tip: int, dst_mac: bytes | None = None) -> bytes:
    """`arp_solicit` → `arp_send_dst(ARPOP_REQUEST, ..., dst_hw, dev->dev_addr, NULL)`:
    a broadcast request (`dst_mac` None: resolving) or one unicast to the MAC being
    re-confirmed; the target hardware address is zero either way."""
    return build(ARPOP_REQUEST, eth_dst=dst_mac or ETH_BROADCAST, eth_src=port_mac,
                 sha=port_mac, sip=sip, tha=ETH_ZERO, tip=tip)


def reply(port_mac: bytes, asked: ArpMessage) -> bytes:
    """`arp_process` → `arp_send_dst(ARPOP_REPLY, ETH_P_ARP, sip, dev, tip, sha,
    dev->dev_addr, sha)`: to the requester's hardware address (as the message gives
    it, not the frame's Ethernet source), saying the asked address is at our MAC. A
    duplicate-address probe (sender 0.0.0.0, RFC 5227) is answered to 0.0.0.0."""
    return build(ARPOP_REPLY, eth_dst=asked.sha, eth_src=port_mac, sha=port_mac,
                 sip=asked.tip, tha=asked.sha, tip=asked.sip)
