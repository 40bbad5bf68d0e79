"""Recovering a forwarding worker killed in the middle of a batch (engine/control/recovery.py).

A forked child runs `Forwarder.process` on a batch and is SIGKILLed by an injected
hook at a chosen point (inside the fast path, half way through adding its counters,
between two ring enqueues, inside a free-stack push). The parent then recovers as the
control process does and checks that the counters balance, that what reached the TX
ring is exactly the routed frames, and that every buffer is back in the pool.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from engine.control.recovery import (
    RestartPolicy,
    SupervisionError,
    audit_pool,
    paused,
    recover_worker,
    ring_window,
)
from engine.control.routing import build_routing
from engine.counters import Drop, Misc, Slow, Snmp, index
from engine.pipeline.tables import make_tables
from engine.shm.fib import FibWriter
from engine.shm.journal import JOURNAL_COUNTED, JOURNAL_COUNTING, JOURNAL_IDLE, JOURNAL_TAKEN
from engine.shm.memory import AGENT_IO, CTL_PAUSE, ST_PAUSED, EngineMemory, Geometry
from engine.shm.pool import Buffers
from engine.workers import forwarder as F
from engine.workers.batch import (
    STOP_COUNTED,
    STOP_COUNTING,
    STOP_DEQUEUED,
    STOP_ENQUEUED,
    STOP_PUSH,
    STOP_TAKEN,
)

from conftest import MAC, Lab, load_frames, routed

fork = mp.get_context("fork")


@pytest.fixture(params=[False, True], ids=["pcap", "live"])
def engine(request, tmp_path):
    """One worker; `live`: the worker owns a pool partition (AF_PACKET geometry)."""
    cfg = Lab(tmp_path).config()
    mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=512, ring_size=64,
                                           workers_receive=request.param))
    fib = FibWriter.create()
    build_routing(cfg, mem, fib)
    tables = make_tables(cfg, mem, fib.lookup)
    feeder = Buffers(mem, mem.geometry.worker_agent(0) if request.param else AGENT_IO)
    yield mem, tables, feeder
    fib.close()
    fib.unlink()
    mem.close()


def frames() -> list:
    """20 to forward, 2 for the slow path (TTL 1), 2 dropped (bad checksum)."""
    out = []
    for i in range(24):
        ip = {"id": i}
        if i in (5, 17):
            ip["ttl"] = 1
        if i in (9, 21):
            ip["chksum"] = 7
        out.append(Ether(src=MAC["h1"], dst=MAC["p0"])
                   / IP(src="10.0.1.2", dst="10.0.2.2", **ip) / UDP(sport=1000 + i))
    return out


def killed_at(point: str):
    """The hook that SIGKILLs the child at `point` (a real kill, not an exception)."""
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    if point == "fast_path":
        def fast_path(*a, **k):
            die()
        return {"fast_path": fast_path}
    if point == "counting":
        def count(code, row, in_port=None):  # half the columns added, then killed: torn
            delta = np.zeros_like(row)
            F.__dict__["_real_count"](code, delta, in_port)
            row[: len(row) // 2] += delta[: len(row) // 2]
            die()
        return {"count": count}
    if point == "enqueue":  # the first ring enqueue done, killed before the rest
        real = F.Ring.enqueue
        calls = []

        def enqueue(self, idx):
            if calls:
                die()
            calls.append(1)
            return real(self, idx[:7]) if len(idx) > 7 else real(self, idx)
        return {"Ring.enqueue": enqueue}
    if point == "push":  # a free-stack push with its slots written, depth not published
        def free(self, idx):
            start, _ = self.mem.geometry.partitions[self.agent]
            d = self.count
            self.stack[d : d + len(idx)] = idx
            die()
        return {"Buffers.free": free}
    raise ValueError(point)


def child(mem, tables, idx, point):
    F._real_count = F.count
    for name, hook in killed_at(point).items():
        if name == "Ring.enqueue":
            F.Ring.enqueue = hook
        elif name == "Buffers.free":
            F.Buffers.free = hook
        else:
            setattr(F, name, hook)
    F.Forwarder(mem, tables, 0, 64).process(idx)
    os._exit(0)  # not reached when the hook fired


def run_killed(mem, tables, idx, point) -> None:
    proc = fork.Process(target=child, args=(mem, tables, idx, point))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL


def drain_and_audit(mem, feeder) -> tuple[list[int], int]:
    """Take what reached the TX ring and the slow ring back to the pool; every buffer
    must then be free, none twice."""
    io = Buffers(mem, AGENT_IO)
    tx = mem.rings["tx.1.0"].dequeue(1000)
    slow_idx = mem.rings["slow.0"].dequeue(1000)
    sent = [bytes(mem.data[i, : mem.length[i]]) for i in tx]
    io.free(np.concatenate((tx, slow_idx)))
    feeder.reclaim()
    io.reclaim()
    audit = audit_pool(mem)
    assert len(audit.duplicates) == 0
    assert audit.free == mem.geometry.nbufs and audit.nlost == 0
    return sent, len(slow_idx)


def balance(row) -> None:
    assert row[index(Misc.rx_frames)] == (row[index(Misc.forwarded)] + row[index(Misc.dropped)]
                                          + row[index(Misc.to_slowpath)])


@pytest.mark.parametrize("point", ["fast_path", "counting"])
def test_killed_before_handing_on_drops_the_batch_as_worker_killed(engine, point):
    mem, tables, feeder = engine
    batch = frames()
    idx = load_frames(mem, feeder, batch)
    run_killed(mem, tables, idx, point)
    state = int(mem.journal.state[0])
    assert state == (JOURNAL_TAKEN if point == "fast_path" else JOURNAL_COUNTING)
    rec = recover_worker(mem, 0)
    assert (rec.reclaimed, rec.killed, rec.journal_state) == (24, 24, state)
    row = mem.counters[mem.geometry.worker_agent(0)]
    assert row[index(Misc.rx_frames)] == 24 and row[index(Drop.worker_killed)] == 24
    assert row[index(Misc.forwarded)] == 0 and row[index(Drop.csum_error)] == 0  # undone
    assert row[index(Snmp.InReceives)] == 24
    balance(row)
    assert mem.journal.state[0] == JOURNAL_IDLE
    sent, to_slow = drain_and_audit(mem, feeder)
    assert sent == [] and to_slow == 0


def test_killed_between_two_enqueues_keeps_what_was_handed_on(engine):
    mem, tables, feeder = engine
    batch = frames()
    idx = load_frames(mem, feeder, batch)
    run_killed(mem, tables, idx, "enqueue")
    assert mem.journal.state[0] == JOURNAL_COUNTED
    rec = recover_worker(mem, 0)
    # the first 7 forwarded frames reached the TX ring; the other 13 to forward and the
    # 2 for the slow path were still in hand (worker_killed); the 2 to drop keep their
    # reason, their buffers come back
    assert rec.killed == 15 and rec.reclaimed == 17
    row = mem.counters[mem.geometry.worker_agent(0)]
    assert row[index(Misc.forwarded)] == 7 and row[index(Drop.worker_killed)] == 15
    assert row[index(Slow.ttl_exceeded)] == 0 and row[index(Drop.csum_error)] == 2
    assert row[index(Misc.rx_frames)] == 24 and row[index(Snmp.ForwDatagrams)] == 7
    balance(row)
    sent, to_slow = drain_and_audit(mem, feeder)
    forwarded = [f for i, f in enumerate(batch) if i not in (5, 9, 17, 21)]
    assert sent == [routed(f, "p1", "h2") for f in forwarded[:7]]
    assert to_slow == 0


def test_killed_inside_a_free_stack_push_loses_no_buffer(engine):
    mem, tables, feeder = engine
    if mem.geometry.partitions[1][1] == 0:
        pytest.skip("the worker owns no partition with pcap ports: its drops go to a ring")
    batch = frames()
    idx = load_frames(mem, feeder, batch)
    run_killed(mem, tables, idx, "push")
    assert mem.journal.state[0] == JOURNAL_COUNTED  # the drops' free comes last
    rec = recover_worker(mem, 0)
    row = mem.counters[mem.geometry.worker_agent(0)]
    # everything was handed on but the two drops, whose push was cut short: they were
    # counted as dropped already and stay so; their buffers come back
    assert rec.reclaimed == 2 and rec.killed == 0
    assert row[index(Drop.csum_error)] == 2 and row[index(Misc.forwarded)] == 20
    assert row[index(Slow.ttl_exceeded)] == 2
    balance(row)
    sent, to_slow = drain_and_audit(mem, feeder)
    assert len(sent) == 20 and to_slow == 2


def stopped_child(mem, tables, idx, stop):
    fw = F.Forwarder(mem, tables, 0, 64, datapath="compiled")
    fw.warm_up()
    fw.stop_at = stop
    fw.process(idx)
    os.kill(os.getpid(), signal.SIGKILL)  # memory as the batch left it at `stop`


# the compiled batch (workers/batch.py) ended at each of its stops, then killed:
# (journal state, buffers reclaimed, packets worker_killed, forwarded, sent, to the slow path)
STOPS = {
    "taken": (STOP_TAKEN, JOURNAL_TAKEN, 24, 24, 0, 0, 0),
    "counting": (STOP_COUNTING, JOURNAL_COUNTING, 24, 24, 0, 0, 0),
    "counted": (STOP_COUNTED, JOURNAL_COUNTED, 24, 22, 0, 0, 0),
    "enqueued": (STOP_ENQUEUED, JOURNAL_COUNTED, 4, 2, 20, 20, 0),
    "push": (STOP_PUSH, JOURNAL_COUNTED, 2, 0, 20, 20, 2),
}


@pytest.mark.parametrize("point", list(STOPS))
def test_a_compiled_batch_killed_at_each_step_is_recovered(engine, point):
    mem, tables, feeder = engine
    stop, state, reclaimed, killed, forwarded, sent, slow = STOPS[point]
    batch = frames()
    idx = load_frames(mem, feeder, batch)
    proc = fork.Process(target=stopped_child, args=(mem, tables, idx, stop))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert int(mem.journal.state[0]) == state
    rec = recover_worker(mem, 0)
    assert (rec.reclaimed, rec.killed) == (reclaimed, killed)
    row = mem.counters[mem.geometry.worker_agent(0)]
    assert row[index(Misc.rx_frames)] == 24 and row[index(Drop.worker_killed)] == killed
    assert row[index(Misc.forwarded)] == forwarded
    assert row[index(Drop.csum_error)] == (0 if state != JOURNAL_COUNTED else 2)
    balance(row)
    got, to_slow = drain_and_audit(mem, feeder)
    forwarded_frames = [f for i, f in enumerate(batch) if i not in (5, 9, 17, 21)]
    assert got == [routed(f, "p1", "h2") for f in forwarded_frames[:sent]]
    assert to_slow == slow


def test_frames_dequeued_but_not_journaled_are_counted(engine):
    """A kill between the ring dequeue and the journal: frames of another owner are
    packets the worker took; counted received and dropped."""
    mem, tables, feeder = engine
    if mem.geometry.partitions[1][1] > 0:
        pytest.skip("live ports: the worker receives into its own partition")
    idx = load_frames(mem, feeder, frames()[:5])
    ring = mem.rings["rx.0.0"]
    ring.enqueue(idx)
    ring.dequeue(64)  # what the dead worker did before it died
    rec = recover_worker(mem, 0)
    assert (rec.reclaimed, rec.killed, rec.journal_state) == (5, 5, JOURNAL_IDLE)
    row = mem.counters[mem.geometry.worker_agent(0)]
    assert row[index(Misc.rx_frames)] == 5 and row[index(Drop.worker_killed)] == 5
    drain_and_audit(mem, feeder)


def polled_child(mem, tables, stop):
    fw = F.Forwarder(mem, tables, 0, 64, datapath="compiled")
    fw.warm_up()
    fw.stop_at = stop
    fw.poll()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_compiled_pass_killed_after_its_dequeue_counts_the_frames(engine):
    """The compiled pass killed between the RX dequeue and the journal: as above."""
    mem, tables, feeder = engine
    if mem.geometry.partitions[1][1] > 0:
        pytest.skip("live ports: the worker receives into its own partition")
    mem.rings["rx.0.0"].enqueue(load_frames(mem, feeder, frames()[:5]))
    proc = fork.Process(target=polled_child, args=(mem, tables, STOP_DEQUEUED))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert mem.rings["rx.0.0"].count() == 0 and mem.journal.state[0] == JOURNAL_IDLE
    rec = recover_worker(mem, 0)
    assert (rec.reclaimed, rec.killed, rec.journal_state) == (5, 5, JOURNAL_IDLE)
    row = mem.counters[mem.geometry.worker_agent(0)]
    assert row[index(Misc.rx_frames)] == 5 and row[index(Drop.worker_killed)] == 5
    drain_and_audit(mem, feeder)


def test_a_worker_restarted_after_recovery_goes_on_with_the_same_pool(engine):
    mem, tables, feeder = engine
    batch = frames()
    run_killed(mem, tables, load_frames(mem, feeder, batch), "enqueue")
    recover_worker(mem, 0)
    fw = F.Forwarder(mem, tables, 0, 64)  # the new worker: attaches, re-initialises nothing
    idx = load_frames(mem, feeder, batch)
    fw.process(idx)
    row = mem.counters[fw.agent]
    assert row[index(Misc.forwarded)] == 7 + 20
    balance(row)
    sent, to_slow = drain_and_audit(mem, feeder)
    assert len(sent) == 27 and to_slow == 2


def test_recovery_refuses_a_corrupt_pool(engine):
    mem, tables, feeder = engine
    idx = load_frames(mem, feeder, frames()[:2])
    mem.rings["tx.1.0"].enqueue(idx)
    mem.rings["tx.2.0"].enqueue(idx[:1])  # the same buffer queued twice
    with pytest.raises(SupervisionError, match="two places"):
        recover_worker(mem, 0)


def _ack_pause(mem, agent):
    m = EngineMemory.attach(mem.geometry)
    while not m.ctl[CTL_PAUSE]:
        pass
    m.state[agent, ST_PAUSED] = m.ctl[CTL_PAUSE]
    m.close()


def test_pause_waits_for_every_running_agent(engine):
    mem, _, _ = engine
    proc = fork.Process(target=_ack_pause, args=(mem, 2))
    proc.start()
    with paused(mem, {2: proc.is_alive, 1: lambda: False}):  # 1: dead, not waited for
        assert mem.ctl[CTL_PAUSE] == paused.epoch
        assert mem.state[2, ST_PAUSED] == paused.epoch
    assert mem.ctl[CTL_PAUSE] == 0
    proc.join(10)
    served = []  # the caller's own I/O goes on while it waits (a pass may need it)
    with pytest.raises(SupervisionError, match="did not pause"):
        with paused(mem, {2: lambda: True}, timeout=0.05, service=lambda: served.append(1)):
            pass
    assert served
    assert mem.ctl[CTL_PAUSE] == 0


def test_restart_policy_gives_up_past_its_limit():
    policy = RestartPolicy(limit=3, window_s=10.0)
    assert all(policy.allow(0, t) for t in (0.0, 1.0, 2.0))
    assert not policy.allow(0, 3.0)  # a fourth death within 10 s
    assert policy.allow(1, 3.0)  # per worker
    assert policy.allow(0, 30.0)  # the old deaths left the window


@pytest.mark.parametrize("datapath", ["numpy", "compiled"])
def test_a_full_slow_ring_drops_with_a_reason_instead_of_blocking(engine, datapath):
    """The forwarder checks each ring's room before it counts a batch: what the slow
    ring cannot take is a `ring_full` drop, its buffer goes back, nothing waits."""
    mem, tables, feeder = engine
    fw = F.Forwarder(mem, tables, 0, 64, datapath=datapath)
    fw.warm_up()
    slow_ring = mem.rings["slow.0"]
    filler = feeder.alloc(slow_ring.size - 3)
    assert slow_ring.enqueue(filler) == len(filler)  # room for 3 more
    batch = [Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst="10.0.2.2", ttl=1,
                                                       id=i) / UDP() for i in range(8)]
    idx = load_frames(mem, feeder, batch)
    fw.process(idx)
    row = mem.counters[fw.agent]
    assert row[index(Slow.ttl_exceeded)] == 3 and row[index(Drop.ring_full)] == 5
    balance(row)
    assert ring_window(slow_ring)[-3:].tolist() == idx[:3].tolist()  # in order
    assert mem.journal.state[0] == JOURNAL_IDLE
    drain_and_audit(mem, feeder)
