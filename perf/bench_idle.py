"""An idle engine, measured in the lab: CPU per process and ping through it, against the
kernel forwarding on the same namespaces, in one run (adaptive polling).

    h1 10.0.1.2 ── eth0 ═ veth ═ p0 ┤ router namespace ├ p1 ═ veth ═ eth0 ── h2 10.0.2.2

Each repetition:

- `engine`: `fwd run` with the lab's config (engine/cli/lab.py `engine_config`, two
  workers, batch 256), ARP warmed by a first ping; then
  - `idle_cpu`: every engine process's CPU share (utime + stime of /proc/PID/stat,
    all its threads) over `--idle-seconds` with no traffic at all;
  - `ping`: `ping -c N -i 0.2` h1 → h2, its median RTT (the engine idles between
    two echoes: the wake-up on a frame is what is measured);
  - `ping_load`: the same while iperf3 sends UDP h1 → h2 at `--load` (a link carrying
    traffic: the latency of a busy worker);
- `kernel`: the router namespace forwards itself (perf/bench_lab.py KernelRouter: the
  engine's addresses and MACs, ip_forward=1), the same two pings.

Prints per repetition and the medians, and writes JSON (perf/results/idle-<date>-vm.json
or --json). Needs root, iproute2, iputils ping, iperf3.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.cli.lab import Lab, down, engine_config, existing_namespaces, up  # noqa: E402
from perf.bench_lab import KernelRouter, mac_of  # noqa: E402

H2_IP = "10.0.2.2"
FWD = [sys.executable, "-m", "engine.cli"]
RTT = re.compile(r"time=([\d.]+) ms")


def ping_rtts(lab: Lab, count: int, interval: float = 0.2) -> list[float]:
    """RTTs (ms) of `count` echoes h1 → h2, in order; lost ones are missing."""
    r = subprocess.run(["ip", "netns", "exec", lab.host("h1"), "ping", "-n", "-c", str(count),
                        "-i", str(interval), "-W", "1", H2_IP],
                       capture_output=True, text=True, timeout=count * interval + 30)
    return [float(x) for x in RTT.findall(r.stdout)]


def proc_ticks(pid: int) -> int:
    """utime + stime of a process (every thread), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU share (percent of one CPU) over `seconds`."""
    tick = os.sysconf("SC_CLK_TCK")
    before = {name: proc_ticks(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {name: proc_ticks(pid) for name, pid in pids.items()}
    took = time.monotonic() - t0
    return {name: round(100 * (after[name] - before[name]) / tick / took, 2) for name in pids}


class Engine:
    """`fwd run` in the router namespace (a subprocess, as in tests/test_lab.py)."""

    def __init__(self, lab: Lab, workdir: Path, workers: int, batch: int):
        self.sock = workdir / "fwd.sock"
        cfg = workdir / "lab.toml"
        cfg.write_text(engine_config(lab, str(self.sock), workers=workers, batch=batch))
        self.err = open(workdir / "fwd.err", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([*FWD, "run", "--json", str(cfg)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fwd run exited {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("fwd run did not start within 180 s")
            s = self.stats() if self.sock.exists() else None
            if s and all(w["loops"] for w in s["workers"]):
                self.pids = {w["agent"]: w["pid"] for w in s["workers"]}
                return
            time.sleep(0.1)

    def stats(self) -> dict[str, Any] | None:
        r = subprocess.run([*FWD, "stats", "--json", "--socket", str(self.sock)], cwd=ROOT,
                           capture_output=True, text=True)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def stop(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=30)
        self.err.close()
        return time.monotonic() - t0


def under_load(lab: Lab, rate: str, seconds: float) -> subprocess.Popen[str]:
    """iperf3 UDP h1 → h2 at `rate` (a server on h2 for one test)."""
    server = subprocess.Popen(["ip", "netns", "exec", lab.host("h2"), "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    time.sleep(0.5)
    client = subprocess.Popen(["ip", "netns", "exec", lab.host("h1"), "iperf3", "-c", H2_IP,
                               "-u", "-b", rate, "-l", "1000", "-t", str(seconds)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    client.server = server  # type: ignore[attr-defined]
    return client


def end_load(client: subprocess.Popen[str]) -> None:
    for p in (client, client.server):  # type: ignore[attr-defined]
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)


def pings(lab: Lab, count: int, load: str) -> dict[str, Any]:
    quiet = ping_rtts(lab, count)
    client = under_load(lab, load, count * 0.2 + 3)
    try:
        time.sleep(1)
        loaded = ping_rtts(lab, count)
    finally:
        end_load(client)
    return {"ping_ms": statistics.median(quiet) if quiet else None, "ping_lost": count - len(quiet),
            "ping_load_ms": statistics.median(loaded) if loaded else None,
            "ping_load_lost": count - len(loaded)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--load", default="50M", help="iperf3 UDP rate during ping_load")
    ap.add_argument("--prefix", default="fwdidle")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    lab = Lab(args.prefix)
    if existing_namespaces() & set(lab.namespaces):
        print(f"bench_idle: lab {args.prefix} exists (`fwd lab down --prefix {args.prefix}`)",
              file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_idle-") as tmp:
        try:
            up(args.prefix)
            host_macs = {h: mac_of(lab.host(h), "eth0") for h in ("h1", "h2")}
            for rep in range(args.runs):
                engine = Engine(lab, Path(tmp), args.workers, args.batch)
                try:
                    ping_rtts(lab, 3)  # ARP, both ways
                    time.sleep(1)
                    cpu = idle_cpu(engine.pids, args.idle_seconds)
                    row = {"run": rep, "mode": "engine", "idle_cpu": cpu, **pings(
                        lab, args.pings, args.load)}
                finally:
                    row_stop = engine.stop()
                row["stop_s"] = round(row_stop, 2)
                print(json.dumps(row), flush=True)
                rows.append(row)
                kernel = KernelRouter(lab, rps_on=False, host_macs=host_macs, static=False)
                kernel.start()
                try:
                    ping_rtts(lab, 3)
                    row = {"run": rep, "mode": "kernel", **pings(lab, args.pings, args.load)}
                finally:
                    kernel.stop()
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            down(args.prefix)
    summary: dict[str, Any] = {}
    for mode in ("engine", "kernel"):
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {k: statistics.median(r[k] for r in mine if r[k] is not None)
                         for k in ("ping_ms", "ping_load_ms")}
        if mode == "engine":
            summary[mode]["idle_cpu"] = {
                name: statistics.median(r["idle_cpu"][name] for r in mine)
                for name in mine[0]["idle_cpu"]}
    e, k = summary["engine"], summary["kernel"]
    summary["ratio"] = {"ping": round(e["ping_ms"] / k["ping_ms"], 2),
                        "ping_load": round(e["ping_load_ms"] / k["ping_load_ms"], 2)}
    print(json.dumps(summary, indent=1))
    out = args.json or ROOT / "perf" / "results" / f"idle-{dt.date.today()}-vm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "bench_idle", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count()},
        "load": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary, "runs": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
