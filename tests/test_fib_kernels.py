"""The FIB's compiled paths (`engine.shm.fib_kernels`) against its numpy paths and a
plain Python longest-prefix match: same answers, and after any sequence of adds,
deletes and bulk loads, byte-identical tables, depths and group lists."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fib import edge_addrs, mask, random_routes

from engine.shm import fib_kernels
from engine.shm.fib import FibReader, FibWriter, Tbl8Exhausted

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
        st.integers(0, 10),  # 0-3 delete, 4-8 add, 9 bulk_load, 10 reader passes quiescent
        st.sampled_from([-1, 22, 23, 24, 24, 25, 25, 26, 28, 30, 31, 32, 32]),
        st.integers(0, 1023),
        st.integers(1, 9),
        st.integers(0, 1 << 16),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
            if kind < 4 and routes:
                key = sorted(routes)[pick % len(routes)]
                act = lambda f, key=key: f.delete(*key)  # noqa: E731
                del routes[key]
                new = {}
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
                except Tbl8Exhausted as e:
                    errors.append(str(e).replace(f.name, "FIB"))
            assert errors[0] == errors[1]
            if errors[0] is None:
                routes.update(new)
            assert_same_state(jit, npy, NEAR_REGION)
            assert (jit.lookup(addrs) == npy.lookup(addrs)).all()
        assert_same_state(jit, npy)
        want = np.array([python_lpm(routes, int(a)) for a in addrs], dtype=np.uint32)
        assert (jit.lookup(addrs) == want).all()
