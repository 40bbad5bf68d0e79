"""The engine on AF_PACKET against Linux kernel forwarding: same lab, same run, same
generator (issue 5).

    h1 10.0.1.2 ── eth0 ═ veth ═ p0 ┤ router namespace ├ p1 ═ veth ═ eth0 ── h2 10.0.2.2

The lab is `engine/cli/lab.py`'s (`fwd lab up`). Each repetition measures every mode, one
after the other, on the same namespaces:

- `engine-1w`: `fwd run` with one worker, the worker pinned to the router CPU;
- `engine-2w`: two workers, one per CPU (worker 0 shares the generator's CPU);
  both at `--batch` frames per port and pass (default 2048); `engine-1w-b256` (any
  `engine-<N>w-b<B>`) runs with batch B instead, e.g. configs/lab.toml's 256;
  options follow as `+name` or `+name=value` (`engine-1w-b2048+tx_vnet=0`):
  `+together` keeps engine-1w's control process and slow path on the router CPU
  (by default they move to the generator's CPU once started, see Pinning), `+sg`
  turns scatter-gather on on the router-side veths while the engine runs, and any
  other is an AF_PACKET driver option passed in FWD_AFPACKET
  (engine/io/afpacket.py bench_knobs: fanout, offloads, qdisc_bypass, busy_poll_us,
  tx_vnet, tx_mode, retire_ms, ring_blocks, block_size, tx_frames);
- `kernel`: the router namespace forwards itself (addresses 10.0.1.1/24 and 10.0.2.1/24
  on p0/p1, the engine's MACs, `ip_forward=1`), no RPS: everything runs on the CPU
  that sends, the generator's;
- `kernel-rps`: the same with RPS on p0 and p1 (`rps_cpus` = the router CPU), so that
  the forwarding work moves off the generator's CPU as the engine's does.

and in each mode three tests:

- `udp64` / `udp1500`: trafgen sends 60-byte frames (64 on a wire with the FCS) or
  1,514-byte frames (1,500-byte IP packets) of UDP, 256 flows (source ports 1024-1279),
  h1 → h2 as fast as it can for `--seconds`; what h1's eth0 sent and h2's eth0
  received is read from the interface counters (`ip -j -s link`) around a window that
  starts `--warmup` seconds after the generator;
- `tcp`: one iperf3 TCP stream h1 → h2 for `--seconds` (after a 1 s omitted
  ramp-up unless `--quick`), the receiver's Gbit/s; a stalled iperf3 session is
  recorded and run once more (see `tcp_test`).

h2 takes the UDP flood on a socket that never reads (`--h2 discard`, the default):
without a listener h2 would route and rate-limit an ICMP port unreachable for every
datagram, on the router's CPU (veth runs h2's receive there), in every mode alike.
The engine runs from a copy of engine/ taken when the run starts, so that all its
repetitions run one version of the code; the JSON names the commit it came from.

Pinning (2 CPUs): the generator (trafgen, iperf3 client and server) on CPU 0, by
inheritance: this script pins itself there first, so that no generator needs moving
(a `taskset -c 0` started from an unpinned parent hung in the kernel's
affine_move_task here, a few times, while the engine ran on both CPUs); the router
on CPU 1 (the engine's processes with `taskset`, the kernel's forwarding with RPS).
engine-1w's control process and slow path, which only idle in these tests but wake
~1,000 times a second each, are moved to CPU 0 once the engine runs (as DPDK keeps
its main lcore off the workers' cores): with them on CPU 1 the worker got 0.66 of
it and forwarded 1,063 kpps, alone 0.97 and 1,135 kpps, forwarding all trafgen
sent (which then sends less: they take ~15 % of its CPU).
veth does its receive work on the sending CPU: the kernel's copy of a frame
into the engine's RX ring (tpacket_rcv) runs on CPU 0 in the generator's send, and
the engine's transmit carries h2's receive on the engine's CPU, as the kernel
router's transmit does on its CPU.

Next hops: `--neighbours arp` (the default) lets the engine and the kernel resolve
h1/h2 by ARP, so that the engine's runs go through its neighbour cache;
`--neighbours static` gives both fixed entries ([[neighbor]] in the engine's config,
`ip neigh ... nud permanent` in the hosts and the kernel router).

Needs root, iproute2, trafgen (Debian: netsniff-ng), iperf3, taskset. Writes JSON to
perf/results/lab-<date>-vm.json (or --json) and prints medians and engine/kernel
ratios. Temporarily sets net.core.wmem_default to 8 MiB (restored at the end): with
a smaller socket send budget trafgen's TX ring stalls ("Flushing TX_RING failed").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.cli.lab import ROUTER_VETH_MACS, Lab, down, existing_namespaces, up  # noqa: E402

MODES = ("engine-1w", "engine-2w", "kernel", "kernel-rps")
ENGINE_MODE = re.compile(
    r"engine-(?P<workers>[12])w(?:-b(?P<batch>\d+))?(?P<opts>(?:\+[a-z_]+(?:=\w+)?)*)$")
TESTS = ("udp64", "udp1500", "tcp")
ENGINE_MACS = ("02:00:00:00:01:01", "02:00:00:00:02:01")  # configs/lab.toml's
ROUTER_ADDRS = ("10.0.1.1/24", "10.0.2.1/24")
H1_IP, H2_IP = "10.0.1.2", "10.0.2.2"
GEN_CPU, ROUTER_CPU = 0, 1
FRAME = {"udp64": 60, "udp1500": 1514}  # bytes without the FCS
UDP_PORTS = (1024, 1279)  # source ports: 256 flows, for fanout/RPS hashing
UDP_DPORT = 9
WMEM_DEFAULT = 8 << 20
TOOLS = ("ip", "trafgen", "iperf3", "taskset")


class BenchError(RuntimeError):
    """A mode could not be set up or measured."""


def missing() -> str | None:
    """Why this benchmark cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET, sysctls)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return (f"needs {', '.join(absent)} (Debian: iproute2 netsniff-ng iperf3 "
                "util-linux)")
    if (os.cpu_count() or 1) < 2:
        return "needs 2 CPUs (generator and router pinned apart)"
    return None


