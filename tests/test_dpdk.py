"""engine.io.dpdk, the project's cffi binding to the system DPDK, on vdevs.

Needs the Debian packages `dpdk dpdk-dev libdpdk-dev pkg-config` plus `gcc` (CI's
`.ci/run` installs them); without them the DPDK cases skip, saying what is missing,
and only the "clear error when missing" cases run.

EAL can be initialised once per process, so every scenario runs in a fresh spawned
process (never forked: a forked EAL is unusable). EAL runs with `--no-huge` here, so
no hugepages are needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap

from engine.io import dpdk as dp

from conftest import remove_dpdk_runtime_dirs

# Debian packages the DPDK tests need (for .ci/run)
CI_PACKAGES = ("dpdk", "dpdk-dev", "libdpdk-dev", "pkg-config", "gcc")

# one EAL file prefix for this test run, inherited by the spawned scenarios, so the
# runtime directory EAL leaves behind can be removed at the end
PREFIX = os.environ.setdefault("FWD_TEST_DPDK_PREFIX", f"fwdtest{os.getpid()}")
EAL = ["-l", "0", "--log-level=*:error", "--file-prefix", PREFIX, *dp.no_huge_args(256)]
REPO = Path(__file__).resolve().parent.parent


def _dpdk_missing() -> str | None:
    """Why the binding cannot be built here, or None."""
    if shutil.which("pkg-config") is None:
        return "pkg-config is not installed (apt-get install " + " ".join(CI_PACKAGES) + ")"
    if subprocess.run(["pkg-config", "--exists", "libdpdk"]).returncode != 0:
        return "libdpdk-dev is not installed (apt-get install " + " ".join(CI_PACKAGES) + ")"
    try:
        dp.build()  # once, here: the spawned scenarios then only load it
    except dp.DpdkUnavailable as e:
        return f"the DPDK binding does not build: {e}"
    return None


MISSING = _dpdk_missing()
needs_dpdk = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        conn.send((True, fn(*args)))
    except BaseException as e:  # noqa: BLE001 - handed to the parent to re-raise
        conn.send((False, repr(e)))


def in_child(fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
    """Run fn(*args) in a fresh spawned process and return its result; its exception
    or a hang fails the test here (a hung child is killed)."""
    ctx = get_context("spawn")
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(there, fn, args))
    proc.start()
    there.close()
    try:
        if not here.poll(timeout):
            raise AssertionError(f"{fn.__name__} did not finish within {timeout} s")
        ok, value = here.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if not ok:
        raise AssertionError(f"{fn.__name__} raised {value}")
    return value


@pytest.fixture(scope="module", autouse=True)
def _remove_runtime_dirs() -> Any:
    yield
    remove_dpdk_runtime_dirs(PREFIX)


def sample_frames(n: int = 30) -> list[Ether]:
    """TCP and UDP over IPv4 of assorted sizes, up to a full 1514-byte frame."""
    frames = []
    for i in range(n):
        l4 = TCP(sport=1000 + i, dport=80) if i % 2 else UDP(sport=53, dport=2000 + i)
        size = 1500 - 20 - 20 if i == n - 1 else (i * 53) % 700
        frames.append(Ether(src="02:00:00:00:01:02", dst="02:00:00:00:00:01")
                      / IP(src="10.0.1.2", dst=f"10.9.{i}.1") / l4 / Raw(b"q" * size))
    return frames


# --- scenarios (run in the child) ---------------------------------------------------


def _engine_pool(nbufs: int = 256) -> tuple[Any, Any]:
    from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
    from engine.shm.pool import Buffers

    mem = EngineMemory.create(Geometry.new(3, 1, nbufs=nbufs, ring_size=64))
    return mem, Buffers(mem, AGENT_IO)


def scenario_pcap_rx(inp: str, out: str) -> dict[str, Any]:
    mem, buffers = _engine_pool()
    free_before = buffers.available()
    with dp.Dpdk(EAL) as d:
        port = d.port(f"net_pcap0,rx_pcap={inp},tx_pcap={out}", 1, mac="02:00:00:00:00:01",
                      mtu=1500)
        got: list[np.ndarray] = []
        for _ in range(1000):  # the pcap PMD hands out a file in bursts
            idx = port.rx_burst(0, mem, buffers, 2, 8)
            got.append(idx)
            if len(idx) == 0 and sum(map(len, got)) > 0:
                break
        idx = np.concatenate(got)
        frames = [bytes(mem.data[i, : mem.length[i]]) for i in idx]
        ports = mem.port[idx].tolist()
        held = free_before - buffers.available()
        stats = port.stats()
        xstats = port.xstats()
        info = {"driver": port.driver, "mtu": port.mtu, "rss_hf": port.rss_hf}
    mem.close()
    return {"frames": frames, "ports": ports, "held": held, "stats": stats,
            "xstats": xstats, "info": info}


def scenario_pcap_tx(inp: str, out: str, frames: list[bytes]) -> dict[str, Any]:
    mem, buffers = _engine_pool()
    idx = buffers.alloc(len(frames))
    for i, f in zip(idx, frames, strict=True):
        mem.data[i, : len(f)] = np.frombuffer(f, np.uint8)
        mem.length[i] = len(f)
    with dp.Dpdk(EAL) as d:
        port = d.port(f"net_pcap0,rx_pcap={inp},tx_pcap={out}", 1)
        sent = port.tx_burst(0, mem, idx)
        buffers.free(idx)  # TX copies: the rows are free again at once
        stats = port.stats()
        pool_after = d.pool_available()
        pool_size = 8191
    mem.close()
    return {"sent": sent, "stats": stats, "mbufs_leaked": pool_size - pool_after}


def scenario_null() -> dict[str, Any]:
    data = np.zeros((512, 2048), np.uint8)
    length = np.zeros(512, np.uint32)
    # net_null0 named on the EAL command line, net_null1 attached later (rte_dev_probe)
    with dp.Dpdk([*EAL, "--vdev", "net_null0"]) as d:
        port = d.port("net_null0", 2)
        before = d.pool_available()
        rx = [len(port.rx_into(q, data, np.arange(n, dtype=np.uint32), length, None, 0))
              for q, n in ((0, 100), (1, 300), (0, 1))]
        rx_len = int(length[0])
        tx = [port.tx_from(q, data, np.arange(n, dtype=np.uint32), np.full(n, 60))
              for q, n in ((0, 100), (1, 512))]
        # rows smaller than the frames: every frame is dropped and counted, none copied
        small = np.zeros((16, 32), np.uint8)
        released: list[np.ndarray] = []
        over = port.rx_into(0, small, np.arange(16, dtype=np.uint32), np.zeros(16, np.uint32),
                            None, 0, released.append)
        bad = []
        for call in (lambda: port.rx_into(0, data, np.array([512], np.uint32), length, None, 0),
                     lambda: port.tx_from(0, data, np.array([0, 512], np.uint32),
                                          np.full(2, 60))):
            try:
                call()
            except IndexError as e:
                bad.append(str(e))
        stats = port.stats()
        leaked = before - d.pool_available()
        info = {"rss_hf": port.rss_hf, "id": port.id, "id_again": d.port_id("net_null0"),
                "mtu": d.port("net_null1", 1, mtu=9000).mtu}
    return {"rx": rx, "rx_len": rx_len, "tx": tx, "oversize": len(over),
            "released": [r.tolist() for r in released], "stats": stats, "leaked": leaked,
            "bad": bad,
            "info": info}


def scenario_ring_loopback(frames: list[bytes]) -> dict[str, Any]:
    # net_ring0 created by EAL uses one ring per queue for both RX and TX: what is sent
    # on queue q comes back on queue q
    n = len(frames)
    data = np.zeros((2 * n, 2048), np.uint8)
    length = np.zeros(2 * n, np.uint32)
    for i, f in enumerate(frames):
        data[i, : len(f)] = np.frombuffer(f, np.uint8)
        length[i] = len(f)
    out: dict[str, Any] = {}
    with dp.Dpdk([*EAL, "--vdev", "net_ring0"]) as d:
        port = d.port("net_ring0", 2, nrxd=256, ntxd=256)
        half = n // 2
        out["sent"] = [port.tx_from(0, data, np.arange(half, dtype=np.uint32), length[:half]),
                       port.tx_from(1, data, np.arange(half, n, dtype=np.uint32),
                                    length[half:n])]
        port_col = np.zeros(2 * n, np.uint16)
        q1 = port.rx_into(1, data, np.arange(n, n + 2 * n - half, dtype=np.uint32)[: n - half],
                          length, port_col, 7)
        q0 = port.rx_into(0, data, np.arange(n + n - half, 2 * n, dtype=np.uint32), length,
                          port_col, 5)
        out["q0"] = [bytes(data[i, : length[i]]) for i in q0]
        out["q1"] = [bytes(data[i, : length[i]]) for i in q1]
        out["ports"] = sorted(set(port_col[q0].tolist())), sorted(set(port_col[q1].tolist()))
        # more than the ring holds: the device takes what fits, the rest of the mbufs are
        # freed at once, and draining the ring gives every mbuf back
        before = d.pool_available()
        big = np.zeros((3000, 128), np.uint8)
        out["full_sent"] = port.tx_from(0, big, np.arange(3000, dtype=np.uint32),
                                        np.full(3000, 60))
        out["held_by_ring"] = before - d.pool_available()
        drained = 0
        while n := len(port.rx_into(0, big, np.arange(512, dtype=np.uint32),
                                    np.zeros(3000, np.uint32), None, 0)):
            drained += n
        out["drained"] = drained
        out["leaked"] = before - d.pool_available()
    return out


def scenario_secondary_rx(prefix: str, queue: int, n: int) -> list[bytes]:
    """A secondary process: attach to the primary's EAL (lcore 1, as the mempool's
    per-lcore caches must not be shared with the primary's lcore 0), find its port and
    mbuf pool, receive n frames on its own queue and send them back on queue 0."""
    with dp.Dpdk(["--lcores", "1@0", "--log-level=*:error", "--no-pci", "--proc-type=secondary",
                  "--file-prefix", prefix]) as d:
        assert d.secondary
        port = d.port("net_ring0", 2)
        data = np.zeros((n, 2048), np.uint8)
        length = np.zeros(n, np.uint32)
        got = port.rx_into(queue, data, np.arange(n, dtype=np.uint32), length, None, 0)
        port.tx_from(0, data, got, length[got])
        return [bytes(data[i, : length[i]]) for i in got]


def scenario_primary(prefix: str, frames: list[bytes]) -> dict[str, Any]:
    """The primary: a ring port with two queue pairs; queue 1 is left to a secondary."""
    n = len(frames)
    data = np.zeros((n, 2048), np.uint8)
    length = np.array([len(f) for f in frames], np.uint32)
    for i, f in enumerate(frames):
        data[i, : len(f)] = np.frombuffer(f, np.uint8)
    with dp.Dpdk(["-l", "0", "--log-level=*:error", "--no-pci", "--file-prefix", prefix,
                  "--vdev", "net_ring0"]) as d:
        port = d.port("net_ring0", 2, nrxd=256, ntxd=256)
        sent = port.tx_from(1, data, np.arange(n, dtype=np.uint32), length)
        seen = in_child(scenario_secondary_rx, prefix, 1, n)
        back = port.rx_into(0, data, np.arange(n, dtype=np.uint32), length, None, 0)
        returned = [bytes(data[i, : length[i]]) for i in back]
    return {"sent": sent, "secondary": seen, "returned": returned}


def scenario_open(device: str, nqueues: int = 1, mtu: int | None = None) -> str:
    with dp.Dpdk(EAL) as d:
        try:
            d.port(device, nqueues, mtu=mtu)
        except dp.DpdkError as e:
            return f"DpdkError: {e}"
    return "opened"


def scenario_eal_twice() -> str:
    d = dp.Dpdk(EAL)
    try:
        dp.Dpdk(EAL)
    except dp.DpdkError as e:
        return str(e)
    finally:
        d.close()
    return "no error"


def scenario_bad_eal() -> str:
    try:
        dp.Dpdk(["--definitely-not-an-eal-flag"])
    except dp.DpdkError as e:
        return str(e)
    return "no error"


# --- tests --------------------------------------------------------------------------


@needs_dpdk
def test_pcap_rx_fills_pool_rows(tmp_path: Path) -> None:
    frames = sample_frames()
    wrpcap(str(tmp_path / "in.pcap"), frames)
    r = in_child(scenario_pcap_rx, str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"))
    assert r["frames"] == [bytes(f) for f in frames]
    assert r["ports"] == [2] * len(frames)
    assert r["held"] == len(frames)  # unused buffers went back to the pool
    assert r["stats"]["ipackets"] == len(frames)
    assert r["stats"]["ibytes"] == sum(len(f) for f in frames)
    assert r["xstats"]["rx_good_packets"] == len(frames)
    assert r["info"]["driver"] == "net_pcap" and r["info"]["mtu"] == 1500
    assert r["info"]["rss_hf"] == 0  # a pcap vdev has no RSS: none was asked for


@needs_dpdk
def test_pcap_tx_writes_pool_rows(tmp_path: Path) -> None:
    frames = [bytes(f) for f in sample_frames()]
    wrpcap(str(tmp_path / "in.pcap"), [])
    r = in_child(scenario_pcap_tx, str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"),
                 frames)
    assert r["sent"] == len(frames)
    assert r["stats"]["opackets"] == len(frames)
    assert r["mbufs_leaked"] == 0
    assert [bytes(p) for p in rdpcap(str(tmp_path / "out.pcap"))] == frames


@needs_dpdk
def test_null_burst_counts() -> None:
    r = in_child(scenario_null)
    assert r["rx"] == [100, 300, 1]  # net_null always has frames: bursts fill up
    assert r["rx_len"] == 64  # the null PMD's default frame size
    assert r["tx"] == [100, 512]
    assert r["oversize"] == 0 and r["released"] == [list(range(16))]
    assert r["stats"]["rx_oversize"] == 16
    assert r["stats"]["opackets"] == 612
    assert r["leaked"] == 0  # every mbuf went back, received or sent
    assert r["info"]["rss_hf"] != 0  # two queues on a device that offers RSS
    assert r["info"]["id"] == r["info"]["id_again"]
    assert r["info"]["mtu"] == 9000
    assert r["bad"] == ["buffer index 512 outside a pool of 512"] * 2  # checked before C


@needs_dpdk
def test_ring_loopback_per_queue() -> None:
    frames = [bytes(f) for f in sample_frames(20)]
    r = in_child(scenario_ring_loopback, frames)
    assert r["sent"] == [10, 10]
    assert r["q0"] == frames[:10]
    assert r["q1"] == frames[10:]
    assert r["ports"] == ([5], [7])
    assert 0 < r["full_sent"] < 3000
    assert r["held_by_ring"] == r["full_sent"] == r["drained"]
    assert r["leaked"] == 0


@needs_dpdk
@pytest.mark.parametrize("device, needle", [
    ("net_bogus0,foo=1", "cannot attach DPDK device 'net_bogus0,foo=1'"),
    ("net_pcap0,rx_pcap=/nonexistent/in.pcap,tx_pcap=/tmp/x.pcap",
     "cannot attach DPDK device 'net_pcap0,rx_pcap=/nonexistent/in.pcap"),
    (",x=1", "bad DPDK device string"),
    ("0000:99:00.0", "cannot attach DPDK device '0000:99:00.0'"),
])
def test_bad_device_string(device: str, needle: str) -> None:
    assert needle in in_child(scenario_open, device)


@needs_dpdk
def test_bad_port_settings() -> None:
    msg = in_child(scenario_open, "net_null0", 4000)
    assert msg.startswith("DpdkError: port setup") and "4000 queue pair(s)" in msg
    for mtu in (50, 100000):
        assert f"MTU {mtu} out of range" in in_child(scenario_open, "net_null0", 1, mtu)


@needs_dpdk
def test_eal_errors() -> None:
    assert "once per process" in in_child(scenario_eal_twice)
    assert "rte_eal_init(--definitely-not-an-eal-flag) failed" in in_child(scenario_bad_eal)


@needs_dpdk
def test_build_is_cached_outside_repo() -> None:
    path = dp.build()
    assert path == dp.build()  # second call: found in the cache, not rebuilt
    assert REPO not in path.parents
    assert path.parent.parent == dp.cache_root()


@pytest.fixture
def hugepages() -> Any:
    """Hugepages for DPDK's multi-process mode, reserved (as root) for the test when
    none are, and given back after. By hand:
        echo 512 > /proc/sys/vm/nr_hugepages
        mkdir -p /dev/hugepages && mount -t hugetlbfs nodev /dev/hugepages"""
    if dp.hugepages_reserved():
        yield
        return
    if os.geteuid() != 0:
        pytest.skip("multi-process DPDK needs hugepages: reserve them as root "
                    "(echo 512 > /proc/sys/vm/nr_hugepages; mount -t hugetlbfs nodev "
                    "/dev/hugepages)")
    nr = Path("/proc/sys/vm/nr_hugepages")
    before = nr.read_text().strip()
    mount = Path("/dev/hugepages")
    mount.mkdir(exist_ok=True)
    we_mount = subprocess.run(["mountpoint", "-q", str(mount)]).returncode != 0
    try:
        try:
            nr.write_text("256\n")
            if we_mount:
                subprocess.run(["mount", "-t", "hugetlbfs", "nodev", str(mount)], check=True)
        except (OSError, subprocess.CalledProcessError) as e:  # e.g. a read-only /proc/sys
            pytest.skip(f"could not reserve hugepages: {e}")
        if not dp.hugepages_reserved():
            pytest.skip("could not reserve hugepages")
        yield
    finally:
        if we_mount:
            subprocess.run(["umount", str(mount)], stderr=subprocess.DEVNULL)
        try:
            nr.write_text(before + "\n")
        except OSError:
            pass


@needs_dpdk
def test_secondary_process_receives_on_its_queue(hugepages: None) -> None:
    prefix = f"{PREFIX}mp"
    frames = [bytes(f) for f in sample_frames(12)]
    try:
        r = in_child(scenario_primary, prefix, frames)
    finally:
        # the primary's hugepage files and runtime directory outlive it
        for f in Path("/dev/hugepages").glob(f"{prefix}map_*"):
            f.unlink(missing_ok=True)
        shutil.rmtree(f"/var/run/dpdk/{prefix}", ignore_errors=True)
    assert r["sent"] == len(frames)
    assert r["secondary"] == frames  # the primary sent on queue 1: the secondary got it
    assert r["returned"] == frames  # and what the secondary sent on queue 0 came back


def _run_without(env_change: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_change}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO)


USE = ("import engine.io.dpdk as d\n"
       "try:\n    d.Dpdk(['--no-huge'])\n"
       "except d.DpdkUnavailable as e:\n    print('UNAVAILABLE', e)\n")


def test_missing_pkg_config_is_a_clear_error(tmp_path: Path) -> None:
    # no pkg-config on PATH, and an empty cache: importing works, using names the packages
    p = _run_without({"PATH": str(tmp_path), "FWD_DPDK_CACHE": str(tmp_path / "c")}, USE)
    assert p.returncode == 0, p.stderr
    assert "UNAVAILABLE pkg-config is not installed" in p.stdout
    assert "apt-get install dpdk-dev libdpdk-dev" in p.stdout


@pytest.mark.skipif(shutil.which("pkg-config") is None, reason="pkg-config is not installed")
def test_missing_libdpdk_is_a_clear_error(tmp_path: Path) -> None:
    # pkg-config that finds no libdpdk.pc, as on a machine without libdpdk-dev
    p = _run_without({"PKG_CONFIG_LIBDIR": str(tmp_path), "PKG_CONFIG_PATH": str(tmp_path),
                      "FWD_DPDK_CACHE": str(tmp_path / "c")}, USE)
    assert p.returncode == 0, p.stderr
    assert "UNAVAILABLE libdpdk is not known to pkg-config" in p.stdout
    assert "apt-get install dpdk-dev libdpdk-dev" in p.stdout


def test_build_command_reports_missing_packages(tmp_path: Path) -> None:
    p = _run_without({"PATH": str(tmp_path)}, "from engine.io.dpdk.__main__ import main\n"
                     "raise SystemExit(main(['build']))")
    assert p.returncode == 1
    assert "apt-get install dpdk-dev libdpdk-dev" in p.stderr
