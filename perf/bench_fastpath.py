"""Fast path alone: packets/s for 64-byte frames, in memory, no I/O.

    .venv/bin/python perf/bench_fastpath.py [--seconds S] [--workers N] [--json FILE]

Three measurements per batch size, each the median of several runs:
- `noop`: gather each batch's header rows from the shared pool and scatter them back
  (the cost of just touching the packets: the floor of any fast path here);
- `stages`: `fast_path()` alone on already gathered rows;
- `worker`: a worker's whole pass (`Forwarder.poll`: its RX ring in, gather, fast
  path, scatter, TX rings out, counters; the RX ring filled and the TX rings emptied
  between passes, not timed), the number that matters;
- `compiled_stages`, `compiled_worker`: the same with `[engine] datapath = "compiled"`
  (`compiled_stages`: the kernel alone, pipeline/compiled.py, through its entry
  point; `compiled_worker`: the whole batch in one compiled call, workers/batch.py).
Per stage, like VPP's `show runtime` (clocks per packet per node): ns per packet in
each of fast_path's stages (`ip_rcv`, `ip_route_input`, `ip_forward`, `rewrite`),
called one by one on prepared batches, each call timed alone.
Destinations are static neighbours of the config (their MAC is in the next-hop row)
and hosts behind a gateway; `learned` repeats `stages` and `worker` with every
destination a host on p1's subnet that is not in the config, learned by ARP into the
neighbour table (64 of them, REACHABLE): the namespace lab's common case, resolved
through the worker's neighbour cache. Then worker scaling, both datapaths, at each
batch size: 1..N processes, each a pinned `Forwarder` polling its own RX ring,
summed. Ratios are printed against `noop`, or numpy, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from numba import typeof

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.cli.bench import machine  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.control.routing import build_routing  # noqa: E402
from engine.pipeline.compiled import forward_batch  # noqa: E402
from engine.pipeline.fastpath import STAGES, fast_path, rewrite_forwarded  # noqa: E402
from engine.pipeline.stage import Batch  # noqa: E402
from engine.pipeline.tables import make_tables  # noqa: E402
from engine.proto import HDR_BYTES  # noqa: E402
from engine.shm.fib import FibReader, FibWriter  # noqa: E402
from engine.shm.memory import EngineMemory, Geometry  # noqa: E402
from engine.shm.neigh_table import NeighbourTable, Nud  # noqa: E402
from engine.workers.forwarder import REWRITE_BYTES, Forwarder  # noqa: E402
from engine.workers.loop import pin  # noqa: E402

CONFIG = ROOT / "configs" / "default.toml"
BATCHES = (32, 64, 128, 256, 512, 1024)
FRAME = 64
LEARNED = 64  # hosts 10.0.2.100.. on p1, in the neighbour table only


def learn(mem: EngineMemory) -> None:
    """Put the LEARNED hosts into the neighbour table, as the slow path's ARP would."""
    t = NeighbourTable(mem)
    for k in range(LEARNED):
        ok = t.put((10 << 24) | (2 << 8) | (100 + k), 1, bytes([2, 0, 0, 0, 2, 100 + k]),
                   Nud.REACHABLE, 0)
        assert ok


