"""The FIB's compiled paths (numba): batch lookup; route changes (one, or a batch) with
the writer's route set, which lives here as a hash table in arrays; bulk build and
its publication; over the arrays `engine.shm.fib` maps.

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


@njit(**_OPTS)
def _update(t24, d24, t8, d8, groups, prefix, plen, nh, new_depth, add, new_group):
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


# ---------------------------------------------------------------------- the route set
#
# The writer's routes, {prefix/plen: nh}, as an open-addressing hash table the compiled
# code owns: `routes` is int64[capacity, 2], row = (key, nh), key = prefix << 6 | plen
# (as FibWriter's), EMPTY marking a free row; linear probing from the key's home row,
# at most half full (a miss, which the covering-route search is mostly made of, then
# reads ~2.5 rows, usually one cache line).  `counts` is int64[34]: routes per length
# 0..32, then their total; the covering-route search skips lengths nobody uses.

EMPTY = -1  # key 0 is 0.0.0.0/0, a real route
TOTAL = 33  # counts[TOTAL]: number of routes
_FIB_HASH = np.uint64(0x9E37_79B9_7F4A_7C15)  # 2^64 / golden ratio (Fibonacci hashing)

# what `change` returns (FibWriter.add/delete/apply act on it)
DONE = 0
DONE_NEW_GROUP = 1  # done, and new_group is now in use
FREED = 2  # FREED + g: done, and group g was emptied and unlinked (to be released)
NO_ROUTE = -1  # delete of a route the table does not have
NEED_GROUP = -2  # a /25../32 needs a tbl8 group and new_group was -1; nothing changed
ROUTES_FULL = -3  # the route set must grow first (FibWriter grows it); nothing changed
INVALID = -4  # prefix, length or next hop out of range; nothing changed
MAX_NH = (1 << 24) - 1

_routes_t = types.Array(types.int64, 2, "C")
_u64 = types.Array(types.uint64, 1, "C")


@njit(**_OPTS)
def _home(key, nrows):
    # the product's high half mixes every bit of the key; nrows is a power of two
    return np.int64((np.uint64(key) * _FIB_HASH) >> np.uint64(32)) & (nrows - 1)


@njit(**_OPTS)
def _find(routes, key):
    """Row of `key`, or -1."""
    last = routes.shape[0] - 1
    i = _home(key, routes.shape[0])
    while True:
        k = routes[i, 0]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & last


@njit(**_OPTS)
def _insert(routes, key, nh):
    """Put key -> nh in a row (the key is not in the table, which has room)."""
    last = routes.shape[0] - 1
    i = _home(key, routes.shape[0])
    while routes[i, 0] != EMPTY:
        i = (i + 1) & last
    routes[i, 0] = key
    routes[i, 1] = nh


@njit(**_OPTS)
def _remove(routes, row):
    """Empty `row`, moving later rows of the same probe run back into the gap so that
    every key stays reachable from its home row (no tombstones: deletes do not make
    later misses longer)."""
    last = routes.shape[0] - 1
    gap = row
    j = row
    while True:
        j = (j + 1) & last
        k = routes[j, 0]
        if k == EMPTY:
            break
        home = _home(k, routes.shape[0])
        # the key at j may move to the gap unless its home lies cyclically in (gap, j]
        if (gap < home <= j) if gap <= j else (gap < home or home <= j):
            continue
        routes[gap, 0] = k
        routes[gap, 1] = routes[j, 1]
        gap = j
    routes[gap, 0] = EMPTY


@njit(**_OPTS)
def _covering(routes, counts, prefix, plen):
    """(nh, length) of the longest route shorter than plen that covers prefix, or
    (0, 0): what a deleted route's entries fall back to."""
    for length in range(plen - 1, -1, -1):
        if counts[length]:
            net = prefix & ((0xFFFF_FFFF << (32 - length)) & 0xFFFF_FFFF)
            row = _find(routes, net << 6 | length)
            if row >= 0:
                return routes[row, 1], length
    return 0, 0


@njit(**_OPTS)
def _change(t24, d24, t8, d8, groups, routes, counts, prefix, plen, nh, add, new_group):
    """Add (replace) or delete one route: the route set and the tables, in one call.
    Returns DONE, DONE_NEW_GROUP, FREED + g, or an error code (nothing changed)."""
    if not (0 <= plen <= 32 and 0 <= prefix <= 0xFFFF_FFFF):
        return INVALID
    if prefix & (0xFFFF_FFFF >> plen) or (add and not 1 <= nh <= MAX_NH):
        return INVALID
    key = prefix << 6 | plen
    row = _find(routes, key)
    if add:
        if row < 0 and 2 * (counts[TOTAL] + 1) > routes.shape[0]:
            return ROUTES_FULL
        takes_group = plen > 24 and not t24[prefix >> 8] & EXT
        if takes_group and new_group < 0:
            return NEED_GROUP
        _update(t24, d24, t8, d8, groups, prefix, plen, nh, plen, True, new_group)
        if row >= 0:
            routes[row, 1] = nh
        else:
            _insert(routes, key, nh)
            counts[plen] += 1
            counts[TOTAL] += 1
        return DONE_NEW_GROUP if takes_group else DONE
    if row < 0:
        return NO_ROUTE
    sub_nh, sub_len = _covering(routes, counts, prefix, plen)
    freed = _update(t24, d24, t8, d8, groups, prefix, plen, sub_nh, sub_len, False, -1)
    _remove(routes, row)
    counts[plen] -= 1
    counts[TOTAL] -= 1
    return DONE if freed < 0 else FREED + freed


