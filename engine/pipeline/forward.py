"""Forward: `ip_forward` checks, TTL decrement and the Ethernet rewrite (`ip_output`).

Order as `ip_forward`: a frame that was not addressed to us at L2 is dropped before
anything else (no ICMP, even at TTL 1); then TTL, then the MTU (DF → ICMP
fragmentation needed, otherwise fragment); a packet going back out of the port it
came in on, from an on-link source, is forwarded *and* redirected
(`IPSKB_DOREDIRECT`, checked after TTL so TTL 1 gets time exceeded, not a redirect).
What is left is forwarded here: TTL - 1 with the RFC 1624 checksum update
(`ip_decrease_ttl`), then new Ethernet addresses from the next hop's neighbour
entry (`neigh_output`, last, as in `ip_finish_output2`): the MAC in the next-hop row
for a static neighbour, else the neighbour table through the worker's cache
(`Tables.neigh`, see pipeline/neigh_cache.py) keyed by the destination (connected route)
or the gateway; a neighbour that is not resolved goes to the slow path for ARP.

Plain packets: plain so far (which covers the next hop and MTU, see route.py), TTL
above 1, an egress port other than the ingress port, and a neighbour whose MAC is
known (in the row, or found by a whole-batch lookup).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.counters import Drop, Slow
from engine.pipeline import checksum
from engine.pipeline.rcv import IpHeaders
from engine.pipeline.stage import Batch, Stage, TraceLine, TraceText
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import FORWARD, PACKET_HOST, drop, first_match, slow
from engine.proto import IP_DF
from engine.shm.memory import NH_UNICAST, NHF_GATEWAY, NHF_RESOLVED


def source_on_link(saddr: np.ndarray, in_port: np.ndarray, t: Tables) -> np.ndarray:
    """The route back to the source is a connected one on the ingress port
    (`fib_validate_source` returning "on-link", which gates redirects)."""
    nh = t.lookup(saddr)
    return ((t.nh_type[nh] == NH_UNICAST) & ((t.nh_flags[nh] & NHF_GATEWAY) == 0)
            & (t.nh_port[nh] == in_port))


def ip_forward(h: IpHeaders, nh: np.ndarray, in_port: np.ndarray, t: Tables,
               code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decide the fate of packets routed to a unicast next hop; return each packet's
    egress port and next hop's MAC (mac48; meaningful where forwarded)."""
    egress = t.nh_port[nh]
    plain = h.plain & (h.ttl > 1) & (egress != in_port)
    h.plain = plain
    all_plain = np.count_nonzero(plain) == len(plain)
    if not all_plain:
        odd = np.flatnonzero(~plain & (code == 0))
        # every check but the neighbour's, which neigh_output makes for what is left
        code[odd] = forward_checks(h.pkt_type[odd], h.ttl[odd], h.tot_len[odd],
                                   h.frag_off[odd], h.saddr[odd], nh[odd], in_port[odd], t,
                                   resolved=np.ones(len(odd), dtype=bool))
    return egress, neigh_output(h, nh, egress, t, code, all_plain)


def next_hop_addr(daddr: np.ndarray, nh: np.ndarray, flags: np.ndarray,
                  t: Tables) -> np.ndarray:
    """The address to resolve (`rt_nexthop`): the gateway of a gateway route, else the
    destination itself."""
    gateway = flags & NHF_GATEWAY
    if not np.count_nonzero(gateway):  # connected routes only
        return daddr
    return np.where(gateway, t.nh_gw[nh], daddr)  # type: ignore[index]


def neigh_output(h: IpHeaders, nh: np.ndarray, egress: np.ndarray, t: Tables,
                 code: np.ndarray, all_plain: bool) -> np.ndarray:
    """Each packet's next-hop MAC, for the packets every other check let through
    (code 0), as `ip_finish_output2` looks the neighbour up last: a static
    neighbour's MAC is in its next-hop row; rows without NHF_RESOLVED ask `t.neigh`,
    the whole batch at once when it is all plain (a LAN of hosts learned by ARP),
    else only the packets still to be forwarded, so nothing is looked up, or cached,
    for a packet that is dropped anyway (a port that is down, say). A packet whose
    neighbour is not known goes to the slow path (neigh_unresolved)."""
    mac = t.nh_mac48[nh]
    # every next hop carries its MAC (a row without NHF_RESOLVED holds 0): one count,
    # which costs a third of an .all()
    if np.count_nonzero(mac) == len(mac):
        return mac
    flags = t.nh_flags[nh]
    resolved = flags & NHF_RESOLVED
    if all_plain and t.neigh is not None and not np.count_nonzero(resolved):
        ok, mac = t.neigh.resolve(next_hop_addr(h.daddr, nh, flags, t), egress)
        if np.count_nonzero(ok) < len(ok):
            code[~ok] = slow(Slow.neigh_unresolved)
            h.plain = ok
        return mac
    rows = np.flatnonzero((resolved == 0) & (code == 0))
    if len(rows):
        ok = np.zeros(len(rows), dtype=bool)
        if t.neigh is not None:
            ok, mac[rows] = t.neigh.resolve(
                next_hop_addr(h.daddr[rows], nh[rows], flags[rows], t), egress[rows])
        code[rows[~ok]] = slow(Slow.neigh_unresolved)
        h.plain[rows[~ok]] = False
    return mac