def to_learned(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same frames, each to one of the LEARNED hosts (checksums redone)."""
    frames = frames.copy()
    ip = frames[:, 14:34]
    ip[:, 16:19] = [10, 0, 2]
    ip[:, 19] = 100 + rng.integers(0, LEARNED, len(frames))
    ip[:, 10:12] = 0
    s = ip.view(">u2").astype(np.uint32).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    check = ~s & 0xFFFF
    ip[:, 10], ip[:, 11] = check >> 8, check & 0xFF
    return frames


def udp_frames(n: int, rng: np.random.Generator) -> np.ndarray:
    """n 64-byte Ethernet/IPv4/UDP frames from p0's hosts to p1's and 10.9/16 (built
    with struct-level numpy, checked by the test suite's scapy comparisons)."""
    rows = np.zeros((n, FRAME), dtype=np.uint8)
    rows[:, 0:6] = [2, 0, 0, 0, 0, 1]  # p0's MAC
    rows[:, 6:12] = [2, 0, 0, 0, 1, 2]
    rows[:, 12:14] = [0x08, 0x00]
    ip = rows[:, 14:34]
    ip[:, 0] = 0x45
    tot_len = FRAME - 14
    ip[:, 2], ip[:, 3] = tot_len >> 8, tot_len & 0xFF
    ip[:, 8] = 64
    ip[:, 9] = 17
    ip[:, 12:16] = [10, 0, 1, 2]
    dst = rng.integers(0, 4, n)
    ip[:, 16] = 10
    ip[:, 17] = np.where(dst < 2, 0, 9)
    ip[:, 18] = np.where(dst < 2, 2, rng.integers(0, 256, n))
    ip[:, 19] = np.where(dst == 0, 2, np.where(dst == 1, 3, rng.integers(1, 255, n)))
    words = ip.view(">u2").astype(np.uint32)
    s = words.sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    check = ~s & 0xFFFF
    ip[:, 10], ip[:, 11] = check >> 8, check & 0xFF
    rows[:, 34:36] = [0x27, 0x10]
    rows[:, 36:38] = [0x13, 0x89]
    rows[:, 38:40] = [0, FRAME - 34]
    return rows


class Setup:
    def __init__(self, workers: int, nbufs: int = 16384, learned: bool = False):
        self.cfg = load_config(CONFIG)
        self.geometry = Geometry.new(len(self.cfg.ports), workers, nbufs=nbufs, ring_size=4096)
        self.mem = EngineMemory.create(self.geometry)
        self.fib = FibWriter.create()
        build_routing(self.cfg, self.mem, self.fib)
        learn(self.mem)
        self.tables = make_tables(self.cfg, self.mem, self.fib.lookup)
        frames = udp_frames(nbufs, np.random.default_rng(1))
        if learned:
            frames = to_learned(frames, np.random.default_rng(2))
        self.mem.data[:, :FRAME] = frames
        self.mem.length[:] = FRAME
        self.mem.port[:] = 0
        self.frames = frames

    def close(self) -> None:
        self.fib.close()
        self.fib.unlink()
        self.mem.close()


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def timed(fn, seconds: float, prepare=None) -> float:
    """Packets/s of `fn() -> packets` run repeatedly for about `seconds`; time spent in
    `prepare()` (restoring the input between passes) is not counted."""
    clock = CLOCK
    done, busy, t_end = 0, 0.0, clock() + seconds
    while clock() < t_end:
        if prepare is not None:
            prepare()
        t0 = clock()
        done += fn()
        busy += clock() - t0
    return done / busy


def single_core(setup: Setup, batch: int, seconds: float, runs: int,
                names: tuple[str, ...] = ("noop", "stages", "worker", "compiled_stages",
                                          "compiled_worker")) -> dict[str, float]:
    mem = setup.mem
    mem.data[:, :FRAME] = setup.frames  # undo what earlier measurements rewrote
    mem.length[:] = FRAME
    nbatches = setup.geometry.nbufs // batch
    order = [np.arange(i * batch, (i + 1) * batch, dtype=np.uint32) for i in range(nbatches)]
    fw = Forwarder(mem, setup.tables, 0, batch)
    tables = fw.tables  # with the worker's neighbour cache in front of the shared table
    jit = Forwarder(mem, setup.tables, 0, batch, datapath="compiled")
    jit.warm_up()
    state = {"i": 0}

    def reset_row(idx):
        mem.data[idx, :FRAME] = setup.frames[idx]  # TTL back to 64 between passes
        mem.length[idx] = FRAME

    def noop():
        idx = order[state["i"] % nbatches]
        state["i"] += 1
        hdr = mem.data[idx, :HDR_BYTES]
        mem.data[idx, :REWRITE_BYTES] = hdr[:, :REWRITE_BYTES]
        return batch

    hdrs = [mem.data[idx, :HDR_BYTES] for idx in order]

    def stages():
        i = state["i"] % nbatches
        state["i"] += 1
        hdr = hdrs[i].copy()
        fast_path(hdr, mem.length[order[i]], mem.port[order[i]], tables)
        return batch

    def restore():
        reset_row(order[state["i"] % nbatches])

    def feeder(w):
        def feed():  # play the I/O side: a burst on the RX ring, the TX rings emptied
            restore()
            w.rx[0].enqueue(order[state["i"] % nbatches])
            for ring in w.tx:
                ring.head[0] = ring.tail[0]
        return feed

    def polled(w):
        def one():  # the whole worker: RX ring in, rings out
            state["i"] += 1
            assert w.poll() == batch
            return batch
        return one

    # the kernel alone, called as the worker calls its batch: through its entry point
    kernel_args = (jit.compiled.kernel, mem.data, mem.length, mem.port, order[0])
    kernel = forward_batch.overloads[tuple(map(typeof, kernel_args))].entry_point

    def compiled_stages():
        idx = order[state["i"] % nbatches]
        state["i"] += 1
        kernel(jit.compiled.kernel, mem.data, mem.length, mem.port, idx)
        return batch

    out = {}
    for name, fn, prepare in (("noop", noop, None), ("stages", stages, None),
                              ("worker", polled(fw), feeder(fw)),
                              ("compiled_stages", compiled_stages, restore),
                              ("compiled_worker", polled(jit), feeder(jit))):
        if name not in names:
            continue
        rates = []
        for _ in range(runs):
            rates.append(timed(fn, seconds, prepare))
        out[name] = statistics.median(rates)
        out[name + "_spread"] = (max(rates) - min(rates)) / out[name] if out[name] else 0.0
    return out


STEPS = (*(stage.key for stage in STAGES), "rewrite")


def stage_ns(setup: Setup, batch: int, seconds: float, runs: int) -> dict[str, float]:
    """ns per packet in each stage of `fast_path`, the way VPP's `show runtime` gives
    clocks per packet per node: the same calls fast_path makes, on a copy of each
    prepared batch, each call timed alone (`CLOCK`); median of `runs` and its spread."""
    mem = setup.mem
    mem.data[:, :FRAME] = setup.frames
    mem.length[:] = FRAME
    nbatches = setup.geometry.nbufs // batch
    order = [np.arange(i * batch, (i + 1) * batch, dtype=np.uint32) for i in range(nbatches)]
    t = Forwarder(mem, setup.tables, 0, batch).tables  # with the neighbour cache
    hdrs = [mem.data[idx, :HDR_BYTES].copy() for idx in order]
    lengths = [mem.length[idx].copy() for idx in order]
    ports = [mem.port[idx].copy() for idx in order]
    clock = CLOCK
    per_run: dict[str, list[float]] = {s: [] for s in STEPS}
    for _ in range(runs):
        spent = dict.fromkeys(STEPS, 0.0)
        packets, i, t_end = 0, 0, clock() + seconds
        while clock() < t_end:
            k = i % nbatches
            i += 1
            b = Batch(hdrs[k].copy(), lengths[k], ports[k], np.zeros(batch, dtype=np.uint8))
            for stage in STAGES:  # the calls fast_path makes, one by one
                t0 = clock()
                stage.run(b, t)
                spent[stage.key] += clock() - t0
            t0 = clock()
            rewrite_forwarded(b, t)
            spent["rewrite"] += clock() - t0
            packets += batch
        for s in STEPS:
            per_run[s].append(spent[s] / packets * 1e9)
    out: dict[str, float] = {}
    for s, xs in per_run.items():
        out[s] = statistics.median(xs)
        out[s + "_spread"] = (max(xs) - min(xs)) / out[s] if out[s] else 0.0
    return out


def _scaling_worker(geometry, fib_name, w, batch, seconds, cpu, result, clock="wall",
                    datapath="numpy"):
    global CLOCK
    if clock == "cpu":
        CLOCK = time.process_time
    pin(cpu)
    cfg = load_config(CONFIG)
    mem = EngineMemory.attach(geometry)
    fib = FibReader.attach(fib_name)
    tables = make_tables(cfg, mem, fib.lookup)
    fw = Forwarder(mem, tables, w, batch, datapath=datapath)
    fw.warm_up()  # loads what the parent compiled
    n = geometry.nbufs // geometry.nworkers
    base = w * n
    order = [np.arange(base + i * batch, base + (i + 1) * batch, dtype=np.uint32)
             for i in range(n // batch)]
    state = {"i": 0}
    frames = mem.data[base : base + n, :REWRITE_BYTES].copy()

    def feed():  # the I/O side, not timed: a burst on the RX ring, the TX rings emptied
        idx = order[state["i"] % len(order)]
        mem.data[idx, :REWRITE_BYTES] = frames[idx - base]
        fw.rx[0].enqueue(idx)
        for ring in fw.tx:
            ring.head[0] = ring.tail[0]

    def one():
        state["i"] += 1
        fw.poll()
        return batch

    result[w] = timed(one, seconds, feed)
    fib.close()
    mem.close()


def scaling(workers: int, batch: int, seconds: float, clock: str = "wall",
            datapath: str = "numpy") -> float:
    """Packets/s of `workers` processes, each a pinned `Forwarder` polling its own RX
    ring, summed."""
    setup = Setup(workers)
    try:
        if datapath == "compiled":  # compile here once, as `fwd run` does
            Forwarder(setup.mem, setup.tables, 0, batch, datapath=datapath).compile()
        ctx = mp.get_context("spawn")
        result = ctx.Array("d", workers)
        cpus = sorted(os.sched_getaffinity(0))
        procs = [ctx.Process(target=_scaling_worker,
                             args=(setup.geometry, setup.fib.name, w, batch, seconds,
                                   cpus[w % len(cpus)], result, clock, datapath))
                 for w in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return float(sum(result[:]))
    finally:
        setup.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    ap.add_argument("--runs", type=int, default=5, help="repeats; the median is reported")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES),
                    help="batch sizes to measure")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: batches 64 and 256, 2 runs of 0.05 s, 1 scaling run")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: count this process's CPU time, not the wall clock (on a "
                    "machine other work keeps busy, the time spent waiting for a CPU "
                    "then does not count)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.runs, args.batches = 0.05, 2, [64, 256]
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time

    results = {"machine": machine(), "frame_bytes": FRAME, "clock": args.clock,
               "load_average": os.getloadavg(), "runs": args.runs, "seconds": args.seconds,
               "batch": {}, "stages_ns": {}, "workers": {}, "workers_spread": {},
               "scaling": {}}
    setup, learned = Setup(1), Setup(1, learned=True)
    try:
        print(f"{'':>6} {'':>10} {'static neighbours':^33} {'':>7} {'learned neighbours':^25}")
        print(f"{'batch':>6} {'noop Mpps':>10} {'stages Mpps':>12} {'worker Mpps':>12} "
              f"{'worker/noop':>12} {'spread':>7} {'stages Mpps':>12} {'worker Mpps':>12} "
              f"{'spread':>7}")
        for batch in args.batches:
            r = single_core(setup, batch, args.seconds, args.runs)
            d = single_core(learned, batch, args.seconds, args.runs,
                            ("stages", "worker", "compiled_stages", "compiled_worker"))
            r.update({f"learned_{k}": v for k, v in d.items()})
            results["batch"][batch] = r
            print(f"{batch:>6} {r['noop'] / 1e6:>10.2f} {r['stages'] / 1e6:>12.2f} "
                  f"{r['worker'] / 1e6:>12.2f} {r['worker'] / r['noop']:>12.3f} "
                  f"{r['worker_spread']:>6.0%} {d['stages'] / 1e6:>12.2f} "
                  f"{d['worker'] / 1e6:>12.2f} {d['worker_spread']:>6.0%}")
        print(f"\nns per packet per stage (static neighbours), median of {args.runs}")
        print(f"{'batch':>6} " + " ".join(f"{s:>8}" for s in STEPS)
              + f" {'stages':>8} {'worker':>8}")
        for batch in args.batches:
            ns = stage_ns(setup, batch, args.seconds, args.runs)
            ns["worker"] = 1e9 / results["batch"][batch]["worker"]
            results["stages_ns"][batch] = ns
            print(f"{batch:>6} " + " ".join(f"{ns[s]:>8.0f}" for s in STEPS)
                  + f" {sum(ns[s] for s in STEPS):>8.0f} {ns['worker']:>8.0f}")
        print("\ncompiled datapath, Mpps (ratio to numpy in this run)")
        print(f"{'batch':>6} {'stages':>16} {'worker':>16} {'learned stages':>16} "
              f"{'learned worker':>16}")
        for batch in args.batches:
            r = results["batch"][batch]
            cells = [(r[f"{p}compiled_{k}"], r[f"{p}compiled_{k}"] / r[f"{p}{k}"])
                     for p in ("", "learned_") for k in ("stages", "worker")]
            print(f"{batch:>6} " + " ".join(f"{v / 1e6:>8.2f} ({x:>4.1f}x)" for v, x in cells))
    finally:
        setup.close()
        learned.close()
    print(f"\nworker scaling, Mpps: median of {args.runs} (spread), ratio to 1 worker")
    print(f"{'batch':>6} {'workers':>7} {'numpy':>22} {'compiled':>22}")
    scale = results["scaling"]  # datapath -> batch -> workers -> {pps, spread}
    for batch in args.batches:
        for n in range(1, args.workers + 1):
            cells = []
            for datapath in ("numpy", "compiled"):
                rates = [scaling(n, batch, args.seconds, args.clock, datapath)
                         for _ in range(args.runs)]
                mid = statistics.median(rates)
                cell = {"pps": mid, "spread": (max(rates) - min(rates)) / mid}
                by_n = scale.setdefault(datapath, {}).setdefault(batch, {})
                by_n[n] = cell
                cells.append(f"{mid / 1e6:>6.2f} ({cell['spread']:>4.0%}) "
                             f"{mid / by_n[1]['pps']:>4.2f}x")
            print(f"{batch:>6} {n:>7} " + " ".join(f"{c:>22}" for c in cells))
    # `fwd bench` reads the numpy worker's scaling at batch 256 (or the largest batch)
    ref = scale["numpy"][256 if 256 in args.batches else max(args.batches)]
    results["workers"] = {n: c["pps"] for n, c in ref.items()}
    results["workers_spread"] = {n: c["spread"] for n, c in ref.items()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
