"""The engine end to end on pcap ports: `fwd run` forwarding a capture file (issue 7).

    .venv/bin/python perf/bench_pcap.py [--frames 400000] [--runs 5] [--workers 1,2]
                                        [--mixes 64,imix] [--json FILE] [--quick]

The whole engine as `fwd run configs/default.toml` runs it (control process reading
the capture and spreading frames over the workers' RX rings, workers, slow path,
writing the output capture), on a capture of UDP frames from p0's host to p1's hosts
and to 10.9/16 behind p1's gateway: every frame is forwarded. Mixes: "64" = 64-byte
frames on the wire (60 in the capture); "imix" = 7:4:1 of 64/570/1518 bytes on the
wire (60/566/1514 in the capture), perf/bench_l3fwd.py's mix, interleaved; "frag" =
4,000-byte UDP datagrams in 1,500-byte fragments (3 frames each, back to back, as a
host sends them), which the slow path reassembles and forwards ([reassembly] mode
"full": whole datagrams of a burst, the frag_list fast path); its rate counts
fragments, every datagram must be forwarded.

A run takes seconds of start-up (shared memory, FIB, worker processes) and stop
(drain, output file) that are not forwarding, so the rate is the marginal one: each
repetition runs a capture of `--frames` and one of a tenth of that, and the rate is
(frames - frames / 10) / (t_big - t_small), wall clock. Median of `--runs` and its
spread. No peer runs here (nothing else reads a capture and forwards it); the DPDK
peers (perf/bench_l3fwd.py) read the same mix from net_pcap devices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.pipeline.checksum import ip_checksum  # noqa: E402

# capture sizes (no FCS) and weights; 64/570/1518 on the wire
MIXES = {"64": ((60, 1),), "imix": ((60, 7), (566, 4), (1514, 1))}
# the marginal rate needs the big run to take this much longer than the small one;
# a noisy machine gets PAIR_ATTEMPTS tries at it before the whole run's rate is used
MIN_MARGIN_S = 0.1
PAIR_ATTEMPTS = 3
P0_MAC = bytes.fromhex("020000000001")
H1_MAC = bytes.fromhex("020000000102")


def mix_sizes(mix: str, n: int) -> np.ndarray:
    """n frame sizes of the mix, in an interleaved repeating pattern (7:4:1 → every
    12 frames 7 small, 4 medium, 1 large, spread out)."""
    pattern = [size for size, weight in MIXES[mix] for _ in range(weight)]
    pattern = [pattern[(i * 5) % len(pattern)] for i in range(len(pattern))]
    return np.resize(np.array(pattern, dtype=np.int64), n)


def udp_frames(sizes: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Ethernet/IPv4/UDP frames of the given sizes from 10.0.1.2 to 10.0.2.2, 10.0.2.3
    (static neighbours) and 10.9.x.y (behind 10.0.2.254): (data, offsets)."""
    n = len(sizes)
    rng = np.random.default_rng(seed)
    offsets = np.zeros(n, dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    data = np.zeros(int(sizes.sum()), dtype=np.uint8)
    hdr = np.zeros((n, 42), dtype=np.uint8)
    hdr[:, 0:6] = np.frombuffer(P0_MAC, dtype=np.uint8)
    hdr[:, 6:12] = np.frombuffer(H1_MAC, dtype=np.uint8)
    hdr[:, 12:14] = [0x08, 0x00]
    ip = hdr[:, 14:34]
    tot_len = sizes - 14
    ip[:, 0] = 0x45
    ip[:, 2], ip[:, 3] = tot_len >> 8, tot_len & 0xFF
    ip[:, 4], ip[:, 5] = (np.arange(n) >> 8) & 0xFF, np.arange(n) & 0xFF
    ip[:, 8], ip[:, 9] = 64, 17
    ip[:, 12:16] = [10, 0, 1, 2]
    dst = rng.integers(0, 4, n)
    ip[:, 16] = 10
    ip[:, 17] = np.where(dst < 2, 0, 9)
    ip[:, 18] = np.where(dst < 2, 2, rng.integers(0, 256, n))
    ip[:, 19] = np.where(dst == 0, 2, np.where(dst == 1, 3, rng.integers(1, 255, n)))
    s = ip.view(">u2").astype(np.uint32).sum(axis=1)  # RFC 1071 over the 20 bytes
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    check = ~s & 0xFFFF
    ip[:, 10], ip[:, 11] = check >> 8, check & 0xFF
    sport = 1024 + np.arange(n) % 256
    hdr[:, 34], hdr[:, 35] = sport >> 8, sport & 0xFF
    hdr[:, 36:38] = [0, 9]
    udp_len = tot_len - 20
    hdr[:, 38], hdr[:, 39] = udp_len >> 8, udp_len & 0xFF  # UDP checksum 0: none (RFC 768)
    cols = offsets[:, None] + np.arange(42)
    data[cols] = hdr
    return data, offsets


FRAG_TOTAL = 4000  # the "frag" mix: datagram size ...
FRAG_MTU = 1500  # ... and the MTU it was cut to upstream
FRAG_PER = -(-(FRAG_TOTAL - 20) // ((FRAG_MTU - 20) & ~7))  # fragments a datagram: 3


def fragment_capture(path: Path, frames: int) -> int:
    """The "frag" mix: `frames` // 3 datagrams of FRAG_TOTAL bytes from 10.0.1.2 to
    10.0.2.2 in FRAG_MTU fragments, back to back (the slow path's work); returns the
    datagrams written."""
    eth = P0_MAC + H1_MAC + b"\x08\x00"
    payload = bytes(i & 0xFF for i in range(FRAG_TOTAL - 20))
    step = (FRAG_MTU - 20) & ~7
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    datagrams = frames // FRAG_PER
    for d in range(datagrams):  # a setup loop, not timed
        for off in range(0, FRAG_TOTAL - 20, step):
            chunk = payload[off : off + step]
            more = 0x2000 if off + step < FRAG_TOTAL - 20 else 0
            hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk),
                                        d & 0xFFFF, (off >> 3) | more, 64, 17, 0,
                                        bytes([10, 0, 1, 2]), bytes([10, 0, 2, 2])))
            hdr[10:12] = ip_checksum(hdr).to_bytes(2, "big")
            frame = eth + bytes(hdr) + chunk
            records.append(struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(records))
    return datagrams


