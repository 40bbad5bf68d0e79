"""ICMP on the slow path, with the semantics of the kernel's net/ipv4/icmp.c.

Pure functions and small stateful classes, called once per packet by the slow-path
worker (no I/O, the caller's clock):

- `may_send_error`: the checks of `__icmp_send` and RFC 1812 §4.3.2.7 that decide
  whether an ICMP error may be sent about a packet at all;
- `select_source`, `icmp_error_source`: the source address of an ICMP error
  (`__icmp_send` with `icmp_errors_use_inbound_ifaddr = 0`, `inet_select_addr`);
- `build_error`, `build_echo_reply`: the IP packets (`__icmp_send`/`icmp_reply` and
  `icmp_push_reply`), checksums included;
- `IcmpRateLimiter`: `icmp_global_allow` + `icmpv4_xrlim_allow` (and the two other
  users of the same per-peer state: `ip_error` and `ip_rt_send_redirect`);
- `IpIdGenerator`: `__ip_select_ident`/`ip_idents_reserve`, the IP IDs of packets
  the router originates.

Addresses are ints in host byte order; packets are bytes starting at the IP header.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from engine.pipeline.checksum import inet_checksum, ip_checksum
from engine.proto import IP_OFFSET, IPHDR_LEN, IPPROTO_ICMP

# ICMP types and codes (include/uapi/linux/icmp.h)
ICMP_ECHOREPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_REDIRECT = 5
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETERPROB = 12
NR_ICMP_TYPES = 18

ICMP_NET_UNREACH = 0
ICMP_HOST_UNREACH = 1
ICMP_PROT_UNREACH = 2
ICMP_PORT_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_SR_FAILED = 5
ICMP_PKT_FILTERED = 13  # "communication administratively prohibited" (prohibit routes)
ICMP_EXC_TTL = 0
ICMP_EXC_FRAGTIME = 1
ICMP_REDIR_NET = 0
ICMP_REDIR_HOST = 1

# `icmp_pointers[].error`: the types the kernel classes as errors. Besides the RFC 792
# errors (3, 4, 5, 11, 12) it counts the unassigned 1, 2, 6, 7 and router
# advertisement/solicitation (9, 10); any type above NR_ICMP_TYPES is treated as an
# error too ("Assume any unknown ICMP type is an error").
ICMP_ERROR_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12})

IPTOS_TOS_MASK = 0x1E  # RT_TOS()
IPTOS_PREC_INTERNETCONTROL = 0xC0
ICMP_TTL = 64  # sysctl ip_default_ttl: the ICMP socket has no TTL of its own
ICMP_MAX_LEN = 576  # RFC 1812 §4.3.2.3: "as much as possible without exceeding 576"
ICMP_HDR_LEN = 8
INADDR_DUMMY = 0xC0000008  # 192.0.0.8 (RFC 7600), when no source address can be found
KERNEL_NOTES_MIN_ICMP_LEN = 8  # see may_send_error
BUCKET_CACHE = 4096  # IpIdGenerator: (daddr, saddr, protocol) whose ID bucket is kept


def _u32(buf: bytes, off: int) -> int:
    return int.from_bytes(buf[off : off + 4], "big")


def is_martian_source(addr: int) -> bool:
    """`ip_route_input_slow`'s martian sources: multicast, limited broadcast, 0.0.0.0
    and loopback. 0.0.0.0/8 other than 0.0.0.0 is ordinary unicast since Linux 5.3,
    and a subnet's broadcast address is a valid source (KERNEL-NOTES.md)."""
    top = addr >> 24
    return addr == 0 or addr == 0xFFFFFFFF or top == 127 or 224 <= top <= 239


def is_multicast_or_lbcast(addr: int) -> bool:
    return addr == 0xFFFFFFFF or 224 <= addr >> 24 <= 239


