"""FIB benchmark (issue 3): a realistic ~1M-prefix table, its build time and memory,
lookups/s per core at batch 1024 (uniform over the address space, uniform over the
table, Zipf-skewed), update rates while a reader process looks up (one add/delete call
per change, and `FibWriter.apply` batches of `--update-batch`), and pytricia (a C
Patricia trie) on the same lookups as the peer when it is installed.

    .venv/bin/python perf/bench_fib.py [--prefixes 1000000] [--repeat 5] [--impl jit,numpy]
                                       [--update-batch 256] [--json FILE]

Every rate is the median of `--repeat` runs, printed with its spread ((max - min) /
median): on a shared machine a best-of-N hides how noisy the runs were, a median
with its spread does not. Each implementation of the FIB (`--impl`: the compiled
kernels, numpy) is measured in the same run, their runs interleaved so that other
work on the machine slows both alike; the JSON's top-level figures are the first
one's, `by_impl` has each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

import numpy as np

from engine.shm.fib import IMPLS, FibReader, FibWriter

# Length mix of today's public IPv4 table (order of magnitude of the CIDR report /
# potaroo counts, ~1M prefixes): most are /24, then /22, /23, /21, /20, /19, /18, /16,
# a long thin tail of short ones, and a few longer than /24 (usually filtered upstream).
LENGTH_MIX = {
    8: 16, 9: 13, 10: 37, 11: 107, 12: 300, 13: 600, 14: 1_100, 15: 1_900, 16: 13_600,
    17: 8_300, 18: 13_700, 19: 24_500, 20: 43_000, 21: 53_000, 22: 118_000, 23: 100_000,
    24: 590_000, 25: 600, 26: 500, 27: 400, 28: 400, 29: 500, 30: 300, 31: 50, 32: 800,
}  # fmt: skip
LENGTHS = list(LENGTH_MIX)


def realistic_table(n: int = 1_000_000, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """~n unique (prefix, len, nh) with the public table's length mix.  Prefixes lie in
    1.0.0.0-223.255.255.255; like real deaggregation, 40 % of each length's prefixes
    nest inside an already generated shorter prefix, and most longer-than-/24 ones sit
    under an existing /24.  Next hops: 1..512."""
    rng = np.random.default_rng(seed)
    total = sum(LENGTH_MIX.values())
    ps, ls = [], []
    placed = np.empty(0, dtype=np.uint64)  # prefixes so far, with their lengths below
    placed_len = np.empty(0, dtype=np.uint64)
    for length, count in LENGTH_MIX.items():
        k = max(1, round(count * n / total))
        addr = rng.integers(1 << 24, 224 << 24, size=k, dtype=np.uint64)
        nest = rng.random(k) < (0.9 if length > 24 else 0.4)
        if placed.size and nest.any():
            parents = rng.integers(0, placed.size, size=int(nest.sum()))
            host = (np.uint64(1) << (np.uint64(32) - placed_len[parents])) - np.uint64(1)
            addr[nest] = placed[parents] | (addr[nest] & host)
        m = np.uint64((0xFFFF_FFFF << (32 - length)) & 0xFFFF_FFFF)
        p = np.unique(addr & m)
        ps.append(p)
        ls.append(np.full(p.size, length, dtype=np.uint64))
        placed = np.concatenate([placed, p])
        placed_len = np.concatenate([placed_len, ls[-1]])
    # duplicates were dropped: top up with more /24s (the bulk of the table)
    i24 = LENGTHS.index(24)
    while (have := sum(x.size for x in ps)) < n:
        extra = rng.integers(1 << 24, 224 << 24, size=2 * (n - have), dtype=np.uint64)
        extra = np.setdiff1d(extra & np.uint64(0xFFFF_FF00), ps[i24])[: n - have]
        ps[i24] = np.concatenate([ps[i24], extra])
        ls[i24] = np.full(ps[i24].size, 24, dtype=np.uint64)
    p = np.concatenate(ps).astype(np.uint32)
    plen = np.concatenate(ls).astype(np.uint8)
    nh = rng.integers(1, 513, size=p.size, dtype=np.uint32)
    return p, plen, nh


def traffic(p: np.ndarray, plen: np.ndarray, n: int, kind: str, seed: int = 2) -> np.ndarray:
    """n destination addresses: 'space' uniform over all of IPv4, 'table' a uniformly
    chosen route then a uniform address inside it, 'zipf' routes by Zipf(1.1) rank."""
    rng = np.random.default_rng(seed)
    if kind == "space":
        return rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    if kind == "table":
        r = rng.integers(0, p.size, size=n)
    elif kind == "zipf":
        rank = (rng.zipf(1.1, size=n) - 1) % p.size
        r = rng.permutation(p.size)[rank]
    else:
        raise ValueError(kind)
    span = np.left_shift(np.uint64(1), (32 - plen[r]).astype(np.uint64))
    off = (rng.random(n) * span).astype(np.uint64)
    return (p[r].astype(np.uint64) + off).astype(np.uint32)


def median_spread(runs: list[float]) -> tuple[float, float]:
    """The median of the runs and their spread, (max - min) / median."""
    m = statistics.median(runs)
    return m, (max(runs) - min(runs)) / m if m else 0.0


def summary(runs: list[float]) -> dict[str, object]:
    m, spread = median_spread(runs)
    return {"median": m, "spread": spread, "runs": runs}


def lookup_rates(lookup, addrs: np.ndarray, batch: int, seconds: float,
                 repeat: int) -> list[float]:
    """Lookups/s of `repeat` runs (see `lookup_rate`)."""
    return [lookup_rate(lookup, addrs, batch, seconds) for _ in range(repeat)]


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def lookup_rate(lookup, addrs: np.ndarray, batch: int, seconds: float = 2.0) -> float:
    """Lookups/s, cycling through addrs in batches (the whole set is far bigger than
    the caches, like real traffic)."""
    batches = [addrs[i : i + batch] for i in range(0, addrs.size - batch + 1, batch)]
    for b in batches[:64]:
        lookup(b)
    done = 0
    clock = CLOCK
    t0 = clock()
    while True:
        for b in batches:
            lookup(b)
        done += len(batches)
        dt = clock() - t0
        if dt >= seconds:
            return done * batch / dt


def _pin(cpu: int) -> None:
    # one core each for the writer and the reader, as the engine pins its workers
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def _reader(name: str, impl: str, addrs: np.ndarray, started, stop, out) -> None:
    _pin((os.cpu_count() or 1) - 1)
    f = FibReader.attach(name, reader_id=0, impl=impl)
    started.set()
    n = 0
    try:
        while not stop.is_set():
            for i in range(0, addrs.size, 1024):
                f.lookup(addrs[i : i + 1024])
                f.quiescent(0)
            n += addrs.size
        out.put(n)
    finally:
        f.close()


class Churn:
    """Random BGP-like churn on the full table, in equal parts: withdraw a table route
    or re-announce a withdrawn one; announce a new prefix (mostly /24, some longer) or
    withdraw one announced earlier; change a route's next hop."""

    def __init__(self, p: np.ndarray, plen: np.ndarray, nh: np.ndarray, seed: int = 3) -> None:
        self.p, self.plen, self.nh = p, plen, nh
        self.rng = np.random.default_rng(seed)
        self.table = set(zip(p.tolist(), plen.tolist(), strict=True))
        self.withdrawn: set[tuple[int, int]] = set()
        self.announced: list[tuple[int, int]] = []
        self.announced_set: set[tuple[int, int]] = set()

    def ops(self, n: int) -> list[tuple[int, int, int, int]]:
        rng = self.rng
        idx = rng.integers(0, self.p.size, size=n)
        new_p = rng.integers(1 << 24, 224 << 24, size=n, dtype=np.uint64).astype(np.uint32)
        new_len = rng.choice([22, 23, 24, 24, 24, 24, 24, 24, 25, 28, 32], size=n)
        kind = rng.integers(0, 3, size=n)
        coin = rng.random(n)
        nhs = rng.integers(1, 513, size=n)
        out = []
        for i in range(n):
            key = (int(self.p[idx[i]]), int(self.plen[idx[i]]))
            if kind[i] == 0:  # withdraw a table route, or re-announce a withdrawn one
                if key in self.withdrawn:
                    out.append((1, *key, int(self.nh[idx[i]])))
                    self.withdrawn.discard(key)
                else:
                    out.append((0, *key, 0))
                    self.withdrawn.add(key)
            elif kind[i] == 1 and self.announced and coin[i] < 0.5:  # withdraw a new one
                j = int(coin[i] * 2 * len(self.announced))
                ann = self.announced
                ann[j], ann[-1] = ann[-1], ann[j]
                self.announced_set.discard(ann[-1])
                out.append((0, *ann.pop(), 0))
            elif kind[i] == 1:  # announce a prefix the table does not have
                length = int(new_len[i])
                new = (int(new_p[i]) & ((0xFFFF_FFFF << (32 - length)) & 0xFFFF_FFFF), length)
                if new in self.table or new in self.announced_set:
                    continue
                self.announced.append(new)
                self.announced_set.add(new)
                out.append((1, *new, int(nhs[i])))
            elif key not in self.withdrawn:  # next-hop change
                out.append((1, *key, int(nhs[i])))
        return out


