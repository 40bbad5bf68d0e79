"""Whole datagrams: the kernel's frag_list fast path (`ip_do_fragment`) for the
fragments of a burst that make up complete datagrams on their own.

A burst often holds every fragment of a datagram (a host sending a large UDP
datagram sends its fragments back to back). When they fit together exactly and the
datagram is plainly forwarded (the route's verdict FORWARD for the reassembled
datagram: TTL, MTU to its largest fragment, a port that is up, no redirect, a next
hop with its MAC), the kernel with netfilter's defrag (`ip_defrag`) sends the
fragments again as they came, each with the datagram's header. `WholeDatagrams.take`
does that for all such datagrams of a burst at once, over arrays and in the buffers
they came in: their headers rewritten, no copy, no `Reassembler.add` per fragment.
Anything with a doubt goes one packet at a time (`Kernel.take`), which is where the
odd cases are handled.

Nothing but the cost differs (tests/test_slowpath_whole.py checks it against
`whole_bursts = False`): frames, their time, arrival number, port and order on each
ring; every counter; the reassembler's queues, memory and ip_frag_too_far counters.
For that each datagram is taken where its last fragment came (`WholeDatagrams.send`,
between the other packets, with the timers run at its time), its fragments count for
their source's too_far counter where they came (`Reassembler.saw`), and a burst that
could push reassembly memory past high_thresh, or a datagram whose key has a queue,
is left to `Kernel.take`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.counters import Slow, Snmp
from engine.pipeline.checksum import set_ip_checksum
from engine.pipeline.forward import next_hop_addr, set_ethernet
from engine.pipeline.rcv import mac48
from engine.pipeline.route import is_local, select_multipath
from engine.pipeline.verdict import PACKET_HOST, SLOW
from engine.proto import ETH_HLEN, IP_DF, IP_MF, IP_OFFSET
from engine.slowpath import reasm as R
from engine.slowpath.frag import fraglist_headers
from engine.slowpath.kernel import Kernel
from engine.slowpath.packet import Packet


@dataclass
class WholeBurst:
    """The whole datagrams of a burst (`WholeDatagrams.take`), in the order they
    completed, their fragments rewritten in place and ready to leave."""

    rest: np.ndarray  # rows of the burst taken one at a time (`Kernel.take`)
    buffers: np.ndarray  # pool buffers of the datagrams' fragments, in the order sent
    ports: np.ndarray  # the egress port of each
    bounds: list[int]  # datagram d: buffers[bounds[d] : bounds[d + 1]]
    clock: list[int]  # the worker's clock when datagram d completed
    upto: list[int]  # datagrams completed before the j-th packet taken alone
    saw: dict[int, list[tuple[bytes, int]]]  # before that packet: (source, fragments)
    ctl: bytes  # the control words they were routed under
    # what rebuilding datagram d takes (`WholeDatagrams.rebuilt`): its first fragment's
    # header as it came, each fragment's payload size (in buffers' order), and the
    # frame, time, number, largest fragment, DF and ECN of the datagram
    heads: np.ndarray
    sizes: list[int]
    in_port: list[int]
    ts: list[int]
    seq: list[int]
    largest: list[int]
    df: list[bool]
    ecn: list[int]
    # datagrams sent through an entry ARP resolved: (the entry, its MAC, port) then
    learned: dict[int, tuple[Any, bytes, int]]
    sent: int = 0  # datagrams taken so far


@dataclass
class Candidates:
    """A burst as arrays (its packets in arrival order) and the datagrams it completes
    on its own (`reasm.whole_datagrams`)."""

    idx: np.ndarray  # the burst's pool buffers
    hdr: np.ndarray  # each packet's Ethernet header and first 20 bytes of IP header
    ip: np.ndarray  # the IP part of `hdr`
    tot_len: np.ndarray
    frag_off: np.ndarray
    is_frag: np.ndarray
    stamps: np.ndarray  # capture times
    clock: np.ndarray  # the worker's clock when each packet is taken
    whole: R.Whole


@dataclass
class Kept:
    """The datagrams of `Candidates` that are plainly forwarded, in the order they
    completed: their fragments and, per datagram, what forwarding them takes."""

    kept: np.ndarray  # their numbers among the candidates' datagrams
    rows: np.ndarray  # their fragments' rows in the burst, datagram after datagram
    bounds: np.ndarray  # datagram d: rows[bounds[d] : bounds[d + 1]]
    datagram: np.ndarray  # each fragment's datagram
    head: np.ndarray  # the row of each one's first fragment
    last: np.ndarray  # the row of the fragment that completed it
    heads: np.ndarray  # its first fragment's IP header as it came (to rebuild it late)
    egress: np.ndarray
    mac: np.ndarray  # the next hop's MAC (mac48)
    in_port: np.ndarray  # the port of the fragment that completed it
    ts: np.ndarray  # the time and number of the fragment that completed it
    seq: np.ndarray
    ecn: np.ndarray  # ECN bits of the reassembly (ip_frag_ecn_table)
    learned: dict[int, tuple[Any, bytes, int]]  # as WholeBurst.learned


class WholeDatagrams:
    """The frag_list fast path of the slow path, over `kernel`'s state."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.mem = kernel.mem
        self.t = kernel.t
        self.reasm = kernel.reasm
        self.buffers = kernel.out.buffers

    def take(self, idx: np.ndarray) -> WholeBurst | None:
        """Find the datagrams a burst completes on its own and that are plainly
        forwarded; rewrite their fragments in place; None when there are none."""
        found = self._candidates(idx)
        if found is None:
            return None
        kept = self._route(found)
        if kept is None:
            return None
        buffers, ports = self._rewrite(found, kept)
        return self._burst(found, kept, buffers, ports)

    def _candidates(self, idx: np.ndarray) -> Candidates | None:
        """The burst's datagrams that `whole_datagrams` finds complete, when there are
        some and holding every fragment of the burst at once evicts nothing."""
        mem = self.mem
        reasm = self.reasm
        codes = mem.code[idx]
        for_reasm = codes == SLOW + Slow.reassemble
        if np.count_nonzero(for_reasm) < 2:
            return None
        lengths = mem.length[idx]
        stamps = mem.ts[idx]
        hdr = mem.data[idx, : ETH_HLEN + 20]
        ip = hdr[:, ETH_HLEN:]
        words = ip.view(">u2")
        tot_len = words[:, 1].astype(np.uint32)
        frag_off = words[:, 3]
        candidate = for_reasm & (ip[:, 0] == 0x45) & (lengths == ETH_HLEN + tot_len)
        clock = np.maximum.accumulate(np.maximum(stamps, self.kernel.clock))
        w = R.whole_datagrams(ip, candidate, clock, reasm.timeout_ns, reasm.max_dist)
        if not len(w):
            return None
        # memory: with every fragment of the burst held at once, no eviction
        is_frag = (frag_off & (IP_MF | IP_OFFSET)) != 0
        worst = (reasm.mem + int(tot_len[is_frag].sum())
                 + int(np.count_nonzero(is_frag)) * (R.SKB_OVERHEAD + R.IPQ_SIZE))
        if worst > reasm.high_thresh:
            return None
        return Candidates(idx=idx, hdr=hdr, ip=ip, tot_len=tot_len, frag_off=frag_off,
                          is_frag=is_frag, stamps=stamps, clock=clock, whole=w)

    def _route(self, found: Candidates) -> Kept | None:
        """The candidates that are plainly forwarded and not of a queue held from an
        earlier burst; None when there are none."""
        t = self.t
        w, ip, hdr = found.whole, found.ip, found.hdr
        head, last = w.head, w.last
        addrs = ip[head, 12:20].view(">u4")
        saddr, daddr = addrs[:, 0].astype(np.uint32), addrs[:, 1].astype(np.uint32)
        # the reassembled datagram as ip_rcv_finish routes it (its first fragment's
        # header, in the frame of the fragment that completed it) and ip_forward
        # passes it: the fast path's plain forward, with the largest fragment for the
        # MTU (ip_exceeds_mtu on frag_max_size)
        nh = select_multipath(t.lookup(daddr), saddr, daddr, t)
        in_port = self.mem.port[found.idx[last]]
        egress = t.nh_port[nh]
        host = mac48(hdr[last, :6]) == t.port_mac48[in_port]
        keep = self.kernel.routes.plain(saddr, daddr, w.largest, nh,
                                        is_local(saddr, t.local_addrs), ip[head, 8], in_port,
                                        host)
        if len(self.reasm) and np.count_nonzero(keep):
            keep &= ~self._held_keys(ip, head)
        # neigh_output: the next hop's MAC in its row (static), else ARP's entry when
        # it sends at once until the burst's last datagram is done
        mac = t.nh_mac48[nh]
        learned = {}
        unresolved = np.flatnonzero(keep & (mac == 0))
        if len(unresolved):
            learned = self._learned(unresolved, daddr, nh, egress, mac, keep,
                                    int(found.clock[last].max()))
        kept = np.flatnonzero(keep)
        if not len(kept):
            return None
        return self._kept(found, kept, egress, mac, in_port, learned)

    def _kept(self, found: Candidates, kept: np.ndarray, egress: np.ndarray, mac: np.ndarray,
              in_port: np.ndarray, learned: dict[int, tuple[Any, bytes, int]]) -> Kept:
        """Datagrams `kept` of the candidates, their fragments and what they leave with."""
        w = found.whole
        counts = np.diff(w.bounds)[kept]
        bounds = np.zeros(len(kept) + 1, dtype=np.intp)
        np.cumsum(counts, out=bounds[1:])
        head, last = w.head, w.last
        if len(kept) < len(w):
            rows = w.rows[np.repeat(w.bounds[kept], counts)
                          + (np.arange(bounds[-1]) - np.repeat(bounds[:-1], counts))]
            head, last, egress, mac = head[kept], last[kept], egress[kept], mac[kept]
        else:
            rows = w.rows
        number = {k: d for d, k in enumerate(kept.tolist())} if learned else {}
        # they leave with the time and number of the fragment that completed them
        return Kept(kept=kept, rows=rows, bounds=bounds,
                    datagram=np.repeat(np.arange(len(kept)), counts), head=head, last=last,
                    heads=found.ip[head], egress=egress, mac=mac, in_port=in_port[kept],
                    ts=found.stamps[last], seq=self.mem.seq[found.idx[last]],
                    ecn=w.ecn[kept], learned={number[k]: entry for k, entry in learned.items()})

    def _rewrite(self, found: Candidates, kept: Kept) -> tuple[np.ndarray, np.ndarray]:
        """`ip_forward` on each datagram, then the frag_list: each fragment gets the
        datagram's header (TTL - 1, ECN of the reassembly) with its own length and
        offset, the next hop's Ethernet header, its egress port, and the datagram's
        time and number, in its own buffer. Returns the buffers and their ports."""
        mem = self.mem
        rows, datagram = kept.rows, kept.datagram
        dgram = kept.heads.copy()
        dgram[:, 1] |= kept.ecn
        dgram[:, 8] -= 1  # ip_decrease_ttl; the checksum is recomputed per fragment
        out = np.empty((len(rows), ETH_HLEN + 20), dtype=np.uint8)
        out[:, ETH_HLEN:] = fraglist_headers(dgram, datagram, found.tot_len[rows],
                                             found.frag_off[rows])
        out[:, 12:14] = found.hdr[rows, 12:14]
        set_ethernet(out, kept.mac[datagram], kept.egress[datagram], self.t)
        buffers = found.idx[rows]
        mem.data[buffers, : ETH_HLEN + 20] = out
        ports = kept.egress[datagram]
        mem.port[buffers] = ports
        mem.ts[buffers] = kept.ts[datagram]
        mem.seq[buffers] = kept.seq[datagram]
        self.reasm.took_whole(len(rows), len(kept.kept))
        return buffers, ports

    def _burst(self, found: Candidates, kept: Kept, buffers: np.ndarray,
               ports: np.ndarray) -> WholeBurst:
        """The burst's whole datagrams, placed among the packets taken one at a time."""
        reasm = self.reasm
        w = found.whole
        alone = np.ones(len(found.idx), dtype=bool)
        alone[kept.rows] = False
        rest = np.flatnonzero(alone)
        before = np.searchsorted(rest, kept.last)  # packets taken alone before it completes
        upto = np.searchsorted(before, np.arange(len(rest) + 1), side="right")
        saw = {}
        if reasm.max_dist and (reasm.sources or np.count_nonzero(found.is_frag[rest])):
            saw = self._saw_where(found.ip, kept.rows, rest, found.is_frag)
        return WholeBurst(
            rest=rest, buffers=buffers, ports=ports, bounds=kept.bounds.tolist(),
            clock=found.clock[kept.last].tolist(), upto=upto.tolist(), saw=saw,
            ctl=self.mem.ctl.tobytes(), heads=kept.heads,
            sizes=(found.tot_len[kept.rows] - 20).tolist(), in_port=kept.in_port.tolist(),
            ts=kept.ts.tolist(), seq=kept.seq.tolist(), largest=w.largest[kept.kept].tolist(),
            df=w.df[kept.kept].tolist(), ecn=kept.ecn.tolist(), learned=kept.learned)

    def _learned(self, rows: np.ndarray, daddr: np.ndarray, nh: np.ndarray,
                 egress: np.ndarray, mac: np.ndarray, keep: np.ndarray,
                 until: int) -> dict[int, tuple[Any, bytes, int]]:
        """For datagrams `rows` whose next hop ARP resolves: the entry each is sent
        through (its MAC written into `mac`), or `keep` cleared when `output` would
        do more than send (the packet then goes through it)."""
        t = self.t
        targets = next_hop_addr(daddr[rows], nh[rows], t.nh_flags[nh[rows]], t).tolist()
        found: dict[tuple[int, int], Any] = {}
        learned = {}
        for k, target, port in zip(rows.tolist(), targets, egress[rows].tolist(),
                                   strict=True):
            n = found.get((target, port), False)
            if n is False:
                n = found[(target, port)] = self.kernel.neigh.sends_at_once(target, port, until)
            if n is None:
                keep[k] = False
                continue
            mac[k] = int.from_bytes(n.mac, "little")
            learned[k] = (n, n.mac, port)
        return learned

    def _held_keys(self, ip: np.ndarray, head: np.ndarray) -> np.ndarray:
        """Which datagrams (by their first fragment's header) have a reassembly queue
        held: they are not of this burst alone."""
        reasm = self.reasm
        if len(reasm) * 4 < len(head):  # few queues: each compared with every datagram
            addrs = ip[head, 12:20].view(">u8")[:, 0]
            id_proto = (ip[head, 4:6].view(">u2")[:, 0].astype(np.uint32) << 8) | ip[head, 9]
            held = np.zeros(len(head), dtype=bool)
            for src, dst, ident, proto in reasm.keys():
                held |= (addrs == int.from_bytes(src + dst, "big")) & (
                    id_proto == (ident << 8 | proto))
            return held
        src, dst = ip[head, 12:16].tobytes(), ip[head, 16:20].tobytes()
        ident = ((ip[head, 4].astype(np.uint32) << 8) | ip[head, 5]).tolist()
        proto = ip[head, 9].tolist()
        holds = reasm.holds
        return np.array([holds((src[4 * k : 4 * k + 4], dst[4 * k : 4 * k + 4], ident[k],
                                proto[k])) for k in range(len(head))], dtype=bool)

    def _saw_where(self, ip: np.ndarray, rows: np.ndarray, rest: np.ndarray,
                   is_frag: np.ndarray) -> dict[int, list[tuple[bytes, int]]]:
        """For `Reassembler.saw`: before the j-th packet taken alone, how many fragments
        taken whole came from each source (only sources that can have queues held by
        then: those with queues now, or with fragments among the packets taken alone)."""
        src = ip[rows, 12:16].view(">u4")[:, 0]
        where = np.searchsorted(rest, rows)  # fragments: before packet `where` taken alone
        alone = rest[is_frag[rest]]
        sources = set(self.reasm.source_addrs()) | set(
            ip[alone, 12:16].view(">u4")[:, 0].tolist())
        saw: dict[int, list[tuple[bytes, int]]] = {}
        for addr in sources:
            mine = src == addr
            if not np.count_nonzero(mine):
                continue
            per = np.bincount(where[mine])
            for j in np.flatnonzero(per).tolist():
                saw.setdefault(j, []).append((addr.to_bytes(4, "big"), int(per[j])))
        return saw

    def send(self, w: WholeBurst, j: int) -> None:
        """Take the whole datagrams completed before the `j`th packet taken alone (or,
        j = their number, after the last): each at its time, after the timers due."""
        k = self.kernel
        for src, n in w.saw.get(j, ()):
            self.reasm.saw(src, n)
        start, end = w.sent, w.upto[j]
        if start == end:
            return
        w.sent = end
        if self.mem.ctl.tobytes() != w.ctl:
            # the tables changed since the burst was routed: each datagram is routed
            # now, as the one `Reassembler.add` would have made
            for d in range(start, end):
                k.advance(w.clock[d])
                k.ip_rcv_finish(self.rebuilt(w, d))
                self.buffers.free(w.buffers[w.bounds[d] : w.bounds[d + 1]])
            return
        if not w.learned and w.clock[end - 1] < k.next_timer():
            # no timer falls due before the last of them (the common case): together
            k.count(Snmp.FragOKs, end - start)
            k.count(Snmp.FragCreates, w.bounds[end] - w.bounds[start])
            k.clock = max(k.clock, w.clock[end - 1])
            k.neigh.tick(k.clock)
            k.out.transmit_whole(w, start, end)
            return
        for d in range(start, end):  # each after the timers due by its time
            k.advance(w.clock[d])
            entry = w.learned.get(d)
            if entry is not None:
                n, mac, port = entry
                if not k.neigh.unchanged(n, mac, port):  # ARP moved it: `output` decides
                    k.ip_rcv_finish(self.rebuilt(w, d))
                    self.buffers.free(w.buffers[w.bounds[d] : w.bounds[d + 1]])
                    continue
                n.seq = w.seq[d]  # as `output` marks the entry with what it sent last
            k.count(Snmp.FragOKs)
            k.count(Snmp.FragCreates, w.bounds[d + 1] - w.bounds[d])
            k.out.transmit_whole(w, d, d + 1)

    def rebuilt(self, w: WholeBurst, d: int) -> Packet:
        """Whole datagram d as `Reassembler._reasm` makes it (`ip_defrag`'s result)."""
        hdr = bytearray(w.heads[d].tobytes())
        start, end = w.bounds[d], w.bounds[d + 1]
        total = 20 + sum(w.sizes[start:end])
        hdr[1] |= w.ecn[d]
        hdr[2:4] = total.to_bytes(2, "big")
        hdr[6:8] = (IP_DF if w.df[d] else 0).to_bytes(2, "big")
        set_ip_checksum(hdr)
        data = self.mem.data
        payloads = [data[b, ETH_HLEN + 20 : ETH_HLEN + 20 + size].tobytes()
                    for b, size in zip(w.buffers[start:end].tolist(), w.sizes[start:end],
                                       strict=True)]
        return Packet(bytes(hdr) + b"".join(payloads), w.in_port[d], PACKET_HOST, w.ts[d], w.seq[d],
                      frag_max=w.largest[d], frag_sizes=w.sizes[start:end], frag_df=w.df[d])

