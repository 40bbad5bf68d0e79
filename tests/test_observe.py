"""The operator's view: `fwd trace`, `fwd capture`, `fwd stats --watch`, Prometheus metrics.

In-process tests drive a `Forwarder` over the Lab router's memory with the control
commands (`Commands.handle`, what the control socket serves): frames are put into
buffers after a trace or capture is armed, so what is recorded is exactly known, and
compared with scapy's view of the same frames. Engine tests run `fwd run
--keep-running` on pcap ports (the metrics endpoint, scraped over HTTP and parsed with
prometheus_client's parser; `stats --watch`; the trace and capture commands end to
end). Traffic that arrives after arming on a live engine is in test_observe_lab.py
(AF_PACKET, root).
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from test_capture_filter import pcapng_blocks

from engine.cli.client import ControlError, request
from engine.cli.trace_format import format_trace
from engine.cli.watch import accounting_line, agent_rates, port_rates, render
from engine.control.commands import Commands
from engine.control.metrics import REASSEMBLY
from engine.control.routing import build_routing
from engine.counters import Drop, Misc, Slow, index
from engine.io.pcap import read_pcap
from engine.observe.capture import drain
from engine.pipeline.tables import make_tables
from engine.pipeline.verdict import FORWARD, SLOW
from engine.shm.fib import FibWriter
from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
from engine.shm.pool import Buffers
from engine.shm.trace_capture import CAPTURE_SLOTS, OBS_ACTIVE
from engine.workers.forwarder import Forwarder

from conftest import MAC, Lab, load_frames, routed

ROOT = Path(__file__).resolve().parent.parent
PORTS = ["p0", "p1", "p2"]


@pytest.fixture(params=["numpy", "compiled"])
def router(tmp_path, request):
    """A worker of either datapath: while observed, both run the numpy stages."""
    cfg = Lab(tmp_path).config()
    mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=2048, ring_size=1024))
    fib = FibWriter.create()
    routing = build_routing(cfg, mem, fib)
    fw = Forwarder(mem, make_tables(cfg, mem, fib.lookup), 0, 64, datapath=request.param)
    fw.warm_up()
    io = Buffers(mem, AGENT_IO)
    yield mem, Commands(routing, mem), fw, io
    fib.close()
    fib.unlink()
    mem.close()


def ok(cmds: Commands, msg: dict) -> dict:
    reply = cmds.handle(msg)
    assert reply["ok"] is True, reply
    return reply


def udp(dst: str, seq: int = 0, src: str = "10.0.1.2", **ip) -> Ether:
    return (Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src=src, dst=dst, id=seq, **ip)
            / UDP(sport=1000 + seq, dport=9) / bytes(20))


def consume(mem: EngineMemory, io: Buffers) -> None:
    """Play the TX side and the slow path: take every descriptor back to the pool."""
    for name, ring in mem.rings.items():
        if name.startswith(("tx.", "slow.")):
            idx = ring.dequeue(1 << 20)
            if len(idx):
                io.free(idx)
    io.reclaim()


# ------------------------------------------------------------------ trace, in process


def mixed() -> list[Ether]:
    return [
        udp("10.0.2.2", 1),  # forwarded to h2 on p1 (static neighbour)
        udp("10.0.2.2", 2, ttl=1),  # slow path: time exceeded
        udp("10.0.2.2", 3, chksum=0x1234),  # drop: bad header checksum
        udp("10.66.1.1", 4),  # drop: blackhole route
        udp("10.9.1.1", 5),  # forwarded via 10.0.2.254 (gateway) on p1
        udp("192.0.2.1", 6),  # slow path: no route
        udp("10.0.2.2", 7, src="127.0.0.1"),  # drop: martian source
    ]


EXPECTED = [  # (rcv, route, forward) codes, final code
    ((0, 0, 0), FORWARD),
    ((0, 0, SLOW + Slow.ttl_exceeded), SLOW + Slow.ttl_exceeded),
    ((Drop.csum_error,) * 3, Drop.csum_error),
    ((0, Drop.blackhole, Drop.blackhole), Drop.blackhole),
    ((0, 0, 0), FORWARD),
    ((0, SLOW + Slow.no_route, SLOW + Slow.no_route), SLOW + Slow.no_route),
    ((0, Drop.martian_source, Drop.martian_source), Drop.martian_source),
]


def test_trace_records_every_stage_as_scapy_sees_the_packets(router):
    mem, cmds, fw, io = router
    fw.process(load_frames(mem, io, [udp("10.0.2.2", 99)]))  # before arming: not traced
    consume(mem, io)
    gen = ok(cmds, {"cmd": "trace.start", "count": 7})["gen"]
    frames = mixed()
    fw.process(load_frames(mem, io, frames))
    consume(mem, io)
    fw.process(load_frames(mem, io, [udp("10.0.2.2", 100)]))  # after the 7: not traced
    reply = ok(cmds, {"cmd": "trace.read", "gen": gen})
    assert reply["done"] is True and reply["ports"] == PORTS
    assert mem.obs_ctl[OBS_ACTIVE] == 0  # collected all 7: disarmed
    records = reply["records"]
    assert len(records) == 7
    for r, f, (stages, final) in zip(records, frames, EXPECTED, strict=True):
        raw = bytes(f)
        ip = Ether(raw)[IP]  # scapy's parse of the bytes the worker got
        assert r["hdr_in"][: len(raw)] == raw[:80]
        assert r["length"] == len(raw) and r["in_port"] == 0 and r["agent"] == fw.agent
        assert (r["saddr"], r["daddr"]) == (int.from_bytes(bytes(map(int, ip.src.split("."))),
                                                           "big"),
                                            int.from_bytes(bytes(map(int, ip.dst.split("."))),
                                                           "big"))
        assert (r["ttl"], r["tot_len"], r["protocol"], r["ihl"]) == (ip.ttl, ip.len, 17, 5)
        assert (r["rcv_code"], r["route_code"], r["forward_code"]) == stages
        assert r["final_code"] == final
    fwd_h2, fwd_gw = records[0], records[4]
    assert fwd_h2["egress"] == 1 and fwd_gw["egress"] == 1
    assert fwd_h2["hdr_out"] == routed(frames[0], "p1", "h2")[:34]
    assert fwd_gw["hdr_out"] == routed(frames[4], "p1", "gw")[:34]
    assert fwd_gw["gateway"] == 0x0A0002FE and fwd_gw["neighbour"] == 0x0A0002FE
    assert fwd_gw["mac"].to_bytes(8, "little")[:6] == bytes.fromhex(MAC["gw"].replace(":", ""))
    assert fwd_h2["frame_len"] == len(bytes(frames[0]))


def test_a_pass_while_armed_traces_the_batches_of_every_ring(router):
    """`poll` loads the observers' word before each ring's batch; once armed, the
    compiled pass hands the rest of the pass back to the numpy stages."""
    mem, cmds, fw, io = router

    def to_h1(port: int, seq: int) -> Ether:  # from a host behind port 1 or 2
        return (Ether(src=MAC[f"h{port + 1}"], dst=MAC[f"p{port}"])
                / IP(src=f"10.0.{port + 1}.2", dst="10.0.1.2", id=seq) / UDP())

    mem.rings["rx.0.0"].enqueue(load_frames(mem, io, [udp("10.0.2.2", 1)], port=0))
    mem.rings["rx.1.0"].enqueue(load_frames(mem, io, [to_h1(1, 2)], port=1))
    assert fw.poll() == 2  # not armed: nothing traced
    gen = ok(cmds, {"cmd": "trace.start", "count": 2})["gen"]
    mem.rings["rx.0.0"].enqueue(load_frames(mem, io, [udp("10.0.2.2", 3)], port=0))
    mem.rings["rx.2.0"].enqueue(load_frames(mem, io, [to_h1(2, 4)], port=2))
    assert fw.poll() == 2
    reply = ok(cmds, {"cmd": "trace.read", "gen": gen})
    assert [(r["in_port"], r["final_code"]) for r in reply["records"]] == [(0, 0), (2, 0)]
    assert len(mem.rings["tx.1.0"].dequeue(10)) == 2 and len(mem.rings["tx.0.0"].dequeue(10)) == 2
    row = mem.counters[fw.agent]
    assert row[index(Misc.forwarded)] == 4


def test_trace_is_printed_one_block_per_packet_one_line_per_stage(router):
    mem, cmds, fw, io = router
    gen = ok(cmds, {"cmd": "trace.start", "count": 7})["gen"]
    fw.process(load_frames(mem, io, mixed()))
    reply = ok(cmds, {"cmd": "trace.read", "gen": gen})
    text = format_trace(reply["records"], reply["ports"])
    blocks = text.split("\n\n")
    assert len(blocks) == 7
    first = blocks[0].splitlines()
    assert first[0].startswith("Packet 1: worker0 port p0, 62 bytes")
    assert [line.split(":")[0].strip() for line in first[1:]] == [
        "ethernet", "ipv4", "udp", "ip_rcv", "ip_route_input", "ip_route_input", "ip_forward",
        "neigh_output", "rewrite", "verdict"]
    assert "ipv4: 10.0.1.2 > 10.0.2.2 udp" in blocks[0]
    assert "  udp: 1001 > 9 length 28\n" in blocks[0]  # udp(): sport 1000 + seq, 20 bytes
    assert f"neigh_output: 10.0.2.2 is at {MAC['h2']} (static neighbour)" in blocks[0]
    assert f"rewrite: {MAC['p1']} > {MAC['h2']} ttl 63" in blocks[0]
    assert blocks[0].endswith("verdict: forward on p1, 62 bytes")
    assert blocks[1].endswith("verdict: slow path (ttl_exceeded)")
    assert "ip_rcv: drop (csum_error)" in blocks[2]
    assert "ip_route_input" not in blocks[2]  # never got there
    assert "via 10.0.2.254 dev p1 mtu 1500" in blocks[4]
    assert blocks[3].endswith("verdict: drop (blackhole)")


def test_trace_takes_only_the_port_asked_and_spans_batches(router):
    mem, cmds, fw, io = router
    gen = ok(cmds, {"cmd": "trace.start", "count": 3, "port": "p1"})["gen"]
    back = (Ether(src=MAC["h2"], dst=MAC["p1"]) / IP(src="10.0.2.2", dst="10.0.1.2", id=1)
            / ICMP())
    fw.process(load_frames(mem, io, [udp("10.0.2.2", 1), udp("10.0.2.2", 2)], port=0))
    fw.process(load_frames(mem, io, [back, udp("10.0.2.2", 3)], port=1))
    reply = ok(cmds, {"cmd": "trace.read", "gen": gen})
    assert [r["in_port"] for r in reply["records"]] == [1, 1] and reply["done"] is False
    fw.process(load_frames(mem, io, [back, back], port=1))
    reply = ok(cmds, {"cmd": "trace.read", "gen": gen})
    assert len(reply["records"]) == 3 and reply["done"] is True
    assert [r["protocol"] for r in reply["records"]] == [1, 17, 1]


def test_trace_requests_are_checked(router):
    _, cmds, _, _ = router
    assert "no port 'p9'" in cmds.handle({"cmd": "trace.start", "count": 1, "port": "p9"})[
        "error"]
    assert "between 1 and 1024" in cmds.handle({"cmd": "trace.start", "count": 0})["error"]
    assert "count must be an integer" in cmds.handle({"cmd": "trace.start", "count": "3"})[
        "error"]


def test_nothing_is_recorded_when_nobody_observes(router):
    mem, _, fw, io = router
    fw.process(load_frames(mem, io, mixed()))
    assert not mem.trace_count.any() and not mem.cap_head.any()


# ------------------------------------------------------------------ capture, in process


def test_capture_rx_holds_the_frames_as_received_on_that_port(router):
    mem, cmds, fw, io = router
    gen = ok(cmds, {"cmd": "capture.start", "port": "p0", "at": "rx"})["gen"]
    frames = mixed()
    fw.process(load_frames(mem, io, frames))
    fw.process(load_frames(mem, io, [udp("10.0.1.2", 9)], port=1))  # another port
    reply = ok(cmds, {"cmd": "capture.read", "gen": gen})
    assert [f[4] for f in reply["frames"]] == [bytes(f) for f in frames]
    assert reply["lost"] == 0


def test_capture_tx_holds_the_frames_as_sent(router):
    mem, cmds, fw, io = router
    gen = ok(cmds, {"cmd": "capture.start", "port": "p1", "at": "tx"})["gen"]
    frames = mixed() + [udp("10.9.8.200", 8)]  # → p2, not captured
    fw.process(load_frames(mem, io, frames))
    got = [f[4] for f in ok(cmds, {"cmd": "capture.read", "gen": gen})["frames"]]
    assert got == [routed(frames[0], "p1", "h2"), routed(frames[4], "p1", "gw")]
    assert [f[2] for f in ok(cmds, {"cmd": "capture.read", "gen": gen})["frames"]] == []


def test_capture_drop_holds_dropped_frames_with_their_reasons(router):
    mem, cmds, fw, io = router
    gen = ok(cmds, {"cmd": "capture.start", "at": "drop"})["gen"]  # any port
    frames = mixed()
    fw.process(load_frames(mem, io, frames))
    got = ok(cmds, {"cmd": "capture.read", "gen": gen})["frames"]
    assert [f[4] for f in got] == [bytes(frames[i]) for i in (2, 3, 6)]
    assert [Drop(f[3]) for f in got] == [Drop.csum_error, Drop.blackhole, Drop.martian_source]


def test_a_full_capture_ring_counts_what_it_loses_and_forwarding_goes_on(router):
    mem, cmds, fw, io = router
    gen = ok(cmds, {"cmd": "capture.start", "port": "p0", "at": "rx"})["gen"]
    total = CAPTURE_SLOTS + 100
    for start in range(0, total, 64):
        n = min(64, total - start)
        fw.process(load_frames(mem, io, [udp("10.0.2.2", i % 60000)
                                         for i in range(start, start + n)]))
        consume(mem, io)
    frames, lost = drain(mem, gen, max_frames=1 << 20)
    assert len(frames) == CAPTURE_SLOTS and lost == 100
    assert int(mem.counters[fw.agent].sum()) > 0
    assert mem.rings["tx.1.0"].count() == 0  # everything went out (and was consumed)
    ok(cmds, {"cmd": "capture.stop"})
    fw.process(load_frames(mem, io, [udp("10.0.2.2", 1)]))
    assert drain(mem, gen)[0] == []


def test_a_new_capture_does_not_see_the_last_ones_frames(router):
    mem, cmds, fw, io = router
    ok(cmds, {"cmd": "capture.start", "at": "rx"})
    fw.process(load_frames(mem, io, [udp("10.0.2.2", 1)]))
    gen = ok(cmds, {"cmd": "capture.start", "at": "rx"})["gen"]
    frame = udp("10.0.2.2", 2)
    fw.process(load_frames(mem, io, [frame]))
    assert [f[4] for f in ok(cmds, {"cmd": "capture.read", "gen": gen})["frames"]] == [
        bytes(frame)]


# ------------------------------------------------------------------ watch rates


def test_watch_rates_from_two_snapshots():
    def snap(rx, rx_bytes, busy, frames, batches):
        return {"ports": {"p0": {"rx_packets": rx, "rx_bytes": rx_bytes, "tx_packets": 0,
                                 "tx_bytes": 0, "rx_drops": 0, "tx_drops": 0}},
                "workers": [{"agent": "worker0", "busy_ns": busy, "rx_frames": frames,
                             "batches": batches, "free_buffers": 7}]}
    prev = snap(100, 6400, 1_000_000_000, 100, 1)
    cur = snap(2100, 134400, 1_500_000_000, 2100, 17)
    p = port_rates(prev, cur, 2.0)["p0"]
    assert p["rx_pps"] == 1000 and p["rx_bps"] == 128000 * 8 / 2
    a = agent_rates(prev, cur, 2.0, 256)["worker0"]
    assert a["busy"] == 0.25 and a["fill"] == 2000 / (16 * 256) and a["rx_fps"] == 1000


def busy_engine_stats(in_flight: int) -> dict:
    """A stats reply while traffic flows: big counters, 41 rings of which two hold
    frames, `in_flight` frames handed to the slow path and not yet taken."""
    acc = {"received": 123_456_789, "forwarded": 123_000_000, "delivered": 6,
           "dropped": 456_000, "to_slowpath": 783, "slow_taken": 783 - in_flight,
           "slow_forwarded": 700, "slow_delivered": 6, "slow_dropped": 77 - in_flight,
           "slow_reassembled": 0, "slow_merged": 0, "slow_held": 0, "balanced": False}
    rings = {f"rx.{p}.{w}": [0, 1024] for p in range(4) for w in range(10)}
    rings["rx.0.0"], rings["slow.0"] = [512, 1024], [in_flight, 1024]
    port = {"rx_packets": 61_728_394_123, "rx_bytes": 9_876_543_210_123,
            "tx_packets": 61_728_394_000, "tx_bytes": 9_876_543_210_000,
            "rx_drops": 1_234_567, "tx_drops": 7_654_321}
    return {"ports": {"p0": port, "p1": dict(port)}, "batch": 256,
            "workers": [{"agent": "worker0", "busy_ns": 0, "rx_frames": 0, "batches": 0,
                         "free_buffers": 100}],
            "rings": rings, "pool": {"free": 1000, "buffers": 32768},
            "drop": {"csum_error": 1}, "accounting": acc}


def test_watch_tells_frames_in_flight_from_a_loss():
    assert accounting_line(busy_engine_stats(7)["accounting"]) == (
        "accounting: balanced (7 on the slow path's rings)")
    assert accounting_line(busy_engine_stats(0)["accounting"]) == "accounting: balanced"
    acc = dict(busy_engine_stats(0)["accounting"], forwarded=122_999_999)
    assert accounting_line(acc).startswith("accounting: off by 1 (fast path)")


def test_watch_fits_an_80_column_terminal_with_what_matters_first():
    stats = busy_engine_stats(7)
    console = Console(width=80, height=24, record=True, color_system=None)
    console.print(render(stats, stats, 1.0))
    text = console.export_text()
    assert "…" not in text  # no number cut short
    assert "p0 totals: rx 61.73 G tx 61.73 G, drops rx 1.23 M tx 7.65 M" in text
    lines = text.splitlines()
    first_ring = next(i for i, line in enumerate(lines) if "rings holding frames" in line)
    assert "39 empty" in lines[first_ring]
    assert max(i for i, line in enumerate(lines) if line.startswith("accounting:")) < first_ring
    assert [line for line in lines if "rx.0.1" in line] == []  # empty rings are not listed
    assert any("rx.0.0" in line and "512" in line for line in lines)


# ------------------------------------------------------------------ a running engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fwd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("obs"), workers=2, batch=16)
    frames = [udp("10.0.2.2", i) for i in range(30)] + [udp("10.9.8.200", 100 + i)
                                                         for i in range(5)]
    frames += [udp("10.0.2.2", 200, chksum=7), udp("10.66.0.1", 201), udp("10.0.2.2", 202,
                                                                          ttl=1)]
    lab.write_input("p0", frames)
    port = free_port()
    with open(lab.config_path, "a") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    sockdir = Path(tempfile.mkdtemp(prefix="fwd-obs-", dir="/tmp"))
    path = sockdir / "fwd.sock"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", str(lab.config_path),
                             "--keep-running", "--socket", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "engine did not become ready"
            try:
                acc = request(path, {"cmd": "stats"}, timeout=2)["stats"]["accounting"]
                if acc["received"] == len(frames) and acc["balanced"]:
                    break
            except ControlError:
                pass
            time.sleep(0.05)
        yield path, port
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
        shutil.rmtree(sockdir, ignore_errors=True)


def scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/plain")
    body = resp.read().decode()
    conn.close()
    samples = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_equal_stats_json(engine):
    path, port = engine
    m = scrape(port)
    r = fwd("stats", "--json", "--socket", str(path))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    for name, c in s["ports"].items():
        for k, v in c.items():
            assert m[(f"fwd_port_{k}_total", (("port", name),))] == v, (name, k)
    for k, v in s["snmp"].items():
        assert m[("fwd_ip_total", (("counter", k),))] == v, k
    assert s["drop"] == {"csum_error": 1, "blackhole": 1}
    for reason in Drop:
        if reason != Drop.none:
            got = m[("fwd_drops_total", (("reason", reason.name),))]
            assert got == s["drop"].get(reason.name, 0), reason
    assert m[("fwd_slowpath_total", (("reason", "ttl_exceeded"),))] == 1
    for k in ("received", "forwarded", "dropped", "to_slowpath", "slow_taken"):
        assert m[(f"fwd_accounting_{k}_total", ())] == s["accounting"][k], k
    assert m[("fwd_accounting_balanced", ())] == 1
    for w in s["workers"]:
        label = (("worker", w["agent"]),)
        assert m[("fwd_worker_forwarded_total", label)] == w["forwarded"]
        assert m[("fwd_worker_batches_total", label)] == w["batches"]
    assert m[("fwd_port_up", (("port", "p1"),))] == 1
    assert m[("fwd_port_mtu", (("port", "p2"),))] == 1400
    per_reason: dict[str, float] = {}  # the per-port drops add up to the fast path's
    for (name, labels), v in m.items():
        if name == "fwd_port_drops_total":
            reason = dict(labels)["reason"]
            per_reason[reason] = per_reason.get(reason, 0) + v
    assert per_reason == s["drop"]
    assert m[("fwd_ring_size", (("ring", "rx.0.0"),))] == s["rings"]["rx.0.0"][1]
    assert m[("fwd_pool_free_buffers", ())] == s["pool"]["free"]
    assert s["accounting"]["forwarded"] == 35
    # reassembly memory: levels, every one shown (no fragment came: the defaults' thresholds)
    assert s["reassembly"] == {"inuse": 0, "memory": 0, "memory_high": 0,
                               "high_thresh": 4194304, "low_thresh": 3145728}
    for k, (name, _) in REASSEMBLY.items():
        assert m[(f"fwd_reassembly_{name}", ())] == s["reassembly"][k], k


def test_metrics_endpoint_is_in_ping(engine):
    path, port = engine
    assert request(path, {"cmd": "ping"})["metrics"] == f"127.0.0.1:{port}"


def test_stats_watch_prints_count_views(engine):
    path, _ = engine
    r = fwd("stats", "--watch", "--count", "2", "--interval", "0.1", "--socket", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ports (over") == 2 and r.stdout.count("workers (batch 16)") == 2
    assert "rings: all" in r.stdout and " empty" in r.stdout  # an idle engine's rings
    assert "drops: csum_error=1 (0/s) blackhole=1 (0/s)" in r.stdout
    assert "Ip: InReceives=38" in r.stdout and "accounting: balanced" in r.stdout
    p0 = [line for line in r.stdout.splitlines() if line.startswith("│ p0")]
    assert len(p0) == 2 and " 0 " in p0[0]  # the input is consumed: 0/s
    assert "p0 totals: rx 38 tx 1, drops rx 0 tx 0" in r.stdout
    assert "p1 totals: rx 0 tx 30, drops rx 0 tx 0" in r.stdout


def test_trace_and_capture_commands_on_an_idle_engine(engine, tmp_path):
    path, _ = engine
    r = fwd("trace", "2", "--timeout", "0.3", "--socket", str(path))
    assert r.returncode == 0 and "traced 0 of 2 packets" in r.stderr, r.stderr
    out = tmp_path / "c.pcap"
    r = fwd("capture", "p0", "-w", str(out), "--duration", "0.3", "--socket", str(path))
    assert r.returncode == 0 and "0 frames written" in r.stderr, r.stderr
    assert len(read_pcap(out)) == 0
    r = fwd("capture", "p7", "-w", str(out), "--socket", str(path))
    assert r.returncode == 1 and "no port 'p7'" in r.stderr
    # - is standard output (for tcpdump -r -, Wireshark -k -i -): a pcap header at once
    r = subprocess.run([sys.executable, "-m", "engine.cli", "capture", "p1", "-w", "-",
                        "--duration", "0.3", "--socket", str(path)], cwd=ROOT,
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and b"0 frames written to standard output" in r.stderr
    assert r.stdout == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    # any: pcapng, its section header and one interface per port at once
    r = subprocess.run([sys.executable, "-m", "engine.cli", "capture", "any", "-w", "-",
                        "--duration", "0.3", "--socket", str(path)], cwd=ROOT,
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and b"0 frames written to standard output" in r.stderr
    assert [k for k, _ in pcapng_blocks(r.stdout)] == [0x0A0D0D0A, 1, 1, 1]
    assert not (ROOT / "-").exists()
    assert np.all(request(path, {"cmd": "stats"})["ok"])


def test_trace_shows_the_transport_header_as_tcpdump_would():
    """L4 words from the received bytes: TCP ports, flags and sequence, ICMP type and
    code; none for a fragment that is not the first (it carries no transport header)."""
    from scapy.layers.inet import ICMP, TCP

    from engine.pipeline.rcv import l4_line

    tcp = bytes(Ether() / IP() / TCP(sport=4000, dport=80, flags="SA", seq=7))
    assert l4_line(tcp, 34, 6, 0) == ("tcp", "4000 > 80 flags [SA] seq 7")
    echo = bytes(Ether() / IP() / ICMP(type=8, code=0))
    assert l4_line(echo, 34, 1, 0) == ("icmp", "type 8 code 0 (echo request)")
    assert l4_line(bytes(udp("10.0.2.2", 3)), 34, 17, 0x2000) == ("udp", "1003 > 9 length 28")
    assert l4_line(bytes(udp("10.0.2.2", 3)), 34, 17, 0x0010) is None  # offset 128
    assert l4_line(tcp[:40], 34, 6, 0) is None  # the received bytes end before the flags
