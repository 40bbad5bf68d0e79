"""Route input: martian checks, FIB lookup and route-type dispatch (`ip_route_input_slow`).

Fragments are taken first when transit fragments are reassembled (netfilter's
defrag runs at PRE_ROUTING, before routing). Then, as the kernel: a multicast
destination is not forwarded (`ip_route_input_rcu`), and delivered only for
224.0.0.1, the one group we are in (`ip_route_input_mc`); martian sources and
destinations (since Linux 5.3 only 0.0.0.0 itself is "zeronet"); limited broadcast
is for us; the FIB says local, broadcast, unicast or an error route. Errors come
before source validation, as in the kernel's `no_route` path; a source that is one
of our own addresses is martian (`fib_validate_source` with rp_filter off).
Packets with IP options go to the slow path once they pass the martian checks: it
routes them again after `ip_rcv_options`.

Plain packets: source and destination whose first octet is none of 0, 127,
224-239 and 255, a source that is not ours, not a fragment that must be
reassembled, and a route to a unicast next hop on a port that is up whose MTU the
packet fits (`nh_mtu`, which the control plane keeps 0 for any other next hop, so
one compare stands for all three). Whether the next hop's MAC is known is decided
last, in forward.py's `neigh_output`, as the kernel resolves the neighbour last.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.counters import Drop, Slow
from engine.pipeline.rcv import IpHeaders
from engine.pipeline.stage import Batch, Stage, TraceLine, TraceText
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import PACKET_HOST, drop, first_match, slow
from engine.proto import IP_MF, IP_OFFSET
from engine.shm.memory import (
    NH_BLACKHOLE,
    NH_BROADCAST,
    NH_LOCAL,
    NH_NOROUTE,
    NH_PROHIBIT,
    NH_UNICAST,
    NH_UNREACHABLE,
    NHF_GATEWAY,
)

LBCAST = 0xFFFF_FFFF
ALL_HOSTS = 0xE000_0001  # 224.0.0.1: every interface with an address joins it (ip_mc_up)


def _ordinary_first_octets() -> np.ndarray:
    ok = np.ones(256, dtype=bool)
    ok[[0, 127, 255]] = False
    ok[224:240] = False
    return ok


ORDINARY = _ordinary_first_octets()  # first octets that can be neither martian nor special


def is_local(addr: np.ndarray, local_addrs: np.ndarray) -> np.ndarray:
    """addr is one of the router's addresses (sorted `local_addrs`)."""
    if len(local_addrs) <= 8:  # a few compares beat a search for a handful of addresses
        hit = np.zeros(len(addr), dtype=bool)
        for a in local_addrs:  # slow path: at most 8 vectorised compares a batch
            hit |= addr == a
        return hit
    pos = np.minimum(np.searchsorted(local_addrs, addr), len(local_addrs) - 1)
    return local_addrs[pos] == addr


MIX = np.uint64(0x9E37_79B9_7F4A_7C15)  # 2^64 / golden ratio (Fibonacci hashing)


def flow_hash(saddr: np.ndarray, daddr: np.ndarray) -> np.ndarray:
    """A 31-bit hash of (source, destination): the kernel's default multipath policy
    (`fib_multipath_hash_policy` 0, L3) hashes the addresses only, so every fragment
    and every port of a host pair takes the same path."""
    key = (saddr.astype(np.uint64) << np.uint64(32)) | daddr
    mixed = key * MIX
    return ((mixed ^ (mixed >> np.uint64(29))) * MIX) >> np.uint64(33)


def select_multipath(nh: np.ndarray, saddr: np.ndarray, daddr: np.ndarray,
                     t: Tables) -> np.ndarray:
    """Replace ECMP group indexes by one member each, by hash threshold (RFC 2992, as
    `fib_select_multipath`: member k owns hash range [k, k+1) * 2^31 / n)."""
    n = t.nh_group_n[nh]
    if np.count_nonzero(n):  # group_n is 0 for every row that is not a group
        multi = np.flatnonzero(n > 1)
        k = (flow_hash(saddr[multi], daddr[multi]) * n[multi]) >> np.uint64(31)
        nh = nh.copy()
        nh[multi] = t.nhg_members[t.nh_group[nh[multi]] + k]
    return nh


def plain_route(saddr: np.ndarray, daddr: np.ndarray, tot_len: np.ndarray, nh: np.ndarray,
                source_local: np.ndarray, t: Tables) -> np.ndarray:
    """`ip_route_input_slow` has nothing to say: ordinary addresses (no martian, no
    multicast, no loopback, no broadcast), a source that is not ours, and a unicast
    route on a port that is up whose MTU the packet fits (`Tables.nh_mtu`)."""
    return ((tot_len <= t.nh_mtu[nh]) & ORDINARY[saddr >> 24] & ORDINARY[daddr >> 24]
            & ~source_local)


