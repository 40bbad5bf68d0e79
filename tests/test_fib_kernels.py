"""The FIB's compiled paths (`engine.shm.fib_kernels`) against its numpy paths and a
plain Python longest-prefix match: same answers, and after any sequence of adds,
deletes and bulk loads, byte-identical tables, depths and group lists."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fib import edge_addrs, mask, oracle, random_routes

from engine.shm import fib_kernels
from engine.shm.fib import EXT, FibReader, FibWriter, Tbl8Exhausted

Routes = dict[tuple[int, int], int]


def python_lpm(routes: Routes, addr: int) -> int:
    """Longest-prefix match the plain way: try each length, longest first."""
    for plen in range(32, -1, -1):
        nh = routes.get((addr & mask(plen), plen))
        if nh is not None:
            return nh
    return 0


def outcome(f: FibReader, addrs: np.ndarray, out: np.ndarray) -> object:
    """What lookup(addrs, out) does: the values it writes, or the error's type."""
    try:
        res = f.lookup(addrs, out=out)
    except (TypeError, ValueError) as e:
        return type(e)
    assert res is out
    return out.tolist()


def pair(groups: int) -> tuple[FibWriter, FibWriter]:
    return (FibWriter.create(tbl8_groups=groups, impl="jit"),
            FibWriter.create(tbl8_groups=groups, impl="numpy"))  # fmt: skip


def assert_same_state(a: FibWriter, b: FibWriter, slash24s: slice = slice(None)) -> None:
    """The shared tables, the private depths and group lists, the route sets equal
    (tbl24 and its depths only over `slash24s`: the whole of them takes ~50 ms)."""
    # noqa: SLF001 below - white-box: the writer's private state
    assert (a._tbl24[slash24s] == b._tbl24[slash24s]).all()  # noqa: SLF001
    assert (a._d24[slash24s] == b._d24[slash24s]).all()  # noqa: SLF001
    assert (a._tbl8 == b._tbl8).all() and (a._d8 == b._d8).all()  # noqa: SLF001
    assert a._free == b._free and list(a._deferred) == list(b._deferred)  # noqa: SLF001
    assert a.generation == b.generation and sorted(a.routes()) == sorted(b.routes())


def assert_same_tables(a: FibWriter, b: FibWriter) -> None:
    """Equal tables and depths but for which tbl8 group holds a /24: with no reader
    online, one delete at a time frees a group for the very next add, a batch only
    after its call (other numbers, the same contents)."""
    # noqa: SLF001 below - white-box: the writer's private state
    ta, tb = a._tbl24, b._tbl24  # noqa: SLF001
    ext = ta >= EXT
    assert (ext == (tb >= EXT)).all() and (ta[~ext] == tb[~ext]).all()
    assert (a._d24 == b._d24).all()  # noqa: SLF001
    keys = np.flatnonzero(ext)
    ga, gb = (f.tbl8_groups - ((1 << 32) - f._tbl24[keys].astype(np.int64)) // 256  # noqa: SLF001
              for f in (a, b))
    assert (a._tbl8_2d[ga] == b._tbl8_2d[gb]).all()  # noqa: SLF001
    assert (a._d8_2d[ga] == b._d8_2d[gb]).all()  # noqa: SLF001
    assert a.stats() == b.stats()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_lookup_compiled_equals_numpy_equals_python(seed):
    rng = random.Random(seed)
    routes = random_routes(rng, 2000)
    addrs = edge_addrs(routes, rng, 5000)
    np.random.default_rng(seed).shuffle(addrs)
    jit, npy = pair(2048)
    with jit, npy, FibReader.attach(jit.name, impl="jit") as reader:
        items = [(p, plen, nh) for (p, plen), nh in routes.items()]
        jit.bulk_load(items)
        npy.bulk_load(items)
        want = np.array([python_lpm(routes, int(a)) for a in addrs], dtype=np.uint32)
        assert (npy.lookup(addrs) == want).all()
        assert (jit.lookup(addrs) == want).all()
        assert (reader.lookup(addrs) == want).all()  # read-only views
        assert_same_state(jit, npy)


