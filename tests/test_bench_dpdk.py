"""perf/bench_l3fwd.py: the engine, DPDK's l3fwd and testpmd on the same vdevs.

The pieces are checked on their own (traffic mix, the engine's deployment matching
l3fwd's routes, the l3fwd patch), then the whole benchmark once in `--quick` mode:
l3fwd built from Debian's example sources, all three forwarders measured, the JSON
complete. No rate is asserted beyond "nonzero": speed is for perf/README.md.

Needs `dpdk dpdk-dev libdpdk-dev dpdk-doc pkg-config gcc make` (skipped, saying which,
without them); no root and no hugepages (everything runs with --no-huge).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from ipaddress import ip_address
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

import bench_l3fwd as bench  # noqa: E402

MISSING = bench.missing()
needs_prereqs = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def test_imix_is_7_4_1_of_64_570_1518_on_the_wire() -> None:
    sizes = bench.mix_sizes("imix", 1200)
    assert Counter(sizes) == {60: 700, 566: 400, 1514: 100}  # + 4-byte FCS on the wire
    assert sizes[:12] != sorted(sizes[:12])  # interleaved, not in runs of one size
    assert set(bench.mix_sizes("64", 50)) == {60}
    assert set(bench.mix_sizes("1518", 50)) == {1514}


@pytest.mark.parametrize("mix", ["64", "imix", "1518"])
def test_port_frames_go_to_the_other_ports_prefix(mix: str) -> None:
    frames = bench.port_frames(mix, 1, 24)
    assert [len(f) for f in frames] == bench.mix_sizes(mix, 24)
    flows = set()
    for raw in frames:
        pkt = Ether(raw)
        assert pkt[Ether].dst == "02:70:63:61:70:01"  # net_pcap1's own MAC
        assert pkt[IP].src.startswith("198.18.1.") and pkt[IP].dst.startswith("198.18.0.")
        assert pkt[IP].ttl == 64 and IP(bytes(pkt[IP])).chksum == pkt[IP].chksum
        flows.add((pkt[IP].src, pkt[IP].dst, pkt[UDP].sport, pkt[UDP].dport))
    assert len(flows) == len(frames)  # one flow a frame: RSS has something to spread


def test_forwarded_copy_is_what_a_router_sends() -> None:
    raw = bench.port_frames("64", 0, 1)[0]
    out = Ether(bench.forwarded_copy(raw, 1))
    assert (out.src, out.dst) == ("02:70:63:61:70:01", "02:00:00:00:00:01")
    assert out[IP].ttl == 63
    assert out[IP].chksum == IP(bytes(out[IP].copy())).chksum  # valid
    assert bytes(out[IP].payload) == bytes(Ether(raw)[IP].payload)


def test_engine_config_routes_like_l3fwd(tmp_path: Path) -> None:
    """198.18.N.0/24 leaves by port N to a neighbour with l3fwd's destination MAC."""
    from engine.config import load_config

    vdevs = ["net_pcap0,rx_pcap=a.pcap,infinite_rx=1", "net_pcap1,rx_pcap=b.pcap,infinite_rx=1"]
    path = tmp_path / "e.toml"
    path.write_text(bench.engine_config(vdevs, 2, 1024, tmp_path / "s.sock"))
    cfg = load_config(path)
    assert (cfg.engine.workers, cfg.engine.batch) == (2, 1024)
    assert [(p.name, p.device, p.mac.hex(":")) for p in cfg.ports] == [
        ("p0", vdevs[0], "02:70:63:61:70:00"), ("p1", vdevs[1], "02:70:63:61:70:01")]
    assert [(str(ip_address(r.prefix)), r.prefix_len, str(ip_address(r.via)), r.port)
            for r in cfg.routes] == [("198.18.0.0", 24, "10.0.0.2", "p0"),
                                     ("198.18.1.0", 24, "10.0.1.2", "p1")]
    assert [(str(ip_address(n.ip)), n.mac.hex(":"), n.port) for n in cfg.neighbors] == [
        ("10.0.0.2", "02:00:00:00:00:00", "p0"), ("10.0.1.2", "02:00:00:00:00:01", "p1")]
    assert cfg.dpdk.hugepages == "off" and cfg.dpdk.zero_copy
    path.write_text(bench.engine_config(vdevs, 1, 256, tmp_path / "s.sock", zero_copy=False))
    assert not load_config(path).dpdk.zero_copy  # the "copy" engines: frames copied


