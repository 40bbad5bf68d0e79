"""`fwd run` with DPDK ports: single-process mode on net_pcap vdevs, multi-process mode
(workers as DPDK secondaries) on net_memif vdevs, and the start-up errors.

DPDK ports are live: a run ends on SIGTERM, which these tests send once the output
is complete. Every engine runs as its own `fwd run` process (EAL can be initialised
once per process). Needs root for the hugepages of the multi-process case (reserved
by the `hugepages` fixture of test_dpdk.py and given back after).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap
from test_dpdk import MISSING, PREFIX, hugepages, in_child, needs_dpdk  # noqa: F401
from test_run import mixed_traffic, udp

from conftest import MAC, PORTS, Lab, remove_dpdk_runtime_dirs, routed
from test_slowpath import icmp_error, norm

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _remove_peer_runtime_dirs() -> Any:
    """The memif peer's EAL runtime directory (an engine removes its own)."""
    yield
    remove_dpdk_runtime_dirs(PREFIX)


def dpdk_lab(root: Path, workers: int, devices: dict[str, str], dpdk: str = "") -> Path:
    """The shared test topology (conftest.TOPOLOGY) with DPDK devices for its ports."""
    lab = Lab(root, workers=workers, batch=16)
    (root / "out").mkdir(exist_ok=True)
    text = lab.config_path.read_text()
    for p in PORTS:
        pcap = f'driver = "pcap"\nrx = "in/{p}.pcap"\ntx = "out/{p}.pcap"'
        assert pcap in text
        text = text.replace(pcap, f'driver = "dpdk"\ndevice = "{devices[p]}"')
    path = root / "dpdk.toml"
    path.write_text(text + '\n[dpdk]\neal_args = ["--log-level=*:error"]\n' + dpdk)
    return path