def test_compiled_lookup_takes_every_input_numpy_takes():
    jit, npy = pair(8)
    with jit, npy:
        for f in (jit, npy):
            f.add(0x0A00_0000, 8, 3)
            f.add(0x0A00_0080, 25, 4)
        addrs = np.array([0x0A00_0001, 0x0A00_00C8, 0, 0x0AFF_0000], dtype=np.uint32)
        ro = addrs.copy()
        ro.flags.writeable = False
        inputs = [addrs, ro, addrs[::2], addrs.astype(np.int64), addrs.reshape(2, 2),
                  addrs.tolist(), addrs[:0], addrs[:1]]  # fmt: skip
        for a in inputs:
            assert np.array_equal(jit.lookup(a), npy.lookup(a))
        outs = (lambda: np.empty(4, np.uint32), lambda: np.empty(4, np.int64),
                lambda: np.empty(8, np.uint32)[::2], lambda: np.empty(3, np.uint32),
                lambda: np.empty((2, 2), np.uint32))  # fmt: skip
        for make_out in outs:
            assert outcome(jit, addrs, make_out()) == outcome(npy, addrs, make_out())
    # every kernel was compiled (or loaded) on import, for the types it is called with
    assert all(not k._can_compile for k in  # noqa: SLF001
               (fib_kernels.lookup, fib_kernels.change, fib_kernels.apply, fib_kernels.build,
                fib_kernels.publish, fib_kernels.routes_with, fib_kernels.route_items,
                fib_kernels.route_get))


def test_unknown_impl():
    with pytest.raises(ValueError, match="impl"):
        FibWriter.create(impl="cuda")


# Prefixes in 10.0.0.0/22 and a few shorter ones, as in test_fib's property test, so
# that groups are created, shared and collapsed all the time; a registered reader
# that passes a quiescent state now and then makes released groups wait (deferred).
REGION = 0x0A00_0000
NEAR_REGION = slice((REGION >> 8) - 4, (REGION >> 8) + 8)
SHORT = [(0, 0), (0x0A00_0000, 8), (0x0A00_0000, 16), (0x0A00_0000, 23)]
ops = st.lists(
    st.tuples(
        # 0-3 delete, 4-8 add, 9 bulk_load, 10 reader passes quiescent, 11-12 apply
        st.integers(0, 12),
        st.sampled_from([-1, 22, 23, 24, 24, 25, 25, 26, 28, 30, 31, 32, 32]),
        st.integers(0, 1023),
        st.integers(1, 9),
        st.integers(0, 1 << 16),
    ),
    min_size=1,
    max_size=60,
)


def _batch(routes: Routes, plen: int, off: int, nh: int, pick: int, bad_delete: bool
           ) -> tuple[list[tuple[int, int, int]], Routes, list[tuple[int, int]]]:
    """An apply() batch for the sequence test: (updates, what it adds, what it deletes)
    if it runs to the end."""
    rng = random.Random(pick)
    have = sorted(routes)
    dels = rng.sample(have, min(len(have), rng.randint(0, 3)))
    adds: Routes = {}
    for _ in range(rng.randint(0, 4)):
        n = rng.choice([plen if plen > 0 else 24, 22, 24, 25, 28, 32])
        adds[((REGION + rng.randint(0, 1023)) & mask(n), n)] = rng.randint(1, 9)
    if have and rng.random() < 0.5:
        adds[rng.choice(have)] = nh  # a next-hop change
    adds = {k: v for k, v in adds.items() if k not in dels}
    updates = [(p, n, 0) for p, n in dels] + [(p, n, h) for (p, n), h in adds.items()]
    rng.shuffle(updates)
    if bad_delete:
        absent = ((REGION + off) & mask(30), 30)
        if absent not in routes and absent not in adds:
            updates.append((*absent, 0))
    return updates, adds, dels


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
def test_random_sequences_leave_identical_tables(ops):
    jit, npy = pair(6)
    with jit, npy:
        for f in (jit, npy):
            f.reclaim_timeout = 0.0
            f.register_reader(0)
        routes: Routes = {}
        addrs = np.concatenate([np.arange(REGION, REGION + 1024, dtype=np.uint32),
                                np.array([0, REGION - 1, 0xFFFF_FFFF], dtype=np.uint32)])
        for kind, plen, off, nh, pick in ops:
            if kind == 10:
                for f in (jit, npy):
                    f.quiescent(0)
                continue
            gone: list[tuple[int, int]] = []  # routes the step deletes
            if kind < 4 and routes:
                key = sorted(routes)[pick % len(routes)]
                act = lambda f, key=key: f.delete(*key)  # noqa: E731
                gone = [key]
                new = {}
            elif kind >= 11:
                # a batch: deletes of present routes (their covering routes must come
                # back), new and replaced routes; kind 12 ends on a delete of a route
                # that is not there, which stops the batch with KeyError
                updates, new, gone = _batch(routes, plen, off, nh, pick, kind == 12)
                act = lambda f, u=updates: f.apply(u)  # noqa: E731
            elif kind == 9:
                plen = max(plen, 22)
                batch = {((REGION + off) & mask(plen), plen): nh}
                if routes:
                    batch[sorted(routes)[pick % len(routes)]] = nh % 9 + 1
                items = [(p, n, h) for (p, n), h in batch.items()]
                act = lambda f, items=items: f.bulk_load(items)  # noqa: E731
                new = batch
            else:
                p, plen = SHORT[pick % 4] if plen < 0 else ((REGION + off) & mask(plen), plen)
                act = lambda f, p=p, plen=plen, nh=nh: f.add(p, plen, nh)  # noqa: E731
                new = {(p, plen): nh}
            errors = []
            for f in (jit, npy):
                try:
                    act(f)
                    errors.append(None)
                except (Tbl8Exhausted, KeyError) as e:
                    errors.append((type(e), str(e).replace(f.name, "FIB"),
                                   getattr(e, "applied", None)))
            assert errors[0] == errors[1]
            if errors[0] is None:
                for key in gone:
                    del routes[key]
                routes.update(new)
            elif kind >= 11:  # a batch applies the changes before the one that failed
                applied = errors[0][2]
                for p, n, h in updates[:applied]:
                    if h:
                        routes[(p, n)] = h
                    else:
                        del routes[(p, n)]
            assert_same_state(jit, npy, NEAR_REGION)
            assert (jit.lookup(addrs) == npy.lookup(addrs)).all()
            assert (jit.lookup(addrs) == oracle(routes, addrs)).all()
        assert_same_state(jit, npy)
        want = np.array([python_lpm(routes, int(a)) for a in addrs], dtype=np.uint32)
        assert (jit.lookup(addrs) == want).all()


