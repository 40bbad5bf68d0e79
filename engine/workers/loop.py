"""The polling loop every worker process runs around its `poll`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from engine.shm.memory import CTL_STOP, ST_IDLE, ST_LOOPS, ST_PID, EngineMemory
from engine.shm.ring import Ring

MAX_IDLE_SLEEP = 0.001


def poll_loop(mem: EngineMemory, agent: int, poll: Callable[[], int],
              inputs: list[Ring]) -> None:
    """Call `poll` until the control process asks to stop and `inputs` are drained.

    Busy while there is work; when a pass finds nothing, sleep with exponential
    back-off up to 1 ms, since replays and quiet links share the machine's cores.
    """
    mem.state[agent, ST_PID] = os.getpid()
    idle_sleep = 0.0
    while True:
        handled = poll()
        mem.state[agent, ST_LOOPS] += 1
        if handled:
            idle_sleep = 0.0
            mem.state[agent, ST_IDLE] = 0
            continue
        mem.state[agent, ST_IDLE] = 1
        if mem.ctl[CTL_STOP] and all(r.count() == 0 for r in inputs):
            return
        idle_sleep = min(MAX_IDLE_SLEEP, idle_sleep * 2 or 0.00005)
        time.sleep(idle_sleep)


def pin(cpu: int | None) -> None:
    """Pin this process to one CPU where the machine has it (RSS-style workers)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
