"""How `fwd run` ends when it cannot end well: an output that cannot be written is
refused before the first packet (or, found only when writing, stops the engine with
exit status 2), and every fatal stop still prints the counters, the accounting line
and the pool check, with one line saying why, and never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_run import ROOT, fwd

from conftest import Lab, flood, log_lines, no_shm_leak


def with_output(lab: Lab, port: str, tx: str) -> None:
    """Point `port`'s tx capture at `tx` in the lab's config."""
    text = lab.config_path.read_text()
    assert f'tx = "out/{port}.pcap"' in text
    lab.config_path.write_text(text.replace(f'tx = "out/{port}.pcap"', f'tx = "{tx}"'))


def test_an_output_under_a_regular_file_is_refused_before_anything_runs(tmp_path):
    lab = Lab(tmp_path)
    with_output(lab, "p1", "in/p0.pcap/p1.pcap")
    want = f"{tmp_path}/in/p0.pcap/p1.pcap: cannot write: Not a directory"
    for command in ("check", "run"):
        r = fwd(command, str(lab.config_path))
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines() == [f"{lab.config_path}: port[1].tx: {want}"]
        assert r.stdout == ""  # nothing ran: no counters to tell
    assert not (tmp_path / "out").exists()  # and nothing was written
    assert no_shm_leak(r.pid) == []


def assert_stopped(r: subprocess.CompletedProcess, status: int, why: str,
                   as_json: bool = False) -> dict | None:
    """A fatal stop as a person sees it: exit `status`, the counters with the
    accounting line, the pool check, `why` as the last line, no traceback. The JSON
    document when `as_json`."""
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr
    said = log_lines(r.stderr)
    assert any(re.match(r"fwd: pool: \d+ of \d+ buffers free", x) for x in said), r.stderr
    if not as_json:
        assert "accounting: received " in r.stdout and "port" in r.stdout.splitlines()[0]
        assert said[-1] == f"fwd: {why}"
        return None
    doc = json.loads(r.stdout)
    assert said[-1] == f"fwd: {why}"
    assert doc["stop"] == {"error": why, "status": status}
    assert doc["pool"]["size"] == doc["pool"]["free"] + doc["pool"]["queued"] + doc["pool"]["lost"]
    assert "received" in doc["accounting"] and set(doc["ports"]) == {"p0", "p1", "p2"}
    return doc


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_write_error_exits_2_with_the_counters(tmp_path, as_json):
    lab = Lab(tmp_path)
    flood(lab, 1000, (10, 0, 2, 2), seed=1)  # h1 to h2: out on p1
    with_output(lab, "p1", "/dev/full")
    r = fwd("run", *(["--json"] if as_json else []), str(lab.config_path))
    doc = assert_stopped(r, 2, "/dev/full: cannot write: No space left on device", as_json)
    if doc is not None:
        assert doc["accounting"]["balanced"] and doc["ports"]["p1"]["tx_packets"] == 1000
    else:
        assert "accounting: received 1000 = forwarded 1000 " in r.stdout
    assert (tmp_path / "out" / "p0.pcap").exists()  # the other outputs are still written
    assert no_shm_leak(r.pid) == []


def pid_once_received(sock: Path, agent: str, frames: int) -> int:
    """The pid of `agent` once the running engine has received `frames` frames."""
    from engine.cli.client import request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            stats = request(str(sock), {"cmd": "stats"})["stats"]
        except Exception:  # the socket is not up yet
            stats = None
        if stats is not None and stats["accounting"]["received"] == frames:
            return next(int(row["pid"]) for row in stats["workers"] if row["agent"] == agent)
        time.sleep(0.02)
    pytest.fail(f"the engine never received {frames} frames")


def test_a_dead_slow_path_stops_the_engine_with_the_counters(tmp_path):
    lab = Lab(tmp_path, workers=2)
    flood(lab, 1000, (10, 0, 2, 2), seed=2)
    sock = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "run", "--json",
                             "--keep-running", "--socket", str(sock), str(lab.config_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        os.kill(pid_once_received(sock, "slowpath", 1000), signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    doc = assert_stopped(r, 1, "fwd-slowpath killed by SIGKILL", as_json=True)
    assert doc["accounting"]["received"] == 1000 and doc["accounting"]["balanced"]
    assert no_shm_leak(proc.pid) == []


# `fwd run` through this script: a spawned agent imports the parent's main script
# again (as __mp_main__), so the patch below reaches the workers, and worker 1 dies
# before its first pass, every time
DIES_AT_START = """
import os
import sys

import engine.workers.forwarder as forwarder

real_main = forwarder.worker_main


def worker_main(spec):
    if spec.worker == 1:
        os._exit(3)
    real_main(spec)


forwarder.worker_main = worker_main

if __name__ == "__main__":
    from engine.cli.main import main

    sys.exit(main())
"""


def test_a_worker_dead_at_start_stops_the_engine_with_the_counters(tmp_path):
    lab = Lab(tmp_path, workers=2)
    flood(lab, 100, (10, 0, 2, 2), seed=4)
    script = tmp_path / "fwd_dies_at_start.py"
    script.write_text(textwrap.dedent(DIES_AT_START))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(script), "run", str(lab.config_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert_stopped(proc, 1, "fwd-worker-1 exited with status 3 before it started")
    assert "accounting: received 0 " in proc.stdout  # nothing was fed


def test_run_help_tells_the_exit_statuses():
    r = fwd("run", "--help")
    assert r.returncode == 0
    for line in ("0  the input was forwarded and written, or SIGINT/SIGTERM stopped it",
                 "1  an internal fault", "2  bad input"):
        assert line in r.stdout
