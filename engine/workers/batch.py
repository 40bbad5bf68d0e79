"""A forwarding worker's batch as one compiled call: RX ring in, kernel, rings out.

`worker_batch` does for one batch what `Forwarder.process` does around the numpy
stages (forwarder.py), with the same outcome: the batch's journal row (shm/journal.py)
written before anything else, the kernel (pipeline/compiled.py) on the pool rows in
place, the hand-off decided (room on every TX ring and on the slow ring checked, what
does not fit a `ring_full` drop) before the counters are added, and only then the
buffers moved: to their egress port's TX ring, to the slow ring (with their reason in
the pool's `code`), back to their owner (drops). Every shared structure is published
as its Python twin publishes it, with one aligned 8-byte store after the slots it
covers (a ring's tail, a free stack's depth, a journal state), and these publishing
stores come in the numpy worker's order (the journal's states; the TX rings port by
port, the slow ring, the owners of the drops). Only unpublished memory is written in
another order (every ring's slots before the first tail; the pool's `code` of the
slow path's buffers, still ours, before the TX tails), so that recovery
(control/recovery.py) finds after a SIGKILL between any two publishing stores
exactly what it finds after one in the numpy worker.

The stores reach memory in program order: x86-64 keeps stores in order (TSO) and
`store_fence` between the steps keeps the compiler from reordering or merging them.

`stop` ends the call early at one of the `STOP_*` points, leaving memory as a kill
there would: the crash tests (tests/test_supervise.py) kill the process then.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.experimental import structref

from engine.counters import MISC_BASE, PORT_DROP_BASE, Drop, Misc
from engine.pipeline.compiled import forward_batch, load_fence, store_fence
from engine.pipeline.verdict import FORWARD, SLOW, drop
from engine.shm.journal import JOURNAL_COUNTED, JOURNAL_COUNTING, JOURNAL_IDLE, JOURNAL_TAKEN
from engine.shm.memory import CTL_NEIGH_GEN, CTL_NH_GEN, FREE_TS
from engine.shm.trace_capture import OBS_ACTIVE

RING_FULL = drop(Drop.ring_full)
NDROP = len(Drop)  # columns per port in the counters row's per-port drop section
BATCHES = MISC_BASE + Misc.batches

# where `stop` ends a batch (0: nowhere); the call then returns STOPPED
STOP_TAKEN = 1  # the journal says TAKEN, the kernel has not run
STOP_COUNTING = 2  # one counter of the batch added, the others not (a torn add)
STOP_COUNTED = 3  # counted, nothing handed on
STOP_ENQUEUED = 4  # the first TX ring published, the others not
STOP_PUSH = 5  # every slot written, the drops' free stack depth not published
STOP_DEQUEUED = 6  # taken from the RX ring, not journaled yet
STOPPED = -1
RET_OVERFLOW = -2  # a return ring had no room for the drops (cannot happen: see pool.py)
MOVED = -3  # worker_pass: a generation word moved, the caches are to be flushed first
OBSERVED = -4  # worker_pass: a trace or capture is armed; `resume` says where it stopped
# full batches worker_pass takes from one RX ring in a row; bounded so that a pass
# still ends soon (the generation words are checked, and the FIB reader's quiescent
# state stored, once a pass)
PASS_BATCHES = 8


@structref.register
class LaneType(types.StructRef):
    def preprocess_fields(self, fields):  # type: ignore[no-untyped-def]
        return tuple((name, types.unliteral(t)) for name, t in fields)


class Lane(structref.StructRefProxy):
    """One worker's views of the shared memory and its scratch arrays, bound once."""


LANE_FIELDS = (
    "kernel", "data", "length", "port", "pool_code", "pool_ts", "worker", "batch",
    "j_state", "j_n", "j_idx", "j_code", "j_before", "counters", "count_col", "count_val",
    "rx_head", "rx_tail", "rx_slots", "tx_head", "tx_tail", "tx_slots",
    "slow_head", "slow_tail", "slow_slots",
    "own", "owner_start", "owner_end", "ret_head", "ret_tail", "ret_slots",
    "idx", "tx_room", "tx_put", "ret_room", "ret_put", "obs", "resume", "ctl", "gens",
    "quiescent", "token")
structref.define_constructor(Lane, LaneType, LANE_FIELDS)
structref.define_boxing(LaneType, Lane)