def may_send_error(ip_packet: bytes, pkt_type_host: bool, *, dst_broadcast: bool = False,
                   icmp_type: int = ICMP_DEST_UNREACH,
                   min_icmp_len: int = KERNEL_NOTES_MIN_ICMP_LEN) -> bool:
    """May an ICMP error of `icmp_type` be sent about `ip_packet`? (`__icmp_send`)

    ip_packet: the offending packet from its IP header on (trimmed to `tot_len`).
    pkt_type_host: its frame was addressed to our MAC (PACKET_HOST); RFC 1122
        3.2.2: never answer a link-layer broadcast or multicast.
    dst_broadcast: its destination is one of our subnets' broadcast addresses (the
        route has RTCF_BROADCAST); limited broadcast and multicast are seen here.

    No error about: a non-PACKET_HOST frame, a broadcast/multicast destination, a
    non-first fragment, a martian source (RFC 1812 §4.3.2.7: not a unique host),
    and, when the message is itself an error, an ICMP error or an ICMP type the
    kernel does not know (> 18), or an ICMP message shorter than `min_icmp_len`.

    min_icmp_len: KERNEL-NOTES.md says 6.18 sends nothing about an ICMP header
        shorter than 8 bytes, and that is the default, as the notes are to be
        followed. But the kernel's source (`__icmp_send`) only needs the inner type
        byte, and a 6.18.44 router in network namespaces did answer a TTL-1 echo
        request of 1, 4 and 7 ICMP bytes with a time exceeded, and a 4-byte one
        with no route with a net unreachable (nothing for 0 bytes): pass 1 for that.
    """
    if len(ip_packet) < IPHDR_LEN or not pkt_type_host:
        return False
    saddr = _u32(ip_packet, 12)
    daddr = _u32(ip_packet, 16)
    if dst_broadcast or is_multicast_or_lbcast(daddr):
        return False
    if int.from_bytes(ip_packet[6:8], "big") & IP_OFFSET:
        return False  # RFC 1122 3.2.2: only the first fragment
    if is_martian_source(saddr):
        return False
    if icmp_type in ICMP_ERROR_TYPES and ip_packet[9] == IPPROTO_ICMP:
        ihl = (ip_packet[0] & 0xF) * 4
        tot_len = int.from_bytes(ip_packet[2:4], "big")
        payload = ip_packet[ihl : max(ihl, min(tot_len, len(ip_packet)))]
        if len(payload) < max(1, min_icmp_len):
            return False
        inner = payload[0]
        if inner > NR_ICMP_TYPES or inner in ICMP_ERROR_TYPES:
            return False  # never an error about an error (RFC 1122 3.2.2)
    return True


