"""Streaming replays (issue 15): captures read in chunks and outputs written as the
replay goes, with memory bounded whatever the capture's size, and the same outputs as
a replay that holds everything and sorts once at the end."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import rdpcap

from engine.cli.progress import ReplayProgress
from engine.control.supervisor import run
from engine.io import pcap_port
from engine.io.pcap import MIN_CHUNK, PcapError, PcapReader, read_pcap

from conftest import BCAST, MAC, Lab, flood, no_shm_leak, set_ip_checksums

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000


def records(frames: list[bytes], stamps: list[tuple[int, int]], *, big_endian: bool = False,
            nanosecond: bool = False) -> bytes:
    """A classic pcap made with struct, independently of the code under test."""
    order = ">" if big_endian else "<"
    out = [struct.pack(order + "IHHiIII", 0xA1B23C4D if nanosecond else 0xA1B2C3D4,
                       2, 4, 0, 0, 65535, 1)]
    for frame, (sec, frac) in zip(frames, stamps, strict=True):
        out.append(struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


def mixed_frames(n: int, seed: int = 3) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [bytes(rng.integers(0, 256, int(size), dtype=np.uint8))
            for size in rng.integers(42, 1515, n)]


@pytest.fixture
def small_chunks(monkeypatch):
    """The pcap driver with the smallest chunks and read-ahead, writing often."""
    monkeypatch.setattr(pcap_port, "CHUNK_BYTES", MIN_CHUNK)
    monkeypatch.setattr(pcap_port, "MAX_CHUNKS", 2)
    monkeypatch.setattr(pcap_port, "READ_AHEAD_FRAMES", 2048)
    monkeypatch.setattr(pcap_port, "WRITE_FRAMES", 2048)
    monkeypatch.setattr(pcap_port, "WRITE_BYTES", 256 << 10)


# ---------------------------------------------------------------- the reader


@pytest.mark.parametrize("big_endian, nanosecond", [(False, False), (True, False),
                                                    (False, True), (True, True)])
def test_chunks_are_the_whole_capture(tmp_path, big_endian, nanosecond):
    frames = mixed_frames(2500)
    stamps = [(T0 + i // 7, (i * 997) % (10**9 if nanosecond else 10**6))
              for i in range(len(frames))]
    path = tmp_path / "c.pcap"
    path.write_bytes(records(frames, stamps, big_endian=big_endian, nanosecond=nanosecond))
    assert path.stat().st_size > 3 * MIN_CHUNK
    got, ts, chunks = [], [], 0
    with PcapReader(path, chunk_bytes=MIN_CHUNK) as reader:
        while (chunk := reader.read()) is not None:
            chunks += 1
            got += chunk.to_list()
            ts += chunk.ts_ns.tolist()
    assert chunks >= 3 and got == frames
    scale = 1 if nanosecond else 1000
    assert ts == [sec * 10**9 + frac * scale for sec, frac in stamps]
    whole = read_pcap(path)
    assert whole.to_list() == frames and whole.ts_ns.tolist() == ts


@pytest.mark.parametrize("cut, problem", [(5, "5 of its 16 header bytes are present"),
                                          (16 + 9, "9 of its 700 captured bytes")])
def test_a_record_cut_in_a_later_chunk_names_its_number_and_offset(tmp_path, cut, problem):
    frames = mixed_frames(1500) + [bytes(700)]
    whole = records(frames, [(T0, 0)] * len(frames))
    start = len(whole) - 16 - 700
    path = tmp_path / "cut.pcap"
    path.write_bytes(whole[: start + cut])
    reader = PcapReader(path, chunk_bytes=MIN_CHUNK)
    with pytest.raises(PcapError) as err:
        while reader.read() is not None:
            pass
    assert str(err.value) == f"{path}: record {len(frames)} at byte {start} is truncated: " + (
        problem if cut == 5 else "9 of its 700 captured bytes are present")


def test_a_damaged_caplen_in_a_later_chunk(tmp_path):
    frames = mixed_frames(1200)
    whole = bytearray(records(frames, [(T0, 0)] * len(frames)))
    k = 1000
    offset = 24 + sum(16 + len(f) for f in frames[:k])
    whole[offset + 8 : offset + 12] = struct.pack("<I", 0x7FFF_0000)
    path = tmp_path / "bad.pcap"
    path.write_bytes(bytes(whole))
    reader = PcapReader(path, chunk_bytes=MIN_CHUNK)
    with pytest.raises(PcapError, match=rf"record {k + 1} at byte {offset} has a captured "
                                        r"length of 2147418112 bytes, more than the snapshot "
                                        r"length 65535; the file is damaged"):
        while reader.read() is not None:
            pass


# ---------------------------------------------------------------- replays


def forwarded_flood(lab: Lab) -> np.ndarray:
    """What the router must send for flood()'s frames to 10.0.2.2: built here with numpy
    (MACs, TTL - 1, the header checksum recomputed by conftest's own RFC 1071 sum)."""
    frames = read_pcap(lab.root / "in" / "p0.pcap")
    rows = frames.data.reshape(len(frames), -1).copy()
    rows[:, 0:6] = np.frombuffer(bytes.fromhex(MAC["h2"].replace(":", "")), np.uint8)
    rows[:, 6:12] = np.frombuffer(bytes.fromhex(MAC["p1"].replace(":", "")), np.uint8)
    rows[:, 22] -= 1
    set_ip_checksums(rows)
    return rows


def test_a_capture_many_times_the_read_ahead_replays_in_bounded_memory(tmp_path, small_chunks):
    n = 150_000
    lab = Lab(tmp_path, workers=1, batch=256)
    flood(lab, n, (10, 0, 2, 2))
    size = (lab.root / "in" / "p0.pcap").stat().st_size
    stats = run(lab.config()).stats  # not lab.run: scapy would read the 150k frames back
    dev = stats.devices["p0"]
    bufsize = 2048
    # the driver held at most two chunks at once: a capture 10 times that and more
    assert dev["read_ahead_high_bytes"] <= 2 * (MIN_CHUNK + bufsize)
    assert size > 10 * dev["read_ahead_high_bytes"]
    assert dev["read_bytes"] == dev["size_bytes"] == size
    # what waited for its turn to be written: what was in the engine, not the capture
    assert 0 < stats.devices["p1"]["output_held_high"] < n // 4
    out = read_pcap(lab.root / "out" / "p1.pcap")
    assert len(out) == n
    assert np.array_equal(out.data.reshape(n, -1), forwarded_flood(lab))
    assert np.array_equal(out.ts_ns, read_pcap(lab.root / "in" / "p0.pcap").ts_ns)
    assert stats.forwarded == n and stats.balanced


def traffic_with_timers() -> dict[str, list]:
    """Two ports of traffic over a few seconds of capture time, with work for the slow
    path's timers while fast-path traffic flows: frames for an unresolved neighbour
    (10.0.3.7: ARP probes every second, then ICMP host unreachable), a datagram to the
    router missing a fragment (ICMP reassembly time exceeded after 30 s), an echo
    request, TTL 1, fragments to forward, and ARP from hosts."""
    p0, p1 = [], []
    h1 = Ether(src=MAC["h1"], dst=MAC["p0"])
    h2 = Ether(src=MAC["h2"], dst=MAC["p1"])
    t = float(T0)
    first = IP(src="10.0.1.2", dst="10.0.1.1", id=77, flags="MF", frag=0) / Raw(bytes(64))
    for i in range(3000):
        t += 0.013
        k = i % 50
        if k == 0:
            pkt = h1 / IP(src="10.0.1.2", dst="10.0.3.7") / UDP(sport=i, dport=9) / Raw(b"x" * 20)
        elif k == 7:
            pkt = h1 / IP(src="10.0.1.2", dst="10.0.1.1") / ICMP(id=5, seq=i)
        elif k == 13:
            pkt = h1 / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1) / UDP(sport=i, dport=7)
        elif k == 21:
            frags = (IP(src="10.0.1.2", dst="10.0.2.2", id=i) / UDP(sport=i, dport=8)
                     / Raw(bytes(3000))).fragment(1400)
            for f in frags:
                p0.append(h1 / f)
                p0[-1].time = t
            continue
        elif k == 33 and i < 200:
            pkt = h1 / first
        elif k == 40:
            pkt = Ether(src=MAC["h1"], dst=BCAST) / ARP(op=1, hwsrc=MAC["h1"], psrc="10.0.1.2",
                                                         pdst="10.0.1.1")
        else:
            pkt = h1 / IP(src="10.0.1.2", dst=f"10.9.{i % 7}.{i % 200}") / UDP(sport=1000 + i,
                                                                               dport=53)
        pkt.time = t
        p0.append(pkt)
        if i % 3 == 0:
            back = h2 / IP(src="10.0.2.2", dst="10.0.1.2") / UDP(sport=i, dport=99) / Raw(
                bytes(i % 900))
            back.time = t + 0.004
            p1.append(back)
    return {"p0": p0, "p1": p1}


