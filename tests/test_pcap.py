"""engine.io.pcap against scapy (an independent writer/reader), hand-built files and tcpdump."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import PcapWriter, RawPcapReader, rdpcap, wrpcap, wrpcapng

from engine.io.pcap import PcapError, PcapFrames, check_writable, read_pcap, write_pcap
from engine.io.pcap import PcapWriter as StreamWriter

T0 = 1_700_000_000  # a fixed epoch second for reproducible timestamps


def sample_frames(n: int = 20) -> list[Ether]:
    """n frames: TCP and UDP over IPv4 of assorted sizes, and an ARP request last."""
    frames = []
    for i in range(n - 1):
        l4 = TCP(sport=1000 + i, dport=80) if i % 2 else UDP(sport=53, dport=2000 + i)
        frames.append(Ether(src="02:00:00:00:01:02", dst="02:00:00:00:00:01")
                      / IP(src="10.0.1.2", dst=f"10.9.{i}.1") / l4 / Raw(b"p" * (i * 37 % 300)))
    frames.append(Ether() / ARP())
    return frames


def raw_records(path: Path) -> list[tuple[bytes, int, int]]:
    """(bytes, sec, frac) of every record, as scapy's raw reader sees them."""
    with RawPcapReader(str(path)) as reader:
        return [(data, meta.sec, meta.usec) for data, meta in reader]


def handmade(path: Path, frames: list[bytes], ts: list[tuple[int, int]], *,
             big_endian: bool = False, nanosecond: bool = False, snaplen: int = 65535,
             linktype: int = 1) -> bytes:
    """A classic pcap built with struct, independently of the code under test."""
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    for frame, (sec, frac) in zip(frames, ts, strict=True):
        out += struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame
    path.write_bytes(out)
    return out


# ---------------------------------------------------------------- reading


def test_reads_scapy_capture(tmp_path):
    frames = sample_frames()
    for i, f in enumerate(frames):
        f.time = T0 + i * 0.25 + 0.000001 * i
    path = tmp_path / "in" / "p0.pcap"
    path.parent.mkdir()
    wrpcap(str(path), frames)
    got = read_pcap(path)
    assert len(got) == len(frames)
    assert got.linktype == 1 and got.snaplen == 65535
    assert got.data.dtype == np.uint8 and got.offsets.dtype == np.int64
    assert got.lengths.dtype == np.uint32 and got.ts_ns.dtype == np.int64
    assert [got.frame(i) for i in range(len(got))] == [bytes(f) for f in frames]
    assert got.to_list() == [bytes(f) for f in frames]
    assert got.data.nbytes == sum(len(f) for f in frames)  # frames back to back
    expect = [(sec * 10**9 + usec * 1000) for _, sec, usec in raw_records(path)]
    assert got.ts_ns.tolist() == expect
    assert got.ts_ns[1] == (T0 + 0.25) * 10**9 + 1000


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_reads_both_byte_orders_and_resolutions(tmp_path, big_endian, nanosecond):
    frames = [bytes(f) for f in sample_frames(7)]
    frac_max = 10**9 - 1 if nanosecond else 10**6 - 1
    ts = [(T0 + i, min(i * 123_457, frac_max)) for i in range(len(frames))]
    ts[-1] = (T0 + 99, frac_max)
    path = tmp_path / "x.pcap"
    handmade(path, frames, ts, big_endian=big_endian, nanosecond=nanosecond)
    got = read_pcap(path)
    assert got.to_list() == frames
    unit = 1 if nanosecond else 1000
    assert got.ts_ns.tolist() == [s * 10**9 + f * unit for s, f in ts]


def test_reads_scapy_big_endian_nanosecond_writer(tmp_path):
    frames = sample_frames(5)
    for i, f in enumerate(frames):
        f.time = T0 + i
    path = tmp_path / "be.pcap"
    with PcapWriter(str(path), endianness=">", nano=True, linktype=1) as w:
        w.write(frames)
    assert path.read_bytes()[:4] == bytes.fromhex("a1b23c4d")
    got = read_pcap(path)
    assert got.to_list() == [bytes(f) for f in frames]
    assert got.ts_ns.tolist() == [(T0 + i) * 10**9 for i in range(5)]


