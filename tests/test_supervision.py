"""Stopping `fwd run` from outside: Ctrl-C drains and exits 0; a dead worker stops the
engine with an error; in every case nothing of ours is left in /dev/shm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import Lab, no_shm_leak

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))


def big_input(lab: Lab, n: int) -> None:
    """n 64-byte frames h1 → h2 written straight as a pcap (scapy is too slow for this)."""
    from engine.io.pcap import write_pcap

    from bench_fastpath import udp_frames

    frames = udp_frames(n, np.random.default_rng(3))
    frames[:, 30:34] = [10, 0, 2, 2]  # every frame to h2
    words = frames[:, 14:34].view(">u2").astype(np.uint32)
    words[:, 5] = 0
    s = words.sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    frames[:, 24] = (~s >> 8) & 0xFF
    frames[:, 25] = ~s & 0xFF
    offsets = np.arange(n, dtype=np.int64) * frames.shape[1]
    lengths = np.full(n, frames.shape[1], dtype=np.uint32)
    ts = 1_000_000_000 + np.arange(n, dtype=np.int64) * 1000
    write_pcap(lab.root / "in" / "p0.pcap", frames.ravel(), offsets, lengths, ts)


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def start(lab: Lab) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "run", str(lab.config_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_workers(proc: subprocess.Popen, count: int) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = [k for k in children(proc.pid)  # spawned workers, not the resource tracker
                if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text(errors="replace")]
        if len(kids) >= count:
            return kids
        time.sleep(0.05)
    pytest.fail("workers did not start")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigint_drains_writes_outputs_and_exits_0(tmp_path):
    lab = Lab(tmp_path, workers=2, batch=32)
    big_input(lab, 400_000)
    proc = start(lab)
    wait_for_workers(proc, 3)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "(balanced)" in out
    received = int(out.split("accounting: received ")[1].split()[0])
    assert 0 < received < 400_000  # stopped part way, and said how far it got
    assert (tmp_path / "out" / "p1.pcap").stat().st_size > 24
    assert no_shm_leak(proc.pid) == []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_worker_stops_the_engine_and_leaks_nothing(tmp_path):
    lab = Lab(tmp_path, workers=2, batch=32)
    big_input(lab, 400_000)
    proc = start(lab)
    kids = wait_for_workers(proc, 3)
    time.sleep(0.5)
    os.kill(kids[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "exited" in err
    assert no_shm_leak(proc.pid) == []