def write_capture(path: Path, sizes: np.ndarray) -> None:
    """A classic little-endian pcap of the frames, written in one go."""
    data, offsets = udp_frames(sizes)
    n = len(sizes)
    rec = np.zeros((n, 16), dtype=np.uint8)
    rec.view("<u4")[:, 2] = sizes
    rec.view("<u4")[:, 3] = sizes
    out_sizes = sizes + 16
    out = np.zeros(int(out_sizes.sum()), dtype=np.uint8)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(out_sizes[:-1], out=starts[1:])
    out[starts[:, None] + np.arange(16)] = rec
    body = np.ones(len(out), dtype=bool)
    body[(starts[:, None] + np.arange(16)).ravel()] = False
    out[body] = data
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(header + out.tobytes())


def write_big_capture(path: Path, n: int, piece: int = 1_000_000) -> None:
    """n 64-byte frames, written a million at a time (this process stays small)."""
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        part = path.with_suffix(".part")
        for start in range(0, n, piece):
            write_capture(part, mix_sizes("64", min(piece, n - start)))
            out.write(part.read_bytes()[24:])
        part.unlink(missing_ok=True)


def peak_rss(config: Path, expect: int, timeout: float) -> int:
    """The largest resident set (bytes) of any process of a `fwd run` on this config:
    the control process, which reads and writes the captures, or a worker (wait4's
    rusage: the child and the descendants it waited for)."""
    cmd = [sys.executable, "-c", "from engine.cli import main; main()", "run", str(config),
           "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    out = []
    assert proc.stdout is not None
    while True:  # read as it writes, so that a full pipe never blocks it
        line = proc.stdout.readline()
        if not line:
            break
        out.append(line)
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"{config.name}: fwd run did not finish within {timeout:g} s")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{config.name}: fwd run exited {proc.returncode}")
    books = json.loads("".join(out))["accounting"]
    if books["forwarded"] != expect:
        raise SystemExit(f"{config.name}: forwarded {books['forwarded']} of {expect}")
    return usage.ru_maxrss * 1024