def test_empty_capture_has_no_frames(tmp_path):
    path = tmp_path / "empty.pcap"
    handmade(path, [], [])
    got = read_pcap(path)
    assert len(got) == 0 and got.data.size == 0 and got.offsets.size == 0
    assert got.to_list() == []


def test_uniform_and_mixed_sizes_read_alike(tmp_path):
    """The fixed-size fast path and the serial walk must agree, including on a file
    that looks fixed-size for its first 150 records and whose total size is still a
    multiple of that size."""
    same = [bytes([i % 256]) * 60 for i in range(200)]
    path = tmp_path / "u.pcap"
    handmade(path, same, [(T0, i) for i in range(200)])
    got = read_pcap(path)
    assert got.to_list() == same
    assert got.ts_ns.tolist() == [T0 * 10**9 + i * 1000 for i in range(200)]
    mixed = list(same)
    mixed[150], mixed[151] = b"\x07" * 44, b"\x08" * 76  # 44 + 76 == 2 * 60
    path2 = tmp_path / "m.pcap"
    handmade(path2, mixed, [(T0, i) for i in range(200)])
    assert path2.stat().st_size == path.stat().st_size
    assert read_pcap(path2).to_list() == mixed


def test_uncompacted_read_is_the_same_frames(tmp_path):
    frames = [bytes(f) for f in sample_frames()]
    path = tmp_path / "x.pcap"
    handmade(path, frames, [(T0, 0)] * len(frames))
    a, b = read_pcap(path), read_pcap(path, compact=False)
    assert a.to_list() == b.to_list() == frames
    assert np.array_equal(a.ts_ns, b.ts_ns) and np.array_equal(a.lengths, b.lengths)


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(PcapError, match=r"nope\.pcap: no such file"):
        read_pcap(tmp_path / "nope.pcap")


def test_directory_is_an_error(tmp_path):
    with pytest.raises(PcapError, match="cannot read"):
        read_pcap(tmp_path)


def test_pcap_error_is_a_value_error():
    assert issubclass(PcapError, ValueError)


def test_check_writable_changes_nothing(tmp_path):
    old = tmp_path / "old.pcap"
    old.write_bytes(b"keep me")
    check_writable(old)  # opened for writing, not truncated
    check_writable(tmp_path / "a" / "b" / "new.pcap")  # the folders write_pcap would make
    assert old.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pcap"]


@pytest.mark.parametrize("where, reason", [
    ("file/out.pcap", "Not a directory"),
    ("file/more/out.pcap", "Not a directory"),
    (".", "Is a directory"),
])
def test_check_writable_refuses_what_write_pcap_cannot_open(tmp_path, where, reason):
    (tmp_path / "file").write_bytes(b"x")
    target = tmp_path / where
    with pytest.raises(PcapError, match=f"^{target}: cannot write: {reason}$"):
        check_writable(target)
    with pytest.raises(PcapError, match=f"^{target}: cannot write: {reason}$"):
        write_pcap(target, [b"a"])  # the same words when it is only found at the end


def test_check_writable_refuses_a_new_file_in_proc():
    with pytest.raises(PcapError, match="^/proc/fwd-out.pcap: cannot write: "):
        check_writable("/proc/fwd-out.pcap")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failed_write_is_a_pcap_error_naming_the_file():
    check_writable("/dev/full")  # opens: only writing tells
    with pytest.raises(PcapError, match="^/dev/full: cannot write: No space left on device$"):
        write_pcap("/dev/full", [b"a"])