def new_lab(root: Path, workers: int = 1) -> Lab:
    root.mkdir(parents=True, exist_ok=True)
    return Lab(root, workers=workers)


def outputs(lab: Lab) -> dict[str, bytes]:
    return {p: (lab.root / "out" / f"{p}.pcap").read_bytes() for p in ("p0", "p1", "p2")}


@pytest.mark.parametrize("workers", [1, 2])
def test_written_as_it_goes_equals_sorted_at_the_end(tmp_path, monkeypatch, workers):
    """The same replay written once at the end (everything held, sorted by time and
    arrival: the order users rely on) and written in small pieces as the watermark
    allows, with the smallest chunks: the same bytes, timer-made frames included."""
    inputs = traffic_with_timers()
    whole = new_lab(tmp_path / "whole", workers)
    monkeypatch.setattr(pcap_port, "WRITE_FRAMES", 10**9)
    monkeypatch.setattr(pcap_port, "WRITE_BYTES", 1 << 40)
    stats_whole, _ = whole.run(inputs)
    with monkeypatch.context() as m:
        m.setattr(pcap_port, "CHUNK_BYTES", MIN_CHUNK)
        m.setattr(pcap_port, "MAX_CHUNKS", 2)
        m.setattr(pcap_port, "READ_AHEAD_FRAMES", 64)
        m.setattr(pcap_port, "WRITE_FRAMES", 16)
        m.setattr(pcap_port, "WRITE_BYTES", 4096)
        streamed = new_lab(tmp_path / "streamed", workers)
        stats, _ = streamed.run(inputs)
    assert outputs(whole) == outputs(streamed)
    assert stats.balanced and stats_whole.balanced
    # the timers did their work during the replay
    sent = rdpcap(str(streamed.root / "out" / "p2.pcap"))
    probes = [f for f in sent if ARP in f and f[ARP].pdst == "10.0.3.7"]
    assert len(probes) >= 6
    back = rdpcap(str(streamed.root / "out" / "p0.pcap"))
    assert any(ICMP in f and f[ICMP].type == 3 and f[ICMP].code == 1 for f in back)
    assert any(ICMP in f and f[ICMP].type == 11 and f[ICMP].code == 1 for f in back)
    stamps = [f.time for f in back]
    assert stamps == sorted(stamps)


