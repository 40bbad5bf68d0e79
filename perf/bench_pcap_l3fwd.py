"""pcap file in → pcap file out: `fwd run` against DPDK's l3fwd on the same frames (issue 15).

    .venv/bin/python perf/bench_pcap_l3fwd.py [--frames 2000000] [--runs 5] [--mixes 64,imix]
        [--workers 1] [--json perf/results/pcap-l3fwd-$(date +%F)-vm.json]
    .venv/bin/python perf/bench_pcap_l3fwd.py --quick      # smoke run, ~30 s

Both forwarders read two captures (one a port) and write two, with the same routes:
port N receives from 198.18.N.0/24 for the other port's 198.18.M.0/24 (perf/bench_l3fwd.py's
frames, 1200 flows a port, repeated to `--frames` a port) and l3fwd's built-in LPM table
sends 198.18.M.0/24 out of port M; the engine gets the same routes and static neighbours.

  engine  `fwd run` on two pcap ports (`--workers`, batch 256): the control process reads
          the captures in chunks, the workers forward, the outputs are written as it goes;
  l3fwd   1 lcore, on `net_pcap` devices with `rx_pcap=` and `tx_pcap=` files (libpcap
          reading and writing the same files), built from Debian's dpdk-doc sources as
          perf/bench_l3fwd.py builds it.

A run of either takes start-up time that is not forwarding (EAL, shared memory, worker
processes), so the rate is the marginal one, as perf/bench_pcap.py takes it: each
repetition runs the big captures and captures of a tenth of them, and the rate is
(frames - frames / 10) / (t_big - t_small), wall clock. `fwd run` ends when its input
is done; l3fwd never ends, so its time is when both of its outputs have all their
frames (the output files' sizes, polled every 2 ms), then it gets SIGINT. Each run
starts both afresh, alternating which goes first; the ratio is the median of per-run
ratios. The first frames of each output are checked to be the same bytes for both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

import bench_l3fwd as L  # noqa: E402  (perf/ is not a package)
import bench_pcap as P  # noqa: E402

PORTS = L.PORTS
FLOWS = 1200  # distinct frames a port; repeated to the capture's length
CHECKED = 5000  # frames of each output compared between the two forwarders


def write_capture(path: Path, frames: list[bytes], n: int) -> int:
    """`frames` repeated to n records, timestamps 1 µs apart; returns the file's size."""
    block = b"".join(struct.pack("<IIII", 0, 0, len(f), len(f)) + f for f in frames)
    reps, rest = divmod(n, len(frames))
    records = np.frombuffer(block, dtype=np.uint8)
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        sizes = [16 + len(f) for f in frames]
        starts = np.concatenate(([0], np.cumsum(sizes)))
        chunk = np.tile(records, max(1, min(reps, 64)))  # a few MB written at a time
        per_chunk = len(chunk) // len(records)
        done = 0
        while done < reps:
            k = min(per_chunk, reps - done)
            view = chunk[: k * len(records)].copy()
            # stamp the records: record j of this chunk at (done * FLOWS + j) µs
            offs = (np.arange(k)[:, None] * len(records) + starts[:-1][None, :]).ravel()
            usec = done * len(frames) + np.arange(len(offs))
            view.reshape(-1)[offs[:, None] + np.arange(4)] = (
                (usec // 1_000_000).astype("<u4").view(np.uint8).reshape(-1, 4))
            view.reshape(-1)[offs[:, None] + 4 + np.arange(4)] = (
                (usec % 1_000_000).astype("<u4").view(np.uint8).reshape(-1, 4))
            out.write(view.tobytes())
            done += k
        if rest:
            out.write(block[: starts[rest]])
    return path.stat().st_size


def engine_config(ins: list[Path], outs: list[Path], workers: int, batch: int) -> str:
    text = [f"[engine]\nworkers = {workers}\nbatch = {batch}\n"]
    for p in range(PORTS):
        text.append(f'[[port]]\nname = "p{p}"\ndriver = "pcap"\nrx = "{ins[p]}"\n'
                    f'tx = "{outs[p]}"\nmac = "{L.DEVICE_MAC.format(p)}"\n'
                    f'addresses = ["10.0.{p}.1/24"]\n')
    for p in range(PORTS):
        text.append(f'[[route]]\nprefix = "198.18.{p}.0/24"\nvia = "10.0.{p}.2"\n')
        text.append(f'[[neighbor]]\nip = "10.0.{p}.2"\nmac = "{L.NEXTHOP_MAC.format(p)}"\n'
                    f'port = "p{p}"\n')
    return "\n".join(text)


def run_engine(workdir: Path, ins: list[Path], tag: str, workers: int, expect: int,
               timeout: float) -> float:
    outs = [workdir / f"{tag}-engine-out{p}.pcap" for p in range(PORTS)]
    config = workdir / f"{tag}-engine.toml"
    config.write_text(engine_config(ins, outs, workers, 256))
    try:
        return P.one_run(config, expect, timeout)
    except SystemExit as err:  # bench_pcap's way of saying the run failed
        raise L.BenchError(str(err)) from None


def run_l3fwd(binary: Path, workdir: Path, ins: list[Path], sizes: list[int], tag: str,
              cpu: int, timeout: float) -> float:
    outs = [workdir / f"{tag}-l3fwd-out{p}.pcap" for p in range(PORTS)]
    for o in outs:
        o.unlink(missing_ok=True)
    prefix = f"fwdbench{os.getpid()}"
    vdevs = [f"net_pcap{p},rx_pcap={ins[p]},tx_pcap={outs[p]}" for p in range(PORTS)]
    app = L.L3fwd(workdir, f"{tag}-l3fwd", prefix, [cpu], binary)
    # the other port's frames come out of each port: the same sizes, other timestamps
    want = {PORTS - 1 - p: sizes[p] for p in range(PORTS)}
    t0 = time.perf_counter()
    app.start(vdevs)
    try:
        deadline = t0 + timeout
        while True:
            app.alive()
            if all(_size(outs[p]) >= want[p] for p in range(PORTS)):
                break
            if time.perf_counter() > deadline:
                raise L.BenchError(f"l3fwd did not forward everything within {timeout:g} s")
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        app.stop()
    except BaseException:
        app.kill()
        raise
    return elapsed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def first_frames(path: Path, n: int) -> list[bytes]:
    data = path.read_bytes()[: 24 + n * (16 + 1514)]
    frames, off = [], 24
    while len(frames) < n and off + 16 <= len(data):
        caplen = int.from_bytes(data[off + 8 : off + 12], "little")
        frames.append(data[off + 16 : off + 16 + caplen])
        off += 16 + caplen
    return frames


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=2_000_000, help="frames a port (big run)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mixes", default="64,imix")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="400k frames, 2 runs, 64 bytes")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.runs, args.mixes = 400_000, 2, "64"
    why = L.missing()
    if why:
        print(f"l3fwd cannot be built here: {why}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="fwd-pcap-l3fwd-"))
    doc: dict[str, Any] = {
        "bench": "pcap-l3fwd", "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
        "frames_per_port": args.frames, "workers": args.workers, "runs": args.runs,
        "method": "marginal wall-clock rate: (frames - frames/10) / (t_big - t_small), "
                  "both ports' frames counted", "mixes": {}}
    try:
        binary = L.build_l3fwd(workdir)
        cpu = sorted(os.sched_getaffinity(0))[0]
        for mix in args.mixes.split(","):
            flows = {p: L.port_frames(mix, p, FLOWS) for p in range(PORTS)}
            big = [workdir / f"{mix}-big-p{p}.pcap" for p in range(PORTS)]
            small = [workdir / f"{mix}-small-p{p}.pcap" for p in range(PORTS)]
            big_sizes = [write_capture(big[p], flows[p], args.frames) for p in range(PORTS)]
            small_sizes = [write_capture(small[p], flows[p], args.frames // 10)
                           for p in range(PORTS)]
            frames = PORTS * (args.frames - args.frames // 10)
            runs = []
            for r in range(args.runs):
                times: dict[str, dict[str, float]] = {"engine": {}, "l3fwd": {}}
                order = ["engine", "l3fwd"] if r % 2 == 0 else ["l3fwd", "engine"]
                for who in order:
                    for size, ins, sizes in (("big", big, big_sizes),
                                             ("small", small, small_sizes)):
                        n = args.frames if size == "big" else args.frames // 10
                        if who == "engine":
                            t = run_engine(workdir, ins, f"{mix}-{size}", args.workers,
                                           PORTS * n, args.timeout)
                        else:
                            t = run_l3fwd(binary, workdir, ins, sizes, f"{mix}-{size}", cpu,
                                          args.timeout)
                        times[who][size] = t
                rates = {who: frames / max(t["big"] - t["small"], 1e-9)
                         for who, t in times.items()}
                run = {"times": times, "mpps": {k: v / 1e6 for k, v in rates.items()},
                       "ratio": rates["engine"] / rates["l3fwd"]}
                runs.append(run)
                print(f"{mix} run {r + 1}: engine {run['mpps']['engine']:.2f} Mpps, l3fwd "
                      f"{run['mpps']['l3fwd']:.2f} Mpps, ratio {run['ratio']:.2f}", flush=True)
            for p in range(PORTS):  # the same bytes out of both (timestamps aside)
                a = first_frames(workdir / f"{mix}-small-engine-out{p}.pcap", CHECKED)
                b = first_frames(workdir / f"{mix}-small-l3fwd-out{p}.pcap", CHECKED)
                if a != b or len(a) != CHECKED:
                    raise L.BenchError(f"{mix}: port {p}'s outputs differ between the engine "
                                       "and l3fwd")
            doc["mixes"][mix] = {
                "runs": runs,
                "engine_mpps": statistics.median(r["mpps"]["engine"] for r in runs),
                "l3fwd_mpps": statistics.median(r["mpps"]["l3fwd"] for r in runs),
                "ratio": statistics.median(r["ratio"] for r in runs),
                "ratio_min": min(r["ratio"] for r in runs),
                "ratio_max": max(r["ratio"] for r in runs),
                "outputs_checked": CHECKED,
            }
            m = doc["mixes"][mix]
            print(f"{mix}: engine {m['engine_mpps']:.2f} Mpps, l3fwd {m['l3fwd_mpps']:.2f} Mpps, "
                  f"ratio {m['ratio']:.2f} (runs {m['ratio_min']:.2f}-{m['ratio_max']:.2f})")
    except L.BenchError as err:
        print(f"bench_pcap_l3fwd: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
