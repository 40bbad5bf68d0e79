"""The compiled datapath: the fast path's stages as one numba kernel call per batch.

`forward_batch` decides, for each buffer of a batch, what `fast_path` decides
(rcv.py, route.py, forward.py, neigh_cache.py: the numpy reference, which `fwd
trace` runs) and does it on the pool rows in place: no gather, no scatter. Per
packet, in the kernel's order: `ip_rcv_core`'s checks, `ip_route_input_slow`'s
(with the ECMP member chosen by the same flow hash), `ip_forward`'s, then
`neigh_output` through the worker's neighbour cache and, for what it misses, the
shared neighbour table (its seqlock read), then the TTL decrement with the RFC 1624
update, the Ethernet rewrite and the L2 padding trim. The two tiers of the numpy
stages (plain packets first, the careful checks for the rest) are kept as such, so
that a disagreement between a tier's shortcut and the careful checks (the control
plane's `nh_mtu` against a port's MTU, say) gives the same verdict here. Cache
fills happen after the batch, as `NeighCache.fill` does them, so the cache ends
each batch holding the same entries in the same slots.

`CompiledPath` binds the kernel to a worker's `Tables`; `warm_up` compiles it (or
loads it from numba's on-disk cache) before the first packet. A differential test
(tests/test_compiled.py) holds the kernel and the numpy stages together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit, types
from numba.experimental import structref
from numba.extending import intrinsic

from engine.counters import Drop, Slow
from engine.pipeline.fastpath import CODE_TO_COUNTERS
from engine.pipeline.neigh_cache import EMPTY, NeighCache
from engine.pipeline.neigh_cache import OFFSETS as CACHE_OFFSETS
from engine.pipeline.route import ALL_HOSTS, LBCAST, MIX, ORDINARY
from engine.pipeline.tables import PortMask, Tables
from engine.pipeline.verdict import (
    FORWARD,
    NCODES,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    drop,
    slow,
)
from engine.proto import ETH_HLEN, IP_DF, IP_MF, IP_OFFSET, IPHDR_LEN, MAC48
from engine.shm.fib import EXT
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
)
from engine.shm.neigh_table import FIB_HASH, VALID, NeighbourTable
from engine.shm.neigh_table import OFFSETS as TABLE_OFFSETS

# the verdict codes the kernel decides, as plain ints (numba freezes module globals)
RUNT, OTHERHOST, NOT_IPV4 = drop(Drop.runt), drop(Drop.otherhost), drop(Drop.not_ipv4)
HDR_TOO_SHORT, BAD_VERSION = drop(Drop.hdr_too_short), drop(Drop.bad_version)
BAD_IHL, CSUM_ERROR = drop(Drop.bad_ihl), drop(Drop.csum_error)
TRUNCATED, BAD_TOT_LEN = drop(Drop.truncated), drop(Drop.bad_tot_len)
MULTICAST, MARTIAN_SOURCE = drop(Drop.multicast), drop(Drop.martian_source)
MARTIAN_DESTINATION, L2_NOT_HOST = drop(Drop.martian_destination), drop(Drop.l2_not_host)
BLACKHOLE, PORT_DOWN = drop(Drop.blackhole), drop(Drop.port_down)
ARP, REASSEMBLE, LOCAL = slow(Slow.arp), slow(Slow.reassemble), slow(Slow.local)
OPTIONS, NO_ROUTE = slow(Slow.options), slow(Slow.no_route)
UNREACHABLE, PROHIBIT = slow(Slow.unreachable), slow(Slow.prohibit)
TTL_EXCEEDED, FRAG_NEEDED = slow(Slow.ttl_exceeded), slow(Slow.frag_needed)
FRAGMENT, REDIRECT = slow(Slow.fragment), slow(Slow.redirect)
NEIGH_UNRESOLVED = slow(Slow.neigh_unresolved)
U32 = 0x1_0000_0000

# `flags` of forward_batch: the Tables' switches and which resolver there is
F_REASSEMBLE_TRANSIT = 1  # [reassembly] mode = "full"
F_SEND_REDIRECTS = 2
F_NEIGH_TABLE = 4  # a neighbour table answers next hops without NHF_RESOLVED
F_NEIGH_CACHE = 8  # ... through the worker's cache in front of it

# cache statistics the kernel adds to (NeighCache's counters)
ST_LOOKUPS, ST_MISSES, ST_FILLS = 0, 1, 2

_U64_29, _U64_31, _U64_32, _U64_33 = (np.uint64(s) for s in (29, 31, 32, 33))


@structref.register
class KernelType(types.StructRef):
    def preprocess_fields(self, fields):  # type: ignore[no-untyped-def]
        return tuple((name, types.unliteral(t)) for name, t in fields)


class Kernel(structref.StructRefProxy):
    """The kernel's arrays, bound once per worker: one argument that numba unboxes as
    one pointer, where passing them one by one costs a type check and an unboxing
    each, per call."""


KERNEL_FIELDS = (
    "tbl24", "tbl8", "nh_type", "nh_flags", "nh_port", "nh_mtu", "nh_group", "nh_group_n",
    "nhg_members", "nh_mac48", "nh_gw", "port_mac48", "port_mtu", "port_up", "local_addrs",
    "flags", "c_addr", "c_port", "c_mac", "n_seq", "n_ip", "n_port", "n_state", "n_mac",
    "n_bits", "code", "egress", "hist", "stats", "miss_addr", "miss_port", "miss_mac",
    "miss_key", "fill_slot", "fill_take")
structref.define_constructor(Kernel, KernelType, KERNEL_FIELDS)
structref.define_boxing(KernelType, Kernel)


@njit(cache=True)
def new_kernel(*fields):  # type: ignore[no-untyped-def]
    """A `Kernel` (built by a cached function: numba's own constructor compiles anew
    in every process)."""
    return Kernel(*fields)


@intrinsic
def store_fence(typingctx):  # type: ignore[no-untyped-def]
    """A release fence: no store moves across it. x86-64 keeps stores in program order
    by itself (TSO; no instruction is emitted); this keeps the compiler from merging or
    reordering them, which is what makes a compiled function's stores reach memory in
    the order it is written, as a crash-safety protocol needs."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        builder.fence("release")
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def load_fence(typingctx):  # type: ignore[no-untyped-def]
    """An acquire fence: no load moves across it (the seqlock's order; on x86-64 it
    emits no instruction, it only stops the compiler merging or reordering loads)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        builder.fence("acquire")
        return context.get_dummy_value()
    return types.void(), codegen


@njit(inline="always")
def fib_lookup(tbl24: np.ndarray, tbl8: np.ndarray, addr: int) -> int:
    """FibReader.lookup for one address: an extended tbl24 entry, as int32, is its
    group's offset from the end of tbl8."""
    e = np.int64(tbl24[addr >> 8])
    if e >= EXT:
        e = np.int64(tbl8[e - U32 + (addr & 0xFF) + tbl8.shape[0]])
    return e