def test_one_and_two_workers_write_the_same_bytes(tmp_path, small_chunks):
    inputs = traffic_with_timers()
    outs = []
    for workers in (1, 2):
        lab = new_lab(tmp_path / f"w{workers}", workers)
        lab.run(inputs)
        outs.append(outputs(lab))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("big_endian, nanosecond", [(True, False), (False, True), (True, True)])
def test_any_byte_order_and_resolution_replays_the_same(tmp_path, big_endian, nanosecond):
    frames = [bytes(Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2")
                    / UDP(sport=i, dport=9) / Raw(bytes(i % 300))) for i in range(400)]
    usec = [(T0 + i // 1000, (i * 1009) % 10**6) for i in range(len(frames))]
    runs = []
    for variant in ("plain", "other"):
        lab = new_lab(tmp_path / variant)
        path = lab.root / "in" / "p0.pcap"
        if variant == "plain":
            path.write_bytes(records(frames, usec))
        else:
            stamps = [(s, f * 1000) for s, f in usec] if nanosecond else usec
            path.write_bytes(records(frames, stamps, big_endian=big_endian,
                                     nanosecond=nanosecond))
        lab.run({})
        runs.append(outputs(lab))
    assert runs[0] == runs[1]
    assert len(rdpcap(str(tmp_path / "plain" / "out" / "p1.pcap"))) == len(frames)


def test_a_frame_stamped_earlier_is_taken_at_the_clock(tmp_path):
    lab = Lab(tmp_path)
    frames = [bytes(Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2")
                    / UDP(sport=i, dport=9)) for i in range(5)]
    stamps = [(T0, 10), (T0, 30), (T0, 20), (T0 - 5, 0), (T0, 40)]
    (lab.root / "in" / "p0.pcap").write_bytes(records(frames, stamps))
    stats, out = lab.run({})
    assert stats.devices["p0"]["late_frames"] == 2
    got = read_pcap(lab.root / "out" / "p1.pcap")
    assert got.ts_ns.tolist() == [T0 * 10**9 + us * 1000 for us in (10, 30, 30, 30, 40)]
    assert [bytes(f[UDP])[:2] for f in out["p1"]] == [struct.pack(">H", i) for i in range(5)]


def test_fwd_run_on_a_truncated_capture_says_where(tmp_path):
    lab = Lab(tmp_path)
    frames = mixed_frames(20)
    whole = records(frames, [(T0, 0)] * len(frames))
    (lab.root / "in" / "p0.pcap").write_bytes(whole[:-3])
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--socket",
                             str(tmp_path / "s"), str(lab.config_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    start = len(whole) - 16 - len(frames[-1])
    assert proc.returncode == 2, err
    assert f"fwd: {lab.root / 'in' / 'p0.pcap'}: record 20 at byte {start} is truncated" in err
    assert "Traceback" not in err
    assert no_shm_leak(proc.pid) == []


# ---------------------------------------------------------------- progress


def test_progress_shows_after_a_couple_of_seconds(monkeypatch):
    buf = io.StringIO()
    bar = ReplayProgress(Console(file=buf, force_terminal=True, width=80))
    bar.update(1000, 10_000, 1_000_000)
    assert bar.bar is None  # a short replay shows nothing
    bar.t0 -= 3
    bar.update(2_500_000, 500_000, 1_000_000)
    bar.bar.refresh()
    bar.say("fwd: a message")
    bar.close()
    text = buf.getvalue()
    assert "2,500,000 frames" in text and "ETA" in text and "50%" in text
    assert "fwd: a message" in text


def test_no_progress_bar_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.cli.progress.SHOW_AFTER_S", 0.0)
    lab = Lab(tmp_path)
    flood(lab, 20_000, (10, 0, 2, 2))
    r = subprocess.run([sys.executable, "-m", "engine.cli", "run", "--socket",
                        str(tmp_path / "s"), str(lab.config_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "replay" not in r.stderr and "ETA" not in r.stderr