def update_rate(fib: FibWriter, churn: Churn, n_updates: int, batch: int = 1) -> float:
    """Route changes per second over n_updates churn operations: one add/delete call
    each (batch 1, what `fwd route add` does), or `FibWriter.apply` calls of `batch`
    (prefix, len, nh) triples each, nh 0 deleting (what a routing daemon's feed
    gives); the triples' conversion to arrays inside apply is timed too."""
    ops = churn.ops(n_updates)
    if batch > 1:
        triples = [(a, b, c if op else 0) for op, a, b, c in ops]
        batches = [triples[i : i + batch] for i in range(0, len(triples), batch)]
        apply = fib.apply
        t0 = CLOCK()
        for updates in batches:
            apply(updates)
        return len(ops) / (CLOCK() - t0)
    add, delete = fib.add, fib.delete
    t0 = CLOCK()
    for op, a, b, c in ops:
        if op:
            add(a, b, c)
        else:
            delete(a, b)
    return len(ops) / (CLOCK() - t0)


def with_reader_rate(fib: FibWriter, churn: Churn, reader_addrs: np.ndarray,
                     n_updates: int, batch: int = 1) -> tuple[float, int]:
    """Updates/s (see `update_rate`) while a reader process (same impl, pinned to the
    last CPU) looks up in batches of 1024 and calls quiescent() after each; and the
    lookups it did meanwhile."""
    ctx = mp.get_context("spawn")
    started, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    rd = ctx.Process(target=_reader,
                     args=(fib.name, fib.impl, reader_addrs, started, stop, out))
    rd.start()
    try:
        if not started.wait(120):
            raise RuntimeError("the reader process did not attach")
        time.sleep(0.2)  # let it run
        rate = update_rate(fib, churn, n_updates, batch)
    finally:
        stop.set()
    lookups = out.get(timeout=60)
    rd.join(60)
    return rate, lookups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefixes", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=1.0, help="per lookup measurement")
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs of each measurement; the median is reported")
    ap.add_argument("--updates", type=int, default=200_000)
    ap.add_argument("--update-batch", type=int, default=256,
                    help="changes per FibWriter.apply call for the batched update rates "
                    "(the single-update rates are measured too); 0: single only")
    ap.add_argument("--impl", default=",".join(IMPLS),
                    help=f"FIB implementations to measure, comma-separated ({', '.join(IMPLS)});"
                    " the first one's figures are the JSON's top-level ones")
    ap.add_argument("--json", default="perf/results/fib.json")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 100,000 prefixes, 2 runs of 0.1 s, 10,000 updates")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: rates over this process's CPU time (lookups, updates), so "
                    "that waiting for a CPU other work holds does not count")
    args = ap.parse_args()
    impls = args.impl.split(",")
    if not impls or any(i not in IMPLS for i in impls):
        ap.error(f"--impl: a comma-separated list of {IMPLS}")
    if args.quick:
        args.prefixes, args.repeat, args.seconds, args.updates = 100_000, 2, 0.1, 10_000
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time
    res: dict = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "clock": args.clock,
        "load_average": os.getloadavg(),
        "prefixes_requested": args.prefixes,
        "batch": args.batch,
        "impls": impls,
    }

    t0 = time.perf_counter()
    p, plen, nh = realistic_table(args.prefixes)
    res["generate_s"] = time.perf_counter() - t0
    res["prefixes"] = int(p.size)
    res["longer_than_24"] = int((plen > 24).sum())
    by: dict[str, dict] = {i: {"impl": i} for i in impls}
    fibs: dict[str, FibWriter] = {}
    try:
        for i in impls:  # kernels compiled or loaded from the cache here, not timed
            fibs[i] = FibWriter.create(tbl8_groups=16384, impl=i)
        # build: each run into a fresh table (the last one stays), impls interleaved
        builds: dict[str, list[float]] = {i: [] for i in impls}
        for r in range(args.repeat):
            for i in impls:
                if r:
                    fibs[i].close()
                    fibs[i].unlink()
                    fibs[i] = FibWriter.create(tbl8_groups=16384, impl=i)
                rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                t0 = time.perf_counter()
                fibs[i].bulk_load((p, plen, nh))
                builds[i].append(time.perf_counter() - t0)
                rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                if r == 0:
                    by[i]["peak_rss_growth_bytes"] = (rss1 - rss0) * 1024
        first = fibs[impls[0]]
        res["shm_bytes"] = first._shm.size  # noqa: SLF001
        res["tbl8_used"] = first.stats()["tbl8_used"]
        for i in impls:
            by[i]["build_s"], spread = median_spread(builds[i])
            by[i]["build"] = summary(builds[i])
            print(
                f"[{i}] table: {p.size:,} prefixes ({res['longer_than_24']} longer than /24), "
                f"{res['tbl8_used']} tbl8 groups; bulk_load {by[i]['build_s']:.2f} s "
                f"({spread:.0%}); shm {res['shm_bytes'] / 2**20:.0f} MiB; "
                f"first build's peak RSS +{by[i]['peak_rss_growth_bytes'] / 2**20:.0f} MiB"
            )
        for i in impls[1:]:
            sample = traffic(p, plen, 1 << 16, "space")
            assert (fibs[i].lookup(sample) == first.lookup(sample)).all(), "impls disagree"

        pyt = None
        try:
            import pytricia
        except ImportError:
            print("pytricia not installed: no peer numbers")
        else:
            pyt = pytricia.PyTricia(32)
            t0 = time.perf_counter()
            for a, b, c in zip(p.tolist(), plen.tolist(), nh.tolist(), strict=True):
                pyt.insert(a, b, c)
            res["pytricia_build_s"] = time.perf_counter() - t0
            print(f"pytricia build {res['pytricia_build_s']:.2f} s")

        def pyt_lookup(batch: np.ndarray) -> list:
            get = pyt.get
            return [get(a) for a in batch.tolist()]

        def with_qs(fib: FibWriter):
            def lookup(batch: np.ndarray) -> np.ndarray:
                out = fib.lookup(batch)
                fib.quiescent(0)
                return out
            return lookup

        for i in impls:
            by[i]["lookup"] = {}
        print(f"lookups, batch {args.batch}, median of {args.repeat} runs of {args.seconds} s "
              "(spread):")
        for kind in ("space", "table", "zipf"):
            addrs = traffic(p, plen, 1 << 22, kind)
            runs: dict[str, list[float]] = {i: [] for i in impls}
            runs_q: dict[str, list[float]] = {i: [] for i in impls}
            for _ in range(args.repeat):
                for i in impls:
                    f = fibs[i]
                    runs[i] += lookup_rates(f.lookup, addrs, args.batch, args.seconds, 1)
                    f.register_reader(0)
                    runs_q[i] += lookup_rates(with_qs(f), addrs, args.batch, args.seconds, 1)
                    f.unregister_reader(0)
            peer = {}
            if pyt is not None:
                sample = addrs[: 1 << 16]  # both must agree
                want = np.array([x or 0 for x in pyt_lookup(sample)], dtype=np.uint32)
                assert (first.lookup(sample) == want).all(), "fib and pytricia disagree"
                runs_p = lookup_rates(pyt_lookup, addrs[: 1 << 18], args.batch, args.seconds,
                                      args.repeat)
                rp, spread_p = median_spread(runs_p)
                peer = {"pytricia_per_s": rp, "pytricia_spread": spread_p,
                        "pytricia_runs": runs_p}
            for i in impls:
                (r, spread), (rq, spread_q) = median_spread(runs[i]), median_spread(runs_q[i])
                row = {"fib_per_s": r, "fib_spread": spread, "fib_runs": runs[i],
                       "fib_with_quiescent_per_s": rq, "fib_with_quiescent_spread": spread_q,
                       "fib_with_quiescent_runs": runs_q[i]}
                line = (f"[{i}] lookup {kind:5s}: {r / 1e6:6.1f} M/s ({spread:.0%}) "
                        f"(+quiescent() per batch {rq / 1e6:.1f} ({spread_q:.0%}))")
                if peer:
                    row.update(peer, ratio_vs_pytricia=r / peer["pytricia_per_s"])
                    line += (f"; pytricia {peer['pytricia_per_s'] / 1e6:.2f} M/s "
                             f"({peer['pytricia_spread']:.0%}); "
                             f"fib/pytricia {row['ratio_vs_pytricia']:.0f}x")
                by[i]["lookup"][kind] = row
                print(line)

        churns = {i: Churn(p, plen, nh) for i in impls}  # same seed: the same operations
        reader_addrs = traffic(p, plen, 1 << 20, "table")
        affinity = os.sched_getaffinity(0)
        _pin(0)
        # single updates, then (--update-batch) apply() batches; each with a reader
        # process running and alone, the impls' runs interleaved
        modes = [("", 1)] + ([("batched_", args.update_batch)] if args.update_batch > 1 else [])
        for prefix, batch in modes:
            with_reader: dict[str, list[float]] = {i: [] for i in impls}
            reader_lookups: dict[str, list[int]] = {i: [] for i in impls}
            for _ in range(args.repeat):
                for i in impls:
                    rate, n = with_reader_rate(fibs[i], churns[i], reader_addrs, args.updates,
                                               batch)
                    with_reader[i].append(rate)
                    reader_lookups[i].append(n)
            alone: dict[str, list[float]] = {i: [] for i in impls}
            for _ in range(args.repeat):
                for i in impls:
                    alone[i].append(update_rate(fibs[i], churns[i], args.updates, batch))
            how = "one add/delete call each" if batch == 1 else f"apply() of {batch}"
            for i in impls:
                b = by[i]
                b[f"{prefix}updates_per_s_with_reader"], spread = median_spread(with_reader[i])
                b[f"{prefix}updates_with_reader"] = summary(with_reader[i])
                b[f"{prefix}reader_lookups"] = reader_lookups[i]
                print(f"[{i}] updates ({how}) with a reader process running: "
                      f"{b[f'{prefix}updates_per_s_with_reader']:,.0f}/s ({spread:.0%}; the "
                      f"reader did {statistics.median(reader_lookups[i]):,.0f} lookups "
                      "meanwhile, median)")
                b[f"{prefix}updates_per_s_alone"], spread = median_spread(alone[i])
                b[f"{prefix}updates_alone"] = summary(alone[i])
                print(f"[{i}] updates ({how}) alone: "
                      f"{b[f'{prefix}updates_per_s_alone']:,.0f}/s ({spread:.0%})")
        res["update_batch"] = args.update_batch
        os.sched_setaffinity(0, affinity)
        for i in impls:
            by[i]["tbl8_after_churn"] = fibs[i].stats()
        res["repeat"] = args.repeat
        res.update(by[impls[0]])  # the top-level figures: the first impl's
        res["by_impl"] = by
    finally:
        for f in fibs.values():
            f.close()
            f.unlink()
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