@njit(
    _i64_t(_u32, _u8, _u32, _u8, _i64_t, _routes_t, _i64, _u64,
           _i64_t, _i64_t, _i64_t, types.boolean, _i64_t),
    **_OPTS,
)  # fmt: skip
def change(t24, d24, t8, d8, groups, routes, counts, gen, prefix, plen, nh, add, new_group):
    """FibWriter.add / delete: `_change`, then the generation bumped if it was done."""
    status = _change(t24, d24, t8, d8, groups, routes, counts, prefix, plen, nh, add, new_group)
    if status >= 0:
        _store_barrier()  # a reader that sees the new generation sees the new entries
        gen[0] += 1
    return status


@njit(
    types.UniTuple(_i64_t, 4)(_u32, _u8, _u32, _u8, _i64_t, _routes_t, _i64, _u64,
                              _u32, _u8, _u32, _i64, _i64),
    **_OPTS,
)  # fmt: skip
def apply(t24, d24, t8, d8, groups, routes, counts, gen, prefixes, plens, nhs, spare, freed):
    """FibWriter.apply: the changes in order, nh 0 deleting, as `change` one by one
    (the generation bumped after each), until the first that fails. A /25../32 that
    needs a group takes the next of `spare`; groups emptied go to `freed` (none is
    reused within the call: readers may still be in it). Returns (changes done,
    status of the one that stopped the run or DONE, spares used, groups freed)."""
    used = 0
    nfreed = 0
    for i in range(prefixes.size):
        nh = np.int64(nhs[i])
        status = _change(t24, d24, t8, d8, groups, routes, counts, np.int64(prefixes[i]),
                         np.int64(plens[i]), nh, nh != 0, spare[used] if used < spare.size else -1)
        if status < 0:
            return i, status, used, nfreed
        if status == DONE_NEW_GROUP:
            used += 1
        elif status >= FREED:
            freed[nfreed] = status - FREED
            nfreed += 1
        _store_barrier()
        gen[0] += 1
    return prefixes.size, DONE, used, nfreed


@njit(types.Tuple((_routes_t, _i64))(_routes_t, _u32, _u8, _u32, _i64_t), **_OPTS)
def routes_with(routes, prefixes, plens, nhs, nrows):
    """A new route set of `nrows` rows (a power of two, at least twice the routes):
    the routes of `routes`, then (prefixes, plens, nhs) added or replacing. For
    growing the set (no new routes) and for bulk_load; `routes` is left as it is."""
    out = np.full((nrows, 2), EMPTY, np.int64)
    counts = np.zeros(TOTAL + 1, np.int64)
    for r in range(routes.shape[0]):
        key = routes[r, 0]
        if key != EMPTY:
            _insert(out, key, routes[r, 1])
            counts[key & 63] += 1
    for i in range(prefixes.size):
        key = np.int64(prefixes[i]) << 6 | plens[i]
        row = _find(out, key)
        if row >= 0:
            out[row, 1] = nhs[i]
        else:
            _insert(out, key, nhs[i])
            counts[plens[i]] += 1
    counts[TOTAL] = counts[:TOTAL].sum()
    return out, counts


@njit(types.Tuple((_u32, _u8, _u32))(_routes_t), **_OPTS)
def route_items(routes):
    """(prefixes, lengths, next hops) of every route, in row order."""
    n = 0
    for r in range(routes.shape[0]):
        n += routes[r, 0] != EMPTY
    p = np.empty(n, np.uint32)
    plen = np.empty(n, np.uint8)
    nh = np.empty(n, np.uint32)
    j = 0
    for r in range(routes.shape[0]):
        key = routes[r, 0]
        if key != EMPTY:
            p[j] = key >> 6
            plen[j] = key & 63
            nh[j] = routes[r, 1]
            j += 1
    return p, plen, nh


@njit(_i64_t(_routes_t, _i64_t), **_OPTS)
def route_get(routes, key):
    """Next hop of the route `key` (prefix << 6 | plen), or -1."""
    row = _find(routes, key)
    return routes[row, 1] if row >= 0 else -1


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