class Engine:
    """`fwd run CONFIG --json` in the background; `stop()` sends SIGTERM, returns stats."""

    def __init__(self, config: Path):
        self.socket = config.parent / "fwd.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "run", str(config), "--json", "--socket",
             str(self.socket)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fwd run exited: {self.proc.communicate()[1]}")
            if self.socket.exists():
                st = self.stats()
                if st and all(w["loops"] for w in st["workers"]):
                    return
            time.sleep(0.1)
        raise AssertionError("the engine did not start")

    def stats(self) -> dict[str, Any] | None:
        p = subprocess.run([sys.executable, "-m", "engine.cli", "stats", "--json", "--socket",
                            str(self.socket)], cwd=ROOT, capture_output=True, text=True)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def stop(self) -> tuple[dict[str, Any], str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def frames_in(path: Path) -> list[bytes]:
    return [bytes(f) for f in rdpcap(str(path))] if path.stat().st_size > 24 else []


def flow_of(frame: bytes) -> tuple:
    pkt = Ether(frame)
    if IP not in pkt:
        return ("other",)
    ip = pkt[IP]
    if ICMP in ip:  # the router's own messages: one per triggering packet and kind
        return (ip.src, ip.dst, ip.proto, ip[ICMP].type, ip[ICMP].code)
    ports = (ip[UDP].sport, ip[UDP].dport) if UDP in ip else ()
    return (ip.src, ip.dst, ip.proto, *ports)


def assert_same_output(got: list[bytes], want: list[bytes]) -> None:
    """Byte-identical frames, the same multiset, and each flow's frames in the same
    order. (Across flows a live port's order is the order the workers and the slow
    path sent in, not the capture-time order the pcap driver writes.)"""
    assert sorted(map(norm, got)) == sorted(map(norm, want))
    per_flow_got: dict[tuple, list[bytes]] = defaultdict(list)
    per_flow_want: dict[tuple, list[bytes]] = defaultdict(list)
    for f in got:
        per_flow_got[flow_of(f)].append(norm(f))
    for f in want:
        per_flow_want[flow_of(f)].append(norm(f))
    assert per_flow_got == per_flow_want


# --- single-process mode: net_pcap vdevs ----------------------------------------------


@needs_dpdk
@pytest.mark.parametrize("workers,zero_copy", [(1, True), (2, True), (1, False)])
def test_pcap_vdevs_give_the_pcap_drivers_output(tmp_path: Path, workers: int,
                                                 zero_copy: bool) -> None:
    """The cases of test_run through net_pcap vdevs: the frames the pcap driver writes
    for the same input, byte for byte; counters that balance and match the device's;
    with frames received into pool rows and sent from them (zero copy), or copied."""
    inputs, _ = mixed_traffic()
    (tmp_path / "ref").mkdir()
    ref = Lab(tmp_path / "ref", workers=workers, batch=16)
    ref_stats, ref_out = ref.run(inputs)
    want = {p: [bytes(f) for f in ref_out[p]] for p in PORTS}
    assert sum(map(len, want.values())) > 150  # the cases forward and answer

    root = tmp_path / "dpdk"
    root.mkdir()
    devices = {p: f"net_pcap{i},rx_pcap={ref.root}/in/{p}.pcap,tx_pcap={root}/out/{p}.pcap"
               for i, p in enumerate(PORTS)}
    engine = Engine(dpdk_lab(root, workers, devices,
                             f"zero_copy = {str(zero_copy).lower()}\n"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if engine.proc.poll() is not None:
                break
            outs = [root / "out" / f"{p}.pcap" for p in PORTS]
            if all(o.exists() for o in outs) and all(
                    len(frames_in(o)) >= len(want[p]) for o, p in zip(outs, PORTS, strict=True)):
                break
            time.sleep(0.2)
        stats, err = engine.stop()
    finally:
        engine.kill()
    assert "DPDK single-process" in err and "net_pcap" in err
    assert ("; zero copy;" if zero_copy else "copying: dpdk.zero_copy is false") in err
    # every buffer back in the pool, once (the rows DPDK had come back at its close)
    assert re.search(r"pool: (\d+) of \1 buffers free", err), err
    for p in PORTS:
        assert_same_output(frames_in(root / "out" / f"{p}.pcap"), want[p])
    acc = stats["accounting"]
    assert acc["balanced"]
    assert acc["received"] == ref_stats.received
    assert acc["forwarded"] == ref_stats.forwarded
    assert stats["drop"] == {k: v for k, v in ref_stats.drop.items() if v}
    for p in PORTS:
        dev, ours = stats["devices"][p], stats["ports"][p]
        assert dev["ipackets"] == ours["rx_packets"] == len(inputs.get(p, []))
        assert dev["opackets"] == ours["tx_packets"] == len(want[p])
        assert dev["obytes"] == ours["tx_bytes"]
        assert dev["x.rx_good_packets"] == dev["ipackets"]
        if zero_copy:  # every frame received into its row, none copied
            assert (dev["zc.rx_copied"], dev["zc.bad_puts"]) == (0, 0)
        else:
            assert "zc.rx_copied" not in dev


# --- multi-process mode: net_memif vdevs, the test as the memif peer ------------------


def peer_exchange(sockets: list[str], frames: list[bytes], workers: int,
                  expect: int) -> dict[str, Any]:
    """The other end of the engine's memif ports (run in a spawned process: its own
    DPDK primary, --no-huge). Sends `frames` into port 0, each on the queue its flow
    hashes to (memif has no RSS: the sender's choice of queue stands for the NIC's
    hash, with the key and table engine/io/rss.py and the engine's RSS use), and
    collects what comes back on every queue of both ports."""
    from engine.io import dpdk as dp
    from engine.io.rss import rss_queue, rss_tuple, toeplitz_hash

    n = len(frames)
    data = np.zeros((n + 64, 2048), np.uint8)
    length = np.zeros(n + 64, np.uint32)
    for i, f in enumerate(frames):
        data[i, : len(f)] = np.frombuffer(f, np.uint8)
        length[i] = len(f)
    offsets = np.arange(n, dtype=np.int64) * data.shape[1]
    queue = rss_queue(toeplitz_hash(rss_tuple(data.reshape(-1), offsets, length[:n])), workers)
    got: list[tuple[int, int, bytes]] = []  # (port, queue, frame)
    with dp.Dpdk(["-l", "0", "--log-level=*:error", "--file-prefix", f"{PREFIX}peer",
                  *dp.no_huge_args(256)]) as d:
        # the engine's RX queues are our TX queues, its TX queues (one more: the slow
        # path's) our RX queues
        ports = [d.port(f"net_memif{i},role=client,id=0,socket={s},socket-abstract=no",
                        workers + 1,
                        tx_queues=workers) for i, s in enumerate(sockets)]
        deadline = time.monotonic() + 30
        for w in range(workers):
            idx = np.flatnonzero(queue == w).astype(np.uint32)
            sent = 0
            while sent < len(idx) and time.monotonic() < deadline:  # until connected
                sent += ports[0].tx_from(w, data, idx[sent:], length[idx[sent:]])
            assert sent == len(idx), f"queue {w}: {sent} of {len(idx)} sent"
        rows = np.arange(n, n + 64, dtype=np.uint32)
        while len(got) < expect and time.monotonic() < deadline:
            for p, port in enumerate(ports):
                for q in range(workers + 1):
                    for i in port.rx_into(q, data, rows, length, None, 0):
                        got.append((p, q, bytes(data[i, : length[i]])))
    return {"queues": queue.tolist(), "got": got}


@needs_dpdk
def test_memif_multi_process_workers_spread_flows_in_order(tmp_path: Path,
                                                             hugepages: None) -> None:  # noqa: F811
    workers = 2
    sockets = [str(tmp_path / f"m{i}.sock") for i in range(3)]
    devices = {p: f"net_memif{i},role=server,id=0,socket={s},socket-abstract=no"
               for i, (p, s) in enumerate(zip(PORTS, sockets, strict=True))}
    cfg = dpdk_lab(tmp_path, workers, devices, 'mode = "multi-process"\n')
    frames = [udp("h1", "10.0.1.2", "10.0.2.2", 4000 + s % 9, s) for s in range(1, 300)]
    expired = Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2",
                                                       ttl=1) / UDP() / Raw(b"x" * 30)
    inputs = [bytes(f) for f in frames] + [bytes(expired)]
    engine = Engine(cfg)
    try:
        engine.wait_ready()
        r = in_child(peer_exchange, sockets[:2], inputs, workers, len(inputs))
        mid = engine.stats()
        stats, err = engine.stop()
    finally:
        engine.kill()
    assert "DPDK multi-process" in err
    queues = r["queues"][: len(frames)]
    assert set(queues) == {0, 1}  # the flows hash onto both workers
    on_p1 = [(q, f) for p, q, f in r["got"] if p == 1]
    assert len(on_p1) == len(frames)
    # each worker received its queue and sent on its own TX queue of the egress port
    by_worker = {w: [norm(f) for q, f in on_p1 if q == w] for w in range(workers)}
    for w in range(workers):
        mine = [routed(f, "p1", "h2") for f, q in zip(frames, queues, strict=True) if q == w]
        assert by_worker[w] == mine  # byte for byte, in the order sent (flow order kept)
    assert mid is not None
    rows = {row["agent"]: row for row in mid["workers"]}
    for w in range(workers):
        assert rows[f"worker{w}"]["forwarded"] == queues.count(w)
    # the slow path's answer left through the extra TX queue (number `workers`)
    on_p0 = [(q, f) for p, q, f in r["got"] if p == 0]
    assert [(q, norm(f)) for q, f in on_p0] == [
        (workers, icmp_error(expired, ICMP(type=11, code=0)))]
    assert stats["accounting"]["balanced"]
    assert stats["accounting"]["forwarded"] == len(frames)
    # the device counters are merged in (net_memif 22.11 reports zeros for queues
    # driven by secondaries, so only their presence is checked here; test_pcap_vdevs_*
    # checks the values)
    assert set(stats["devices"]) == set(PORTS)
    assert "x.tx_q2_packets" in stats["devices"]["p0"]  # the slow path's queue exists


# --- start-up errors --------------------------------------------------------------------


def fwd_run(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", "run", str(cfg), "--socket",
                           str(cfg.parent / "fwd.sock")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def null_devices() -> dict[str, str]:
    return {p: f"net_null{i}" for i, p in enumerate(PORTS)}


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    """On a machine without libdpdk-dev: the engine says which packages to install."""
    cfg = dpdk_lab(tmp_path, 1, null_devices())
    p = fwd_run(cfg, {"PKG_CONFIG_LIBDIR": str(tmp_path), "PKG_CONFIG_PATH": str(tmp_path),
                      "FWD_DPDK_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 1
    assert "fwd: dpdk ports need the DPDK library: libdpdk is not known to pkg-config" in p.stderr
    assert "apt-get install dpdk-dev libdpdk-dev" in p.stderr


@needs_dpdk
def test_bad_device_string_is_a_clear_error(tmp_path: Path) -> None:
    devices = {**null_devices(), "p1": "net_bogus0,x=1"}
    p = fwd_run(dpdk_lab(tmp_path, 1, devices, 'hugepages = "off"\n'))
    assert p.returncode == 1
    assert "fwd: port 'p1': cannot attach DPDK device 'net_bogus0,x=1'" in p.stderr


@pytest.fixture
def no_hugepages() -> Any:
    """No hugepages for the test's duration (as root, when none is in use)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to release the hugepages")
    nr = Path("/proc/sys/vm/nr_hugepages")
    before = nr.read_text().strip()
    nr.write_text("0\n")
    from engine.io.dpdk import hugepages_reserved

    if hugepages_reserved():
        nr.write_text(before + "\n")
        pytest.skip("hugepages are in use")
    try:
        yield
    finally:
        nr.write_text(before + "\n")


@needs_dpdk
def test_no_hugepages_is_a_clear_error(tmp_path: Path, no_hugepages: None) -> None:
    p = fwd_run(dpdk_lab(tmp_path, 1, null_devices(), 'hugepages = "on"\n'))
    assert p.returncode == 1
    assert "fwd: dpdk.hugepages is 'on' but no hugepages are reserved" in p.stderr
    assert "echo 512 > /proc/sys/vm/nr_hugepages" in p.stderr
    p = fwd_run(dpdk_lab(tmp_path, 1, null_devices(), 'mode = "multi-process"\n'))
    assert p.returncode == 1
    assert "dpdk.mode is 'multi-process', which needs hugepages" in p.stderr


def test_fwd_check_names_the_dpdk_key(tmp_path: Path) -> None:
    cfg = dpdk_lab(tmp_path, 1, null_devices(), 'eal_args = ["--no-huge"]\n')
    cfg.write_text(cfg.read_text().replace('eal_args = ["--log-level=*:error"]\n', ""))
    p = subprocess.run([sys.executable, "-m", "engine.cli", "check", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "dpdk.eal_args[0]: '--no-huge': the engine sets --no-huge itself" in p.stderr


def test_dpdk_config_values() -> None:
    from engine.config import DpdkConfig, load_config

    cfg = load_config(ROOT / "tests" / "configs" / "correct-dpdk-eal.toml")
    assert cfg.dpdk == DpdkConfig(eal_args=("--log-level=*:warning", "-n", "4"),
                                  hugepages="on", mode="multi-process", memory_mb=512,
                                  zero_copy=False)
    assert load_config(ROOT / "tests" / "configs" / "correct-dpdk.toml").dpdk == DpdkConfig()


def test_mode_follows_devices_and_hugepages(tmp_path: Path, monkeypatch) -> None:
    """The plan: net_pcap and net_af_packet force single-process mode; so does a
    machine without hugepages; otherwise workers are secondaries."""
    from engine.config import load_config
    from engine.io.dpdk import engine as de

    if MISSING is not None:
        pytest.skip(MISSING)
    monkeypatch.setattr(de, "hugepages_reserved", lambda: True)
    monkeypatch.setattr(de, "free_hugepage_mb", lambda: 1024)
    cfg = load_config(dpdk_lab(tmp_path, 2, null_devices()))
    plan = de.plan_for(cfg)
    assert plan.mode == de.MULTI and plan.hugepages
    assert "multi-process mode" in (plan.zero_copy_off(cfg) or "")  # copies
    assert (plan.rx_queues, plan.tx_queues, plan.slow_tx_queue) == (2, 3, 2)
    assert "--no-huge" not in plan.primary_args("x") and "--no-pci" in plan.primary_args("x")
    pcap = {**null_devices(), "p2": "net_pcap0,rx_pcap=a.pcap,tx_pcap=b.pcap"}
    cfg = load_config(dpdk_lab(tmp_path, 2, pcap))
    plan = de.plan_for(cfg)
    assert plan.mode == de.SINGLE and "libpcap handles per process" in plan.why
    assert plan.zero_copy_off(cfg) is None  # vdevs in single-process mode: zero copy
    cfg = load_config(dpdk_lab(tmp_path, 2, pcap, "zero_copy = false\n"))
    assert plan.zero_copy_off(cfg) == "dpdk.zero_copy is false"
    pci = load_config(dpdk_lab(tmp_path, 2, {**pcap, "p1": "0000:03:00.0"}))
    assert "PCI" in (de.plan_for(pci).zero_copy_off(pci) or "")
    assert (plan.rx_queues, plan.tx_queues) == (1, 1)
    monkeypatch.setattr(de, "hugepages_reserved", lambda: False)
    plan = de.plan_for(load_config(dpdk_lab(tmp_path, 2, null_devices())))
    assert plan.mode == de.SINGLE and not plan.hugepages
    assert plan.primary_args("x")[-5:] == ["--no-huge", "-m", "1024", "--no-shconf",
                                           "--log-level=*:error"]