def test_apply_equals_one_at_a_time_and_the_oracle():
    """A long random feed (announcements, next-hop changes, withdrawals of any length,
    so covering routes come back all the time) through apply() in batches of several
    sizes, against the same feed one add/delete at a time, both impls, and the oracle."""
    rng = random.Random(11)
    routes = random_routes(rng, 1500)
    items = list(routes.items())
    feed: list[tuple[int, int, int]] = []
    live = dict(routes)
    for _ in range(6000):
        if live and rng.random() < 0.45:
            key = rng.choice(list(live))
            feed.append((*key, 0))
            del live[key]
        else:
            key = rng.choice(items)[0] if rng.random() < 0.5 else next(iter(random_routes(rng, 1)))
            nh = rng.randint(1, 1000)
            feed.append((*key, nh))
            live[key] = nh
    addrs = edge_addrs(live | routes, rng, 3000)
    fibs = [FibWriter.create(tbl8_groups=2048, impl=i) for i in ("jit", "numpy") for _ in range(2)]
    try:
        for f in fibs:
            f.bulk_load([(p, n, h) for (p, n), h in routes.items()])
        one_jit, batch_jit, one_npy, batch_npy = fibs
        for f in (one_jit, one_npy):
            for p, n, h in feed:
                if h:
                    f.add(p, n, h)
                else:
                    f.delete(p, n)
        i = 0
        for size in [1, 7, 64, 500, 10_000]:  # the feed in batches of growing size
            chunk = feed[i : i + size * 3]
            for f in (batch_jit, batch_npy):
                for j in range(0, len(chunk), size):
                    assert f.apply(chunk[j : j + size]) == len(chunk[j : j + size])
            i += len(chunk)
        want = oracle(live, addrs)
        for f in fibs:
            assert (f.lookup(addrs) == want).all()
            assert sorted(f.routes()) == sorted((p, n, h) for (p, n), h in live.items())
            assert len(f) == len(live) and f.generation == one_jit.generation
        assert_same_state(one_jit, one_npy)
        assert_same_state(one_npy, batch_npy)  # the numpy apply is add/delete in a loop
        assert_same_tables(one_jit, batch_jit)
    finally:
        for f in fibs:
            f.close()
            f.unlink()


