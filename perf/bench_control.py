"""The control socket under load: how long `stats` takes while a replay runs at full
speed and while its outputs are written, and how long SIGTERM takes to stop the engine.

    .venv/bin/python perf/bench_control.py [--frames 3000000] [--workers 1] [--runs 1]
                                           [--interval 0.05] [--stop-during] [--json FILE]

`fwd run --keep-running --socket S` on a capture of `--frames` 64-byte frames
(perf/bench_pcap.py's "64" mix, every frame forwarded); a client asks `stats` every
`--interval` seconds, each request timed from connect to reply (5 s client timeout: a
timeout is counted as 5 s). The latencies are split by phase, from the engine's own
lines on stderr: `replay` (the first answer until the engine says the input is
drained and the outputs written), then `kept` (idle, up). Then SIGTERM, and the time
until the process has exited. `--stop-during`: SIGTERM once half the frames were
received instead (a stop in the middle of a replay).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from bench_pcap import config_text, mix_sizes, write_capture  # noqa: E402

from engine.cli.client import ControlError, request  # noqa: E402

CLIENT_TIMEOUT_S = 5.0
SLOW_S = 0.1  # answers slower than this are listed with their time
KEPT_S = 1.0  # how long the idle engine is asked before SIGTERM


def percentiles(lat: list[float]) -> dict[str, float | int]:
    """p50, p99, max in ms, and the count."""
    if not lat:
        return {"n": 0}
    a = np.array(lat) * 1000
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


def one_run(config: Path, frames: int, interval: float, stop_during: bool) -> dict:
    """One engine: the latencies per phase and the SIGTERM-to-exit time."""
    sock = config.parent / "ctl.sock"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--json",
                             "--keep-running", "--socket", str(sock), str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lines: list[tuple[float, str]] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip()))

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    samples: list[tuple[float, float, int | None]] = []  # (sent, latency, received)
    try:
        deadline = time.monotonic() + 600
        kept_at = None
        while time.monotonic() < deadline:
            t = time.monotonic()
            try:
                received = request(str(sock), {"cmd": "stats"},
                                   timeout=CLIENT_TIMEOUT_S)["stats"]["accounting"]["received"]
                samples.append((t, time.monotonic() - t, int(received)))
            except ControlError as err:
                if samples or "did not" in str(err) or "no reply" in str(err):
                    samples.append((t, min(time.monotonic() - t, CLIENT_TIMEOUT_S), None))
            if proc.poll() is not None:
                raise SystemExit(f"fwd run exited {proc.returncode}: "
                                 + "\n".join(x for _, x in lines[-20:]))
            if stop_during and samples and samples[-1][2] is not None \
                    and samples[-1][2] >= frames // 2:
                break
            if kept_at is None and any("outputs written" in x for _, x in lines):
                kept_at = time.monotonic()
            if kept_at is not None and time.monotonic() - kept_at > KEPT_S:
                break
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    reader.join(5)
    written = next((t for t, x in lines if "outputs written" in x), None)
    replay = [lat for t, lat, _ in samples if written is None or t < written]
    kept = [lat for t, lat, _ in samples if written is not None and t >= written]
    doc = json.loads(out)
    assert doc["accounting"]["balanced"], doc["accounting"]
    return {"replay": percentiles(replay), "kept": percentiles(kept),
            "timeouts": sum(r is None for _, _, r in samples), "sigterm_exit_s": stop_s,
            "received": doc["accounting"]["received"], "exit": proc.returncode,
            # where the slow answers fell: seconds since the first answer, and the
            # engine's lines on the same clock
            "slow": [[round(t - samples[0][0], 2), round(lat, 3)] for t, lat, _ in samples
                     if lat > SLOW_S],
            "lines": [[round(t - samples[0][0], 2), x[:60]] for t, x in lines]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3_000_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--stop-during", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fwd-bench-control-") as tmp:
        work = Path(tmp)
        capture = work / "in.pcap"
        write_capture(capture, mix_sizes("64", args.frames))
        config = config_text(work, capture, args.workers, 256)
        for _ in range(args.runs):
            row = one_run(config, args.frames, args.interval, args.stop_during)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"frames": args.frames, "workers": args.workers,
                                         "load_average": os.getloadavg(), "runs": rows},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
