"""The AF_PACKET driver on a veth pair the test creates (needs root and `ip`).

    frames in ──► [peer] ══ veth ══ [port] ── AfPacketPort.rx_burst ──► pool buffers
    capture  ◄── [peer] ══ veth ══ [port] ◄── AfPacketPort.tx_burst ◄── pool buffers

Both ends live in the root namespace under unique names (the test process opens
sockets on them directly); IPv6 and offloads are off so that only our frames cross.
scapy builds the frames, an independent raw socket on the peer sends and captures.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from engine.io.afpacket import AfPacketError, AfPacketPort, c_helper
from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
from engine.shm.pool import Buffers

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root (CAP_NET_ADMIN to create veths, CAP_NET_RAW for packet sockets) "
    "and iproute2's `ip`")

pytestmark = needs_root

PORT_MAC = "02:00:00:00:00:01"
PEER_MAC = "02:00:00:00:01:02"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _quiet(dev: str) -> None:
    with open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "w") as f:
        f.write("1")
    if shutil.which("ethtool"):  # frames as sent: no GSO/GRO/checksum games on veth
        subprocess.run(["ethtool", "-K", dev, "tx", "off", "rx", "off", "gso", "off",
                        "gro", "off", "tso", "off", "sg", "off"], capture_output=True)


@pytest.fixture
def veth():
    """(port, peer): a fresh veth pair, up, quiet; removed afterwards."""
    tag = secrets.token_hex(3)
    port, peer = f"fwdp{tag}", f"fwdq{tag}"
    _run("ip", "link", "add", port, "mtu", "4000", "type", "veth", "peer", "name", peer,
         "mtu", "4000")
    try:
        for dev in (port, peer):
            _quiet(dev)
            _run("ip", "link", "set", dev, "up")
        yield port, peer
    finally:
        subprocess.run(["ip", "link", "del", port], capture_output=True)


@pytest.fixture
def mem():
    m = EngineMemory.create(Geometry.new(1, 1, nbufs=2048, bufsize=4096, ring_size=64,
                                      io_share=0.5))
    yield m
    m.close()


class Wire:
    """A plain packet socket on the peer: sends into the veth, captures what arrives."""

    def __init__(self, dev: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        # room for a whole test's frames: the capture is read after the burst is sent
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        self.sock.bind((dev, ETH_P_ALL))
        self.sock.settimeout(0.2)

    def send(self, frames: list[bytes]) -> None:
        for f in frames:
            self.sock.send(f)

    def capture(self, n: int, timeout: float = 2.0) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] != PACKET_OUTGOING:
                got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wire(veth):
    w = Wire(veth[1])
    yield w
    w.close()


def udp_frame(i: int, size: int = 0, sport: int = 1000) -> bytes:
    pkt = (Ether(src=PEER_MAC, dst=PORT_MAC) / IP(src="10.0.1.2", dst="10.0.2.2", id=i)
           / UDP(sport=sport, dport=2000) / Raw(i.to_bytes(4, "big")))
    if size > len(pkt):
        pkt = pkt / Raw(bytes(size - len(pkt)))
    return bytes(pkt)


def receive(port: AfPacketPort, buffers: Buffers, mem: EngineMemory, n: int,
            burst: int = 256, timeout: float = 2.0, quiet: float = 0.0) -> list[np.ndarray]:
    """rx_burst until n frames came (then `quiet` seconds more, to catch extras)."""
    got: list[np.ndarray] = []
    count = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idx = port.rx_burst(buffers, mem, 0, burst)
        if len(idx):
            got.append(idx)
            count += len(idx)
        elif count >= n:
            if quiet <= 0:
                break
            deadline = min(deadline, time.monotonic() + quiet)
            quiet = 0
            time.sleep(0.005)
        else:
            time.sleep(0.001)
    return got


def frames_of(mem: EngineMemory, batches: list[np.ndarray]) -> list[bytes]:
    idx = np.concatenate(batches) if batches else np.zeros(0, np.uint32)
    return [mem.data[i, : mem.length[i]].tobytes() for i in idx.tolist()]


def variants() -> list[dict[str, str]]:
    out = [{"walker": "numpy", "copier": "numpy", "tx_mode": "ring-numpy"},
           {"walker": "python", "copier": "numpy", "tx_mode": "ring-numpy"}]
    if c_helper() is not None:
        out.insert(0, {"walker": "c", "copier": "c", "tx_mode": "ring"})
        out.append({"walker": "c", "copier": "c", "tx_mode": "sendmmsg"})
        # TX ring frames without the virtio_net_hdr (fwd_tx_fill's other layout)
        out.append({"walker": "c", "copier": "c", "tx_mode": "ring", "tx_vnet": False})
        # the default RX ring is TPACKET_V2 (one frame a slot, frames longer than a
        # slot, 3,000 bytes here, queued whole on the socket: TP_STATUS_COPY); V3 too
        out.append({"walker": "c", "copier": "c", "tx_mode": "ring", "rx_ring": "v3"})
    return out


RX_RINGS = ["v3", "v2"] if c_helper() is not None else ["v3"]


@pytest.mark.parametrize("impl", variants(), ids=lambda v: "-".join(map(str, v.values())))
def test_rx_burst_returns_exactly_the_frames_sent(veth, wire, mem, impl):
    # mixed sizes defeat the numpy walker's equal-step guess (pointer doubling runs)
    sizes = [60, 64, 128, 1514, 3000, 61, 999] * 12
    sent = [udp_frame(i, size) for i, size in enumerate(sizes)]
    buffers = Buffers(mem, AGENT_IO)
    with AfPacketPort(veth[0], ring_blocks=4, block_size=1 << 16, **impl) as port:
        t0 = time.time_ns()
        wire.send(sent)
        got = receive(port, buffers, mem, len(sent), burst=32, quiet=0.05)
        assert frames_of(mem, got) == sent
        idx = np.concatenate(got)
        assert (mem.port[idx] == 0).all()
        assert (mem.ts[idx] >= t0 - 10**9).all() and (np.diff(mem.ts[idx]) >= 0).all()
        assert port.stats()["kernel_drops"] == 0


@pytest.mark.parametrize("impl", variants(), ids=lambda v: "-".join(map(str, v.values())))
def test_equal_sizes_many_blocks(veth, wire, mem, impl):
    # 64-byte frames: the fast case; several blocks, bursts that split blocks
    sent = [udp_frame(i, 64) for i in range(900)]
    buffers = Buffers(mem, AGENT_IO)
    # V2: a 2 KiB slot a frame, so more blocks for the same 900 frames sent at once
    v2 = impl["walker"] == "c" and impl.get("rx_ring", "v2") == "v2"
    blocks = 128 if v2 else 16
    with AfPacketPort(veth[0], ring_blocks=blocks, block_size=1 << 14, **impl) as port:
        wire.send(sent)
        got = receive(port, buffers, mem, len(sent), burst=100)
        assert frames_of(mem, got) == sent


def test_pool_short_leaves_frames_in_the_ring(veth, wire, mem):
    sent = [udp_frame(i, 100) for i in range(40)]
    buffers = Buffers(mem, AGENT_IO)
    hoard = buffers.alloc(buffers.count - 15)  # leave 15 free
    with AfPacketPort(veth[0], ring_blocks=4, block_size=1 << 16) as port:
        wire.send(sent)
        time.sleep(0.05)
        first = receive(port, buffers, mem, 15, timeout=0.5)
        assert sum(len(b) for b in first) == 15
        assert len(port.rx_burst(buffers, mem, 0, 64)) == 0  # pool empty, nothing lost
        got = frames_of(mem, first)
        buffers.free(np.concatenate(first))
        buffers.free(hoard)
        got += frames_of(mem, receive(port, buffers, mem, 25))
        assert got == sent


def test_oversize_frames_are_dropped_and_counted(veth, wire):
    m = EngineMemory.create(Geometry.new(1, 1, nbufs=256, bufsize=1024, ring_size=64))
    try:
        buffers = Buffers(m, AGENT_IO)
        sent = [udp_frame(0, 200), udp_frame(1, 1500), udp_frame(2, 300)]
        with AfPacketPort(veth[0], ring_blocks=4, block_size=1 << 16) as port:
            wire.send(sent)
            got = receive(port, buffers, m, 2, quiet=0.05)
            assert frames_of(m, got) == [sent[0], sent[2]]
            assert port.stats()["rx_oversize"] == 1
    finally:
        m.close()


@pytest.mark.parametrize("impl", variants(), ids=lambda v: "-".join(map(str, v.values())))
def test_tx_burst_frames_arrive_byte_for_byte(veth, wire, mem, impl):
    frames = [udp_frame(i, size) for i, size in enumerate([60, 64, 1514, 3000, 77] * 40)]
    buffers = Buffers(mem, AGENT_IO)
    idx = buffers.alloc(len(frames))
    for i, f in zip(idx.tolist(), frames, strict=True):
        mem.data[i, : len(f)] = np.frombuffer(f, np.uint8)
        mem.length[i] = len(f)
    with AfPacketPort(veth[0], frame_size=4096, tx_frames=256, **impl) as port:
        sent = 0
        deadline = time.monotonic() + 2
        while sent < len(idx) and time.monotonic() < deadline:
            sent += port.tx_burst(mem, idx[sent : sent + 64])
        assert sent == len(frames)
        assert wire.capture(len(frames)) == frames


def test_own_transmissions_are_not_received(veth, wire, mem):
    buffers = Buffers(mem, AGENT_IO)
    frames = [udp_frame(i, 64) for i in range(50)]
    idx = buffers.alloc(len(frames))
    for i, f in zip(idx.tolist(), frames, strict=True):
        mem.data[i, : len(f)] = np.frombuffer(f, np.uint8)
        mem.length[i] = len(f)
    with AfPacketPort(veth[0], fanout_group=0x5A5A) as a, \
            AfPacketPort(veth[0], fanout_group=0x5A5A) as b:
        assert a.tx_burst(mem, idx) == len(frames)
        assert b.tx_burst(mem, idx) == len(frames)
        assert len(wire.capture(2 * len(frames))) == 2 * len(frames)  # they did go out
        time.sleep(0.05)
        assert receive(a, buffers, mem, 1, timeout=0.2) == []
        assert receive(b, buffers, mem, 1, timeout=0.2) == []


def test_fanout_keeps_each_flow_on_one_socket(veth, wire, mem):
    group = int.from_bytes(secrets.token_bytes(2), "big")
    flows = 32
    sent = [udp_frame(i, 80, sport=5000 + i % flows) for i in range(flows * 20)]
    buffers = Buffers(mem, AGENT_IO)
    with AfPacketPort(veth[0], fanout_group=group) as a, \
            AfPacketPort(veth[0], fanout_group=group) as b:
        wire.send(sent)
        time.sleep(0.05)
        got_a = frames_of(mem, receive(a, buffers, mem, 1, timeout=0.5, quiet=0.05))
        got_b = frames_of(mem, receive(b, buffers, mem, 1, timeout=0.5, quiet=0.05))
    assert sorted(got_a + got_b) == sorted(sent)  # each frame once, on one socket
    assert got_a and got_b  # 32 flows: all on one side has probability 2**-31

    def sport(f: bytes) -> int:
        return int.from_bytes(f[34:36], "big")

    flows_a, flows_b = {sport(f) for f in got_a}, {sport(f) for f in got_b}
    assert not flows_a & flows_b
    # and in order within each flow
    for got in (got_a, got_b):
        for s in flows_a | flows_b:
            ids = [int.from_bytes(f[42:46], "big") for f in got if sport(f) == s]
            assert ids == sorted(ids)


def test_no_such_interface_names_it():
    with pytest.raises(AfPacketError, match=r"'fwd-nonexistent0'.*no such interface"):
        AfPacketPort("fwd-nonexistent0")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_without_cap_net_raw_says_so(veth):
    code = ("from engine.io.afpacket import AfPacketPort, AfPacketError\n"
            "try:\n"
            f"    AfPacketPort({veth[0]!r}, walker='numpy', copier='numpy', "
            "tx_mode='ring-numpy')\n"
            "except AfPacketError as e:\n"
            "    print(e)\n")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "--inh-caps=-all", sys.executable, "-c", code],
                       capture_output=True, text=True, cwd=os.path.dirname(
                           os.path.dirname(os.path.abspath(__file__))), timeout=60)
    assert veth[0] in r.stdout and "CAP_NET_RAW" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("impl", variants(), ids=lambda v: "-".join(map(str, v.values())))
def test_tx_frame_longer_than_a_slot_is_skipped_and_counted(veth, wire, mem, impl):
    frames = [udp_frame(i, size) for i, size in enumerate([100, 3000, 200])]
    buffers = Buffers(mem, AGENT_IO)
    idx = buffers.alloc(len(frames))
    for i, f in zip(idx.tolist(), frames, strict=True):
        mem.data[i, : len(f)] = np.frombuffer(f, np.uint8)
        mem.length[i] = len(f)
    with AfPacketPort(veth[0], frame_size=2048, **impl) as port:
        assert port.tx_burst(mem, idx) == 3
        expect = frames if impl["tx_mode"] == "sendmmsg" else [frames[0], frames[2]]
        assert wire.capture(len(expect), timeout=0.5) == expect
        if impl["tx_mode"] != "sendmmsg":  # no slots there: the MTU (4000) is the limit
            assert port.stats()["tx_oversize"] == 1


def _walks(port: AfPacketPort, base: int) -> dict:
    """Every walker, as a function of a fresh _Walk, on the block at `base`."""
    from engine.io import afpacket as A

    walks = {"numpy": lambda w: A.walk_numpy(port._r32, port._r8, base, w, port._rx_map),
             "doubling": lambda w: A.walk_numpy(port._r32, port._r8, base, w)}
    lib = c_helper()
    if lib is not None:
        def c_walk(w):
            ring = lib.ffi.from_buffer("uint8_t[]", port._r8)
            ptrs = [A._ptr(lib.ffi, a, t) for a, t in (
                (w.off, "int64_t *"), (w.snap, "uint32_t *"), (w.len, "uint32_t *"),
                (w.ts, "int64_t *"), (w.pkttype, "uint8_t *"))]
            n = lib.lib.fwd_walk_block(ring + base, base, w.cap, *ptrs)
            lib.ffi.release(ring)
            return n
        walks["c"] = c_walk
    return walks


@pytest.mark.parametrize("sizes", [[64], [60, 64, 128, 1514, 3000, 61, 999]],
                         ids=["equal", "mixed"])
def test_every_walker_reads_the_same_chain(veth, wire, sizes):
    """python, numpy (equal-step guess), numpy pointer doubling and C on the same blocks."""
    from engine.io import afpacket as A

    sent = [udp_frame(i, sizes[i % len(sizes)]) for i in range(300)]
    with AfPacketPort(veth[0], ring_blocks=8, block_size=1 << 16, retire_ms=20,
                      walker="python", copier="numpy", tx_mode="ring-numpy") as port:
        wire.send(sent)
        time.sleep(0.1)
        blocks = [b for b in range(port.ring_blocks) if port._block_status[b] & 1]
        assert blocks
        seen = []
        for b in blocks:
            base = b * port.block_size
            ref = A._Walk(port.block_size // 64)
            n = A.walk_python(port._rx_map, base, ref)
            for name, walk in _walks(port, base).items():
                w = A._Walk(port.block_size // 64)
                assert walk(w) == n, name
                for field in ("off", "snap", "len", "ts", "pkttype"):
                    assert (getattr(w, field)[:n] == getattr(ref, field)[:n]).all(), (name, field)
            seen += [port._r8[o : o + ln].tobytes() for o, ln in zip(
                ref.off[:n].tolist(), ref.len[:n].tolist(), strict=True)]
        assert seen == sent[: len(seen)] and len(seen) > 100


def test_wait_sleeps_until_a_block_is_ready(veth, wire, mem):
    buffers = Buffers(mem, AGENT_IO)
    with AfPacketPort(veth[0], retire_ms=5) as port:
        t0 = time.monotonic()
        assert not port.wait(50)
        assert time.monotonic() - t0 >= 0.04
        wire.send([udp_frame(1, 64)])
        assert port.wait(1000)
        assert frames_of(mem, [port.rx_burst(buffers, mem, 0, 8)]) == [udp_frame(1, 64)]


@pytest.mark.skipif(c_helper() is None, reason="needs the C helper (cffi and a C compiler)")
def test_v2_wakes_per_frame(veth, wire, mem):
    """A V2 ring hands each frame over as it is written (tpacket_rcv wakes poll() per
    frame), where V3 waits for its block to fill or retire: the latency of a quiet link."""
    buffers = Buffers(mem, AGENT_IO)
    with AfPacketPort(veth[0], rx_ring="v2") as port, \
            AfPacketPort(veth[0], rx_ring="v3", retire_ms=200) as v3:
        assert not port.wait(20)
        t0 = time.monotonic()
        wire.send([udp_frame(1, 64)])
        assert port.wait(1000)
        assert time.monotonic() - t0 < 0.1  # well before V3's block retires (200 ms)
        assert not v3.wait(0)
        assert frames_of(mem, [port.rx_burst(buffers, mem, 0, 8)]) == [udp_frame(1, 64)]
        assert port.stats()["kernel_packets"] == 1


def test_a_fanout_group_belongs_to_one_interface(veth):
    group = int.from_bytes(secrets.token_bytes(2), "big")
    with AfPacketPort(veth[0], fanout_group=group), \
            pytest.raises(AfPacketError, match=rf"'{veth[1]}'.*fanout group {group}"):
        AfPacketPort(veth[1], fanout_group=group)


def test_without_the_c_helper_numpy_takes_over(veth, wire, mem, monkeypatch):
    from engine.io import afpacket as A

    monkeypatch.setattr(A, "_lib", None)
    monkeypatch.setattr(A, "_lib_error", "CompileError: no compiler")
    with AfPacketPort(veth[0]) as port:
        assert (port.walker, port.copier, port.tx_mode) == ("numpy", "numpy", "ring-numpy")
        sent = [udp_frame(i, 64) for i in range(20)]
        wire.send(sent)
        assert frames_of(mem, receive(port, Buffers(mem, AGENT_IO), mem, 20)) == sent
    with pytest.raises(AfPacketError, match="C helper is not available: CompileError"):
        AfPacketPort(veth[0], walker="c")


# -- offloads: TSO/GSO super-frames and partial checksums (PACKET_VNET_HDR) ----------
#
# A host with its offloads on (the kernel's defaults on veth) hands the engine what its
# stack built for a device that segments and checksums: TCP frames of up to 64 KiB
# with gso_size set, and L4 checksum fields that hold only the pseudo-header sum
# (CHECKSUM_PARTIAL). veth passes both through whole. The peer below makes exactly
# those with a packet socket that sends a virtio_net_hdr (PACKET_VNET_HDR), as
# qemu/tap would; the receiving port must turn them into what the wire would carry.

PACKET_VNET_HDR = 15
VNET_NEEDS_CSUM = 1
GSO_TCPV4, GSO_UDP_L4 = 1, 5


@pytest.fixture
def veth_offloads():
    """(port, peer) with the kernel's default offloads on both ends (TSO, GSO,
    tx-checksumming: the peer's stack may hand over super-frames); IPv6 off."""
    tag = secrets.token_hex(3)
    port, peer = f"fwdo{tag}", f"fwdr{tag}"
    _run("ip", "link", "add", port, "type", "veth", "peer", "name", peer)
    try:
        for dev in (port, peer):
            with open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "w") as f:
                f.write("1")
            _run("ip", "link", "set", dev, "up")
        yield port, peer
    finally:
        subprocess.run(["ip", "link", "del", port], capture_output=True)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def partial_checksum(frame: bytes, proto: int) -> bytes:
    """`frame` as a stack leaves it for a checksumming device: the L4 checksum field
    holds the (not inverted) pseudo-header sum, as tcp_v4_send_check does."""
    f = bytearray(frame)
    l4 = 14 + (f[14] & 15) * 4
    field = l4 + (16 if proto == 6 else 6)
    pseudo = sum(struct.unpack("!4H", f[26:34])) + proto + len(f) - l4
    f[field : field + 2] = struct.pack("!H", _fold(pseudo))
    return bytes(f)


