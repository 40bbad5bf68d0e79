"""`fwd port show` and `fwd port set NAME mtu N`.

Port show against a running engine (`fwd run --keep-running` on the 3-port Lab): its
counters are what was sent, its drops are per ingress port and reason. The MTU
change in process, over the control commands, a forwarding worker (both datapaths)
and the slow path on one engine segment: the next DF packet larger than the new
MTU gets an ICMP fragmentation-needed carrying it, one without DF leaves in
fragments of it (both built by scapy).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet import fragment as scapy_fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from test_control import fwd, start_engine, stop_engine, wait_ready

from conftest import MAC, Lab, load_frames, routed
from test_slowpath import T0, icmp_error, norm


def h1(dst: str, seq: int, size: int = 0, **ip) -> Ether:
    f = (Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst=dst, id=seq, **ip)
         / UDP(sport=1000 + seq, dport=9) / Raw(b"x" * size))
    f.time = T0 + seq / 1000
    return f


# ------------------------------------------------------------------ port show


def traffic() -> dict[str, list[Ether]]:
    p0 = [h1("10.0.2.2", i, size=i) for i in range(30)]  # → p1, plain
    p0 += [h1("10.0.2.2", 40, chksum=7), h1("10.0.2.2", 41, chksum=8)]  # csum_error
    p0.append(h1("10.66.1.1", 42))  # blackhole
    stranger = h1("10.0.2.2", 43)
    stranger[Ether].dst = MAC["stranger"]
    p0.append(stranger)  # otherhost
    p1 = [Ether(src=MAC["h2"], dst=MAC["p1"]) / IP(src="10.0.2.2", dst="10.0.1.2", chksum=1)
          / UDP(sport=7, dport=7)]  # csum_error, on p1
    for f in p1:
        f.time = T0 + 1
    return {"p0": p0, "p1": p1}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("portcli"), workers=2, batch=8)
    sent = traffic()
    for port, frames in sent.items():
        lab.write_input(port, frames)
    sockdir = Path(tempfile.mkdtemp(prefix="fwd-port-", dir="/tmp"))
    path = sockdir / "fwd.sock"
    proc = start_engine(lab, path)
    try:
        wait_ready(proc, path, sum(map(len, sent.values())))
        yield lab, path, sent
    finally:
        if proc.poll() is None:
            stop_engine(proc)
        shutil.rmtree(sockdir, ignore_errors=True)


def show(path: Path, *args: str) -> dict:
    r = fwd("port", "show", *args, "--json", "--socket", str(path))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_port_show_counts_what_was_sent_and_drops_per_port(engine):
    lab, path, sent = engine
    ports = {p["name"]: p for p in show(path)}
    assert list(ports) == ["p0", "p1", "p2"]
    p0, p1, p2 = ports["p0"], ports["p1"], ports["p2"]
    assert p0["counters"]["rx_packets"] == len(sent["p0"]) == 34
    assert p0["counters"]["rx_bytes"] == sum(len(f) for f in sent["p0"])
    assert p0["drops"] == {"otherhost": 1, "csum_error": 2, "blackhole": 1}
    plain = sent["p0"][:30]
    assert p1["counters"]["tx_packets"] == 30
    assert p1["counters"]["tx_bytes"] == sum(len(routed(f, "p1", "h2")) for f in plain)
    assert p1["counters"]["rx_packets"] == 1 and p1["drops"] == {"csum_error": 1}
    assert p2["counters"] == {k: 0 for k in p2["counters"]} and p2["drops"] == {}
    assert p0 | {"counters": None, "drops": None} == {
        "index": 0, "name": "p0", "driver": "pcap", "up": True, "carrier": None, "mtu": 1500,
        "mac": MAC["p0"], "addresses": ["10.0.1.1/24"], "counters": None, "drops": None}
    assert show(path, "p2") == p2

    r = fwd("port", "show", "p0", "--socket", str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0: p0: <UP> mtu 1500 state UP driver pcap"
    assert lines[1].split() == ["link/ether", MAC["p0"]]
    assert lines[2].split() == ["inet", "10.0.1.1/24"]
    assert lines[3].split() == ["RX:", "bytes", "packets", "dropped"]
    assert lines[4].split() == [str(p0["counters"]["rx_bytes"]), "34", "4"]
    assert lines[6].split() == ["0", "0", "0"]
    assert lines[7].split() == ["drops:", "otherhost=1", "csum_error=2", "blackhole=1"]
    r = fwd("port", "show", "p9", "--socket", str(path))
    assert r.returncode == 2 and r.stderr == (
        "fwd: port show: port.show: no port 'p9' (ports: p0, p1, p2)\n")


def test_port_down_shows_down_and_port_set_mtu_shows(engine):
    lab, path, _ = engine
    sock = ("--socket", str(path))
    assert fwd("port", "down", "p2", *sock).returncode == 0
    assert show(path, "p2")["up"] is False
    r = fwd("port", "show", "p2", *sock)
    assert r.stdout.startswith("2: p2: <DOWN> mtu 1400 state DOWN")
    assert fwd("port", "up", "p2", *sock).returncode == 0
    r = fwd("port", "set", "p2", "mtu", "1280", *sock)
    assert r.returncode == 0 and r.stdout == "p2 mtu 1280 (was 1400)\n"
    assert show(path, "p2")["mtu"] == 1280
    from engine.cli.client import request

    hop = request(path, {"cmd": "route.lookup", "addr": "10.0.3.2"})["nexthop"]
    assert hop["mtu"] == 1280  # the plain tier's bound moved too
    for bad, words in ((["p2", "mtu", "67"], "mtu 67 is out of range 68..9000"),
                       (["p2", "mtu", "x"], "mtu 'x' is not a number"),
                       (["p2", "speed", "10"], "expected `mtu N`"),
                       (["p7", "mtu", "1500"], "no port named 'p7'")):
        r = fwd("port", "set", *bad, *sock)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.splitlines()) == 1
    r = fwd("port", "set", "p2", "mtu", "1400", *sock)
    assert r.returncode == 0 and r.stdout == "p2 mtu 1400 (was 1280)\n"
    r = fwd("port", "set", "p2", "mtu", "1400", *sock)
    assert r.stdout == "p2 mtu 1400 (unchanged)\n"


# ------------------------------------------------------------------ MTU at run time


@pytest.fixture(params=["numpy", "compiled"])
def router(tmp_path, request):
    """The Lab router on one engine segment: control commands, worker 0 over its
    datapath, and the slow path, all in this process."""
    from engine.control.commands import Commands
    from engine.control.routing import build_routing
    from engine.pipeline.tables import make_tables
    from engine.shm.fib import FibWriter
    from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
    from engine.shm.pool import Buffers
    from engine.workers.forwarder import Forwarder
    from engine.workers.slowpath import SlowPath

    cfg = Lab(tmp_path).config()
    mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=256, ring_size=64))
    fib = FibWriter.create()
    try:
        commands = Commands(build_routing(cfg, mem, fib), mem)
        fw = Forwarder(mem, make_tables(cfg, mem, fib.lookup), 0, 32, datapath=request.param)
        fw.warm_up()
        sp = SlowPath(mem, make_tables(cfg, mem, fib.lookup), cfg, 32)
        yield mem, commands, fw, sp, Buffers(mem, AGENT_IO)
    finally:
        fib.close()
        fib.unlink()
        mem.close()


def through(mem, fw, sp, io, frames: list[Ether]) -> dict[str, list[bytes]]:
    """Frames received on p0 through the worker, then what it handed to the slow path
    through the slow path: {port: frames sent}, the router's own normalised."""
    idx = load_frames(mem, io, frames, 0)
    mem.ts[idx] = T0 * 10**9
    mem.seq[idx] = idx
    fw.process(idx)
    slow = mem.rings["slow.0"].dequeue(64)
    if len(slow):  # as the slow path's loop: a burst is never empty
        sp.handle(slow)
    out: dict[str, list[bytes]] = {}
    for p, name in enumerate(("p0", "p1", "p2")):
        bufs = np.concatenate([mem.rings[f"tx.{p}.0"].dequeue(64),
                               mem.rings[f"slowtx.{p}"].dequeue(64)])
        out[name] = [norm(mem.data[i, : mem.length[i]].tobytes()) for i in bufs.tolist()]
    return out


