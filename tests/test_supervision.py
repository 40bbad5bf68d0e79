"""Stopping `fwd run` from outside: Ctrl-C and SIGTERM drain and exit 0; a killed
forwarding worker is restarted and its buffers and batch recovered (one that keeps
dying stops the engine with an error, exit 1, after the counters); in every case
nothing of ours is left in /dev/shm."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.io.pcap import read_pcap

from conftest import MAC, Lab, flood, log_lines, no_shm_leak, set_ip_checksums

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


def wait_forwarding(sock: Path, frames: int = 5000) -> None:
    """Until the engine's workers have taken `frames` in."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if sum(rx for _, rx in worker_pids(sock).values()) > frames:
                return
        except Exception:  # the socket is not up yet
            pass
        assert time.monotonic() < deadline, "the engine never forwarded"
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigint_drains_writes_outputs_and_exits_0(tmp_path):
    lab = Lab(tmp_path, workers=2, batch=32)
    big_input(lab, 400_000)
    sock = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--socket", str(sock),
                             str(lab.config_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_forwarding(sock)  # part way through: a loaded machine may take seconds to start
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "(balanced)" in out
    received = int(out.split("accounting: received ")[1].split()[0])
    assert 0 < received < 400_000  # stopped part way, and said how far it got
    assert (tmp_path / "out" / "p1.pcap").stat().st_size > 24
    assert no_shm_leak(proc.pid) == []


def routed_flood(n: int) -> np.ndarray:
    """The flood of `big_input` as the router must send it on p1, each row a frame:
    to h2's MAC from p1's, TTL one less, header checksum recomputed (RFC 1071)."""
    from bench_fastpath import udp_frames

    frames = udp_frames(n, np.random.default_rng(3))
    frames[:, 30:34] = (10, 0, 2, 2)
    frames[:, 0:6] = np.frombuffer(bytes.fromhex(MAC["h2"].replace(":", "")), np.uint8)
    frames[:, 6:12] = np.frombuffer(bytes.fromhex(MAC["p1"].replace(":", "")), np.uint8)
    frames[:, 22] -= 1
    set_ip_checksums(frames)
    return frames


def worker_pids(sock: Path) -> dict[str, tuple[int, int]]:
    """worker name: (pid, frames received) from the running engine."""
    from engine.cli.client import request

    rows = request(str(sock), {"cmd": "stats"})["stats"]["workers"]
    return {r["agent"]: (r["pid"], r["rx_frames"]) for r in rows
            if str(r["agent"]).startswith("worker")}


def kill_when_busy(sock: Path) -> str:
    """SIGKILL a worker once it has taken frames in (it is forwarding); its name."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            rows = worker_pids(sock)
        except Exception:  # the socket is not up yet
            rows = {}
        for name, (pid, rx) in rows.items():
            if rx > 0:
                os.kill(pid, signal.SIGKILL)
                return name
        time.sleep(0.01)
    pytest.fail("no worker ever forwarded")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_killed_worker_is_restarted_and_loses_nothing(tmp_path):
    n = 300_000
    lab = Lab(tmp_path, workers=2, batch=32)
    big_input(lab, n)
    sock = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--json", "--socket",
                             str(sock), str(lab.config_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w = kill_when_busy(sock).removeprefix("worker")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"fwd-worker-{w}" in err and "killed by SIGKILL" in err and "restarted as pid" in err
    assert f"worker {w} forwarding again" in err
    assert "pool: 32768 of 32768 buffers free" in err  # the dead worker's buffers came back
    stats = json.loads(out)
    acc = stats["accounting"]
    assert acc["balanced"] and acc["received"] == n
    killed = stats["drop"].get("worker_killed", 0)
    assert acc["forwarded"] + killed == n and acc["dropped"] == killed
    assert killed <= 32  # at most the batch it had in hand
    assert stats["ports"]["p1"]["tx_packets"] == acc["forwarded"]
    # what went out is the routed input, each frame once (nothing duplicated by the
    # restart, nothing altered): compare multisets of whole frames
    sent = read_pcap(tmp_path / "out" / "p1.pcap")
    rows = sent.data.reshape(-1, 64)
    assert len(rows) == acc["forwarded"]
    want = routed_flood(n)
    as_void = lambda a: np.ascontiguousarray(a).view(np.dtype((np.void, 64))).ravel()  # noqa: E731
    got_v, got_n = np.unique(as_void(rows), return_counts=True)
    want_v, want_n = np.unique(as_void(want), return_counts=True)
    pos = np.searchsorted(want_v, got_v)
    assert (pos < len(want_v)).all() and (want_v[np.minimum(pos, len(want_v) - 1)] == got_v).all()
    assert (got_n <= want_n[pos]).all()
    assert no_shm_leak(proc.pid) == []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_worker_that_keeps_dying_stops_the_engine(tmp_path):
    from engine.cli.client import request
    from engine.control.recovery import RESTART_LIMIT

    lab = Lab(tmp_path, workers=1, batch=32)
    big_input(lab, 10)
    sock = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--keep-running",
                             "--socket", str(sock), str(lab.config_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: set[int] = set()
        for _ in range(RESTART_LIMIT + 1):
            deadline = time.monotonic() + 60
            while True:  # the current worker, once it runs (a new pid each time)
                try:
                    pid, _ = worker_pids(sock)["worker0"]
                    # the first kill once every agent made its first pass: a worker
                    # killed before that is a start-up error, not a death to restart
                    started = seen or all(
                        r["loops"] > 0 for r in request(str(sock), {"cmd": "stats"})["stats"][
                            "workers"])
                except Exception:
                    pid, started = 0, False
                if pid and started and pid not in seen and Path(f"/proc/{pid}").exists():
                    break
                assert time.monotonic() < deadline, "no new worker"
                time.sleep(0.02)
            seen.add(pid)
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert err.count("restarted as pid") == RESTART_LIMIT
    assert "Traceback" not in err
    # the counters and the pool check of what was done (the last dead worker's buffers
    # recovered as those of the restarted ones were), then one line says why
    assert "accounting: received 10 = " in out and "(balanced)" in out
    assert "fwd: pool: 32768 of 32768 buffers free\n" in err
    assert re.fullmatch(r"fwd: fwd-worker-0 killed by SIGKILL, its restart number "
                        rf"{RESTART_LIMIT + 1} within 60 s: giving up \(\d+ buffers "
                        r"reclaimed, \d+ packets dropped \(worker_killed\)\)",
                        log_lines(err)[-1]), err
    assert no_shm_leak(proc.pid) == []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_drains_every_ring_and_loses_nothing(tmp_path):
    lab = Lab(tmp_path, workers=2, batch=32)
    big_input(lab, 400_000)
    sock = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--json", "--socket",
                             str(sock), str(lab.config_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_forwarding(sock)  # the rings are full of frames in flight
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stats = json.loads(out)
    acc = stats["accounting"]
    assert acc["balanced"] and 0 < acc["received"] < 400_000
    # everything received was forwarded and written: nothing left in a ring
    assert acc["forwarded"] == acc["received"] and acc["dropped"] == 0
    assert stats["ports"]["p1"]["tx_packets"] == acc["received"]
    assert len(read_pcap(tmp_path / "out" / "p1.pcap").lengths) == acc["received"]
    assert "pool: 32768 of 32768 buffers free" in err
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
