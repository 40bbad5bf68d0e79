"""The engine against DPDK's own l3fwd and testpmd on the same vdevs (issue 6).

One run measures, interleaved, the same traffic through three forwarders on the same
DPDK virtual devices, and prints the engine's rate as a ratio of each peer's:

  engine   `fwd run` on two dpdk ports (single-process mode: net_pcap keeps its
           libpcap handles per process): by default 1 worker at batch 256 (the
           engine's default) and 1024, and 2 workers at batch 1024 (--engines);
  l3fwd    DPDK's example router, LPM lookup, 1 lcore, built here from the sources
           Debian's `dpdk-doc` installs in /usr/share/dpdk/examples (a temporary copy,
           patched, see `patch_l3fwd`; nothing of it is kept in this repository);
  testpmd  `dpdk-testpmd --forward-mode=io`, 1 forwarding lcore: moves bursts from one
           port to the other without reading them, the I/O-only ceiling.

The devices: per port `net_pcapN,rx_pcap=<file>,infinite_rx=1` and no TX argument.
`infinite_rx` loads the capture into mbufs at start and replays it forever (each RX
burst copies the stored frames into fresh mbufs); a net_pcap port without a TX
argument counts what it is given and frees it. So there is no generator process and
no sink to share the two CPUs with, and all three read the very same frames.

The traffic, written with scapy: port N receives frames from 198.18.N.0/24 to
198.18.(1-N).0/24, one UDP flow per frame (1200 flows a port), TTL 64, addressed to
the device's own MAC. l3fwd's built-in LPM table sends 198.18.M.0/24 out of port M
with destination MAC 02:00:00:00:00:0M; the engine gets routes and static neighbours
saying the same (`engine_config`), so both forward every frame, and the same bytes
(`verify`, run first, compares their outputs with scapy's). Mixes: "64" = 64-byte
frames; "imix" = 7:4:1 of 64/570/1518-byte frames (sizes on the wire with the FCS:
60/566/1514 bytes in the capture), average 353.8 bytes; "1518" = 1518-byte frames
only (1514 in the capture), where copying bytes costs the most.

A rate is forwarded packets per second over a timed window after a warm-up, read from
counters at both ends of the window: the device TX counters (`rte_eth_stats_get`,
asked over DPDK's telemetry socket) for l3fwd and testpmd; the engine's own
`forwarded` counter over its control socket (`fwd stats`), with the device counters
beside it. The CPU time every process and thread used in the window is read from
/proc, and so is what everything else on the machine used meanwhile (/proc/stat): a
window in which other work took more than `--max-others` CPUs (0.5) is measured
again, up to `--retries` (3) times; the least contended attempt is kept, the
others' rates are recorded beside it in the JSON. Each run starts every forwarder
afresh, in rotating order; the table has the median of the runs, and each ratio is
the median of the per-run ratios (the two rates of a ratio are measured seconds
apart, on a machine shared with other work).

EAL runs with `--no-huge` for all three (the engine: `[dpdk] hugepages = "off"`), so
no hugepages are reserved; every EAL runtime directory created is removed at the end.

    .venv/bin/python perf/bench_l3fwd.py [--runs 5] [--seconds 3] [--engines 1x256,2x1024]
        [--json perf/results/dpdk-l3fwd-$(date +%F)-vm.json]
    .venv/bin/python perf/bench_l3fwd.py --quick --json /tmp/x.json   # smoke run, ~30 s
    .venv/bin/python perf/bench_l3fwd.py --from-json FILE             # the tables again
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path("/usr/share/dpdk/examples")
TESTPMD = "dpdk-testpmd"
PORTS = 2
PACKAGES = "dpdk dpdk-dev libdpdk-dev dpdk-doc pkg-config gcc make"
# net_pcap's own MAC for its n-th device: 02 then "pcap" in ASCII, then n
DEVICE_MAC = "02:70:63:61:70:{:02x}"
# l3fwd's default destination MAC out of port n (RTE_ETHER_LOCAL_ADMIN_ADDR + n << 40)
NEXTHOP_MAC = "02:00:00:00:00:{:02x}"
# frame sizes in the capture (without the 4-byte FCS) and their weights
MIXES: dict[str, tuple[tuple[int, int], ...]] = {
    "64": ((60, 1),),
    "imix": ((60, 7), (566, 4), (1514, 1)),
    "1518": ((1514, 1),),
}
# the two spots where l3fwd asks for RX offloads (RTE_ETH_RX_OFFLOAD_CHECKSUM) that no
# vdev has; masked with the device's capabilities, the rest of l3fwd is unchanged
L3FWD_PATCH = (
    ("\t\tif (dev_info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE)\n",
     "\t\tlocal_port_conf.rxmode.offloads &= dev_info.rx_offload_capa;\n"
     "\t\tif (dev_info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE)\n"),
    ("rxq_conf.offloads = port_conf.rxmode.offloads;",
     "rxq_conf.offloads = port_conf.rxmode.offloads & dev_info.rx_offload_capa;"),
)


# a window in which other work took at most this many CPUs counts as quiet
QUIET = 0.25
# what `fwd run` says when its final counters do not balance (exit status 1)
UNBALANCED = "counters do not balance"
# frames l3fwd or testpmd may hold between RX and TX counters (a burst per port, ample)
IN_FLIGHT = 4096
# ... plus what passes between the two counter reads over telemetry (one after the
# other: at testpmd's 44 Mpps, 100 µs between them is 4,400 frames), as a share of
# the window's frames
READ_SKEW = 1e-4


class BenchError(RuntimeError):
    """The benchmark cannot run or a forwarder misbehaved; a message for people."""


# --- prerequisites and the l3fwd build ---------------------------------------------------


def missing(examples: Path = EXAMPLES) -> str | None:
    """Why the benchmark cannot run on this machine, or None."""
    for tool in ("pkg-config", "make", "cc", TESTPMD):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {PACKAGES})"
    if subprocess.run(["pkg-config", "--exists", "libdpdk"]).returncode != 0:
        return f"libdpdk is not known to pkg-config (apt-get install {PACKAGES})"
    for d in ("l3fwd", "common"):
        if not (examples / d).is_dir():
            return f"{examples / d} is missing (apt-get install dpdk-doc)"
    if len(os.sched_getaffinity(0)) < 2:
        return "testpmd needs two CPUs (a main lcore and a forwarding lcore)"
    from engine.io.dpdk import DpdkUnavailable, build

    try:
        build()
    except DpdkUnavailable as err:
        return f"the engine's DPDK binding does not build: {err}"
    return None


def patch_l3fwd(main_c: Path) -> None:
    """Mask l3fwd's requested RX offloads with what the device offers (two spots in
    main.c); without it l3fwd exits at start on any vdev (no RX checksum offload)."""
    text = main_c.read_text()
    for old, new in L3FWD_PATCH:
        if text.count(old) != 1:
            raise BenchError(f"{main_c}: cannot apply the offload patch (expected {old!r} "
                             "once): not the DPDK 22.11 l3fwd this benchmark knows")
        text = text.replace(old, new)
    main_c.write_text(text)


def build_l3fwd(workdir: Path, examples: Path = EXAMPLES) -> Path:
    """Copy examples/l3fwd and examples/common side by side (the Makefile includes
    ../common), patch the copy, `make` it with pkg-config; return the binary."""
    src = workdir / "examples"
    for d in ("l3fwd", "common"):
        shutil.copytree(examples / d, src / d)
    patch_l3fwd(src / "l3fwd" / "main.c")
    p = subprocess.run(["make", "-C", str(src / "l3fwd"), f"-j{len(os.sched_getaffinity(0))}"],
                       capture_output=True, text=True)
    binary = src / "l3fwd" / "build" / "l3fwd"
    if p.returncode != 0 or not binary.exists():
        raise BenchError(f"building l3fwd failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return binary


# --- traffic -------------------------------------------------------------------------------


def mix_sizes(mix: str, n: int) -> list[int]:
    """n frame sizes in the mix's proportions, spread evenly (a fixed pattern)."""
    pattern = [size for size, weight in MIXES[mix] for _ in range(weight)]
    # interleave: 64 570 64 1518 64 570 ... rather than runs of one size
    order = sorted(range(len(pattern)), key=lambda i: (i * 5) % len(pattern))
    pattern = [pattern[i] for i in order]
    return [pattern[i % len(pattern)] for i in range(n)]


