"""Doorbells: how an idle agent blocks without missing work (adaptive polling).

An agent polls while there is work, as DPDK's lcores and VPP's polling nodes do. When a
live engine goes quiet it should cost nothing, as VPP's interrupt/adaptive mode and
DPDK's power management (rte_power_pmd_mgmt, l3fwd-power) make it: after a few
milliseconds of empty passes the agent blocks until an event — a frame on one of its
AF_PACKET sockets (the kernel wakes poll()), or its doorbell.

A doorbell is one eventfd per agent, made by the control process and inherited by
every agent it starts (passed to the spawned processes as DupFd). Rings between
processes have no kernel object to wait on, so their producer rings the consumer's
doorbell — but only when the consumer said it is going to sleep, so that a busy
path makes no system call (the ST_SLEEPING word of the consumer's state row):

    consumer                              producer
    ST_SLEEPING = 1                       enqueue (ring tail moves)
    full fence                            full fence
    rings still empty? then block         ST_SLEEPING set? clear it, write the eventfd
    ST_SLEEPING = 0, read the eventfd

Each side stores, fences, then loads what the other stores, so at least one of them
sees the other's store (the futex/eventcount pattern): either the consumer finds the
work before it blocks, or the producer finds the flag and wakes it. The control
process also rings every doorbell when it asks the agents to stop or pause, and its
own doorbell is rung by its control-socket thread and its signal handlers. Every
block still has a timeout (DEEP_SLEEP_S, or the slow path's next timer), which also
bounds how late a dead process is noticed.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Sequence
from multiprocessing import reduction
from typing import Any

from engine.shm.memory import ST_SLEEPING, EngineMemory

# a lock-prefixed instruction (the acquire/release of a Python lock: pthread mutex ops)
# orders every earlier store before every later load on x86, as an mfence would
_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier: this thread's stores before it are visible to other CPUs
    before its loads after it (needed between 'I sleep'/'I enqueued' and the check of
    the other side's word; x86 may otherwise let a load pass an earlier store)."""
    _fence_lock.acquire()
    _fence_lock.release()


class Doorbells:
    """One eventfd per agent (AGENT_IO, the workers, the slow path)."""

    def __init__(self, nagents: int, fds: Sequence[int] | None = None) -> None:
        self.fds = list(fds) if fds is not None else [
            os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(nagents)]

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled into a spawned agent's spec: each fd is duplicated into the child
        return (_rebuild, ([reduction.DupFd(fd) for fd in self.fds],))

    def fileno(self, agent: int) -> int:
        return self.fds[agent]

    def ring(self, agent: int) -> None:
        """Wake `agent` (a no-op if its eventfd counter is saturated, or closed)."""
        try:
            os.eventfd_write(self.fds[agent], 1)
        except OSError:
            pass

    def ring_all(self) -> None:
        """Stop or pause: every agent looks at the control words now."""
        for agent in range(len(self.fds)):
            self.ring(agent)

    def clear(self, agent: int) -> None:
        try:
            os.eventfd_read(self.fds[agent])
        except OSError:  # nothing was rung
            pass

    def wait(self, agent: int, timeout_s: float) -> None:
        """Block until `agent`'s doorbell rings or `timeout_s` passes."""
        p = select.poll()
        p.register(self.fds[agent], select.POLLIN)
        p.poll(max(0, int(timeout_s * 1000)))

    def wake_if_sleeping(self, mem: EngineMemory, agent: int,
                         has_work: Callable[[], bool]) -> bool:
        """The producer's side: after enqueueing for `agent`, ring it if it announced
        it sleeps and there is work for it. Returns whether it rang."""
        full_fence()
        if mem.state[agent, ST_SLEEPING] and has_work():
            mem.state[agent, ST_SLEEPING] = 0
            self.ring(agent)
            return True
        return False

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


def _rebuild(dups: list[Any]) -> Doorbells:
    return Doorbells(len(dups), [d.detach() for d in dups])