def send_vnet(dev: str, frame: bytes, *, gso_type: int = 0, gso_size: int = 0) -> None:
    """Send one frame from `dev` with a virtio_net_hdr: NEEDS_CSUM from the L4 header
    on, and GSO when `gso_type` is set (the kernel builds the skb a TSO stack would)."""
    proto = frame[23]
    l4 = 14 + (frame[14] & 15) * 4
    hdr_len = l4 + ((frame[l4 + 12] >> 4) * 4 if proto == 6 else 8)
    vnet = struct.pack("<BBHHHH", VNET_NEEDS_CSUM, gso_type, hdr_len, gso_size, l4,
                       16 if proto == 6 else 6)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.bind((dev, 0))
        s.send(vnet + partial_checksum(frame, proto))
    finally:
        s.close()


SOL_PACKET = 263


def tcp_frame(payload: bytes, *, seq: int = 5000, flags: str = "PA", ip_id: int = 100) -> bytes:
    return bytes(Ether(src=PEER_MAC, dst=PORT_MAC)
                 / IP(src="10.0.1.2", dst="10.0.2.2", id=ip_id, flags="DF")
                 / TCP(sport=1000, dport=2000, seq=seq, flags=flags, options=[("NOP", None)] * 4)
                 / Raw(payload))


def tcp_segments(payload: bytes, mss: int, flags: str) -> list[bytes]:
    """What tcp_gso_segment makes of tcp_frame(payload, flags=flags): IP ids counting
    up, seq advancing by mss, FIN/PSH on the last segment only, CWR on the first only;
    scapy computes every checksum."""
    chunks = [payload[i : i + mss] for i in range(0, len(payload), mss)]
    out = []
    for i, chunk in enumerate(chunks):
        f = flags
        if i + 1 < len(chunks):
            f = f.replace("F", "").replace("P", "")
        if i > 0:
            f = f.replace("C", "")
        out.append(tcp_frame(chunk, seq=5000 + i * mss, flags=f, ip_id=100 + i))
    return out