def port_frames(mix: str, port: int, n: int) -> list[bytes]:
    """What port `port` receives: one UDP flow a frame, from 198.18.port.0/24 to the
    other port's 198.18.M.0/24, to the device's MAC."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    out = PORTS - 1 - port
    frames = []
    for i, size in enumerate(mix_sizes(mix, n)):
        f = (Ether(src=NEXTHOP_MAC.format(port), dst=DEVICE_MAC.format(port))
             / IP(src=f"198.18.{port}.{2 + i % 250}", dst=f"198.18.{out}.{2 + (i * 7) % 250}",
                  ttl=64)
             / UDP(sport=1024 + i, dport=5000 + i % 16))
        f = f / (b"\x00" * (size - len(f)))
        frames.append(bytes(f))
        assert len(frames[-1]) == size
    return frames


def forwarded_copy(frame: bytes, out: int) -> bytes:
    """What scapy says a router sends for `frame` out of port `out`: the device's MAC as
    source, the next hop's as destination, TTL one less, the header checksum redone."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether

    pkt = Ether(frame)
    pkt[Ether].src = DEVICE_MAC.format(out)
    pkt[Ether].dst = NEXTHOP_MAC.format(out)
    pkt[IP].ttl -= 1
    del pkt[IP].chksum
    return bytes(pkt)


