"""The shared neighbour table, a worker's neighbour cache, and the worker around them.

The table (engine/shm/neigh_table.py): put/get/remove, a full table and a full probe
window, removal inside a probe window, the generation rule, a reader process doing
vectorised lookups while entries change (never a torn row), and random operation
sequences against a dict. The cache (engine/pipeline/neigh_cache.py): hit, miss, fill,
eviction, clear, and that it always answers what the table answers. The worker:
packets to learned neighbours leave with their MAC, a neighbour change reaches the
next batch, and issue 3's test: a port taken down sends nothing from the very next
batch and the worker's cache holds nothing for it.
"""

from __future__ import annotations

import ipaddress
import multiprocessing as mp

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from engine.control.routing import build_routing
from engine.counters import Drop, Misc, Slow, index
from engine.pipeline.neigh_cache import NeighCache
from engine.pipeline.tables import make_tables
from engine.pipeline.verdict import slow
from engine.shm.fib import FibWriter
from engine.shm.memory import AGENT_IO, CTL_NEIGH_GEN, CTL_NH_GEN, EngineMemory, Geometry
from engine.shm.neigh_table import (
    NUD_VALID,
    OFFSETS,
    PROBES,
    NeighbourEntry,
    NeighbourTable,
    Nud,
    home_slots,
    mac_to_48,
    plain_memory,
)
from engine.shm.pool import Buffers
from engine.workers.forwarder import Forwarder

from conftest import MAC, Lab, load_frames

P0, P1, P2 = 0, 1, 2


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def mac(n: int) -> bytes:
    return bytes([2, 0, 0xAA, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF])


def colliding(table: NeighbourTable, n: int, start: int = ip("10.1.0.0")) -> list[int]:
    """n addresses with the same home slot in `table`."""
    cand = np.arange(start, start + 1_000_000, dtype=np.uint32)
    home = home_slots(cand, table.bits)
    same = cand[home == home[0]]
    assert len(same) >= n
    return [int(a) for a in same[:n]]


def lookup(table, addrs):
    return table.lookup(np.array(addrs, dtype=np.uint32))


# ------------------------------------------------------------------ the table


def test_put_get_update_remove():
    t = NeighbourTable(plain_memory(64))
    a = ip("10.0.2.77")
    assert t.get(a) is None and len(t) == 0
    assert t.put(a, P1, mac(1), Nud.REACHABLE, 1000)
    assert t.get(a) == NeighbourEntry(a, P1, mac(1), Nud.REACHABLE, 1000)
    found, port, mac48 = lookup(t, [a, ip("10.0.2.78")])
    assert found.tolist() == [True, False]
    assert port.tolist() == [P1, 0] and mac48.tolist() == [mac_to_48(mac(1)), 0]
    assert t.put(a, P1, mac(2), Nud.STALE, 2000)  # an update keeps one entry
    assert len(t) == 1 and t.get(a) == NeighbourEntry(a, P1, mac(2), Nud.STALE, 2000)
    t.set_state(a, Nud.PROBE, 3000)
    assert t.get(a) == NeighbourEntry(a, P1, mac(2), Nud.PROBE, 3000)
    t.remove(a)
    assert t.get(a) is None and len(t) == 0 and not lookup(t, [a])[0][0]
    t.remove(a)  # nothing left to remove: nothing happens
    t.set_state(a, Nud.STALE, 4000)
    assert t.get(a) is None


@pytest.mark.parametrize("state", list(Nud))
def test_only_valid_states_are_found(state):
    t = NeighbourTable(plain_memory(16))
    t.put(ip("10.0.2.9"), P1, mac(9), state, 1)
    assert bool(lookup(t, [ip("10.0.2.9")])[0][0]) == (state in NUD_VALID)
    assert t.get(ip("10.0.2.9")).state == state  # the writer side sees every state


def test_a_full_table_refuses_new_entries_but_updates_old_ones():
    t = NeighbourTable(plain_memory(64))
    addrs = [ip("10.0.0.1") + i * 7919 for i in range(t.capacity)]
    assert all(t.put(a, P0, mac(i), Nud.REACHABLE, 1) for i, a in enumerate(addrs))
    assert len(t) == t.capacity == 64 and t.slots == 128
    assert not t.put(ip("192.0.2.1"), P0, mac(99), Nud.REACHABLE, 1)
    assert t.get(ip("192.0.2.1")) is None
    assert t.put(addrs[5], P2, mac(555), Nud.STALE, 2)  # known: updated in place
    assert t.get(addrs[5]).mac == mac(555)
    assert lookup(t, addrs)[0].all()
    t.remove(addrs[0])
    assert t.put(ip("192.0.2.1"), P0, mac(99), Nud.REACHABLE, 1)


