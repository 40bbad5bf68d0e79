"""A forwarding worker's batch as one compiled call: RX ring in, kernel, rings out.

`worker_batch` does for one batch what `Forwarder.process` does around the numpy
stages (forwarder.py), with the same outcome store for store: the batch's journal row
(shm/journal.py) written before anything else, the kernel (pipeline/compiled.py) on
the pool rows in place, the hand-off decided (room on every TX ring and on the slow
ring checked, what does not fit a `ring_full` drop) before the counters are added,
and only then the buffers moved: to their egress port's TX ring, to the slow ring
(with their reason in the pool's `code`), back to their owner (drops). Every shared
structure is published as its Python twin publishes it, with one aligned 8-byte
store after the slots it covers (a ring's tail, a free stack's depth, a journal
state), so that recovery (control/recovery.py) finds after a SIGKILL between any
two of these stores exactly what it finds after one in the numpy worker.

The stores reach memory in program order: x86-64 keeps stores in order (TSO) and
`store_fence` between the steps keeps the compiler from reordering or merging them.

`stop` ends the call early at one of the `STOP_*` points, leaving memory as a kill
there would: the crash tests (tests/test_supervise.py) kill the process then.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.experimental import structref

from engine.counters import MISC_BASE, Drop, Misc
from engine.pipeline.compiled import forward_batch, load_fence, store_fence
from engine.pipeline.verdict import FORWARD, SLOW, drop
from engine.shm.journal import JOURNAL_COUNTED, JOURNAL_COUNTING, JOURNAL_IDLE, JOURNAL_TAKEN

RING_FULL = drop(Drop.ring_full)
BATCHES = MISC_BASE + Misc.batches

# where `stop` ends a batch (0: nowhere); the call then returns STOPPED
STOP_TAKEN = 1  # the journal says TAKEN, the kernel has not run
STOP_COUNTING = 2  # half the counters row added (a torn add)
STOP_COUNTED = 3  # counted, nothing handed on
STOP_ENQUEUED = 4  # the first TX ring published, the others not
STOP_PUSH = 5  # every slot written, the drops' free stack depth not published
STOPPED = -1
RET_OVERFLOW = -2  # a return ring had no room for the drops (cannot happen: see pool.py)


@structref.register
class LaneType(types.StructRef):
    def preprocess_fields(self, fields):  # type: ignore[no-untyped-def]
        return tuple((name, types.unliteral(t)) for name, t in fields)


class Lane(structref.StructRefProxy):
    """One worker's views of the shared memory and its scratch arrays, bound once."""


LANE_FIELDS = (
    "kernel", "data", "length", "port", "pool_code", "worker", "batch",
    "j_state", "j_n", "j_idx", "j_code", "j_before", "counters", "code_to_counters",
    "rx_head", "rx_tail", "rx_slots", "tx_head", "tx_tail", "tx_slots",
    "slow_head", "slow_tail", "slow_slots",
    "own", "owner_start", "owner_end", "ret_head", "ret_tail", "ret_slots",
    "idx", "tx_room", "tx_put", "ret_room", "ret_put", "codes")
structref.define_constructor(Lane, LaneType, LANE_FIELDS)
structref.define_boxing(LaneType, Lane)


@njit(cache=True)
def new_lane(*fields):  # type: ignore[no-untyped-def]
    """A `Lane` (built by a cached function, as `new_kernel`)."""
    return Lane(*fields)


@njit(inline="always")
def ring_room(head: np.ndarray, tail: np.ndarray, slots: np.ndarray) -> int:
    """Ring.free_space: the consumer's head read now (room only grows after this)."""
    return slots.shape[0] - (np.int64(tail[0]) - np.int64(head[0]))


@njit(inline="always")
def owner_of(b: int, start: np.ndarray, end: np.ndarray) -> int:
    for o in range(start.shape[0]):
        if start[o] <= b < end[o]:
            return o
    return -1