def _primary_addresses(addrs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The port's primary addresses in order: `__inet_insert_ifa` marks an address
    secondary when an earlier one has the same prefix length and subnet."""
    primaries: list[tuple[int, int]] = []
    for addr, plen in addrs:
        mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        if any(p == plen and (a ^ addr) & mask == 0 for a, p in primaries):
            continue
        primaries.append((addr, plen))
    return primaries


def select_source(egress_addrs: Sequence[tuple[int, int]], target: int, *,
                  other_addrs: Sequence[int] = ()) -> int:
    """`inet_select_addr(dev, target, RT_SCOPE_UNIVERSE)`: the address the kernel takes
    as the source of a packet leaving by a port (the route's preferred source).

    egress_addrs: the egress port's (address, prefix length), in config order.
    target: the route's gateway for a gateway route; the destination for a directly
        connected subnet (whose route's prefsrc is that subnet's primary address);
        0 for an on-link route without a gateway (the first primary address).
    other_addrs: every address of the router, ports in order, used when the egress
        port has none (the kernel then takes the first usable address of any device).

    Returns the first primary address whose subnet holds `target`, else the port's
    first primary address; 0 if the router has no address at all.
    """
    first = 0
    for addr, plen in _primary_addresses(egress_addrs):
        mask = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        if target == 0 or (target ^ addr) & mask == 0:
            return addr
        if not first:
            first = addr
    if first:
        return first
    return other_addrs[0] if other_addrs else 0


def icmp_error_source(orig_ip: bytes, *, orig_is_local: bool,
                      egress_addrs: Sequence[tuple[int, int]], target: int,
                      other_addrs: Sequence[int] = ()) -> int:
    """Source address of an ICMP error about `orig_ip` (`__icmp_send`, with the
    default `icmp_errors_use_inbound_ifaddr = 0`).

    A packet that was for the router itself (its input route is RTCF_LOCAL: UDP to a
    closed port, reassembly timeout) is answered from the address it was sent to.
    Otherwise the source is left to the output route of the ICMP message: the
    preferred source of the route back to the ICMP's destination, i.e. an address of
    the port the error leaves by (`select_source` with that route's egress port and
    target), falling back to INADDR_DUMMY when there is none.
    """
    if orig_is_local:
        return _u32(orig_ip, 16)
    return select_source(egress_addrs, target, other_addrs=other_addrs) or INADDR_DUMMY


def _ip_header(tos: int, total_len: int, ip_id: int, frag: int, ttl: int, src: int,
               dst: int, options: bytes) -> bytes:
    ihl = (IPHDR_LEN + len(options)) // 4
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x40 | ihl, tos, total_len, ip_id & 0xFFFF,
                                frag, ttl, IPPROTO_ICMP, 0, src, dst))
    hdr += options
    hdr[10:12] = ip_checksum(hdr).to_bytes(2, "big")
    return bytes(hdr)


def build_error(orig_ip: bytes, icmp_type: int, icmp_code: int, info: int, src: int,
                dst: int, ip_id: int, echoed_options: bytes = b"", *,
                mtu: int = ICMP_MAX_LEN) -> bytes | None:
    """The IP packet of an ICMP error about `orig_ip` (`__icmp_send` + `icmp_push_reply`).

    orig_ip: the offending packet from its IP header on, as the kernel holds it when
        it decides (options compiled, trimmed to `tot_len`); quoted from its first
        byte, as much as fits in the room left.
    info: the second word: the MTU for fragmentation needed (its low 16 bits), the
        gateway for a redirect, the byte offset for a parameter problem (put in the
        top byte, as `htonl(pp_ptr << 24)`), 0 otherwise.
    src, dst: see `icmp_error_source`; dst is the original source, or the first hop
        of the reversed source route (`EchoedOptions.daddr`).
    ip_id: from `IpIdGenerator` (the ICMP socket sends without DF, so the ID is hashed).
    echoed_options: `EchoedOptions.build(src, now_ms)`, or b"".
    mtu: the MTU of the route to `dst`: the quote is cut to min(mtu, 576) bytes.

    TTL 64, no DF, TOS `0xc0 | (orig_tos & 0x1e)` (RFC 1812 §4.3.2.5 precedence 6,
    the kernel's `RT_TOS(tos) | IPTOS_PREC_INTERNETCONTROL`). None when the route's
    MTU leaves no room for even the original IP header (the kernel sends nothing).
    """
    if icmp_type == ICMP_PARAMETERPROB:
        word = (info & 0xFF) << 24
    else:
        word = info & 0xFFFFFFFF
    room = min(mtu, ICMP_MAX_LEN) - IPHDR_LEN - len(echoed_options) - ICMP_HDR_LEN
    if room <= IPHDR_LEN:
        return None
    quote = bytes(orig_ip[:room])
    icmp = bytearray(struct.pack("!BBHI", icmp_type, icmp_code, 0, word)) + quote
    icmp[2:4] = inet_checksum(bytes(icmp)).to_bytes(2, "big")
    tos = IPTOS_PREC_INTERNETCONTROL | (orig_ip[1] & IPTOS_TOS_MASK)
    total = IPHDR_LEN + len(echoed_options) + len(icmp)
    return _ip_header(tos, total, ip_id, 0, ICMP_TTL, src, dst, echoed_options) + bytes(icmp)


def is_echo_request(ip_packet: bytes) -> bool:
    """An ICMP echo request whose ICMP header is whole and whose ICMP checksum verifies
    (`icmp_rcv`: `skb_checksum_simple_validate`, `pskb_pull` of the header), from its
    first byte to `tot_len`. Call it on the reassembled datagram."""
    ihl = (ip_packet[0] & 0xF) * 4
    tot_len = int.from_bytes(ip_packet[2:4], "big")
    icmp = bytes(ip_packet[ihl:tot_len])
    return (ip_packet[9] == IPPROTO_ICMP and len(icmp) >= ICMP_HDR_LEN
            and icmp[0] == ICMP_ECHO and inet_checksum(icmp) == 0)


def build_echo_reply(request_ip: bytes, src: int, ip_id: int, echoed_options: bytes = b"",
                     *, dst: int | None = None) -> bytes:
    """The echo reply to `request_ip` (`icmp_echo` + `icmp_reply`), a whole datagram
    (the caller fragments it at the egress MTU, as `ip_append_data` would).

    src: the address the request was sent to (`fib_compute_spec_dst`: for a unicast
        request to the router, its destination).
    dst: the first hop of the reversed source route (`EchoedOptions.daddr`) if the
        request had one; by default the request's source.

    The ICMP header is the request's with the type set to 0 (code, identifier and
    sequence kept), followed by all the request's data. TTL 64 (ip_default_ttl),
    TOS copied from the request (`ipc.tos = ip_hdr(skb)->tos`), no DF (the ICMP
    socket has `IP_PMTUDISC_DONT`), so the ID is hashed like any ID of ours. Unlike a
    TCP RST from `ip_send_unicast_reply` (DF, ID 0), an echo reply carries a real ID.
    """
    ihl = (request_ip[0] & 0xF) * 4
    tot_len = int.from_bytes(request_ip[2:4], "big")
    icmp = bytearray(request_ip[ihl:tot_len])
    icmp[0] = ICMP_ECHOREPLY
    icmp[2:4] = b"\0\0"
    icmp[2:4] = inet_checksum(bytes(icmp)).to_bytes(2, "big")
    if dst is None:
        dst = _u32(request_ip, 12)
    total = IPHDR_LEN + len(echoed_options) + len(icmp)
    return _ip_header(request_ip[1], total, ip_id, 0, ICMP_TTL, src, dst,
                      echoed_options) + bytes(icmp)


@dataclass
class _Peer:
    """The fields of `struct inet_peer` these limiters share, keyed by address."""

    rate_tokens: int
    rate_last: int
    n_redirects: int = 0
    used: int = 0  # last access, for pruning


class IcmpRateLimiter:
    """ICMP rate limits as the kernel applies them, on the caller's clock (ns).

    `allow(dst, type, code, now_ns)` is what `__icmp_send` and `icmp_reply` check:

    1. Only types in `icmp_ratemask` (default 0x1818: destination unreachable,
       source quench, time exceeded, parameter problem) are limited, and never
       fragmentation needed (it would break PMTU discovery). Echo replies, redirects
       and anything else pass (`icmpv4_mask_allow`).
    2. The global bucket (`icmp_global_allow`, sysctls `icmp_msgs_per_sec` = 1000 and
       `icmp_msgs_burst` = 50 on Linux 6.18): refilled at most every HZ/50, it allows
       while it holds credit; a message that goes out then takes 0, 1 or 2 credits
       at random (`icmp_global_consume`, seeded here for determinism).
    3. The per-destination bucket (`inet_peer_xrlim_allow`): `ratelimit_ms` tokens per
       message, refilled one per ms, holding at most 6 messages' worth
       (XRLIM_BURST_FACTOR). A new destination starts full. `ratelimit_ms` = 0 turns
       this one off, as the sysctl does; the global bucket still applies, as in the
       kernel (`global_limit=False` turns that off too).

    The kernel keeps one `inet_peer` per address and two other limiters use its
    fields, so they live here as well, on the same per-address state:
    `allow_route_error` (`ip_error`, before it sends a net/host unreachable or a
    prohibited: cost 1 s, burst 5 s, `net.ipv4.route.error_cost/burst`) and
    `allow_redirect` (`ip_rt_send_redirect`: at most 9 redirects with exponential
    backoff from 20 ms, then silence until no redirect was due for 20.48 s).

    Time is counted in jiffies of `hz` per second (default 1000, i.e. ms; Debian's
    kernels tick at 250 Hz, which only moves events within 4 ms of a threshold).
    """

    XRLIM_BURST_FACTOR = 6
    PEER_MAX = 65536 + 128  # inet_peer_threshold: prune beyond this many peers
    PEER_IDLE_S = 120  # inet_peer_minttl: a peer idle this long may go

    def __init__(self, ratelimit_ms: int = 1000, *, ratemask: int = 0x1818,
                 msgs_per_sec: int = 1000, msgs_burst: int = 50, global_limit: bool = True,
                 seed: int = 0, hz: int = 1000,
                 error_cost_ms: int = 1000, error_burst_ms: int = 5000,
                 redirect_number: int = 9) -> None:
        self.hz = hz
        self.timeout = self._jiffies_of_ms(ratelimit_ms)
        self.ratemask = ratemask
        self.msgs_per_sec = msgs_per_sec
        self.msgs_burst = msgs_burst
        self.global_limit = global_limit
        self.error_cost = self._jiffies_of_ms(error_cost_ms)
        self.error_burst = self._jiffies_of_ms(error_burst_ms)
        self.redirect_number = redirect_number
        self.redirect_load = hz // 50
        self.redirect_silence = (hz // 50) << (redirect_number + 1)
        self._rng = random.Random(seed)
        self._credit = 0
        self._stamp: int | None = None  # never refilled: the first refill fills it
        self._peers: dict[int, _Peer] = {}

    def _jiffies_of_ms(self, ms: int) -> int:
        """`msecs_to_jiffies` (rounds up)."""
        return -(-ms * self.hz // 1000)

    def _now(self, now_ns: int) -> int:
        return now_ns * self.hz // 1_000_000_000

    def _peer(self, addr: int, now: int) -> _Peer:
        peer = self._peers.get(addr)
        if peer is None:
            if len(self._peers) >= self.PEER_MAX:
                self._prune(now)
            # inet_getpeer: "60*HZ is arbitrary, but chosen enough high so that the
            # first calculation of tokens is at its maximum".
            peer = _Peer(rate_tokens=0, rate_last=now - 60 * self.hz)
            self._peers[addr] = peer
        peer.used = now
        return peer

    def _prune(self, now: int) -> None:
        idle = self.PEER_IDLE_S * self.hz
        for addr in [a for a, p in self._peers.items() if now - p.used >= idle]:
            del self._peers[addr]

    def is_limited(self, icmp_type: int, code: int) -> bool:
        """`!icmpv4_mask_allow`: is this type subject to the rate limits?"""
        if icmp_type > NR_ICMP_TYPES:
            return False
        if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED:
            return False
        return bool((1 << icmp_type) & self.ratemask)

    def _global_allow(self, now: int) -> bool:
        """`icmp_global_allow`."""
        if self._credit > 0:
            return True
        delta = self.hz if self._stamp is None else min(now - self._stamp, self.hz)
        if delta < self.hz // 50:
            return False
        incr = self.msgs_per_sec * delta // self.hz
        if not incr:
            return False
        self._stamp = now
        self._credit = min(self._credit + incr, self.msgs_burst)
        return True

    def _xrlim_allow(self, peer: _Peer, now: int) -> bool:
        """`inet_peer_xrlim_allow` (the 6.x form: no refill, no cap when no time passed)."""
        token = peer.rate_tokens
        delta = now - peer.rate_last
        if delta:
            peer.rate_last = now
            token = min(token + delta, self.XRLIM_BURST_FACTOR * self.timeout)
        ok = token >= self.timeout
        if ok:
            token -= self.timeout
        peer.rate_tokens = token
        return ok

    def allow(self, dst: int, icmp_type: int, code: int, now_ns: int) -> bool:
        """May an ICMP message of this type go to `dst` now? Counts it if so."""
        if not self.is_limited(icmp_type, code):
            return True
        now = self._now(now_ns)
        if self.global_limit and not self._global_allow(now):
            return False  # ICMP_MIB_RATELIMITGLOBAL
        if self.timeout:
            if not self._xrlim_allow(self._peer(dst, now), now):
                return False  # ICMP_MIB_RATELIMITHOST
        if self.global_limit:
            self._credit -= self._rng.randrange(3)  # may go negative, as in the kernel
        return True

    def allow_route_error(self, src: int, now_ns: int) -> bool:
        """`ip_error`'s own limit before an unreachable/prohibited for a packet from
        `src` (then `allow` applies as well, on the same peer)."""
        now = self._now(now_ns)
        peer = self._peer(src, now)
        peer.rate_tokens = min(peer.rate_tokens + now - peer.rate_last, self.error_burst)
        peer.rate_last = now
        if peer.rate_tokens >= self.error_cost:
            peer.rate_tokens -= self.error_cost
            return True
        return False

    def allow_redirect(self, src: int, now_ns: int) -> bool:
        """`ip_rt_send_redirect`: may a redirect go to `src` now? Counts it if so."""
        now = self._now(now_ns)
        peer = self._peer(src, now)
        if now - peer.rate_last > self.redirect_silence:
            # No redirected packets for a while: the host may have forgotten.
            peer.rate_tokens = 0
            peer.n_redirects = 0
        if peer.n_redirects >= self.redirect_number:
            peer.rate_last = now  # too many ignored: silence, timed from the last one
            return False
        if peer.n_redirects == 0 or now - (peer.rate_last +
                                           (self.redirect_load << peer.n_redirects)) > 0:
            peer.rate_last = now
            peer.n_redirects += 1
            return True
        return False


class IpIdGenerator:
    """IP IDs of packets the router originates, as `__ip_select_ident` makes them.

    The kernel hashes (daddr, saddr, protocol) with a secret key (siphash) into a
    table of 2^k counters (`ip_idents`, random at boot); each bucket remembers the
    jiffy it was last used, and when time has passed the counter first jumps ahead
    by a random amount below the elapsed jiffies (`ip_idents_reserve`), so an
    observer cannot count another flow's packets. Here the key, the counters and the
    jumps come from `seed` (keyed BLAKE2 stands in for siphash): deterministic for a
    seed, per destination, and not a global counter from 0.
    """

    def __init__(self, seed: int = 0, *, table_bits: int = 11, hz: int = 1000) -> None:
        self.hz = hz
        self.mask = (1 << table_bits) - 1
        rng = random.Random(seed)
        self._key = rng.getrandbits(128).to_bytes(16, "big")
        self._rng = rng
        self._seed_ids = rng.getrandbits(32)
        self._idents: dict[int, int] = {}
        self._stamps: dict[int, int] = {}
        # (daddr, saddr, protocol) -> bucket: the keyed hash is a pure function of its
        # key, and a router answers few peers many times (bounded: cleared when full)
        self._buckets: dict[tuple[int, int, int], int] = {}

    def _bucket_start(self, bucket: int) -> int:
        # `get_random_bytes(ip_idents, ...)` at boot, derived from the seed per bucket.
        digest = hashlib.blake2b(bucket.to_bytes(4, "big"), digest_size=4,
                                 key=self._key, person=b"ip_idents").digest()
        return int.from_bytes(digest, "big") ^ self._seed_ids

    def next_id(self, daddr: int, saddr: int, protocol: int, now_ns: int, segs: int = 1) -> int:
        """Reserve `segs` IDs for a packet (daddr, saddr, protocol) and return the first."""
        key = (daddr, saddr, protocol)
        bucket = self._buckets.get(key)
        if bucket is None:
            data = struct.pack("!IIB", daddr & 0xFFFFFFFF, saddr & 0xFFFFFFFF, protocol & 0xFF)
            h = int.from_bytes(hashlib.blake2b(data, digest_size=4, key=self._key).digest(),
                               "big")
            bucket = h & self.mask
            if len(self._buckets) >= BUCKET_CACHE:
                self._buckets.clear()
            self._buckets[key] = bucket
        now = (now_ns * self.hz // 1_000_000_000) & 0xFFFFFFFF
        ident = self._idents.get(bucket)
        if ident is None:
            ident = self._bucket_start(bucket)
        old = self._stamps.get(bucket, 0)
        delta = 0
        if old != now:
            self._stamps[bucket] = now
            delta = self._rng.randrange((now - old) & 0xFFFFFFFF)
        ident = (ident + segs + delta) & 0xFFFFFFFF
        self._idents[bucket] = ident
        return (ident - segs) & 0xFFFF