def test_a_full_probe_window_refuses_the_next_colliding_address():
    t = NeighbourTable(plain_memory(4096))
    same = colliding(t, PROBES + 1)
    for i, a in enumerate(same[:PROBES]):
        assert t.put(a, P0, mac(i), Nud.REACHABLE, 1)
    assert not t.put(same[PROBES], P0, mac(99), Nud.REACHABLE, 1)  # table far from full
    home = int(home_slots(np.array(same[:1], dtype=np.uint32), t.bits)[0])
    window = sorted((home + int(o)) % t.slots for o in OFFSETS)
    assert sorted(np.flatnonzero(t.used).tolist()) == window  # each in the shared window
    assert lookup(t, same)[0].tolist() == [True] * PROBES + [False]


def test_removal_inside_a_probe_window_keeps_the_later_entries_found():
    """Why no tombstones are needed: lookups read the whole window, so freeing a slot
    in front of an entry cannot hide it; a new address reuses the freed slot."""
    t = NeighbourTable(plain_memory(4096))
    same = colliding(t, 6)
    for i, a in enumerate(same[:5]):
        t.put(a, P0, mac(i), Nud.REACHABLE, 1)
    home = int(home_slots(np.array(same[:1], dtype=np.uint32), t.bits)[0])
    assert t.ip[home] == same[0]  # the first one took the home slot
    t.remove(same[0])
    t.remove(same[2])
    assert not t.used[home]
    found, _, mac48 = lookup(t, same[:5])
    assert found.tolist() == [False, True, False, True, True]
    assert mac48[[1, 3, 4]].tolist() == [mac_to_48(mac(i)) for i in (1, 3, 4)]
    assert t.put(same[5], P0, mac(5), Nud.REACHABLE, 1)
    assert t.ip[home] == same[5]  # the first free slot of the window: the freed home
    assert lookup(t, same[1:])[0].tolist() == [True, False, True, True, True]
    assert len(t) == 4


def test_generation_moves_only_when_a_cached_entry_stops_being_true():
    t = NeighbourTable(plain_memory(16))
    a = ip("10.0.2.50")
    steps = [
        (lambda: t.put(a, P1, mac(1), Nud.INCOMPLETE, 1), 0),  # new, not usable
        (lambda: t.put(a, P1, mac(1), Nud.REACHABLE, 2), 0),  # becomes usable: nothing cached
        (lambda: t.set_state(a, Nud.STALE, 3), 0),  # still usable, same MAC and port
        (lambda: t.put(a, P1, mac(1), Nud.DELAY, 4), 0),
        (lambda: t.put(a, P1, mac(2), Nud.REACHABLE, 5), 1),  # new MAC
        (lambda: t.put(a, P2, mac(2), Nud.REACHABLE, 6), 1),  # moved to another port
        (lambda: t.set_state(a, Nud.FAILED, 7), 1),  # no longer usable
        (lambda: t.set_state(a, Nud.INCOMPLETE, 8), 0),  # unusable to unusable
        (lambda: t.put(a, P2, mac(3), Nud.PERMANENT, 9), 0),
        (lambda: t.remove(a), 1),  # a usable entry goes
        (lambda: t.put(a, P2, mac(3), Nud.FAILED, 10), 0),
        (lambda: t.remove(a), 0),  # an unusable one goes
    ]
    for i, (step, moves) in enumerate(steps):
        gen = int(t.ctl[CTL_NEIGH_GEN])
        step()
        assert int(t.ctl[CTL_NEIGH_GEN]) == gen + moves, f"step {i}"


