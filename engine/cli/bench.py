"""`fwd bench`: every benchmark under perf/ in one run, its peers side by side.

The measurements live in the perf/ scripts (each one runs its own peer or baseline in
the same run, repeats, and writes JSON); this module only orchestrates them. Each
script runs as a subprocess with `--json PATH` (and `--quick` for the smoke run); the
results are gathered into one document with the machine's description, printed as a
table (engine rate, peer rate, ratio, median ± spread), written to
perf/results/<date>-<host>.json and plotted (matplotlib, Agg backend) next to it.

perf/ is found next to the engine package (a source checkout or an editable
install); $FWD_PERF_DIR names it otherwise. A benchmark or peer that cannot run here
(no root, no DPDK, no trafgen, no pytricia, no matplotlib) is reported as skipped with
the reason; a benchmark that fails is reported with the end of its output, and the
others still run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Row = dict[str, Any]

# exit status of bench_lab.py / bench_l3fwd.py when a prerequisite is missing
EXIT_MISSING = 2


def perf_dir() -> Path:
    """The perf/ directory: $FWD_PERF_DIR, else next to the engine package."""
    env = os.environ.get("FWD_PERF_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "perf"


def machine() -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), cores, kernel, Python and numpy versions, load."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "kernel": platform.release(), "python": platform.python_version(),
            "numpy": np.__version__, "host": socket.gethostname(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def spread_of(d: dict[str, Any]) -> float | None:
    """(max - min) / median from a {median, min, max} summary."""
    if not d or not d.get("median"):
        return None
    return (d["max"] - d["min"]) / d["median"]


def row(bench: str, name: str, unit: str, value: float | None, spread: float | None = None,
        peer: str | None = None, peer_value: float | None = None,
        peer_spread: float | None = None, ratio: float | None = None, *, key: bool = True,
        note: str = "", **extra: Any) -> Row:
    """One line of the table: the engine's figure, its peer's, and their ratio (the
    engine's over the peer's, unless `ratio` is given: e.g. a median of per-run
    ratios). `key`: shown on the terminal (every row goes into the JSON)."""
    if ratio is None and value is not None and peer_value:
        ratio = value / peer_value
    return {"bench": bench, "name": name, "unit": unit, "value": value, "spread": spread,
            "peer": peer, "peer_value": peer_value, "peer_spread": peer_spread,
            "ratio": ratio, "key": key, "note": note, **extra}


# --- what each script's JSON says, as rows ------------------------------------------------


def rows_fastpath(d: dict[str, Any]) -> list[Row]:
    out = []
    batches = sorted(d["batch"], key=int)
    for b in batches:
        r = d["batch"][b]
        if "compiled_worker" in r:  # [engine] datapath = "compiled" against the numpy stages
            out.append(row("fastpath", f"compiled worker, batch {b}", "Mpps",
                           r["compiled_worker"] / 1e6, r["compiled_worker_spread"],
                           "numpy worker", r["worker"] / 1e6, r["worker_spread"],
                           batch=int(b), kind="compiled"))
        out.append(row("fastpath", f"worker, batch {b}", "Mpps", r["worker"] / 1e6,
                       r["worker_spread"], "noop (touch the rows)", r["noop"] / 1e6,
                       r["noop_spread"], batch=int(b), kind="worker"))
        out.append(row("fastpath", f"stages only, batch {b}", "Mpps", r["stages"] / 1e6,
                       r["stages_spread"], key=False, batch=int(b), kind="stages"))
        out.append(row("fastpath", f"worker, learned neighbours, batch {b}", "Mpps",
                       r["learned_worker"] / 1e6, r["learned_worker_spread"],
                       "worker, static neighbours", r["worker"] / 1e6, r["worker_spread"],
                       key=b in ("256", "1024"), batch=int(b), kind="learned"))
    for b, ns in sorted(d.get("stages_ns", {}).items(), key=lambda kv: int(kv[0])):
        for s in ("rcv", "route", "forward", "rewrite"):
            out.append(row("fastpath", f"stage {s}, batch {b}", "ns/pkt", ns[s], ns[s + "_spread"],
                           key=b == "256", batch=int(b), kind="stage", stage=s))
        out.append(row("fastpath", f"whole worker, batch {b}", "ns/pkt", ns["worker"],
                       key=b == "256", batch=int(b), kind="stage", stage="worker"))
    for b, by_n in sorted(d.get("scaling", {}).get("compiled", {}).items(),
                          key=lambda kv: int(kv[0])):
        if "1" in by_n:
            for n, r in sorted(by_n.items(), key=lambda kv: int(kv[0])):
                if n != "1":
                    out.append(row("fastpath", f"compiled, {n} workers, batch {b}", "Mpps",
                                   r["pps"] / 1e6, r["spread"], "1 worker",
                                   by_n["1"]["pps"] / 1e6, by_n["1"]["spread"],
                                   key=b == "256", batch=int(b), workers=int(n),
                                   kind="compiled-scaling"))
    one = d["workers"].get("1")
    for n, rate in sorted(d["workers"].items(), key=lambda kv: int(kv[0])):
        out.append(row("fastpath", f"{n} worker(s), batch 256", "Mpps", rate / 1e6,
                       d.get("workers_spread", {}).get(n), "1 worker" if n != "1" else None,
                       one / 1e6 if n != "1" else None, workers=int(n), kind="scaling"))
    return out


def rows_fib(d: dict[str, Any]) -> list[Row]:
    out = [row("fib", f"bulk load {d['prefixes']:,} prefixes", "s", d["build_s"],
               peer="pytricia" if "pytricia_build_s" in d else None,
               peer_value=d.get("pytricia_build_s"))]
    for kind, r in d["lookup"].items():
        if "pytricia_per_s" in r:
            out.append(row("fib", f"lookups ({kind}), batch {d['batch']}", "M/s",
                           r["fib_per_s"] / 1e6, r["fib_spread"], "pytricia (C trie)",
                           r["pytricia_per_s"] / 1e6, r["pytricia_spread"], kind="lookup"))
        else:
            out.append(row("fib", f"lookups ({kind}), batch {d['batch']}", "M/s",
                           r["fib_per_s"] / 1e6, r["fib_spread"], "pytricia", kind="lookup",
                           note="peer skipped: pytricia not installed (pip install -e '.[perf]')"))
    u, a = d["updates_with_reader"], d["updates_alone"]
    out.append(row("fib", "updates with a reader running", "k/s", u["median"] / 1e3, u["spread"],
                   "updates alone", a["median"] / 1e3, a["spread"], kind="updates",
                   note="one add/delete call per change"))
    if "batched_updates_with_reader" in d:  # FibWriter.apply batches (a routing feed)
        u, a = d["batched_updates_with_reader"], d["batched_updates_alone"]
        out.append(row("fib", f"updates with a reader running, apply() of {d['update_batch']}",
                       "k/s", u["median"] / 1e3, u["spread"], "updates alone",
                       a["median"] / 1e3, a["spread"], kind="updates-batched"))
    return out


def rows_slowpath(d: dict[str, Any]) -> list[Row]:
    sp = d.get("spread", {})
    out = []
    floor = d.get("worker_parts_alone_per_s", {})
    for case, rate in d.get("worker_per_s", {}).items():
        if case in floor:
            out.append(row("slowpath", f"worker: {case}", "k/s", rate / 1e3,
                           sp.get("worker", {}).get(case), "reasm + fragment() alone",
                           floor[case] / 1e3, sp.get("worker_parts_alone", {}).get(case)))
        else:
            out.append(row("slowpath", f"worker: {case}", "k/s", rate / 1e3,
                           sp.get("worker", {}).get(case)))
    for section, key, unit in (("reassembly", "reassembly_fragments_per_s", "kfrag/s"),
                               ("fragmentation", "fragmentation_fragments_per_s", "kfrag/s"),
                               ("options", "options_packets_per_s", "k/s")):
        for i, (case, rate) in enumerate(d.get(key, {}).items()):
            out.append(row("slowpath", f"{section}: {case}", unit, rate / 1e3,
                           sp.get(section, {}).get(case), key=i == 0))
    return out


def rows_afpacket(d: dict[str, Any]) -> list[Row]:
    out = []
    for mix in ("64", "imix"):
        r = d[f"drain_{mix}"]
        peer = "numpy/numpy" if "numpy/numpy" in r else None
        best = "c/c" if "c/c" in r else "numpy/numpy"
        out.append(row("afpacket", f"rx_burst(256) drain, {mix} ({best})", "Mfps", r[best] / 1e6,
                       None, peer and "walk/copy in numpy", peer and r[peer] / 1e6,
                       mix=mix, kind="drain"))
    live = d.get("live_64")
    if live and "c/c" in live:
        out.append(row("afpacket", "live trafgen → veth → rx_burst, 64 (c/c)", "Mfps",
                       live["c/c"]["rx_fps"] / 1e6, mix="64", kind="live"))
    tx = d["tx_64"]
    best = "ring" if "ring" in tx else "ring-numpy"
    out.append(row("afpacket", f"tx_burst(256), 64 ({best})", "Mfps", tx[best]["peer_rx_fps"] / 1e6,
                   None, "one send() per frame", tx["send"]["peer_rx_fps"] / 1e6, kind="tx"))
    return out


def rows_dpdk(d: dict[str, Any]) -> list[Row]:
    return [row("dpdk", f"{r['device']} {r['mode']}, burst {r['batch']}", "Mfps", r["mpps"],
                r["spread"], key=r["mode"] == "rx+tx" and r["batch"] in (256, 1024),
                batch=r["batch"], device=r["device"], kind=r["mode"])
            for r in d["rows"]]


def rows_pcap(d: dict[str, Any]) -> list[Row]:
    out = [row("pcap", f"peak RSS of fwd run, {r['frames']:,} frames "
                       f"({r['capture_bytes'] / 2**20:.0f} MiB capture)", "MiB",
               r["peak_rss_bytes"] / 2**20, frames=r["frames"]) for r in d.get("rss", [])]
    for mix, by_workers in d.get("rates", {}).items():
        for w, r in by_workers.items():
            whole = r.get("whole_run_rates", 0)
            note = (f"{whole} of {len(r['runs'])} runs: whole-run rate, start-up included "
                    "(runs too short to tell it apart)" if whole else "")
            out.append(row("pcap", f"fwd run, {mix}, {w} worker(s), batch {d['batch']}", "Mfps",
                           r["fps"] / 1e6, r["spread"], mix=mix, workers=int(w),
                           mean_frame_bytes=r["mean_frame_bytes"], note=note))
    return out


LAB_FRAME = {"udp64": 64, "udp1500": 1518}


def rows_pcap_l3fwd(d: dict[str, Any]) -> list[Row]:
    return [row("pcap-l3fwd", f"pcap → pcap, {mix}: fwd run ({d['workers']} worker) vs l3fwd",
                "Mpps", m["engine_mpps"], None, "l3fwd (1 lcore, net_pcap files)",
                m["l3fwd_mpps"], None, m["ratio"], mix=mix, workers=d["workers"])
            for mix, m in d["mixes"].items()]


def rows_lab(d: dict[str, Any]) -> list[Row]:
    out = []
    summary, ratios = d["summary"], d["ratios"]
    for test in ("udp64", "udp1500", "tcp"):
        key, unit, scale = ("gbps", "Gbit/s", 1) if test == "tcp" else ("rx_pps", "Mpps", 1e-6)
        engines = [m for m in summary if m.startswith("engine")]
        kernels = [m for m in summary if m.startswith("kernel")]
        for e in engines:
            ev = summary[e].get(test, {}).get(key)
            for k in kernels:
                kv = summary[k].get(test, {}).get(key)
                if not ev and not kv:
                    continue
                failed = summary[e].get(test, {}).get("failed")
                out.append(row(
                    "lab", f"{test}: {e} vs {k}", unit, ev and ev["median"] * scale,
                    spread_of(ev), k, kv and kv["median"] * scale, spread_of(kv),
                    ratios.get(test, {}).get(f"{e}/{k}"), test=test, mode=e, peer_mode=k,
                    frame_bytes=LAB_FRAME.get(test),
                    note=f"{failed} run(s) failed" if failed else ""))
    return out


def rows_l3fwd(d: dict[str, Any]) -> list[Row]:
    out = []
    mean = {m: sum((s + 4) * w for s, w in sizes) / sum(w for _, w in sizes)
            for m, sizes in d["mixes"].items()}
    for r in d["ratios"]:
        mix, e = r["mix"], r["engine"]
        ev = d["summary"][mix][e]
        for peer in ("l3fwd", "testpmd"):
            pv = d["summary"][mix][peer]
            out.append(row("l3fwd", f"{mix}: {e} vs {peer}", "Mpps", ev["mpps"], ev["spread"],
                           peer if peer == "l3fwd" else "testpmd io", pv["mpps"], pv["spread"],
                           r[f"engine/{peer}"], mix=mix, engine=e, peer_name=peer,
                           mean_frame_bytes=mean[mix]))
    return out


# --- the benchmarks -------------------------------------------------------------------------


def _needs_root() -> str | None:
    return None if os.geteuid() == 0 else "needs root"


def _needs_dpdk() -> str | None:
    if shutil.which("pkg-config") is None:
        return "no pkg-config (to find DPDK)"
    ok = subprocess.run(["pkg-config", "--exists", "libdpdk"], capture_output=True).returncode
    return None if ok == 0 else "DPDK not installed (pkg-config libdpdk)"


@dataclass
class Bench:
    name: str
    script: str
    what: str
    full: Callable[[int], list[str]]  # runs -> arguments
    quick: list[str]
    rows: Callable[[dict[str, Any]], list[Row]]
    estimate_s: tuple[float, float]  # (quick, full at 5 runs), for the progress bar
    needs: Callable[[], str | None] = lambda: None
    sizes: str = "64-byte frames"


def benches(lab_prefix: str) -> list[Bench]:
    return [
        Bench("fastpath", "bench_fastpath.py",
              "fast path in memory: per-stage ns/packet, batch sweep, 1..N workers",
              lambda n: ["--runs", str(n), "--seconds", "0.5"], ["--quick"], rows_fastpath,
              (6, 150),
              sizes="64-byte frames only (the fast path reads header rows: size-independent)"),
        Bench("fib", "bench_fib.py", "FIB, 1M prefixes: lookups and updates vs pytricia",
              lambda n: ["--clock", "cpu", "--repeat", str(n)], ["--quick", "--clock", "cpu"],
              rows_fib, (8, 150), sizes="addresses, no frames"),
        Bench("slowpath", "bench_slowpath.py",
              "slow path: reassembly, fragment(), options, the worker end to end",
              lambda n: ["--runs", str(n)], ["--quick"], rows_slowpath, (5, 90),
              sizes="fragments of 1,500 bytes; options on 64-byte packets"),
        Bench("afpacket", "bench_afpacket.py", "AF_PACKET driver alone on a veth pair",
              lambda n: ["--runs", str(n), "--seconds", "1"], ["--quick", "--skip-live"],
              rows_afpacket, (10, 90), needs=_needs_root,
              sizes="64-byte frames and IMIX (drain, walk); TX and live 64-byte"),
        Bench("dpdk", "bench_dpdk.py", "DPDK binding alone: burst I/O through the pool",
              lambda n: ["--runs", str(n)], ["--quick"], rows_dpdk, (5, 45),
              needs=_needs_dpdk, sizes="64-byte frames only"),
        Bench("pcap", "bench_pcap.py", "fwd run on pcap ports, end to end",
              lambda n: ["--runs", str(n)], ["--quick"], rows_pcap, (6, 120),
              sizes="64-byte and IMIX 7:4:1 of 64/570/1518"),
        Bench("pcap-rss", "bench_pcap.py", "fwd run's peak memory against capture size",
              lambda n: ["--rss", "1000000,8000000"], ["--rss", "200000,1000000"], rows_pcap,
              (10, 60), sizes="64-byte frames"),
        Bench("pcap-l3fwd", "bench_pcap_l3fwd.py",
              "pcap file → pcap file: fwd run vs l3fwd on net_pcap files (same frames)",
              lambda n: ["--runs", str(n)], ["--quick"], rows_pcap_l3fwd, (30, 300),
              needs=_needs_dpdk, sizes="64-byte and IMIX 7:4:1 of 64/570/1518"),
        Bench("lab", "bench_lab.py",
              "AF_PACKET in the namespace lab vs Linux forwarding (same lab, same run)",
              lambda n: ["--runs", str(n), "--prefix", lab_prefix],
              ["--quick", "--prefix", lab_prefix, "--modes", "engine-1w,kernel"],
              rows_lab, (22, 360), needs=_needs_root,
              sizes="64-byte and 1,518-byte UDP, TCP (no IMIX: trafgen sends one size)"),
        Bench("l3fwd", "bench_l3fwd.py", "DPDK vdevs: the engine vs l3fwd vs testpmd io",
              lambda n: ["--runs", str(n)], ["--quick", "--mixes", "64"], rows_l3fwd,
              (25, 500),
              needs=_needs_dpdk, sizes="64-byte, IMIX 7:4:1 of 64/570/1518, 1518-byte"),
    ]


NAMES = ("fastpath", "fib", "slowpath", "afpacket", "dpdk", "pcap", "pcap-rss", "pcap-l3fwd",
         "lab", "l3fwd")


@dataclass
class Outcome:
    name: str
    what: str
    sizes: str
    status: str  # ok | skipped | failed
    reason: str = ""
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "what": self.what, "sizes": self.sizes,
                "status": self.status, "reason": self.reason,
                "seconds": round(self.seconds, 1), "command": self.command,
                "rows": self.rows, "raw": self.raw}


def run_one(b: Bench, perf: Path, quick: bool, runs: int, workdir: Path,
            tick: Callable[[float], None], timeout: float) -> Outcome:
    out = Outcome(b.name, b.what, b.sizes, "ok")
    why = b.needs()
    if why:
        out.status, out.reason = "skipped", why
        return out
    script = perf / b.script
    if not script.exists():
        out.status, out.reason = "skipped", f"{script} not found"
        return out
    json_path = workdir / f"{b.name}.json"
    log_path = workdir / f"{b.name}.log"
    args = b.quick if quick else b.full(runs)
    cmd = [sys.executable, str(script), *args, "--json", str(json_path)]
    out.command = [Path(sys.executable).name, f"perf/{b.script}", *args, "--json", "FILE"]
    env = dict(os.environ)
    root = str(perf.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            tick(elapsed)
            if elapsed > timeout:
                os.killpg(proc.pid, 15)  # its own session: the script and its children
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                break
            time.sleep(0.2)
    out.seconds = time.monotonic() - t0
    text = log_path.read_text(errors="replace")
    tail = "\n".join(text.strip().splitlines()[-6:])
    if out.seconds > timeout:
        out.status, out.reason = "failed", f"timed out after {timeout:.0f} s: {tail}"
    elif proc.returncode == EXIT_MISSING and not json_path.exists():
        out.status, out.reason = "skipped", tail.strip().splitlines()[-1] if tail else "missing"
    elif proc.returncode != 0 or not json_path.exists():
        out.status, out.reason = "failed", f"exit status {proc.returncode}: {tail}"
    else:
        try:
            out.raw = json.loads(json_path.read_text())
            out.rows = b.rows(out.raw)
        except (ValueError, KeyError, TypeError) as err:
            out.status, out.reason = "failed", f"unexpected JSON: {err!r}"
    return out


def run_suite(only: Iterable[str] | None = None, quick: bool = False, runs: int = 5,
              out_dir: Path | None = None, plots: bool = True,
              console: Any = None) -> dict[str, Any]:
    """Run the benchmarks (all, or `only`), print the table, write the JSON and plots;
    return the document."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # not a terminal (a log, a test): wide enough for the table's columns
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    perf = perf_dir()
    if not perf.is_dir():
        raise FileNotFoundError(f"no perf/ directory at {perf} (set FWD_PERF_DIR)")
    out_dir = out_dir or perf / "results"
    chosen = benches(f"bs{os.getpid() % 100000}")
    if only:
        wanted = set(only)
        chosen = [b for b in chosen if b.name in wanted]
    started = dt.datetime.now()
    doc: dict[str, Any] = {
        "what": "fwd bench" + (" --quick" if quick else ""),
        "date": started.isoformat(timespec="seconds"), "quick": quick,
        "runs": 1 if quick else runs, "machine": machine(), "benchmarks": {}}
    timeout = 300.0 if quick else 3600.0
    with tempfile.TemporaryDirectory(prefix="fwd-bench-") as tmp, Progress(
            SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            console=console, transient=False) as progress:
        tasks = {b.name: progress.add_task(b.name, total=100, status="waiting")
                 for b in chosen}
        for b in chosen:
            task = tasks[b.name]
            est = b.estimate_s[0] if quick else b.estimate_s[1] * runs / 5

            def tick(elapsed: float, task: int = task, est: float = est) -> None:
                # the scripts do not report progress: time against the usual duration,
                # held below 100 % until the script ends
                progress.update(task, completed=min(95.0, 100 * elapsed / est),
                                status="running")

            progress.update(task, status="running")
            o = run_one(b, perf, quick, runs, Path(tmp), tick, timeout)
            progress.update(task, completed=100,
                            status=o.status if o.status == "ok" else f"[yellow]{o.status}")
            doc["benchmarks"][b.name] = o.as_dict()
    doc["elapsed_s"] = round((dt.datetime.now() - started).total_seconds(), 1)
    doc["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{started.date()}-{doc['machine']['host']}" + ("-quick" if quick else "")
    json_path = out_dir / f"{stem}.json"
    doc["plots"] = {}
    if plots:
        try:
            doc["plots"] = write_plots(doc, out_dir, stem)
        except ImportError as err:
            doc["plots"] = {"skipped": f"matplotlib not installed ({err.name}): "
                            "pip install -e '.[bench]'"}
    else:
        doc["plots"] = {"skipped": "--no-plots"}
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(doc, console)
    console.print(f"wrote {json_path}")
    if doc["plots"].get("skipped"):
        console.print(f"plots skipped: {doc['plots']['skipped']}")
    else:
        console.print("plots: " + ", ".join(str(out_dir / p) for p in doc["plots"].values()))
    doc["json_path"] = str(json_path)
    return doc


# --- the table ------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    return f"{v:,.0f}" if a >= 100 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def _pm(spread: float | None) -> str:
    return "" if spread is None else f" ±{spread * 50:.0f}%"  # half the (max-min)/median


def print_table(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    m = doc["machine"]
    title = (f"fwd bench{' --quick' if doc['quick'] else ''}: {m['cpu']}, {m['cores']} cores, "
             f"Linux {m['kernel']}, Python {m['python']}, numpy {m['numpy']}; load "
             f"{m['load_average'][0]:.1f} → {m.get('load_average_end', [0])[0]:.1f}")
    t = Table(title=title, caption="value: median of the runs ± half its spread "
              "((max - min) / median); ratio: engine / peer (a median of per-run ratios "
              "for lab and l3fwd)", show_lines=False)
    for col, just in (("bench", "left"), ("measurement", "left"), ("unit", "left"),
                      ("engine", "right"), ("peer", "left"), ("peer value", "right"),
                      ("ratio", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for name, b in doc["benchmarks"].items():
        if b["status"] != "ok":
            t.add_row(name, f"[yellow]{b['status']}: {b['reason']}", "", "", "", "", "")
            continue
        first = True
        for r in b["rows"]:
            if not r["key"]:
                continue
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3g}"
            t.add_row(name if first else "", r["name"] + (f" [dim]({r['note']})" if r["note"]
                                                          else ""),
                      r["unit"], _fmt(r["value"]) + _pm(r["spread"]), r["peer"] or "",
                      _fmt(r["peer_value"]) + _pm(r["peer_spread"]) if r["peer"] else "",
                      ratio)
            first = False
        t.add_section()
    console.print(t)


# --- the plots ------------------------------------------------------------------------------


def _rows(doc: dict[str, Any], bench: str) -> list[Row]:
    b = doc["benchmarks"].get(bench)
    return b["rows"] if b and b["status"] == "ok" else []


def write_plots(doc: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    """PNGs: throughput vs batch size (and ns/packet per stage), vs workers, vs packet
    size, and engine/peer ratios. Returns {plot: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = doc["machine"]
    sub = f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}"
    written: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out_dir / f"{stem}-{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[name] = path.name

    fp = _rows(doc, "fastpath")
    if fp:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for kind, label in (("worker", "worker, static neighbours"),
                            ("learned", "worker, learned neighbours"),
                            ("stages", "fast_path() stages only")):
            pts = sorted((r["batch"], r["value"], r["spread"] or 0) for r in fp
                         if r.get("kind") == kind)
            if pts:
                xs, ys, sp = zip(*pts, strict=True)
                ax.errorbar(xs, ys, yerr=[y * s / 2 for y, s in zip(ys, sp, strict=True)],
                            marker="o", capsize=3, label=label)
        noop = sorted((r["batch"], r["peer_value"]) for r in fp if r.get("kind") == "worker")
        if noop:
            ax.plot(*zip(*noop, strict=True), "k--", marker=".", label="noop (floor)")
        dpdk = [r for r in _rows(doc, "dpdk") if r.get("kind") == "rx+tx"]
        for dev in sorted({r["device"] for r in dpdk}):
            pts = sorted((r["batch"], r["value"]) for r in dpdk if r["device"] == dev)
            ax.plot(*zip(*pts, strict=True), ":", marker="s", label=f"DPDK {dev} rx+tx")
        ax.set(xscale="log", yscale="log", xlabel="batch (packets)", ylabel="Mpps, one core",
               title="throughput vs batch size (64-byte frames)")
        ax.set_xticks([32, 64, 128, 256, 512, 1024], ["32", "64", "128", "256", "512", "1024"])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        stages = [r for r in fp if r.get("kind") == "stage" and r["stage"] != "worker"]
        batches = sorted({r["batch"] for r in stages})
        bottom = [0.0] * len(batches)
        for s in ("rcv", "route", "forward", "rewrite"):
            vals = [next((r["value"] for r in stages if r["batch"] == b and r["stage"] == s), 0)
                    for b in batches]
            ax2.bar([str(b) for b in batches], vals, bottom=bottom, label=s)
            bottom = [x + y for x, y in zip(bottom, vals, strict=True)]
        whole = {r["batch"]: r["value"] for r in fp if r.get("stage") == "worker"}
        if whole:
            ax2.plot([str(b) for b in batches], [whole.get(b, 0) for b in batches], "k_",
                     markersize=30, mew=2, label="whole worker")
        ax2.set(xlabel="batch (packets)", ylabel="ns per packet",
                title="ns per packet per stage (VPP-style clocks/packet)")
        ax2.legend(fontsize=8)
        fig.suptitle(sub, fontsize=8)
        save(fig, "batch")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = False
    scaling = sorted((r["workers"], r["value"]) for r in fp if r.get("kind") == "scaling")
    if scaling:
        ax.plot(*zip(*scaling, strict=True), marker="o", label="fast path in memory, batch 256")
        ax.plot([w for w, _ in scaling], [scaling[0][1] * w for w, _ in scaling], "k:",
                label="linear")
        drawn = True
    for mix in ("64", "imix"):
        pts = sorted((r["workers"], r["value"]) for r in _rows(doc, "pcap") if r["mix"] == mix)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="s", label=f"fwd run on pcap, {mix}")
            drawn = True
    l3 = {}
    for r in _rows(doc, "l3fwd"):
        if r["peer_name"] == "l3fwd" and r["engine"].endswith("b1024"):
            l3.setdefault(r["mix"], []).append((int(r["engine"].split()[1][:-1]), r["value"]))
    for mix, pts in l3.items():
        if len({w for w, _ in pts}) > 1:
            ax.plot(*zip(*sorted(pts), strict=True), marker="^", label=f"DPDK vdevs, {mix}")
            drawn = True
    lab = {}
    for r in _rows(doc, "lab"):
        if r["test"] == "udp64" and r["value"] and r["mode"] in ("engine-1w", "engine-2w"):
            lab[int(r["mode"][7])] = r["value"]
    if len(lab) > 1:
        ax.plot(*zip(*sorted(lab.items()), strict=True), marker="v", label="AF_PACKET lab, 64")
        drawn = True
    if drawn:
        ax.set(xlabel="workers", ylabel="Mpps", title="throughput vs workers", yscale="log")
        ax.set_xticks(sorted({x for line in ax.get_lines() for x in line.get_xdata()}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(sub, fontsize=8)
        save(fig, "workers")
    else:
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    series: dict[str, list[tuple[float, float]]] = {}
    for r in _rows(doc, "l3fwd"):
        if r["engine"] == "engine 1w b1024" or r["engine"] == "engine 1w b256" and not any(
                x["engine"] == "engine 1w b1024" for x in _rows(doc, "l3fwd")):
            series.setdefault(f"DPDK: {r['engine']}", []).append(
                (r["mean_frame_bytes"], r["value"]))
            series.setdefault(f"DPDK: {r['peer']}", []).append(
                (r["mean_frame_bytes"], r["peer_value"]))
    for r in _rows(doc, "lab"):
        if r["test"] != "tcp" and r["value"] and r["mode"] == "engine-1w":
            series.setdefault("AF_PACKET lab: engine-1w", []).append((r["frame_bytes"],
                                                                      r["value"]))
            series.setdefault(f"AF_PACKET lab: {r['peer_mode']}", []).append(
                (r["frame_bytes"], r["peer_value"]))
    for r in _rows(doc, "pcap"):
        if r["workers"] == 1:
            series.setdefault("pcap: fwd run, 1 worker", []).append(
                (r["mean_frame_bytes"], r["value"]))
    for label, pts in series.items():
        pts = sorted(set(pts))
        ax.plot(*zip(*pts, strict=True), marker="o", linestyle="--" if "engine" not in label
                and "fwd" not in label else "-", label=label)
    if series:
        ax.set(xscale="log", yscale="log", xlabel="mean frame size on the wire (bytes; IMIX "
               "= 354)", ylabel="Mpps", title="throughput vs packet size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.suptitle(sub, fontsize=8)
        save(fig, "packet_size")
    else:
        plt.close(fig)

    ratios = [(f"{r['bench']}: {r['name']}" + ("" if " vs " in r["name"] else f" / {r['peer']}"),
               r["ratio"]) for b in doc["benchmarks"].values() if b["status"] == "ok"
              for r in b["rows"] if r["ratio"] and r["key"] and r["bench"] != "fastpath"
              or r["ratio"] and r.get("kind") == "worker" and r.get("batch") in (256, 1024)]
    if ratios:
        fig, ax = plt.subplots(figsize=(9, 0.3 * len(ratios) + 1.5))
        labels, vals = zip(*ratios, strict=True)
        colors = ["tab:green" if v >= 1 else "tab:red" for v in vals]
        ax.barh(range(len(vals)), vals, color=colors)
        ax.axvline(1.0, color="k", linewidth=0.8)
        ax.set_yticks(range(len(vals)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set(xscale="log", xlabel="engine / peer (log; 1 = as fast)",
               title="engine vs peers, same run")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
        fig.suptitle(sub, fontsize=8)
        save(fig, "peers")
    return written