@njit(inline="always")
def fold(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


@njit(inline="always")
def header_sum(data: np.ndarray, b: int, words: int) -> int:
    """Sum of the first `words` big-endian 16-bit words of the IP header."""
    total = 0
    for k in range(words):
        total += (np.int64(data[b, ETH_HLEN + 2 * k]) << 8) | data[b, ETH_HLEN + 2 * k + 1]
    return total


@njit(inline="always")
def is_local(addr: int, local_addrs: np.ndarray) -> bool:
    """route.is_local for one address: a binary search of the sorted addresses."""
    lo, hi = 0, local_addrs.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if np.int64(local_addrs[mid]) < addr:
            lo = mid + 1
        else:
            hi = mid
    return lo < local_addrs.shape[0] and np.int64(local_addrs[lo]) == addr


@njit(inline="always")
def table_lookup(key: int, n_seq: np.ndarray, n_ip: np.ndarray, n_port: np.ndarray,
                 n_state: np.ndarray, n_mac: np.ndarray, bits: int) -> tuple[bool, int, int]:
    """NeighbourTable.lookup for one address: (found, port, mac48)."""
    mask = n_ip.shape[0] - 1
    h = (np.uint64(key) * np.uint64(FIB_HASH)) & np.uint64(0xFFFF_FFFF)
    slot = np.int64(h >> np.uint64(32 - bits))
    if np.int64(n_ip[slot]) != key:  # not at home: the first match of its window, if any
        for o in TABLE_OFFSETS:
            s = (slot + o) & mask
            if np.int64(n_ip[s]) == key:
                slot = s
                break
    seq = n_seq[slot]  # the seqlock read: sequence, fields, sequence again
    load_fence()
    ip = np.int64(n_ip[slot])
    state = n_state[slot]
    port = np.int64(n_port[slot])
    mac = np.int64(n_mac[slot])
    load_fence()
    found = n_seq[slot] == seq and (seq & 1) == 0 and ip == key and VALID[state]
    if not found:
        return False, 0, 0
    return True, port, mac


@njit(cache=True, nogil=True)
def forward_batch(k: Kernel, data: np.ndarray, length: np.ndarray, port: np.ndarray,
                  idx: np.ndarray) -> int:
    """The fast path over buffers `idx` of the pool (`data`, `length`, `port`) with the
    arrays bound in `k`: each packet's verdict in `k.code` and egress port in
    `k.egress`, forwarded rows rewritten and every length trimmed to the IP datagram,
    in place; `k.hist` = the codes' histogram, `k.stats` += the neighbour cache's
    lookups, misses and fills. Returns how many packets are forwarded."""
    return kernel(data, length, port, idx, k.tbl24, k.tbl8, k.nh_type, k.nh_flags, k.nh_port,
                  k.nh_mtu, k.nh_group, k.nh_group_n, k.nhg_members, k.nh_mac48, k.nh_gw,
                  k.port_mac48, k.port_mtu, k.port_up[0], k.local_addrs, k.flags,
                  k.c_addr, k.c_port, k.c_mac, k.n_seq, k.n_ip, k.n_port, k.n_state, k.n_mac,
                  k.n_bits, k.code, k.egress, k.hist, k.stats, k.miss_addr, k.miss_port,
                  k.miss_mac, k.miss_key, k.fill_slot, k.fill_take)


# no reference counting (_nrt=False): numba counts references to the arrays passed
# around in the loop with atomic adds, a few a packet, which cost more than the rest
# of a plain forward; the loop allocates nothing, so it needs none
@njit(nogil=True, _nrt=False)
def kernel(data: np.ndarray, length: np.ndarray, port: np.ndarray, idx: np.ndarray,
           tbl24: np.ndarray, tbl8: np.ndarray,
           nh_type: np.ndarray, nh_flags: np.ndarray, nh_port: np.ndarray,
           nh_mtu: np.ndarray, nh_group: np.ndarray, nh_group_n: np.ndarray,
           nhg_members: np.ndarray, nh_mac48: np.ndarray, nh_gw: np.ndarray,
           port_mac48: np.ndarray, port_mtu: np.ndarray, port_up: np.uint64,
           local_addrs: np.ndarray, flags: int,
           c_addr: np.ndarray, c_port: np.ndarray, c_mac: np.ndarray,
           n_seq: np.ndarray, n_ip: np.ndarray, n_port: np.ndarray,
           n_state: np.ndarray, n_mac: np.ndarray, n_bits: int,
           code: np.ndarray, egress: np.ndarray, hist: np.ndarray, stats: np.ndarray,
           miss_addr: np.ndarray, miss_port: np.ndarray, miss_mac: np.ndarray,
           miss_key: np.ndarray, fill_slot: np.ndarray, fill_take: np.ndarray) -> int:
    """`forward_batch`'s loop, on the arrays themselves (`port_up`: the mask, read once
    a batch: a port going down is seen next batch); the cache misses the table
    answered are kept in `miss_*` and filled into the cache after the batch."""
    hist[:] = 0
    n = idx.shape[0]
    reassemble_transit = (flags & F_REASSEMBLE_TRANSIT) != 0
    send_redirects = (flags & F_SEND_REDIRECTS) != 0
    use_table = (flags & F_NEIGH_TABLE) != 0
    use_cache = (flags & F_NEIGH_CACHE) != 0
    c_mask = c_addr.shape[0] - 1
    nmiss = 0
    forwarded = 0
    for i in range(n):
        b = np.int64(idx[i])
        ln = np.int64(length[b])
        in_port = np.int64(port[b])
        dst = np.int64(0)
        for k in range(6):
            dst |= np.int64(data[b, k]) << (8 * k)
        vihl = np.int64(data[b, 14])
        ihl = vihl & 0xF
        tot_len = (np.int64(data[b, 16]) << 8) | data[b, 17]
        frag_off = (np.int64(data[b, 20]) << 8) | data[b, 21]
        ttl = np.int64(data[b, 22])
        saddr = ((np.int64(data[b, 26]) << 24) | (np.int64(data[b, 27]) << 16)
                 | (np.int64(data[b, 28]) << 8) | data[b, 29])
        daddr = ((np.int64(data[b, 30]) << 24) | (np.int64(data[b, 31]) << 16)
                 | (np.int64(data[b, 32]) << 8) | data[b, 33])
        my_mac = np.int64(port_mac48[in_port])
        c = FORWARD

        # -- ip_rcv (rcv.py) ----------------------------------------------------------
        ether_ip = data[b, 12] == 0x08 and data[b, 13] == 0x00
        # the plain tier: for us at L2, IPv4, 0x45, checksum, tot_len within the frame
        plain = (dst == my_mac and ether_ip and vihl == 0x45
                 and fold(header_sum(data, b, 10)) == 0xFFFF
                 and tot_len >= IPHDR_LEN and tot_len + ETH_HLEN <= ln)
        pkt_type = PACKET_HOST
        if not plain:
            # eth_type_trans: what the Ethernet destination says
            pkt_type = PACKET_OTHERHOST
            if data[b, 0] & 1:
                pkt_type = PACKET_MULTICAST
            if dst == MAC48:
                pkt_type = PACKET_BROADCAST
            if dst == my_mac:
                pkt_type = PACKET_HOST
            ip_len = ln - ETH_HLEN
            # rcv_checks, in ip_rcv_core's order
            if ip_len < 0:  # no Ethernet header at all (rx_length_errors)
                c = RUNT
            elif pkt_type == PACKET_OTHERHOST:
                c = OTHERHOST
            elif data[b, 12] == 0x08 and data[b, 13] == 0x06:  # arp_rcv
                c = ARP
            elif not ether_ip:
                c = NOT_IPV4
            elif ip_len < IPHDR_LEN:
                c = HDR_TOO_SHORT
            elif (vihl >> 4) != 4:
                c = BAD_VERSION
            elif ihl < 5:
                c = BAD_IHL
            elif ip_len < ihl * 4:
                c = HDR_TOO_SHORT
            elif fold(header_sum(data, b, min(ihl * 2, 30))) != 0xFFFF:  # ip_fast_csum
                c = CSUM_ERROR
            elif ip_len < tot_len:
                c = TRUNCATED
            elif tot_len < ihl * 4:
                c = BAD_TOT_LEN
            if c == ARP:  # an ARP frame has no tot_len: keep all of it
                tot_len = ip_len

        # -- ip_route_input (route.py) --------------------------------------------------
        nh = fib_lookup(tbl24, tbl8, daddr)
        members = np.int64(nh_group_n[nh])
        if members > 1:  # select_multipath: hash threshold over the flow hash
            key = (np.uint64(saddr) << _U64_32) | np.uint64(daddr)
            mixed = key * MIX
            fh = ((mixed ^ (mixed >> _U64_29)) * MIX) >> _U64_33
            k = np.int64((fh * np.uint64(members)) >> _U64_31)
            nh = np.int64(nhg_members[np.int64(nh_group[nh]) + k])
        fragment = (frag_off & (IP_MF | IP_OFFSET)) != 0
        source_local = is_local(saddr, local_addrs)
        # plain_route: ordinary addresses, a source not ours, a unicast next hop that fits
        plain = (plain and tot_len <= nh_mtu[nh] and ORDINARY[saddr >> 24]
                 and ORDINARY[daddr >> 24] and not source_local)
        if reassemble_transit and fragment:
            plain = False
        if not plain and c == FORWARD:
            t = nh_type[nh]
            error_route = t == NH_NOROUTE or t == NH_UNREACHABLE or t == NH_PROHIBIT
            # route_checks, in ip_route_input_slow's order
            if fragment and reassemble_transit:  # netfilter's defrag at PRE_ROUTING
                c = REASSEMBLE
            elif (daddr >> 28) == 0xE and daddr != ALL_HOSTS:  # a group we are not in
                c = MULTICAST
            elif (saddr >> 28) == 0xE or saddr == LBCAST:
                c = MARTIAN_SOURCE
            elif daddr == LBCAST or (saddr == 0 and daddr == 0):
                c = LOCAL
            elif saddr == 0:
                c = MARTIAN_SOURCE
            elif daddr == 0:
                c = MARTIAN_DESTINATION
            elif (daddr >> 24) == 127:
                c = MARTIAN_DESTINATION
            elif (saddr >> 24) == 127:
                c = MARTIAN_SOURCE
            elif ihl > 5:
                c = OPTIONS
            elif daddr == ALL_HOSTS:  # ip_route_input_mc: ours, from a valid source
                c = MARTIAN_SOURCE if source_local else LOCAL
            elif error_route and pkt_type != PACKET_HOST:  # icmp_send answers hosts only
                c = L2_NOT_HOST
            elif t == NH_NOROUTE:
                c = NO_ROUTE
            elif t == NH_UNREACHABLE:
                c = UNREACHABLE
            elif t == NH_PROHIBIT:
                c = PROHIBIT
            elif t == NH_BLACKHOLE:
                c = BLACKHOLE
            elif source_local:
                c = MARTIAN_SOURCE
            elif t == NH_LOCAL or t == NH_BROADCAST:
                c = LOCAL

        # -- ip_forward (forward.py) ----------------------------------------------------
        out = np.int64(nh_port[nh])
        plain = plain and ttl > 1 and out != in_port
        if not plain and c == FORWARD:
            too_big = tot_len > port_mtu[out]
            redirect = False
            if send_redirects and out == in_port:  # source_on_link
                back = fib_lookup(tbl24, tbl8, saddr)
                redirect = (nh_type[back] == NH_UNICAST and (nh_flags[back] & NHF_GATEWAY) == 0
                            and np.int64(nh_port[back]) == in_port)
            # forward_checks, in ip_forward's order
            if pkt_type != PACKET_HOST:
                c = L2_NOT_HOST
            elif ttl <= 1:
                c = TTL_EXCEEDED
            elif ((port_up >> np.uint64(out)) & np.uint64(1)) == 0:
                c = PORT_DOWN
            elif too_big and (frag_off & IP_DF) != 0:
                c = FRAG_NEEDED
            elif too_big:
                c = FRAGMENT
            elif redirect:
                c = REDIRECT

        # -- neigh_output (forward.py, neigh_cache.py) ----------------------------------
        mac = np.int64(nh_mac48[nh])
        if c == FORWARD and (nh_flags[nh] & NHF_RESOLVED) == 0:
            ok = False
            if use_table:
                key = daddr  # rt_nexthop: the gateway of a gateway route
                if nh_flags[nh] & NHF_GATEWAY:
                    key = np.int64(nh_gw[nh])
                hit = False
                if use_cache:
                    stats[ST_LOOKUPS] += 1
                    home = key & c_mask
                    for o in CACHE_OFFSETS:  # home first, then the window
                        s = (home + o) & c_mask
                        if np.int64(c_addr[s]) == key and np.int64(c_port[s]) == out:
                            hit = True
                            mac = np.int64(c_mac[s])
                            break
                    ok = hit
                if not hit:
                    if use_cache:
                        stats[ST_MISSES] += 1
                    found, table_port, mac = table_lookup(key, n_seq, n_ip, n_port, n_state,
                                                          n_mac, n_bits)
                    ok = found and table_port == out
                    if ok and use_cache:
                        miss_addr[nmiss] = key
                        miss_port[nmiss] = table_port
                        miss_mac[nmiss] = mac
                        nmiss += 1
            if not ok:
                c = NEIGH_UNRESOLVED

        # -- rewrite: ip_decrease_ttl and neigh_hh_output's header copy -------------------
        if c == FORWARD:
            src = np.int64(port_mac48[out])
            for k in range(6):
                data[b, k] = (mac >> (8 * k)) & 0xFF
                data[b, 6 + k] = (src >> (8 * k)) & 0xFF
            data[b, 22] = ttl - 1
            check_le = np.int64(data[b, 24]) | (np.int64(data[b, 25]) << 8)
            check_le = (check_le + 1 + (check_le >= 0xFFFE)) & 0xFFFF  # ttl_decrement_le
            data[b, 24] = check_le & 0xFF
            data[b, 25] = check_le >> 8
            forwarded += 1
        # ip_rcv_core's pskb_trim_rcsum: the frame ends where the IP datagram ends
        length[b] = min(ln, ETH_HLEN + tot_len)
        code[i] = c
        egress[i] = out
        hist[c] += 1

    if nmiss:
        fill_cache(nmiss, miss_addr, miss_port, miss_mac, miss_key, fill_slot, fill_take,
                   c_addr, c_port, c_mac, stats)
    return forwarded


@njit(nogil=True)
def heap_sort(a: np.ndarray, n: int) -> None:
    """Sort a[:n] in place (numba's own sort allocates its stack)."""
    for start in range(n // 2 - 1, -1, -1):
        sift_down(a, start, n)
    for end in range(n - 1, 0, -1):
        a[0], a[end] = a[end], a[0]
        sift_down(a, 0, end)


@njit(inline="always")
def sift_down(a: np.ndarray, root: int, end: int) -> None:
    while 2 * root + 1 < end:
        child = 2 * root + 1
        if child + 1 < end and a[child] < a[child + 1]:
            child += 1
        if a[root] >= a[child]:
            return
        a[root], a[child] = a[child], a[root]
        root = child


@njit(nogil=True)
def fill_cache(n: int, addr: np.ndarray, port: np.ndarray, mac: np.ndarray, key: np.ndarray,
               slot: np.ndarray, take: np.ndarray, c_addr: np.ndarray, c_port: np.ndarray,
               c_mac: np.ndarray, stats: np.ndarray) -> None:
    """NeighCache.fill for the first `n` misses: each address once, in ascending order
    (the first of its misses); its slot is the first empty one of its window as the
    cache was before the fill, else its home; a slot two addresses choose goes to the
    lower address. `key`, `slot`, `take`: scratch (the kernel allocates nothing)."""
    mask = c_addr.shape[0] - 1
    for j in range(n):  # (address, position): sorted, the first miss of each address first
        key[j] = (np.uint64(addr[j]) << _U64_32) | np.uint64(j)
    heap_sort(key, n)
    m = 0
    for t in range(n):
        j = np.int64(key[t] & np.uint64(0xFFFF_FFFF))
        if m and addr[take[m - 1]] == addr[j]:
            continue
        home = addr[j] & mask
        chosen = home
        for o in CACHE_OFFSETS:
            s = (home + o) & mask
            if c_port[s] == EMPTY:
                chosen = s
                break
        slot[m] = chosen
        take[m] = j
        m += 1
    for u in range(m):
        first = True
        for v in range(u):
            if slot[v] == slot[u]:
                first = False
                break
        if first:
            j = take[u]
            c_addr[slot[u]] = addr[j]
            c_port[slot[u]] = port[j]
            c_mac[slot[u]] = mac[j]
            stats[ST_FILLS] += 1


@njit(cache=True, nogil=True)
def add_counts(hist: np.ndarray, code_to_counters: np.ndarray, row: np.ndarray) -> None:
    """`count()` from a histogram of codes: row += hist @ CODE_TO_COUNTERS."""
    for c in range(hist.shape[0]):
        if hist[c]:
            for j in range(row.shape[0]):
                row[j] += code_to_counters[c, j] * np.uint64(hist[c])


def count_histogram(hist: np.ndarray, row: np.ndarray) -> None:
    """Add a batch's code histogram (from `forward_batch`) to a counters row."""
    add_counts(hist, CODE_TO_COUNTERS, row)


@dataclass
class CompiledResult:
    code: np.ndarray  # (N,) uint8 verdict codes
    egress: np.ndarray  # (N,) uint16 egress ports, meaningful where forwarded
    forwarded: int  # how many codes are FORWARD
    hist: np.ndarray  # (NCODES,) int64: the codes' histogram


class CompiledPath:
    """`forward_batch` bound to a worker's tables (and neighbour cache)."""

    def __init__(self, tables: Tables, batch: int) -> None:
        if tables.dir24_8 is None:
            raise ValueError("the compiled datapath needs the FIB's DIR-24-8 arrays "
                             "(Tables.dir24_8: make_tables over a FibReader's lookup)")
        self.tables = tables
        self.cache: NeighCache | None = None
        table: NeighbourTable | None = None
        neigh = tables.neigh
        if isinstance(neigh, NeighCache):
            if not isinstance(neigh.table, NeighbourTable):
                raise TypeError(f"the compiled datapath reads a NeighbourTable, not "
                                f"{type(neigh.table).__name__}")
            self.cache, table = neigh, neigh.table
        elif isinstance(neigh, NeighbourTable):
            table = neigh
        elif neigh is not None:
            raise TypeError(f"the compiled datapath cannot ask a {type(neigh).__name__}")
        self.table = table
        # a live view of the shared port-up word, else a word refreshed before each batch
        up = tables.port_up
        self.port_up_word = (up.word() if isinstance(up, PortMask)
                             else np.zeros(1, dtype=np.uint64))
        self.live_port_up = isinstance(up, PortMask)
        self.stats = np.zeros(3, dtype=np.int64)
        self.hist = np.zeros(NCODES, dtype=np.int64)
        self.bind(batch)

    def bind(self, capacity: int) -> None:
        """(Re)build `kernel` for batches of up to `capacity` packets."""
        t = self.tables
        u2, u4, u8 = (np.dtype(x) for x in (np.uint16, np.uint32, np.uint64))
        one = np.zeros(1, dtype=u4)
        if self.cache is not None:
            c_arrays = (self.cache.addr, self.cache.port, self.cache.mac)
        else:
            c_arrays = (one, np.zeros(1, dtype=u2), np.zeros(1, dtype=u8))
        if self.table is not None:
            tb = self.table
            n_arrays = (tb.seq, tb.ip, tb.port, tb.state, tb.mac, np.int64(tb.bits))
        else:
            n_arrays = (np.zeros(16, dtype=u4), np.zeros(16, dtype=u4), np.zeros(16, dtype=u2),
                        np.zeros(16, dtype=np.uint8), np.zeros(16, dtype=u8), np.int64(4))
        self.capacity = capacity
        self.code = np.zeros(capacity, dtype=np.uint8)
        self.egress = np.zeros(capacity, dtype=u2)
        tbl24, tbl8 = t.dir24_8  # type: ignore[misc]
        flags = ((F_REASSEMBLE_TRANSIT if t.reassemble_transit else 0)
                 | (F_SEND_REDIRECTS if t.send_redirects else 0)
                 | (F_NEIGH_TABLE if self.table is not None else 0)
                 | (F_NEIGH_CACHE if self.cache is not None else 0))
        self.kernel = new_kernel(
            tbl24, tbl8, t.nh_type, t.nh_flags, t.nh_port, t.nh_mtu, t.nh_group, t.nh_group_n,
            t.nhg_members, t.nh_mac48, t.nh_gw if t.nh_gw is not None else one, t.port_mac48,
            t.port_mtu, self.port_up_word, np.ascontiguousarray(t.local_addrs, dtype=u4),
            np.int64(flags), *c_arrays, *n_arrays, self.code, self.egress, self.hist,
            self.stats, *(np.zeros(capacity, dtype=np.int64) for _ in range(3)),
            np.zeros(capacity, dtype=u8), *(np.zeros(capacity, dtype=np.int64) for _ in range(2)))

    def refresh(self) -> None:
        """Before a batch: the port-up word, when it is not the shared one (tests' tables)."""
        if not self.live_port_up:
            up = self.tables.port_up
            bits = np.asarray(up, dtype=np.uint64) << np.arange(len(up), dtype=np.uint64)
            self.port_up_word[0] = np.bitwise_or.reduce(bits) if len(bits) else 0

    def sync_stats(self) -> None:
        """Move the kernel's neighbour-cache statistics to the `NeighCache`."""
        stats = self.stats
        if self.cache is not None and stats[ST_LOOKUPS]:
            self.cache.lookups += int(stats[ST_LOOKUPS])
            self.cache.misses += int(stats[ST_MISSES])
            self.cache.fills += int(stats[ST_FILLS])
            stats[:] = 0

    def run(self, data: np.ndarray, length: np.ndarray, port: np.ndarray,
            idx: np.ndarray) -> CompiledResult:
        """One batch of pool buffers, rewritten in place."""
        n = len(idx)
        if n > self.capacity:
            self.bind(n)
        self.refresh()
        forwarded = forward_batch(self.kernel, data, length, port, idx)
        self.sync_stats()
        return CompiledResult(self.code[:n], self.egress[:n], forwarded, self.hist)

    def warm_up(self, data: np.ndarray, length: np.ndarray, port: np.ndarray) -> float:
        """Compile the kernel for these arrays, or load it from numba's cache, with an
        empty batch; returns the seconds it took."""
        t0 = time.perf_counter()
        self.run(data, length, port, np.zeros(0, dtype=np.uint32))
        count_histogram(np.zeros(NCODES, dtype=np.int64),
                        np.zeros(CODE_TO_COUNTERS.shape[1], dtype=np.uint64))
        return time.perf_counter() - t0