def write_inputs(workdir: Path, mix: str, n: int, stem: str = "") -> list[Path]:
    """Each port's input capture: `<stem><mix>-p<port>.pcap`."""
    from scapy.utils import wrpcap

    paths = []
    for port in range(PORTS):
        path = workdir / f"{stem}{mix}-p{port}.pcap"
        wrpcap(str(path), [_ether(f) for f in port_frames(mix, port, n)])
        paths.append(path)
    return paths


def _ether(frame: bytes) -> Any:
    from scapy.layers.l2 import Ether

    return Ether(frame)


def pcap_frames(path: Path) -> list[bytes]:
    from scapy.utils import rdpcap

    return [bytes(f) for f in rdpcap(str(path))] if path.stat().st_size > 24 else []


def pcap_count(path: Path) -> int:
    """Frames in a capture file being written (record headers walked, no parsing)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    n, off = 0, 24
    while off + 16 <= len(data):
        caplen = int.from_bytes(data[off + 8: off + 12], "little")
        if off + 16 + caplen > len(data):
            break
        off += 16 + caplen
        n += 1
    return n


# --- processes and their counters -----------------------------------------------------------


def runtime_dir(prefix: str) -> Path:
    """Where EAL keeps a process's runtime files (and its telemetry socket)."""
    base = "/var/run" if os.geteuid() == 0 else os.environ.get("XDG_RUNTIME_DIR", "/tmp")
    return Path(base, "dpdk", prefix)


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system) of each thread of process `pid`, by thread name
    (DPDK names its lcore threads `lcore-worker-N`); a Python process is one entry."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent on anything but idle since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float
    forwarded: int  # what the rate is computed from
    device_tx: int  # Σ ports' rte_eth_stats opackets
    device_rx: int  # Σ ports' ipackets
    cpu: dict[str, float]  # process or thread -> CPU seconds so far
    extra: dict[str, int] = field(default_factory=dict)  # engine: drops, batches...


class Forwarder:
    """One forwarder process on the benchmark's vdevs: start, sample, stop."""

    name = ""  # engine, l3fwd, testpmd
    key = ""  # its row in the results
    label = ""

    def __init__(self, workdir: Path, tag: str):
        self.workdir = workdir
        self.tag = tag
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{tag}.log"

    def command(self, vdevs: list[str]) -> list[str]:
        raise NotImplementedError

    def start(self, vdevs: list[str]) -> None:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.command(vdevs), cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited: {self.tail()}")

    def tail(self) -> str:
        try:
            return self.log.read_text()[-3000:]
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def sample(self) -> Sample:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class DpdkApp(Forwarder):
    """l3fwd or testpmd: EAL with --no-huge and our own file prefix; counters from the
    telemetry socket EAL opens in its runtime directory."""

    def __init__(self, workdir: Path, tag: str, prefix: str, cpus: list[int]):
        super().__init__(workdir, tag)
        self.prefix = prefix
        self.cpus = cpus
        self.sock: socket.socket | None = None

    def eal(self, vdevs: list[str], lcores: str) -> list[str]:
        args = ["-l", lcores, "--no-huge", "-m", "512", "--no-pci", "--file-prefix",
                self.prefix, "--log-level=*:error"]
        for v in vdevs:
            args += ["--vdev", v]
        return args

    def wait_ready(self, timeout: float = 60) -> None:
        path = runtime_dir(self.prefix) / "dpdk_telemetry.v2"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            if self.sock is None and path.exists():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    s.connect(str(path))
                    json.loads(s.recv(1024))  # the greeting: version, pid, max length
                    self.sock = s
                except OSError:
                    s.close()
            if self.sock is not None and self.sample().forwarded > 0:
                return
            time.sleep(0.05)
        raise BenchError(f"{self.label} did not start forwarding: {self.tail()}")

    def query(self, cmd: str) -> Any:
        assert self.sock is not None
        self.sock.send(cmd.encode())
        return json.loads(self.sock.recv(1 << 16))[cmd.split(",")[0]]

    def sample(self) -> Sample:
        t0 = time.monotonic()
        stats = [self.query(f"/ethdev/stats,{p}") for p in range(PORTS)]
        t1 = time.monotonic()
        assert self.proc is not None
        tx = sum(s["opackets"] for s in stats)
        return Sample((t0 + t1) / 2, tx, tx, sum(s["ipackets"] for s in stats),
                      cpu_seconds(self.proc.pid),
                      {"oerrors": sum(s["oerrors"] for s in stats),
                       "imissed": sum(s["imissed"] for s in stats)})

    def close_telemetry(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def finish(self, how: str) -> None:
        assert self.proc is not None
        self.close_telemetry()
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.label} did not stop on {how}") from None
        finally:
            shutil.rmtree(runtime_dir(self.prefix), ignore_errors=True)
        if rc != 0:
            raise BenchError(f"{self.label} exited with status {rc}: {self.tail()}")

    def kill(self) -> None:
        self.close_telemetry()
        super().kill()
        shutil.rmtree(runtime_dir(self.prefix), ignore_errors=True)