@pytest.mark.parametrize("content, problem", [
    (b"", "file is empty"),
    (b"\xd4\xc3", "too short"),
    (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", "global header is truncated"),
    (b"GIF89a" + bytes(30), "not a pcap capture"),
])
def test_short_or_foreign_files(tmp_path, content, problem):
    path = tmp_path / "p0.pcap"
    path.write_bytes(content)
    with pytest.raises(PcapError, match=problem) as err:
        read_pcap(path)
    assert str(path) in str(err.value)


def test_pcapng_is_rejected_with_advice(tmp_path):
    path = tmp_path / "in" / "p0.pcap"
    path.parent.mkdir()
    wrpcapng(str(path), sample_frames(3))
    with pytest.raises(PcapError) as err:
        read_pcap(path)
    msg = str(err.value)
    assert msg.startswith(str(path) + ": ")
    assert "pcapng" in msg and "editcap -F pcap" in msg


@pytest.mark.parametrize("linktype, name", [(101, "RAW"), (113, "LINUX_SLL"), (147, "unknown")])
def test_non_ethernet_linktype(tmp_path, linktype, name):
    path = tmp_path / "raw.pcap"
    wrpcap(str(path), [IP(dst="10.0.0.1") / UDP()], linktype=linktype)
    with pytest.raises(PcapError, match=rf"linktype {linktype} \({name}.*not Ethernet"):
        read_pcap(path)


def test_fcs_bit_is_rejected(tmp_path):
    path = tmp_path / "fcs.pcap"
    handmade(path, [bytes(64)], [(T0, 0)], linktype=1 | 0x04000000 | (4 << 28))
    with pytest.raises(PcapError, match="FCS"):
        read_pcap(path)


def test_truncated_record_header(tmp_path):
    frames = [bytes(f) for f in sample_frames(18)]
    path = tmp_path / "p0.pcap"
    whole = handmade(path, frames, [(T0, 0)] * len(frames))
    cut = len(whole) - len(frames[-1]) - 16 + 5  # 5 bytes into the 18th record's header
    path.write_bytes(whole[:cut])
    with pytest.raises(PcapError) as err:
        read_pcap(path)
    start = cut - 5
    assert str(err.value) == (f"{path}: record 18 at byte {start} is truncated: "
                              "5 of its 16 header bytes are present")


@pytest.mark.parametrize("sizes", [[60] * 20, [60, 70, 80, 90] * 5])  # uniform and mixed
def test_truncated_record_body(tmp_path, sizes):
    frames = [bytes([i]) * n for i, n in enumerate(sizes)]
    path = tmp_path / "p0.pcap"
    whole = handmade(path, frames, [(T0, 0)] * len(frames))
    path.write_bytes(whole[:-7])
    with pytest.raises(PcapError) as err:
        read_pcap(path)
    start = len(whole) - len(frames[-1]) - 16
    assert f"{path}: record 20 at byte {start} is truncated" in str(err.value)
    assert f"{len(frames[-1]) - 7} of its {len(frames[-1])} captured bytes" in str(err.value)


def test_caplen_beyond_snaplen(tmp_path):
    frames = [bytes(96), bytes(100), bytes(96)]
    path = tmp_path / "p0.pcap"
    handmade(path, frames, [(T0, 0)] * 3, snaplen=96)
    with pytest.raises(PcapError, match=r"record 2 at byte 136 has a captured length of 100 "
                                        r"bytes, more than the snapshot length 96"):
        read_pcap(path)


@pytest.mark.parametrize("snaplen", [0, 2**31])
def test_caplen_beyond_libpcap_maximum(tmp_path, snaplen):
    """A zero or absurd header snaplen means libpcap's maximum, 262144."""
    path = tmp_path / "p0.pcap"
    handmade(path, [bytes(60)], [(T0, 0)], snaplen=snaplen)
    assert read_pcap(path).to_list() == [bytes(60)]
    data = path.read_bytes()
    header = struct.pack("<IIII", T0, 0, 0x7FFF_0000, 60)
    path.write_bytes(data + header + bytes(60))
    with pytest.raises(PcapError, match=r"record 2 .* more than the snapshot length 262144"):
        read_pcap(path)


# ---------------------------------------------------------------- writing


def test_write_list_roundtrips_through_scapy(tmp_path):
    frames = sample_frames()
    ts = [T0 * 10**9 + i * 1_234_567_891 for i in range(len(frames))]
    path = tmp_path / "out" / "deep" / "p1.pcap"  # parents are created
    write_pcap(path, frames, ts)
    raw = path.read_bytes()
    assert struct.unpack("<IHHiIII", raw[:24]) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    records = raw_records(path)
    assert [r[0] for r in records] == [bytes(f) for f in frames]
    assert [(r[1], r[2]) for r in records] == [(t // 10**9, t % 10**9 // 1000) for t in ts]
    assert [bytes(p) for p in rdpcap(str(path))] == [bytes(f) for f in frames]


def test_write_nanosecond(tmp_path):
    frames = sample_frames(6)
    ts = np.array([T0 * 10**9 + i * 7 for i in range(6)], dtype=np.int64)
    path = tmp_path / "ns.pcap"
    write_pcap(path, frames, ts, nanosecond=True)
    assert path.read_bytes()[:4] == struct.pack("<I", 0xA1B23C4D)
    assert [(r[1], r[2]) for r in raw_records(path)] == [(T0, i * 7) for i in range(6)]
    pkts = rdpcap(str(path))
    assert [int(p.time * 10**9) for p in pkts] == ts.tolist()
    assert np.array_equal(read_pcap(path).ts_ns, ts)


def test_write_array_form_and_frames_form(tmp_path):
    frames = [bytes(f) for f in sample_frames()]
    n = len(frames)
    ts = np.arange(n, dtype=np.int64) * 1000 + T0 * 10**9
    # frames scattered through a bigger buffer, out of order, with gaps
    order = np.random.default_rng(1).permutation(n)
    buf = bytearray()
    offsets = np.zeros(n, dtype=np.int64)
    for i in order:
        buf += b"\xee" * 3
        offsets[i] = len(buf)
        buf += frames[i]
    data = np.frombuffer(bytes(buf), dtype=np.uint8)
    lengths = np.array([len(f) for f in frames], dtype=np.uint32)
    write_pcap(tmp_path / "a.pcap", data, offsets, lengths, ts)
    assert [r[0] for r in raw_records(tmp_path / "a.pcap")] == frames
    got = read_pcap(tmp_path / "a.pcap")
    assert got.to_list() == frames and np.array_equal(got.ts_ns, ts)
    # contiguous array form, timestamps by keyword
    write_pcap(tmp_path / "b.pcap", got.data, got.offsets, got.lengths, ts_ns=got.ts_ns)
    # PcapFrames form
    write_pcap(tmp_path / "c.pcap", got, got.ts_ns)
    a = (tmp_path / "a.pcap").read_bytes()
    assert (tmp_path / "b.pcap").read_bytes() == a == (tmp_path / "c.pcap").read_bytes()


@pytest.mark.parametrize("nanosecond", [False, True])
def test_the_c_and_numpy_writers_write_the_same_bytes(tmp_path, monkeypatch, nanosecond):
    """Frames read out of order from one buffer, sizes 0..1514, in pieces smaller than
    the whole (the C helper builds RECORDS_CHUNK bytes at a time)."""
    from engine.io import afpacket
    from engine.io import pcap as P

    if afpacket.c_helper() is None:
        pytest.skip(f"no C helper: {afpacket.c_helper_error()}")
    rng = np.random.default_rng(3)
    n = 2000
    lengths = rng.integers(0, 1515, n).astype(np.uint32)
    data = rng.integers(0, 256, int(lengths.sum()), dtype=np.uint8)
    offsets = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64), out=offsets[1:])
    order = rng.permutation(n)
    ts = T0 * 10**9 + rng.integers(0, 10**12, n)
    monkeypatch.setattr(P, "RECORDS_CHUNK", 4096)
    write_pcap(tmp_path / "c.pcap", data, offsets[order], lengths[order], ts, nanosecond=nanosecond)
    monkeypatch.setattr(afpacket, "_lib", None)
    monkeypatch.setattr(afpacket, "_lib_error", "CompileError: no compiler")
    write_pcap(tmp_path / "n.pcap", data, offsets[order], lengths[order], ts, nanosecond=nanosecond)
    assert (tmp_path / "c.pcap").read_bytes() == (tmp_path / "n.pcap").read_bytes()
    got = read_pcap(tmp_path / "c.pcap")
    assert got.to_list() == [bytes(data[o : o + n]) for o, n in
                             zip(offsets[order], lengths[order], strict=True)]


def test_write_empty(tmp_path):
    write_pcap(tmp_path / "e.pcap", [])
    write_pcap(tmp_path / "f.pcap", np.zeros(0, np.uint8), np.zeros(0, np.int64),
               np.zeros(0, np.uint32), np.zeros(0, np.int64))
    assert (tmp_path / "e.pcap").read_bytes() == (tmp_path / "f.pcap").read_bytes()
    assert len((tmp_path / "e.pcap").read_bytes()) == 24
    assert len(read_pcap(tmp_path / "e.pcap")) == 0
    assert len(rdpcap(str(tmp_path / "e.pcap"))) == 0


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(PcapError, match="frame 1 is 70000 bytes"):
        write_pcap(tmp_path / "x.pcap", [b"a", bytes(70000)])
    with pytest.raises(PcapError, match="timestamps"):
        write_pcap(tmp_path / "x.pcap", [b"a"], [-1])
    with pytest.raises(ValueError, match="1 frames but 2 timestamps"):
        write_pcap(tmp_path / "x.pcap", [b"a"], [1, 2])
    with pytest.raises(ValueError, match="outside"):
        write_pcap(tmp_path / "x.pcap", np.zeros(4, np.uint8), [2], [3])
    with pytest.raises(TypeError):
        write_pcap(tmp_path / "x.pcap", np.zeros(4, np.uint8))


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
@pytest.mark.parametrize("nanosecond", [False, True])
def test_tcpdump_reads_our_files(tmp_path, nanosecond):
    frames = sample_frames()
    ts = [T0 * 10**9 + i * 1_000_001_001 for i in range(len(frames))]
    path = tmp_path / "t.pcap"
    write_pcap(path, frames, ts, nanosecond=nanosecond)
    args = ["tcpdump", "-nn", "-tt", "-r", str(path)]
    if nanosecond:
        args.insert(1, "--time-stamp-precision=nano")
    res = subprocess.run(args, capture_output=True, text=True, check=True)
    lines = res.stdout.splitlines()
    assert len(lines) == len(frames)
    assert "link-type EN10MB" in res.stderr
    digits = 9 if nanosecond else 6
    stamps = [line.split()[0] for line in lines]
    assert stamps == [f"{t // 10**9}.{t % 10**9 // 10**(9 - digits):0{digits}d}" for t in ts]
    assert lines[1].split()[1:5] == ["IP", "10.0.1.2.1001", ">", "10.9.1.1.80:"]


# ---------------------------------------------------------------- properties

frames_st = st.lists(st.binary(min_size=0, max_size=300), max_size=25)
ts_st = st.integers(min_value=0, max_value=2**32 * 10**9 - 1)


@settings(max_examples=60, deadline=None)
@given(frames=frames_st, data=st.data(), nanosecond=st.booleans())
def test_roundtrip_random_frames(tmp_path_factory, frames, data, nanosecond):
    ts = data.draw(st.lists(ts_st, min_size=len(frames), max_size=len(frames)))
    path = tmp_path_factory.mktemp("rt") / "r.pcap"
    write_pcap(path, frames, ts, nanosecond=nanosecond)
    got = read_pcap(path)
    assert got.to_list() == frames
    unit = 1 if nanosecond else 1000
    assert got.ts_ns.tolist() == [t // unit * unit for t in ts]
    records = raw_records(path)
    assert [r[0] for r in records] == frames
    assert [r[1] for r in records] == [t // 10**9 for t in ts]
    # and back out of the arrays, byte for byte
    again = path.with_name("again.pcap")
    write_pcap(again, got.data, got.offsets, got.lengths, got.ts_ns, nanosecond=nanosecond)
    assert again.read_bytes() == path.read_bytes()


def test_pcapframes_helpers():
    f = PcapFrames(data=np.frombuffer(b"abcdef", np.uint8), offsets=np.array([0, 2, 2]),
                   lengths=np.array([2, 0, 4], np.uint32), ts_ns=np.zeros(3, np.int64))
    assert len(f) == 3
    assert f.frame(0) == b"ab" and f.frame(1) == b"" and f.frame(2) == b"cdef"
    assert list(f) == [b"ab", b"", b"cdef"]


# -- the pcap ports' agent: copies in and out of the pool, and flow control ---------------

def _agent(tmp_path, frames, batch: int = 64):
    """The pcap agent of the test topology (tests/conftest.py) with `frames` on p0."""
    from engine.control.supervisor import geometry_for
    from engine.io.pcap_port import PcapPorts
    from engine.shm.memory import EngineMemory

    from conftest import Lab

    lab = Lab(tmp_path, batch=batch)
    lab.write_input("p0", frames)
    cfg = lab.config()
    mem = EngineMemory.create(geometry_for(cfg))
    return mem, PcapPorts(list(cfg.ports), list(range(len(cfg.ports))), mem, batch)


@pytest.mark.parametrize("copier", ["c", "numpy"])
def test_the_agent_moves_frames_in_and_out_of_the_pool_unchanged(tmp_path, copier):
    """Frames of every size into the pool (with length, port, time) and back out to
    the capture byte for byte, with the C helper and with numpy alike."""
    frames = sample_frames(40) + [Ether() / IP() / Raw(bytes(range(256)) * 5)]
    wrpcap(str(tmp_path / "ref.pcap"), frames)
    ref = read_pcap(tmp_path / "ref.pcap")
    mem, io = _agent(tmp_path, frames)
    try:
        if copier == "numpy":
            io._c = None
        elif io._c is None:
            pytest.skip("the C helper could not be built here (no compiler or cffi)")
        assert io.feed() == len(frames)
        idx = mem.rings["rx.0.0"].dequeue(1 << 16)
        assert [mem.data[i, : mem.length[i]].tobytes() for i in idx.tolist()] == [
            ref.frame(k) for k in range(len(ref))]
        assert mem.port[idx].tolist() == [0] * len(frames)
        assert mem.ts[idx].tolist() == ref.ts_ns.tolist()
        mem.rings["tx.1.0"].enqueue(idx)  # as if forwarded to p1
        assert io.drain() == len(frames)
        io.write()
        out = read_pcap(tmp_path / "out" / "p1.pcap")
        assert [out.frame(k) for k in range(len(out))] == [ref.frame(k) for k in range(len(ref))]
    finally:
        mem.close()


def test_the_agent_waits_for_room_on_the_slow_ring(tmp_path):
    """A replay is lossless: a worker is given no more frames than its slow ring can
    still take (each may be handed over), so the worker never drops one `ring_full`
    while the slow path catches up."""
    frames = sample_frames(40)
    mem, io = _agent(tmp_path, frames, batch=8)
    try:
        slow = mem.rings["slow.0"]
        in_hand = 8 * 3  # a burst per port in the worker's hands
        filler = np.arange(slow.free_space() - in_hand - 5, dtype=np.uint32)
        slow.enqueue(filler)  # the slow path is behind: 5 + in_hand places left
        assert io.feed() == 5
        slow.dequeue(1 << 20)  # it caught up
        assert io.feed() + io.feed() == len(frames) - 5  # (bursts of 4 x batch at most)
    finally:
        mem.close()


def test_streamed_pcap_is_the_same_file(tmp_path: Path) -> None:
    """PcapWriter (fwd capture -w -) writes what write_pcap writes, batch by batch."""
    frames = [bytes(range(60)), b"\xaa" * 1514, b"\x01" * 64]
    ts = [1_700_000_000_123_456_789, 1_700_000_001_000_000_000, 5]
    whole = tmp_path / "whole.pcap"
    write_pcap(whole, frames, ts_ns=ts)
    streamed = io.BytesIO()
    w = StreamWriter(streamed)
    w.write(frames[:1], ts[:1])
    w.write([], [])
    w.write(frames[1:], ts[1:])
    assert w.frames == 3 and streamed.getvalue() == whole.read_bytes()
