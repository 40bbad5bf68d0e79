"""A fragment flood through the engine in the namespace lab: memory stays bounded, a
big ping keeps passing, the control socket keeps answering.

h1 runs a scapy-built flood (`FLOOD`, in h1's namespace, frames built once and sent
on a packet socket with a fresh random IP ID each time) of datagrams that never
complete, to h2 through the engine and to the engine's own address: overlapping
fragments (the queue is dropped, RFC 5722), 8-byte fragments without a last one,
datagrams whose first fragment never comes and ones whose last never comes. The
engine runs `[reassembly] mode = "full"` with a small high_thresh and a short
timeout, so the flood fills reassembly memory within a fraction of a second and
eviction (`inet_frag_evictor`) works the whole time. Meanwhile:

- `ping -s 4000` h1 -> h2 (three fragments each way, reassembled and refragmented by
  the engine) keeps passing;
- the control socket's `stats` (what `fwd stats --json` prints) is asked every
  0.2 s and answers every time within `STATS_TIMEOUT_S`, with reassembly memory
  never above high_thresh;

and afterwards the high-water mark shows the flood reached the threshold and never
passed it, every queue leaves (evicted, dropped, or timed out) so that the books
balance with nothing held (`fwd stats` text and Prometheus show the same levels),
and at stop the pool is whole. A few flood fragments may end as `too_far` or
`duplicate`: a random ID now and then meets a queue still held from earlier.

Robustness: this machine has 2 cores shared with other jobs, and under starvation
the lab loses packets that have nothing to do with the flood (an AF_PACKET ring
overrun, a ping reply later than its -W). So the flood's rate is modest
(`FLOOD_RATE`), what must hold exactly is checked on the engine's own numbers
(memory, high-water mark, accounting), and the ping is judged by a clear majority
(`PING_MIN` of `PINGS`) rather than all of them; a flood that starved the
forwarding path would lose nearly every 4,000-byte ping (each needs 3 fragments to
survive each way), not a few. Needs root, like test_lab.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_lab import Engine, missing, received, sh

from engine.cli.client import ControlError, request
from engine.cli.lab import ENGINE_MACS, Lab, down, engine_config, up

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

HIGH_THRESH = 128 * 1024  # small: the flood reaches it within a fraction of a second
LOW_THRESH = 96 * 1024
TIMEOUT_S = 2.0  # queues the flood leaves are gone this long after it stops
FLOOD_RATE = 1000  # frames/s asked of the sender: sustainable with 2 busy cores
PINGS = 16  # ping -s 4000 during the flood, every 0.25 s
PING_MIN = 12  # of PINGS: a clear majority (see the module docstring)
STATS_EVERY_S = 0.2
STATS_TIMEOUT_S = 3.0  # the longest a `stats` answer may take under the flood
# the largest charge one fragment can add: a full-size fragment (the ping's) and its
# queue (engine/slowpath/reasm.py: SKB_OVERHEAD 576, IPQ_SIZE 192)
MAX_CHARGE = 1500 + 576 + 192

# The flood, run in h1's namespace: argv = h1's MAC, the engine's p0 MAC, seconds,
# frames per second. Prints {"sent": frames, "seconds": elapsed} when done.
FLOOD = textwrap.dedent("""
    import json, random, socket, struct, sys, time
    from scapy.all import IP, Ether, Raw

    src_mac, dst_mac, seconds, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), \\
        int(sys.argv[4])
    # (offset, payload bytes, MF) per fragment: datagrams that never complete
    KINDS = {
        "overlap": [(0, 24, True), (8, 24, True)],  # the second overlaps the first
        "tiny": [(0, 8, True), (8, 8, True), (16, 8, True)],  # 8 bytes each, no last
        "no_first": [(16, 8, True), (24, 8, False)],  # the last, never the first
        "no_last": [(0, 64, True), (64, 64, True)],  # the first, never the last
    }
    groups = [[bytearray(bytes(Ether(src=src_mac, dst=dst_mac)
                               / IP(src="10.0.1.2", dst=dst, id=0, proto=17,
                                    flags="MF" if mf else 0, frag=off // 8)
                               / Raw(bytes(size))))
               for off, size, mf in frags]
              for dst in ("10.0.2.2", "10.0.1.1") for frags in KINDS.values()]

    def checksum(h):
        s = sum(struct.unpack("!10H", h))
        s = (s & 0xFFFF) + (s >> 16)
        return ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        for group in groups:
            ident = random.randrange(1 << 16)
            for f in group:
                f[18:20] = ident.to_bytes(2, "big")  # Ethernet 14 + the IP ID's offset 4
                f[24:26] = b"\\0\\0"
                f[24:26] = checksum(bytes(f[14:34])).to_bytes(2, "big")
                s.send(f)
                sent += 1
        ahead = t0 + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}))
