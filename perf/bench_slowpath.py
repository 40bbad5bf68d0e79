"""Slow path alone: fragments reassembled and created per second on one core, in memory.

    .venv/bin/python perf/bench_slowpath.py [--seconds S] [--runs N] [--cpu C] [--json FILE]

Reassembly (`Reassembler.add`, one call per fragment as the slow-path worker makes
them), for 1,500-byte fragments of:
- `3-frag`: 4,000-byte datagrams (3 fragments), in order;
- `9k`: 9,000-byte datagrams (7 fragments), in order, reversed, and 64 datagrams in
  flight with their fragments shuffled together;
- `64k`: 65,535-byte datagrams (45 fragments), in order.
Fragmentation (`fragment()`, fragments created per second) of 4,000-, 9,000- and
65,535-byte datagrams to MTU 1,500, and of a 9,000-byte one with 12 bytes of options.

Each figure is the median of `--runs` runs of about `--seconds` each. The issue's goal
is 200,000 fragments/s reassembled on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.pipeline.checksum import ip_checksum  # noqa: E402
from engine.pipeline.frag import fragment  # noqa: E402
from engine.pipeline.options import compile_options, forward_options  # noqa: E402
from engine.pipeline.reasm import COMPLETE, Reassembler  # noqa: E402

MTU = 1500
GOAL = 200_000


def udp_datagram(total: int, ident: int, options: bytes = b"") -> bytes:
    """An IPv4/UDP datagram of `total` bytes (struct-level; the tests check the same
    layout against scapy)."""
    ihl = 20 + len(options)
    hdr = bytearray(ihl)
    hdr[0] = 0x40 | (ihl >> 2)
    hdr[2:4] = total.to_bytes(2, "big")
    hdr[4:6] = ident.to_bytes(2, "big")
    hdr[8] = 63
    hdr[9] = 17
    hdr[12:16] = bytes([10, 0, 1, 2])
    hdr[16:20] = bytes([10, 0, 2, 2])
    hdr[20:] = options
    hdr[10:12] = ip_checksum(hdr).to_bytes(2, "big")
    n = total - ihl
    udp = (1234).to_bytes(2, "big") + (5678).to_bytes(2, "big") + n.to_bytes(2, "big") + b"\0\0"
    body = bytes((i * 7) & 0xFF for i in range(n - 8))
    return bytes(hdr) + udp + body


def fragment_stream(total: int, ndatagrams: int, order: str, rng: random.Random) -> list[bytes]:
    """The fragments of `ndatagrams` datagrams with distinct IDs, in `order`."""
    per = [fragment(udp_datagram(total, ident), MTU) for ident in range(ndatagrams)]
    if order == "in-order":
        return [f for frags in per for f in frags]
    if order == "reversed":
        return [f for frags in per for f in reversed(frags)]
    if order.startswith("shuffled"):
        window = int(order.split("-")[1])  # datagrams in flight at once
        out: list[bytes] = []
        for i in range(0, ndatagrams, window):
            group = [f for frags in per[i : i + window] for f in frags]
            rng.shuffle(group)
            out += group
        return out
    raise ValueError(order)


def timed(fn: Callable[[], int], seconds: float) -> float:
    """Items per second: call fn (which returns items done) until `seconds` pass."""
    done = 0
    start = time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def bench_reasm(stream: list[bytes], expect: int, seconds: float) -> float:
    # The kernel's default thresholds. max_dist off: a replayed stream reuses IDs and
    # the shuffled case interleaves 64 datagrams from one source (more than
    # ipfrag_max_dist allows), and the check's cost is measured by the others anyway.
    r = Reassembler(4 << 20, 3 << 20, 30 * 10**9, max_dist=0)
    add = r.add

    def one_pass() -> int:
        completed = 0
        for i, f in enumerate(stream):
            if add(f, i, i).status == COMPLETE:
                completed += 1
        if completed != expect or r.held:
            raise SystemExit(f"reassembly went wrong: {completed} of {expect} completed")
        return len(stream)

    return timed(one_pass, seconds)


def bench_reasm_checked(stream: list[bytes], expect: int, seconds: float) -> float:
    """The same with ipfrag_max_dist at the kernel's 64 (in-order streams only)."""
    r = Reassembler(4 << 20, 3 << 20, 30 * 10**9)
    add = r.add

    def one_pass() -> int:
        completed = sum(add(f, i, i).status == COMPLETE for i, f in enumerate(stream))
        if completed != expect:
            raise SystemExit(f"reassembly went wrong: {completed} of {expect} completed")
        return len(stream)

    return timed(one_pass, seconds)


