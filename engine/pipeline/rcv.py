"""Receive: Ethernet and IPv4 header checks, as the kernel's `ip_rcv_core`.

Input is a batch of header rows: the first `HDR_BYTES` of each frame (Ethernet plus
the longest IPv4 header), the frame lengths and the ingress ports. Output is the
fields of each packet and, for frames that fail a check, a drop code. Order of
checks as `ip_rcv_core`: PACKET_OTHERHOST, header present, version and IHL, whole
header present, checksum, `tot_len` within the frame and not below IHL*4. Before the
IPv4 ones, the ethertype dispatch of `__netif_receive_skb_core`: an ARP frame
(0x0806) for the port's MAC, broadcast or multicast goes to the slow path
(`arp_rcv`), whole and untrimmed; ARP for another host is dropped as otherhost, as
`arp_rcv` does, and any other ethertype as not_ipv4.

Plain frames, the common case, are recognised at once: addressed to the port's MAC,
IPv4 ethertype, first header byte 0x45 (version 4, no options), a checksum that
verifies over 20 bytes and a `tot_len` between 20 and the frame's IP length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.counters import Drop, Slow
from engine.pipeline import checksum
from engine.pipeline.stage import Batch, Stage, TraceLine, TraceText
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import (
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    drop,
    first_match,
    slow,
)
from engine.proto import (
    ETH_HLEN,
    ETH_P_ARP_LE,
    ETH_P_IP,
    ETH_P_IP_LE,
    IP_DF,
    IP_MF,
    IP_OFFSET,
    MAC48,
)


@dataclass
class IpHeaders:
    """The fields of a batch, one element per packet (host byte order), and which
    packets are still plain (every check so far passed by the whole-batch test)."""

    plain: np.ndarray  # bool
    pkt_type: np.ndarray  # uint8, PACKET_*
    ihl: np.ndarray  # uint8
    tot_len: np.ndarray  # uint32
    frag_off: np.ndarray  # uint16, flags and offset as on the wire
    ttl: np.ndarray  # uint8
    saddr: np.ndarray  # uint32
    daddr: np.ndarray  # uint32


def mac48(macs: np.ndarray) -> np.ndarray:
    """(N, 6) bytes → (N,) uint64 keys, byte 0 lowest; for comparing MACs at once."""
    padded = np.zeros((len(macs), 8), dtype=np.uint8)
    padded[:, :6] = macs
    return padded.view("<u8").ravel()


def ip_rcv(hdr: np.ndarray, length: np.ndarray, in_port: np.ndarray,
           port_mac48: np.ndarray, code: np.ndarray) -> IpHeaders:
    """Parse the batch and set `code` to a drop reason where `ip_rcv_core` drops."""
    tot_len = hdr[:, 16:18].view(">u2")[:, 0].astype(np.uint32)
    h = IpHeaders(
        plain=np.empty(0, dtype=bool),
        pkt_type=np.zeros(len(hdr), dtype=np.uint8),  # PACKET_HOST unless found otherwise
        ihl=hdr[:, 14] & 0xF,
        tot_len=tot_len,
        frag_off=hdr[:, 20:22].view(">u2")[:, 0],
        ttl=hdr[:, 22],
        saddr=hdr[:, 26:30].view(">u4")[:, 0].astype(np.uint32),
        daddr=hdr[:, 30:34].view(">u4")[:, 0].astype(np.uint32),
    )
    # Bytes 12..15 read little-endian: ethertype 0x0800, then 0x45, then the TOS.
    ether_vihl = (hdr[:, 12:16].view("<u4")[:, 0] & 0x00FF_FFFF) == 0x0045_0008
    # A header checksum verifies when the one's complement sum of its 16-bit words is
    # 0xFFFF, i.e. when their plain sum is a non-zero multiple of 65535; summing 32-bit
    # words instead, in either byte order, keeps the sum's residue mod 65535 (zero or
    # not) because 65536 = 1 and 256 is invertible mod 65535. Five column adds cost less
    # than a reduction along the rows. (An all-zero header fails `ether_vihl`.)
    v = hdr[:, 14:34].view("<u4")
    csum_ok = (v[:, 0].astype(np.uint64) + v[:, 1] + v[:, 2] + v[:, 3] + v[:, 4]) % 65535 == 0
    h.plain = ((hdr[:, :8].view("<u8")[:, 0] & MAC48) == port_mac48[in_port]) \
        & ether_vihl & csum_ok & (tot_len >= 20) & (tot_len + ETH_HLEN <= length)
    if np.count_nonzero(h.plain) < len(hdr):  # (a third of the cost of .all())
        odd = np.flatnonzero(~h.plain)
        h.pkt_type[odd] = pkt_type(hdr[odd], port_mac48[in_port[odd]])
        ip_len = length[odd].astype(np.int64) - ETH_HLEN
        code[odd] = rcv_checks(hdr[odd], ip_len, h.pkt_type[odd])
        # an ARP frame has no tot_len: keep all of it (the fast path trims to tot_len)
        arp = odd[code[odd] == slow(Slow.arp)]
        h.tot_len[arp] = length[arp] - ETH_HLEN
    return h


def pkt_type(hdr: np.ndarray, port_mac48: np.ndarray) -> np.ndarray:
    """What the Ethernet destination says (`eth_type_trans`)."""
    dst = hdr[:, :8].view("<u8")[:, 0] & MAC48
    out = np.full(len(hdr), PACKET_OTHERHOST, dtype=np.uint8)
    out[(hdr[:, 0] & 1) == 1] = PACKET_MULTICAST
    out[dst == MAC48] = PACKET_BROADCAST
    out[dst == port_mac48] = PACKET_HOST
    return out


def rcv_checks(hdr: np.ndarray, ip_len: np.ndarray, pkt: np.ndarray) -> np.ndarray:
    """`ip_rcv_core`'s checks, one after the other, for the frames that were not plain."""
    ihl = (hdr[:, 14] & 0xF).astype(np.int64)
    tot_len = hdr[:, 16:18].view(">u2")[:, 0].astype(np.int64)
    words = hdr[:, ETH_HLEN:].view(">u2")
    ethertype = hdr[:, 12:14].view("<u2")[:, 0]
    return first_match([
        # no Ethernet header at all: a NIC counts it in rx_length_errors and never
        # passes it up (eth_type_trans reads 14 bytes); a capture file can hold one
        (ip_len < 0, drop(Drop.runt)),
        (pkt == PACKET_OTHERHOST, drop(Drop.otherhost)),
        # arp_rcv takes every ARP frame but PACKET_OTHERHOST (and loopback): ours,
        # broadcast and multicast
        (ethertype == ETH_P_ARP_LE, slow(Slow.arp)),
        (ethertype != ETH_P_IP_LE, drop(Drop.not_ipv4)),
        (ip_len < 20, drop(Drop.hdr_too_short)),
        ((hdr[:, 14] >> 4) != 4, drop(Drop.bad_version)),
        (ihl < 5, drop(Drop.bad_ihl)),
        (ip_len < ihl * 4, drop(Drop.hdr_too_short)),
        (~checksum.header_ok(words, ihl), drop(Drop.csum_error)),
        (ip_len < tot_len, drop(Drop.truncated)),
        (tot_len < ihl * 4, drop(Drop.bad_tot_len)),
    ], len(hdr))