def test_entries_are_listed_sorted():
    t = NeighbourTable(plain_memory(16))
    for a, st_ in (("10.0.2.9", Nud.STALE), ("10.0.1.5", Nud.PERMANENT), ("10.0.3.1", Nud.FAILED)):
        t.put(ip(a), P0, mac(ip(a) & 0xFF), st_, 7)
    assert [(str(ipaddress.IPv4Address(e.ip)), e.state) for e in t.entries()] == [
        ("10.0.1.5", Nud.PERMANENT), ("10.0.2.9", Nud.STALE), ("10.0.3.1", Nud.FAILED)]


def test_geometry_sizes_the_shared_table():
    g = Geometry.new(2, 1, nbufs=64, ring_size=16, neigh_capacity=100)
    mem = EngineMemory.create(g)
    try:
        t = NeighbourTable(mem)
        assert t.slots == 256 and t.capacity == 128  # 100 rounded up to a power of two
        default = Geometry.new(2, 1, nbufs=64, ring_size=16)
        assert default.neigh_capacity == 4096
    finally:
        mem.close()


# random operation sequences against a dict

ADDRS = [ip("10.0.0.1") + 37 * i for i in range(40)]  # 40 addresses for 16 entries
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 39), st.integers(0, 2), st.integers(0, 3),
              st.sampled_from(list(Nud))),
    st.tuples(st.just("set_state"), st.integers(0, 39), st.sampled_from(list(Nud))),
    st.tuples(st.just("remove"), st.integers(0, 39)),
), max_size=120)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_random_operations_match_a_dict(ops):
    """In 32 slots with windows of 16 a window can only be full when the table is,
    so the dict's rule (refuse a new address at 16 entries) is the table's."""
    t = NeighbourTable(plain_memory(16))
    assert t.slots == 32 and t.capacity == 16
    oracle: dict[int, tuple[int, bytes, Nud, int]] = {}
    gen = 0
    for now, op in enumerate(ops, 1):
        a = ADDRS[op[1]]
        before = oracle.get(a)
        if op[0] == "put":
            _, _, port, m, state = op
            ok = t.put(a, port, mac(m), state, now)
            assert ok == (before is not None or len(oracle) < 16)
            after = (port, mac(m), state, now) if ok else before
        elif op[0] == "set_state":
            t.set_state(a, op[2], now)
            after = None if before is None else (before[0], before[1], op[2], now)
        else:
            t.remove(a)
            after = None
        if after is None:
            oracle.pop(a, None)
        else:
            oracle[a] = after
        if before is not None and before[2] in NUD_VALID and (
                after is None or after[2] not in NUD_VALID or after[:2] != before[:2]):
            gen += 1
        assert int(t.ctl[CTL_NEIGH_GEN]) == gen
        assert len(t) == len(oracle)
    for a in ADDRS:
        want = oracle.get(a)
        assert t.get(a) == (None if want is None else NeighbourEntry(a, *want))
    found, port, mac48 = lookup(t, ADDRS)
    for k, a in enumerate(ADDRS):
        want = oracle.get(a)
        usable = want is not None and want[2] in NUD_VALID
        assert bool(found[k]) == usable
        if usable:
            assert (int(port[k]), int(mac48[k])) == (want[0], mac_to_48(want[1]))


# a reader process during writes

TORN_ADDRS = 64


def _reader(geometry: Geometry, probes: np.ndarray, q, ready, done) -> None:
    mem = EngineMemory.attach(geometry)
    try:
        t = NeighbourTable(mem)
        batches = found_total = bad = 0
        first_bad = None
        ready.set()
        while not done.is_set():
            found, port, mac48 = t.lookup(probes)
            batches += 1
            found_total += int(found.sum())
            # every row the writer writes is (ip << 16 | version) with port = version:
            # a row mixing two writes, or two addresses, breaks one of these
            ok = ~found | (((mac48 >> np.uint64(16)) == probes)
                           & ((mac48 & np.uint64(0xFFFF)) == port))
            if not ok.all():
                bad += 1
                if first_bad is None:
                    i = int(np.flatnonzero(~ok)[0])
                    first_bad = (int(probes[i]), int(port[i]), int(mac48[i]))
        q.put((batches, found_total, bad, first_bad))
    finally:
        mem.close()


