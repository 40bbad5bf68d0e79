"""`fwd run` end to end on pcap ports: worker processes, rings, output captures.

Inputs are built with scapy, outputs read back with scapy and compared byte for byte
with scapy's rendering of what the router must send; the counters must balance.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from conftest import BCAST, MAC, Lab, no_shm_leak, routed
from test_slowpath import echo_reply, icmp_error, norm

ROOT = Path(__file__).resolve().parent.parent


def udp(src_host: str, src: str, dst: str, sport: int, seq: int, size: int = 20,
        **ip) -> Ether:
    port_mac = MAC["p0"] if src.startswith("10.0.1.") else MAC["p1"]
    frame = (Ether(src=MAC[src_host], dst=port_mac) / IP(src=src, dst=dst, id=seq, **ip)
             / UDP(sport=sport, dport=9) / Raw(seq.to_bytes(4, "big") + b"." * size))
    frame.time = 1000 + seq / 1000
    return frame


def mixed_traffic():
    """Flows both ways, and one frame for each kind of fate."""
    p0, p1, expect_p0, expect_p1, expect_p2 = [], [], [], [], []
    seq = 0
    for i in range(120):
        seq += 1
        f = udp("h1", "10.0.1.2", f"10.0.2.{2 if i % 2 else 254}", 1000 + i % 7, seq)
        p0.append(f)
        expect_p1.append(routed(f, "p1", "h2" if i % 2 else "gw"))
        if i % 3 == 0:
            seq += 1
            g = udp("h2", "10.0.2.2", "10.0.1.2", 2000 + i % 5, seq, size=40)
            p1.append(g)
            expect_p0.append(routed(g, "p0", "h1"))
        if i % 10 == 0:
            seq += 1
            f = udp("h1", "10.0.1.2", "10.9.8.200", 3000, seq)  # /25 → p2, via h3
            p0.append(f)
            expect_p2.append(routed(f, "p2", "h3"))
    odd = [
        Ether(src=MAC["h1"], dst=MAC["stranger"]) / IP(src="10.0.1.2", dst="10.0.2.2") / UDP(),
        Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", chksum=7)
        / UDP(),
        Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="127.0.0.1", dst="10.0.2.2") / UDP(),
        Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.66.0.1") / UDP(),
        Ether(src=MAC["h1"], dst=BCAST) / ARP(hwsrc=MAC["h1"], psrc="10.0.1.2",
                                              pdst="10.0.1.1"),
        Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1) / UDP(),
        Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="192.0.2.9") / UDP(),
        Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.1.1") / ICMP(),
    ]
    for k, f in enumerate(odd):
        f.time = 2000 + k
        p0.append(f)
    # the slow path's answers, last (by capture time): the ARP reply, time exceeded,
    # net unreachable and the echo reply, their IP IDs normalised (see test_slowpath.norm)
    arp_reply = Ether(src=MAC["p0"], dst=MAC["h1"]) / ARP(
        op=2, hwsrc=MAC["p0"], psrc="10.0.1.1", hwdst=MAC["h1"], pdst="10.0.1.2")
    expect_p0 += [bytes(arp_reply), icmp_error(odd[5], ICMP(type=11, code=0)),
                  icmp_error(odd[6], ICMP(type=3, code=0)), echo_reply(odd[7])]
    return ({"p0": p0, "p1": p1},
            {"p0": expect_p0, "p1": expect_p1, "p2": expect_p2})


@pytest.mark.parametrize("workers", [1, 2])
def test_run_forwards_bytes_and_balances(tmp_path, workers):
    inputs, expected = mixed_traffic()
    lab = Lab(tmp_path, workers=workers, batch=16)
    stats, outputs = lab.run(inputs)
    for port in ("p0", "p1", "p2"):
        assert [norm(bytes(f)) for f in outputs[port]] == expected[port], port
    n_in = len(inputs["p0"]) + len(inputs["p1"])
    forwarded = sum(len(v) for v in expected.values()) - 4  # but the router's own four
    assert stats.received == n_in
    assert stats.forwarded == forwarded
    assert stats.snmp["ForwDatagrams"] == forwarded
    assert stats.snmp["InReceives"] == n_in - 2  # not: the otherhost frame and the ARP one
    assert stats.snmp["InHdrErrors"] == 2  # bad checksum, and TTL 1 (too_many_hops)
    assert stats.snmp["InCsumErrors"] == 1
    assert stats.snmp["InNoRoutes"] == 1
    assert {k: v for k, v in stats.drop.items() if v} == {
        "otherhost": 1, "csum_error": 1, "martian_source": 1, "blackhole": 1}
    assert {k: v for k, v in stats.slow.items() if v} == {
        "ttl_exceeded": 1, "no_route": 1, "local": 1, "arp": 1}
    assert stats.dropped == 4 and stats.to_slowpath == 4 and stats.slow_taken == 4
    assert {k: v for k, v in stats.slow_drop.items() if v} == {"ttl_exceeded": 1,
                                                               "no_route": 1}
    assert stats.slow_dropped == 2 and stats.slow_delivered == 2  # the ping, the ARP
    assert stats.snmp["InDelivers"] == 1 and stats.snmp["OutRequests"] == 3
    assert stats.icmp["OutMsgs"] == 3 and stats.icmp["InEchos"] == 1
    assert stats.balanced
    ports = stats.ports
    assert ports["p0"]["rx_packets"] == len(inputs["p0"])
    assert ports["p1"]["tx_packets"] == len(expected["p1"])
    assert ports["p1"]["tx_bytes"] == sum(len(b) for b in expected["p1"])
    assert no_shm_leak() == []


def test_output_keeps_flow_order_and_input_clock(tmp_path):
    frames = [udp("h1", "10.0.1.2", "10.0.2.2", 4000 + s % 9, s) for s in range(1, 400)]
    stats, outputs = Lab(tmp_path, workers=2, batch=8).run({"p0": frames})
    out = outputs["p1"]
    assert len(out) == len(frames)
    # each flow's packets leave in the order they came; the capture times are the input's
    for sport in range(4000, 4009):
        sent = [bytes(f[Raw])[:4] for f in frames if f[UDP].sport == sport]
        got = [bytes(f[Raw])[:4] for f in out if f[UDP].sport == sport]
        assert got == sent
    assert [float(f.time) for f in out] == [float(f.time) for f in frames]


def test_one_and_two_workers_write_identical_captures(tmp_path):
    """Same frames, same order, same times; only the IP IDs of the router's own packets
    may differ (they count per destination in the order the slow path makes them, as
    the kernel's do, and two workers may hand over in another order)."""
    inputs, _ = mixed_traffic()
    results = []
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        root.mkdir()
        lab = Lab(root, workers=workers, batch=4)
        lab.run(inputs)
        results.append([[(norm(bytes(f)), float(f.time))
                         for f in rdpcap(str(root / "out" / f"{p}.pcap"))]
                        for p in ("p0", "p1", "p2")])
    assert results[0] == results[1]


def test_padding_trimmed_and_not_added(tmp_path):
    short = udp("h1", "10.0.1.2", "10.0.2.2", 1, 1, size=0)  # 46 bytes: IP 32
    padded = Ether(bytes(short) + b"\0" * 14)
    padded.time = short.time
    tiny = Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2") / TCP()
    tiny.time = 1001
    _, outputs = Lab(tmp_path).run({"p0": [padded, tiny]})
    assert [bytes(f) for f in outputs["p1"]] == [routed(short, "p1", "h2"),
                                                 routed(tiny, "p1", "h2")]
    assert len(bytes(outputs["p1"][0])) == 46


def fwd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run the CLI; the result's `pid` names the segments the run may have left."""
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    result.pid = proc.pid
    return result


def test_cli_runs_the_default_demo():
    r = fwd("run", "configs/default.toml")
    assert r.returncode == 0, r.stderr
    assert "accounting: received" in r.stdout and "(balanced)" in r.stdout
    assert "ForwDatagrams=" in r.stdout
    assert (ROOT / "configs/demo/out/p1.pcap").stat().st_size > 24
    assert no_shm_leak(r.pid) == []


def test_cli_check_bad_config_exits_2_and_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[engine]\nworkers = 0\n[[port]]\nname = "p0"\n')
    r = fwd("check", str(bad))
    assert r.returncode == 2
    assert "engine.workers" in r.stderr


def test_cli_run_refuses_a_pcapng_input(tmp_path):
    lab = Lab(tmp_path)
    (tmp_path / "in" / "p0.pcap").write_bytes(b"\x0a\x0d\x0d\x0a" + b"\0" * 40)
    r = fwd("run", str(lab.config_path))
    assert r.returncode == 2
    assert "pcapng" in r.stderr
    assert not (tmp_path / "out" / "p1.pcap").exists()
    assert no_shm_leak(r.pid) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_every_fast_path_verdict_is_counted_end_to_end(tmp_path, workers):
    """All the named drop and slow-path cases of test_fastpath through `fwd run`: each
    reason's counter equals the number of its cases, and the totals balance."""
    from collections import Counter

    from scapy.layers.l2 import Ether as E

    from test_fastpath import DROP_CASES, SLOW_CASES

    inputs: dict[str, list] = {"p0": [], "p1": []}
    for k, (frame, _) in enumerate(DROP_CASES):
        f = E(bytes(frame))
        f.time = 100 + k / 100
        inputs["p0"].append(f)
    for k, (frame, port, _) in enumerate(SLOW_CASES):
        f = E(bytes(frame))
        f.time = 200 + k / 100
        inputs[port].append(f)
    stats, _ = Lab(tmp_path, workers=workers, batch=8).run(inputs)
    drops = Counter(reason for _, reason in DROP_CASES)
    slows = Counter(reason for _, _, reason in SLOW_CASES)
    assert {k: v for k, v in stats.drop.items() if v} == dict(drops)
    assert {k: v for k, v in stats.slow.items() if v} == dict(slows)
    assert stats.forwarded == 0
    # and each slow case ends once in the slow path: forwarded (fragmented, redirected,
    # the record-route one), delivered (to our addresses), dropped with an ICMP error,
    # or held (the two lone fragments, and the two packets waiting for ARP, flushed at
    # the end)
    assert stats.slow_taken == len(SLOW_CASES)
    assert stats.slow_forwarded == 3 and stats.slow_delivered == 5
    assert {k: v for k, v in stats.slow_drop.items() if v} == {
        "no_route": 3, "unreachable": 1, "prohibit": 1, "ttl_exceeded": 3, "frag_needed": 1,
        "neigh_flush": 2, "reasm_flush": 2}
    assert stats.balanced


def test_a_long_replay_loses_nothing_for_want_of_tx_room(tmp_path):
    """The pcap driver never gives a worker more than its TX rings can take, so a
    replay is lossless however slowly the driver drains them."""
    from test_supervision import big_input

    lab = Lab(tmp_path, workers=2, batch=8)
    big_input(lab, 60_000)
    from engine.control.supervisor import run

    stats = run(lab.config()).stats
    assert stats.drop["ring_full"] == 0
    assert stats.forwarded == 60_000 and stats.balanced
    assert stats.ports["p1"]["tx_packets"] == 60_000


def test_a_frame_too_big_for_a_buffer_is_dropped_and_the_replay_still_ends(tmp_path):
    """The pcap agent drops a frame no buffer can hold (rx_oversize); the run must not
    wait for a worker to take it in."""
    from test_slowpath import run_bounded

    big = udp("h1", "10.0.1.2", "10.0.2.2", 7, 1, size=3000)  # 3042 bytes > 2048
    small = udp("h1", "10.0.1.2", "10.0.2.2", 7, 2)
    stats, outputs = run_bounded(Lab(tmp_path), {"p0": [big, small]}, seconds=60)
    assert [bytes(f) for f in outputs["p1"]] == [routed(small, "p1", "h2")]
    assert stats.drop["rx_oversize"] == 1 and stats.balanced