@pytest.mark.parametrize("impl", ["jit", "numpy"])
def test_apply_errors(impl):
    with FibWriter.create(tbl8_groups=2, impl=impl) as f:
        f.apply([(0x0A00_0000, 8, 1)])
        gen = f.generation
        # a bad triple anywhere: nothing applied
        with pytest.raises(ValueError, match="#2"):
            f.apply([(0x0B00_0000, 8, 2), (0x0C00_0000, 8, 0), (0x0A00_0001, 24, 1)])
        with pytest.raises(ValueError):
            f.apply([(0x0B00_0000, 8, 1 << 24)])
        assert f.generation == gen and len(f) == 1
        # a delete of a missing route stops the batch there; what came before stays
        with pytest.raises(KeyError, match="12.0.0.0/8") as err:
            f.apply([(0x0B00_0000, 8, 2), (0x0C00_0000, 8, 0), (0x0D00_0000, 8, 3)])
        assert err.value.applied == 1 and f.get(0x0B00_0000, 8) == 2
        assert f.get(0x0D00_0000, 8) is None and f.generation == gen + 1
        # out of tbl8 groups: the same
        with pytest.raises(Tbl8Exhausted) as err:
            f.apply([(0x0A00_0000, 25, 4), (0x0A00_0100, 25, 5), (0x0A00_0080, 25, 6),
                     (0x0A00_0200, 25, 7), (0x0A00_0000, 8, 0)])
        assert err.value.applied == 3 and f.lookup_one(0x0A00_0081) == 6
        assert f.lookup_one(0x0A00_0201) == 1 and f.stats()["tbl8_free"] == 0
        # deletes free groups within a batch, which the same batch may not reuse while a
        # reader could still be in them: with a reader online they wait
        f.register_reader(0)
        f.reclaim_timeout = 0.0
        with pytest.raises(Tbl8Exhausted) as err:
            f.apply([(0x0A00_0000, 25, 0), (0x0A00_0080, 25, 0), (0x0A00_0300, 25, 8)])
        assert err.value.applied == 2 and f.stats()["tbl8_deferred"] == 1
        f.quiescent(0)
        assert f.apply([(0x0A00_0300, 25, 8)]) == 1 and f.lookup_one(0x0A00_0301) == 8
        assert f.apply([]) == 0


@pytest.mark.parametrize("impl", ["jit", "numpy"])
def test_add_delete_argument_types(impl):
    """The compiled fast path takes plain ints; anything else goes through the checks
    the numpy path always made (numba itself would truncate a float)."""
    with FibWriter.create(tbl8_groups=4, impl=impl) as f:
        f.add(np.uint32(0x0A00_0000), np.uint8(8), np.int64(3))
        f.add(0x0B00_0000, 8, True)
        assert f.get(0x0A00_0000, 8) == 3 and f.get(0x0B00_0000, 8) == 1
        for bad in [(0x0C00_0000, 8.0, 1), (float(0x0C00_0000), 8, 1), (0x0C00_0000, 8, 1.5),
                    ("12.0.0.0", 8, 1), (0x0C00_0000, None, 1)]:
            with pytest.raises(TypeError):
                f.add(*bad)
        with pytest.raises(TypeError):
            f.delete(0x0A00_0000, 8.0)
        for bad in [(-1, 8, 1), (1 << 32, 8, 1), (0x0C00_0000, -1, 1), (0x0C00_0000, 33, 1),
                    (0x0C00_0000, 8, -1), (0x0C00_0000, 8, 0), (1 << 70, 8, 1)]:
            with pytest.raises(ValueError):
                f.add(*bad)
        with pytest.raises(ValueError, match="host bits"):
            f.delete(0x0A00_0001, 8)
        with pytest.raises(KeyError):
            f.delete(0x0A00_0000, 9)
        assert (0x0A00_0000, 8) in f and (0x0A00_0000, 9) not in f and (-1, 8) not in f
        assert len(f) == 2 and f.generation == 2
        f.delete(np.uint32(0x0A00_0000), 8)
        assert len(f) == 1
    with pytest.raises(ValueError, match="closed"):
        f.add(0x0A00_0000, 8, 1)
    with pytest.raises(ValueError, match="closed"):
        f.delete(0x0B00_0000, 8)


def test_route_set_grows_and_shrinks_back_to_the_same_answers():
    """The compiled route set starts small and doubles: thousands of single adds, then
    deletes of most of them, against the numpy writer's dict."""
    rng = random.Random(5)
    routes = random_routes(rng, 5000)
    jit, npy = pair(4096)
    with jit, npy:
        for (p, n), h in routes.items():
            jit.add(p, n, h)
            npy.add(p, n, h)
        assert len(jit._rt) >= 2 * len(routes)  # noqa: SLF001
        for key in list(routes)[::3] + list(routes)[1::3]:
            jit.delete(*key)
            npy.delete(*key)
            del routes[key]
        assert_same_state(jit, npy)
        addrs = edge_addrs(routes, rng, 2000)
        assert (jit.lookup(addrs) == oracle(routes, addrs)).all()
        assert all(jit.get(p, n) == h for (p, n), h in routes.items())