def test_a_reader_never_sees_a_torn_entry():
    g = Geometry.new(2, 1, nbufs=64, ring_size=16, neigh_capacity=128)
    mem = EngineMemory.create(g)
    try:
        t = NeighbourTable(mem)
        addrs = colliding(t, 8) + [ip("10.7.0.0") + 13 * i for i in range(TORN_ADDRS - 8)]
        probes = np.array(addrs * 32, dtype=np.uint32)  # a long read: many writes meet it
        ctx = mp.get_context("spawn")
        q, ready, done = ctx.Queue(), ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_reader, args=(g, probes, q, ready, done))
        proc.start()
        assert ready.wait(60)
        rng = np.random.default_rng(7)
        version = 0
        for _ in range(30_000):
            a = addrs[int(rng.integers(len(addrs)))]
            version = version % 0xFFFF + 1
            r = rng.random()
            if r < 0.1:
                t.remove(a)
            elif r < 0.2:
                t.set_state(a, Nud.FAILED if rng.random() < 0.5 else Nud.REACHABLE, version)
            else:
                m = ((a << 16) | version).to_bytes(6, "little")
                assert t.put(a, version, m, Nud.REACHABLE, version)
        done.set()
        batches, found_total, bad, first_bad = q.get(timeout=120)
        proc.join(60)
        assert proc.exitcode == 0
    finally:
        mem.close()
    assert bad == 0, f"torn rows in {bad} batches, first (ip, port, mac48) {first_bad}"
    assert batches > 20  # the reader really ran during the writes
    assert 0 < found_total < batches * len(probes)  # it saw entries, and gaps


# ------------------------------------------------------------------ the worker's cache


def filled_table(entries) -> NeighbourTable:
    t = NeighbourTable(plain_memory(256))
    for a, port, m, state in entries:
        assert t.put(a, port, mac(m), state, 1)
    return t


def resolve(cache, addrs, egress):
    return cache.resolve(np.array(addrs, dtype=np.uint32),
                         np.array(egress, dtype=np.uint16))


def test_cache_miss_fills_then_hits_without_the_table():
    a, b = ip("10.0.2.5"), ip("10.0.2.6")
    t = filled_table([(a, P1, 5, Nud.REACHABLE), (b, P1, 6, Nud.STALE)])
    c = NeighCache(t, slots=64)
    ok, m = resolve(c, [a, b, a, b, a], [P1] * 5)
    assert ok.all() and m.tolist() == [mac_to_48(mac(n)) for n in (5, 6, 5, 6, 5)]
    assert c.misses == 5 and c.fills == 2 and len(c) == 2
    assert c.held() == sorted([(a, P1, mac(5)), (b, P1, mac(6))])
    t.remove(a)  # a cache answers from itself until it is cleared ...
    ok, m = resolve(c, [b, a], [P1, P1])
    assert ok.all() and c.misses == 5
    c.clear()  # ... which a worker does when the generation moves
    assert len(c) == 0 and c.held() == []
    ok, _ = resolve(c, [b, a], [P1, P1])
    assert ok.tolist() == [True, False] and c.misses == 7


def test_cache_refuses_another_port_and_unusable_entries():
    a, b, d = ip("10.0.2.5"), ip("10.0.2.6"), ip("10.0.2.7")
    t = filled_table([(a, P2, 5, Nud.REACHABLE), (b, P1, 6, Nud.INCOMPLETE),
                      (d, P1, 7, Nud.FAILED)])
    c = NeighCache(t, slots=64)
    ok, _ = resolve(c, [a, b, d, ip("10.0.2.8")], [P1, P1, P1, P1])
    assert not ok.any() and len(c) == 0  # nothing cached: nothing usable found
    ok, m = resolve(c, [a], [P2])
    assert ok.all() and m[0] == mac_to_48(mac(5)) and c.held(P2) == [(a, P2, mac(5))]
    assert c.held(P1) == []


def test_cache_evicts_within_a_full_window_and_stays_right():
    t = NeighbourTable(plain_memory(256))
    c = NeighCache(t, slots=16)
    same = [ip("10.3.0.5") + 16 * k for k in range(10)]  # one home slot: the low 4 bits
    for i, a in enumerate(same):
        t.put(a, P0, mac(i), Nud.REACHABLE, 1)
    for _ in range(3):
        ok, m = resolve(c, same, [P0] * len(same))
        assert ok.all() and m.tolist() == [mac_to_48(mac(i)) for i in range(len(same))]
    assert len(c) <= 4  # one window of 4 slots holds what it can


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 2), st.integers(0, 5),
                          st.sampled_from(list(Nud))), max_size=60),
       st.lists(st.lists(st.tuples(st.integers(0, 31), st.integers(0, 2)), min_size=1,
                         max_size=40), min_size=1, max_size=6))