def sparse_counts(code_to_counters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each code's nonzero columns of `code_to_counters` and their values, rows padded
    with column -1: a batch's counters are a few adds, not a pass over the row."""
    cols = [np.flatnonzero(r) for r in code_to_counters]
    width = max(map(len, cols))
    col = np.full((len(cols), width), -1, dtype=np.int64)
    val = np.zeros((len(cols), width), dtype=np.uint64)
    for c, nz in enumerate(cols):
        col[c, : len(nz)] = nz
        val[c, : len(nz)] = code_to_counters[c, nz]
    return col, val


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
        idx = ln.idx[:n]
        for i in range(n):
            idx[i] = slots[(head + i) & mask]
        store_fence()  # the slots read before the head that releases them
        ln.rx_head[rx][0] = head + n
        store_fence()
        if stop == STOP_DEQUEUED:
            return STOPPED
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
    nslow = ndrop = 0
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
            ndrop += 1
            continue
        ndrop += 1
        code[i] = RING_FULL
        hist[c] -= 1
        hist[RING_FULL] += 1

    # -- the final verdicts and the row before, then the counters -------------------------
    j_code = ln.j_code
    for i in range(n):
        j_code[w, i] = code[i]
    row, j_before = ln.counters, ln.j_before
    ncols = row.shape[0]
    for j in range(ncols):
        j_before[w, j] = row[j]
    store_fence()
    ln.j_state[w] = JOURNAL_COUNTING
    store_fence()
    # CODE_TO_COUNTERS @ hist, over the few columns each code counts in (`sparse_counts`)
    col, val = ln.count_col, ln.count_val
    first = True
    for c in range(hist.shape[0]):
        h = np.uint64(hist[c])
        if h:
            for t in range(col.shape[1]):
                j = col[c, t]
                if j < 0:
                    break
                row[j] += val[c, t] * h
                if stop == STOP_COUNTING and first:
                    return STOPPED
                first = False
    if ndrop:  # the drops again, by ingress port (`count` with in_port does the same)
        pool_port = ln.port
        for i in range(n):
            c = code[i]
            if c != FORWARD and c < SLOW:
                row[PORT_DROP_BASE + np.int64(pool_port[idx[i]]) * NDROP + c] += np.uint64(1)
    row[BATCHES] += np.uint64(1)
    store_fence()
    ln.j_state[w] = JOURNAL_COUNTED
    store_fence()
    if stop == STOP_COUNTED:
        return STOPPED

    # -- the buffers moved: every slot written, then each structure published in turn ------
    # (arrays taken out of the lane once: each access to a field costs a reference count)
    tx_tail, tx_slots = ln.tx_tail, ln.tx_slots
    for p in range(nports):  # port by port: a batch goes to few of them
        if put[p]:
            slots, tail, m = tx_slots[p], np.int64(tx_tail[p][0]), 0
            mask = slots.shape[0] - 1
            for i in range(n):
                if code[i] == FORWARD and egress[i] == p:
                    slots[(tail + m) & mask] = idx[i]
                    m += 1
    # drops go back to their owner: through its return ring, or, for our own partition
    # (`own`), onto our free stack, which is ret_slots[own] with its depth as ret_tail[own]
    ret_head, ret_tail, ret_slots = ln.ret_head, ln.ret_tail, ln.ret_slots
    ret_room, ret = ln.ret_room, ln.ret_put
    own, nown = ln.own, ln.ret_put.shape[0]
    for o in range(nown):
        ret[o] = 0
    slow_slots, slow_tail = ln.slow_slots, np.int64(ln.slow_tail[0])
    if nslow + ndrop:
        for o in range(nown):
            if o != own:
                ret_room[o] = ring_room(ret_head[o], ret_tail[o], ret_slots[o])
        pool_code, owner_start, owner_end = ln.pool_code, ln.owner_start, ln.owner_end
        pool_ts = ln.pool_ts
        slow_mask = slow_slots.shape[0] - 1
        nslow = 0
        for i in range(n):
            c = code[i]
            if c == FORWARD:
                continue
            b = np.int64(idx[i])
            if c >= SLOW:
                pool_code[b] = c  # tells the slow path why
                slow_slots[(slow_tail + nslow) & slow_mask] = b
                nslow += 1
                continue
            pool_ts[b] = FREE_TS  # Buffers.free: nothing in flight here any more
            o = owner_of(b, owner_start, owner_end)
            slots = ret_slots[o]
            if o == own:  # Buffers._push: above the depth
                slots[np.int64(ret_tail[o][0]) + ret[o]] = b
            else:
                if ret[o] >= ret_room[o]:
                    return RET_OVERFLOW
                slots[(np.int64(ret_tail[o][0]) + ret[o]) & (slots.shape[0] - 1)] = b
            ret[o] += 1
    store_fence()
    first = True
    for p in range(nports):  # Ring.enqueue's publishing store, port by port
        if put[p]:
            tx_tail[p][0] = np.int64(tx_tail[p][0]) + put[p]
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
            ret_tail[o][0] = np.int64(ret_tail[o][0]) + ret[o]
            store_fence()
    ln.j_state[w] = JOURNAL_IDLE
    return n


@njit(cache=True, nogil=True)
def worker_pass(ln: Lane, stop: int) -> int:
    """One pass of a worker without live ports: `worker_batch` from each RX ring in
    turn (up to PASS_BATCHES full batches from each), in one call. First the
    generation words (`Forwarder.generations`): when one moved since `gens`, MOVED
    before anything is done. Before each batch the
    observers' word, as the numpy worker loads it: when a trace or capture is armed,
    OBSERVED, with the ring to go on from and the buffers taken so far in `resume`
    (their taps read the numpy stages' rows). After the last batch, the FIB reader's
    quiescent store (`FibReader.quiescent`). Returns how many buffers it took (or a
    negative code)."""
    if ln.ctl[CTL_NH_GEN] != ln.gens[0] or ln.ctl[CTL_NEIGH_GEN] != ln.gens[1]:
        return MOVED
    handled = 0
    for rx in range(len(ln.rx_slots)):
        # a full batch says more may wait: take up to PASS_BATCHES batches from the ring
        # before the next (each batch journaled and counted on its own, as one per
        # pass would be), so a pass's Python costs are shared by that many batches
        for _ in range(PASS_BATCHES):
            if ln.obs[OBS_ACTIVE]:
                ln.resume[0] = rx
                ln.resume[1] = handled
                return OBSERVED
            got = worker_batch(ln, rx, ln.idx[:0], stop)
            if got < 0:
                return got
            handled += got
            if got < ln.batch:
                break
    store_fence()  # no table reference survives this point: tell the writer so
    ln.quiescent[0] = ln.token[0]
    return handled