def config_text(workdir: Path, rx: Path, workers: int, batch: int) -> Path:
    """configs/default.toml with this run's captures, workers and batch."""
    text = (ROOT / "configs" / "default.toml").read_text()
    empty = workdir / "empty.pcap"
    if not empty.exists():
        empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    text = (text.replace('rx = "demo/p0.pcap"', f'rx = "{rx}"')
            .replace('rx = "demo/p1.pcap"', f'rx = "{empty}"')
            .replace('tx = "demo/out/p0.pcap"', f'tx = "{workdir / "out0.pcap"}"')
            .replace('tx = "demo/out/p1.pcap"', f'tx = "{workdir / "out1.pcap"}"')
            .replace("workers = 2\n", f"workers = {workers}\n")
            .replace("batch = 256\n", f"batch = {batch}\n"))
    path = workdir / f"w{workers}-{rx.stem}.toml"
    path.write_text(text)
    return path


def one_run(config: Path, expect: int, timeout: float) -> float:
    """Seconds `fwd run --json` takes on this config (a process of its own, killed
    after `timeout`); every frame must be forwarded."""
    cmd = [sys.executable, "-c", "from engine.cli import main; main()", "run", str(config),
           "--json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its workers too: they are in its session
        proc.communicate()
        raise SystemExit(f"{config.name}: fwd run did not finish within {timeout:g} s") from None
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{config.name}: fwd run exited {proc.returncode}: {err[-2000:]}")
    books = json.loads(out)["accounting"]
    forwarded = books["forwarded"] + books["slow_forwarded"]  # packets or datagrams
    if forwarded != expect:
        raise SystemExit(f"{config.name}: forwarded {forwarded} of {expect}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=400_000, help="frames in the big capture")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", default="1,2", help="worker counts to run")
    ap.add_argument("--batch", type=int, default=256, help="[engine] batch")
    ap.add_argument("--mixes", default="64,imix")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per fwd run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 150,000 frames, 1 run, 1 worker")
    ap.add_argument("--rss", default="",
                    help="instead: peak RSS of fwd run (1 worker) on 64-byte captures of "
                         "these frame counts, e.g. 1000000,8000000")
    ap.add_argument("--write-capture", nargs=2, metavar=("PATH", "FRAMES"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.write_capture:
        write_big_capture(Path(args.write_capture[0]), int(args.write_capture[1]))
        return 0
    if args.rss:
        return rss_main(args)
    if args.quick:
        args.frames, args.runs, args.workers = 150_000, 1, "1"
        args.timeout = 40.0
    workers = [int(w) for w in args.workers.split(",")]
    mixes = args.mixes.split(",")
    if not set(mixes) <= {*MIXES, "frag"}:
        ap.error(f"--mixes: known mixes are {', '.join(MIXES)}, frag")
    small_n = args.frames // 10
    results: dict = {"what": "fwd run on pcap ports, marginal frames/s (wall clock)",
                     "host": platform.node(), "python": platform.python_version(),
                     "numpy": np.__version__, "cpus": os.cpu_count(),
                     "load_average": os.getloadavg(), "frames": args.frames,
                     "small_frames": small_n, "runs": args.runs, "batch": args.batch,
                     "mixes": {m: [list(x) for x in MIXES[m]] if m in MIXES
                               else f"{FRAG_TOTAL}-byte datagrams in {FRAG_MTU}-byte fragments"
                               for m in mixes}, "rates": {}}
    with tempfile.TemporaryDirectory(prefix="fwd-bench-pcap-") as tmp:
        workdir = Path(tmp)
        for mix in mixes:
            big, small = workdir / f"{mix}-big.pcap", workdir / f"{mix}-small.pcap"
            n_big, n_small = args.frames, small_n
            if mix == "frag":  # frames are fragments; what is forwarded, datagrams
                expect_big = fragment_capture(big, args.frames)
                expect_small = fragment_capture(small, small_n)
                n_big, n_small = expect_big * FRAG_PER, expect_small * FRAG_PER
            else:
                write_capture(big, mix_sizes(mix, args.frames))
                write_capture(small, mix_sizes(mix, small_n))
                expect_big, expect_small = args.frames, small_n
            for w in workers:
                cfg_big = config_text(workdir, big, w, args.batch)
                cfg_small = config_text(workdir, small, w, args.batch)
                rates, fixed, whole = [], [], 0
                for _ in range(args.runs):
                    for _attempt in range(PAIR_ATTEMPTS):
                        t_small = one_run(cfg_small, expect_small, args.timeout)
                        t_big = one_run(cfg_big, expect_big, args.timeout)
                        if t_big - t_small >= MIN_MARGIN_S:
                            break
                    if t_big - t_small >= MIN_MARGIN_S:
                        rates.append((n_big - n_small) / (t_big - t_small))
                        fixed.append(t_small - n_small / rates[-1])
                    else:  # start-up noise is most of it, again and again: a whole run's
                        # rate, start and stop included (a lower bound), said in the row
                        rates.append(n_big / t_big)
                        fixed.append(0.0)
                        whole += 1
                        print(f"pcap {mix}: {args.frames} frames took {t_big:.2f} s and "
                              f"{small_n} {t_small:.2f} s, too close to tell start-up "
                              "apart: the whole run's rate (raise --frames)", flush=True)
                m = statistics.median(rates)
                row = {"fps": m, "spread": (max(rates) - min(rates)) / m, "runs": rates,
                       "whole_run_rates": whole,
                       "startup_s": statistics.median(fixed),
                       "mean_frame_bytes": (float(mix_sizes(mix, args.frames).mean()) + 4
                                            if mix in MIXES else None)}
                results["rates"].setdefault(mix, {})[str(w)] = row
                print(f"pcap {mix:5s} {w} worker(s) batch {args.batch}: "
                      f"{m / 1e6:.3f} Mframes/s (spread {row['spread']:.0%}; "
                      f"start and stop {row['startup_s']:.2f} s)", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def rss_main(args: argparse.Namespace) -> int:
    """Peak resident memory against capture size: bounded by the pool, the rings and
    the read-ahead, whatever the capture's size (issue 15)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="fwd-bench-rss-") as tmp:
        workdir = Path(tmp)
        for n in (int(x) for x in args.rss.split(",")):
            cap = workdir / f"rss-{n}.pcap"
            # in a process of its own: a child forked from a large process starts with
            # that process's resident set, which wait4 would report as the engine's
            subprocess.run([sys.executable, __file__, "--write-capture", str(cap), str(n)],
                           check=True)
            config = config_text(workdir, cap, 1, args.batch)
            peak = peak_rss(config, n, max(args.timeout, n / 200_000))
            rows.append({"frames": n, "capture_bytes": cap.stat().st_size,
                         "peak_rss_bytes": peak})
            print(f"rss: {n} frames ({cap.stat().st_size / 2**20:.0f} MiB capture): peak RSS "
                  f"{peak / 2**20:.0f} MiB", flush=True)
            cap.unlink()
    results = {"what": "peak RSS of fwd run (largest process) against capture size, 1 worker",
               "host": platform.node(), "batch": args.batch, "rss": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