def test_cache_answers_what_the_table_answers(changes, batches):
    """Interleave table changes (as the slow path makes them) with cached lookups,
    clearing the cache only when the generation moved, as a worker does: the answers
    always equal the table's own. A change that left a stale copy in the cache without
    moving the generation would fail this."""
    addrs = [ip("10.0.9.0") + 3 * i for i in range(32)]
    t = NeighbourTable(plain_memory(64))
    c = NeighCache(t, slots=16)
    gen = t.generation
    per_batch = max(1, len(changes) // len(batches))
    for b, batch in enumerate(batches):
        for a, port, m, state in changes[b * per_batch:(b + 1) * per_batch]:
            if state == Nud.NONE:
                t.remove(addrs[a])
            else:
                t.put(addrs[a], port, mac(m), state, 1)
        if t.generation != gen:
            c.clear()
            gen = t.generation
        keys = np.array([addrs[a] for a, _ in batch], dtype=np.uint32)
        egress = np.array([p for _, p in batch], dtype=np.uint16)
        ok, m = c.resolve(keys, egress)
        want_ok, want_m = t.resolve(keys, egress)
        assert ok.tolist() == want_ok.tolist()
        assert m[ok].tolist() == want_m[want_ok].tolist()


# ------------------------------------------------------------------ the worker


@pytest.fixture
def engine(tmp_path):
    """The Lab router with a worker; its control-plane `Routing` takes ports down."""
    cfg = Lab(tmp_path).config()
    mem = EngineMemory.create(Geometry.new(len(cfg.ports), 1, nbufs=512, ring_size=256))
    fib = FibWriter.create()
    routing = build_routing(cfg, mem, fib)
    fw = Forwarder(mem, make_tables(cfg, mem, fib.lookup), 0, 64)
    io = Buffers(mem, AGENT_IO)
    yield mem, routing, fw, io
    fib.close()
    fib.unlink()
    mem.close()


def to(dst: str, **ip_fields) -> Ether:
    return Ether(src=MAC["h1"], dst=MAC["p0"]) / IP(src="10.0.1.2", dst=dst, **ip_fields) / UDP()


def expected(frame: Ether, port: str, dst_mac: str) -> bytes:
    pkt = frame.copy()
    pkt[Ether].src = MAC[port]
    pkt[Ether].dst = dst_mac
    pkt[IP].ttl -= 1
    del pkt[IP].chksum
    return bytes(Ether(bytes(pkt)))


def run(mem, fw, io, frames):
    """Frames in on p0's RX ring, one worker pass; (sent on p1, sent on p2, slow)."""
    idx = load_frames(mem, io, frames, P0)
    assert mem.rings["rx.0.0"].enqueue(idx) == len(idx)
    fw.poll()
    return (mem.rings["tx.1.0"].dequeue(1000), mem.rings["tx.2.0"].dequeue(1000),
            mem.rings["slow.0"].dequeue(1000))


def sent_bytes(mem, idx) -> list[bytes]:
    return [bytes(mem.data[i, : mem.length[i]]) for i in idx]


def test_static_neighbours_are_permanent_entries(engine):
    mem, routing, fw, io = engine
    entries = {e.ip: e for e in NeighbourTable(mem).entries()}
    assert set(entries) == {ip(a) for a in ("10.0.1.2", "10.0.2.2", "10.0.2.254", "10.0.3.2")}
    e = entries[ip("10.0.2.254")]
    assert (e.port, e.mac, e.state) == (P1, bytes.fromhex(MAC["gw"].replace(":", "")),
                                        Nud.PERMANENT)
    # and their /32 routes stay as they were: resolved next hops with the MAC in the row
    nh = routing.lookup("10.0.2.254")["nexthop"]
    assert nh["resolved"] and nh["mac"] == MAC["gw"]


def test_worker_forwards_to_learned_neighbours_and_follows_their_changes(engine):
    mem, routing, fw, io = engine
    t = NeighbourTable(mem)  # what the slow path's ARP writes through
    learned = [ip(f"10.0.2.{n}") for n in range(100, 110)]
    for n, a in enumerate(learned):
        t.put(a, P1, mac(n), Nud.REACHABLE, 1)
    frames = [to(f"10.0.2.{100 + n % 10}", id=n) for n in range(40)]
    p1, p2, slow_idx = run(mem, fw, io, frames)
    assert len(p1) == 40 and len(p2) == len(slow_idx) == 0
    assert sent_bytes(mem, p1) == [expected(f, "p1", mac(n % 10).hex(":"))
                                   for n, f in enumerate(frames)]
    assert fw.neigh is not None and len(fw.neigh.held(P1)) == 10
    io.free(p1)

    # the slow path learns a new MAC for one, and loses another
    t.put(learned[3], P1, mac(333), Nud.REACHABLE, 2)
    t.set_state(learned[4], Nud.FAILED, 2)
    flushes = fw.flushes
    frames = [to("10.0.2.103"), to("10.0.2.104"), to("10.0.2.105")]
    p1, _, slow_idx = run(mem, fw, io, frames)
    assert fw.flushes == flushes + 1
    assert sent_bytes(mem, p1) == [expected(frames[0], "p1", mac(333).hex(":")),
                                   expected(frames[2], "p1", mac(5).hex(":"))]
    assert len(slow_idx) == 1 and mem.code[slow_idx[0]] == slow(Slow.neigh_unresolved)
    row = mem.counters[fw.agent]
    assert row[index(Slow.neigh_unresolved)] == 1 and row[index(Misc.forwarded)] == 42


def test_port_down_sends_nothing_from_the_next_batch_and_empties_the_caches(engine):
    """Issue 3: `port down` (Routing.set_port, what the control socket calls) → the
    very next batch sends nothing out of the port and the worker caches nothing for
    it, with no lock and no message: the worker sees CTL_NH_GEN move."""
    mem, routing, fw, io = engine
    t = NeighbourTable(mem)
    for n in range(20):
        t.put(ip(f"10.0.2.{100 + n}"), P1, mac(n), Nud.REACHABLE, 1)
    t.put(ip("10.0.3.50"), P2, mac(50), Nud.REACHABLE, 1)
    to_p1 = [to(f"10.0.2.{100 + n}", id=n) for n in range(20)]  # learned neighbours
    to_p1 += [to("10.0.2.2"), to("10.9.1.1"), to("10.0.2.100", ttl=2)]  # static, gateway
    to_p2 = [to("10.0.3.50"), to("10.0.3.2")]
    p1, p2, _ = run(mem, fw, io, to_p1 + to_p2)
    assert len(p1) == 23 and len(p2) == 2  # the baseline: both ports up
    assert len(fw.neigh.held(P1)) == 20 and len(fw.neigh.held(P2)) == 1
    io.free(np.concatenate([p1, p2]))

    gen = int(mem.ctl[CTL_NH_GEN])
    assert routing.set_port("p1", up=False)
    assert int(mem.ctl[CTL_NH_GEN]) == gen + 1
    p1, p2, slow_idx = run(mem, fw, io, to_p1 + to_p2)  # the very next batch
    assert len(p1) == 0 and len(slow_idx) == 0
    assert fw.neigh.held(P1) == []  # nothing cached for the port that went down
    assert sent_bytes(mem, p2) == [expected(to_p2[0], "p2", mac(50).hex(":")),
                                   expected(to_p2[1], "p2", MAC["h3"])]
    assert mem.counters[fw.agent][index(Drop.port_down)] == 23
    io.free(p2)

    assert routing.set_port("p1", up=True)
    p1, _, _ = run(mem, fw, io, to_p1)
    assert sent_bytes(mem, p1) == [expected(f, "p1", mac(n).hex(":"))
                                   for n, f in enumerate(to_p1[:20])] + [
        expected(to_p1[20], "p1", MAC["h2"]), expected(to_p1[21], "p1", MAC["gw"]),
        expected(to_p1[22], "p1", mac(0).hex(":"))]


def test_neighbour_generation_is_read_once_per_pass(engine):
    mem, routing, fw, io = engine
    flushes = fw.flushes
    fw.poll()
    assert fw.flushes == flushes  # nothing moved: nothing flushed
    mem.ctl[CTL_NEIGH_GEN] += 1
    fw.poll()
    fw.poll()
    assert fw.flushes == flushes + 1