@pytest.mark.skipif(not (bench.EXAMPLES / "l3fwd" / "main.c").exists(),
                    reason="DPDK's example sources are missing (apt-get install dpdk-doc)")
def test_l3fwd_patch_masks_both_offload_requests(tmp_path: Path) -> None:
    main_c = tmp_path / "main.c"
    main_c.write_text((bench.EXAMPLES / "l3fwd" / "main.c").read_text())
    bench.patch_l3fwd(main_c)
    text = main_c.read_text()
    assert text.count("dev_info.rx_offload_capa") == 2
    assert "local_port_conf.rxmode.offloads &= dev_info.rx_offload_capa;" in text
    assert "rxq_conf.offloads = port_conf.rxmode.offloads & dev_info.rx_offload_capa;" in text
    with pytest.raises(bench.BenchError, match="cannot apply the offload patch"):
        bench.patch_l3fwd(main_c)  # a second time: the anchors are gone


def _leftovers() -> set[str]:
    """The benchmark's EAL runtime directories (prefix db<pid>) and work folders."""
    parent = bench.runtime_dir("x").parent
    return ({str(d) for d in parent.glob("db*")}
            | {str(d) for d in Path(tempfile.gettempdir()).glob("fwd-bench-l3fwd-*")})


@needs_prereqs
def test_engine_stops_balanced_under_endless_input(tmp_path: Path) -> None:
    """SIGTERM while net_pcap's infinite_rx keeps delivering: the control process takes
    nothing more in once the workers stop, so every frame the devices handed over is
    forwarded and the run exits 0 with balanced counters."""
    ins = bench.write_inputs(tmp_path, "64", 60)
    vdevs = [f"net_pcap{p},rx_pcap={ins[p]},infinite_rx=1" for p in range(bench.PORTS)]
    engine = bench.Engine(tmp_path, "e", 1, 256)
    engine.start(vdevs)
    try:
        engine.wait_ready()
        time.sleep(0.3)
        assert engine.proc is not None
        engine.proc.send_signal(signal.SIGTERM)
        rc = engine.proc.wait(60)
    finally:
        engine.kill()
    assert rc == 0, engine.tail()
    final = json.loads(engine.out.read_text())
    acc = final["accounting"]
    assert acc["balanced"] and acc["received"] > 0
    assert acc["forwarded"] == acc["received"] and acc["dropped"] == 0
    for p in ("p0", "p1"):  # what each device handed over, the engine counted
        assert final["devices"][p]["ipackets"] == final["ports"][p]["rx_packets"]
    assert sum(final["ports"][p]["tx_packets"] for p in ("p0", "p1")) == acc["forwarded"]


@needs_prereqs
def test_quick_benchmark_measures_all_three(tmp_path: Path) -> None:
    before = _leftovers()
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "perf/bench_l3fwd.py", "--quick", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["quick"] and r["runs"] == 1
    for mix in ("64", "imix"):
        assert set(r["summary"][mix]) == {"engine 1w b256", "l3fwd", "testpmd"}
        for name, row in r["summary"][mix].items():
            assert row["mpps"] > 0, name
            assert row["cpus_busy"] > 0, name
        ratio = r["ratios"][["64", "imix"].index(mix)]
        assert ratio["mix"] == mix and ratio["engine/l3fwd"] > 0 and ratio["engine/testpmd"] > 0
        (engine_run,) = r["runs_detail"][mix]["engine 1w b256"]
        # its own forwarded counter and the devices' TX counters tell the same rate
        assert engine_run["mpps"] == pytest.approx(engine_run["device_tx_mpps"], rel=0.2)
        assert engine_run["exit_status"] is not None
    # both routers sent scapy's forwarded copy of every frame (--quick: the first mix)
    check = r["verify"]["64"]
    assert check["engine"] == check["l3fwd"] == {"sent": check["frames"], "as_expected": True}
    assert "l3fwd" in p.stdout and "engine/l3fwd" in p.stdout
    assert _leftovers() <= before  # EAL runtime directories and the work folder removed
