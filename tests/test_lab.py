"""Real hosts through the engine: the `fwd lab` namespaces, AF_PACKET ports, and the
hosts' own ping, traceroute, tracepath and iperf3.

The lab is built with `fwd lab up` under a prefix of this test's own; the engine runs
as `fwd run` (a subprocess, as a person would run it) inside the router namespace,
which has forwarding off and no address on the engine's ports: whatever h1 and h2
get answered was done by the engine (`test_the_kernel_does_not_forward` shows the
same pings failing with the engine stopped). The h2 side's link has MTU 1400 (both
ends, and the engine's port), so tracepath has something to discover.

Needs root, iproute2, iputils ping/tracepath, traceroute and iperf3 (`.ci/run`
installs them); skipped, naming what is missing, otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli.lab import Lab, down, engine_config, up

from conftest import DATAPATH

TOOLS = ("ip", "ping", "tracepath", "traceroute", "iperf3")
H2_MTU = 1400
FWD = [sys.executable, "-m", "engine.cli"]


def missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, AF_PACKET)"
    absent = [t for t in TOOLS if shutil.which(t) is None]
    if absent:
        return f"needs {', '.join(absent)} (Debian: iproute2 iputils-ping iputils-tracepath " \
               "traceroute iperf3)"
    return None


pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")


def lab_config(lab: Lab, sock: Path, workers: int = 2) -> str:
    return engine_config(lab, str(sock), workers=workers, batch=256, p1_mtu=H2_MTU,
                         extra="\n[icmp]\nratelimit_ms = 0\n", datapath=DATAPATH)


def sh(ns: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          timeout=timeout)


class Engine:
    """`fwd run CONFIG` in the background; `stop()` sends SIGTERM and reads the result."""

    def __init__(self, config: Path, sock: Path):
        self.sock = sock
        self.proc = subprocess.Popen([*FWD, "run", "--json", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not self.ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"fwd run exited {self.proc.returncode}: "
                                     f"{self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("fwd run did not start within 60 s")
            time.sleep(0.1)

    def ready(self) -> bool:
        if not self.sock.exists():
            return False
        r = subprocess.run([*FWD, "stats", "--json", "--socket", str(self.sock)],
                           capture_output=True, text=True)
        return r.returncode == 0 and all(w["loops"] for w in json.loads(r.stdout)["workers"])

    def stats(self) -> dict:
        r = subprocess.run([*FWD, "stats", "--json", "--socket", str(self.sock)],
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[float, dict, str]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=30)
        took = time.monotonic() - t0
        assert self.proc.returncode == 0, err
        return took, json.loads(out), err


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    prefix = f"fl{os.getpid() % 100000}"
    down(prefix)
    built = up(prefix, p1_mtu=H2_MTU)
    yield built
    down(prefix)


@pytest.fixture(scope="module")
def engine(lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("lab")
    sock = d / "fwd.sock"
    cfg = d / "lab.toml"
    cfg.write_text(lab_config(lab, sock))
    e = Engine(cfg, sock)
    yield e
    if e.proc.poll() is None:  # a test failed before test_sigterm_drains_and_exits_0
        e.proc.terminate()
        try:
            e.proc.wait(30)
        except subprocess.TimeoutExpired:
            e.proc.kill()  # its workers follow it (workers/loop.py: die_with_parent)
            e.proc.wait()


def ping(lab: Lab, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return sh(lab.host(host), "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", *args)


def received(out: str) -> int:
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


# -- what the router namespace's kernel does on its own: nothing ------------------------

def test_the_kernel_does_not_forward(lab):
    r = sh(lab.router, "sysctl", "-n", "net.ipv4.ip_forward")
    assert r.stdout.strip() == "0"
    addrs = json.loads(sh(lab.router, "ip", "-j", "-4", "addr", "show").stdout)
    assert [a["ifname"] for a in addrs if a["addr_info"] and a["ifname"] != "lo"] == []
    # no engine running yet in this test's order? make sure: a fresh lab of our own
    prefix = f"fk{os.getpid() % 100000}"
    down(prefix)
    bare = up(prefix)
    try:
        out = sh(bare.host("h1"), "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1",
                 "10.0.2.2").stdout
        assert received(out) == 0
    finally:
        down(prefix)


# -- through the engine ----------------------------------------------------------------

def test_ping_h1_to_h2(lab, engine):
    before = engine.stats()["snmp"]["ForwDatagrams"]
    r = ping(lab, "h1", "10.0.2.2")
    assert received(r.stdout) == 3, r.stdout + r.stderr
    assert engine.stats()["snmp"]["ForwDatagrams"] >= before + 6  # both ways


@pytest.mark.parametrize("address", ["10.0.1.1", "10.0.2.1"])
def test_ping_the_engine(lab, engine, address):
    r = ping(lab, "h1", address)
    assert received(r.stdout) == 3, r.stdout + r.stderr


def test_big_ping_is_fragmented_both_ways(lab, engine):
    before = engine.stats()["snmp"]
    r = ping(lab, "h1", "-s", "4000", "10.0.2.2")
    assert received(r.stdout) == 3, r.stdout + r.stderr
    after = engine.stats()["snmp"]
    # h1 sends 1500-byte fragments, which the engine reassembles ("full" mode) and
    # re-fragments for the 1400-byte link; h2's reply comes in 1400-byte fragments
    assert after["ReasmOKs"] >= before["ReasmOKs"] + 6
    assert after["FragCreates"] > before["FragCreates"], (before, after)


def test_ping_record_route_shows_the_engine(lab, engine):
    r = ping(lab, "h1", "-R", "10.0.2.2")
    assert received(r.stdout) == 3, r.stdout + r.stderr
    rr = r.stdout.split("RR:")[1].split("\n\n")[0].split()
    # every hop records the address it sends from: h1, the engine out of p1, h2 (its
    # own echo, then the reply), the engine out of p0, h1 on receipt
    assert rr[:6] == ["10.0.1.2", "10.0.2.1", "10.0.2.2", "10.0.2.2", "10.0.1.1",
                      "10.0.1.2"], r.stdout


def test_ping_timestamps_with_addresses(lab, engine):
    r = ping(lab, "h1", "-T", "tsandaddr", "10.0.2.2")
    assert received(r.stdout) == 3, r.stdout + r.stderr
    first = r.stdout.split("TS:")[1].split("\n\n")[0]
    stamped = re.findall(r"(\d+\.\d+\.\d+\.\d+)\s+(-?\d+)", first)
    # a timestamp option is filled in at receive (ip_options_compile), with the address
    # of the interface it came in by: the engine's p0, 10.0.1.1, second after h1's own
    assert [a for a, _ in stamped][:2] == ["10.0.1.2", "10.0.1.1"], r.stdout


def test_traceroute_shows_the_engine_as_hop_1(lab, engine):
    # one probe at a time (-N 1): sent together, the probes of different hops are
    # different flows, which two workers may forward in either order, and h2 answers
    # only as many as its ICMP rate limit lets through (a burst of 6, then 1/s)
    r = sh(lab.host("h1"), "traceroute", "-n", "-N", "1", "-q", "1", "-w", "2", "-m", "5",
           "10.0.2.2", timeout=60)
    hops = re.findall(r"^\s*(\d+)\s+(\S+)", r.stdout, re.M)
    assert hops[:2] == [("1", "10.0.1.1"), ("2", "10.0.2.2")], r.stdout + r.stderr


def test_tracepath_discovers_the_smaller_mtu(lab, engine):
    r = sh(lab.host("h1"), "tracepath", "-n", "10.0.2.2")
    assert re.search(rf"pmtu {H2_MTU}\b", r.stdout), r.stdout + r.stderr
    assert "10.0.1.1" in r.stdout and "reached" in r.stdout, r.stdout


def test_ttl_1_gets_time_exceeded(lab, engine):
    r = sh(lab.host("h1"), "ping", "-n", "-c", "1", "-t", "1", "-W", "2", "10.0.2.2")
    assert "From 10.0.1.1" in r.stdout and "Time to live exceeded" in r.stdout, r.stdout


def test_no_route_gets_unreachable(lab, engine):
    r = sh(lab.host("h1"), "ping", "-n", "-c", "1", "-W", "2", "192.0.2.7")
    assert "From 10.0.1.1" in r.stdout and "Destination Net Unreachable" in r.stdout, r.stdout


def test_iperf3_tcp_completes(lab, engine):
    server = subprocess.Popen(["ip", "netns", "exec", lab.host("h2"), "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = sh(lab.host("h1"), "iperf3", "-c", "10.0.2.2", "-t", "2", "-J", timeout=60)
        result = json.loads(r.stdout)
        assert "error" not in result, result.get("error")
        got = result["end"]["sum_received"]["bytes"]
        assert got > 1_000_000
    finally:
        server.kill()
        server.wait()


def test_iperf3_udp_fragments_leave_as_they_came(lab, engine):
    """4,000-byte UDP datagrams that h1 cuts into 5 fragments (a route MTU of 1,000):
    the engine reassembles each one ([reassembly] mode "full") and sends its 5
    fragments on as they came (they fit h2's 1,400: the frag_list fast path, not 3
    fragments cut at 1,400), through the neighbour ARP learned; h2 gets every one."""
    h1, h2 = lab.host("h1"), lab.host("h2")
    sh(h1, "ip", "route", "replace", "10.0.2.2/32", "via", "10.0.1.1", "mtu", "lock", "1000",
       timeout=10).check_returncode()
    server = subprocess.Popen(["ip", "netns", "exec", h2, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        before = engine.stats()["snmp"]
        r = sh(h1, "iperf3", "-c", "10.0.2.2", "-u", "-l", "4000", "-b", "20M", "-t", "2",
               "-J", timeout=60)
        result = json.loads(r.stdout[r.stdout.index("{"):])  # after iperf3's MSS warning
        assert "error" not in result, result.get("error")
        after = engine.stats()["snmp"]
    finally:
        server.kill()
        server.wait()
        sh(h1, "ip", "route", "del", "10.0.2.2/32", timeout=10)
    got = result["end"]["sum"]
    datagrams = after["ReasmOKs"] - before["ReasmOKs"]
    assert got["packets"] > 1000 and got["lost_packets"] == 0, got
    assert datagrams == got["packets"]
    assert after["ReasmReqds"] - before["ReasmReqds"] == 5 * datagrams
    assert after["FragCreates"] - before["FragCreates"] == 5 * datagrams
    # and iperf3's TCP control connection, forwarded alongside
    assert after["ForwDatagrams"] - before["ForwDatagrams"] >= datagrams


def test_sigterm_drains_and_exits_0(lab, engine):
    took, stats, err = engine.stop()
    assert took < 5, f"took {took:.1f} s to stop"
    # the datapath this run was meant to exercise (make test runs the lab with both)
    assert ("compiled datapath ready" in err) == (DATAPATH == "compiled"), err
    assert stats["accounting"]["balanced"], stats
    assert stats["snmp"]["ForwDatagrams"] > 0
    # the engine's sockets are gone: no promiscuous packet socket left on the ports
    r = sh(lab.router, "ip", "-d", "-j", "link", "show", "p0")
    assert json.loads(r.stdout)[0].get("promiscuity", 0) == 0


# -- hosts with their offloads on ------------------------------------------------------

def test_iperf3_tcp_with_the_hosts_offloads_on(tmp_path):
    """h1 and h2 keep the kernel's default offloads (the lab turns them off otherwise):
    h1's TCP hands its veth 64 KiB TSO super-frames whose checksum is only the
    pseudo-header's (CHECKSUM_PARTIAL), which veth passes to the engine's p0 whole.
    The engine (PACKET_VNET_HDR) cuts them into MSS-sized segments with full
    checksums, as the kernel router's GSO would before a device without TSO; before,
    they were dropped as rx_oversize and even the SYN left with a wrong checksum."""
    prefix = f"fo{os.getpid() % 100000}"
    down(prefix)
    lab = up(prefix, host_offloads=True)
    try:
        if shutil.which("ethtool"):
            feats = sh(lab.host("h1"), "ethtool", "-k", "eth0").stdout
            assert "tcp-segmentation-offload: on" in feats, feats
            assert "tx-checksumming: on" in feats, feats
        sock = tmp_path / "fwd.sock"
        cfg = tmp_path / "lab.toml"
        cfg.write_text(engine_config(lab, str(sock), workers=1, batch=256, datapath=DATAPATH))
        engine = Engine(cfg, sock)
        try:
            server = subprocess.Popen(["ip", "netns", "exec", lab.host("h2"), "iperf3", "-s",
                                       "-1"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                r = sh(lab.host("h1"), "iperf3", "-c", "10.0.2.2", "-t", "2", "-J",
                       timeout=60)
                result = json.loads(r.stdout)
            finally:
                server.kill()
                server.wait()
        finally:
            _, stats, _ = engine.stop()
    finally:
        down(prefix)
    assert "error" not in result, result.get("error")
    got = result["end"]["sum_received"]["bytes"]
    assert got > 20_000_000, result["end"]["sum_received"]
    assert "rx_oversize" not in stats["drop"], stats["drop"]
    p0 = stats["ports"]["p0"]
    # counted as segments, none longer than the 1,500-byte MTU allows
    assert p0["rx_packets"] >= got // 1500 and p0["rx_bytes"] <= 1514 * p0["rx_packets"], p0
    assert stats["ports"]["p1"]["tx_packets"] >= got // 1500
    assert stats["accounting"]["balanced"], stats["accounting"]


# -- start-up errors: told before any worker starts ------------------------------------

def _run_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    return subprocess.run([*FWD, "run", str(cfg), "--socket", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)


def test_missing_namespace_is_named(tmp_path):
    r = _run_config(tmp_path, lab_config(Lab("fwd-no-such"), tmp_path / "s"))
    assert r.returncode == 1
    assert "no network namespace 'fwd-no-such-r'" in r.stderr, r.stderr


def test_missing_interface_is_named(lab, tmp_path):
    text = lab_config(lab, tmp_path / "s").replace('iface = "p1"', 'iface = "nope0"')
    r = _run_config(tmp_path, text)
    assert r.returncode == 1
    assert "'nope0'" in r.stderr and "no such interface" in r.stderr, r.stderr