class L3fwd(DpdkApp):
    name = key = "l3fwd"
    label = "l3fwd (1 lcore)"

    def __init__(self, workdir: Path, tag: str, prefix: str, cpus: list[int], binary: Path):
        super().__init__(workdir, tag, prefix, cpus)
        self.binary = binary

    def command(self, vdevs: list[str]) -> list[str]:
        # lcore id = CPU id with -l; the CPU the engine's worker 0 is pinned to, so the
        # per-packet work of all three runs on the same CPU
        lcore = self.cpus[0]
        queues = ",".join(f"({p},0,{lcore})" for p in range(PORTS))
        return [str(self.binary), *self.eal(vdevs, str(lcore)), "--",
                "-p", f"{(1 << PORTS) - 1:#x}", "--config", queues, "--parse-ptype"]

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # l3fwd closes its ports and says Bye
        self.finish("SIGINT")


class Testpmd(DpdkApp):
    name = key = "testpmd"
    label = "testpmd io (1 fwd lcore)"

    def command(self, vdevs: list[str]) -> list[str]:
        # the main lcore waits on stdin ("Press enter to exit") on the other CPU; the
        # forwarding lcore is on the CPU of l3fwd's lcore and the engine's worker 0
        main, fwd = self.cpus[-1], self.cpus[0]
        return [TESTPMD, *self.eal(vdevs, f"{fwd},{main}"), "--main-lcore", str(main), "--",
                "--forward-mode=io", "--auto-start", "--total-num-mbufs=16384"]

    def stop(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"\n")  # the enter it waits for: stops, prints, exits 0
        self.proc.stdin.flush()
        self.finish("enter")


def engine_config(vdevs: list[str], workers: int, batch: int, sock: Path,
                  zero_copy: bool = True) -> str:
    """The engine's deployment matching l3fwd's defaults: port N has the device's MAC,
    198.18.N.0/24 goes out of port N to a static neighbour with MAC 02:00:00:00:00:0N.
    `zero_copy` false: frames copied between mbufs and the pool (`[dpdk] zero_copy`)."""
    text = [f"[engine]\nworkers = {workers}\nbatch = {batch}\ncontrol_socket = \"{sock}\"\n"]
    for p, v in enumerate(vdevs):
        text.append(f'[[port]]\nname = "p{p}"\ndriver = "dpdk"\ndevice = "{v}"\n'
                    f'mac = "{DEVICE_MAC.format(p)}"\naddresses = ["10.0.{p}.1/24"]\n')
    for p in range(len(vdevs)):
        text.append(f'[[route]]\nprefix = "198.18.{p}.0/24"\nvia = "10.0.{p}.2"\n')
        text.append(f'[[neighbor]]\nip = "10.0.{p}.2"\nmac = "{NEXTHOP_MAC.format(p)}"\n'
                    f'port = "p{p}"\n')
    text.append('[dpdk]\neal_args = ["--log-level=*:error"]\nhugepages = "off"\n'
                f"memory_mb = 512\nzero_copy = {str(zero_copy).lower()}\n")
    return "\n".join(text)


