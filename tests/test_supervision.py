"""Stopping `fwd run` from outside: Ctrl-C drains and exits 0; a dead worker stops the
engine with an error; in every case nothing of ours is left in /dev/shm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Lab, flood, no_shm_leak

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))


def big_input(lab: Lab, n: int) -> None:
    """n 64-byte frames h1 → h2 on p0."""
    flood(lab, n, (10, 0, 2, 2), seed=3)


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


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_workers_do_not_outlive_a_killed_control_process(tmp_path):
    # SIGKILL leaves the control process no chance to stop anyone: the workers must
    # notice by themselves (PR_SET_PDEATHSIG, and their parent changing)
    lab = Lab(tmp_path, workers=2, batch=32)
    big_input(lab, 10)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--keep-running",
                             "--socket", str(tmp_path / "s"), str(lab.config_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        kids = wait_for_workers(proc, 3)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
            time.sleep(0.05)
        alive = [k for k in kids if Path(f"/proc/{k}").exists()
                 and Path(f"/proc/{k}/stat").read_text().split()[2] != "Z"]
        assert alive == []
    finally:
        for name in no_shm_leak(proc.pid):  # a SIGKILLed owner cannot unlink: we do
            Path("/dev/shm", name).unlink(missing_ok=True)