def bench_frag(pkts: list[bytes], seconds: float) -> float:
    def one_pass() -> int:
        n = 0
        for p in pkts:
            n += len(fragment(p, MTU))
        return n

    return timed(one_pass, seconds)


def option_cases() -> list[tuple[str, bytes]]:
    """Record route with room for 9 addresses, timestamps with addresses, router alert."""
    rr = bytes([7, 39, 4]) + bytes(36) + b"\x00"
    ts = bytes([68, 36, 5, 1]) + bytes(32)
    ra = bytes([148, 4, 0, 0])
    return [("record route (compile+forward)", rr), ("timestamp+addr (compile+forward)", ts),
            ("router alert (compile+forward)", ra)]


def bench_options(pkt: bytes, seconds: float) -> float:
    """`ip_options_compile` + `ip_forward_options` per packet, as the slow path runs them
    for a transit packet with options."""
    ihl = (pkt[0] & 0xF) * 4
    header = pkt[:ihl]
    egress = 0x0A000201

    def one() -> int:
        for _ in range(64):
            opts = compile_options(header, is_local=False, accept_source_route=False,
                                   spec_dst=0x0A000101, now_ms=1000)
            forward_options(opts.header, opts, egress)
        return 64

    return timed(one, seconds)


def median(fn: Callable[[], float], runs: int) -> float:
    return statistics.median(fn() for _ in range(runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    ap.add_argument("--runs", type=int, default=5, help="repeats; the median is reported")
    ap.add_argument("--cpu", type=int, help="pin to this CPU")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    rng = random.Random(1)

    reasm_cases = [
        ("3-frag in-order", 4000, 256, "in-order"),
        ("9k in-order", 9000, 256, "in-order"),
        ("9k reversed", 9000, 256, "reversed"),
        ("9k 64-in-flight shuffled", 9000, 256, "shuffled-64"),
        ("64k in-order", 65535, 32, "in-order"),
    ]
    results: dict[str, dict] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds": args.seconds,
        "runs": args.runs,
        "reassembly_fragments_per_s": {},
        "fragmentation_fragments_per_s": {},
    }
    print(f"{'reassembly (1,500-byte fragments)':<36} {'frags/s':>10} {'datagrams/s':>12}")
    for name, total, ndg, order in reasm_cases:
        stream = fragment_stream(total, ndg, order, rng)
        per = len(stream) / ndg
        rate = median(lambda s=stream, n=ndg: bench_reasm(s, n, args.seconds), args.runs)
        results["reassembly_fragments_per_s"][name] = rate
        flag = "" if rate >= GOAL else "  < goal"
        print(f"{name:<36} {rate:>10,.0f} {rate / per:>12,.0f}{flag}")
        if order == "in-order":
            name += " (max_dist 64)"
            rate = median(
                lambda s=stream, n=ndg: bench_reasm_checked(s, n, args.seconds), args.runs
            )
            results["reassembly_fragments_per_s"][name] = rate
            flag = "" if rate >= GOAL else "  < goal"
            print(f"{name:<36} {rate:>10,.0f} {rate / per:>12,.0f}{flag}")

    opts = bytes([0x94, 4, 0, 0]) + bytes([0x07, 7, 4]) + bytes(4) + b"\x01"  # RA, RR, NOP
    frag_cases = [
        ("4,000 bytes -> 3", [udp_datagram(4000, i) for i in range(64)]),
        ("9,000 bytes -> 7", [udp_datagram(9000, i) for i in range(64)]),
        ("65,535 bytes -> 45", [udp_datagram(65535, i) for i in range(8)]),
        ("9,000 bytes + options -> 7", [udp_datagram(9000, i, opts) for i in range(64)]),
    ]
    print(f"\n{'fragment() to MTU 1,500':<36} {'frags/s':>10} {'datagrams/s':>12}")
    for name, pkts in frag_cases:
        per = len(fragment(pkts[0], MTU))
        rate = median(lambda p=pkts: bench_frag(p, args.seconds), args.runs)
        results["fragmentation_fragments_per_s"][name] = rate
        print(f"{name:<36} {rate:>10,.0f} {rate / per:>12,.0f}")
    print(f"\n{'IP options, one packet at a time':<36} {'packets/s':>10}")
    results["options_packets_per_s"] = {}
    for name, opt_bytes in option_cases():
        pkt = udp_datagram(64, 1, opt_bytes)
        rate = median(lambda p=pkt: bench_options(p, args.seconds), args.runs)
        results["options_packets_per_s"][name] = rate
        print(f"{name:<36} {rate:>10,.0f}")
    print(f"\ngoal: >= {GOAL:,} fragments/s reassembled on one core")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