class Engine(Forwarder):
    """`fwd run` on the vdevs; counters from its control socket."""

    name = "engine"

    def __init__(self, workdir: Path, tag: str, workers: int, batch: int,
                 zero_copy: bool = True):
        super().__init__(workdir, tag)
        self.workers = workers
        self.batch = batch
        self.zero_copy = zero_copy
        copy = "" if zero_copy else ", copying"
        self.label = (f"engine ({workers} worker{'s' if workers > 1 else ''}, batch {batch}"
                      f"{copy})")
        self.key = f"engine {workers}w b{batch}" + ("" if zero_copy else " copy")
        self.socket = workdir / f"{tag}.sock"
        self.out = workdir / f"{tag}.json"
        self.final: dict[str, Any] = {}
        self.exit_status: int | None = None
        self.pids: dict[str, int] = {}

    def command(self, vdevs: list[str]) -> list[str]:
        cfg = self.workdir / f"{self.tag}.toml"
        cfg.write_text(engine_config(vdevs, self.workers, self.batch, self.socket,
                                     self.zero_copy))
        return [sys.executable, "-m", "engine.cli", "run", str(cfg), "--json"]

    def start(self, vdevs: list[str]) -> None:
        with open(self.log, "w") as log, open(self.out, "w") as out:
            self.proc = subprocess.Popen(self.command(vdevs), cwd=ROOT, stdout=out, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> None:
        """SIGTERM first (the engine then cleans up after itself), SIGKILL if it does
        not stop; then whatever a killed engine leaves: its EAL runtime directory and
        its shared-memory segments (/dev/shm/fwd-<pid>-*)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
            return
        except subprocess.TimeoutExpired:
            super().kill()
        for line in self.tail().splitlines():
            if "EAL prefix " in line:
                prefix = line.split("EAL prefix ", 1)[1].rstrip(")").strip()
                shutil.rmtree(runtime_dir(prefix), ignore_errors=True)
        for seg in Path("/dev/shm").glob(f"fwd-{self.proc.pid}-*"):
            seg.unlink(missing_ok=True)

    def stats(self) -> dict[str, Any] | None:
        from engine.cli.client import ControlError, request

        try:
            reply = request(self.socket, {"cmd": "stats"})
        except ControlError:
            return None
        return reply["stats"] if reply.get("ok") else None

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            st = self.stats() if self.socket.exists() else None
            if st and all(w["loops"] for w in st["workers"]) \
                    and st["accounting"]["forwarded"] > 0:
                self.pids = {w["agent"]: w["pid"] for w in st["workers"]}
                return
            time.sleep(0.05)
        raise BenchError(f"{self.label} did not start forwarding: {self.tail()}")

    def sample(self) -> Sample:
        t0 = time.monotonic()
        st = self.stats()
        t1 = time.monotonic()
        if st is None:
            self.alive()
            raise BenchError(f"{self.label}: no answer on {self.socket}")
        cpu = {agent: sum(cpu_seconds(pid).values()) for agent, pid in self.pids.items()}
        acc, dev = st["accounting"], st["devices"]
        extra = {"dropped": acc["dropped"], "to_slowpath": acc["to_slowpath"],
                 "received": acc["received"]}
        for w in st["workers"]:
            extra[f"{w['agent']}.batches"] = w["batches"]
            extra[f"{w['agent']}.rx_frames"] = w["rx_frames"]
        return Sample((t0 + t1) / 2, acc["forwarded"],
                      sum(d["opackets"] for d in dev.values()),
                      sum(d["ipackets"] for d in dev.values()), cpu, extra)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise BenchError(f"{self.label} did not stop on SIGTERM") from None
        self.exit_status = rc
        if rc != 0 and UNBALANCED not in self.tail():
            raise BenchError(f"{self.label} exited with status {rc}: {self.tail()}")
        self.final = json.loads(self.out.read_text())
        if rc != 0:
            # the supervisor gives each worker JOIN_TIMEOUT_S to drain its RX rings
            # and then terminates it: a worker starved of its CPU by other work on the
            # machine loses what it still held. The window's counters are not
            # affected (they were read while it ran); recorded, not fatal.
            print(f"warning: {self.label} stopped with unbalanced counters "
                  f"({self.final['accounting']})", file=sys.stderr, flush=True)


# --- one measurement -------------------------------------------------------------------------


def measure(fwd: Forwarder, vdevs: list[str], warmup: float, seconds: float) -> dict[str, Any]:
    """Start, warm up, count over `seconds`, stop: the forwarded rate and what it cost."""
    fwd.start(vdevs)
    try:
        fwd.wait_ready()
        time.sleep(warmup)
        busy_a = machine_busy_seconds()
        a = fwd.sample()
        time.sleep(seconds)
        b = fwd.sample()
        busy_b = machine_busy_seconds()
        fwd.alive()
        fwd.stop()
    except BaseException:
        fwd.kill()
        raise
    dt = b.t - a.t
    cpu = {k: round((b.cpu.get(k, 0.0) - v) / dt, 3) for k, v in a.cpu.items()}
    row: dict[str, Any] = {
        "mpps": (b.forwarded - a.forwarded) / dt / 1e6,
        "device_tx_mpps": (b.device_tx - a.device_tx) / dt / 1e6,
        "device_rx_mpps": (b.device_rx - a.device_rx) / dt / 1e6,
        "window_s": round(dt, 3),
        "cpu": {k: v for k, v in cpu.items() if v >= 0.005},  # CPUs busy, by process/thread
    }
    row["cpus_busy"] = round(sum(row["cpu"].values()), 3)
    # what everything else on the machine took meanwhile (the CPUs are shared)
    row["other_cpus_busy"] = round(max(0.0, (busy_b - busy_a) / dt - row["cpus_busy"]), 3)
    delta = {k: b.extra[k] - a.extra.get(k, 0) for k in b.extra}
    if isinstance(fwd, Engine):
        lost = delta["dropped"] + delta["to_slowpath"]
        if lost:  # every frame of the mix is forwardable: a drop means a broken setup
            raise BenchError(f"{fwd.label} dropped or diverted {lost} frames in the window: "
                             f"{fwd.final.get('drop')}")
        for w in range(fwd.workers):  # how full the worker's batches were
            batches = delta[f"worker{w}.batches"]
            row[f"worker{w}_avg_batch"] = round(
                delta[f"worker{w}.rx_frames"] / batches, 1) if batches else 0.0
        row["final_balanced"] = fwd.final.get("accounting", {}).get("balanced")
        row["exit_status"] = fwd.exit_status
    else:
        unsent = (b.device_rx - a.device_rx) - (b.device_tx - a.device_tx)
        slack = IN_FLIGHT + READ_SKEW * (b.device_rx - a.device_rx)
        if delta["oerrors"] or delta["imissed"] or abs(unsent) > slack:
            raise BenchError(f"{fwd.label}: received and sent differ by {unsent} frames in "
                             f"the window (device errors {delta}): not forwarding everything")
    return row


# --- the outputs compared (run once, before the measurements) ---------------------------------


def verify(fwds: list[Forwarder], workdir: Path, mix: str, n: int) -> dict[str, Any]:
    """Each forwarder on finite inputs with tx_pcap outputs: both must send, out of each
    port, exactly scapy's forwarded copies of the other port's frames, in order."""
    inputs = {p: port_frames(mix, p, n) for p in range(PORTS)}
    want = {PORTS - 1 - p: [forwarded_copy(f, PORTS - 1 - p) for f in frames]
            for p, frames in inputs.items()}
    ins = write_inputs(workdir, mix, n, "verify-")
    result: dict[str, Any] = {"frames": n * PORTS}
    for fwd in fwds:
        outs = [workdir / f"verify-{mix}-{fwd.name}-out{p}.pcap" for p in range(PORTS)]
        vdevs = [f"net_pcap{p},rx_pcap={ins[p]},tx_pcap={outs[p]}" for p in range(PORTS)]
        fwd.start(vdevs)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                    pcap_count(o) < n for o in outs):
                fwd.alive()
                time.sleep(0.1)
            time.sleep(0.2)  # anything beyond what is expected would show up now
            fwd.stop()
        except BaseException:
            fwd.kill()
            raise
        if isinstance(fwd, Engine):
            acc = fwd.final["accounting"]
            if not acc["balanced"] or acc["forwarded"] != n * PORTS:
                raise BenchError(f"{fwd.label} on {mix}: forwarded {acc['forwarded']} of "
                                 f"{n * PORTS} frames: {acc}")
        got = {p: pcap_frames(outs[p]) for p in range(PORTS)}
        same = all(got[p] == want[p] for p in range(PORTS))
        result[fwd.name] = {"sent": sum(map(len, got.values())), "as_expected": same}
        if not same:
            bad = next(p for p in range(PORTS) if got[p] != want[p])
            raise BenchError(f"{fwd.label} on {mix}: port {bad} sent {len(got[bad])} frames, "
                             f"not the {len(want[bad])} expected (first difference at "
                             f"{_first_diff(got[bad], want[bad])})")
    return result


def _first_diff(a: list[bytes], b: list[bytes]) -> int:
    pairs = enumerate(zip(a, b, strict=False))
    return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))


# --- the run -------------------------------------------------------------------------------------


def ratio_rows(results: dict[str, dict[str, list[dict]]], mixes: list[str],
               engines: list[str]) -> list[dict[str, Any]]:
    """Per mix and engine configuration: the median of per-run ratios to each peer."""
    rows = []
    for mix in mixes:
        r = results[mix]
        for e in engines:
            row: dict[str, Any] = {"mix": mix, "engine": e}
            for peer in ("l3fwd", "testpmd"):
                ratios = [x["mpps"] / y["mpps"] for x, y in zip(r[e], r[peer], strict=True)]
                row[f"engine/{peer}"] = statistics.median(ratios)
                row[f"engine/{peer} per run"] = [round(x, 5) for x in ratios]
            row["l3fwd/testpmd"] = statistics.median(
                x["mpps"] / y["mpps"] for x, y in zip(r["l3fwd"], r["testpmd"], strict=True))
            rows.append(row)
    return rows


def summary(runs: list[dict]) -> dict[str, Any]:
    rates = [r["mpps"] for r in runs]
    med = statistics.median(rates)
    cpus = statistics.median(r["cpus_busy"] for r in runs)
    return {"mpps": med, "spread": (max(rates) - min(rates)) / med if med else 0.0,
            "cpus_busy": cpus, "mpps_per_cpu": med / cpus if cpus else 0.0,
            "other_cpus_busy": statistics.median(r["other_cpus_busy"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--engines", default="1x256,1x1024,2x1024",
                    help="engine configurations, WORKERSxBATCH ([engine] workers, batch), "
                         "with a 'copy' suffix: [dpdk] zero_copy = false")
    ap.add_argument("--frames", type=int, default=1200, help="frames (flows) per port file")
    ap.add_argument("--mixes", default="64,imix,1518")
    ap.add_argument("--examples", type=Path, default=EXAMPLES,
                    help="DPDK's example sources (dpdk-doc)")
    ap.add_argument("--max-others", type=float, default=0.5,
                    help="measure a window again when other work took more CPUs than this")
    ap.add_argument("--retries", type=int, default=3, help="... at most this many times")
    ap.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 run, short windows, 1 worker, few frames")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--from-json", type=Path, help="print the tables of a saved result")
    args = ap.parse_args(argv)
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        summarise(doc)
        print(report(doc))
        return 0
    if args.quick:
        args.runs, args.seconds, args.warmup, args.engines, args.frames = 1, 0.5, 0.2, "1x256", 120
        args.retries = 0
    mixes = args.mixes.split(",")
    if not set(mixes) <= set(MIXES):
        ap.error(f"--mixes: known mixes are {', '.join(MIXES)}")
    try:
        engine_confs = [(*(int(x) for x in e.removesuffix("copy").split("x")),
                         e.endswith("copy")) for e in args.engines.split(",")]
        assert all(len(c) == 3 and min(c[:2]) > 0 for c in engine_confs)
    except (ValueError, AssertionError):
        ap.error("--engines: WORKERSxBATCH[copy][,...], e.g. 1x256,2x1024,1x256copy")
    why = missing(args.examples)
    if why:
        print(f"bench_l3fwd: cannot run: {why}", file=sys.stderr)
        return 2

    cpus = sorted(os.sched_getaffinity(0))
    load = [os.getloadavg()]
    tmp = tempfile.TemporaryDirectory(prefix="fwd-bench-l3fwd-")
    workdir = Path(tmp.name)
    prefix = f"db{os.getpid()}"  # EAL file prefixes of l3fwd and testpmd
    try:
        t0 = time.monotonic()
        binary = build_l3fwd(workdir, args.examples)
        print(f"l3fwd built in {time.monotonic() - t0:.1f} s (patched copy in {workdir})",
              flush=True)
        l3fwd = L3fwd(workdir, "l3fwd", f"{prefix}l3", cpus, binary)
        testpmd = Testpmd(workdir, "testpmd", f"{prefix}tp", cpus)
        engines = [Engine(workdir, f"engine{w}x{b}{'copy' if c else ''}", w, b, not c)
                   for w, b, c in engine_confs]
        checks = {}
        if not args.no_verify:
            for mix in mixes[:1] if args.quick else mixes:
                checks[mix] = verify([engines[0], l3fwd], workdir, mix, min(args.frames, 240))
                print(f"verify {mix}: engine and l3fwd send scapy's forwarded copies of all "
                      f"{checks[mix]['frames']} frames", flush=True)
        inputs = {mix: write_inputs(workdir, mix, args.frames) for mix in mixes}
        forwarders: list[Forwarder] = [*engines, l3fwd, testpmd]
        keys = [f.key for f in forwarders]
        results: dict[str, dict[str, list[dict]]] = {m: {k: [] for k in keys} for m in mixes}
        for run in range(args.runs):
            for mix in mixes:
                vdevs = [f"net_pcap{p},rx_pcap={inputs[mix][p]},infinite_rx=1"
                         for p in range(PORTS)]
                k = run % len(forwarders)
                for fwd in forwarders[k:] + forwarders[:k]:  # rotating order
                    # a window in which other work took the CPUs is measured again; the
                    # least contended attempt is kept, the others recorded with it
                    attempts = []
                    while True:
                        row = measure(fwd, vdevs, args.warmup, args.seconds)
                        attempts.append(row)
                        print(f"run {run + 1}/{args.runs} {mix:5s} {fwd.label:30s} "
                              f"{row['mpps']:8.3f} Mpps  CPUs busy {row['cpus_busy']:.2f} "
                              f"(others {row['other_cpus_busy']:.2f})  {row['cpu']}",
                              flush=True)
                        if row["other_cpus_busy"] <= args.max_others \
                                or len(attempts) > args.retries:
                            break
                        print(f"  other work took {row['other_cpus_busy']:.2f} CPUs "
                              f"(> {args.max_others:g}): measured again", flush=True)
                    row = min(attempts, key=lambda r: r["other_cpus_busy"])
                    row["discarded_attempts"] = [
                        {k: r[k] for k in ("mpps", "other_cpus_busy")}
                        for r in attempts if r is not row]
                    results[mix][fwd.key].append(row)
    finally:
        tmp.cleanup()
        for d in runtime_dir("x").parent.glob(f"{prefix}*"):
            shutil.rmtree(d, ignore_errors=True)

    load.append(os.getloadavg())
    doc = {
        "what": "engine vs DPDK l3fwd vs testpmd io, same net_pcap infinite_rx vdevs",
        "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
        "cpu": _cpu_model(), "cpus": len(cpus), "python": platform.python_version(),
        "dpdk": _dpdk_version(), "hugepages": False, "quick": args.quick,
        "loadavg_start_end": load, "runs": args.runs, "seconds": args.seconds,
        "warmup": args.warmup, "max_others": args.max_others, "retries": args.retries,
        "frames_per_port": args.frames, "engines": [e.key for e in engines],
        "mixes": {m: [list(x) for x in MIXES[m]] for m in mixes},
        "placement": {"l3fwd": f"lcore {cpus[0]} on CPU {cpus[0]}",
                      "testpmd": f"main lcore on CPU {cpus[-1]} (waits on stdin), "
                                 f"forwarding lcore on CPU {cpus[0]}",
                      "engine": f"worker w on CPU w (worker 0 on CPU {cpus[0]}), slow path "
                                "on CPU (workers mod n), control process (all DPDK I/O, "
                                "single-process mode) on any CPU"},
        "verify": checks, "runs_detail": results,
    }
    summarise(doc)
    print(report(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


def summarise(doc: dict[str, Any]) -> None:
    """Add the tables to a result document (from its per-window rows)."""
    # (older files list the engines as [workers, batch])
    doc["engines"] = [e if isinstance(e, str) else f"engine {e[0]}w b{e[1]}"
                      for e in doc["engines"]]
    results, mixes, engines = doc["runs_detail"], list(doc["mixes"]), doc["engines"]
    doc["summary"] = {mix: {k: summary(v) for k, v in results[mix].items()} for mix in mixes}
    doc["ratios"] = ratio_rows(results, mixes, engines)
    doc["quiet"] = quiet_rows(results, mixes, engines)


def quiet_rows(results: dict[str, dict[str, list[dict]]], mixes: list[str],
               engines: list[str]) -> dict[str, Any]:
    """Every window measured (those kept and those measured again) in which other work
    took at most QUIET CPUs: their median per forwarder, and ratios of those medians
    (not pairs from one run: quiet windows come when they come)."""
    out: dict[str, Any] = {"max_other_cpus": QUIET}
    for mix in mixes:
        rows: dict[str, Any] = {}
        for key, runs in results[mix].items():
            windows = [(r["mpps"], r["other_cpus_busy"]) for r in runs]
            windows += [(d["mpps"], d["other_cpus_busy"]) for r in runs
                        for d in r.get("discarded_attempts", [])]
            quiet = [m for m, o in windows if o <= QUIET]
            rows[key] = {"windows": len(quiet),
                         "mpps": statistics.median(quiet) if quiet else None}
        for e in engines:
            for peer in ("l3fwd", "testpmd"):
                x, y = rows[e]["mpps"], rows[peer]["mpps"]
                rows[e][f"engine/{peer}"] = x / y if x and y else None
        out[mix] = rows
    return out


def report(doc: dict[str, Any]) -> str:
    """The tables printed at the end of a run (and by --from-json)."""
    mixes = list(doc["mixes"])
    lines = [f"\nmedian of {doc['runs']} runs of {doc['seconds']:g} s; "
             f"{doc['frames_per_port']} flows a port",
             f"{'mix':5s} {'forwarder':16s} {'Mpps':>8s} {'spread':>7s} {'CPUs busy':>9s} "
             f"{'Mpps/CPU':>9s} {'others busy':>11s}"]
    for mix in mixes:
        for k, s in doc["summary"][mix].items():
            lines.append(f"{mix:5s} {k:16s} {s['mpps']:8.3f} {s['spread']:7.0%} "
                         f"{s['cpus_busy']:9.2f} {s['mpps_per_cpu']:9.3f} "
                         f"{s['other_cpus_busy']:11.2f}")
    lines.append("")
    for r in doc["ratios"]:
        lines.append(f"{r['mix']:5s} {r['engine']:16s} engine/l3fwd {r['engine/l3fwd']:.4f}   "
                     f"engine/testpmd {r['engine/testpmd']:.4f}   "
                     f"(l3fwd/testpmd {r['l3fwd/testpmd']:.3f})")
    quiet = doc["quiet"]
    lines.append(f"\nwindows with other work <= {quiet['max_other_cpus']:g} CPUs "
                 "(kept or measured again): median Mpps (windows)")
    for mix in mixes:
        for k, q in quiet[mix].items():
            rate = f"{q['mpps']:8.3f}" if q["mpps"] is not None else "       -"
            ratios = "".join(f"   engine/{p} {q[f'engine/{p}']:.4f}"
                             for p in ("l3fwd", "testpmd") if q.get(f"engine/{p}"))
            lines.append(f"{mix:5s} {k:16s} {rate} ({q['windows']}){ratios}")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _dpdk_version() -> str:
    p = subprocess.run(["pkg-config", "--modversion", "libdpdk"], capture_output=True, text=True)
    return p.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