def ip_route_input(h: IpHeaders, t: Tables, code: np.ndarray) -> np.ndarray:
    """Return the next-hop index of each packet; set `code` where routing decides."""
    nh = select_multipath(t.lookup(h.daddr), h.saddr, h.daddr, t)
    fragment = (h.frag_off & (IP_MF | IP_OFFSET)) != 0
    source_local = is_local(h.saddr, t.local_addrs)
    plain = h.plain & plain_route(h.saddr, h.daddr, h.tot_len, nh, source_local, t)
    if t.reassemble_transit:
        plain &= ~fragment
    h.plain = plain
    if np.count_nonzero(plain) < len(plain):
        odd = np.flatnonzero(~plain & (code == 0))
        code[odd] = route_checks(h.saddr[odd], h.daddr[odd], h.ihl[odd], fragment[odd],
                                 h.pkt_type[odd], t.nh_type[nh[odd]], source_local[odd],
                                 t.reassemble_transit)
    return nh


def route_checks(saddr: np.ndarray, daddr: np.ndarray, ihl: np.ndarray, fragment: np.ndarray,
                 pkt_type: np.ndarray, nh_type: np.ndarray, source_local: np.ndarray,
                 reassemble_transit: bool, options_done: bool = False) -> np.ndarray:
    """`ip_route_input_slow`'s decisions, in its order, for packets that were not plain.
    The slow path calls it again for packets whose options it has processed
    (`options_done`) or that it has reassembled (`fragment` all False)."""
    error_route = (nh_type == NH_NOROUTE) | (nh_type == NH_UNREACHABLE) | (nh_type == NH_PROHIBIT)
    return first_match([
        (fragment & reassemble_transit, slow(Slow.reassemble)),
        # ip_route_input_rcu: a group we are not in (`ip_check_mc_rcu`) is dropped
        (((daddr >> 28) == 0xE) & (daddr != ALL_HOSTS), drop(Drop.multicast)),
        (((saddr >> 28) == 0xE) | (saddr == LBCAST), drop(Drop.martian_source)),
        ((daddr == LBCAST) | ((saddr == 0) & (daddr == 0)), slow(Slow.local)),
        (saddr == 0, drop(Drop.martian_source)),
        (daddr == 0, drop(Drop.martian_destination)),
        ((daddr >> 24) == 127, drop(Drop.martian_destination)),
        ((saddr >> 24) == 127, drop(Drop.martian_source)),
        ((ihl > 5) & (not options_done), slow(Slow.options)),
        # ip_route_input_mc: ours, from a source ip_mc_validate_source accepts
        ((daddr == ALL_HOSTS) & source_local, drop(Drop.martian_source)),
        (daddr == ALL_HOSTS, slow(Slow.local)),
        # icmp_send answers only PACKET_HOST frames: an error route is then silent
        (error_route & (pkt_type != PACKET_HOST), drop(Drop.l2_not_host)),
        (nh_type == NH_NOROUTE, slow(Slow.no_route)),
        (nh_type == NH_UNREACHABLE, slow(Slow.unreachable)),
        (nh_type == NH_PROHIBIT, slow(Slow.prohibit)),
        (nh_type == NH_BLACKHOLE, drop(Drop.blackhole)),
        (source_local, drop(Drop.martian_source)),
        ((nh_type == NH_LOCAL) | (nh_type == NH_BROADCAST), slow(Slow.local)),
    ], len(saddr))


def route_stage(b: Batch, t: Tables) -> None:
    b.nh = ip_route_input(b.h, t, b.code)


def route_record(b: Batch, t: Tables) -> dict[str, np.ndarray]:
    nh = b.nh
    group = t.lookup(b.h.daddr)  # the route's own row: an ECMP group, or not
    out = {"nh": nh, "nh_type": t.nh_type[nh], "nh_flags": t.nh_flags[nh],
           "nh_mtu": t.nh_mtu[nh],
           "ecmp_members": np.where(t.nh_group_n[group] > 1, t.nh_group_n[group], 0)}
    if t.nh_gw is not None:
        out["gateway"] = t.nh_gw[nh]
    return out


def route_lines(r: Mapping[str, Any], text: TraceText) -> list[TraceLine]:
    """The FIB's answer, then what ip_route_input decided."""
    nh_line = f"next hop {r['nh']} {text.nh_type(r['nh_type'])}"
    if r["nh_type"] == NH_UNICAST:
        if r["nh_flags"] & NHF_GATEWAY:
            nh_line += f" via {text.ip(r['gateway'])}"
        nh_line += f" dev {text.port(r['egress'])}"
        if r["nh_mtu"]:
            nh_line += f" mtu {r['nh_mtu']}"
    if r["ecmp_members"]:
        nh_line += f" (ECMP: one of {r['ecmp_members']}, by flow hash)"
    lines: list[TraceLine] = [(None, f"fib lookup {text.ip(r['daddr'])}: {nh_line}")]
    if r["route_code"]:
        lines.append((None, text.code(r["route_code"])))
    else:
        lines.append((None, "passed: no martian source or destination, "
                            + ("not a fragment to reassemble, unicast route"
                               if r["route_plain"] else "unicast route (checks one by one)")))
    return lines


STAGE = Stage(
    name="ip_route_input",
    key="route",
    run=route_stage,
    reasons=frozenset({
        slow(Slow.reassemble), drop(Drop.multicast), drop(Drop.martian_source),
        slow(Slow.local), drop(Drop.martian_destination), slow(Slow.options),
        drop(Drop.l2_not_host), slow(Slow.no_route), slow(Slow.unreachable),
        slow(Slow.prohibit), drop(Drop.blackhole)}),
    record=route_record,
    lines=route_lines,
)
