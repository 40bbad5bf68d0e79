"""A forwarding worker's batch, in-process: rings, buffer hand-off and counters."""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from engine.control.routing import build_routing
from engine.counters import Drop, Misc, Slow, Snmp, index
from engine.pipeline.tables import make_tables
from engine.pipeline.verdict import slow
from engine.shm.fib import FibWriter
from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
from engine.shm.pool import Buffers
from engine.workers.forwarder import Forwarder

from conftest import MAC, Lab, load_frames, routed


@pytest.fixture
def engine(tmp_path):
    cfg = Lab(tmp_path).config()
    mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=256, ring_size=16))
    fib = FibWriter.create()
    build_routing(cfg, mem, fib)
    fw = Forwarder(mem, make_tables(cfg, mem, fib.lookup), 0, 32)
    io = Buffers(mem, AGENT_IO)
    yield mem, fw, io
    fib.close()
    fib.unlink()
    mem.close()


def frame(dst="10.0.2.2", **ip):
    return Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst=dst, **ip) / UDP()


def test_batch_is_split_between_tx_slow_and_drop(engine):
    mem, fw, io = engine
    frames = [frame(), frame(ttl=1), frame(chksum=3), frame("10.0.3.2"), frame()]
    idx = load_frames(mem, io, frames)
    free_before = io.count
    fw.process(idx)
    tx1 = mem.rings["tx.1.0"].dequeue(100)
    tx2 = mem.rings["tx.2.0"].dequeue(100)
    assert tx1.tolist() == [idx[0], idx[4]] and tx2.tolist() == [idx[3]]
    assert bytes(mem.data[idx[0], : mem.length[idx[0]]]) == routed(frames[0], "p1", "h2")
    assert bytes(mem.data[idx[3], : mem.length[idx[3]]]) == routed(frames[3], "p2", "h3")
    assert mem.rings["slow.0"].dequeue(100).tolist() == [idx[1]]
    assert mem.code[idx[1]] == slow(Slow.ttl_exceeded)
    io.reclaim()
    assert io.count == free_before + 1  # the bad-checksum frame came back
    row = mem.counters[fw.agent]
    assert row[index(Misc.rx_frames)] == 5 and row[index(Misc.forwarded)] == 3
    assert row[index(Misc.to_slowpath)] == 1 and row[index(Drop.csum_error)] == 1


def test_full_tx_ring_drops_with_a_reason_and_frees_once(engine):
    mem, fw, io = engine
    frames = [frame(id=i) for i in range(20)] + [frame(ttl=0)]  # ring holds 16
    idx = load_frames(mem, io, frames)
    free_before = io.count
    fw.process(idx)
    assert mem.rings["tx.1.0"].dequeue(100).tolist() == idx[:16].tolist()
    row = mem.counters[fw.agent]
    assert row[index(Drop.ring_full)] == 4
    assert row[index(Misc.forwarded)] == 16 and row[index(Misc.dropped)] == 4
    io.reclaim()
    assert io.count == free_before + 4
    assert len(np.unique(io.stack[: io.count])) == io.count  # nothing handed back twice


def test_every_buffer_returns_to_the_pool(engine):
    mem, fw, io = engine
    size = io.size
    frames = [frame(id=i, ttl=1 + i % 3) for i in range(30)]
    idx = load_frames(mem, io, frames)
    fw.process(idx)
    for name in ("tx.1.0", "slow.0"):
        io.free(mem.rings[name].dequeue(100))
    io.reclaim()
    assert io.count == size


def test_arp_frames_go_to_the_slow_ring_whole(engine):
    mem, fw, io = engine
    request = bytes(Ether(src=MAC["h1"], dst="ff:ff:ff:ff:ff:ff")
                    / ARP(psrc="10.0.1.2", pdst="10.0.1.1")) + b"\0" * 18  # padded to 60
    stranger = Ether(src=MAC["h1"], dst="02:00:00:00:99:99") / ARP(pdst="10.0.1.7")
    idx = load_frames(mem, io, [request, stranger, frame()])
    fw.process(idx)
    assert mem.rings["slow.0"].dequeue(100).tolist() == [idx[0]]
    assert mem.code[idx[0]] == slow(Slow.arp) and mem.length[idx[0]] == 60
    assert bytes(mem.data[idx[0], :60]) == request
    row = mem.counters[fw.agent]
    assert row[index(Slow.arp)] == 1 and row[index(Drop.otherhost)] == 1
    assert row[index(Snmp.InReceives)] == 1  # the IPv4 frame only
