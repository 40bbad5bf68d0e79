"""The polling loop every worker process runs around its `poll`."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from engine.shm.memory import (
    AGENT_IO,
    CTL_PAUSE,
    CTL_STOP,
    ST_IDLE,
    ST_LOOPS,
    ST_PAUSED,
    ST_PID,
    ST_SLEEPING,
    EngineMemory,
)
from engine.workers.doorbell import Doorbells, full_fence

# `ps aux` titles of the processes whose names are not a worker's
TITLES = {"fwd-slowpath": "fwd: slow path"}
MAX_IDLE_SLEEP = 0.001
# empty passes made without sleeping first: the next batch of a busy port is tens of
# µs away (256 frames at 5 Mpps: 51 µs), and a sleep costs more than that to come
# back from (DPDK's power management also polls a while before it sleeps)
SPIN_S = 0.0001
PAUSE_SLEEP = 0.0002
# adaptive polling (workers/doorbell.py): after this long without work an agent that
# can be woken blocks, for at most DEEP_SLEEP_S (the bound on noticing a dead parent)
DEEP_AFTER_S = 0.005
DEEP_SLEEP_S = 0.2
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
TASK_COMM_LEN = 16  # the kernel keeps 15 characters and a NUL


class Pending(Protocol):
    """What an agent takes work from: a ring, or what it holds between passes."""

    def count(self) -> int: ...


def poll_loop(mem: EngineMemory, agent: int, poll: Callable[[], int],
              inputs: Sequence[Pending], wait: Callable[[float], None] | None = None,
              settle: Callable[[], None] | None = None, *,
              block: Callable[[float], None] | None = None,
              block_for: Callable[[], float] | None = None,
              after_pass: Callable[[], object] | None = None) -> None:
    """Call `poll` until the control process asks to stop and `inputs` are drained.

    Busy while there is work; when a pass finds nothing, sleep with exponential
    back-off up to 1 ms, since replays and quiet links share the machine's cores.
    `wait(timeout_s)`, when given, is that sleep (live ports: until a frame arrives).
    `settle()`, when given, runs before a pause is acknowledged: what the agent holds
    between passes (the slow path's packets waiting for their turn) is dealt with.

    Adaptive polling: with `block` (a wait that also returns when this agent's
    doorbell rings: engine/workers/doorbell.py), after DEEP_AFTER_S of empty passes
    the agent announces it sleeps (ST_SLEEPING), looks at its inputs once more, and
    blocks for up to DEEP_SLEEP_S or `block_for()` seconds (the slow path: until its
    next timer), as VPP's adaptive mode switches a quiet input to interrupts.
    `after_pass()` runs after every pass: the producer's side of the doorbells.
    """
    mem.state[agent, ST_PID] = os.getpid()
    # the control process writes its pid before it starts anyone (0: a test drives us)
    parent = int(mem.state[AGENT_IO, ST_PID])
    die_with_parent()  # from now on its death is a SIGTERM; before, getppid() tells
    if parent:
        name = multiprocessing.current_process().name
        name_process(name)
        set_title(TITLES.get(name, name.replace("fwd-worker-", "fwd: worker ")))
    idle_sleep = 0.0
    idle_since = 0.0
    bells = mem.doorbells if block is not None else None
    while True:
        pause = int(mem.ctl[CTL_PAUSE])
        if pause and settle is not None and mem.state[agent, ST_PAUSED] != pause:
            settle()
        if pause:
            # the control process is recovering a dead worker's buffers (control/recovery.py):
            # between two passes we hold none of its buffers; say so and wait
            mem.state[agent, ST_PAUSED] = pause
            if parent and os.getppid() != parent:
                return
            time.sleep(PAUSE_SLEEP)
            continue
        handled = poll()
        mem.state[agent, ST_LOOPS] += 1
        if after_pass is not None:
            after_pass()
        if handled:
            idle_sleep = 0.0
            idle_since = 0.0
            mem.state[agent, ST_IDLE] = 0
            continue
        mem.state[agent, ST_IDLE] = 1
        if mem.ctl[CTL_STOP] and all(r.count() == 0 for r in inputs):
            return
        if parent and os.getppid() != parent:  # the control process is gone (SIGKILL)
            return
        now = time.monotonic()
        if not idle_since:
            idle_since = now
        if now - idle_since < SPIN_S:
            continue
        if bells is not None and block is not None:
            if now - idle_since >= DEEP_AFTER_S:
                timeout = DEEP_SLEEP_S if block_for is None else min(DEEP_SLEEP_S, block_for())
                if timeout > MAX_IDLE_SLEEP:  # else a timer is (nearly) due: back off
                    sleep_deep(mem, agent, bells, inputs, block, timeout)
                    continue
        idle_sleep = min(MAX_IDLE_SLEEP, idle_sleep * 2 or 0.00005)
        if wait is None:
            time.sleep(idle_sleep)
        else:
            wait(idle_sleep)


def sleep_deep(mem: EngineMemory, agent: int, bells: Doorbells, inputs: Sequence[Pending],
               block: Callable[[float], None], timeout: float) -> None:
    """Announce the sleep, look once more, block (the consumer's side of the doorbell
    protocol in workers/doorbell.py)."""
    mem.state[agent, ST_SLEEPING] = 1
    full_fence()
    if not (mem.ctl[CTL_STOP] or mem.ctl[CTL_PAUSE] or any(r.count() for r in inputs)):
        block(timeout)
    mem.state[agent, ST_SLEEPING] = 0
    bells.clear(agent)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def name_process(name: str) -> None:
    """The name `ps -e`, top and pgrep show (PR_SET_NAME, the task's comm): a worker
    is `fwd-worker-0`, not one more `python`."""
    try:
        _libc().prctl(PR_SET_NAME, name.encode()[: TASK_COMM_LEN - 1], 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the name stays
        pass


def set_title(title: str) -> None:
    """The command line `ps aux`, `ps -f` and htop show (/proc/PID/cmdline), as
    setproctitle does on Linux: the title is written over the process's own argv
    strings, between the kernel's arg_start and arg_end (/proc/self/stat fields 48 and
    49), padded with NULs. Python copied argv at start-up, so nothing reads that memory
    again; a title longer than the original command line is cut to its length."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        # fields[0] is the state, field 3 of proc(5): arg_start is field 48
        start, end = int(fields[45]), int(fields[46])
    except (OSError, IndexError, ValueError):  # not Linux, or an old kernel: keep it
        return
    room = end - start
    if room <= 1:
        return
    raw = title.encode()[: room - 1]
    ctypes.memmove(start, raw + bytes(room - len(raw)), room)


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the control process dies (PR_SET_PDEATHSIG):
    a SIGKILLed control process cannot stop its workers, and a worker left polling
    a live port would go on taking frames (and a CPU) for nobody."""
    try:
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the getppid() check in poll_loop stays
        pass


def orphaned_at_start() -> bool:
    """The first thing an agent process does: ask for SIGTERM when the control process
    dies (die_with_parent), and tell whether it died already. A spawned agent takes
    seconds to import and compile on a loaded machine; a control process SIGKILLed
    meanwhile must not leave it to start polling for nobody."""
    parent = multiprocessing.parent_process()
    if parent is None:  # not a spawned agent (a test calls us)
        return False
    die_with_parent()
    return os.getppid() != parent.pid


def exit_quickly() -> None:
    """The end of a spawned agent whose loop returned and whose resources are closed:
    exit without the interpreter's teardown, which (numba's and llvmlite's modules)
    took 2-3 s of every stop in the lab on a loaded 2-CPU machine, while the control
    process waits to join us (SIGTERM should stop the engine within 2 s)."""
    if multiprocessing.parent_process() is None:  # not a spawned agent (a test)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def pin(cpu: int | None) -> None:
    """Pin this process to one CPU where the machine has it (RSS-style workers)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