""")


class StatsPoller(threading.Thread):
    """Asks the engine's `stats` every STATS_EVERY_S, each within STATS_TIMEOUT_S;
    keeps (latency, reply) and every failure."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.stop_now = threading.Event()
        self.replies: list[tuple[float, dict]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop_now.is_set():
            t0 = time.monotonic()
            try:
                r = request(self.sock, {"cmd": "stats"}, timeout=STATS_TIMEOUT_S)
                if r["ok"]:
                    self.replies.append((time.monotonic() - t0, r["stats"]))
                else:
                    self.failures.append(str(r))
            except ControlError as err:
                self.failures.append(str(err))
            self.stop_now.wait(max(0.0, STATS_EVERY_S - (time.monotonic() - t0)))


@pytest.fixture(scope="module")
def lab():
    prefix = f"ff{os.getpid() % 100000}"
    down(prefix)
    built = up(prefix)
    yield built
    down(prefix)


def mac_of(ns: str) -> str:
    return json.loads(sh(ns, "ip", "-j", "link", "show", "eth0").stdout)[0]["address"]


def fwd_stats(sock: Path) -> dict:
    """`fwd stats --json`, the command itself."""
    r = subprocess.run([sys.executable, "-m", "engine.cli", "stats", "--json", "--socket",
                        str(sock)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def fwd_stats_text(sock: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "engine.cli", "stats", "--socket", str(sock)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of the engine's Prometheus endpoint."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {k: float(v) for k, v in (x.split() for x in lines
                                     if x and not x.startswith("#") and "{" not in x)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fragment_flood_keeps_memory_bounded_and_ping_passing(lab: Lab, tmp_path: Path):
    sock = tmp_path / "fwd.sock"
    cfg = tmp_path / "flood.toml"
    metrics = free_port()
    cfg.write_text(engine_config(lab, str(sock), workers=1, batch=256, extra=f"""
[metrics]
listen = "127.0.0.1:{metrics}"

[reassembly]
mode = "full"
timeout_s = {TIMEOUT_S}
high_thresh = {HIGH_THRESH}
low_thresh = {LOW_THRESH}
"""))
    engine = Engine(cfg, sock)
    flood = None
    poller = StatsPoller(sock)
    try:
        h1 = lab.host("h1")
        # h2's MAC learned, and the path works, before the flood
        warm = sh(h1, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", "-s", "4000", "10.0.2.2")
        assert received(warm.stdout) >= 1, warm.stdout + warm.stderr
        before = fwd_stats(sock)
        ping_s = int(PINGS * 0.25 + 3)  # ping's -w: it ends by then whatever happens
        flood_s = ping_s + 3.0  # outlasts the ping, started as soon as memory is full
        flood = subprocess.Popen(["ip", "netns", "exec", h1, sys.executable, "-c", FLOOD,
                                  mac_of(h1), ENGINE_MACS[0], str(flood_s), str(FLOOD_RATE)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        poller.start()
        # the ping starts once the flood has filled reassembly memory (scapy takes a
        # while to start under load): from then on eviction runs all the time
        deadline = time.monotonic() + 30
        while not (poller.replies and poller.replies[-1][1]["reassembly"]["memory_high"]
                   > HIGH_THRESH - MAX_CHARGE):
            assert flood.poll() is None, flood.communicate()
            assert time.monotonic() < deadline, "the flood never filled reassembly memory"
            time.sleep(0.05)
        ping = sh(h1, "ping", "-n", "-s", "4000", "-c", str(PINGS), "-i", "0.25", "-W", "2",
                  "-w", str(ping_s), "10.0.2.2", timeout=60)
        during = fwd_stats(sock)  # the command itself, under the flood
        assert flood.poll() is None, "the flood ended before the ping: not measured under it"
        out, err = flood.communicate(timeout=60)
        assert flood.returncode == 0, err
        sent = json.loads(out)
        poller.stop_now.set()
        poller.join(STATS_TIMEOUT_S + 5)

        # the flood was there and went through reassembly
        reqds = during["snmp"]["ReasmReqds"] - before["snmp"]["ReasmReqds"]
        assert sent["sent"] > 0.5 * FLOOD_RATE * flood_s, sent
        assert reqds > 1000, (reqds, sent)

        # the ping passed, all but a few (see the module docstring)
        got = received(ping.stdout)
        print(f"flood: {sent['sent']} frames in {sent['seconds']:.1f} s; ping -s 4000: "
              f"{got} of {PINGS}")
        assert got >= PING_MIN, ping.stdout + ping.stderr

        # stats answered every time, each in bounded time, throughout
        latencies = [t for t, _ in poller.replies]
        print(f"stats: {len(latencies)} answers, slowest {max(latencies):.3f} s")
        assert poller.failures == []
        assert len(latencies) >= 0.5 * flood_s / STATS_EVERY_S  # asked all along
        levels = [s["reassembly"] for _, s in poller.replies]
        assert all(r["memory"] <= r["memory_high"] <= HIGH_THRESH for r in levels), levels
        highs = [r["memory_high"] for r in levels]
        assert highs == sorted(highs)  # a high-water mark never goes down

        # the flood reached the threshold (within one fragment's charge), never past it
        r = during["reassembly"]
        print(f"reassembly high-water mark {r['memory_high']} of {HIGH_THRESH}")
        assert (r["high_thresh"], r["low_thresh"]) == (HIGH_THRESH, LOW_THRESH)
        assert HIGH_THRESH - MAX_CHARGE < r["memory_high"] <= HIGH_THRESH
        drops = during["slow_drop"]
        assert drops.get("reasm_mem_limit", 0) > 0 and drops.get("reasm_overlap", 0) > 0

        # once the flood stops, every queue leaves (timeout, at most TIMEOUT_S after
        # its first fragment) and the books balance with nothing held
        deadline = time.monotonic() + TIMEOUT_S + 10
        while True:
            after = fwd_stats(sock)
            r, acc = after["reassembly"], after["accounting"]
            if (r["inuse"], r["memory"], acc["slow_held"]) == (0, 0, 0) and acc["balanced"]:
                break
            assert time.monotonic() < deadline, (r, acc)
            time.sleep(0.2)
        drops = after["slow_drop"]
        print(f"reassembly: {after['snmp']['ReasmReqds']} fragments, drops "
              f"{ {k: v for k, v in drops.items() if k.startswith('reasm_')} }, "
              f"rx drops {after['ports']['p0']['rx_drops']}")
        assert drops.get("reasm_timeout", 0) > 0
        reasm_drops = sum(v for k, v in drops.items() if k.startswith("reasm_"))
        # every fragment taken ended merged into a datagram or dropped under a reason
        assert after["snmp"]["ReasmReqds"] == acc["slow_merged"] + reasm_drops
        assert r["memory_high"] >= during["reassembly"]["memory_high"]
        # the same levels in the text and in Prometheus
        assert (f"reassembly: 0 queues, 0 bytes (high-water {r['memory_high']}; high_thresh "
                f"{HIGH_THRESH}, low_thresh {LOW_THRESH})") in fwd_stats_text(sock)
        m = scrape(metrics)
        assert (m["fwd_reassembly_memory_high_bytes"], m["fwd_reassembly_memory_bytes"],
                m["fwd_reassembly_high_thresh_bytes"]) == (r["memory_high"], 0, HIGH_THRESH)
    finally:
        poller.stop_now.set()
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        if engine.proc.poll() is None:
            took, final, err = engine.stop()
        else:
            final = None
    # at stop: drained in time, balanced, every buffer back in the pool
    assert final is not None, "the engine died under the flood"
    assert took < 10, f"took {took:.1f} s to stop"
    assert final["accounting"]["balanced"], final
    pool = final["pool"]
    assert pool is not None and pool["free"] == pool["size"] and pool["lost"] == 0, pool