def test_a_new_mtu_is_used_by_the_next_batch(router):
    mem, commands, fw, sp, io = router
    big_df = h1("10.0.2.2", 1, size=1272, flags="DF")  # 1300 bytes of IP
    big = h1("10.0.2.2", 2, size=1272)
    assert len(big_df[IP]) == len(big[IP]) == 1300
    assert through(mem, fw, sp, io, [big_df, big]) == {  # 1500 on p1: both forwarded
        "p0": [], "p1": [routed(big_df, "p1", "h2"), routed(big, "p1", "h2")], "p2": []}

    reply = commands.handle({"cmd": "port.set", "name": "p1", "mtu": 1200})
    assert reply == {"ok": True, "port": "p1", "mtu": 1200, "old": 1500, "changed": True}
    out = through(mem, fw, sp, io, [big_df, big])
    assert out["p0"] == [icmp_error(big_df, ICMP(type=3, code=4, nexthopmtu=1200))]
    step = (1200 - 20) & ~7
    want = [bytes(Ether(src=MAC["p1"], dst=MAC["h2"]) / q)
            for q in scapy_fragment(IP(routed(big, "p1", "h2")[14:]), fragsize=step)]
    assert out["p1"] == want and len(want) == 2 and len(want[0]) == 14 + 20 + step
    assert out["p2"] == []

    assert commands.handle({"cmd": "port.set", "name": "p1", "mtu": 1500})["old"] == 1200
    assert through(mem, fw, sp, io, [big_df])["p1"] == [routed(big_df, "p1", "h2")]


def test_an_ecmp_route_from_cli_words_reaches_both_next_hops(router):
    """`fwd route add 10.8.0.0/16 nexthop via ... nexthop via ...` as the CLI sends it:
    the flows to it leave through both gateways, each flow through one."""
    from engine.control.routespec import parse_route_words

    mem, commands, fw, sp, io = router
    words = "10.8.0.0/16 nexthop via 10.0.2.254 dev p1 nexthop via 10.0.3.2 dev p2"
    reply = commands.handle({"cmd": "route.add", **parse_route_words(words.split())})
    assert reply["ok"] and reply["status"] == "added", reply
    frames = [h1(f"10.8.{i}.{i}", i) for i in range(48)]
    out = through(mem, fw, sp, io, frames)
    assert len(out["p1"]) + len(out["p2"]) == 48 and len(out["p1"]) > 4 and len(out["p2"]) > 4
    assert set(out["p1"]) <= {routed(f, "p1", "gw") for f in frames}
    assert set(out["p2"]) <= {routed(f, "p2", "h3") for f in frames}
    assert through(mem, fw, sp, io, frames) == out  # a flow keeps its next hop
