"""Shared-memory rings and the buffer pool."""

import multiprocessing as mp
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
from engine.shm.pool import Buffers


@pytest.fixture
def mem():
    m = EngineMemory.create(Geometry.new(2, 2, nbufs=1024, ring_size=64))
    yield m
    m.close()


def ours_in_dev_shm(name: str) -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f.startswith(name)]


def test_ring_keeps_order_across_wraparound(mem):
    ring = mem.rings["rx.0.0"]
    sent, got = [], []
    counter = 0
    for step in range(50):
        n = (step * 7) % 40 + 1
        batch = np.arange(counter, counter + n, dtype=np.uint32)
        k = ring.enqueue(batch)
        sent.extend(batch[:k].tolist())
        counter += k
        got.extend(ring.dequeue((step * 5) % 33 + 1).tolist())
    got.extend(ring.dequeue(ring.size).tolist())
    assert got == sent and len(sent) > 500


def test_ring_refuses_past_capacity(mem):
    ring = mem.rings["rx.1.1"]
    assert ring.enqueue(np.arange(100, dtype=np.uint32)) == 64
    assert ring.enqueue(np.arange(5, dtype=np.uint32)) == 0
    assert ring.count() == 64
    assert ring.dequeue(1000).tolist() == list(range(64))
    assert len(ring.dequeue(10)) == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 80), st.integers(0, 80)), max_size=40))
def test_ring_is_a_fifo(ops):
    m = EngineMemory.create(Geometry.new(1, 1, nbufs=64, ring_size=64))
    try:
        ring = m.rings["rx.0.0"]
        model: list[int] = []
        counter = 0
        for put, take in ops:
            k = ring.enqueue(np.arange(counter, counter + put, dtype=np.uint32))
            assert k == min(put, 64 - len(model))
            model.extend(range(counter, counter + k))
            counter += put
            got = ring.dequeue(take).tolist()
            assert got == model[:take]
            del model[:take]
    finally:
        m.close()


def test_buffers_return_to_their_owner(mem):
    g = mem.geometry
    io = Buffers(mem, AGENT_IO)
    worker = Buffers(mem, g.worker_agent(0))
    slow = Buffers(mem, g.slowpath_agent)
    size_io, size_slow = io.count, slow.count
    assert size_io + size_slow == g.nbufs
    a = io.alloc(100)
    b = slow.alloc(10)
    assert len(set(a.tolist()) | set(b.tolist())) == 110
    worker.free(np.concatenate((a, b)))  # a worker frees buffers of two owners
    assert io.count == size_io - 100 and slow.count == size_slow - 10
    io.reclaim()
    slow.reclaim()
    assert io.count == size_io and slow.count == size_slow


def test_pool_runs_dry_without_double_handing(mem):
    io = Buffers(mem, AGENT_IO)
    everything = io.alloc(io.size + 10)
    assert len(everything) == io.size
    assert len(np.unique(everything)) == io.size
    assert len(io.alloc(1)) == 0
    io.free(everything[:3])
    assert sorted(io.alloc(5).tolist()) == sorted(everything[:3].tolist())


def _child_writes(geometry, value):
    m = EngineMemory.attach(geometry)
    m.data[5, :4] = value
    m.rings["slow.1"].enqueue(np.array([5, 6, 7], dtype=np.uint32))
    m.close()


def test_another_process_sees_the_same_memory(mem):
    proc = mp.get_context("spawn").Process(target=_child_writes, args=(mem.geometry, 9))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    assert mem.data[5, :4].tolist() == [9, 9, 9, 9]
    assert mem.rings["slow.1"].dequeue(10).tolist() == [5, 6, 7]
    assert ours_in_dev_shm(mem.geometry.name)  # still there: the owner has not closed


def test_owner_close_unlinks():
    m = EngineMemory.create(Geometry.new(1, 1, nbufs=16, ring_size=16))
    name = m.geometry.name
    assert ours_in_dev_shm(name)
    m.close()
    assert not ours_in_dev_shm(name)