def forward_checks(pkt_type: np.ndarray, ttl: np.ndarray, tot_len: np.ndarray,
                   frag_off: np.ndarray, saddr: np.ndarray, nh: np.ndarray,
                   in_port: np.ndarray, t: Tables,
                   resolved: np.ndarray | None = None) -> np.ndarray:
    """`ip_forward`'s decisions, in its order, for packets routed to a unicast next hop
    that were not plain (and for the slow path's own packets), then the neighbour's:
    `resolved` says whether each packet's neighbour is known (default: its next-hop
    row carries the MAC; the fast path passes all True and resolves afterwards)."""
    egress = t.nh_port[nh]
    if resolved is None:
        resolved = (t.nh_flags[nh] & NHF_RESOLVED) != 0
    too_big = tot_len > t.port_mtu[egress]
    redirect = np.zeros(len(nh), dtype=bool)
    back = np.flatnonzero(egress == in_port)
    if t.send_redirects and len(back):
        redirect[back] = source_on_link(saddr[back], in_port[back], t)
    return first_match([
        (pkt_type != PACKET_HOST, drop(Drop.l2_not_host)),
        (ttl <= 1, slow(Slow.ttl_exceeded)),
        (~t.port_up[egress], drop(Drop.port_down)),
        (too_big & ((frag_off & IP_DF) != 0), slow(Slow.frag_needed)),
        (too_big, slow(Slow.fragment)),
        (redirect, slow(Slow.redirect)),
        (~resolved, slow(Slow.neigh_unresolved)),
    ], len(nh))


def rewrite(hdr: np.ndarray, mac: np.ndarray, egress: np.ndarray, t: Tables) -> None:
    """TTL - 1, checksum update and Ethernet addresses (destination `mac`, mac48) for
    every row of `hdr`, in place, through column views: bytes 0..7 (destination MAC
    and the source's first two bytes) as one 64-bit word, 8..11 (the source's last
    four) as a 32-bit one, the TTL at byte 22 and the checksum at 24..25 read
    little-endian."""
    set_ethernet(hdr, mac, egress, t)
    hdr[:, 22] -= 1
    check = hdr[:, 24:26].view("<u2")[:, 0]
    check[:] = checksum.ttl_decrement_le(check)


def set_ethernet(hdr: np.ndarray, mac: np.ndarray, egress: np.ndarray, t: Tables) -> None:
    """The Ethernet addresses of frames leaving by `egress` to `mac` (mac48), in place
    in the first 12 bytes of each row of `hdr` (`neigh_hh_output`'s header copy)."""
    src = t.port_mac48[egress]
    hdr[:, 0:8].view("<u8")[:, 0] = mac | (src << np.uint64(48))
    hdr[:, 8:12].view("<u4")[:, 0] = src >> np.uint64(16)


def forward_stage(b: Batch, t: Tables) -> None:
    b.egress, b.mac = ip_forward(b.h, b.nh, b.in_port, t, b.code)


def forward_record(b: Batch, t: Tables) -> dict[str, np.ndarray]:
    out = {"egress": b.egress, "mac": b.mac}
    if t.nh_gw is not None:  # neigh_output's key (without nh_gw nothing is looked up)
        out["neighbour"] = next_hop_addr(b.h.daddr, b.nh, t.nh_flags[b.nh], t)
    return out


def forward_lines(r: Mapping[str, Any], text: TraceText) -> list[TraceLine]:
    """What ip_forward decided; for a forwarded packet the neighbour and the rewritten
    header as it was sent."""
    if r["forward_code"]:
        return [(None, f"ttl {r['ttl']}, tot_len {r['tot_len']}: "
                       f"{text.code(r['forward_code'])}")]
    how = "static neighbour" if r["nh_flags"] & NHF_RESOLVED else "neighbour table"
    lines: list[TraceLine] = [
        (None, f"passed: ttl {r['ttl']} > 1, tot_len {r['tot_len']} fits the mtu, "
               f"egress {text.port(r['egress'])} is not the ingress port"),
        ("neigh_output", f"{text.ip(r['neighbour'])} is at {text.mac48(r['mac'])} ({how})")]
    out = r["hdr_out"]
    if r["final_code"] == FORWARD and len(out) >= 26:
        csum = int.from_bytes(out[24:26], "big")
        lines.append(("rewrite", f"{text.mac(out[6:12])} > {text.mac(out[0:6])} "
                                 f"ttl {out[22]} checksum 0x{csum:04x} (RFC 1624)"))
    return lines


STAGE = Stage(
    name="ip_forward",
    key="forward",
    run=forward_stage,
    reasons=frozenset({
        drop(Drop.l2_not_host), slow(Slow.ttl_exceeded), drop(Drop.port_down),
        slow(Slow.frag_needed), slow(Slow.fragment), slow(Slow.redirect),
        slow(Slow.neigh_unresolved)}),
    record=forward_record,
    lines=forward_lines,
)