@njit(cache=True, nogil=True)
def worker_batch(ln: Lane, rx: int, given: np.ndarray, stop: int) -> int:
    """One batch: from RX ring `rx` (up to `batch` buffers; rx < 0: the buffers
    `given`) to the rings, journaled. Returns how many buffers it took (STOPPED or
    RET_OVERFLOW instead when it ended early)."""
    w = ln.worker
    if rx >= 0:  # Ring.dequeue into our own array
        slots = ln.rx_slots[rx]
        head = np.int64(ln.rx_head[rx][0])
        n = min(ln.batch, np.int64(ln.rx_tail[rx][0]) - head)
        load_fence()  # the slots read after the tail that published them
        if n <= 0:
            return 0
        mask = slots.shape[0] - 1
        for i in range(n):
            ln.idx[i] = slots[(head + i) & mask]
        store_fence()  # the slots read before the head that releases them
        ln.rx_head[rx][0] = head + n
        idx = ln.idx[:n]
    else:
        idx = given
        n = idx.shape[0]
        if n == 0:
            return 0
    # -- the journal first: a kill from here on is recovered from it ----------------------
    j_idx = ln.j_idx
    for i in range(n):
        j_idx[w, i] = idx[i]
    ln.j_n[w] = n
    store_fence()  # the indices before the state that publishes them
    ln.j_state[w] = JOURNAL_TAKEN
    store_fence()
    if stop == STOP_TAKEN:
        return STOPPED

    forward_batch(ln.kernel, ln.data, ln.length, ln.port, idx)  # rows rewritten in place
    k = ln.kernel
    code, egress, hist = k.code, k.egress, k.hist

    # -- the hand-off decided: Forwarder.transmit and plan_slow -----------------------------
    room, put = ln.tx_room, ln.tx_put
    nports = room.shape[0]
    for p in range(nports):
        room[p] = ring_room(ln.tx_head[p], ln.tx_tail[p], ln.tx_slots[p])
        put[p] = 0
    slow_room = ring_room(ln.slow_head, ln.slow_tail, ln.slow_slots)
    nslow = 0
    for i in range(n):
        c = code[i]
        if c == FORWARD:
            p = np.int64(egress[i])
            if put[p] < room[p]:
                put[p] += 1
                continue
        elif c >= SLOW:
            if nslow < slow_room:
                nslow += 1
                continue
        else:
            continue
        code[i] = RING_FULL
        hist[c] -= 1
        hist[RING_FULL] += 1

    # -- the final verdicts and the row before, then the counters -------------------------
    j_code = ln.j_code
    for i in range(n):
        j_code[w, i] = code[i]
    row = ln.counters
    ncols = row.shape[0]
    for j in range(ncols):
        ln.j_before[w, j] = row[j]
    store_fence()
    ln.j_state[w] = JOURNAL_COUNTING
    store_fence()
    codes = ln.codes  # the codes of the batch, once each
    m = 0
    for c in range(hist.shape[0]):
        if hist[c]:
            codes[m] = c
            m += 1
    c2c = ln.code_to_counters
    for j in range(ncols):
        if stop == STOP_COUNTING and j == ncols // 2:
            return STOPPED
        add = np.uint64(0)
        for u in range(m):
            add += c2c[codes[u], j] * np.uint64(hist[codes[u]])
        row[j] += add
    row[BATCHES] += np.uint64(1)
    store_fence()
    ln.j_state[w] = JOURNAL_COUNTED
    store_fence()
    if stop == STOP_COUNTED:
        return STOPPED

    # -- the buffers moved: every slot written, then each structure published in turn ------
    # drops go back to their owner: through its return ring, or, for our own partition
    # (`own`), onto our free stack, which is ret_slots[own] with its depth as ret_tail[own]
    own = ln.own
    ret_room, ret = ln.ret_room, ln.ret_put
    nown = ret.shape[0]
    for o in range(nown):
        ret[o] = 0
        if o != own:
            ret_room[o] = ring_room(ln.ret_head[o], ln.ret_tail[o], ln.ret_slots[o])
    for p in range(nports):
        put[p] = 0
    slow_tail = np.int64(ln.slow_tail[0])
    slow_mask = ln.slow_slots.shape[0] - 1
    nslow = 0
    for i in range(n):
        c = code[i]
        b = np.int64(idx[i])
        if c == FORWARD:
            p = np.int64(egress[i])
            slots = ln.tx_slots[p]
            slots[(np.int64(ln.tx_tail[p][0]) + put[p]) & (slots.shape[0] - 1)] = b
            put[p] += 1
        elif c >= SLOW:
            ln.pool_code[b] = c  # tells the slow path why
            ln.slow_slots[(slow_tail + nslow) & slow_mask] = b
            nslow += 1
        else:
            o = owner_of(b, ln.owner_start, ln.owner_end)
            slots = ln.ret_slots[o]
            if o == own:  # Buffers._push: above the depth
                slots[np.int64(ln.ret_tail[o][0]) + ret[o]] = b
            else:
                if ret[o] >= ret_room[o]:
                    return RET_OVERFLOW
                slots[(np.int64(ln.ret_tail[o][0]) + ret[o]) & (slots.shape[0] - 1)] = b
            ret[o] += 1
    store_fence()
    first = True
    for p in range(nports):  # Ring.enqueue's publishing store, port by port
        if put[p]:
            ln.tx_tail[p][0] = np.int64(ln.tx_tail[p][0]) + put[p]
            store_fence()
            if stop == STOP_ENQUEUED and first:
                return STOPPED
            first = False
    if nslow:
        ln.slow_tail[0] = slow_tail + nslow
        store_fence()
    if stop == STOP_PUSH:
        return STOPPED
    for o in range(nown):  # Buffers.free: owner by owner
        if ret[o]:
            ln.ret_tail[o][0] = np.int64(ln.ret_tail[o][0]) + ret[o]
            store_fence()
    ln.j_state[w] = JOURNAL_IDLE
    return n
