"""Soak: many `fwd run` replays of mixed captures, 1 and 2 workers, every outcome checked.

    .venv/bin/python perf/soak.py [--runs N] [--frames F] [--seed S] [--keep DIR]
        [--timeout S] [--json FILE]
    .venv/bin/python perf/soak.py --runs 300          # the long mode, by hand
    .venv/bin/python perf/soak.py --runs 2 --frames 4000   # the short mode CI runs
                                                            # (tests/test_soak.py)

Each run builds, from its own seed, captures on two ports of the test topology
(tests/conftest.py): on p0 hostile frames (perf/fuzz_pipeline.py's mutations: random
headers, options, fragment fields, truncations, ARP), IMIX UDP through the router,
whole datagrams cut into fragments (some shuffled, some missing a fragment so that
reassembly times out on the capture clock), pings to the router; on p1 IMIX UDP the
other way. Frame times are random over ~40 s of capture clock (beyond the 30 s
reassembly timeout), several frames often sharing a time.

Then `fwd run --json` replays it with 1 worker and again with 2 (batch drawn from
16, 64, 256), each as its own process with a deadline, and the soak requires of each:
exit status 0 within the deadline (a hang is a failure), no traceback, the
accounting balanced, the pool whole (`fwd: pool: N of N buffers free`), and both
replays' outputs identical byte for byte (the contract: the same bytes for any number
of workers). A failing run's folder (captures, config, outputs, stderr) is kept under
--keep with its seed, to replay by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "perf"))

from bench_pcap import MIXES, udp_frames  # noqa: E402
from fuzz_pipeline import FRAME, ip_checksum, make_frames  # noqa: E402

from engine.io.pcap import PcapFileWriter  # noqa: E402
from engine.pipeline.checksum import set_ip_checksum  # noqa: E402

T0 = 1_700_000_000 * 10**9  # the captures' first second (ns)
CLOCK_S = 40  # the capture's span: past the 30 s reassembly timeout
P0_MAC, P1_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
H1_MAC, H2_MAC = bytes.fromhex("020000000102"), bytes.fromhex("020000000202")
WORKERS = (1, 2)
BATCHES = (16, 64, 256)


@dataclass
class Frames:
    """Frames as one byte array with offsets and lengths, and their times (ns)."""
    data: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    ts: np.ndarray

    @staticmethod
    def of(pieces: list[bytes], ts: np.ndarray) -> Frames:
        lengths = np.array([len(p) for p in pieces], np.int64)
        offsets = np.zeros(len(pieces), np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        return Frames(np.frombuffer(b"".join(pieces), np.uint8).copy(), offsets, lengths, ts)

    def cat(self, other: Frames) -> Frames:
        return Frames(np.concatenate([self.data, other.data]),
                      np.concatenate([self.offsets, other.offsets + len(self.data)]),
                      np.concatenate([self.lengths, other.lengths]),
                      np.concatenate([self.ts, other.ts]))

    def write(self, path: Path) -> None:
        order = np.argsort(self.ts, kind="stable")  # a capture is in time order
        with PcapFileWriter(path) as w:
            w.write(self.data, self.offsets[order], self.lengths[order], self.ts[order])


def times(rng: np.random.Generator, n: int) -> np.ndarray:
    """n frame times over CLOCK_S seconds, microsecond resolution (pcap's), many equal."""
    us = rng.integers(0, CLOCK_S * 10**6 // 50, n) * 50  # 50 µs steps: ties are common
    return T0 + us.astype(np.int64) * 1000


def hostile(rng: np.random.Generator, n: int) -> Frames:
    rows, lengths = make_frames(n, rng)
    offsets = np.arange(n, dtype=np.int64) * FRAME
    return Frames(rows.reshape(-1).copy(), offsets, lengths.astype(np.int64), times(rng, n))


def imix(rng: np.random.Generator, n: int, reverse: bool = False) -> Frames:
    pattern = np.array([s for s, w in MIXES["imix"] for _ in range(w)], np.int64)
    sizes = rng.choice(pattern, n)
    data, offsets = udp_frames(sizes, seed=int(rng.integers(1 << 31)))
    if reverse:  # h2 -> h1's side: 10.0.2.2 to the static neighbours 10.0.1.2-9
        cols = offsets[:, None]
        data[cols + np.arange(6)] = np.frombuffer(P1_MAC, np.uint8)
        data[cols + 6 + np.arange(6)] = np.frombuffer(H2_MAC, np.uint8)
        data[cols + 26 + np.arange(4)] = [10, 0, 2, 2]
        data[cols + 30 + np.arange(4)] = np.stack(
            [np.full(n, 10), np.zeros(n), np.ones(n), rng.integers(2, 10, n)], 1)
        ip = np.pad(data[cols + 14 + np.arange(20)], ((0, 0), (0, 40)))
        csum = ip_checksum(ip, np.full(n, 20))
        data[offsets + 24] = csum >> 8
        data[offsets + 25] = csum & 0xFF
    return Frames(data, offsets, sizes, times(rng, n))


def fragments(rng: np.random.Generator, datagrams: int) -> Frames:
    """Whole datagrams from h1 cut into fragments: in order, shuffled within the
    datagram, or with one fragment missing (reassembly then times out)."""
    pieces: list[bytes] = []
    ts: list[int] = []
    eth = P0_MAC + H1_MAC + b"\x08\x00"
    for d in range(datagrams):
        size = int(rng.choice([600, 1500, 2900, 4000, 9000]))
        mtu = int(rng.choice([576, 1000, 1500]))
        step = (mtu - 20) & ~7
        dst = [10, 0, int(rng.choice([2, 3])), 2]
        payload = rng.integers(0, 256, size - 20, dtype=np.uint8).tobytes()
        frags = []
        for off in range(0, size - 20, step):
            chunk = payload[off: off + step]
            more = 0x2000 if off + step < size - 20 else 0
            hdr = bytearray(20)
            hdr[0], hdr[8], hdr[9] = 0x45, 64, 17
            hdr[2:4] = (20 + len(chunk)).to_bytes(2, "big")
            hdr[4:6] = (d & 0xFFFF).to_bytes(2, "big")
            hdr[6:8] = ((off >> 3) | more).to_bytes(2, "big")
            hdr[12:16], hdr[16:20] = bytes([10, 0, 1, 2]), bytes(dst)
            set_ip_checksum(hdr)
            frags.append(eth + bytes(hdr) + chunk)
        how = rng.random()
        if how < 0.3:
            frags = [frags[i] for i in rng.permutation(len(frags))]
        elif how < 0.4 and len(frags) > 1:
            del frags[int(rng.integers(len(frags)))]
        start = int(times(rng, 1)[0])
        pieces += frags
        ts += [start + 1000 * k for k in range(len(frags))]
    return Frames.of(pieces, np.array(ts, np.int64))


def captures(seed: int, frames: int, folder: Path) -> None:
    rng = np.random.default_rng(seed)
    n = max(frames // 4, 1)
    p0 = hostile(rng, n).cat(imix(rng, n)).cat(fragments(rng, max(n // 20, 1)))
    p0.write(folder / "in" / "p0.pcap")
    imix(rng, n, reverse=True).write(folder / "in" / "p1.pcap")
    PcapFileWriter(folder / "in" / "p2.pcap").close()  # a quiet port: the header only


@dataclass
class Outcome:
    workers: int
    batch: int
    status: int | None  # None: killed at the deadline (a hang)
    seconds: float
    problems: list[str] = field(default_factory=list)


def replay(folder: Path, workers: int, batch: int, timeout: float) -> Outcome:
    from conftest import TOPOLOGY

    (folder / "out").mkdir(exist_ok=True)
    for old in (folder / "out").glob("*.pcap"):
        old.unlink()
    config = folder / f"router-{workers}w.toml"
    config.write_text(TOPOLOGY.format(workers=workers, batch=batch, reassembly="full",
                                      datapath="compiled"))
    t0 = time.monotonic()
    # a socket of its own: the default one may be another engine's
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--json", "--socket",
                             str(folder / "fwd.sock"), str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        status: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        status = None
    o = Outcome(workers, batch, status, round(time.monotonic() - t0, 2))
    (folder / f"stderr-{workers}w.txt").write_text(err)
    if status is None:
        o.problems.append(f"no exit within {timeout:.0f} s (hang)")
        return o
    if status != 0:
        o.problems.append(f"exit status {status}: {err.strip().splitlines()[-1:]}")
    if "Traceback" in err:
        o.problems.append("a traceback on stderr")
    try:
        doc = json.loads(out)
    except ValueError:
        o.problems.append("no JSON counters on stdout")
        return o
    if not doc["accounting"]["balanced"]:
        o.problems.append(f"accounting not balanced: {doc['accounting']}")
    pool = doc.get("pool")
    if not pool or pool["free"] != pool["size"]:
        o.problems.append(f"pool not whole: {pool}")
    for p in ("p0", "p1", "p2"):
        f = folder / "out" / f"{p}.pcap"
        if f.exists():
            shutil.copy(f, folder / f"{p}-{workers}w.pcap")
    return o


def soak_one(seed: int, frames: int, root: Path, timeout: float) -> dict:
    folder = root / f"seed-{seed}"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    captures(seed, frames, folder)
    rng = np.random.default_rng(seed + 1_000_003)
    outcomes = [replay(folder, w, int(rng.choice(BATCHES)), timeout) for w in WORKERS]
    problems = [f"{o.workers} worker(s), batch {o.batch}: {p}" for o in outcomes
                for p in o.problems]
    if not problems:
        for p in ("p0", "p1", "p2"):
            a, b = (folder / f"{p}-{w}w.pcap" for w in WORKERS)
            if a.exists() != b.exists() or (a.exists() and a.read_bytes() != b.read_bytes()):
                problems.append(f"{p}: the outputs of 1 and 2 workers differ")
    return {"seed": seed, "ok": not problems, "problems": problems,
            "runs": [asdict(o) for o in outcomes]}


def soak(runs: int, frames: int, seed: int, timeout: float,
         keep: Path | None = None) -> dict:
    """`runs` seeds from `seed` on; failing folders are copied to `keep`."""
    results = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fwd-soak-") as tmp:
        for s in range(seed, seed + runs):
            r = soak_one(s, frames, Path(tmp), timeout)
            results.append(r)
            print(f"seed {s}: {'ok' if r['ok'] else 'FAILED'} "
                  + " ".join(f"{x['workers']}w/b{x['batch']} {x['seconds']} s"
                             for x in r["runs"])
                  + "".join(f"\n    {p}" for p in r["problems"]), flush=True)
            if not r["ok"] and keep is not None:
                shutil.copytree(Path(tmp) / f"seed-{s}", keep / f"seed-{s}",
                                dirs_exist_ok=True)
            shutil.rmtree(Path(tmp) / f"seed-{s}", ignore_errors=True)
    failed = [r for r in results if not r["ok"]]
    return {"runs": runs, "frames": frames, "first_seed": seed,
            "seconds": round(time.monotonic() - t0, 1), "failed": len(failed),
            "failures": failed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="seeds (each: 1 and 2 workers)")
    ap.add_argument("--frames", type=int, default=40_000, help="frames a seed, about")
    ap.add_argument("--seed", type=int, default=1, help="the first seed")
    ap.add_argument("--timeout", type=float, default=180.0, help="a replay's deadline, s")
    ap.add_argument("--keep", type=Path, default=Path("soak-failures"),
                    help="where failing runs' folders are kept")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args(argv)
    summary = soak(args.runs, args.frames, args.seed, args.timeout, args.keep)
    print(f"{summary['runs'] - summary['failed']} of {summary['runs']} seeds ok "
          f"in {summary['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