# ---------------------------------------------------------------- shell helpers


def run(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise BenchError(f"`{' '.join(args)}` failed: {(r.stderr or r.stdout).strip()}")
    return r


def nsexec(ns: str, *args: str, check: bool = True,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)


def sysctl(ns: str | None, key: str, value: str) -> None:
    cmd = ("sysctl", "-q", "-w", f"{key}={value}")
    if ns is None:
        run(*cmd)
    else:
        nsexec(ns, *cmd)


def mac_of(ns: str, dev: str) -> str:
    return json.loads(run("ip", "-j", "-n", ns, "link", "show", dev).stdout)[0]["address"]


def counters(lab: Lab) -> tuple[float, dict[str, dict[str, int]]]:
    """(monotonic time, {"h1": eth0 stats, "h2": eth0 stats, "p0": ..., "p1": ...}):
    one shell reads all four, so the window's ends are read alike."""
    script = (f"ip -j -s -n {lab.host('h1')} link show eth0; "
              f"ip -j -s -n {lab.host('h2')} link show eth0; "
              f"ip -j -s -n {lab.router} link show p0; ip -j -s -n {lab.router} link show p1")
    t0 = time.monotonic()
    out = run("sh", "-c", script).stdout
    t1 = time.monotonic()
    rows = [json.loads(line)[0] for line in out.splitlines() if line.strip()]
    stats = {}
    for name, row in zip(("h1", "h2", "p0", "p1"), rows, strict=True):
        s = row.get("stats64") or row["stats"]
        stats[name] = {"rx_packets": s["rx"]["packets"], "rx_bytes": s["rx"]["bytes"],
                       "rx_dropped": s["rx"]["dropped"], "tx_packets": s["tx"]["packets"],
                       "tx_bytes": s["tx"]["bytes"], "tx_dropped": s["tx"]["dropped"]}
    return (t0 + t1) / 2, stats


def cpu_times() -> dict[int, dict[str, int]]:
    """Per-CPU jiffies from /proc/stat (user, system, softirq, idle, ...)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        head, *vals = line.split()
        if head.startswith("cpu") and head != "cpu":
            out[int(head[3:])] = dict(zip(names, map(int, vals), strict=False))
    return out


def cpu_share(before: dict[int, dict[str, int]], after: dict[int, dict[str, int]]
              ) -> dict[str, dict[str, float]]:
    """Per CPU: the share of the window spent in user, system, softirq, idle."""
    out = {}
    for cpu in sorted(after):
        d = {k: after[cpu][k] - before[cpu].get(k, 0) for k in after[cpu]}
        total = sum(d.values()) or 1
        out[f"cpu{cpu}"] = {k: round(d[k] / total, 3) for k in ("user", "system", "softirq",
                                                                "idle")}
    return out


def proc_cpu(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Per process: (CPU seconds used, seconds waited on a run queue) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        out[name] = ((int(fields[11]) + int(fields[12])) / tick, int(wait_ns) / 1e9)
    return out


# ---------------------------------------------------------------- the modes


@contextmanager
def wmem_default(value: int) -> Iterator[None]:
    """net.core.wmem_default (global: a child namespace sees it read-only), restored."""
    path = Path("/proc/sys/net/core/wmem_default")
    old = path.read_text().strip()
    path.write_text(str(value))
    try:
        yield
    finally:
        path.write_text(old)


def static_neighbours_on_hosts(lab: Lab) -> None:
    for host, gw, mac in (("h1", "10.0.1.1", ENGINE_MACS[0]), ("h2", "10.0.2.1", ENGINE_MACS[1])):
        run("ip", "-n", lab.host(host), "neigh", "replace", gw, "lladdr", mac, "dev", "eth0",
            "nud", "permanent")


DISCARD = """\
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the minimum: every datagram overflows
s.bind(("0.0.0.0", {port}))
print("bound", flush=True)
while True:
    time.sleep(3600)
"""


@contextmanager
def h2_discard(lab: Lab, port: int) -> Iterator[None]:
    """A UDP socket on h2 that never reads: the flood ends in its full receive queue
    (Udp: RcvbufErrors) instead of making h2 route and rate-limit an ICMP port
    unreachable per datagram, work that would run on the router's CPU (veth hands
    h2's receive to the sending CPU) in every mode alike."""
    proc = subprocess.Popen(["ip", "netns", "exec", lab.host("h2"), sys.executable, "-c",
                             DISCARD.format(port=port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "bound":
            raise BenchError(f"h2 discard socket: {proc.stderr.read() if proc.stderr else ''}")
        yield
    finally:
        stop_group(proc, signal.SIGTERM)


def rps(lab: Lab, mask: str) -> None:
    for port in ("p0", "p1"):
        nsexec(lab.router, "sh", "-c",
               f"echo {mask} > /sys/class/net/{port}/queues/rx-0/rps_cpus")


class KernelRouter:
    """The router namespace forwarding by itself, with the engine's addresses and MACs."""

    def __init__(self, lab: Lab, *, rps_on: bool, host_macs: dict[str, str], static: bool):
        self.lab, self.rps_on, self.host_macs, self.static = lab, rps_on, host_macs, static
        self.workers: dict[str, int] = {}

    def start(self) -> None:
        r = self.lab.router
        for port, mac, addr in zip(("p0", "p1"), ENGINE_MACS, ROUTER_ADDRS, strict=True):
            run("ip", "-n", r, "link", "set", port, "address", mac)
            run("ip", "-n", r, "addr", "add", addr, "dev", port)
            sysctl(r, f"net.ipv4.conf.{port}.arp_ignore", "0")
        sysctl(r, "net.ipv4.conf.all.arp_ignore", "0")
        if self.static:
            for port, ip, host in (("p0", H1_IP, "h1"), ("p1", H2_IP, "h2")):
                run("ip", "-n", r, "neigh", "replace", ip, "lladdr", self.host_macs[host],
                    "dev", port, "nud", "permanent")
        rps(self.lab, format(1 << ROUTER_CPU, "x") if self.rps_on else "0")
        sysctl(r, "net.ipv4.ip_forward", "1")

    def stop(self) -> dict[str, Any]:
        """Back to the lab's engine setup: no forwarding, no addresses, ARP ignored."""
        r = self.lab.router
        sysctl(r, "net.ipv4.ip_forward", "0")
        rps(self.lab, "0")
        sysctl(r, "net.ipv4.conf.all.arp_ignore", "8")
        for port, mac in zip(("p0", "p1"), ROUTER_VETH_MACS, strict=True):
            run("ip", "-n", r, "addr", "flush", "dev", port)
            run("ip", "-n", r, "neigh", "flush", "dev", port)
            sysctl(r, f"net.ipv4.conf.{port}.arp_ignore", "8")
            run("ip", "-n", r, "link", "set", port, "address", mac)
        return {}

    def stats(self) -> dict[str, Any]:
        return {}


ENGINE_CONFIG = """\
# written by perf/bench_lab.py
[engine]
workers = {workers}
batch = {batch}
netns = "{netns}"
control_socket = "{sock}"

[[port]]
name = "p0"
driver = "afpacket"
iface = "p0"
mac = "{mac0}"
mtu = 1500
addresses = ["10.0.1.1/24"]

[[port]]
name = "p1"
driver = "afpacket"
iface = "p1"
mac = "{mac1}"
mtu = 1500
addresses = ["10.0.2.1/24"]
{neighbours}"""


class EngineRouter:
    """`fwd run` in the router namespace, pinned with taskset, stopped with SIGTERM."""

    def __init__(self, lab: Lab, workdir: Path, *, workers: int, batch: int,
                 host_macs: dict[str, str], static: bool, nice: int = 0,
                 source: Path = ROOT, split: bool = False, sg: bool = False,
                 knobs: str = ""):
        self.lab, self.workers_n, self.nice, self.source = lab, workers, nice, source
        self.split, self.sg, self.knobs = split, sg, knobs
        self.sock = workdir / f"fwd-{workers}w.sock"
        self.config = workdir / f"engine-{workers}w.toml"
        neighbours = ""
        if static:
            neighbours = "".join(
                f'\n[[neighbor]]\nip = "{ip}"\nmac = "{host_macs[h]}"\nport = "{p}"\n'
                for ip, h, p in ((H1_IP, "h1", "p0"), (H2_IP, "h2", "p1")))
        self.config.write_text(ENGINE_CONFIG.format(
            workers=workers, batch=batch, netns=lab.router, sock=self.sock,
            mac0=ENGINE_MACS[0], mac1=ENGINE_MACS[1], neighbours=neighbours))
        # one worker: everything on the router CPU; two: worker i on CPU i (the
        # supervisor pins worker i to the i-th CPU it may use), the slow path on CPU 0
        self.cpus = str(ROUTER_CPU) if workers == 1 else f"{GEN_CPU},{ROUTER_CPU}"
        self.proc: subprocess.Popen[str] | None = None
        self.workers: dict[str, int] = {}
        self.out = workdir / f"engine-{workers}w.out"
        self.err = workdir / f"engine-{workers}w.err"

    def request_stats(self) -> dict[str, Any]:
        from engine.cli.client import request

        reply = request(str(self.sock), {"cmd": "stats"}, timeout=5.0)
        if not reply.get("ok"):
            raise BenchError(f"engine stats: {reply.get('error')}")
        return reply["stats"]

    def scatter_gather(self, on: bool) -> None:
        """`+sg`: scatter-gather on the router-side veths while the engine runs (the
        lab turns it off): a TX ring frame is an skb of page fragments, which a
        device without SG has copied into one linear buffer (validate_xmit_skb)."""
        for port in ("p0", "p1"):
            nsexec(self.lab.router, "ethtool", "-K", port, "sg", "on" if on else "off")

    def start(self, timeout: float = 180) -> None:  # a cold numba cache compiles ~1 min
        if self.sg:
            self.scatter_gather(True)
        if self.sock.exists():
            self.sock.unlink()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [*niced(self.nice), "taskset", "-c", self.cpus, sys.executable, "-m",
                 "engine.cli", "run", "--json", str(self.config)],
                cwd=self.source, stdout=out, stderr=err, text=True,
                env={**os.environ, "FWD_AFPACKET": self.knobs})
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"fwd run exited {self.proc.returncode}: "
                                 f"{self.err.read_text().strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise BenchError(f"fwd run did not start within {timeout:.0f} s: "
                                 f"{self.err.read_text().strip()[-2000:]}")
            if self.sock.exists():
                try:
                    s = self.request_stats()
                except Exception:  # not listening yet
                    s = None
                if s and all(w["loops"] for w in s["workers"]):
                    self.workers = {w["agent"]: w["pid"] for w in s["workers"]}
                    if self.split:
                        self.move_helpers()
                    return
            time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        return self.request_stats()

    def move_helpers(self) -> None:
        """engine-1w: the control process and the slow path (every thread) to the
        generator's CPU, leaving the router CPU to the worker: idle, they still wake
        ~1,000 times a second, and on the worker's CPU each wake-up preempts it."""
        for agent, pid in self.workers.items():
            if agent.startswith("worker"):
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), {GEN_CPU})

    def stop(self) -> dict[str, Any]:
        """SIGTERM; the engine drains and prints its counters (JSON)."""
        assert self.proc is not None
        if self.sg:
            self.scatter_gather(False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError("fwd run did not stop within 30 s of SIGTERM") from None
        if self.proc.returncode != 0:
            raise BenchError(f"fwd run exited {self.proc.returncode}: "
                             f"{self.err.read_text().strip()}")
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def snapshot_engine(workdir: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the engine package to run every repetition from: one version of the
    code for the whole run, even while the working tree changes. Returns its root
    (`python -m engine.cli` there imports the copy first) and what it was copied from."""
    root = workdir / "src"
    # numba's cache (__pycache__/*.nbi, *.nbc) comes along: its index checks the source
    # file's mtime and size, which copytree keeps; a cold cache compiles for minutes
    # on a loaded 2-CPU machine (the engine then does not start in time)
    shutil.copytree(ROOT / "engine", root / "engine", ignore=shutil.ignore_patterns("*.pyc"))
    git = ("git", "-C", str(ROOT))
    head = run(*git, "rev-parse", "HEAD", check=False).stdout.strip()
    dirty = run(*git, "status", "--porcelain", "--", "engine", check=False).stdout.split("\n")
    return root, {"git_head": head, "uncommitted": sorted(x[3:] for x in dirty if x.strip())}


# ---------------------------------------------------------------- the tests


TRAFGEN_CONFIG = """\
{{
  eth(da={dst}, sa={src}, type=0x0800),
  ipv4(saddr={h1}, daddr={h2}, ttl=64, df),
  udp(sport=dinc({p0}, {p1}), dport={dport}),
  fill(0x00, {payload})
}}
"""


def trafgen_config(workdir: Path, test: str, h1_mac: str) -> Path:
    """UDP h1 → h2 addressed to the router's p0 MAC (the engine's, also the kernel
    router's in its modes); trafgen fills in lengths and both checksums."""
    path = workdir / f"{test}.trafgen"
    path.write_text(TRAFGEN_CONFIG.format(dst=ENGINE_MACS[0], src=h1_mac, h1=H1_IP, h2=H2_IP,
                                          p0=UDP_PORTS[0], p1=UDP_PORTS[1], dport=UDP_DPORT,
                                          payload=FRAME[test] - 14 - 20 - 8))
    return path


def stop_group(proc: subprocess.Popen[Any], sig: int = signal.SIGINT,
               timeout: float = 5) -> None:
    """Signal a generator's whole process group (trafgen forks its worker)."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def niced(nice: int) -> list[str]:
    """The command prefix that runs a benchmark process at niceness `nice`."""
    return ["nice", "-n", str(nice)] if nice else []


def udp_test(lab: Lab, router: Any, cfg: Path, seconds: float, warmup: float,
             nice: int = 0) -> dict[str, Any]:
    gen = subprocess.Popen(
        [*niced(nice), "ip", "netns", "exec", lab.host("h1"), "trafgen",
         "-o", "eth0", "-i", str(cfg), "-P", "1", "-Q", "-C"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        time.sleep(warmup)
        if gen.poll() is not None:
            raise BenchError(f"trafgen exited {gen.returncode}: {gen.stdout.read()}")
        t0, c0 = counters(lab)
        cpu0, proc0 = cpu_times(), proc_cpu(router.workers)
        time.sleep(seconds)
        t1, c1 = counters(lab)
        cpu1, proc1 = cpu_times(), proc_cpu(router.workers)
        if gen.poll() is not None:
            raise BenchError(f"trafgen exited {gen.returncode} early: {gen.stdout.read()}")
    finally:
        stop_group(gen)
    out = gen.stdout.read() if gen.stdout else ""
    if "Flushing TX_RING failed" in out:
        raise BenchError("trafgen: Flushing TX_RING failed (net.core.wmem_default?)")
    span = t1 - t0
    d = {k: {f: c1[k][f] - c0[k][f] for f in c1[k]} for k in c1}
    sent, got = d["h1"]["tx_packets"], d["h2"]["rx_packets"]
    return {
        "seconds": round(span, 3),
        "sent_pps": sent / span,
        "rx_pps": got / span,
        "rx_gbps": d["h2"]["rx_bytes"] * 8 / span / 1e9,
        "loss": 1 - got / sent if sent else None,
        "router_p0_rx_dropped": d["p0"]["rx_dropped"],
        "cpu": cpu_share(cpu0, cpu1),
        "procs": {n: {"cpu": round((proc1[n][0] - proc0[n][0]) / span, 3),
                      "runq_wait": round((proc1[n][1] - proc0[n][1]) / span, 3)}
                  for n in proc1 if n in proc0},
    }


STALL = "connection stalled"


def tcp_test(lab: Lab, router: Any, seconds: float, omit: int, nice: int = 0,
             attempts: int = 2) -> dict[str, Any]:
    """One iperf3 TCP measurement; a session that stalls (seen with the engine's two
    workers: iperf3's server stops answering on its control connection at the start
    or end of a test, while every frame was forwarded) is counted and run again."""
    stalls = 0
    for _ in range(attempts):
        m = iperf3_once(lab, router, seconds, omit, nice)
        if STALL not in m.get("error", ""):
            break
        stalls += 1
    m["stalls"] = stalls
    return m


def iperf3_once(lab: Lab, router: Any, seconds: float, omit: int,
                nice: int = 0) -> dict[str, Any]:
    server = subprocess.Popen(
        [*niced(nice), "ip", "netns", "exec", lab.host("h2"), "iperf3", "-s", "-1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        result: dict[str, Any] = {}
        for _ in range(20):  # until the server listens
            time.sleep(0.2)
            cpu0, proc0 = cpu_times(), proc_cpu(router.workers)
            try:
                r = run(*niced(nice), "ip", "netns", "exec", lab.host("h1"), "iperf3", "-c",
                        H2_IP, "-t", str(int(seconds)), "-O", str(omit), "--connect-timeout",
                        "3000", "-J", check=False, timeout=seconds + omit + 5)
            except subprocess.TimeoutExpired:
                result = {"error": f"the iperf3 client did not finish within "
                                   f"{seconds + omit + 5:.0f} s ({STALL})"}
                break
            cpu1, proc1 = cpu_times(), proc_cpu(router.workers)
            try:
                result = json.loads(r.stdout)
            except json.JSONDecodeError:
                result = {"error": r.stderr.strip() or r.stdout.strip()}
            if "refused" not in str(result.get("error", "")):
                break
    finally:
        stop_group(server, signal.SIGTERM)
    if "error" in result:
        return {"seconds": seconds, "gbps": None, "error": f"iperf3: {result['error']}"}
    end = result["end"]
    span = seconds + omit
    return {
        "seconds": seconds,
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits"),
        "cpu": cpu_share(cpu0, cpu1),
        "procs": {n: {"cpu": round((proc1[n][0] - proc0[n][0]) / span, 3),
                      "runq_wait": round((proc1[n][1] - proc0[n][1]) / span, 3)}
                  for n in proc1 if n in proc0},
    }


def ping_through(lab: Lab, tries: int = 3) -> None:
    """Both hosts reach each other through the router (and ARP has resolved)."""
    for _ in range(tries):
        a = nsexec(lab.host("h1"), "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", H2_IP,
                   check=False)
        b = nsexec(lab.host("h2"), "ping", "-n", "-q", "-c", "1", "-W", "2", H1_IP, check=False)
        if a.returncode == 0 and b.returncode == 0:
            return
    raise BenchError(f"h1 cannot ping h2 through the router: {a.stdout.strip()}")


def engine_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the engine did during one test: per-port drops, drop reasons, per-worker
    batches and busy time."""
    ports = {p: {k: after["ports"][p][k] - before["ports"][p].get(k, 0)
                 for k in ("rx_packets", "rx_drops", "tx_packets", "tx_drops")}
             for p in after["ports"]}
    drops = {k: v - before.get("drop", {}).get(k, 0) for k, v in after.get("drop", {}).items()
             if v - before.get("drop", {}).get(k, 0)}
    workers = {}
    prev = {w["agent"]: w for w in before["workers"]}
    for w in after["workers"]:
        b = prev.get(w["agent"])
        if b is None or not w["agent"].startswith("worker"):
            continue
        n = w["batches"] - b["batches"]
        frames = w["rx_frames"] - b["rx_frames"]
        workers[w["agent"]] = {
            "rx_frames": frames, "batches": n,
            "frames_per_batch": round(frames / n, 1) if n else 0,
            "busy_s": round((w["busy_ns"] - b["busy_ns"]) / 1e9, 3),
            "us_per_batch": round((w["busy_ns"] - b["busy_ns"]) / n / 1e3, 1) if n else 0,
            "loops": w["loops"] - b["loops"],
        }
    return {"ports": ports, "drops": drops, "workers": workers}


# ---------------------------------------------------------------- the run


def measure_mode(lab: Lab, mode: str, workdir: Path, args: argparse.Namespace,
                 host_macs: dict[str, str], trafgen: dict[str, Path],
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    static = args.neighbours == "static"
    router: EngineRouter | KernelRouter
    engine = ENGINE_MODE.match(mode)
    if engine:
        opts = [o for o in engine["opts"].split("+") if o]
        router = EngineRouter(lab, workdir, workers=int(engine["workers"]),
                              batch=int(engine["batch"] or args.batch), source=args.source,
                              host_macs=host_macs, static=static, nice=args.nice,
                              split=engine["workers"] == "1" and "together" not in opts,
                              sg="sg" in opts,
                              knobs=",".join(o for o in opts if o not in ("together", "sg")))
    else:
        router = KernelRouter(lab, rps_on=mode == "kernel-rps", host_macs=host_macs,
                              static=static)
    rows = []
    router.start()
    try:
        ping_through(lab)
        for test in args.tests:
            before = router.stats()
            if test == "tcp":
                m = tcp_test(lab, router, args.seconds, 0 if args.quick else 1, args.nice)
                stalled = f" ({m['stalls']} stalled session(s) run again)" if m["stalls"] else ""
                if m["gbps"] is None:  # recorded, left out of the medians
                    log(f"  {mode:<14} {test:<8} FAILED: {m['error']}")
                else:
                    log(f"  {mode:<14} {test:<8} {m['gbps']:7.2f} Gbit/s{stalled}")
            else:
                m = udp_test(lab, router, trafgen[test], args.seconds, args.warmup, args.nice)
                loss = "n/a" if m["loss"] is None else f"{m['loss']:.1%}"
                log(f"  {mode:<14} {test:<8} {m['rx_pps'] / 1e3:8.1f} kpps received "
                    f"({m['sent_pps'] / 1e3:.1f} sent, loss {loss}), "
                    f"{m['rx_gbps']:.2f} Gbit/s")
            if isinstance(router, EngineRouter):
                m["engine"] = engine_delta(before, router.stats())
            rows.append({"mode": mode, "test": test, **m})
    finally:
        if isinstance(router, EngineRouter):
            try:
                final = router.stop()
            finally:
                router.kill()
            for row in rows:
                row["engine_balanced"] = final["accounting"]["balanced"]
            if not final["accounting"]["balanced"]:
                raise BenchError(f"{mode}: the engine's accounting does not balance: "
                                 f"{final['accounting']}")
        else:
            router.stop()
    return rows


def summarise(rows: list[dict[str, Any]], modes: list[str], tests: list[str]
              ) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for mode in modes:
        for test in tests:
            got = [r for r in rows if r["mode"] == mode and r["test"] == test]
            if not got:
                continue
            keys = ("gbps",) if test == "tcp" else ("rx_pps", "sent_pps", "rx_gbps", "loss")
            s = {}
            for k in keys:
                vals = [r[k] for r in got if r.get(k) is not None]
                if vals:
                    s[k] = {"median": statistics.median(vals), "min": min(vals),
                            "max": max(vals), "n": len(vals)}
            failed = sum(1 for r in got if r.get("error"))
            if failed:
                s["failed"] = failed
            stalls = sum(r.get("stalls", 0) for r in got)
            if stalls:
                s["stalled_sessions"] = stalls
            summary.setdefault(mode, {})[test] = s
    return summary


def ratios(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Engine / kernel per test, paired by repetition (the modes of one repetition run
    minutes apart at most, so a slow spell of the shared machine hits both sides of a
    ratio) and then the median over repetitions: each engine mode against each kernel
    mode and against the better kernel mode of the same repetition ("kernel-best").
    The issue's goals take the best engine mode with a result in at least half of the
    repetitions."""
    key_of = {"udp64": "rx_pps", "udp1500": "rx_pps", "tcp": "gbps"}
    runs = sorted({r["run"] for r in rows})
    value = {(r["mode"], r["test"], r["run"]): r.get(key_of[r["test"]]) for r in rows}
    out: dict[str, Any] = {}
    for test in TESTS:
        engines = [m for m in summary if m.startswith("engine")]
        kernels = [m for m in ("kernel", "kernel-rps") if m in summary]
        if not engines or not kernels:
            continue
        r: dict[str, Any] = {}
        for e in engines:
            for k in (*kernels, "kernel-best"):
                per = []
                for n in runs:
                    ev = value.get((e, test, n))
                    kv = (max((value.get((m, test, n)) or 0) for m in kernels)
                          if k == "kernel-best" else value.get((k, test, n)))
                    if ev is not None and kv:
                        per.append(ev / kv)
                r[f"{e}/{k}"] = round(statistics.median(per), 3) if per else None
                if k == "kernel-best":
                    r[f"{e}/{k} n"] = len(per)
        out[test] = r
    goals = {}
    need = -(-len(runs) // 2)
    for test, name, target in (("udp64", "udp64 engine >= kernel best (ratio >= 1.0)", 1.0),
                               ("tcp", "tcp engine >= half the kernel's (ratio >= 0.5)", 0.5)):
        r = out.get(test, {})
        eligible = {e: r[f"{e}/kernel-best"] for e in summary if e.startswith("engine")
                    and r.get(f"{e}/kernel-best") is not None
                    and r.get(f"{e}/kernel-best n", 0) >= need}
        if eligible:
            best = max(eligible, key=lambda e: eligible[e])
            goals[name] = {"mode": best, "ratio": eligible[best],
                           "met": eligible[best] >= target}
    out["goals"] = goals
    return out


def table(summary: dict[str, Any], rat: dict[str, Any]) -> str:
    def cell(mode: str, test: str, key: str, scale: float, fmt: str) -> str:
        v = summary.get(mode, {}).get(test, {}).get(key)
        return format(v["median"] * scale, fmt) if v else "-"

    def tcp_failed(mode: str) -> str:
        s = summary.get(mode, {}).get("tcp", {})
        ok = s.get("gbps", {}).get("n", 0)
        return f" ({ok} of {ok + s['failed']} runs)" if s.get("failed") else ""

    lines = [f"{'mode':<15}{'64B kpps':>10}{'sent':>9}{'loss':>7}{'1500B kpps':>12}"
             f"{'Gbit/s':>8}{'loss':>7}{'TCP Gbit/s':>12}"]
    for mode in summary:
        lines.append(
            f"{mode:<15}{cell(mode, 'udp64', 'rx_pps', 1e-3, '.1f'):>10}"
            f"{cell(mode, 'udp64', 'sent_pps', 1e-3, '.1f'):>9}"
            f"{cell(mode, 'udp64', 'loss', 100, '.1f'):>6}%"
            f"{cell(mode, 'udp1500', 'rx_pps', 1e-3, '.1f'):>12}"
            f"{cell(mode, 'udp1500', 'rx_gbps', 1, '.2f'):>8}"
            f"{cell(mode, 'udp1500', 'loss', 100, '.1f'):>6}%"
            f"{cell(mode, 'tcp', 'gbps', 1, '.2f'):>12}{tcp_failed(mode)}")
    lines.append("")
    lines.append("engine / kernel (per repetition, median):")
    for test, r in rat.items():
        if test == "goals":
            continue
        pairs = ", ".join(f"{k} {v:.2f}" for k, v in r.items()
                          if "/" in k and not k.endswith(" n") and v is not None)
        lines.append(f"  {test:<8} {pairs}")
    for goal, g in rat.get("goals", {}).items():
        lines.append(f"goal: {goal}: {g['mode']} {g['ratio']:.2f} "
                     f"{'met' if g['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 repetition of 1 s per test, short warm-up")
    ap.add_argument("--seconds", type=float, default=None,
                    help="measured seconds per test (default 3; --quick 1)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of generator before the UDP window (default 0.7; --quick 0.3)")
    ap.add_argument("--runs", type=int, default=None, help="repetitions (default 5; --quick 1)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"some of {','.join(MODES)}, or engine-<1|2>w-b<batch>")
    ap.add_argument("--tests", default=",".join(TESTS), help=f"subset of {','.join(TESTS)}")
    ap.add_argument("--batch", type=int, default=2048,
                    help="the engine's [engine] batch: frames per port and pass (default "
                         "2048: 0.65 µs of router CPU a 64-byte packet against 0.84 at 1024)")
    ap.add_argument("--neighbours", choices=("arp", "static"), default="arp",
                    help="how the routers learn h1/h2's MACs (default: ARP)")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of the generator, iperf3 and the engine (e.g. -10 on a "
                         "machine where other work competes for the CPUs)")
    ap.add_argument("--h2", choices=("discard", "stack"), default="discard",
                    help="discard: a UDP socket on h2 that never reads takes the flood "
                         "(no ICMP errors); stack: no listener, h2 answers port unreachable "
                         "(rate-limited) and routes each error first")
    ap.add_argument("--prefix", default="fwdbench", help="namespace prefix of the lab")
    ap.add_argument("--json", type=Path, default=None,
                    help="output (default perf/results/lab-<date>-vm.json)")
    ap.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                    help="measure nothing: summarise the runs recorded in FILE again "
                         "(and rewrite its summary and ratios)")
    args = ap.parse_args(argv)
    if args.from_json:
        return resummarise(args.from_json)
    if args.quick:
        args.seconds = args.seconds or 1.0
        args.warmup = args.warmup if args.warmup is not None else 0.3
        args.runs = args.runs or 1
    args.seconds = args.seconds or 3.0
    args.warmup = args.warmup if args.warmup is not None else 0.7
    args.runs = args.runs or 5
    args.modes = [m for m in args.modes.split(",") if m]
    args.tests = [t for t in args.tests.split(",") if t]
    for m in args.modes:
        if m not in MODES and not ENGINE_MODE.match(m):
            ap.error(f"unknown mode {m!r} (expected some of {', '.join(MODES)}, or "
                     "engine-<1|2>w[-b<batch>][+option[=value]...])")
    for t in args.tests:
        if t not in TESTS:
            ap.error(f"unknown test {t!r} (expected some of {', '.join(TESTS)})")
    why = missing()
    if why:
        print(f"bench_lab: {why}", file=sys.stderr)
        return 2
    out_path = args.json or ROOT / "perf" / "results" / f"lab-{dt.date.today()}-vm.json"

    lab = Lab(args.prefix)
    there = existing_namespaces() & set(lab.namespaces)
    if there:
        print(f"bench_lab: namespaces {', '.join(sorted(there))} exist already "
              f"(`fwd lab down --prefix {args.prefix}`)", file=sys.stderr)
        return 2
    # a SIGTERM (a timeout, a test runner) unwinds like Ctrl-C: the lab goes and
    # net.core.wmem_default is restored
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    load_before = os.getloadavg()
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {GEN_CPU})  # the generators inherit it
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_lab-") as tmp, wmem_default(WMEM_DEFAULT):
        workdir = Path(tmp)
        try:
            args.source, source = snapshot_engine(workdir)
            up(args.prefix)
            host_macs = {h: mac_of(lab.host(h), "eth0") for h in ("h1", "h2")}
            if args.neighbours == "static":
                static_neighbours_on_hosts(lab)
            trafgen = {t: trafgen_config(workdir, t, host_macs["h1"]) for t in args.tests
                       if t != "tcp"}
            with h2_discard(lab, UDP_DPORT) if args.h2 == "discard" else nullcontext():
                for rep in range(args.runs):
                    # rotate the order: no mode always runs first (or after another)
                    k = rep % len(args.modes)
                    order = args.modes[k:] + args.modes[:k]
                    print(f"run {rep + 1}/{args.runs}", flush=True)
                    for mode in order:
                        for row in measure_mode(lab, mode, workdir, args, host_macs, trafgen,
                                                lambda s: print(s, flush=True)):
                            rows.append({"run": rep, **row})
        finally:
            down(args.prefix)
            os.sched_setaffinity(0, affinity)
    summary = summarise(rows, args.modes, args.tests)
    rat = ratios(rows, summary)
    result = {
        "benchmark": "bench_lab",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "cpu_model": _cpu_model(), "python": platform.python_version()},
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                 if k != "source"},
        "engine_source": source,
        "neighbours": args.neighbours,
        "h2": args.h2,
        "pinning": {
            "generator": f"CPU {GEN_CPU} (trafgen -P 1; iperf3 client and server)",
            "engine-1w": f"CPU {ROUTER_CPU}: worker 0; slow path and control process moved "
                         f"to CPU {GEN_CPU} once started (CPU {ROUTER_CPU} too with +together)",
            "engine-2w": f"worker 0 on CPU {GEN_CPU} (with the generator), worker 1 on CPU "
                         f"{ROUTER_CPU}; slow path CPU {GEN_CPU}; control process either",
            "kernel": f"CPU {GEN_CPU}: veth receive, forwarding and h2's receive all run on "
                      "the sending CPU",
            "kernel-rps": f"RPS on p0 and p1 to CPU {ROUTER_CPU}: forwarding and h2's "
                          "receive there",
        },
        "frames": {"udp64": "60 bytes + FCS = 64", "udp1500": "1514 bytes (1500-byte IP)"},
        "flows": f"UDP source ports {UDP_PORTS[0]}-{UDP_PORTS[1]}",
        "elapsed_s": round(time.monotonic() - started, 1),
        "summary": summary,
        "ratios": rat,
        "runs": rows,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(table(summary, rat))
    print(f"\nwrote {out_path} ({result['elapsed_s']:.0f} s)")
    return 0


def resummarise(path: Path) -> int:
    """Summary, ratios and table again from the rows of an earlier run's JSON."""
    result = json.loads(path.read_text())
    rows = result["runs"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    tests = [t for t in TESTS if any(r["test"] == t for r in rows)]
    result["summary"] = summarise(rows, modes, tests)
    result["ratios"] = ratios(rows, result["summary"])
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["summary"], result["ratios"]))
    print(f"\nrewrote {path}")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