def rcv_stage(b: Batch, t: Tables) -> None:
    b.h = ip_rcv(b.hdr, b.length, b.in_port, t.port_mac48, b.code)


def rcv_record(b: Batch, t: Tables) -> dict[str, np.ndarray]:
    h = b.h
    return {"pkt_type": h.pkt_type, "ihl": h.ihl, "tot_len": h.tot_len,
            "frag_off": h.frag_off, "ttl": h.ttl, "protocol": b.hdr[:, 23],
            "saddr": h.saddr, "daddr": h.daddr}


TCP_FLAGS = "FSRPAUEC"  # RFC 793/3168 flag bits, lowest first (tcpdump's letters)
ICMP_TYPES = {0: "echo reply", 3: "destination unreachable", 5: "redirect", 8: "echo request",
              11: "time exceeded", 12: "parameter problem", 13: "timestamp",
              14: "timestamp reply"}


def l4_line(hdr: bytes, off: int, protocol: int, frag_off: int) -> TraceLine | None:
    """The transport header's first words when the received bytes hold them: ports
    for UDP and TCP (with TCP's flags), type and code for ICMP. Not for a fragment
    other than the first: it carries no transport header (RFC 791)."""
    if frag_off & IP_OFFSET:
        return None
    if protocol == 17 and len(hdr) >= off + 8:
        return ("udp", f"{int.from_bytes(hdr[off:off + 2], 'big')} > "
                       f"{int.from_bytes(hdr[off + 2:off + 4], 'big')} "
                       f"length {int.from_bytes(hdr[off + 4:off + 6], 'big')}")
    if protocol == 6 and len(hdr) >= off + 14:
        flags = "".join(c for i, c in enumerate(TCP_FLAGS) if hdr[off + 13] >> i & 1)
        return ("tcp", f"{int.from_bytes(hdr[off:off + 2], 'big')} > "
                       f"{int.from_bytes(hdr[off + 2:off + 4], 'big')} flags [{flags or 'none'}] "
                       f"seq {int.from_bytes(hdr[off + 4:off + 8], 'big')}")
    if protocol == 1 and len(hdr) >= off + 2:
        kind = ICMP_TYPES.get(hdr[off])
        return ("icmp", f"type {hdr[off]} code {hdr[off + 1]}" + (f" ({kind})" if kind else ""))
    return None


