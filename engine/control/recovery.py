"""Supervision: what the control process does when a forwarding worker dies.

A forwarding worker killed by anything (SIGKILL included) is restarted: the control
process stops the world, recovers what the dead worker left half done, and spawns a
new worker on the same rings, the same pool partition, the same counters row and the
same FIB reader slot. A worker that keeps dying (more than `RESTART_LIMIT` restarts
within `RESTART_WINDOW_S`) stops the engine with an error, as does a dead slow path
(its reassembly queues, neighbour timers and ICMP rate limits are its own memory:
nothing to restart from) or a dead DPDK secondary (EAL state); so does a worker
that dies before every agent has made its first pass (a start-up error).

What a SIGKILL can leave half done, and how each is recovered
-------------------------------------------------------------
Every shared structure publishes with one aligned 8-byte store after writing its
slots (x86 TSO keeps stores in order), so a kill leaves each one either before or
after that store, never torn:

- a ring enqueue (ring.py): slots written, `tail` not advanced: the buffers are in no
  ring; dequeue: `head` advanced: the buffers are in the killer's hand;
- a free-stack push (pool.py): slots written, depth not published: not free; an
  allocation: depth published, buffers not yet placed: not free, in no ring;
- the batch being forwarded (workers/forwarder.py): its journal row (shm/journal.py)
  says how far it got. `JOURNAL_TAKEN`: indices recorded, nothing counted, nothing
  handed on. `JOURNAL_COUNTING`: final verdicts recorded, the counters row saved in
  `journal.before`, the row being added to (a kill can tear that vector add).
  `JOURNAL_COUNTED`: counters include the batch, buffers being moved to their rings.

Recovery, with the worker reaped and every other agent paused (`paused`: each acks
the pause epoch between two passes, when it holds no buffer but its own partition's
TX backlog on live ports):

1. Buffers. For the dead worker's own partition and the partitions it can hold
   buffers of (the I/O agent's: the frames it is fed; the slow path's, checked too),
   every buffer that is neither in its owner's free stack, nor in any ring's live
   window (rx, tx, slow, slowtx, return rings), nor held by the control process (its
   live TX backlog) is lost, and is pushed back on its owner's free stack.
2. Counts. A torn add (`JOURNAL_COUNTING`) is undone from `journal.before`. Lost
   buffers of the journal's batch, when the batch was counted (`JOURNAL_COUNTED`):
   a drop keeps its reason (its buffer was being freed); a packet to forward or for
   the slow path never reached its ring: that verdict is taken back and it is counted
   dropped, `worker_killed`. When it was not counted: received and dropped,
   `worker_killed`. Lost buffers of another owner outside the journal are frames the
   worker had dequeued but not journaled yet: also `worker_killed`. Lost buffers of
   its own partition outside the journal are not packets in flight (a push or an
   allocation cut short, a live TX burst or backlog already counted as forwarded, a
   live RX burst not yet counted as received): reclaimed, not counted.
3. The journal row goes back to `JOURNAL_IDLE`; the new worker attaches to the same
   free stack and rings, and drains the return rings as the old one did.

After this the engine's accounting balances exactly as before the kill, and once a
run drains `audit_pool` finds every buffer free.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from engine.counters import Drop
from engine.pipeline.fastpath import CODE_TO_COUNTERS
from engine.pipeline.verdict import FORWARD, NCODES, SLOW, drop
from engine.shm.journal import JOURNAL_COUNTED, JOURNAL_COUNTING, JOURNAL_IDLE, JOURNAL_TAKEN
from engine.shm.memory import AGENT_IO, CTL_PAUSE, FREE_TS, ST_FREE, ST_PAUSED, ST_PID, EngineMemory
from engine.shm.ring import Ring

RESTART_LIMIT = 5  # restarts of one worker ...
RESTART_WINDOW_S = 60.0  # ... within this window; one more stops the engine
PAUSE_TIMEOUT_S = 5.0


class SupervisionError(RuntimeError):
    """A worker cannot be recovered (it keeps dying, or the others do not pause)."""


def ring_window(ring: Ring) -> np.ndarray:
    """The buffer indices a ring holds now (head to tail)."""
    head, tail = int(ring.head[0]), int(ring.tail[0])
    n = tail - head
    if n <= 0:
        return np.zeros(0, np.uint32)
    start = head & ring.mask
    first = min(n, ring.size - start)
    if first == n:
        return ring.slots[start : start + n].copy()
    return np.concatenate((ring.slots[start:], ring.slots[: n - first]))


def free_stack(mem: EngineMemory, owner: int) -> np.ndarray:
    start, end = mem.geometry.partitions[owner]
    return mem.free_stack[start : start + int(mem.state[owner, ST_FREE])].copy()


@dataclass
class PoolAudit:
    """Where every pool buffer is: `free` (stacks and return rings), `queued` (other
    rings), `held` (given by the caller), `lost` per owner (nowhere), and any buffer
    found in two places at once (`duplicates`: never, unless the pool is corrupt)."""

    size: int
    free: int
    queued: int
    held: int
    lost: dict[int, np.ndarray] = field(default_factory=dict)
    duplicates: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))

    @property
    def nlost(self) -> int:
        return sum(len(v) for v in self.lost.values())


def audit_pool(mem: EngineMemory, held: Iterable[np.ndarray] = (),
               owners: Iterable[int] | None = None) -> PoolAudit:
    """Account for every buffer of `owners`' partitions (default: all). Exact only
    while no agent moves buffers (the engine stopped or `paused`)."""
    g = mem.geometry
    free_parts = [free_stack(mem, a) for a, (s, e) in enumerate(g.partitions) if e > s]
    returned = [ring_window(r) for name, r in mem.rings.items() if name.startswith("ret.")]
    queued = [ring_window(r) for name, r in mem.rings.items() if not name.startswith("ret.")]
    held_parts = [np.asarray(h, dtype=np.uint32) for h in held]
    everywhere = np.concatenate(free_parts + returned + queued + held_parts
                                + [np.zeros(0, np.uint32)]).astype(np.int64)
    seen = np.bincount(everywhere, minlength=g.nbufs)
    lost = {}
    for owner in (owners if owners is not None else range(g.nagents)):
        start, end = g.partitions[owner]
        if end > start:
            lost[owner] = (start + np.flatnonzero(seen[start:end] == 0)).astype(np.uint32)
    return PoolAudit(
        size=g.nbufs,
        free=sum(map(len, free_parts)) + sum(map(len, returned)),
        queued=sum(map(len, queued)),
        held=sum(map(len, held_parts)),
        lost=lost,
        duplicates=np.flatnonzero(seen > 1).astype(np.uint32),
    )


class paused:
    """Context manager: every agent in `agents` (agent → is it alive and in its loop?)
    stops between two passes and acknowledges; the caller then moves buffers alone.
    `service` runs while waiting: the caller's own I/O (draining the TX rings), since
    an agent may be in a pass that waits for ring room only the caller makes (the
    slow path on pcap ports waits rather than drop)."""

    epoch = 0

    def __init__(self, mem: EngineMemory, agents: dict[int, Callable[[], bool]],
                 timeout: float = PAUSE_TIMEOUT_S, service: Callable[[], object] | None = None):
        self.mem = mem
        self.agents = agents
        self.timeout = timeout
        self.service = service

    def __enter__(self) -> paused:
        paused.epoch += 1
        epoch = paused.epoch
        self.mem.ctl[CTL_PAUSE] = epoch
        if self.mem.doorbells is not None:  # an idle agent blocks: wake it to see this
            self.mem.doorbells.ring_all()
        deadline = time.monotonic() + self.timeout
        while True:
            waiting = [a for a, running in self.agents.items()
                       if int(self.mem.state[a, ST_PAUSED]) != epoch and running()]
            if not waiting:
                return self
            if time.monotonic() > deadline:
                self.mem.ctl[CTL_PAUSE] = 0
                raise SupervisionError(f"agents {waiting} did not pause within "
                                       f"{self.timeout:g} s")
            if self.service is not None:
                self.service()
            time.sleep(0.0001)

    def __exit__(self, *exc: object) -> None:
        self.mem.ctl[CTL_PAUSE] = 0


@dataclass
class Recovery:
    """What recovering a dead worker found."""

    worker: int
    journal_state: int
    reclaimed: int  # buffers pushed back on their owners' stacks
    killed: int  # packets counted as dropped, `worker_killed`
    uncounted: int  # reclaimed buffers of its own partition that were no packet in flight

    def describe(self) -> str:
        return (f"{self.reclaimed} buffers reclaimed, {self.killed} packets dropped "
                f"(worker_killed)")


def recover_worker(mem: EngineMemory, worker: int,
                   held: Iterable[np.ndarray] = ()) -> Recovery:
    """Reclaim a dead worker's buffers and finish its batch's accounting (module doc).
    Call with the worker reaped and every other agent `paused`; `held`: buffers the
    calling process holds outside the pool's structures (its live TX backlog)."""
    g = mem.geometry
    agent = g.worker_agent(worker)
    j = mem.journal
    found = state = int(j.state[worker])
    n = int(j.n[worker]) if state != JOURNAL_IDLE else 0
    jidx = j.idx[worker, :n].copy()
    jcode = j.code[worker, :n].copy()
    row = mem.counters[agent]
    if state == JOURNAL_COUNTING:  # the add may be torn: undo it, count below
        row[:] = j.before[worker]
        state = JOURNAL_TAKEN
    owners = [a for a in (agent, AGENT_IO, g.slowpath_agent) if g.partitions[a][1] >
              g.partitions[a][0]]
    audit = audit_pool(mem, held, owners)
    if len(audit.duplicates):
        raise SupervisionError(f"pool corrupt: buffers {audit.duplicates[:8].tolist()} "
                               "found in two places")
    lost = np.concatenate([audit.lost[o] for o in owners] + [np.zeros(0, np.uint32)])
    in_batch = np.isin(lost, jidx) if n else np.zeros(len(lost), bool)
    start, end = g.partitions[agent]
    own = (lost >= start) & (lost < end)
    killed = int(np.count_nonzero(~in_batch & ~own))  # dequeued, not journaled yet
    if state == JOURNAL_COUNTED:
        # counted under their verdict. A drop stays one (its buffer was being freed, or
        # about to be: the verdict holds); a packet to forward or for the slow path
        # never reached its ring: its verdict is taken back, it is `worker_killed`
        order = np.argsort(jidx, kind="stable")
        codes = jcode[order[np.searchsorted(jidx[order], lost[in_batch])]]
        moved = (codes == FORWARD) | (codes >= SLOW)
        row -= (np.bincount(codes[moved], minlength=NCODES).astype(np.uint64)
                @ CODE_TO_COUNTERS)
        killed += int(np.count_nonzero(moved))
    else:  # nothing of the batch was counted (JOURNAL_TAKEN) or it was undone
        killed += int(np.count_nonzero(in_batch))
    if killed:
        row += CODE_TO_COUNTERS[drop(Drop.worker_killed)] * np.uint64(killed)
    for owner in owners:
        back = audit.lost[owner]
        if len(back):
            o_start, _ = g.partitions[owner]
            depth = int(mem.state[owner, ST_FREE])
            mem.free_stack[o_start + depth : o_start + depth + len(back)] = back
            mem.ts[back] = FREE_TS
            mem.state[owner, ST_FREE] = depth + len(back)
    j.state[worker] = JOURNAL_IDLE
    j.n[worker] = 0
    return Recovery(worker, found, len(lost), killed, int(np.count_nonzero(~in_batch & own)))


class RestartPolicy:
    """Restart a dying worker, but not forever: `limit` restarts of one worker within
    `window_s` seconds are allowed, the next death is an error."""

    def __init__(self, limit: int = RESTART_LIMIT, window_s: float = RESTART_WINDOW_S):
        self.limit = limit
        self.window_s = window_s
        self.deaths: dict[int, deque[float]] = {}

    def allow(self, worker: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        d = self.deaths.setdefault(worker, deque())
        d.append(now)
        while d and d[0] < now - self.window_s:
            d.popleft()
        return len(d) <= self.limit


def started(mem: EngineMemory, agent: int, pid: int | None) -> bool:
    """Whether a (re)started agent process has entered its polling loop."""
    return pid is not None and int(mem.state[agent, ST_PID]) == pid
