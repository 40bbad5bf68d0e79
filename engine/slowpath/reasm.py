"""IPv4 reassembly for the slow path, with the kernel's semantics, over bytes.

Follows net/ipv4/ip_fragment.c (`ip_defrag`, `ip_frag_queue`, `ip_frag_reasm`,
`ip_expire`, `ip_frag_too_far`/`ip_frag_reinit`) and net/ipv4/inet_fragment.c
(`inet_frag_find`, `inet_frag_queue_insert`, memory accounting). One call per
fragment; no I/O, no clock of its own: the caller passes `now_ns` (pcap time in
replays; it must not go backwards) and calls `expire(now_ns)` to run the timers.
Results are read-only: the common "queued" answer is one shared object.

Queue rules, as `ip_frag_queue` applies them, in the same order:
- queues are keyed by (src, dst, id, protocol) (the kernel adds `user` and `vif`);
- a fragment without MF fixes the datagram's end; a different end, or data seen
  beyond it, drops the whole queue ("conflicting_end"); a fragment with MF has its
  length cut to a multiple of 8 (`end &= ~7`), and an empty result drops the queue
  ("bad_fragment", the kernel's `end == offset` check);
- insertion works on "runs" of adjacent fragments (`inet_frag_queue_insert`): a
  fragment lying wholly inside one run is a duplicate, dropped alone and harmless
  (RFC 5722 errata 3089, KERNEL-NOTES); any other overlap drops the whole queue
  (RFC 5722 applied to IPv4, in Linux since 4.19/2018) and counts ReasmOverlaps;
- when `max_dist` or more fragments from the same source came between two fragments
  of one queue, the queue is emptied and its timer restarted before the new fragment
  goes in (`ip_frag_too_far`/`ip_frag_reinit`, sysctl ipfrag_max_dist, default 64;
  0 disables);
- complete when the first (offset 0) and last fragments are in and the bytes held
  equal the length; then an invalid ECN mix (`ip_frag_ecn_table`) or a datagram over
  65,535 bytes fails the queue ("ecn", "too_big"), as in `ip_frag_reasm`.

The reassembled datagram is the first fragment's header (options included) with
tot_len set, ECN CE or'ed into TOS when a fragment carried it, the fragment field 0,
or DF when the largest fragment had DF (the kernel then also marks the datagram
IPSKB_FRAG_PMTU, so its slow-path refragmenting keeps DF: `Result.df`), checksum
recomputed. `Result.largest` is the largest fragment received
(IPCB(skb)->frag_max_size): with netfilter defrag the kernel refragments every
reassembled datagram it forwards to no more than that, and to the egress MTU, and
where the original fragments still fit it sends them as they came (`Result.sizes`,
`fragment(..., geometry=...)`).

Memory. Like `fqdir->mem`, every queued fragment is charged a truesize and every
queue its descriptor. Truesize here is `tot_len + SKB_OVERHEAD`, where 576 bytes is
what SKB_TRUESIZE() adds on x86-64 (sizeof(struct sk_buff) and
sizeof(struct skb_shared_info), cache-aligned: 256 + 320); a queue costs
IPQ_SIZE = 192 (about sizeof(struct ipq), charged as `f->qsize` by
`inet_frag_alloc`). Real drivers often charge a whole page or 2 KiB buffer per
frame; the fixed overhead keeps the numbers deterministic and close to the kernel's
for copied-in fragments.

Eviction. DESIGN.md asks for the old kernel's evictor: when memory goes over
high_thresh, drop least-recently-used queues until it is at most low_thresh
(`inet_frag_evictor`, LRU of queues moved to the tail on every fragment). Today's
kernel no longer evicts: since 4.17 `inet_frag_find` refuses every new fragment
while `fqdir->mem > high_thresh` (ReasmFails, fragment dropped) and low_thresh is
unused; queues then leave only by completion, error or timeout. Here eviction runs
after the fragment is queued, so memory is never above high_thresh when `add`
returns (the kernel's check-before-add can overshoot by one fragment); the queue that
just grew is the most recently used, so it is evicted last.

High-water mark. `mem_high` is the most `mem` ever held between two calls (the
level `fwd stats` shows as memory_high): it is taken where `add` returns with the
fragment held, the only outcome that leaves more memory than the call found, after
eviction, so it never exceeds high_thresh (the fragment's own charge, above the
threshold for the instant before `_evict`, is not a level anything else sees). One
compare per held fragment; nothing on the other paths.

Accounting: every fragment given to `add` ends in exactly one place: still held
(`held`), part of a completed datagram (`reassembled`), or dropped under a reason
(`drops[reason]`, counted in fragments). `ReasmReqds == held + reassembled +
sum(drops.values())` always; `consistent()` also re-adds `mem` from the queues.
ReasmFails counts, as the kernel does, once per queue that fails (overlap,
conflicting end, bad fragment, too big, ECN, timeout, eviction, too_far reinit,
flush) and once per fragment refused outright (malformed); duplicates are not
failures.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections import OrderedDict
from operator import itemgetter
from typing import Any

import numpy as np

from engine.pipeline.checksum import ip_checksum
from engine.proto import IP_DF, IP_MF, IP_OFFSET

SKB_OVERHEAD = 576  # SKB_TRUESIZE(0) on x86-64: see module docstring
IPQ_SIZE = 192  # per-queue charge (sizeof(struct ipq), roughly)
IP_MAX_LEN = 65535

QUEUED = "queued"
COMPLETE = "complete"
DROPPED = "dropped"

# Drop reasons (fragments are counted per reason in Reassembler.drops).
MALFORMED = "malformed"  # not an IPv4 fragment at all (never reaches ip_defrag in the kernel)
BAD_FRAGMENT = "bad_fragment"  # empty after trimming (end == offset)
CONFLICTING_END = "conflicting_end"
OVERLAP = "overlap"
DUPLICATE = "duplicate"
TOO_BIG = "too_big"
ECN = "ecn"
MEM_LIMIT = "mem_limit"
TOO_FAR = "too_far"
TIMEOUT = "timeout"
FLUSH = "flush"
REASONS = (
    MALFORMED,
    BAD_FRAGMENT,
    CONFLICTING_END,
    OVERLAP,
    DUPLICATE,
    TOO_BIG,
    ECN,
    MEM_LIMIT,
    TOO_FAR,
    TIMEOUT,
    FLUSH,
)

# RFC 3168 §5.3 via the kernel's ip_frag_ecn_table: index = OR of 1 << (tos & 3)
# over all fragments (bit 0 Not-ECT, 1 ECT(1), 2 ECT(0), 3 CE); value = bits to OR
# into the reassembled TOS, or 0xFF to drop (Not-ECT mixed with ECN-capable).
_NOT_ECT, _ECT_1, _ECT_0, _CE = 1, 2, 4, 8
_ECN_TABLE = [0] * 16
for _i in range(16):  # slow path: a table built once, at import
    if _i & _NOT_ECT and _i & (_CE | _ECT_0 | _ECT_1):
        _ECN_TABLE[_i] = 0xFF
    elif _i & _CE and _i & (_ECT_0 | _ECT_1):
        _ECN_TABLE[_i] = 3
del _i

_HDR = struct.Struct("!BBHHHBBH4s4s")
_FIRST = itemgetter(0)

Key = tuple[bytes, bytes, int, int]  # (src, dst, id, protocol)


class Dropped:
    """A queue (or its earlier fragments) that left without completing.

    `reason` is one of REASONS; `nfrags` fragments were freed; `metas` are their
    `meta` values in arrival order. `first` is the first fragment (offset 0) as held
    (its header and payload, trimmed as queued) when it had arrived, else None: for a
    timeout the caller answers ICMP time exceeded, code 1, quoting it (`ip_expire`
    sends only when the first fragment is there).
    """

    __slots__ = ("reason", "key", "nfrags", "metas", "first")

    def __init__(
        self, reason: str, key: Key, nfrags: int, metas: list, first: bytes | None
    ) -> None:
        self.reason = reason
        self.key = key
        self.nfrags = nfrags
        self.metas = metas
        self.first = first

    @property
    def first_in(self) -> bool:
        return self.first is not None

    def __repr__(self) -> str:
        return (
            f"Dropped({self.reason}, key={self.key!r}, nfrags={self.nfrags}, "
            f"first_in={self.first_in})"
        )


Expired = Dropped  # what `expire` returns: Dropped records with reason "timeout"


class Result:
    """What became of one fragment given to `Reassembler.add`.

    - status QUEUED: held, waiting for the rest.
    - status COMPLETE: `datagram` is the reassembled packet; `metas` are the metas
      of its `nfrags` fragments in offset order; `largest` is the largest fragment
      received (bytes, header included); `df` says the datagram got DF (refragment
      with `fragment(..., keep_df=True)`); `sizes` are the payload sizes of its
      fragments in offset order (`fragment(..., geometry=sizes)` sends them again
      as they came, the kernel's frag_list fast path).
    - status DROPPED: `reason` says why; `nfrags` fragments were freed because of
      this one (just it for a duplicate, the whole queue plus it otherwise), `metas`
      theirs (this fragment's last).
    `side` lists other fragments freed during the call, each a Dropped: other queues
    evicted for memory, this queue's own earlier fragments emptied by `too_far`, or
    this queue expired before the fragment arrived (reason "timeout", ICMP due).
    """

    __slots__ = (
        "status",
        "reason",
        "datagram",
        "metas",
        "nfrags",
        "largest",
        "df",
        "sizes",
        "side",
    )

    def __init__(
        self,
        status: str,
        reason: str | None = None,
        datagram: bytes | None = None,
        metas: list | None = None,
        nfrags: int = 0,
        largest: int = 0,
        df: bool = False,
        sizes: list[int] | None = None,
        side: list[Dropped] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.datagram = datagram
        self.metas = metas if metas is not None else []
        self.nfrags = nfrags
        self.largest = largest
        self.df = df
        self.sizes = sizes if sizes is not None else []
        self.side = side if side is not None else []

    def __repr__(self) -> str:
        extra = f", reason={self.reason}" if self.reason else ""
        if self.datagram is not None:
            extra += f", {len(self.datagram)} bytes"
        return f"Result({self.status}{extra}, nfrags={self.nfrags}, side={self.side!r})"


# Shared answer for the common case (queued, nothing else freed): no allocation.
_QUEUED = Result(QUEUED)


class _Queue:
    """One datagram being reassembled (`struct ipq`)."""

    __slots__ = (
        "key",
        "start_ns",  # timer start: creation, or the last too_far reinit
        "frags",  # [(offset, payload memoryview, meta, truesize)] in arrival order
        "run_starts",  # runs of adjacent fragments (inet_frag_queue_insert), sorted
        "run_ends",
        "tail_end",  # end of the highest fragment (fragments_tail), -1 when empty
        "head",  # first fragment as held (offset 0), or None
        "last_in",
        "length",  # q.len: datagram payload end as known so far
        "meat",  # payload bytes held
        "truesize",  # memory charged for the fragments held
        "max_size",
        "max_df_size",
        "ecn",
        "peer",  # [rid, queues] of the source, for ip_frag_too_far
        "rid",
    )

    def __init__(self, key: Key, now_ns: int, peer: list[int]) -> None:
        self.key = key
        self.start_ns = now_ns
        self.peer = peer
        self.rid = 0
        self.max_size = 0
        self.max_df_size = 0
        # as clear(), inlined: one queue per datagram makes this a hot path
        self.frags: list[tuple[int, memoryview, Any, int]] = []
        self.run_starts: list[int] = []
        self.run_ends: list[int] = []
        self.tail_end = -1
        self.head: memoryview | None = None
        self.last_in = False
        self.length = 0
        self.meat = 0
        self.truesize = 0
        self.ecn = 0

    def clear(self) -> None:
        self.frags = []
        self.run_starts = []
        self.run_ends = []
        self.tail_end = -1
        self.head: memoryview | None = None
        self.last_in = False
        self.length = 0
        self.meat = 0
        self.truesize = 0
        self.ecn = 0


class Reassembler:
    """IPv4 reassembly with bounded memory (see the module docstring).

    `high_thresh`/`low_thresh` bound `mem` in bytes (eviction from high down to low);
    `timeout_ns` is the reassembly timeout (`ipfrag_time`), counted from a queue's
    first fragment and not extended by later ones (RFC 791's advice to extend it is
    what the kernel declines to follow). `max_dist` is ipfrag_max_dist.
    """

    def __init__(
        self, high_thresh: int, low_thresh: int, timeout_ns: int, *, max_dist: int = 64
    ) -> None:
        if not 0 <= low_thresh <= high_thresh:
            raise ValueError("need 0 <= low_thresh <= high_thresh")
        if timeout_ns <= 0 or max_dist < 0:
            raise ValueError("timeout_ns must be > 0 and max_dist >= 0")
        self.high_thresh = high_thresh
        self.low_thresh = low_thresh
        self.timeout_ns = timeout_ns
        self.max_dist = max_dist
        # Queues in timer order (creation/reinit), for expire(); and in LRU order
        # (moved to the end on every fragment), for eviction.
        self._queues: dict[Key, _Queue] = {}
        self._lru: OrderedDict[Key, _Queue] = OrderedDict()
        self._peers: dict[bytes, list[int]] = {}
        self.mem = 0
        self.mem_high = 0  # the most `mem` held between calls (see the module docstring)
        self.held = 0  # fragments queued now
        self.reassembled = 0  # fragments that went into completed datagrams
        self.drops: dict[str, int] = dict.fromkeys(REASONS, 0)
        # /proc/net/snmp Ip: (and ReasmOverlaps from /proc/net/netstat IpExt:)
        self.reasm_reqds = 0
        self.reasm_oks = 0
        self.reasm_fails = 0
        self.reasm_timeout = 0
        self.reasm_overlaps = 0

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._queues)

    def counters(self) -> dict[str, int]:
        """The SNMP-style counters, by their /proc names."""
        return {
            "ReasmReqds": self.reasm_reqds,
            "ReasmOKs": self.reasm_oks,
            "ReasmFails": self.reasm_fails,
            "ReasmTimeout": self.reasm_timeout,
            "ReasmOverlaps": self.reasm_overlaps,
        }

    def consistent(self) -> bool:
        """Every fragment accounted for once, and `mem`/`held` match the queues."""
        held = sum(len(q.frags) for q in self._queues.values())
        mem = sum(q.truesize + IPQ_SIZE for q in self._queues.values())
        truesize_ok = all(q.truesize == sum(f[3] for f in q.frags) for q in self._queues.values())
        return (
            held == self.held
            and mem == self.mem
            and truesize_ok
            and self._queues.keys() == self._lru.keys()
            and sum(p[1] for p in self._peers.values()) == len(self._queues)
            and self.reasm_reqds == self.held + self.reassembled + sum(self.drops.values())
            and self.mem <= self.mem_high <= self.high_thresh
        )

    # -- the fragment path -----------------------------------------------------

    def add(
        self, ip_packet: bytes | bytearray | memoryview, now_ns: int, meta: Any = None
    ) -> Result:
        """Queue one fragment (`ip_defrag`). `ip_packet` starts at the IP header and
        has passed `ip_rcv`'s checks; bytes past tot_len are ignored. A bytes object
        is kept by reference; anything mutable is copied."""
        self.reasm_reqds += 1
        pkt = ip_packet if type(ip_packet) is bytes else bytes(ip_packet)
        try:
            ver_ihl, tos, tot_len, ident, frag_off, _, proto, _, src, dst = _HDR.unpack_from(pkt)
        except struct.error:
            return self._refuse(MALFORMED, meta)
        ihl = (ver_ihl & 0x0F) << 2
        if (
            ver_ihl >> 4 != 4
            or ihl < 20
            or tot_len < ihl
            or tot_len > len(pkt)
            or not frag_off & (IP_MF | IP_OFFSET)
        ):
            return self._refuse(MALFORMED, meta)

        key = (src, dst, ident, proto)
        side: list[Dropped] | None = None
        q = self._queues.get(key)
        if q is not None and now_ns - q.start_ns >= self.timeout_ns:
            # Its timer is due: ip_expire would have run before this fragment came.
            side = [self._expire_queue(q)]
            q = None
        if q is None:
            peer = self._peers.get(src)
            if peer is None:
                peer = self._peers[src] = [0, 0]
            peer[1] += 1
            q = _Queue(key, now_ns, peer)
            self._queues[key] = q
            self._lru[key] = q
            self.mem += IPQ_SIZE
        else:
            self._lru.move_to_end(key)

        if self.max_dist:
            # ip_frag_too_far: fragments from this source since this queue's last one.
            peer = q.peer
            peer[0] += 1
            start, q.rid = q.rid, peer[0]
            if q.frags and peer[0] - start > self.max_dist:
                self.reasm_fails += 1
                side = side or []
                side.append(self._reinit(q, now_ns))

        offset = (frag_off & IP_OFFSET) << 3
        end = offset + tot_len - ihl
        if not frag_off & IP_MF:
            # The last fragment: nothing may lie beyond it, and it may not move.
            if end < q.length or (q.last_in and end != q.length):
                return self._discard(q, CONFLICTING_END, meta, side)
            q.last_in = True
            q.length = end
        else:
            end &= ~7
            if end > q.length:
                if q.last_in:
                    return self._discard(q, CONFLICTING_END, meta, side)
                q.length = end
        if end == offset:
            return self._discard(q, BAD_FRAGMENT, meta, side)

        # inet_frag_queue_insert: append at the tail (the common, in-order case) or
        # find its place among the runs.
        tail_end = q.tail_end
        if tail_end < 0:
            q.run_starts.append(offset)
            q.run_ends.append(end)
            q.tail_end = end
        elif tail_end < end:
            if offset < tail_end:
                self.reasm_overlaps += 1
                return self._discard(q, OVERLAP, meta, side)
            if offset == tail_end:
                q.run_ends[-1] = end
            else:
                q.run_starts.append(offset)
                q.run_ends.append(end)
            q.tail_end = end
        else:
            starts = q.run_starts
            ends = q.run_ends
            i = bisect_right(starts, offset) - 1
            if i >= 0 and ends[i] > offset:
                if end <= ends[i]:
                    # Inside a run of data already held: a duplicate, harmless.
                    self.drops[DUPLICATE] += 1
                    return Result(DROPPED, DUPLICATE, metas=[meta], nfrags=1, side=side)
                self.reasm_overlaps += 1
                return self._discard(q, OVERLAP, meta, side)
            if i + 1 < len(starts) and starts[i + 1] < end:
                self.reasm_overlaps += 1
                return self._discard(q, OVERLAP, meta, side)
            starts.insert(i + 1, offset)
            ends.insert(i + 1, end)

        size = end - offset
        data = memoryview(pkt)
        if offset == 0:
            q.head = data[: ihl + size]
        truesize = tot_len + SKB_OVERHEAD
        q.frags.append((offset, data[ihl : ihl + size], meta, truesize))
        q.meat += size
        q.ecn |= 1 << (tos & 3)
        q.truesize += truesize
        self.mem += truesize
        self.held += 1
        fragsize = size + ihl
        if fragsize > q.max_size:
            q.max_size = fragsize
        if frag_off & IP_DF and fragsize > q.max_df_size:
            q.max_df_size = fragsize

        if q.last_in and q.meat == q.length and q.head is not None:
            return self._reasm(q, side)

        if self.mem > self.high_thresh:
            evicted = self._evict()
            if key not in self._queues:  # its own queue went too (the newest: last)
                own = evicted.pop()
                side = (side or []) + evicted
                return Result(DROPPED, MEM_LIMIT, metas=own.metas, nfrags=own.nfrags, side=side)
            side = (side or []) + evicted
        if self.mem > self.mem_high:  # held: the only way out that leaves more memory
            self.mem_high = self.mem
        if side:
            return Result(QUEUED, side=side)
        return _QUEUED

    def _reasm(self, q: _Queue, side: list[Dropped] | None) -> Result:
        """`ip_frag_reasm`: glue the queue into one datagram."""
        ecn = _ECN_TABLE[q.ecn]
        if ecn == 0xFF:
            return self._fail_complete(q, ECN, side)
        head = q.head
        assert head is not None
        ihl = (head[0] & 0x0F) << 2
        total = ihl + q.length
        if total > IP_MAX_LEN:
            return self._fail_complete(q, TOO_BIG, side)
        frags = q.frags
        frags.sort(key=_FIRST)
        df = q.max_df_size == q.max_size
        hdr = bytearray(head[:ihl])
        hdr[1] |= ecn
        hdr[2] = total >> 8
        hdr[3] = total & 0xFF
        hdr[6] = 0x40 if df else 0  # IP_DF >> 8, offset 0, no MF
        hdr[7] = 0
        hdr[10] = hdr[11] = 0
        check = ip_checksum(hdr)
        hdr[10] = check >> 8
        hdr[11] = check & 0xFF
        _, payloads, metas, _ = zip(*frags, strict=True)
        datagram = b"".join((hdr, *payloads))
        n = len(frags)
        self._unlink(q)
        self.held -= n
        self.reassembled += n
        self.reasm_oks += 1
        return Result(
            COMPLETE, None, datagram, list(metas), n, q.max_size, df, list(map(len, payloads)), side
        )

    # -- datagrams a burst completed on its own (`whole_datagrams`) -------------

    def holds(self, key: Key) -> bool:
        """A queue for `key` is held."""
        return key in self._queues

    def keys(self) -> list[Key]:
        """The keys of the queues held."""
        return list(self._queues)

    @property
    def sources(self) -> int:
        """Sources with queues held (their ip_frag_too_far counters are live)."""
        return len(self._peers)

    def next_timer(self) -> int | float:
        """When `expire` next has something to do (the clock's value; inf: never)."""
        for q in self._queues.values():  # the oldest timer first
            return q.start_ns + self.timeout_ns
        return float("inf")

    def source_addrs(self) -> list[int]:
        """The sources with queues held, as integers."""
        return [int.from_bytes(src, "big") for src in self._peers]

    def held_head(self, key: Key) -> tuple[bytes, int] | None:
        """The first fragment (header and what follows, as held) of `key`'s queue and
        the largest fragment received so far; None without a queue or a first one."""
        q = self._queues.get(key)
        if q is None or q.head is None:
            return None
        return bytes(q.head), q.max_size

    def saw(self, src: bytes, n: int) -> None:
        """`n` fragments from `src` went by without `add` (whole datagrams of a
        burst): they still count for `ip_frag_too_far` in its queues held here (the
        kernel's inet_peer counts every fragment of the source)."""
        peer = self._peers.get(src)
        if peer is not None:
            peer[0] += n

    def took_whole(self, nfrags: int, ndatagrams: int) -> None:
        """Count `ndatagrams` datagrams of `nfrags` fragments that a burst completed
        on its own, as `add` would have counted them one fragment at a time."""
        self.reasm_reqds += nfrags
        self.reassembled += nfrags
        self.reasm_oks += ndatagrams

    # -- leaving without completing -------------------------------------------

    def _refuse(self, reason: str, meta: Any) -> Result:
        self.reasm_fails += 1
        self.drops[reason] += 1
        return Result(DROPPED, reason, metas=[meta], nfrags=1)

    def _kill(self, q: _Queue, reason: str) -> Dropped:
        """Unlink a queue and free its fragments under `reason` (`inet_frag_kill`)."""
        self._unlink(q)
        n = len(q.frags)
        self.held -= n
        self.drops[reason] += n
        self.reasm_fails += 1
        first = bytes(q.head) if q.head is not None else None
        return Dropped(reason, q.key, n, [f[2] for f in q.frags], first)

    def _discard(self, q: _Queue, reason: str, meta: Any, side: list[Dropped] | None) -> Result:
        """`discard_qp`: the fragment and its whole queue are dropped."""
        gone = self._kill(q, reason)
        self.drops[reason] += 1
        gone.metas.append(meta)
        return Result(DROPPED, reason, metas=gone.metas, nfrags=gone.nfrags + 1, side=side or [])

    def _fail_complete(self, q: _Queue, reason: str, side: list[Dropped] | None) -> Result:
        gone = self._kill(q, reason)
        return Result(DROPPED, reason, metas=gone.metas, nfrags=gone.nfrags, side=side or [])

    def _unlink(self, q: _Queue) -> None:
        del self._queues[q.key]
        del self._lru[q.key]
        self.mem -= q.truesize + IPQ_SIZE
        peer = q.peer
        peer[1] -= 1
        if not peer[1]:
            # Only differences of a source's counter matter, and only to its live
            # queues: with none left it can go (the kernel's inet_peer ages out).
            del self._peers[q.key[0]]

    def _reinit(self, q: _Queue, now_ns: int) -> Dropped:
        """`ip_frag_reinit`: drop what the queue holds, keep the queue, restart its timer."""
        n = len(q.frags)
        gone = Dropped(TOO_FAR, q.key, n, [f[2] for f in q.frags], None)
        self.mem -= q.truesize
        self.held -= n
        self.drops[TOO_FAR] += n
        q.clear()
        q.start_ns = now_ns
        del self._queues[q.key]
        self._queues[q.key] = q  # timer order: it is now the newest
        return gone

    def _expire_queue(self, q: _Queue) -> Dropped:
        self.reasm_timeout += 1
        return self._kill(q, TIMEOUT)

    def _evict(self) -> list[Dropped]:
        """Drop least recently used queues until mem <= low_thresh."""
        out = []
        lru = self._lru
        while self.mem > self.low_thresh and lru:
            q = next(iter(lru.values()))
            out.append(self._kill(q, MEM_LIMIT))
        return out

    def expire(self, now_ns: int) -> list[Dropped]:
        """Time out every queue whose timer is due (`ip_expire`). Each Dropped has
        reason "timeout"; when `first_in`, the caller sends ICMP time exceeded code 1
        about `first` (the kernel with netfilter defrag does so only for datagrams
        to the router itself: `frag_expire_skip_icmp`)."""
        out = []
        queues = self._queues
        timeout = self.timeout_ns
        while queues:
            q = next(iter(queues.values()))
            if now_ns - q.start_ns < timeout:
                break
            out.append(self._expire_queue(q))
        return out

    def flush(self) -> list[Dropped]:
        """Drop every queue (end of a replay): reason "flush", counted in ReasmFails
        and drops, never as a timeout."""
        return [self._kill(q, FLUSH) for q in list(self._queues.values())]


# -- a burst at a time -------------------------------------------------------------
#
# The slow-path worker takes fragments a burst at a time. A datagram whose fragments
# all came in one burst, that fit together exactly (no overlap, no duplicate, no hole,
# no trimming) and that nothing else in the reassembler would have seen, completes the
# same way whatever the order of its fragments: `whole_datagrams` finds those over
# arrays, so that the worker can forward them as the kernel's frag_list fast path does
# (the fragments sent as they came, with the datagram's header) without one
# `Reassembler.add` per fragment. Everything else (and every datagram with a doubt)
# goes through `add` as before, which keeps the kernel's semantics for the odd cases.


class Whole:
    """Datagrams complete within one burst (see `whole_datagrams`), in the order they
    completed. Rows are row numbers of the burst (its arrival order)."""

    __slots__ = ("rows", "bounds", "head", "last", "first", "largest", "df", "ecn",
                 "length")

    def __init__(self, rows: np.ndarray, bounds: np.ndarray, head: np.ndarray,
                 last: np.ndarray, first: np.ndarray, largest: np.ndarray, df: np.ndarray,
                 ecn: np.ndarray, length: np.ndarray) -> None:
        self.rows = rows  # every fragment, datagram after datagram, each in offset order
        self.bounds = bounds  # datagram d: rows[bounds[d] : bounds[d + 1]]
        self.head = head  # per datagram: the row of its first fragment (offset 0)
        self.last = last  # the row of the fragment that completed it (the latest)
        self.first = first  # the row of its earliest fragment (its queue's creation)
        self.largest = largest  # the largest fragment, header included (frag_max_size)
        self.df = df  # DF on the reassembled datagram (as `Result.df`)
        self.ecn = ecn  # bits to OR into its TOS (ip_frag_ecn_table)
        self.length = length  # its payload length

    def __len__(self) -> int:
        return len(self.head)


_ECN_ARRAY = np.array(_ECN_TABLE, dtype=np.uint8)
_ECN_BIT = np.array([1, 2, 4, 8], dtype=np.uint8)  # 1 << (tos & 3)
_NO_ROWS = np.zeros(0, dtype=np.intp)


def _empty() -> Whole:
    z = _NO_ROWS
    return Whole(z, np.zeros(1, np.intp), z, z, z, np.zeros(0, np.uint32), np.zeros(0, bool),
                 np.zeros(0, np.uint8), np.zeros(0, np.uint32))


def whole_datagrams(ip: np.ndarray, candidate: np.ndarray, clock: np.ndarray,
                    timeout_ns: int, max_dist: int) -> Whole:
    """The datagrams a burst completes on its own, as `Reassembler.add` would complete
    them one fragment at a time, from the burst's IPv4 headers alone.

    `ip`: (N, 20) uint8, the first 20 bytes of each packet's IP header (any packet:
    rows that are not fragments are ignored). `candidate`: the rows that may be taken
    (a fragment for reassembly, IHL 5, its frame trimmed to tot_len: the caller's
    word). `clock`: the worker's clock when each row is taken (nondecreasing).
    A datagram is whole when every fragment of its key (src, dst, id, protocol) in
    the burst is a candidate and together they are exactly one datagram: offsets
    from 0 each where the previous one ends, MF on all but the last, every payload
    non-empty and, with MF, a multiple of 8 (nothing for `add` to trim); and when
    `add` would not have stopped it: 65,535 bytes at most, a valid ECN mix, its
    last fragment within `timeout_ns` of its first (on `clock`), and its first and
    last fragments no more than `max_dist` fragments of its source apart (counted
    over every fragment row, any key): `ip_frag_too_far` allows that many between
    two of its own, and a datagram spread wider is left to `add` (0: no limit).

    What is left to the caller, who knows the reassembler: that no queue for the key
    exists yet, memory (no eviction may fall within the burst), and the source's
    `ip_frag_too_far` counter for queues it holds (`Reassembler.saw`).
    """
    words = ip.view(">u2")  # (N, 10) big-endian header words
    rows = (words[:, 3] & (IP_MF | IP_OFFSET)).nonzero()[0]
    if len(rows) < 2 or not np.count_nonzero(candidate[rows]):
        return _empty()
    hdr = ip[rows]  # the fragments' headers, in arrival order
    hw = hdr.view(">u2")
    addrs = hdr[:, 12:20].view(">u8")[:, 0]  # source << 32 | destination
    id_proto = (hw[:, 2].astype(np.uint32) << 8) | hdr[:, 9]
    fo = hw[:, 3]
    offset = (fo & IP_OFFSET).astype(np.uint32) << 3
    # by key, then offset, then arrival
    order = np.lexsort((rows, offset, id_proto, addrs))
    s_addrs, s_id_proto = addrs[order], id_proto[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (s_addrs[1:] != s_addrs[:-1]) | (s_id_proto[1:] != s_id_proto[:-1])
    starts = new.nonzero()[0]
    s_rows, s_off, s_fo, s_hdr = rows[order], offset[order], fo[order], hdr[order]
    tot_len = hw[order, 1].astype(np.uint32)
    size = tot_len - ((s_hdr[:, 0] & 0x0F).astype(np.uint32) << 2)  # wraps if tot_len < ihl
    mf = (s_fo & IP_MF) != 0
    # a fragment is wrong for a whole datagram where it is not a candidate, carries
    # nothing, would be trimmed, or does not start where the previous one ended
    bad = ~candidate[s_rows] | (size == 0) | (size > 65535) | (mf & ((size & 7) != 0))
    bad[1:] |= ~new[1:] & (s_off[1:] != s_off[:-1] + size[:-1])
    bad[starts] |= s_off[starts] != 0  # a datagram starts at offset 0
    last_of_group = np.empty_like(new)
    last_of_group[:-1] = new[1:]
    last_of_group[-1] = True
    bad |= mf == last_of_group  # MF on all but the last
    bad_group = np.logical_or.reduceat(bad, starts)
    length = np.add.reduceat(size, starts)
    ecn = _ECN_ARRAY[np.bitwise_or.reduceat(_ECN_BIT[s_hdr[:, 1] & 3], starts)]
    last = np.maximum.reduceat(s_rows, starts)
    first = np.minimum.reduceat(s_rows, starts)
    bad_group |= ((length > IP_MAX_LEN - 20) | (ecn == 0xFF)
                  | (clock[last] - clock[first] >= timeout_ns))
    if max_dist:
        # ip_frag_too_far: at most max_dist fragments of the source between two of the
        # datagram's; enough here that its first and last are no further apart
        # (conservative: a datagram spread wider goes through `add`)
        src = addrs >> np.uint64(32)
        if src.min() == src.max():  # one source: a row's number is its position
            s_rank = order
        else:
            by_src = np.lexsort((rows, src))
            src_start = np.ones(len(rows), dtype=bool)
            src_start[1:] = src[by_src][1:] != src[by_src][:-1]
            pos = np.arange(len(rows))
            rank = np.empty(len(rows), dtype=np.intp)
            rank[by_src] = pos - np.maximum.accumulate(np.where(src_start, pos, 0))
            s_rank = rank[order]
        span = np.maximum.reduceat(s_rank, starts) - np.minimum.reduceat(s_rank, starts)
        bad_group |= span > max_dist
    good = (~bad_group).nonzero()[0]
    if not len(good):
        return _empty()
    largest = np.maximum.reduceat(tot_len, starts)
    df_size = np.maximum.reduceat(np.where(s_fo & IP_DF, tot_len, 0), starts)
    # the datagrams in the order they completed, each one's fragments in offset order
    good = good[np.argsort(last[good], kind="stable")]
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = len(order)
    counts = (ends - starts)[good]
    bounds = np.zeros(len(good) + 1, dtype=np.intp)
    np.cumsum(counts, out=bounds[1:])
    taken = np.repeat(starts[good] - bounds[:-1], counts) + np.arange(bounds[-1])
    return Whole(
        rows=s_rows[taken],
        bounds=bounds,
        head=s_rows[starts[good]],
        last=last[good],
        first=first[good],
        largest=largest[good],
        df=df_size[good] == largest[good],
        ecn=ecn[good],
        length=length[good],
    )