def udp_gso_frame(payload: bytes, ip_id: int = 7) -> bytes:
    return bytes(Ether(src=PEER_MAC, dst=PORT_MAC)
                 / IP(src="10.0.1.2", dst="10.0.2.2", id=ip_id)
                 / UDP(sport=1000, dport=2000) / Raw(payload))


PAYLOAD = bytes(range(256)) * 23  # 5,888 bytes: 5 segments of 1,200 and one of 1,088


@pytest.mark.skipif(c_helper() is None, reason="needs the C helper (cffi and a C compiler)")
@pytest.mark.parametrize("burst", [256, 2], ids=["whole", "split-across-bursts"])
@pytest.mark.parametrize("rx_ring", RX_RINGS)
def test_tso_super_frame_is_cut_into_its_segments(veth_offloads, mem, burst, rx_ring):
    port_dev, peer = veth_offloads
    buffers = Buffers(mem, AGENT_IO)
    with AfPacketPort(port_dev, rx_ring=rx_ring) as port:
        assert port.offloads
        send_vnet(peer, tcp_frame(PAYLOAD, flags="FCPA"), gso_type=GSO_TCPV4, gso_size=1200)
        got = frames_of(mem, receive(port, buffers, mem, 5, burst=burst, quiet=0.05))
        stats = port.stats()
    expect = tcp_segments(PAYLOAD, 1200, "FCPA")
    assert len(expect) == 5
    assert got == expect
    assert stats["kernel_packets"] == 1  # one super-frame from the kernel
    assert (stats["rx_segmented"], stats["rx_oversize"], stats["rx_offload_bad"]) == (1, 0, 0)


