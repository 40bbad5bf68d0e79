"""The FIB's compiled paths (numba): batch lookup, single-route update, bulk build and
its publication, over the arrays `engine.shm.fib` maps.

Same layout, encoding and store order as the numpy paths in `engine.shm.fib` (which
see); `tests/test_fib_kernels.py` checks both give identical answers and tables.
Every kernel has explicit signatures, so importing this module compiles them or
loads them from numba's cache (`cache=True`), once per process, and a call never
compiles: `FibReader` imports it when it attaches, not on the first packet.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

EXT = 0x8000_0000  # engine.shm.fib.EXT (that module imports this one, not the reverse)
TBL24_SIZE = 1 << 24
GROUP_SIZE = 256

_u32 = types.Array(types.uint32, 1, "C")
_u32_ro = types.Array(types.uint32, 1, "C", readonly=True)
_u8 = types.Array(types.uint8, 1, "C")
_i64 = types.Array(types.int64, 1, "C")
_u32_2d = types.Array(types.uint32, 2, "C")
_u8_2d = types.Array(types.uint8, 2, "C")
_i64_t = types.int64

_OPTS = {"cache": True, "nogil": True}


@intrinsic
def _store_barrier(typingctx):  # noqa: ARG001 - numba passes the typing context
    """Keep every store before this point ahead of every store after it in the
    generated code. On x86-64 (TSO) the CPU already makes stores visible in program
    order, so all that is left is to stop LLVM moving them: a release fence, which
    x86 lowers to no instruction at all. numpy's paths get the same for free, every
    numpy call being opaque to the compiler."""

    def codegen(context, builder, signature, args):
        builder.fence("release")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(**_OPTS)
def _group_base(entry, groups):
    # an extended entry is (g - G) * 256 as an int32: g * 256 = entry - 2^32 + G * 256
    return np.int64(entry) - (1 << 32) + groups * GROUP_SIZE


@njit(**_OPTS)
def _ext_entry(group, groups):
    return np.uint32(((group - groups) << 8) & 0xFFFF_FFFF)


@njit(
    [
        types.void(_u32_ro, _u32_ro, _u32_ro, _u32),
        types.void(_u32, _u32, _u32_ro, _u32),  # the writer's own, writable views
        types.void(_u32, _u32, _u32, _u32),
        types.void(_u32_ro, _u32_ro, _u32, _u32),
    ],
    **_OPTS,
)
def lookup(tbl24, tbl8, addrs, out):
    """out[i] = next hop of addrs[i]: one pass, tbl24 load then, for an extended
    entry, the dependent tbl8 load (x86 keeps dependent loads in order)."""
    off = tbl8.size  # int32(entry) + size = group * 256
    for i in range(addrs.size):
        a = addrs[i]
        e = tbl24[a >> 8]
        if e & EXT:
            e = tbl8[np.int64(np.int32(e)) + off + (a & 0xFF)]
        out[i] = e


@njit(**_OPTS)
def _update8(t8, d8, base, lo, hi, depth, nh, new_depth, add):
    for i in range(base + lo, base + hi):
        d = d8[i]
        if (d <= depth) if add else (d == depth):
            if t8[i] != nh:  # store only what changes: fewer cache lines taken from readers
                t8[i] = nh
            d8[i] = new_depth


@njit(
    _i64_t(_u32, _u8, _u32, _u8, _i64_t, _i64_t, _i64_t, _i64_t, _i64_t, types.boolean, _i64_t),
    **_OPTS,
)
def update(t24, d24, t8, d8, groups, prefix, plen, nh, new_depth, add, new_group):
    """One route's change to the tables (FibWriter._update24 / _add_long /
    _delete_long): add (nh, new_depth = plen) or delete (the covering route's nh and
    depth).  A /25../32 added under a plain tbl24 entry goes into `new_group`, which
    the caller took from the free list.  Returns the group a delete emptied (now
    unlinked; the caller releases it) or -1."""
    if plen <= 24:
        lo = prefix >> 8
        for i in range(lo, lo + (1 << (24 - plen))):
            e = t24[i]
            if e & EXT:
                _update8(t8, d8, _group_base(e, groups), 0, GROUP_SIZE, plen, nh, new_depth, add)
            else:
                d = d24[i]
                if (d <= plen) if add else (d == plen):
                    if e != nh:
                        t24[i] = nh
                    d24[i] = new_depth
        return -1
    i = prefix >> 8
    lo = prefix & 0xFF
    hi = lo + (1 << (32 - plen))
    e = t24[i]
    if add and not e & EXT:
        base = new_group * GROUP_SIZE
        # the group is unreachable until the tbl24 store below: fill it in any order
        t8[base : base + GROUP_SIZE] = e
        d8[base : base + GROUP_SIZE] = d24[i]
        t8[base + lo : base + hi] = nh
        d8[base + lo : base + hi] = plen
        _store_barrier()  # every store of the group before the one that links it
        t24[i] = _ext_entry(new_group, groups)
        d24[i] = 0
        return -1
    assert e & EXT, "a route longer than /24 always sits in a tbl8 group"
    base = _group_base(e, groups)
    _update8(t8, d8, base, lo, hi, plen, nh, new_depth, add)
    if add or d8[base : base + GROUP_SIZE].max() > 24:
        return -1
    # nothing longer than /24 left: every entry holds the same value, which the tbl24
    # entry can hold directly (one store: readers now bypass the group)
    t24[i] = t8[base]
    d24[i] = d8[base]
    return base // GROUP_SIZE


@njit(types.Tuple((_u32, _u8, _i64, _u32_2d, _u8_2d))(_u32, _u8, _u32), **_OPTS)
def build(p, plen, nh):
    """engine.shm.fib._build: the table built privately from unique routes, shorter
    prefixes painted first so that longer ones overwrite them (longest-prefix match).

    Returns (tbl24 values, tbl24 depths, sorted /24 keys that need a group, their
    256-entry rows, their depths); tbl24 values at the keys are still the plain ones."""
    n = p.size
    # counting sort by length; start[k] is where length k begins in `order`
    start = np.zeros(34, np.int64)
    for i in range(n):
        start[plen[i] + 1] += 1
    for k in range(33):
        start[k + 1] += start[k]
    fill = start[:33].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        order[fill[plen[i]]] = i
        fill[plen[i]] += 1
    v24 = np.zeros(TBL24_SIZE, np.uint32)
    d24 = np.zeros(TBL24_SIZE, np.uint8)
    for k in range(start[25]):
        i = order[k]
        lo = p[i] >> 8
        hi = lo + (1 << (24 - plen[i]))
        v24[lo:hi] = nh[i]
        d24[lo:hi] = plen[i]
    nlong = n - start[25]
    slash24 = np.empty(nlong, np.int64)
    for k in range(nlong):
        slash24[k] = p[order[start[25] + k]] >> 8
    keys = np.unique(slash24)
    rows = np.empty((keys.size, GROUP_SIZE), np.uint32)
    drows = np.empty((keys.size, GROUP_SIZE), np.uint8)
    for r in range(keys.size):
        rows[r, :] = v24[keys[r]]
        drows[r, :] = d24[keys[r]]
    for k in range(nlong):
        i = order[start[25] + k]
        r = np.searchsorted(keys, slash24[k])
        lo = p[i] & 0xFF
        hi = lo + (1 << (32 - plen[i]))
        rows[r, lo:hi] = nh[i]
        drows[r, lo:hi] = plen[i]
    return v24, d24, keys, rows, drows


@njit(_i64(_u32, _u32, _u8, _i64_t, _u32, _i64, _u32_2d, _u8_2d, _i64), **_OPTS)
def publish(cur24, t8, d8, groups, v24, keys, rows, drows, new_groups):
    """Make the live tables equal `build`'s result (FibWriter._publish): the groups of
    keys that already have one rewritten in place (only the entries that differ), the
    others filled into `new_groups` (in key order), then tbl24, one store per entry
    that changes. Returns the groups nothing points at any more, in /24 order."""
    j = 0
    for r in range(keys.size):
        e = cur24[keys[r]]
        if e & EXT:
            base = _group_base(e, groups)
            for c in range(GROUP_SIZE):
                if t8[base + c] != rows[r, c]:
                    t8[base + c] = rows[r, c]
            d8[base : base + GROUP_SIZE] = drows[r]
            v24[keys[r]] = e
        else:
            g = new_groups[j]
            j += 1
            t8[g * GROUP_SIZE : (g + 1) * GROUP_SIZE] = rows[r]
            d8[g * GROUP_SIZE : (g + 1) * GROUP_SIZE] = drows[r]
            v24[keys[r]] = _ext_entry(g, groups)
    _store_barrier()  # new groups complete before any tbl24 entry points at them
    gone = np.empty(groups, np.int64)
    ngone = 0
    for i in range(TBL24_SIZE):
        old = cur24[i]
        new = v24[i]
        if old != new:
            if old & EXT:  # a group's /24 keeps its group: this one is unlinked
                gone[ngone] = _group_base(old, groups) // GROUP_SIZE
                ngone += 1
            cur24[i] = new
    return gone[:ngone]