def rcv_lines(r: Mapping[str, Any], text: TraceText) -> list[TraceLine]:
    """The frame's Ethernet and IPv4 headers as received, then what ip_rcv decided."""
    hdr = r["hdr_in"]
    ether = int.from_bytes(hdr[12:14], "big")
    lines: list[TraceLine] = [
        ("ethernet", f"{text.mac(hdr[6:12])} > {text.mac(hdr[0:6])} type 0x{ether:04x} "
                     f"({text.pkt_type(r['pkt_type'])})")]
    ihl = r["ihl"]
    if ether == ETH_P_IP and len(hdr) >= 34:
        ident = int.from_bytes(hdr[18:20], "big")
        csum = int.from_bytes(hdr[24:26], "big")
        frag = r["frag_off"]
        flags = "".join(f for f, bit in (("DF", IP_DF), ("MF", IP_MF)) if frag & bit)
        lines.append((
            "ipv4",
            f"{text.ip(r['saddr'])} > {text.ip(r['daddr'])} {text.proto(r['protocol'])} "
            f"version {hdr[14] >> 4} ihl {ihl} tos 0x{hdr[15]:02x} tot_len {r['tot_len']} "
            f"id 0x{ident:04x} frag_off 0x{frag:04x}{' ' + flags if flags else ''} "
            f"ttl {r['ttl']} checksum 0x{csum:04x}"))
        l4 = l4_line(hdr, 14 + ihl * 4, r["protocol"], frag)
        if l4 is not None:
            lines.append(l4)
    if r["rcv_code"]:
        lines.append((None, text.code(r["rcv_code"])))
        return lines
    tier = "whole-batch test" if r["rcv_plain"] else "checks one by one"
    lines.append((None, f"passed ({tier}): for us at L2, IPv4, version 4, ihl {ihl}, "
                        f"checksum ok, tot_len {r['tot_len']} within "
                        f"{r['length'] - ETH_HLEN} bytes of IP"))
    return lines


STAGE = Stage(
    name="ip_rcv",
    key="rcv",
    run=rcv_stage,
    reasons=frozenset({
        drop(Drop.runt), drop(Drop.otherhost), slow(Slow.arp), drop(Drop.not_ipv4),
        drop(Drop.hdr_too_short), drop(Drop.bad_version), drop(Drop.bad_ihl),
        drop(Drop.csum_error), drop(Drop.truncated), drop(Drop.bad_tot_len)}),
    record=rcv_record,
    lines=rcv_lines,
)