@pytest.mark.skipif(c_helper() is None, reason="needs the C helper (cffi and a C compiler)")
@pytest.mark.parametrize("rx_ring", RX_RINGS)
def test_udp_gso_super_frame_is_cut_into_datagrams(veth_offloads, mem, rx_ring):
    port_dev, peer = veth_offloads
    buffers = Buffers(mem, AGENT_IO)
    with AfPacketPort(port_dev, rx_ring=rx_ring) as port:
        send_vnet(peer, udp_gso_frame(PAYLOAD), gso_type=GSO_UDP_L4, gso_size=1400)
        got = frames_of(mem, receive(port, buffers, mem, 5, quiet=0.05))
    # __udp_gso_segment: each segment its own datagram (length, checksum), IP ids up
    expect = [udp_gso_frame(PAYLOAD[i : i + 1400], ip_id=7 + i // 1400)
              for i in range(0, len(PAYLOAD), 1400)]
    assert got == expect


def udp_zero_sum_frame() -> bytes:
    """A UDP frame whose checksum computes to 0: its last two payload bytes are the
    checksum the frame has with them zero (adding c to a sum whose complement is c
    gives 0xffff, whose complement is 0)."""
    base = bytearray(udp_frame(9, 80))  # padded with zeros up to 80 bytes
    base[-2:] = base[40:42]
    pkt = Ether(bytes(base))
    del pkt[UDP].chksum
    return bytes(pkt)


@pytest.mark.skipif(c_helper() is None, reason="needs the C helper (cffi and a C compiler)")
@pytest.mark.parametrize("rx_ring", RX_RINGS)
def test_partial_checksums_are_filled_in(veth_offloads, mem, rx_ring):
    port_dev, peer = veth_offloads
    buffers = Buffers(mem, AGENT_IO)
    frames = [tcp_frame(b"hello"), udp_frame(3, 100), udp_zero_sum_frame()]
    assert frames[2][40:42] == b"\xff\xff"  # a sum of 0 goes out as 0xffff (RFC 768)
    with AfPacketPort(port_dev, rx_ring=rx_ring) as port:
        for f in frames:
            send_vnet(peer, f)
        got = frames_of(mem, receive(port, buffers, mem, 2, quiet=0.05))
        assert port.stats()["rx_csum_done"] == 3
    assert got == frames
    assert all(partial_checksum(f, f[23]) != f for f in frames)  # there was work to do


@pytest.mark.skipif(c_helper() is None, reason="needs the C helper (cffi and a C compiler)")
@pytest.mark.parametrize("rx_ring", RX_RINGS)
def test_segments_longer_than_a_buffer_are_oversize(veth_offloads, rx_ring):
    m = EngineMemory.create(Geometry.new(1, 1, nbufs=256, bufsize=1024, ring_size=64))
    try:
        port_dev, peer = veth_offloads
        buffers = Buffers(m, AGENT_IO)
        with AfPacketPort(port_dev, rx_ring=rx_ring) as port:
            send_vnet(peer, tcp_frame(PAYLOAD), gso_type=GSO_TCPV4, gso_size=1200)
            send_vnet(peer, tcp_frame(PAYLOAD), gso_type=GSO_TCPV4, gso_size=900)
            got = frames_of(m, receive(port, buffers, m, 7, quiet=0.05))
            stats = port.stats()
        assert got == tcp_segments(PAYLOAD, 900, "PA")  # 54 + 900 fit 1,024; 54 + 1,200 not
        assert (stats["rx_oversize"], stats["rx_segmented"]) == (1, 1)
    finally:
        m.close()


@pytest.mark.skipif(c_helper() is None, reason="needs the C helper (cffi and a C compiler)")
@pytest.mark.parametrize("rx_ring", RX_RINGS)
def test_pool_short_in_the_middle_of_a_super_frame(veth_offloads, mem, rx_ring):
    port_dev, peer = veth_offloads
    buffers = Buffers(mem, AGENT_IO)
    hoard = buffers.alloc(buffers.count - 3)  # 3 of the 5 segments fit
    with AfPacketPort(port_dev, rx_ring=rx_ring) as port:
        send_vnet(peer, tcp_frame(PAYLOAD), gso_type=GSO_TCPV4, gso_size=1200)
        first = receive(port, buffers, mem, 3, timeout=0.5)
        assert len(port.rx_burst(buffers, mem, 0, 64)) == 0  # pool empty, nothing lost
        got = frames_of(mem, first)
        buffers.free(np.concatenate(first))
        buffers.free(hoard)
        got += frames_of(mem, receive(port, buffers, mem, 2))
    assert got == tcp_segments(PAYLOAD, 1200, "PA")


def test_without_offloads_a_super_frame_is_oversize(veth_offloads, mem):
    """What the driver did before PACKET_VNET_HDR (and still does with offloads=False):
    the super-frame is longer than a buffer and is dropped, counted."""
    port_dev, peer = veth_offloads
    buffers = Buffers(mem, AGENT_IO)
    with AfPacketPort(port_dev, offloads=False) as port:
        send_vnet(peer, tcp_frame(PAYLOAD), gso_type=GSO_TCPV4, gso_size=1200)
        send_vnet(peer, tcp_frame(b"x"))
        got = frames_of(mem, receive(port, buffers, mem, 1, quiet=0.05))
        assert port.stats()["rx_oversize"] == 1
    # and the small frame's checksum is left as the sender's stack left it
    assert got == [partial_checksum(tcp_frame(b"x"), 6)]


def test_bench_knobs_parse_and_refuse_unknown_names():
    from engine.io.afpacket import bench_knobs

    assert bench_knobs("") == {}
    assert bench_knobs("fanout=cpu, tx_vnet=0,tx_frames=2048") == {
        "fanout": "cpu", "tx_vnet": False, "tx_frames": 2048}
    with pytest.raises(ValueError, match="unknown option 'txframes'"):
        bench_knobs("txframes=1")


def test_lro_left_alone_where_there_is_none(veth, capsys):
    from engine.io.afpacket import ETH_FLAG_LRO, disable_lro, ethtool_flags

    before = ethtool_flags(veth[0])
    assert not before & ETH_FLAG_LRO  # veth: "large-receive-offload: off [fixed]"
    assert disable_lro(veth[0]) is None
    assert ethtool_flags(veth[0]) == before
    assert capsys.readouterr().err == ""


def test_lro_turned_off_said_and_given_back_at_close(veth, capsys, monkeypatch):
    """A NIC with LRO on (simulated: veth has none): off while the port is open,
    one line on stderr naming the interface, back on when the port closes."""
    from engine.io import afpacket as A

    flags = {veth[0]: A.ETH_FLAG_LRO | 0x180}

    def fake(iface: str, value: int | None = None) -> int:
        if value is not None:
            flags[iface] = value
        return flags[iface]

    monkeypatch.setattr(A, "ethtool_flags", fake)
    with AfPacketPort(veth[0], receive=False) as port:
        port.restore = A.disable_lro(veth[0])
        assert flags[veth[0]] == 0x180
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and veth[0] in err and "large-receive-offload" in err
    assert flags[veth[0]] == A.ETH_FLAG_LRO | 0x180
